"""shared.olmo3 against transformers' Olmo3ForCausalLM.

A small random reference model with OLMo 3's architecture (post-norms, QK-norm over the whole
projections, sliding-window layers with a window shorter than the test sequences, YaRN on the
full-attention layer, a different RoPE base on the sliding ones, grouped key/value heads so the
key norm is narrower than the query norm, an untied head) is saved with save_pretrained, read
back with olmo3_config_from_hf and load_hf_weights, and must give the same logits and greedy
tokens, with and without the KV cache. The published 7B configuration gives transformers' own
RoPE tables and parameter count. Bad input gets errors that name the value.
"""

import pytest
import torch

from shared.attention import causal_mask
from shared.olmo3 import (
    OLMO3_CONFIG_7B,
    OLMO3_LAYER_PATTERN,
    OLMO3_STANDIN_CONFIG,
    Olmo3Attention,
    Olmo3Block,
    Olmo3Model,
    OlmoRMSNorm,
    load_pretrained_olmo3,
    olmo3_config_from_hf,
)
from shared.open_models import (
    RMSNorm,
    SwiGLUFeedForward,
    count_parameters,
    rope_tables_for,
)
from shared.pretraining import generate
from shared.rope import rope_tables
from shared.weight_loading import ShardedSafetensors, load_into_empty, shard_names
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
from tests.notebook_code import notebook_definitions

transformers = pytest.importorskip("transformers")
modeling_olmo3 = pytest.importorskip("transformers.models.olmo3.modeling_olmo3")

WINDOW = 8  # sliding window: the test sequences (20 to 40 tokens) are longer
REFERENCE = {
    "vocab_size": 320,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 4,  # Olmo3Config's default pattern: sliding, sliding, sliding, full
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # k_norm covers 2 * 16 dimensions, q_norm 4 * 16
    "max_position_embeddings": 48,
    "initializer_range": 0.1,  # larger than the default, so the logits differ clearly
    "rms_norm_eps": 1e-6,
    "sliding_window": WINDOW,
    "eos_token_id": None,
    "pad_token_id": 0,
    "rope_parameters": {
        "full_attention": {
            "rope_type": "yarn",
            "rope_theta": 10_000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 12,  # the tests run past it
        },
        "sliding_attention": {"rope_type": "default", "rope_theta": 500_000.0},
    },
}

# allenai/Olmo-3-1025-7B's config.json as transformers 4.57 writes it (rope_theta and
# rope_scaling, not rope_parameters), with OLMO3_CONFIG_7B's values (see shared.olmo3).
PUBLISHED_7B = {
    "architectures": ["Olmo3ForCausalLM"],
    "model_type": "olmo3",
    "vocab_size": 100_278,
    "hidden_size": 4096,
    "intermediate_size": 11_008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 65_536,
    "rms_norm_eps": 1e-6,
    "sliding_window": 4096,
    "layer_types": OLMO3_LAYER_PATTERN * 8,
    "rope_theta": 500_000,
    "rope_scaling": {
        "rope_type": "yarn",
        "factor": 8.0,
        "original_max_position_embeddings": 8192,
        "beta_fast": 32,
        "beta_slow": 1,
        "attention_factor": 1.2079441541679836,
    },
    "attention_bias": False,
    "tie_word_embeddings": False,
}


def reference_config(**changes) -> "transformers.Olmo3Config":
    return transformers.Olmo3Config(**{**REFERENCE, **changes})


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(reference model, course model loaded from the reference's saved files, saved folder)."""
    torch.manual_seed(0)
    reference = transformers.Olmo3ForCausalLM(reference_config()).eval()
    folder = tmp_path_factory.mktemp("olmo3")
    course = save_and_load(reference, folder, olmo3_config_from_hf, Olmo3Model)
    return reference, course, folder


def test_config_is_read_from_the_saved_config_json(pair):
    reference, course, folder = pair
    cfg = olmo3_config_from_hf(saved_config(folder))
    assert cfg["layer_types"] == reference.config.layer_types == OLMO3_LAYER_PATTERN
    assert cfg["sliding_window"] == WINDOW and cfg["rope_local_base"] == 500_000.0
    assert cfg["rope_base"] == 10_000.0 and cfg["rope_yarn_scaling"]["factor"] == 4.0
    assert [block.att.window for block in course.trf_blocks] == [WINDOW, WINDOW, WINDOW, None]
    assert course.out_head.weight is not course.tok_emb.weight
    assert count_parameters(course) == sum(p.numel() for p in reference.parameters())


def test_logits_match_the_reference(pair):
    reference, course, _ = pair
    # float32 on both sides, the same operations in the same order up to the matmul kernels'
    # summation order: rounding differences of about 1e-6 on logits of size ~3 (2.6e-6 seen).
    assert_logits_match(reference, course, random_ids(40, seed=1, batch=2), atol=1e-5)


def test_greedy_tokens_match_with_and_without_the_kv_cache(pair):
    reference, course, _ = pair
    new = 30  # 36 positions: past the window (8) and YaRN's original context (12)
    assert_greedy_tokens_match(reference, course, random_ids(6, seed=2), new, context_size=48)


def test_cached_logits_equal_the_full_forward_pass(pair):
    _, course, _ = pair
    cache = assert_cached_logits_match(course, random_ids(30, seed=3), prompt_length=12, atol=1e-5)
    # The sliding layers keep only the last window - 1 positions; the full layer keeps all 30.
    assert [layer.tensors[0].shape[2] for layer in cache.layers] == [WINDOW - 1] * 3 + [30]


def test_bf16_loading_keeps_the_predictions(pair):
    reference, _, folder = pair
    model = load_saved(folder, olmo3_config_from_hf, Olmo3Model, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert relative_logit_error(reference, model, random_ids(16, seed=4)) < 0.05


def test_olmo_rmsnorm_rounds_like_the_reference_in_bfloat16():
    torch.manual_seed(0)
    x = torch.randn(4, 64, 256).bfloat16()
    scale = torch.rand(256) * 2
    reference = modeling_olmo3.Olmo3RMSNorm(256, eps=1e-6).bfloat16()
    olmo, llama_style = OlmoRMSNorm(256, 1e-6, torch.bfloat16), RMSNorm(256, 1e-6, torch.bfloat16)
    with torch.no_grad():
        for norm in (reference, olmo, llama_style):
            next(norm.parameters()).copy_(scale)
        assert torch.equal(olmo(x), reference(x)) and olmo(x).dtype == torch.bfloat16
        assert not torch.equal(llama_style(x), reference(x))  # casting first rounds twice


def test_qk_norm_covers_the_whole_projection():
    torch.manual_seed(0)
    att = Olmo3Attention(d_in=64, num_heads=4, num_kv_groups=2, head_dim=16)  # scales at 1
    assert att.q_norm.scale.shape == (4 * 16,) and att.k_norm.scale.shape == (2 * 16,)
    with torch.no_grad():
        att.W_query.weight[:16] *= 10  # the first head's projection grows
        queries, keys, _ = att.project(torch.randn(1, 5, 64))  # (1, 4, 5, 16), (1, 2, 5, 16)
    # One root mean square per token over all heads together, so heads keep their sizes.
    torch.testing.assert_close(queries.pow(2).mean(dim=(1, 3)), torch.ones(1, 5))
    torch.testing.assert_close(keys.pow(2).mean(dim=(1, 3)), torch.ones(1, 5))
    per_head = queries.pow(2).mean(dim=3)  # (1, 4, 5)
    assert (per_head[:, 0] > 10 * per_head[:, 1:].amax(dim=1)).all()


def test_the_notebooks_block_and_attention_equal_the_package(pair):
    cfg = olmo3_config_from_hf(saved_config(pair[2]))
    notebook = notebook_definitions("ch05/open-models/olmo3.ipynb")
    torch.manual_seed(0)
    attention = notebook["WholeProjectionQKNorm"](64, num_heads=4, num_kv_groups=2, head_dim=16)
    block = notebook["PostNormBlock"](attention, SwiGLUFeedForward(64, 96), 64, eps=1e-6)
    with torch.no_grad():
        for name, param in block.named_parameters():
            if name.endswith("scale"):  # norms' scales away from 1, so a misplaced norm shows
                param.uniform_(0.5, 1.5)
    package = Olmo3Block(cfg, "sliding_attention")  # a window of 8 < 12 tokens
    package.load_state_dict(block.state_dict())  # strict: the same names and shapes
    block.att.window = package.att.window
    x = torch.randn(2, 12, 64)
    cos, sin = rope_tables(16, 12)
    with torch.no_grad():
        torch.testing.assert_close(
            block(x, cos, sin, causal_mask(12)), package(x, cos, sin, causal_mask(12))
        )


def test_published_config_is_read_and_gives_the_reference_rope_tables():
    assert olmo3_config_from_hf(PUBLISHED_7B) == OLMO3_CONFIG_7B
    settings = {k: v for k, v in PUBLISHED_7B.items() if k not in ("architectures", "model_type")}
    rotary = modeling_olmo3.Olmo3RotaryEmbedding(transformers.Olmo3Config(**settings))
    positions = torch.arange(65_536)[None]
    for layer_type in ("full_attention", "sliding_attention"):
        expected_cos, expected_sin = rotary(torch.zeros(1), positions, layer_type)
        cos, sin = rope_tables_for(OLMO3_CONFIG_7B, layer_type)
        # The same float32 arithmetic: equal to the last bit over all 65,536 positions.
        assert torch.equal(cos, expected_cos[0]) and torch.equal(sin, expected_sin[0])
    assert cos[0, 0] == 1.0  # sliding layers: plain RoPE
    full_cos, _ = rope_tables_for(OLMO3_CONFIG_7B, "full_attention")
    assert full_cos[0, 0].item() == pytest.approx(1.2079441541679836)  # YaRN's attention factor


def test_published_7b_config_has_the_reference_parameter_count():
    settings = {k: v for k, v in PUBLISHED_7B.items() if k not in ("architectures", "model_type")}
    with torch.device("meta"):
        course = Olmo3Model(OLMO3_CONFIG_7B)
        reference = transformers.Olmo3ForCausalLM(transformers.Olmo3Config(**settings))
    # 7,298,011,136: transformers' count for the same config (and the checkpoint's listed size).
    assert count_parameters(course) == sum(p.numel() for p in reference.parameters())
    assert count_parameters(course) == 7_298_011_136


def test_a_sharded_checkpoint_loads_through_its_index(pair, tmp_path):
    # As load_pretrained_olmo3 loads the published shards (shared.weight_loading tests the
    # sharded reading itself).
    reference, course, folder = pair
    reference.save_pretrained(tmp_path, max_shard_size="40KB")
    names = shard_names(tmp_path / "model.safetensors.index.json")
    assert len(names) > 1 and all((tmp_path / name).exists() for name in names)
    params = ShardedSafetensors(tmp_path / name for name in names)
    assert params.keys() == saved_weights(folder).keys()
    cfg = olmo3_config_from_hf(saved_config(folder))
    model = load_into_empty(Olmo3Model, cfg, params)
    assert isinstance(model, Olmo3Model) and not model.training
    assert course.state_dict().keys() == model.state_dict().keys()
    for name, tensor in course.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_missing_layer_types_get_olmo3s_pattern():
    without = {k: v for k, v in PUBLISHED_7B.items() if k not in ("layer_types", "sliding_window")}
    cfg = olmo3_config_from_hf(without)
    assert cfg["layer_types"] == OLMO3_CONFIG_7B["layer_types"] and cfg["sliding_window"] == 4096


def test_bad_configurations_are_refused_by_value():
    with pytest.raises(ValueError, match="model_type 'olmo2'"):
        olmo3_config_from_hf({**PUBLISHED_7B, "model_type": "olmo2"})
    small = OLMO3_STANDIN_CONFIG
    with pytest.raises(ValueError, match="norm_placement='post', not 'pre'"):
        Olmo3Model({**small, "norm_placement": "pre"})
    with pytest.raises(ValueError, match="qk_norm=True"):
        Olmo3Model({**small, "qk_norm": False})


def test_under_the_test_switch_the_standin_runs_with_the_cache(capsys):
    loaded = load_pretrained_olmo3()
    assert loaded.is_standin
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "LLM_COURSE_STANDIN=1" in out and "stand-in" in out
    assert loaded.model.layer_types == OLMO3_LAYER_PATTERN
    ids = torch.tensor([loaded.tokenizer.encode("Every effort moves you")])
    plain = generate(loaded.model, ids, 8, loaded.model.context_length)
    cached = generate(loaded.model, ids, 8, loaded.model.context_length, use_cache=True)
    assert torch.equal(plain, cached) and plain.shape == (1, ids.shape[1] + 8)


def test_without_the_files_one_line_says_why_and_the_standin_runs(monkeypatch, capsys):
    import shared.open_models
    from shared.data import DataUnavailableError

    def unavailable(spec, **kwargs):
        raise DataUnavailableError(f"Could not get '{spec.name}'")

    monkeypatch.delenv("LLM_COURSE_STANDIN")
    monkeypatch.setattr(shared.open_models, "fetch", unavailable)
    assert load_pretrained_olmo3().is_standin
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("OLMo 3 7B not available (offline?)")
