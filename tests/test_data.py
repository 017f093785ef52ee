"""Tests of shared.data: cache and mirror directories, verification, and downloads.

The network path runs against a small HTTP server on 127.0.0.1 that these tests start (the server
fixture, tests/conftest.py), so they need no internet and can make a transfer go wrong on purpose
(cut short, wrong bytes, missing).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import socket
import zipfile
from pathlib import Path

import pytest

from shared import data
from shared.data import CorruptDataError, DataFile, DataUnavailableError
from tests.conftest import leftovers

# The real mirror, read before any test replaces the variable (CI always sets it).
REAL_MIRROR = os.environ.get(data.MIRROR_ENV)

SMS_LINES = 5574


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def sms_text(lines: int = SMS_LINES, bad_label_at: int | None = None) -> bytes:
    """A stand-in for the SMS Spam Collection: ``lines`` lines of ``label<TAB>text``."""
    rows = []
    for number in range(1, lines + 1):
        label = "spam" if number % 7 == 0 else "ham"
        if number == bad_label_at:
            label = "eggs"
        rows.append(f"{label}\tmessage number {number}\n")
    return "".join(rows).encode()


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def closed_port_url(name: str) -> str:
    """An address on 127.0.0.1 where nothing listens: connecting fails, as offline."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


# --- directories ---------------------------------------------------------------------------------


def test_cache_dir_default_is_under_home(monkeypatch, tmp_path):
    monkeypatch.delenv(data.CACHE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.cache_dir() == (tmp_path / ".cache" / "llm-from-scratch").resolve()
    monkeypatch.setenv(data.CACHE_ENV, "")  # empty counts as unset
    assert data.cache_dir() == (tmp_path / ".cache" / "llm-from-scratch").resolve()


def test_cache_dir_from_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert data.cache_dir() == (tmp_path / "elsewhere").resolve()
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(data.CACHE_ENV, "~/my-cache")
    assert data.cache_dir() == (tmp_path / "my-cache").resolve()


def test_mirror_dir_from_variable(monkeypatch, tmp_path):
    monkeypatch.delenv(data.MIRROR_ENV, raising=False)
    assert data.mirror_dir() is None
    monkeypatch.setenv(data.MIRROR_ENV, "")
    assert data.mirror_dir() is None
    monkeypatch.setenv(data.MIRROR_ENV, str(tmp_path))
    assert data.mirror_dir() == tmp_path.resolve()


# --- verification --------------------------------------------------------------------------------


def test_sha256_of_matches_hashlib_across_blocks(tmp_path):
    content = os.urandom((1 << 20) + 12345)  # more than one 1 MiB block
    path = tmp_path / "blob"
    path.write_bytes(content)
    assert data.sha256_of(path) == sha(content)


def test_verify_checks_the_hash(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"right")
    data.verify(path, DataFile("f.txt", "http://unused", sha256=sha(b"right")))
    with pytest.raises(CorruptDataError) as info:
        data.verify(path, DataFile("f.txt", "http://unused", sha256=sha(b"wrong")))
    assert sha(b"right") in str(info.value) and sha(b"wrong") in str(info.value)


def test_verify_runs_the_structural_check(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"content")
    seen = []
    data.verify(path, DataFile("f.txt", "http://unused", check=seen.append))
    assert seen == [path]

    def reject(p: Path) -> None:
        raise CorruptDataError(f"{p.name} is malformed")

    with pytest.raises(CorruptDataError, match="f.txt is malformed"):
        data.verify(path, DataFile("f.txt", "http://unused", check=reject))


def test_sms_check_accepts_the_right_structure(tmp_path):
    path = tmp_path / "SMSSpamCollection"
    path.write_bytes(sms_text())
    data._check_sms_spam(path)


def test_sms_check_rejects_a_wrong_line_count(tmp_path):
    path = tmp_path / "SMSSpamCollection"
    path.write_bytes(sms_text(lines=SMS_LINES - 1))
    with pytest.raises(CorruptDataError, match="expected 5,574 lines, found 5,573"):
        data._check_sms_spam(path)


def test_sms_check_names_the_line_with_a_bad_label(tmp_path):
    path = tmp_path / "SMSSpamCollection"
    path.write_bytes(sms_text(bad_label_at=123))
    with pytest.raises(CorruptDataError, match="line 123"):
        data._check_sms_spam(path)


# --- cache and mirror ----------------------------------------------------------------------------


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(KeyError, match="the-verdict"):
        data.fetch("no-such-file")


def test_mirror_file_is_verified_and_used_in_place(dirs):
    cache, mirror = dirs
    content = b"from the mirror\n"
    (mirror / "sub").mkdir()
    (mirror / "sub" / "f.txt").write_bytes(content)
    spec = DataFile("sub/f.txt", closed_port_url("f.txt"), sha256=sha(content))
    path = data.fetch(spec, quiet=True)
    assert path == (mirror / "sub" / "f.txt").resolve()
    assert path.read_bytes() == content
    assert leftovers(cache) == []


def test_corrupt_mirror_file_is_an_error(dirs):
    cache, mirror = dirs
    (mirror / "f.txt").write_bytes(b"tampered")
    spec = DataFile("f.txt", closed_port_url("f.txt"), sha256=sha(b"original"))
    with pytest.raises(CorruptDataError, match="f.txt: sha256 is"):
        data.fetch(spec, quiet=True)
    assert leftovers(cache) == []


def test_cached_file_comes_first(dirs):
    cache, mirror = dirs
    content = b"cached"
    cache.mkdir()
    (cache / "f.txt").write_bytes(content)
    (mirror / "f.txt").write_bytes(content)
    spec = DataFile("f.txt", closed_port_url("f.txt"), sha256=sha(content))
    assert data.fetch(spec, quiet=True) == (cache / "f.txt").resolve()


def test_corrupt_cached_file_is_replaced_from_the_mirror(dirs, capsys):
    cache, mirror = dirs
    content = b"good copy"
    cache.mkdir()
    (cache / "f.txt").write_bytes(b"bad copy")
    (mirror / "f.txt").write_bytes(content)
    spec = DataFile("f.txt", closed_port_url("f.txt"), sha256=sha(content))
    path = data.fetch(spec)
    assert path == (mirror / "f.txt").resolve()
    assert not (cache / "f.txt").exists()  # the corrupt copy is gone
    assert "Cached copy is corrupt" in capsys.readouterr().out


def test_corrupt_cached_file_is_downloaded_again(dirs, server):
    cache, _ = dirs
    content = b"good copy from the network"
    cache.mkdir()
    (cache / "f.txt").write_bytes(b"bad copy")
    spec = DataFile("f.txt", server.serve("/f.txt", content), sha256=sha(content))
    path = data.fetch(spec, quiet=True)
    assert path == (cache / "f.txt").resolve()
    assert path.read_bytes() == content
    assert server.hits == {"/f.txt": 1}


def test_offline_with_nothing_cached_raises_one_clear_error(dirs):
    cache, mirror = dirs
    url = closed_port_url("the-file.txt")
    spec = DataFile("sub/the-file.txt", url, sha256=sha(b"x"))
    with pytest.raises(DataUnavailableError) as info:
        data.fetch(spec, quiet=True)
    message = str(info.value)
    for expected in ("sub/the-file.txt", url, "LLM_COURSE_MIRROR", "LLM_COURSE_CACHE", str(mirror)):
        assert expected in message
    # One error, not a chain of them.
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert leftovers(cache) == []


def test_offline_message_when_no_mirror_is_set(dirs, monkeypatch):
    monkeypatch.delenv(data.MIRROR_ENV)
    spec = DataFile("f.txt", closed_port_url("f.txt"), sha256=sha(b"x"))
    with pytest.raises(DataUnavailableError, match=r"LLM_COURSE_MIRROR \(not set\)"):
        data.fetch(spec, quiet=True)


# --- the network ---------------------------------------------------------------------------------


def test_download_is_verified_cached_and_done_once(dirs, server, capsys):
    cache, _ = dirs
    content = os.urandom(200_000)  # several read blocks
    spec = DataFile("dl/f.bin", server.serve("/f.bin", content), sha256=sha(content))
    path = data.fetch(spec, quiet=True)
    assert path == (cache / "dl" / "f.bin").resolve()
    assert path.read_bytes() == content
    assert data.fetch(spec, quiet=True) == path
    assert server.hits == {"/f.bin": 1}  # the second call used the cache
    assert leftovers(cache) == ["dl/f.bin"]
    assert capsys.readouterr().err == ""  # quiet: no progress bar


def test_download_shows_progress_unless_quiet(dirs, server, capsys):
    content = b"x" * 1000
    spec = DataFile("f.bin", server.serve("/f.bin", content), sha256=sha(content))
    data.fetch(spec)
    assert "f.bin" in capsys.readouterr().err  # tqdm's bar, labelled with the file name


def test_download_writes_a_temporary_file_then_renames(dirs, server, monkeypatch):
    cache, _ = dirs
    content = b"renamed into place"
    spec = DataFile("f.txt", server.serve("/f.txt", content), sha256=sha(content))
    renames = []
    real_replace = os.replace

    def spy(src, dst):
        src, dst = Path(src), Path(dst)
        # At the moment of the rename the final name does not exist yet; the file of the same
        # name in a temporary folder beside it already holds the complete, verified content.
        renames.append(
            (
                src.parent.parent == dst.parent,
                src.parent.name.endswith(".part"),
                src.name == dst.name,
                dst.exists(),
            )
        )
        assert src.read_bytes() == content
        real_replace(src, dst)

    monkeypatch.setattr(data.os, "replace", spy)
    data.fetch(spec, quiet=True)
    assert renames == [(True, True, True, False)]
    assert leftovers(cache) == ["f.txt"]


def test_interrupted_transfer_caches_nothing(dirs, server):
    cache, _ = dirs
    content = b"only part of the file" * 100
    url = server.serve("/f.bin", content, announced_length=len(content) + 5000)
    spec = DataFile("f.bin", url, sha256=None)  # no hash: only the length can tell
    with pytest.raises(DataUnavailableError, match="interrupted"):
        data.fetch(spec, quiet=True)
    assert leftovers(cache) == []  # no partial file, no .part leftover


def test_download_to_reports_an_interruption(server):
    content = b"abc" * 10
    url = server.serve("/f.bin", content, announced_length=100)
    with pytest.raises(OSError, match="interrupted"):
        data.download_to(url, io.BytesIO(), quiet=True)
    out = io.BytesIO()
    assert data.download_to(server.serve("/g.bin", content), out, quiet=True) == len(content)
    assert out.getvalue() == content


def test_stopped_download_leaves_nothing(dirs, server, monkeypatch):
    """Ctrl-C in the middle of a transfer: the temporary file is removed, nothing is cached."""
    cache, _ = dirs

    def half_then_stop(url, out, *, quiet=False):
        out.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "download_to", half_then_stop)
    spec = DataFile("f.bin", server.serve("/f.bin", b"whole file"), sha256=sha(b"whole file"))
    with pytest.raises(KeyboardInterrupt):
        data.fetch(spec, quiet=True)
    assert leftovers(cache) == []


def test_corrupted_transfer_caches_nothing(dirs, server):
    cache, _ = dirs
    spec = DataFile("f.bin", server.serve("/f.bin", b"wrong bytes"), sha256=sha(b"right bytes"))
    with pytest.raises(DataUnavailableError, match="sha256"):
        data.fetch(spec, quiet=True)
    assert leftovers(cache) == []


def test_missing_on_the_server_is_unavailable(dirs, server):
    cache, _ = dirs
    spec = DataFile("f.bin", server.base + "/nowhere.bin", sha256=sha(b"x"))
    with pytest.raises(DataUnavailableError, match="404"):
        data.fetch(spec, quiet=True)
    assert leftovers(cache) == []


def test_a_reply_that_is_not_http_is_unavailable(dirs, server):
    """Something that is not an HTTP server answers (a misconfigured proxy, say)."""
    cache, _ = dirs
    server.raw["/f.bin"] = b"NOT HTTP AT ALL\r\n\r\n"
    spec = DataFile("f.bin", server.base + "/f.bin", sha256=sha(b"x"))
    with pytest.raises(DataUnavailableError, match="NOT HTTP AT ALL"):
        data.fetch(spec, quiet=True)
    assert leftovers(cache) == []


def sms_spec(url: str, member_bytes: bytes | None = None) -> DataFile:
    """Like REGISTRY's SMS entry, but served locally."""
    return DataFile(
        name="sms_spam_collection/SMSSpamCollection",
        url=url,
        sha256=None if member_bytes is None else sha(member_bytes),
        check=data._check_sms_spam,
        archive_member="SMSSpamCollection",
    )


def test_zip_member_is_extracted_verified_and_cached(dirs, server):
    cache, _ = dirs
    member = sms_text()
    archive = zip_of({"readme": b"about the data", "SMSSpamCollection": member})
    spec = sms_spec(server.serve("/sms.zip", archive), member)
    path = data.fetch(spec, quiet=True)
    assert path == (cache / "sms_spam_collection" / "SMSSpamCollection").resolve()
    assert path.read_bytes() == member
    assert leftovers(cache) == ["sms_spam_collection/SMSSpamCollection"]  # not the zip
    data.fetch(spec, quiet=True)
    assert server.hits == {"/sms.zip": 1}


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (sms_text(lines=100), "expected 5,574 lines"),
        (sms_text(bad_label_at=4000), "line 4000"),
    ],
)
def test_zip_member_failing_the_structural_check_caches_nothing(dirs, server, member, message):
    cache, _ = dirs
    spec = sms_spec(server.serve("/sms.zip", zip_of({"SMSSpamCollection": member})))
    with pytest.raises(DataUnavailableError, match=message):
        data.fetch(spec, quiet=True)
    assert leftovers(cache) == []


def test_zip_without_the_member_caches_nothing(dirs, server):
    cache, _ = dirs
    spec = sms_spec(server.serve("/sms.zip", zip_of({"readme": b"no data here"})))
    with pytest.raises(DataUnavailableError, match="no member 'SMSSpamCollection'"):
        data.fetch(spec, quiet=True)
    assert leftovers(cache) == []


def test_not_a_zip_caches_nothing(dirs, server):
    cache, _ = dirs
    spec = sms_spec(server.serve("/sms.zip", b"<html>an error page, not a zip</html>"))
    with pytest.raises(DataUnavailableError, match="zip"):
        data.fetch(spec, quiet=True)
    assert leftovers(cache) == []


# --- the registry and the real mirror ------------------------------------------------------------


def test_registry_entries_can_be_verified():
    names = [spec.name for spec in data.REGISTRY.values()]
    assert len(set(names)) == len(names)
    for key, spec in data.REGISTRY.items():
        assert spec.url.startswith("https://"), key
        assert spec.sha256 is not None or spec.check is not None, key
        if spec.sha256 is not None:
            assert len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0, key


needs_mirror = pytest.mark.skipif(REAL_MIRROR is None, reason=f"{data.MIRROR_ENV} is not set")


@needs_mirror
@pytest.mark.parametrize("key", sorted(data.REGISTRY))
def test_registry_matches_the_mirror(key, tmp_path, monkeypatch):
    spec = data.REGISTRY[key]
    mirrored = Path(REAL_MIRROR) / spec.name
    assert mirrored.is_file(), f"the mirror lacks {spec.name}"
    if spec.sha256 is not None:
        assert data.sha256_of(mirrored) == spec.sha256
    # fetch() by key, with an empty cache, gives the verified mirror copy.
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(data.MIRROR_ENV, REAL_MIRROR)
    assert data.fetch(key, quiet=True) == mirrored.resolve()
    assert leftovers(tmp_path / "cache") == []


# --- why a download failed, in one line ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"), [(403, "HTTP 403 Forbidden"), (429, "HTTP 429 Too Many Requests")]
)
def test_http_error_is_named_in_one_line(dirs, server, status, reason):
    cache, _ = dirs
    server.errors["/f.bin"] = status
    spec = DataFile("f.bin", server.base + "/f.bin", sha256=sha(b"x"))
    with pytest.raises(DataUnavailableError) as info:
        data.fetch(spec, quiet=True)
    assert info.value.reason == reason
    assert str(info.value).startswith(f"f.bin: could not get it from {spec.url}: {reason}. ")
    assert "\n" not in str(info.value)
    assert leftovers(cache) == []


def test_full_disk_is_named(dirs, server, monkeypatch):
    cache, _ = dirs

    def disk_full(url, out, *, quiet=False):
        out.write(b"the first bytes")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(data, "download_to", disk_full)
    spec = DataFile("f.bin", server.serve("/f.bin", b"whole file"), sha256=sha(b"whole file"))
    with pytest.raises(DataUnavailableError) as info:
        data.fetch(spec, quiet=True)
    assert info.value.reason == "No space left on device"
    assert str(cache / "f.bin") in str(info.value)  # where the file would go: the cache
    assert leftovers(cache) == []


def test_unreachable_proxy_is_named(dirs, monkeypatch):
    proxy = closed_port_url("").rstrip("/")
    monkeypatch.setenv("http_proxy", proxy)
    for variable in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    # urlopen reads the proxy variables once per process, when it first builds its opener.
    monkeypatch.setattr(data.urllib.request, "_opener", None)
    spec = DataFile("f.bin", "http://files.example/f.bin", sha256=sha(b"x"))
    with pytest.raises(DataUnavailableError) as info:
        data.fetch(spec, quiet=True)
    assert info.value.reason == f"Connection refused (through the proxy {proxy})"


def test_written_atomically_keeps_the_old_file_when_writing_fails(tmp_path):
    from shared.data import written_atomically

    path = tmp_path / "splits.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError), written_atomically(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]
    with written_atomically(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new" and list(tmp_path.iterdir()) == [path]
