"""Checkpoints: save a model (and optimizer) with plain-data extras, load them back safely.

Files are written atomically and read with torch.load(weights_only=True); every way a file can
be wrong (missing, truncated, not a checkpoint, Python objects, tensors that do not fit, missing
or unexpected entries) is a ValueError in one line that names the file or the tensors.
shared.pretraining re-exports the functions (Chapter 5 saves and loads with them).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from shared.data import written_atomically
from shared.gpt import GPTModel


def describe_mismatch(missing: list[str], unexpected: list[str], shown: int = 6) -> str:
    """The names a set of tensors lacks and has too many of, in one phrase:
    "1 missing (a); 12 unexpected (b, c, ...)" ("" when both are empty)."""
    return "; ".join(
        f"{len(names)} {kind} ({', '.join(names[:shown])}{', ...' if len(names) > shown else ''})"
        for kind, names in (("missing", missing), ("unexpected", unexpected))
        if names
    )


_SAFE_TYPES = (type(None), bool, int, float, str, torch.Tensor)


def _check_loadable(value, name: str) -> None:
    """Raise TypeError unless value is something torch.load(weights_only=True) can read back."""
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_loadable(item, f"{name}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_loadable(item, f"{name}[{key!r}]")
    elif not isinstance(value, _SAFE_TYPES):
        raise TypeError(
            f"checkpoint entry {name} is a {type(value).__name__}; store only numbers, strings, "
            "tensors and lists/dicts of them, so the checkpoint loads with weights_only=True"
        )


def save_checkpoint(
    path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, **extra
):
    """Save the model's (and optimizer's) state plus extra entries (e.g. epoch=3) to path.

    The file is written to a temporary file in the same directory and renamed into place, so an
    interrupted save never damages an existing checkpoint. extra values must be plain data
    (numbers, strings, tensors, lists and dicts of them). Returns the path.
    """
    path = Path(path)
    _check_loadable(extra, "extra")
    checkpoint = {"model_state_dict": model.state_dict(), "extra": extra}
    if optimizer is not None:
        checkpoint["optimizer_state_dict"] = optimizer.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_atomically(path) as tmp:
        torch.save(checkpoint, tmp)
    return path


_UNREADABLE = "not a readable PyTorch checkpoint: truncated or corrupt?"


def _read_checkpoint(path, **load_args) -> dict:
    """torch.load(path, weights_only=True, **load_args) of a save_checkpoint file.

    Raises ValueError in one line naming the file when it is not one: truncated, empty or
    garbage bytes, Python objects that weights_only refuses, or another kind of file.
    """
    if not Path(path).is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, weights_only=True, **load_args)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):  # garbage bytes, not a refused object
            raise ValueError(f"{path}: {_UNREADABLE}") from None
        raise ValueError(
            f"{path}: weights only load failed: it holds Python objects that "
            "torch.load(weights_only=True) refuses to run; it was not written by save_checkpoint"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError):  # what torch.load raises on bad bytes
        raise ValueError(f"{path}: {_UNREADABLE}") from None
    if not isinstance(checkpoint, dict) or "model_state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a checkpoint written by save_checkpoint")
    return checkpoint


def read_checkpoint_extra(path) -> dict:
    """The extra entries of a save_checkpoint file (e.g. its model config), without a model.

    Memory-maps the file (torch.load(mmap=True, weights_only=True)), so the tensors are not read.
    Raises ValueError naming the file when it is not a readable checkpoint.
    """
    return dict(_read_checkpoint(path, map_location="cpu", mmap=True).get("extra", {}))


def load_checkpoint(
    path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, map_location="cpu"
) -> dict:
    """Load a save_checkpoint file into model (and optimizer); return its extra entries.

    Reads with torch.load(weights_only=True), so a file cannot run code. Raises ValueError
    naming the file when it is truncated, empty or not a checkpoint; naming the tensor and both
    shapes when a tensor does not fit the model; and naming the missing or unexpected entries
    when the state does not match the model's.
    """
    path = Path(path)
    checkpoint = _read_checkpoint(path, map_location=map_location)
    state = checkpoint["model_state_dict"]
    expected = model.state_dict()
    for name, tensor in state.items():
        if name in expected and tensor.shape != expected[name].shape:
            raise ValueError(
                f"checkpoint tensor '{name}' has shape {tuple(tensor.shape)}, but the model's "
                f"has shape {tuple(expected[name].shape)}; build the model with the config the "
                "checkpoint was trained with"
            )
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match the model: {describe_mismatch(missing, unexpected)}"
        )
    model.load_state_dict(state)
    if optimizer is not None:
        if "optimizer_state_dict" not in checkpoint:
            raise ValueError(f"{path} holds no optimizer state; it was saved without an optimizer")
        optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
    return dict(checkpoint.get("extra", {}))


def load_model_checkpoint(
    path, build: Callable[[dict], nn.Module] = GPTModel, map_location="cpu", hint: str = ""
) -> tuple[nn.Module, dict]:
    """The model of a save_checkpoint file that stores its ``config`` entry (ch05/train.py,
    ch07's scripts, save_classifier): build(config) with the file's weights, and the file's
    extra entries. build makes the model from the config (GPTModel, KVCacheGPTModel, a
    classifier); the model stays on the CPU, in the mode build left it.

    Raises ValueError naming the file when it is missing, unreadable or holds no config (with
    hint appended, e.g. which script writes such files), and naming the tensors when its weights
    do not fit (load_checkpoint's errors).
    """
    extra = read_checkpoint_extra(path)
    if not isinstance(extra.get("config"), dict):
        raise ValueError(
            f"{path} holds no model config (the 'config' entry of save_checkpoint)"
            + (f"; {hint}" if hint else "")
        )
    model = build(extra["config"])
    load_checkpoint(path, model, map_location=map_location)
    return model, extra
