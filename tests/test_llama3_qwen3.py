"""shared.llama3 / shared.qwen3 against transformers' LlamaForCausalLM and Qwen3ForCausalLM.

Small random reference models are saved with save_pretrained, read back with the course's
loader (config_from_hf + load_hf_weights), and must give the same logits and greedy tokens,
with and without the KV cache. Bad input gets errors that name the value.
"""

import pytest
import torch

from shared.llama3 import (
    LLAMA3_SPECIAL_TOKENS,
    Llama3Model,
    llama3_tokenizer,
    load_pretrained_llama3,
)
from shared.open_models import (
    HuggingFaceTokenizer,
    config_from_hf,
    count_parameters,
    hf_key_mapping,
    load_hf_weights,
)
from shared.pretraining import generate
from shared.qwen3 import Qwen3Model, chat_prompt, load_pretrained_qwen3
from shared.tokenizers import gpt2_tokenizer
from tests.hf_parity import (
    assert_cached_logits_match,
    assert_greedy_tokens_match,
    assert_logits_match,
    load_saved,
    random_ids,
    relative_logit_error,
    save_and_load,
    saved_config,
    saved_weights,
)

transformers = pytest.importorskip("transformers")

COMMON = {
    "vocab_size": 320,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 48,
    "initializer_range": 0.1,  # larger than the default, so the logits differ clearly
}
LLAMA_REFERENCE = {
    **COMMON,
    "head_dim": 16,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "rope_parameters": {
        "rope_type": "llama3",
        "rope_theta": 500_000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 12,
    },
}
QWEN3_REFERENCE = {
    **COMMON,
    "head_dim": 32,  # 4 heads * 32 = 128 query dimensions from a 64-dimensional embedding
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
}
ARCHITECTURES = {
    "llama3": (
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        Llama3Model,
        LLAMA_REFERENCE,
    ),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, Qwen3Model, QWEN3_REFERENCE),
}


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def pair(request, tmp_path_factory):
    """(reference model, course model loaded from the reference's saved files, saved folder)."""
    config_class, model_class, course_class, settings = ARCHITECTURES[request.param]
    torch.manual_seed(0)
    reference = model_class(config_class(**settings)).eval()
    folder = tmp_path_factory.mktemp(request.param)
    course = save_and_load(reference, folder, config_from_hf, course_class)
    return reference, course, folder


def test_config_is_read_from_the_saved_config_json(pair):
    reference, course, folder = pair
    cfg = config_from_hf(saved_config(folder))
    assert cfg["head_dim"] == reference.config.head_dim
    assert cfg["n_kv_groups"] == 2 and cfg["context_length"] == 48
    if cfg["qk_norm"]:  # Qwen3: tied head, plain RoPE
        assert cfg["tie_embeddings"] and cfg["rope_llama3_scaling"] is None
        assert course.out_head.weight is course.tok_emb.weight
    else:
        assert cfg["rope_llama3_scaling"]["original_context_length"] == 12
    assert count_parameters(course) == sum(p.numel() for p in reference.parameters())


def test_logits_match_the_reference(pair):
    reference, course, _ = pair
    assert_logits_match(reference, course, random_ids(40, seed=1, batch=2), atol=1e-5)


def test_greedy_tokens_match_with_and_without_the_kv_cache(pair):
    reference, course, _ = pair
    new = 30  # 36 positions: past the 12 of Llama's original RoPE context
    assert_greedy_tokens_match(reference, course, random_ids(6, seed=2), new, context_size=48)


def test_cached_logits_equal_the_full_forward_pass(pair):
    _, course, _ = pair
    assert_cached_logits_match(course, random_ids(20, seed=3), prompt_length=12, atol=1e-5)


def test_bf16_loading_halves_the_memory_and_keeps_the_predictions(pair):
    reference, course, folder = pair
    model = load_saved(folder, config_from_hf, type(course), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert relative_logit_error(reference, model, random_ids(16, seed=4)) < 0.05


def test_key_mapping_names_every_tensor_of_the_checkpoint(pair):
    _, course, folder = pair
    stored = set(saved_weights(folder))
    mapping = hf_key_mapping(course)
    assert set(mapping.values()) == stored
    assert mapping["trf_blocks.1.att.W_key.weight"] == "model.layers.1.self_attn.k_proj.weight"


def test_missing_and_unexpected_tensors_are_listed(pair):
    _, course, folder = pair
    params = saved_weights(folder)
    params.pop("model.layers.1.mlp.up_proj.weight")
    params["model.layers.2.mlp.up_proj.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as err:
        load_hf_weights(course, params)
    message = str(err.value)
    assert "1 missing (model.layers.1.mlp.up_proj.weight)" in message
    assert "1 unexpected (model.layers.2.mlp.up_proj.weight)" in message


def test_a_tensor_of_the_wrong_shape_is_named_with_both_shapes(pair):
    _, course, folder = pair
    params = saved_weights(folder)
    params["model.norm.weight"] = torch.ones(63)
    with pytest.raises(
        ValueError, match=r"model\.norm\.weight is \(63,\), final_norm\.scale needs \(64,\)"
    ):
        load_hf_weights(course, params)


def test_qwen3_checkpoint_does_not_fit_llama3_and_vice_versa(pair):
    _, course, folder = pair
    cfg = config_from_hf(saved_config(folder))
    other = Llama3Model if cfg["qk_norm"] else Qwen3Model
    with pytest.raises(ValueError, match="qk_norm"):
        other(cfg)


def tiny_cfg(**changes) -> dict:
    cfg = config_from_hf({**LLAMA_REFERENCE, "model_type": "llama"})
    return {**cfg, **changes}


def test_heads_that_do_not_divide_into_kv_groups_are_refused_by_value():
    with pytest.raises(
        ValueError, match=r"num_heads \(4\) must be divisible by num_kv_groups \(3\)"
    ):
        Llama3Model(tiny_cfg(n_kv_groups=3))


def test_odd_head_dim_is_refused_by_value():
    with pytest.raises(ValueError, match="head_dim=15"):
        Llama3Model(tiny_cfg(head_dim=15))


def test_context_longer_than_the_rope_table_is_refused_by_value():
    model = Llama3Model(tiny_cfg()).eval()
    with pytest.raises(ValueError, match="input has 49 tokens but .* is 48"):
        model(torch.zeros(1, 49, dtype=torch.long))
    cache = model.new_cache()
    model(torch.zeros(1, 40, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="input has 9 tokens after 40 cached tokens .* is 48"):
        model(torch.zeros(1, 9, dtype=torch.long), cache)


def test_the_shared_causal_mask_grows_by_doubling_and_a_sampled_one_trains():
    model = Llama3Model(tiny_cfg()).eval()  # context_length 48
    assert [model.causal_mask_for(n).shape[0] for n in (5, 6, 11, 30, 48)] == [5, 10, 20, 40, 48]
    assert torch.equal(model.mask, torch.ones(48, 48, dtype=torch.bool).triu(1))
    fresh = Llama3Model(tiny_cfg())
    with torch.inference_mode():  # the mask is built while sampling ...
        fresh(torch.zeros(1, 3, dtype=torch.long))
    fresh(torch.zeros(1, 3, dtype=torch.long)).sum().backward()  # ... and serves training
    assert fresh.tok_emb.weight.grad is not None


def test_a_tied_model_refuses_a_checkpoint_whose_head_differs():
    model = Llama3Model(tiny_cfg(tie_embeddings=True))
    params = {
        hf: torch.zeros_like(p) for hf, p in zip(hf_key_mapping(model).values(), model.parameters())
    }
    params["lm_head.weight"] = torch.ones_like(params["model.embed_tokens.weight"])
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        load_hf_weights(model, params)


def test_unsupported_rope_type_is_named():
    with pytest.raises(ValueError, match="'longrope'"):
        config_from_hf(
            {**LLAMA_REFERENCE, "model_type": "llama", "rope_parameters": {"rope_type": "longrope"}}
        )


def test_rope_scaling_without_its_settings_names_them():
    with pytest.raises(ValueError, match="yarn RoPE scaling needs factor"):
        config_from_hf(
            {**LLAMA_REFERENCE, "model_type": "llama", "rope_parameters": {"rope_type": "yarn"}}
        )


@pytest.mark.parametrize("load", [load_pretrained_llama3, load_pretrained_qwen3])
def test_under_the_test_switch_the_standin_runs_with_the_cache(load, capsys):
    loaded = load()
    assert loaded.is_standin
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "LLM_COURSE_STANDIN=1" in out and "stand-in" in out
    ids = torch.tensor([loaded.tokenizer.encode("Every effort moves you")])
    plain = generate(loaded.model, ids, 8, loaded.model.context_length)
    cached = generate(loaded.model, ids, 8, loaded.model.context_length, use_cache=True)
    assert torch.equal(plain, cached) and plain.shape == (1, ids.shape[1] + 8)


def test_llama3_tokenizer_numbers_its_special_tokens_after_the_byte_pairs(tmp_path):
    import base64

    ranks = gpt2_tokenizer()._mergeable_ranks  # a real byte-pair table in the same file format
    lines = [f"{base64.b64encode(token).decode()} {rank}" for token, rank in ranks.items()]
    path = tmp_path / "tokenizer.model"
    path.write_text("\n".join(lines) + "\n")
    tokenizer = llama3_tokenizer(path)
    text = "Hello, world! 12345 apples"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    ids = tokenizer.encode("<|begin_of_text|>Hi<|eot_id|>", allowed_special="all")
    assert ids[0] == len(ranks) and ids[-1] == len(ranks) + 9
    assert len(LLAMA3_SPECIAL_TOKENS) == 256 == len(set(LLAMA3_SPECIAL_TOKENS))


def test_llama3_tokenizer_file_errors_name_the_line(tmp_path):
    path = tmp_path / "tokenizer.model"
    path.write_text("SGk= 0\nnot-a-pair\n")
    with pytest.raises(ValueError, match="tokenizer.model line 2"):
        llama3_tokenizer(path)


def test_qwen3_tokenizer_reads_a_tokenizer_json_with_chat_tokens(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(["Every effort moves you forward, every day."] * 20, trainer)
    tokenizer.save(str(tmp_path / "tokenizer.json"))

    qwen = HuggingFaceTokenizer(tmp_path / "tokenizer.json")
    prompt = chat_prompt("Every effort moves you")
    ids = qwen.encode(prompt)
    assert ids[0] == qwen.token_id("<|im_start|>") == 1
    assert ids.count(qwen.token_id("<|im_end|>")) == 1
    assert qwen.decode(ids) == prompt
    with pytest.raises(ValueError, match="'<missing>'"):
        qwen.token_id("<missing>")


def test_without_the_files_one_line_says_why_and_the_standin_runs(monkeypatch, capsys):
    import shared.open_models
    from shared.data import DataUnavailableError

    def unavailable(spec, **kwargs):
        raise DataUnavailableError(f"Could not get '{spec.name}'")

    monkeypatch.delenv("LLM_COURSE_STANDIN")
    monkeypatch.setattr(shared.open_models, "fetch", unavailable)
    assert load_pretrained_llama3().is_standin
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("Llama 3.2 1B is gated")


def test_generation_benchmark_agrees_with_transformers_on_tokens():
    from tests.notebook_code import REPO
    from tests.scripts import run_script

    result = run_script(
        REPO / "ch05" / "open-models" / "benchmark_generation.py",
        *("--layers", "1", "--vocab", "300", "--prompt-tokens", "2", "--new-tokens", "3"),
        *("--repeats", "1"),
    )
    rows = [line for line in result.stdout.splitlines() if line.startswith(("course", "transf"))]
    assert len(rows) == 6, result.stdout  # three variants for each of llama3 and qwen3
    assert all(row.endswith("True") for row in rows), result.stdout


def test_a_sliding_layer_keeps_only_the_window_in_memory_after_a_long_prompt():
    # keep_last copies the kept positions: a view would keep the whole prompt's keys alive.
    cfg = tiny_cfg(layer_types=["sliding_attention", "full_attention"], sliding_window=4)
    model = Llama3Model(cfg).eval()
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.arange(40).view(1, 40), cache)
    sliding, full = cache.layers
    keys = sliding.tensors[0]
    assert keys.shape[2] == 3 and full.tensors[0].shape[2] == 40
    assert keys.untyped_storage().nbytes() == keys.numel() * keys.element_size()
