"""What the course's command-line scripts share: their options, help that shows each default
once, and bad input reported as one ``error: ...`` line (exit status 1) instead of a traceback.

An option name means one thing in every script: each option that more than one script has is
defined once, in OPTIONS, and a script adds it with its own default (tests/test_cli.py checks
that no two scripts give one name two meanings):

    parser = argparse.ArgumentParser(description=..., formatter_class=HelpFormatter)
    add_gpt2_options(parser, "124M")                        # --gpt2 SIZE, --standin, --require-gpt2
    add_option(parser, "--max-entries", default_text="all")
    add_option(parser, "--device")
    args = parser.parse_args(argv)
    with errors_as_one_line():
        pretrained = gpt2_from_options(args)
        text = read_text_file(args.data)   # "error: notes.txt: not UTF-8 text (...); re-encode ..."
"""

from __future__ import annotations

import argparse
import codecs
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from shared.data import DataUnavailableError
from shared.device import check_device
from shared.gpt import GPT2_MODEL_CONFIGS

if TYPE_CHECKING:  # the weights module is imported by gpt2_from_options, for the scripts using it
    from shared.gpt2_weights import PretrainedGPT


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's ArgumentDefaultsHelpFormatter, except that an option whose help already says
    its default in words, "(default: ...)", is left as it is (no second, "(default: None)")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


# --- values: argparse types that say what they expected --------------------------------------


def _number(text: str, kind: type, accept: Callable[[float], bool], expected: str):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not accept(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    return _number(text, int, lambda v: v >= 1, "a whole number >= 1")


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0."""
    return _number(text, int, lambda v: v >= 0, "a whole number >= 0")


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    return _number(text, float, lambda v: v > 0, "a number > 0")


def non_negative_float(text: str) -> float:
    """argparse type: a number >= 0."""
    return _number(text, float, lambda v: v >= 0, "a number >= 0")


def fraction(text: str) -> float:
    """argparse type: a number between 0 and 1, both excluded."""
    return _number(text, float, lambda v: 0 < v < 1, "a number between 0 and 1")


def dropout_probability(text: str) -> float:
    """argparse type: a dropout rate, a number from 0 (no dropout) up to but not including 1."""
    return _number(text, float, lambda v: 0 <= v < 1, "a number >= 0 and < 1")


def port_number(text: str) -> int:
    """argparse type: a TCP port, a whole number from 1 to 65535."""
    return _number(text, int, lambda v: 1 <= v <= 65535, "a port number from 1 to 65535")


def device_name(text: str) -> str:
    """argparse type of --device: a device PyTorch knows and this machine has (cpu, cuda,
    cuda:1, mps, ...; shared.device.check_device); the name as given."""
    try:
        check_device(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


# --- the options more than one script has ------------------------------------------------------

# What --size builds, randomly initialised: width, depth and heads. tiny and small train in
# seconds to minutes on a CPU; the others are the shapes of GPT-2's released sizes.
MODEL_SIZES = {
    "tiny": {"emb_dim": 64, "n_layers": 2, "n_heads": 2},
    "small": {"emb_dim": 256, "n_layers": 4, "n_heads": 4},
    **{
        size: {key: cfg[key] for key in ("emb_dim", "n_layers", "n_heads")}
        for size, cfg in GPT2_MODEL_CONFIGS.items()
    },
}

# name -> what it means (help, type, choices); the default is each script's.
OPTIONS: dict[str, dict] = {
    "--gpt2": dict(
        choices=tuple(GPT2_MODEL_CONFIGS),  # the released sizes (shared.gpt2_weights loads them)
        help="OpenAI's GPT-2 weights of this size (downloaded once, then cached)",
    ),
    "--standin": dict(
        action="store_true",
        help="use the small random stand-in model instead of GPT-2 (no download)",
    ),
    "--require-gpt2": dict(
        action="store_true",
        help="stop with an error when GPT-2's weights cannot be had, instead of using the stand-in",
    ),
    "--size": dict(
        choices=tuple(MODEL_SIZES),
        help="shape of the new, randomly initialised model: tiny (2 blocks of width 64), small "
        "(4 of 256) or one of GPT-2's sizes",
    ),
    "--checkpoint": dict(type=Path, help="the model to load: a .pth file that stores its config"),
    "--output": dict(type=Path, help="where to save the trained model"),
    "--device": dict(
        type=device_name,
        help="cpu, cuda, cuda:1, mps, ... (default: $LLM_COURSE_DEVICE if set, else cuda if "
        "available, then mps, else cpu)",
    ),
    "--seed": dict(type=int, help="random seed: the same seed repeats a run"),
    "--data": dict(type=Path, help="the training data, in the format described above"),
    "--max-entries": dict(type=positive_int, help="use only the first N entries, for quick runs"),
    "--responses": dict(
        type=Path,
        help="JSON file of the test entries with the model's responses "
        "(finetune_instructions.py writes it, score_responses.py scores it)",
    ),
    "--epochs": dict(type=positive_int, help="passes over the training data"),
    "--batch-size": dict(type=positive_int, help="training examples per batch"),
    "--lr": dict(type=positive_float, help="AdamW's learning rate"),
    "--weight-decay": dict(type=non_negative_float, help="AdamW's weight decay"),
    "--eval-freq": dict(type=positive_int, help="evaluate every N optimizer steps"),
    "--eval-iter": dict(type=positive_int, help="batches per evaluation"),
    "--allowed-max-length": dict(
        type=positive_int,
        help="cut each training example (prompt and response) to this many tokens",
    ),
    "--max-new-tokens": dict(type=non_negative_int, help="how many tokens to generate at most"),
    "--layers": dict(type=positive_int, help="transformer blocks"),
    "--dtype": dict(choices=("fp32", "bf16"), help="the model's number type: float32 or bfloat16"),
    "--context-length": dict(type=positive_int, help="tokens per training sequence (window)"),
    "--prompt-tokens": dict(type=positive_int, help="length of the random prompt"),
    "--new-tokens": dict(type=positive_int, help="tokens generated per run"),
    "--repeats": dict(type=positive_int, help="best of this many runs"),
    "--resume": dict(
        action="store_true",
        help="continue from the run's last checkpoint, up to the epochs or steps asked for in all",
    ),
}


def add_option(parser, name: str, default=None, *, default_text: str | None = None, **how):
    """Add OPTIONS[name] to parser (or to an argument group) with this script's default.

    default_text says the default in words where the value would not (None, or a value chosen
    later); how: nargs, metavar and the like (how the value is written, not what it means).
    Returns argparse's Action.
    """
    spec = dict(OPTIONS[name])
    if default_text is not None:
        spec["help"] += f" (default: {default_text})"
    if default is not None:
        spec["default"] = default
    return parser.add_argument(name, **spec, **how)


def add_gpt2_options(parser, default: str) -> None:
    """--gpt2 SIZE (with this default), and --standin or --require-gpt2 (at most one of them)."""
    add_option(parser, "--gpt2", default)
    either = parser.add_mutually_exclusive_group()
    add_option(either, "--standin")
    add_option(either, "--require-gpt2")


def add_training_options(
    parser,
    *,
    epochs: int,
    batch_size: int,
    lr: float | None,
    weight_decay: float,
    eval_freq: int = 5,
    eval_iter: int = 5,
    lr_text: str | None = None,
) -> None:
    """--epochs, --batch-size, --lr, --weight-decay, --eval-freq and --eval-iter, with these
    defaults; lr_text: the learning rate's default in words, where lr is None (chosen later)."""
    add_option(parser, "--epochs", epochs)
    add_option(parser, "--batch-size", batch_size)
    add_option(parser, "--lr", lr, default_text=lr_text)
    add_option(parser, "--weight-decay", weight_decay)
    add_option(parser, "--eval-freq", eval_freq)
    add_option(parser, "--eval-iter", eval_iter)


def gpt2_from_options(args: argparse.Namespace) -> PretrainedGPT:
    """The model add_gpt2_options asks for: the stand-in with --standin, else GPT-2 of --gpt2's
    size (the stand-in where its weights cannot be had, unless --require-gpt2); seeded by --seed."""
    from shared.gpt2_weights import load_pretrained_gpt2, standin_gpt

    if args.standin:
        return standin_gpt(args.seed)
    return load_pretrained_gpt2(args.gpt2, seed=args.seed, allow_standin=not args.require_gpt2)


# --- files and errors --------------------------------------------------------------------------


class InputFileError(ValueError):
    """A file given to a script cannot be read; the message names the file and says why."""


def _not_utf8(path: str | Path, byte: int, position: int) -> str:
    return (
        f"{path}: not UTF-8 text (byte 0x{byte:02x} at position {position:,}); re-encode it as "
        f"UTF-8 (save it as UTF-8 in an editor, or `iconv -f latin1 -t utf-8 {path} > new.txt`)"
    )


def describe_file_error(path: str | Path, err: Exception) -> str:
    """One line naming the file and what is wrong with it (with a fix where there is one)."""
    if isinstance(err, UnicodeDecodeError):
        return _not_utf8(path, err.object[err.start], err.start)
    if isinstance(err, json.JSONDecodeError):
        return f"{path}: not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})"
    if isinstance(err, OSError) and err.strerror:
        return f"{path}: {err.strerror}"
    return f"{path}: {' '.join(str(err).split())}"


@contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Turn a decoding, JSON or OS error raised inside into InputFileError naming ``path``."""
    try:
        yield
    except (UnicodeDecodeError, json.JSONDecodeError, OSError) as err:
        raise InputFileError(describe_file_error(path, err)) from None


def read_text_file(path: str | Path) -> str:
    """The content of a UTF-8 text file; InputFileError naming the file when it cannot be read."""
    with reading(path):
        return Path(path).read_text(encoding="utf-8")


def read_json_file(path: str | Path):
    """The parsed content of a UTF-8 JSON file; InputFileError naming the file when it cannot
    be read or parsed."""
    with reading(path):
        return json.loads(Path(path).read_text(encoding="utf-8"))


def check_utf8(path: str | Path, block_bytes: int = 1 << 20) -> None:
    """Read a (maybe large) file in blocks; InputFileError naming it unless it is UTF-8 text."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    end = 0  # bytes read so far
    with reading(path), open(path, "rb") as f:
        while True:
            block = f.read(block_bytes)
            end += len(block)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as err:  # err.object: bytes held back + this block
                position = end - len(err.object) + err.start
                raise InputFileError(_not_utf8(path, err.object[err.start], position)) from None
            if not block:
                return


def one_line(err: BaseException) -> str:
    """An error's message on one line; an OS error as "<file>: <what went wrong>"."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        return f"{err.filename}: {err.strerror}"
    return " ".join(str(err).split())


@contextmanager
def errors_as_one_line() -> Iterator[None]:
    """Exit with status 1 and ``error: <message>`` on stderr when bad input raises inside:
    ValueError (InputFileError, unreadable checkpoints, ...), OSError, DataUnavailableError."""
    try:
        yield
    except (ValueError, OSError, DataUnavailableError) as err:
        sys.exit(f"error: {one_line(err)}")
