"""shared.gpt2_weights against transformers' GPT2LMHeadModel, on checkpoints the tests write."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from safetensors.torch import load_file

import shared.data
from shared import gpt2_weights
from shared.data import CorruptDataError, DataUnavailableError
from shared.gpt import GPT2_MODEL_CONFIGS, GPTModel
from shared.gpt2_weights import (
    GPT2_HF_NAMES,
    HF_ENDPOINT_ENV,
    STANDIN_CONFIG,
    STANDIN_ENV,
    check_safetensors,
    gpt2_weights_file,
    load_gpt2_params,
    load_pretrained_gpt2,
    load_weights_into_gpt,
    standin_gpt,
)
from tests.conftest import REFERENCE_CONFIG, hf_logits


@pytest.mark.parametrize("layout", ["transformers", "official"])
def test_loaded_model_reproduces_transformers_logits(reference, layout):
    hf_model, hf_file, official_file = reference
    params = load_file(hf_file if layout == "transformers" else official_file)
    if layout == "transformers":
        assert any(key.startswith("transformer.") for key in params)
    else:
        assert "wte.weight" in params and "h.0.attn.bias" in params
    gpt = GPTModel(REFERENCE_CONFIG).eval()
    load_weights_into_gpt(gpt, params)
    ids = torch.randint(
        0, REFERENCE_CONFIG["vocab_size"], (2, 40), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        ours = gpt(ids)
    torch.testing.assert_close(ours, hf_logits(hf_model, ids), atol=1e-4, rtol=0)
    # GPT-2 ties the output head to the token embedding.
    assert torch.equal(gpt.out_head.weight, gpt.tok_emb.weight)
    assert torch.equal(gpt.tok_emb.weight, hf_model.transformer.wte.weight)


def test_gpt2_layout_tensors_are_transformers_own_layout(reference):
    """Written from a GPTModel, the tensors are exactly those transformers saved: names, shapes,
    values (every tensor of the reference is random, so a misplaced one would differ)."""
    hf_model, _, official_file = reference
    gpt = GPTModel(REFERENCE_CONFIG).eval()
    load_weights_into_gpt(gpt, load_file(official_file))
    written = gpt2_weights.gpt2_layout_tensors(gpt)
    expected = {
        key.removeprefix("transformer."): tensor
        for key, tensor in hf_model.state_dict().items()
        if key != "lm_head.weight" and not key.endswith((".attn.bias", ".attn.masked_bias"))
    }
    assert sorted(written) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(written[name], tensor), name
    with pytest.raises(ValueError, match="qkv_bias=True"):
        gpt2_weights.gpt2_layout_tensors(GPTModel({**REFERENCE_CONFIG, "qkv_bias": False}))


def test_lm_head_weight_is_used_when_present(reference):
    _, _, official_file = reference
    params = load_file(official_file)
    params["lm_head.weight"] = torch.randn_like(params["wte.weight"])
    gpt = GPTModel(REFERENCE_CONFIG)
    load_weights_into_gpt(gpt, params)
    assert torch.equal(gpt.out_head.weight, params["lm_head.weight"])


def test_shape_mismatch_names_tensor_and_both_shapes(reference):
    _, hf_file, _ = reference
    params = load_file(hf_file)
    params["transformer.h.1.mlp.c_fc.weight"] = torch.zeros(64, 100)
    with pytest.raises(ValueError, match=r"h\.1\.mlp\.c_fc\.weight.*\(64, 100\).*\(64, 256\)"):
        load_weights_into_gpt(GPTModel(REFERENCE_CONFIG), params)
    wrong_context = {**REFERENCE_CONFIG, "context_length": 32}
    with pytest.raises(ValueError, match=r"wpe\.weight.*\(64, 64\).*\(32, 64\)"):
        load_weights_into_gpt(GPTModel(wrong_context), load_file(hf_file))


def test_missing_and_unexpected_tensors_are_named(reference):
    _, _, official_file = reference
    params = load_file(official_file)
    del params["h.1.ln_2.bias"]
    with pytest.raises(ValueError, match=r"1 missing \(h\.1\.ln_2\.bias\)$"):
        load_weights_into_gpt(GPTModel(REFERENCE_CONFIG), params)
    one_layer = {**REFERENCE_CONFIG, "n_layers": 1}
    with pytest.raises(ValueError, match=r"12 unexpected \(h\.1\..*h\.1\.ln_1\.weight"):
        load_weights_into_gpt(GPTModel(one_layer), load_file(official_file))


def test_model_without_qkv_bias_is_refused(reference):
    _, hf_file, _ = reference
    with pytest.raises(ValueError, match="qkv_bias=True"):
        load_weights_into_gpt(GPTModel({**REFERENCE_CONFIG, "qkv_bias": False}), load_file(hf_file))


def test_check_safetensors_detects_truncation_and_garbage(reference, tmp_path):
    _, hf_file, _ = reference
    check_safetensors(hf_file)  # a good file passes
    data = hf_file.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[:-10])
    with pytest.raises(CorruptDataError, match="truncated"):
        check_safetensors(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"<html>not found</html>")
    with pytest.raises(CorruptDataError):
        check_safetensors(garbage)
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"abc")
    with pytest.raises(CorruptDataError, match="too short"):
        check_safetensors(short)


def test_weights_file_addresses(monkeypatch):
    monkeypatch.delenv(HF_ENDPOINT_ENV, raising=False)
    assert GPT2_HF_NAMES == {
        "124M": "gpt2",
        "355M": "gpt2-medium",
        "774M": "gpt2-large",
        "1558M": "gpt2-xl",
    }
    spec = gpt2_weights_file("355M")
    assert spec.name == "gpt2-355M/model.safetensors"
    assert (
        spec.url
        == "https://huggingface.co/openai-community/gpt2-medium/resolve/main/model.safetensors"
    )
    assert spec.sha256 is None and spec.check is check_safetensors
    with pytest.raises(ValueError, match="124M"):
        gpt2_weights_file("7B")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty cache and mirror, and a network that cannot be reached."""
    monkeypatch.setenv(shared.data.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(shared.data.MIRROR_ENV, str(tmp_path / "mirror"))
    (tmp_path / "mirror").mkdir()

    def unreachable(url, out, quiet=False):
        raise urllib.error.URLError("network unreachable (test)")

    monkeypatch.setattr(shared.data, "download_to", unreachable)
    monkeypatch.delenv(STANDIN_ENV, raising=False)  # the test suite's switch would skip the fetch
    monkeypatch.delenv(HF_ENDPOINT_ENV, raising=False)
    return tmp_path


def test_offline_gives_the_standin_with_one_line(offline, capsys):
    with pytest.raises(DataUnavailableError, match="gpt2-124M/model.safetensors"):
        load_gpt2_params("124M")
    pretrained = load_pretrained_gpt2("124M", seed=5)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [
        "GPT-2 124M weights are not available (network unreachable (test), from "
        "https://huggingface.co/openai-community/gpt2/resolve/main/model.safetensors); using the "
        "stand-in: a randomly initialised 4-layer, 256-dim GPT (shared.gpt2_weights.STANDIN_CONFIG)."
    ]
    assert pretrained.is_standin and pretrained.config == STANDIN_CONFIG
    assert not pretrained.model.training
    assert len(pretrained.model.trf_blocks) == 4 and pretrained.model.tok_emb.weight.shape == (
        50257,
        256,
    )
    # The same seed gives the same stand-in as the one the scripts build with standin_gpt.
    direct = standin_gpt(seed=5)
    assert direct.is_standin and direct.description == pretrained.description
    for a, b in zip(direct.model.parameters(), pretrained.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(standin_gpt(seed=6).model.tok_emb.weight, direct.model.tok_emb.weight)
    # The stand-in is reproducible from its seed.
    torch.manual_seed(5)
    again = GPTModel(STANDIN_CONFIG)
    assert torch.equal(again.out_head.weight, pretrained.model.out_head.weight)


def test_weights_in_the_mirror_are_loaded(offline, reference, monkeypatch, capsys):
    hf_model, hf_file, _ = reference
    target = offline / "mirror" / "gpt2-124M" / "model.safetensors"
    target.parent.mkdir()
    target.write_bytes(hf_file.read_bytes())
    monkeypatch.setitem(GPT2_MODEL_CONFIGS, "124M", REFERENCE_CONFIG)
    pretrained = load_pretrained_gpt2("124M")
    assert capsys.readouterr().out == ""
    assert not pretrained.is_standin and pretrained.config == REFERENCE_CONFIG
    assert not pretrained.model.training
    assert "GPT-2 124M" in pretrained.description
    ids = torch.arange(30).unsqueeze(0)
    with torch.no_grad():
        ours = pretrained.model(ids)
    torch.testing.assert_close(ours, hf_logits(hf_model, ids), atol=1e-4, rtol=0)


def test_corrupt_mirror_file_is_an_error(offline):
    target = offline / "mirror" / "gpt2-124M" / "model.safetensors"
    target.parent.mkdir()
    target.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(CorruptDataError, match="model.safetensors"):
        gpt2_weights.load_gpt2_params("124M")


def test_unknown_size():
    with pytest.raises(ValueError, match="unknown GPT-2 size"):
        load_pretrained_gpt2("2B")
