"""What the course's command-line scripts share: help that shows each default once, and bad input
reported as one ``error: ...`` line (exit status 1) instead of a traceback.

    parser = argparse.ArgumentParser(description=..., formatter_class=HelpFormatter)
    ...
    with errors_as_one_line():
        text = read_text_file(args.data)   # "error: notes.txt: not UTF-8 text (...); re-encode ..."
"""

from __future__ import annotations

import argparse
import codecs
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.data import DataUnavailableError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's ArgumentDefaultsHelpFormatter, except that an option whose help already says
    its default in words, "(default: ...)", is left as it is (no second, "(default: None)")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


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
