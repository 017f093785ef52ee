"""The real GPT-2 download path, end to end, offline: a local server stands in for the hub.

The server answers under the hub's path layout, with a redirect as the hub does
(``/openai-community/gpt2/resolve/main/model.safetensors`` -> 302 -> the file), and serves a
GPT-2-format ``model.safetensors`` that transformers' ``save_pretrained`` wrote from a small random
GPT2LMHeadModel. ``HF_ENDPOINT`` points load_pretrained_gpt2 at it, which downloads, verifies,
caches and loads the file; transfers cut short or corrupt are recovered on the next call.
"""

from __future__ import annotations

import struct

import pytest
import torch

from shared import data
from shared.data import DataUnavailableError
from shared.gpt import GPT2_MODEL_CONFIGS
from shared.gpt2_weights import (
    HF_ENDPOINT_ENV,
    STANDIN_ENV,
    STANDIN_NOTE,
    gpt2_weights_file,
    load_pretrained_gpt2,
)
from tests.conftest import REFERENCE_CONFIG, hf_logits, leftovers

HUB_PATH = "/openai-community/gpt2/resolve/main/model.safetensors"
FILE_PATH = "/cas-bridge/gpt2/model.safetensors"  # where the hub's redirect leads
CACHED = "gpt2-124M/model.safetensors"


@pytest.fixture
def hub(server, dirs, reference, monkeypatch):
    """The local hub, serving the reference's model.safetensors as GPT-2 124M (REFERENCE_CONFIG).

    Returns (server, cache directory, the file's bytes, the reference model).
    """
    hf_model, hf_file, _ = reference
    content = hf_file.read_bytes()
    server.redirects[HUB_PATH] = server.serve(FILE_PATH, content)
    monkeypatch.setenv(HF_ENDPOINT_ENV, server.base)
    monkeypatch.delenv(STANDIN_ENV, raising=False)  # the test suite's switch, unset
    monkeypatch.setitem(GPT2_MODEL_CONFIGS, "124M", REFERENCE_CONFIG)
    cache, _ = dirs
    return server, cache, content, hf_model


def assert_reproduces(pretrained, hf_model) -> None:
    """The loaded GPTModel's logits equal the reference's on a few token sequences."""
    assert not pretrained.is_standin and pretrained.description == "OpenAI GPT-2 124M (gpt2)"
    ids = torch.randint(
        0, REFERENCE_CONFIG["vocab_size"], (3, 20), generator=torch.Generator().manual_seed(2)
    )
    with torch.no_grad():
        logits = pretrained.model(ids)
    torch.testing.assert_close(logits, hf_logits(hf_model, ids), atol=1e-4, rtol=0)


def standin_line(reason: str) -> str:
    url = gpt2_weights_file("124M").url
    return f"GPT-2 124M weights are not available ({reason}, from {url}); using the stand-in: {STANDIN_NOTE}."


def test_address_follows_hf_endpoint(monkeypatch):
    monkeypatch.setenv(HF_ENDPOINT_ENV, "http://hub.example:8080/")
    assert gpt2_weights_file("774M").url == (
        "http://hub.example:8080/openai-community/gpt2-large/resolve/main/model.safetensors"
    )


def test_download_verify_cache_load(hub, capsys):
    hub_server, cache, content, hf_model = hub
    pretrained = load_pretrained_gpt2("124M")
    assert capsys.readouterr().out == ""
    assert_reproduces(pretrained, hf_model)
    assert hub_server.hits == {HUB_PATH: 1, FILE_PATH: 1}  # through the redirect
    assert leftovers(cache) == [CACHED]
    assert (cache / CACHED).read_bytes() == content
    assert_reproduces(load_pretrained_gpt2("124M"), hf_model)
    assert hub_server.hits == {HUB_PATH: 1, FILE_PATH: 1}  # the second time from the cache


def test_switch_returns_the_standin_and_makes_no_request(hub, monkeypatch, capsys):
    hub_server, cache, _, _ = hub
    monkeypatch.setenv(STANDIN_ENV, "1")
    pretrained = load_pretrained_gpt2("124M")
    assert pretrained.is_standin
    assert capsys.readouterr().out == (
        f"GPT-2 124M weights not loaded: {STANDIN_ENV}=1 is set; using the stand-in: {STANDIN_NOTE}.\n"
    )
    with pytest.raises(DataUnavailableError, match=f"required, but {STANDIN_ENV}=1 is set"):
        load_pretrained_gpt2("124M", allow_standin=False)
    assert hub_server.hits == {} and leftovers(cache) == []


def test_interrupted_transfer_is_recovered(hub, capsys):
    hub_server, cache, content, hf_model = hub
    hub_server.serve(FILE_PATH, content[: len(content) // 2], announced_length=len(content))
    pretrained = load_pretrained_gpt2("124M")
    reason = f"transfer interrupted: got {len(content) // 2:,} of {len(content):,} bytes"
    assert pretrained.is_standin and capsys.readouterr().out == standin_line(reason) + "\n"
    with pytest.raises(DataUnavailableError, match=reason):
        load_pretrained_gpt2("124M", allow_standin=False)
    assert leftovers(cache) == []  # no partial file
    hub_server.serve(FILE_PATH, content)  # the connection is back
    assert_reproduces(load_pretrained_gpt2("124M"), hf_model)
    assert leftovers(cache) == [CACHED]


def test_corrupt_transfer_is_recovered(hub, capsys):
    hub_server, cache, content, hf_model = hub
    garbage = struct.pack("<Q", len(content)) + content[8:]  # a header longer than the file
    hub_server.serve(FILE_PATH, garbage)
    assert load_pretrained_gpt2("124M").is_standin
    line = capsys.readouterr().out
    assert line.startswith("GPT-2 124M weights are not available (model.safetensors: header of")
    assert line.count("\n") == 1 and leftovers(cache) == []
    hub_server.serve(FILE_PATH, content)
    assert_reproduces(load_pretrained_gpt2("124M"), hf_model)


def test_corrupt_cached_file_is_fetched_again(hub, capsys):
    hub_server, cache, content, hf_model = hub
    (cache / CACHED).parent.mkdir(parents=True)
    (cache / CACHED).write_bytes(content[:-100])  # truncated by an earlier crash, say
    assert_reproduces(load_pretrained_gpt2("124M"), hf_model)
    assert "Cached copy is corrupt, fetching it again" in capsys.readouterr().out
    assert (cache / CACHED).read_bytes() == content
    assert hub_server.hits == {HUB_PATH: 1, FILE_PATH: 1}


@pytest.mark.parametrize(
    ("status", "reason"), [(403, "HTTP 403 Forbidden"), (429, "HTTP 429 Too Many Requests")]
)
def test_refusals_are_named(hub, capsys, status, reason):
    hub_server, cache, _, _ = hub
    hub_server.errors[HUB_PATH] = status
    assert load_pretrained_gpt2("124M").is_standin
    assert capsys.readouterr().out == standin_line(reason) + "\n"
    with pytest.raises(DataUnavailableError) as info:
        load_pretrained_gpt2("124M", allow_standin=False)
    message = str(info.value)
    assert message.startswith(
        f"{CACHED}: could not get it from {hub_server.base}{HUB_PATH}: {reason}."
    )
    assert data.CACHE_ENV in message and "\n" not in message
    assert leftovers(cache) == []
