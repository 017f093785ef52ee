"""Downloading and caching every file the course needs, through one helper.

Each file comes from its canonical address, is verified, and is cached, so the network is used
once. Two environment variables control where files live:

- ``LLM_COURSE_CACHE``: the cache directory (default ``~/.cache/llm-from-scratch``).
- ``LLM_COURSE_MIRROR``: an optional local mirror directory, read before the network. Tests and CI
  point it at an offline copy of the data (``../shared/data`` beside the project).

Files are verified by sha256 where the hash is known and by a structural check otherwise. A
download is written to a temporary file and renamed into place only once it is complete and
verified, so an interrupted transfer never leaves a corrupt cached file; a cached file that fails
verification is fetched again.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import shutil
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

CACHE_ENV = "LLM_COURSE_CACHE"
MIRROR_ENV = "LLM_COURSE_MIRROR"
DEFAULT_CACHE = Path("~/.cache/llm-from-scratch")


class DataUnavailableError(RuntimeError):
    """A registered file could not be found in the cache or the mirror, nor downloaded.

    The message is one line that starts with the file's name; ``reason`` is the underlying
    error alone, e.g. ``"HTTP 429 Too Many Requests"`` or ``"No space left on device"``.
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class CorruptDataError(ValueError):
    """A file's content does not match its checksum or expected structure."""


@dataclass(frozen=True)
class DataFile:
    """A file the course downloads.

    name: the file's path inside the cache and mirror directories, e.g. ``"the-verdict.txt"``.
    url: its canonical address.
    sha256: hex digest of the file's content, or None where it is not known.
    check: a structural check for files without a known hash; raises CorruptDataError.
    archive_member: when ``url`` serves a zip, the member to extract (hash and check apply to it).
    """

    name: str
    url: str
    sha256: str | None = None
    check: Callable[[Path], None] | None = None
    archive_member: str | None = None


def _check_sms_spam(path: Path) -> None:
    """The SMS Spam Collection: 5,574 lines of ``label<TAB>text`` with labels ham/spam."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) != 5574:
        raise CorruptDataError(f"{path.name}: expected 5,574 lines, found {len(lines):,}")
    for number, line in enumerate(lines, start=1):
        if line.split("\t", 1)[0] not in ("ham", "spam"):
            raise CorruptDataError(f"{path.name} line {number}: expected 'ham<TAB>' or 'spam<TAB>'")


def _gsm8k_check(problems: int) -> Callable[[Path], None]:
    """The structural check of a GSM8K file: `problems` lines, each a JSON object whose
    "question" and "answer" are text, the answer (a worked solution) ending in "#### <number>".

    OpenAI publishes no checksum of the files, so they are checked by structure instead."""

    def check(path: Path) -> None:
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) != problems:
            raise CorruptDataError(
                f"{path.name}: expected {problems:,} lines (GSM8K problems), found {len(lines):,}"
            )
        for number, line in enumerate(lines, start=1):
            try:
                entry = json.loads(line)
            except ValueError:
                raise CorruptDataError(f"{path.name} line {number}: not a JSON object") from None
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("question"), str)
                and isinstance(entry.get("answer"), str)
                and "####" in entry["answer"]
            ):
                raise CorruptDataError(
                    f'{path.name} line {number}: expected a JSON object with a "question" and '
                    'an "answer" that ends in "#### <number>"'
                )

    return check


_GSM8K = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data"

REGISTRY: dict[str, DataFile] = {
    "the-verdict": DataFile(
        name="the-verdict.txt",
        url="https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/01_main-chapter-code/the-verdict.txt",
        sha256="b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
    ),
    "sms-spam-collection": DataFile(
        name="sms_spam_collection/SMSSpamCollection",
        url="https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
        sha256="7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d",
        check=_check_sms_spam,
        archive_member="SMSSpamCollection",
    ),
    "instruction-data": DataFile(
        name="instruction-data.json",
        url="https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json",
        sha256="7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944",
    ),
    "instruction-data-with-preference": DataFile(
        name="instruction-data-with-preference.json",
        url="https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/04_preference-tuning-with-dpo/instruction-data-with-preference.json",
        sha256="305315abf14f65fa42c01a0877572f832606571c2a7d49f152ac1d758b16756e",
    ),
    "gpt2-vocab-bpe": DataFile(
        name="gpt2/vocab.bpe",
        url="https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
        sha256="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
    "gpt2-encoder-json": DataFile(
        name="gpt2/encoder.json",
        url="https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
        sha256="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
}


# Files fetched on demand that the offline mirror does not hold (every REGISTRY entry is in it;
# tests/test_data.py checks), fetched with fetch(GSM8K_FILES["test"]) and the like.
#
# GSM8K (Cobbe et al. 2021, "Training Verifiers to Solve Math Word Problems"; openai/
# grade-school-math, MIT licence): grade-school maths word problems with worked solutions, 7,473
# for training and 1,319 for testing, one JSON object per line. ch07/grpo_train.py --model
# qwen3-0.6b trains and evaluates on them. OpenAI publishes no checksum of the files, so each is
# verified by its structure (_gsm8k_check: the number of lines, and the fields of every line).
GSM8K_FILES: dict[str, DataFile] = {
    "train": DataFile(
        name="gsm8k/train.jsonl", url=f"{_GSM8K}/train.jsonl", check=_gsm8k_check(7473)
    ),
    "test": DataFile(name="gsm8k/test.jsonl", url=f"{_GSM8K}/test.jsonl", check=_gsm8k_check(1319)),
}


def cache_dir() -> Path:
    """The cache directory: ``$LLM_COURSE_CACHE`` or ``~/.cache/llm-from-scratch``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser().resolve()


def mirror_dir() -> Path | None:
    """The local mirror directory from ``$LLM_COURSE_MIRROR``, or None when it is not set."""
    value = os.environ.get(MIRROR_ENV)
    return Path(value).expanduser().resolve() if value else None


def sha256_of(path: Path) -> str:
    """Hex sha256 digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def written_atomically(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` (os.replace, atomic)
    when the block ends without an error, removed otherwise. A reader of ``path`` sees the old
    complete file or the new one, never a half-written one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def verify(path: Path, spec: DataFile) -> None:
    """Raise CorruptDataError unless ``path`` matches the spec's sha256 and structural check."""
    if spec.sha256 is not None:
        actual = sha256_of(path)
        if actual != spec.sha256:
            raise CorruptDataError(
                f"{spec.name}: sha256 is {actual}, expected {spec.sha256} (corrupt or wrong file)"
            )
    if spec.check is not None:
        spec.check(path)


def fetch(spec: str | DataFile, *, quiet: bool = False) -> Path:
    """Return the local path of a verified copy of a registered file.

    ``spec`` is a key of REGISTRY (e.g. ``"the-verdict"``) or a DataFile. Looks in the cache, then
    the mirror (used in place), then downloads into the cache. A cached file that fails
    verification is downloaded again. Raises DataUnavailableError, one line with the file, its
    address, the underlying error and the two environment variables, when no verified copy can
    be had.
    """
    if isinstance(spec, str):
        if spec not in REGISTRY:
            raise KeyError(f"unknown data file {spec!r}; registered: {', '.join(REGISTRY)}")
        spec = REGISTRY[spec]

    cached = cache_dir() / spec.name
    if cached.exists():
        try:
            verify(cached, spec)
            return cached
        except CorruptDataError as err:
            if not quiet:
                print(f"Cached copy is corrupt, fetching it again ({err})")
            cached.unlink()

    mirror = mirror_dir()
    if mirror is not None and (mirror / spec.name).exists():
        verify(mirror / spec.name, spec)  # a corrupt mirror is an error to fix, not to hide
        return mirror / spec.name

    try:
        _download_verified(spec, cached, quiet=quiet)
    except (
        urllib.error.URLError,
        http.client.HTTPException,
        OSError,
        ValueError,  # CorruptDataError, or an address urllib cannot parse
        zipfile.BadZipFile,
    ) as err:
        reason = describe_error(err) + _proxy_note(spec.url)
        raise DataUnavailableError(_unavailable_message(spec, reason), reason) from None
    return cached


def describe_error(err: BaseException) -> str:
    """The cause of a failed transfer in one line, e.g. ``"HTTP 403 Forbidden"``."""
    if isinstance(err, urllib.error.HTTPError):
        text = f"HTTP {err.code} {err.reason}"
    elif isinstance(err, urllib.error.URLError) and isinstance(err.reason, BaseException):
        text = describe_error(err.reason)
    elif isinstance(err, urllib.error.URLError):
        text = str(err.reason)
    elif isinstance(err, socket.gaierror):
        text = f"the server's name cannot be looked up: {err.strerror} (offline?)"
    elif isinstance(err, OSError) and err.strerror:
        text = err.strerror
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def _proxy_note(url: str) -> str:
    """The note " (through the proxy <address>)" when urllib sends url through a proxy, else ""."""
    scheme, host = urllib.parse.urlsplit(url)[:2]
    proxy = urllib.request.getproxies().get(scheme)
    if proxy is None or urllib.request.proxy_bypass(host.split(":")[0]):
        return ""
    return f" (through the proxy {proxy})"


def _unavailable_message(spec: DataFile, reason: str) -> str:
    mirror = mirror_dir()
    mirror_note = f"(now {mirror}, which lacks it)" if mirror else "(not set)"
    return (
        f"{spec.name}: could not get it from {spec.url}: {reason}. Either connect to the "
        f"internet and run again, or point {MIRROR_ENV} {mirror_note} at a folder that holds "
        f"'{spec.name}', or place the file at {cache_dir() / spec.name} (the cache directory "
        f"is set by {CACHE_ENV})."
    )


def _download_verified(spec: DataFile, dest: Path, *, quiet: bool) -> None:
    """Download ``spec.url`` (extracting ``archive_member`` if set), verify, rename into ``dest``.

    The transfer goes to a file of the same name in a temporary folder beside ``dest`` (so
    checks name the right file), which is removed whatever happens.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part"))
    tmp = tmp_dir / dest.name
    try:
        with open(tmp, "wb") as out:
            if spec.archive_member is None:
                download_to(spec.url, out, quiet=quiet)
            else:
                buffer = io.BytesIO()
                download_to(spec.url, buffer, quiet=quiet)
                with zipfile.ZipFile(buffer) as archive:
                    if spec.archive_member not in archive.namelist():
                        raise CorruptDataError(f"{spec.url} has no member {spec.archive_member!r}")
                    with archive.open(spec.archive_member) as member:
                        shutil.copyfileobj(member, out)
        verify(tmp, spec)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def download_to(url: str, out: io.RawIOBase | io.BufferedIOBase, *, quiet: bool = False) -> int:
    """Stream ``url`` into the open binary file ``out``; return the number of bytes written.

    Raises OSError when the server closes the connection before sending the announced
    Content-Length (an interrupted transfer).
    """
    with urllib.request.urlopen(url, timeout=60) as response:
        total = response.headers.get("Content-Length")
        total = int(total) if total is not None else None
        written = 0
        with tqdm(
            total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1], disable=quiet
        ) as bar:
            while True:
                try:
                    block = response.read(1 << 16)
                except http.client.IncompleteRead as err:
                    raise OSError(
                        f"transfer interrupted after {written + len(err.partial):,} bytes"
                    ) from None
                if not block:
                    break
                out.write(block)
                written += len(block)
                bar.update(len(block))
    if total is not None and written != total:
        raise OSError(f"transfer interrupted: got {written:,} of {total:,} bytes")
    return written
