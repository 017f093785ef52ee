"""shared.weight_loading: every way loads the naive way's weights (exactly in float32; bfloat16
equals their bfloat16 cast), a tied head stays one Parameter, a model built on the meta device
gets real buffers, a checkpoint split into shards loads through its index, bad files get errors
that name what is wrong; the benchmark script runs end to end on a tiny model. (The memory
figures themselves are the benchmark's, not a test's.)"""

import json
import os
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from shared.data import CorruptDataError
from shared.llama3 import LLAMA3_STANDIN_CONFIG, LLAMA32_CONFIG_1B
from shared.open_models import OpenDecoderModel, count_parameters
from shared.weight_loading import (
    BF16_LOGITS_TOLERANCE,
    LOADING_WAYS,
    LoadingRun,
    SafetensorsFile,
    ShardedSafetensors,
    build_on_meta,
    load_into_bf16,
    load_into_empty,
    load_meta_assign,
    load_naive,
    logits_agreement,
    measure_loading,
    model_bytes,
    save_random_checkpoint,
    shard_files,
    shard_names,
)
from tests.notebook_code import REPO
from tests.scripts import run_script

TIED = {  # Llama 3.2's RoPE scaling and tied head, tiny
    **LLAMA32_CONFIG_1B,
    "vocab_size": 96,
    "context_length": 32,
    "emb_dim": 32,
    "n_heads": 4,
    "n_kv_groups": 2,
    "head_dim": 8,
    "hidden_dim": 48,
    "n_layers": 2,
}
UNTIED = {**TIED, "qk_norm": True, "tie_embeddings": False, "rope_llama3_scaling": None}
SLIDING = {  # two RoPE tables: sliding layers rotate with their own base
    **UNTIED,
    "layer_types": ["sliding_attention", "full_attention"],
    "sliding_window": 4,
    "rope_local_base": 10_000.0,
}
CONFIGS = {"tied": TIED, "untied": UNTIED, "sliding": SLIDING}
PROMPT = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])


@pytest.fixture(scope="module", params=list(CONFIGS))
def saved(request, tmp_path_factory):
    """(cfg, path of its random model.safetensors, the naive way's model of it)."""
    cfg = CONFIGS[request.param]
    path = tmp_path_factory.mktemp(request.param) / "model.safetensors"
    save_random_checkpoint(cfg, path)
    return cfg, path, load_naive(path, cfg)


def logits(model: OpenDecoderModel) -> torch.Tensor:
    with torch.no_grad():
        return model(PROMPT)


@pytest.mark.parametrize("way", ["meta-assign", "one-at-a-time"])
def test_each_way_loads_the_naive_weights_exactly(saved, way):
    cfg, path, naive = saved
    model = LOADING_WAYS[way](path, cfg)
    assert model.state_dict().keys() == naive.state_dict().keys()
    for name, tensor in naive.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert torch.equal(logits(model), logits(naive))
    assert not model.training


def test_bf16_holds_the_bf16_cast_of_the_weights(saved):
    cfg, path, naive = saved
    model = load_into_bf16(path, cfg)
    for name, tensor in naive.named_parameters():
        parameter = dict(model.named_parameters())[name]
        assert parameter.dtype == torch.bfloat16
        assert torch.equal(parameter, tensor.to(torch.bfloat16)), name
    difference = (logits(model).float() - logits(naive)).abs().max()
    assert difference <= BF16_LOGITS_TOLERANCE * logits(naive).abs().max()


@pytest.mark.parametrize("way", list(LOADING_WAYS))
def test_a_tied_head_stays_one_parameter(saved, way):
    cfg, path, _ = saved
    model = LOADING_WAYS[way](path, cfg)
    assert (model.out_head.weight is model.tok_emb.weight) == cfg["tie_embeddings"]
    assert count_parameters(model) == count_parameters(build_on_meta(cfg))
    assert all(p.requires_grad for p in model.parameters())  # trainable, as a built model is


@pytest.mark.parametrize("way", list(LOADING_WAYS))
def test_buffers_are_real_and_equal_a_built_models(saved, way):
    cfg, path, _ = saved
    model = LOADING_WAYS[way](path, cfg)
    built = dict(OpenDecoderModel(cfg).named_buffers())
    buffers = dict(model.named_buffers())
    assert buffers.keys() == built.keys()
    for name, buffer in buffers.items():
        assert buffer.device.type == "cpu", name
        assert torch.equal(buffer, built[name]), name


def test_model_bytes_counts_shared_memory_once():
    model = OpenDecoderModel(TIED)
    expected = sum(t.nbytes for t in (*model.parameters(), *model.buffers()))  # tied head once
    assert model_bytes(build_on_meta(TIED)) == expected
    model.out_head.weight = torch.nn.Parameter(model.tok_emb.weight.detach())  # one memory
    assert model_bytes(model) == expected


def test_make_buffers_replaces_every_meta_buffer():
    model = build_on_meta(SLIDING)
    assert {b.device.type for b in model.buffers()} == {"meta"}
    assert {p.device.type for p in model.parameters()} == {"meta"}  # no memory, no init
    model.make_buffers(SLIDING)
    assert {b.device.type for b in model.buffers()} == {"cpu"}


def test_meta_assign_converts_to_the_models_dtype(saved):
    cfg, path, _ = saved
    model = load_meta_assign(path, cfg)
    halved = load_meta_assign(path, {**cfg, "dtype": torch.bfloat16})
    assert {p.dtype for p in halved.parameters()} == {torch.bfloat16}
    assert torch.equal(halved.tok_emb.weight, model.tok_emb.weight.to(torch.bfloat16))


def test_a_tied_file_with_a_stored_head_loads_in_every_way(saved, tmp_path):
    cfg, path, naive = saved
    if not cfg["tie_embeddings"]:
        pytest.skip("only a tied model's file may hold the head as a copy of the embedding")
    tensors = load_file(path)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, tmp_path / "with_head.safetensors")
    for way, load in LOADING_WAYS.items():
        model = load(tmp_path / "with_head.safetensors", cfg)
        assert model.out_head.weight is model.tok_emb.weight, way
        expected = naive.tok_emb.weight.to(model.tok_emb.weight.dtype)
        assert torch.equal(model.tok_emb.weight, expected), way


@pytest.fixture(scope="module")
def tensors(tmp_path_factory):
    """The tensors of TIED's saved model, and a folder for broken copies."""
    folder = tmp_path_factory.mktemp("bad")
    save_random_checkpoint(TIED, folder / "good.safetensors")
    return load_file(folder / "good.safetensors"), folder


@pytest.mark.parametrize("way", list(LOADING_WAYS))
def test_a_missing_tensor_is_named(tensors, way):
    good, folder = tensors
    missing = {k: v for k, v in good.items() if k != "model.layers.1.mlp.up_proj.weight"}
    save_file(missing, folder / "missing.safetensors")
    with pytest.raises(ValueError, match=r"1 missing \(model\.layers\.1\.mlp\.up_proj\.weight\)"):
        LOADING_WAYS[way](folder / "missing.safetensors", TIED)


@pytest.mark.parametrize("way", list(LOADING_WAYS))
def test_a_tensor_of_the_wrong_shape_is_named_with_both_shapes(tensors, way):
    good, folder = tensors
    wrong = {**good, "model.norm.weight": torch.ones(31)}
    save_file(wrong, folder / "wrong.safetensors")
    expected = r"model\.norm\.weight is \(31,\), final_norm\.scale needs \(32,\)"
    with pytest.raises(ValueError, match=expected):
        LOADING_WAYS[way](folder / "wrong.safetensors", TIED)


@pytest.mark.parametrize("way", list(LOADING_WAYS))
def test_a_file_that_is_not_safetensors_is_named(tensors, way):
    _, folder = tensors
    (folder / "notes.safetensors").write_text("these are my notes, not weights\n")
    with pytest.raises(CorruptDataError, match=r"notes\.safetensors: header of"):
        LOADING_WAYS[way](folder / "notes.safetensors", TIED)


def test_save_random_checkpoint_writes_once_per_config_and_seed(tmp_path):
    path = tmp_path / "model.safetensors"
    assert save_random_checkpoint(TIED, path, seed=1)
    first = load_file(path)
    assert not save_random_checkpoint(TIED, path, seed=1)  # reused
    assert save_random_checkpoint(TIED, path, seed=2)  # another seed: written again
    embedding = "model.embed_tokens.weight"
    assert not torch.equal(first[embedding], load_file(path)[embedding])
    assert save_random_checkpoint({**TIED, "n_layers": 1}, path, seed=2)  # another shape
    path.write_bytes(b"truncated")
    assert save_random_checkpoint(TIED, path, seed=2)  # unreadable: written again
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]  # no temporary file left
    assert "lm_head.weight" not in load_file(path)  # a tied head is stored once


def test_safetensors_file_reads_one_tensor_at_a_time(tensors):
    good, folder = tensors
    lazy = SafetensorsFile(folder / "good.safetensors")
    assert sorted(lazy) == sorted(good) and len(lazy) == len(good)
    assert "model.norm.weight" in lazy and "lm_head.weight" not in lazy
    assert torch.equal(lazy["model.norm.weight"], good["model.norm.weight"])
    with pytest.raises(KeyError, match="lm_head.weight"):
        lazy["lm_head.weight"]


def split_into_shards(path, folder) -> list[str]:
    """The tensors of the model.safetensors at path saved as two shards in folder, with a
    model.safetensors.index.json naming them as Hugging Face's does; returns the shard names."""
    tensors = load_file(path)
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2]}
    halves["model-00002-of-00002.safetensors"] = names[1::2]
    weight_map = {}
    for shard, shard_tensors in halves.items():
        save_file({name: tensors[name] for name in shard_tensors}, folder / shard)
        weight_map.update(dict.fromkeys(shard_tensors, shard))
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}}
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({**index, "weight_map": weight_map})
    )
    return list(halves)


def test_a_sharded_checkpoint_loads_through_its_index(saved, tmp_path):
    cfg, path, naive = saved
    written = split_into_shards(path, tmp_path)
    index = tmp_path / "model.safetensors.index.json"
    assert shard_names(index) == written
    specs = shard_files(index, "some-model", "https://example.org/some-model")
    assert [spec.name for spec in specs] == [f"some-model/{name}" for name in written]
    assert specs[1].url == f"https://example.org/some-model/{written[1]}"
    params = ShardedSafetensors(tmp_path / name for name in written)
    assert sorted(params) == sorted(load_file(path)) and len(params) == len(load_file(path))
    model = load_into_empty(OpenDecoderModel, cfg, params)
    assert not model.training
    assert (model.out_head.weight is model.tok_emb.weight) == cfg["tie_embeddings"]
    for name, tensor in naive.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert torch.equal(logits(model), logits(naive))


def test_a_tensor_in_two_shards_is_refused(tensors):
    _, folder = tensors
    good = folder / "good.safetensors"
    first = next(iter(SafetensorsFile(good)))
    with pytest.raises(ValueError, match=rf"{re.escape(first)} is in more than one file"):
        ShardedSafetensors([good, good])


def test_an_index_without_a_weight_map_is_named(tmp_path):
    path = tmp_path / "model.safetensors.index.json"
    path.write_text('{"metadata": {}}')
    with pytest.raises(CorruptDataError, match="model.safetensors.index.json: no weight_map"):
        shard_names(path)


def test_logits_agreement_says_equal_close_or_differ():
    reference = torch.tensor([[1.0, -2.0, 4.0]])

    def run(dtype: str, values: torch.Tensor) -> LoadingRun:
        return LoadingRun("way", dtype, 0, 0, 0, 0.0, 0.0, values)

    naive = run("float32", reference)
    assert logits_agreement(run("float32", reference.clone()), naive) == "equal"
    near = reference + torch.tensor([[0.0, 0.0, 0.04]])  # 1% of the largest logit, 4
    assert logits_agreement(run("bfloat16", near), naive).startswith(
        "close (largest difference 1.0%"
    )
    assert logits_agreement(run("float32", near), naive).startswith("differ")
    far = reference + torch.tensor([[0.0, 0.0, 1.0]])
    assert logits_agreement(run("bfloat16", far), naive).startswith(
        "differ (largest difference 25.0%"
    )


def test_measure_loading_names_an_unknown_way(tensors):
    _, folder = tensors
    with pytest.raises(ValueError, match="unknown way 'mmap'; choose from naive, meta-assign"):
        measure_loading(["naive", "mmap"], folder / "good.safetensors", TIED)


@pytest.mark.skipif(
    not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's peak counter"
)
def test_the_benchmark_runs_end_to_end_on_a_tiny_model(tmp_path):
    script = REPO / "ch05/open-models/benchmark_loading.py"
    args = ["--shape", "llama3-standin", "--layers", "1", "--vocab", "1000", "--folder", tmp_path]
    result = run_script(script, *args, "--ways", "naive", "bf16", timeout=120)
    tiny = {**LLAMA3_STANDIN_CONFIG, "n_layers": 1, "vocab_size": 1000}
    assert f"{count_parameters(build_on_meta(tiny)):,} parameters" in result.stdout
    assert f"saved {tmp_path / 'model.safetensors'}" in result.stdout
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[-2:]}
    assert rows["naive"].endswith("equal")
    assert "close (largest difference" in rows["bf16"]
    assert "load average before:" in result.stdout and "load average after:" in result.stdout
