"""OpenAI's GPT-2 weights (Chapter 5): download, read and load them into GPTModel.

The weights are the Hugging Face ``model.safetensors`` files of ``openai-community/gpt2`` (124M),
``gpt2-medium`` (355M), ``gpt2-large`` (774M) and ``gpt2-xl`` (1558M), fetched and cached by
shared.data from the Hugging Face hub (``$HF_ENDPOINT``, default https://huggingface.co, as in
the Hugging Face libraries). Where they cannot be had, load_pretrained_gpt2 says why in one line
and returns a documented stand-in so that a chapter still runs (or, asked to, raises).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from shared.checkpoints import describe_mismatch
from shared.data import CorruptDataError, DataFile, DataUnavailableError, fetch
from shared.gpt import GPT2_MODEL_CONFIGS, GPTModel

GPT2_HF_NAMES = {"124M": "gpt2", "355M": "gpt2-medium", "774M": "gpt2-large", "1558M": "gpt2-xl"}

# The hub's address, overridable as in the Hugging Face libraries (a mirror, or a local server).
HF_ENDPOINT_ENV = "HF_ENDPOINT"
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
GPT2_PATH = "/openai-community/{name}/resolve/main/model.safetensors"

# What load_pretrained_gpt2 returns when the real weights cannot be had: a small GPT with
# GPT-2's vocabulary and context, randomly initialised (it produces gibberish, but every
# shape-dependent step of a chapter still runs).
STANDIN_CONFIG = {
    "vocab_size": 50257,
    "context_length": 1024,
    "emb_dim": 256,
    "n_heads": 4,
    "n_layers": 4,
    "drop_rate": 0.0,
    "qkv_bias": True,
}


def check_safetensors(path: Path) -> None:
    """Structural check of a safetensors file; raises shared.data.CorruptDataError.

    The file starts with an 8-byte little-endian header length, then a JSON header whose
    tensors' data_offsets must end exactly where the file ends.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CorruptDataError(f"{path.name}: {size} bytes, too short for a safetensors file")
        (header_len,) = struct.unpack("<Q", prefix)
        if 8 + header_len > size:
            raise CorruptDataError(
                f"{path.name}: header of {header_len:,} bytes does not fit in {size:,} bytes"
            )
        try:
            header = json.loads(f.read(header_len))
            data_end = max(
                (
                    entry["data_offsets"][1]
                    for key, entry in header.items()
                    if key != "__metadata__"
                ),
                default=0,
            )
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
            raise CorruptDataError(f"{path.name}: unreadable safetensors header ({err})") from None
    if 8 + header_len + data_end != size:
        raise CorruptDataError(
            f"{path.name}: the header describes {8 + header_len + data_end:,} bytes, the file "
            f"has {size:,} (truncated or corrupt)"
        )


def _check_size(size: str) -> None:
    if size not in GPT2_HF_NAMES:
        raise ValueError(f"unknown GPT-2 size {size!r}; choose one of {', '.join(GPT2_HF_NAMES)}")


def hub_endpoint() -> str:
    """The hub's base address: ``$HF_ENDPOINT`` or https://huggingface.co (no trailing slash)."""
    return (os.environ.get(HF_ENDPOINT_ENV) or DEFAULT_HF_ENDPOINT).rstrip("/")


def gpt2_weights_file(size: str = "124M") -> DataFile:
    """The shared.data.DataFile of a GPT-2 size's model.safetensors (cached as gpt2-<size>/...),
    at ``<hub_endpoint()>/openai-community/<name>/resolve/main/model.safetensors``."""
    _check_size(size)
    return DataFile(
        name=f"gpt2-{size}/model.safetensors",
        url=hub_endpoint() + GPT2_PATH.format(name=GPT2_HF_NAMES[size]),
        sha256=None,
        check=check_safetensors,
    )


def load_gpt2_params(size: str = "124M") -> dict[str, torch.Tensor]:
    """Fetch (cache, mirror or download) and read the GPT-2 weights of one size.

    Returns the tensors by their names in the file, e.g. ``h.0.attn.c_attn.weight``.
    Raises shared.data.DataUnavailableError when the file cannot be had.
    """
    return load_file(fetch(gpt2_weights_file(size)))


def _layer_names(i: int) -> list[str]:
    prefix = f"h.{i}."
    return [
        prefix + name
        for module in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")
        for name in (f"{module}.weight", f"{module}.bias")
    ]


def _normalise_keys(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official names from either layout: strip ``transformer.``, drop attention-mask buffers."""
    normalised = {}
    for key, tensor in params.items():
        name = key.removeprefix("transformer.")
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers, not weights
        normalised[name] = tensor
    return normalised


def _check_shape(source: torch.Tensor, name: str, expected_shape) -> None:
    """Raise ValueError naming the tensor and both shapes unless source has expected_shape."""
    if tuple(source.shape) != tuple(expected_shape):
        raise ValueError(
            f"GPT-2 tensor '{name}' has shape {tuple(source.shape)}, but the model needs "
            f"{tuple(expected_shape)}; build GPTModel with the config of this checkpoint"
        )


def _copy(target: torch.Tensor, source: torch.Tensor, name: str, expected_shape) -> None:
    """Copy source (named name in the file) into target after checking the file's shape."""
    _check_shape(source, name, expected_shape)
    with torch.no_grad():
        target.copy_(source)


def load_weights_into_gpt(gpt: GPTModel, params: dict[str, torch.Tensor]) -> None:
    """Copy GPT-2 weights into gpt (a GPTModel built with the checkpoint's config, qkv_bias=True).

    params: tensors by name, in the official layout (``wte.weight``, ``h.0.attn.c_attn.weight``,
    ...) or the one ``transformers`` writes (``transformer.`` prefix, maybe ``lm_head.weight``).
    GPT-2 stores its linear layers as Conv1D, weight (d_in, d_out): they are transposed into
    nn.Linear's (d_out, d_in), and c_attn (d, 3d) is split into query, key and value. The
    output head gets the token embedding (GPT-2 ties them) unless lm_head.weight is given.
    Raises ValueError naming a tensor whose shape does not fit (with both shapes), the
    tensors that are missing, or the ones the model has no place for.
    """
    params = _normalise_keys(params)
    n_layers = len(gpt.trf_blocks)
    expected = ["wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"]
    expected += [name for i in range(n_layers) for name in _layer_names(i)]
    missing = [name for name in expected if name not in params]
    unexpected = [name for name in params if name not in expected and name != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(
            f"the GPT-2 weights do not fit a {n_layers}-layer GPTModel: "
            f"{describe_mismatch(missing, unexpected)}"
        )

    def linear(layer: torch.nn.Linear, name: str) -> None:
        # Conv1D keeps weight as (d_in, d_out); nn.Linear as (d_out, d_in).
        weight = params[f"{name}.weight"]
        _check_shape(weight, f"{name}.weight", layer.weight.T.shape)
        _copy(layer.weight, weight.T, f"{name}.weight", layer.weight.shape)
        _copy(layer.bias, params[f"{name}.bias"], f"{name}.bias", layer.bias.shape)

    def norm(layer, name: str) -> None:
        _copy(layer.scale, params[f"{name}.weight"], f"{name}.weight", layer.scale.shape)
        _copy(layer.shift, params[f"{name}.bias"], f"{name}.bias", layer.shift.shape)

    _copy(gpt.tok_emb.weight, params["wte.weight"], "wte.weight", gpt.tok_emb.weight.shape)
    _copy(gpt.pos_emb.weight, params["wpe.weight"], "wpe.weight", gpt.pos_emb.weight.shape)
    for i, block in enumerate(gpt.trf_blocks):
        att, prefix = block.att, f"h.{i}."
        if att.W_query.bias is None:
            raise ValueError(
                "GPT-2 has query/key/value biases: build the GPTModel with qkv_bias=True"
            )
        d_in, d_out = att.W_query.in_features, att.W_query.out_features
        qkv_w, qkv_b = params[prefix + "attn.c_attn.weight"], params[prefix + "attn.c_attn.bias"]
        _check_shape(qkv_w, prefix + "attn.c_attn.weight", (d_in, 3 * d_out))
        _check_shape(qkv_b, prefix + "attn.c_attn.bias", (3 * d_out,))
        for layer, w, b in zip(
            (att.W_query, att.W_key, att.W_value),
            qkv_w.split(d_out, dim=1),
            qkv_b.split(d_out),
            strict=True,
        ):
            with torch.no_grad():
                layer.weight.copy_(w.T)
                layer.bias.copy_(b)
        linear(att.out_proj, prefix + "attn.c_proj")
        linear(block.ff.layers[0], prefix + "mlp.c_fc")
        linear(block.ff.layers[2], prefix + "mlp.c_proj")
        norm(block.norm1, prefix + "ln_1")
        norm(block.norm2, prefix + "ln_2")
    norm(gpt.final_norm, "ln_f")
    head = params.get("lm_head.weight", params["wte.weight"])
    name = "lm_head.weight" if "lm_head.weight" in params else "wte.weight"
    _copy(gpt.out_head.weight, head, name, gpt.out_head.weight.shape)


def gpt2_layout_tensors(gpt: GPTModel) -> dict[str, torch.Tensor]:
    """gpt's weights under GPT-2's names and in its layout: load_weights_into_gpt in reverse.

    Linear weights become Conv1D's (d_in, d_out); the query, key and value weights and biases are
    joined side by side into c_attn; the output head is left out (GPT-2 ties it to wte). Needs a
    GPTModel with qkv_bias=True. Returns detached, contiguous CPU tensors, ready for
    safetensors' save_file; ch05.ipynb writes the stand-in in GPT-2's format with it.
    """
    if gpt.trf_blocks[0].att.W_query.bias is None:
        raise ValueError("GPT-2 has query/key/value biases: build the GPTModel with qkv_bias=True")
    tensors = {"wte.weight": gpt.tok_emb.weight, "wpe.weight": gpt.pos_emb.weight}

    def put_linear(name: str, layer: torch.nn.Linear) -> None:
        tensors[f"{name}.weight"], tensors[f"{name}.bias"] = layer.weight.T, layer.bias

    def put_norm(name: str, norm) -> None:
        tensors[f"{name}.weight"], tensors[f"{name}.bias"] = norm.scale, norm.shift

    for i, block in enumerate(gpt.trf_blocks):
        att, prefix = block.att, f"h.{i}."
        projections = (att.W_query, att.W_key, att.W_value)
        put_norm(prefix + "ln_1", block.norm1)
        tensors[prefix + "attn.c_attn.weight"] = torch.cat([p.weight.T for p in projections], 1)
        tensors[prefix + "attn.c_attn.bias"] = torch.cat([p.bias for p in projections])
        put_linear(prefix + "attn.c_proj", att.out_proj)
        put_norm(prefix + "ln_2", block.norm2)
        put_linear(prefix + "mlp.c_fc", block.ff.layers[0])
        put_linear(prefix + "mlp.c_proj", block.ff.layers[2])
    put_norm("ln_f", gpt.final_norm)
    return {name: t.detach().cpu().contiguous() for name, t in tensors.items()}


@dataclass
class PretrainedGPT:
    """A GPTModel with its config; is_standin tells whether it is the random stand-in."""

    model: GPTModel
    config: dict
    description: str
    is_standin: bool


def standin_gpt(seed: int = 123) -> PretrainedGPT:
    """The stand-in for GPT-2 where its weights cannot be had: GPTModel(STANDIN_CONFIG),
    initialised after torch.manual_seed(seed), in eval mode, with is_standin=True."""
    torch.manual_seed(seed)
    return PretrainedGPT(
        model=GPTModel(STANDIN_CONFIG).eval(),
        config=dict(STANDIN_CONFIG),
        description="stand-in: randomly initialised 4-layer, 256-dim GPT (not GPT-2)",
        is_standin=True,
    )


# The test suite's switch: when this environment variable is "1", load_pretrained_gpt2 returns
# the stand-in without touching the network, so the suite gives the same result online and offline.
STANDIN_ENV = "LLM_COURSE_STANDIN"

STANDIN_NOTE = "a randomly initialised 4-layer, 256-dim GPT (shared.gpt2_weights.STANDIN_CONFIG)"


def load_pretrained_gpt2(
    size: str = "124M", seed: int = 123, *, allow_standin: bool = True
) -> PretrainedGPT:
    """GPTModel with OpenAI's GPT-2 weights of one size, in eval mode.

    When the environment variable LLM_COURSE_STANDIN is "1" (the test suite sets it; no request
    is made), or the weights cannot be had (offline, HTTP 403/429, a proxy, a full disk, ...),
    prints one line saying why and returns standin_gpt(seed). With allow_standin=False it
    raises shared.data.DataUnavailableError instead (one line: the file, its address, the cause).
    """
    _check_size(size)
    if os.environ.get(STANDIN_ENV) == "1":
        if not allow_standin:
            raise DataUnavailableError(
                f"GPT-2 {size} weights are required, but {STANDIN_ENV}=1 is set (the test "
                "suite's switch: no downloads, always the stand-in); unset it to load them",
                f"{STANDIN_ENV}=1 is set",
            )
        print(
            f"GPT-2 {size} weights not loaded: {STANDIN_ENV}=1 is set; using the stand-in: {STANDIN_NOTE}."
        )
        return standin_gpt(seed)
    try:
        params = load_gpt2_params(size)
    except DataUnavailableError as err:
        if not allow_standin:
            raise
        print(
            f"GPT-2 {size} weights are not available ({err.reason}, from "
            f"{gpt2_weights_file(size).url}); using the stand-in: {STANDIN_NOTE}."
        )
        return standin_gpt(seed)
    config = dict(GPT2_MODEL_CONFIGS[size])
    torch.manual_seed(seed)
    model = GPTModel(config)
    load_weights_into_gpt(model, params)
    return PretrainedGPT(
        model=model.eval(),
        config=config,
        description=f"OpenAI GPT-2 {size} ({GPT2_HF_NAMES[size]})",
        is_standin=False,
    )
