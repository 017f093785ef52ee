"""shared.gpt_oss against transformers' GptOssForCausalLM.

A small random reference (banded and full layers with a window shorter than the test sequence,
YaRN RoPE in both, attention sinks, biases everywhere, 6 experts top 2 with a clamp that bites)
is saved with save_pretrained, read back with gpt_oss_config_from_hf and load_hf_weights, and
must give the same logits and greedy tokens (with and without the KV cache). The MXFP4
dequantisation is checked against transformers' own. Bad input gets errors naming the value.
"""

import pytest
import torch
import transformers
from transformers.integrations.mxfp4 import convert_moe_packed_tensors

from shared import gpt_oss
from shared.attention_ops import attend
from shared.gpt_oss import (
    GPT_OSS_CONFIG_20B,
    ClampedSwiGLUExperts,
    GptOssModel,
    Mxfp4Checkpoint,
    dequantize_mxfp4,
    gpt_oss_config_from_hf,
    load_pretrained_gpt_oss,
)
from shared.open_models import count_parameters, hf_key_mapping, load_hf_weights
from shared.pretraining import generate
from shared.qwen3_moe import experts_in, moe_parameter_counts
from tests.hf_parity import (
    assert_cached_logits_match,
    assert_greedy_tokens_match,
    assert_logits_match,
    random_ids,
    save_and_load,
    saved_config,
    saved_weights,
)

SMALL = {
    "vocab_size": 320,
    "hidden_size": 64,
    "intermediate_size": 32,
    "num_hidden_layers": 4,  # sliding, full, sliding, full
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_local_experts": 6,
    "num_experts_per_tok": 2,
    "sliding_window": 6,  # shorter than the test sequences
    "max_position_embeddings": 64,
    "rope_parameters": {
        "rope_type": "yarn",
        "rope_theta": 150_000.0,
        "factor": 4.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "truncate": False,
        "original_max_position_embeddings": 16,
    },
    "swiglu_limit": 0.5,  # small, so that the clamp changes some activations
    "initializer_range": 0.1,
    "tie_word_embeddings": False,
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(reference, course model loaded from the reference's saved files, saved folder)."""
    torch.manual_seed(0)
    reference = transformers.GptOssForCausalLM(transformers.GptOssConfig(**SMALL)).eval()
    with torch.no_grad():  # transformers starts the biases at 0: give them values to check
        for name, param in reference.named_parameters():
            if name.endswith(("bias", "sinks")):
                param.normal_(0.0, 0.5)
    folder = tmp_path_factory.mktemp("gpt_oss")
    course = save_and_load(reference, folder, gpt_oss_config_from_hf, GptOssModel)
    return reference, course, folder


def test_config_is_read_from_the_saved_config_json(pair):
    reference, course, folder = pair
    cfg = gpt_oss_config_from_hf(saved_config(folder))
    assert cfg["layer_types"] == ["sliding_attention", "full_attention"] * 2
    assert cfg["rope_yarn_scaling"]["truncate"] is False and cfg["rope_scale_sliding"]
    assert cfg["attention_bias"] and cfg["attention_sinks"] and cfg["num_experts"] == 6
    assert count_parameters(course) == sum(p.numel() for p in reference.parameters())
    # One RoPE table for every layer, as transformers has (YaRN in the banded layers too).
    assert torch.equal(course.cos_sliding_attention, course.cos_full_attention)


def test_the_mapping_names_every_saved_tensor(pair):
    _, course, folder = pair
    mapping = hf_key_mapping(course)
    assert set(mapping.values()) == set(saved_weights(folder))
    assert mapping["trf_blocks.0.att.sinks"] == "model.layers.0.self_attn.sinks"
    assert mapping["trf_blocks.1.att.W_key.bias"] == "model.layers.1.self_attn.k_proj.bias"
    assert mapping["trf_blocks.1.ff.router.bias"] == "model.layers.1.mlp.router.bias"
    assert mapping["trf_blocks.2.ff.experts.gate_up"] == "model.layers.2.mlp.experts.gate_up_proj"


def test_logits_match_the_reference(pair):
    reference, course, _ = pair
    # float32, the same operations but for summation order (the experts' products, the sinks'
    # softmax): rounding differences of ~1e-6; a token routed to another expert, a missing sink
    # or bias, or unscaled RoPE in the banded layers would differ by ~0.1.
    assert_logits_match(reference, course, random_ids(40, seed=1, batch=2), atol=1e-4)


def test_greedy_tokens_match_with_and_without_the_kv_cache(pair):
    reference, course, _ = pair
    assert_greedy_tokens_match(reference, course, random_ids(5, seed=2), new=20, context_size=64)


def test_cached_logits_equal_the_full_forward_pass(pair):
    _, course, _ = pair
    cache = assert_cached_logits_match(course, random_ids(20, seed=3), 9, atol=1e-4)
    # A banded layer keeps window - 1 positions, a full one all 20.
    assert [layer.tensors[0].shape[2] for layer in cache.layers] == [5, 20, 5, 20]


def test_the_experts_are_transformers_clamped_swiglu():
    torch.manual_seed(4)
    config = transformers.GptOssConfig(**SMALL)
    theirs = transformers.models.gpt_oss.modeling_gpt_oss.GptOssExperts(config)
    ours = ClampedSwiGLUExperts(64, 32, 6, limit=config.swiglu_limit, alpha=config.swiglu_alpha)
    with torch.no_grad():
        for param in theirs.parameters():
            param.normal_()
        ours.gate_up.copy_(theirs.gate_up_proj)
        ours.gate_up_bias.copy_(theirs.gate_up_proj_bias)
        ours.down.copy_(theirs.down_proj)
        ours.down_bias.copy_(theirs.down_proj_bias)
        tokens = torch.randn(7, 64)
        gate_up = tokens @ theirs.gate_up_proj[3] + theirs.gate_up_proj_bias[3]
        assert (gate_up.abs() > config.swiglu_limit).float().mean() > 0.5  # the clamp bites
        expected = theirs(tokens, torch.full((7, 1), 3), torch.ones(7, 1))  # all to expert 3
        torch.testing.assert_close(ours[3](tokens), expected, atol=1e-5, rtol=1e-5)


def test_attention_sinks_take_their_share_of_the_softmax():
    queries, keys, values = torch.randn(3, 1, 2, 4, 8).unbind(0)
    hidden = torch.zeros(4, 4, dtype=torch.bool)
    plain = attend(queries, keys, values, hidden)
    assert torch.equal(attend(queries, keys, values, hidden, sinks=None), plain)
    # A sink of -inf takes nothing; a very large one takes (almost) everything.
    torch.testing.assert_close(
        attend(queries, keys, values, hidden, sinks=torch.full((2,), -1e9)), plain
    )
    assert attend(queries, keys, values, hidden, sinks=torch.full((2,), 1e4)).abs().max() < 1e-6
    # With a sink of logit s, each weight is exp(score) / (sum exp(scores) + exp(s)).
    sinks = torch.tensor([0.7, -0.3])  # one per head
    scores = queries @ keys.transpose(2, 3) / 8**0.5  # (1, 2, 4, 4)
    denominator = scores.exp().sum(-1, keepdim=True) + sinks.exp().view(1, 2, 1, 1)
    expected = (scores.exp() / denominator @ values).transpose(1, 2).reshape(1, 4, 16)
    actual = attend(queries, keys, values, hidden, sinks=sinks)
    torch.testing.assert_close(actual, expected)


def test_mxfp4_dequantisation_matches_transformers():
    generator = torch.Generator().manual_seed(5)
    blocks = torch.randint(0, 256, (3, 10, 4, 16), dtype=torch.uint8, generator=generator)
    scales = torch.randint(118, 134, (3, 10, 4), dtype=torch.uint8, generator=generator)
    expected = convert_moe_packed_tensors(blocks, scales)  # (3, 128, 10), bfloat16
    assert torch.equal(dequantize_mxfp4(blocks, scales).transpose(1, 2), expected)
    params = {"w_blocks": blocks, "w_scales": scales, "b": torch.ones(2)}
    checkpoint = Mxfp4Checkpoint(params)
    assert sorted(checkpoint) == ["b", "w"] and len(checkpoint) == 2
    assert torch.equal(checkpoint["w"], expected)
    # Byte 0x21: codes 1 (low nibble, first) and 2: 0.5 and 1.0, times 2 ** (128 - 127).
    one = dequantize_mxfp4(torch.tensor([[0x21]], dtype=torch.uint8), torch.tensor([128]))
    assert one.tolist() == [1.0, 2.0]  # one block of one byte: (1, 1) -> (2,)


def test_an_mxfp4_checkpoint_loads_into_the_model(pair):
    # The model's expert weights, quantised as the published files hold them (FP4 codes that are
    # exact for values 0, +-0.5 ... +-6 scaled by a power of two), load through Mxfp4Checkpoint.
    _, course, folder = pair
    params = dict(saved_weights(folder))
    generator = torch.Generator().manual_seed(6)
    for name in [n for n in params if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        experts, d_in, d_out = params.pop(name).shape
        blocks = torch.randint(0, 256, (experts, d_out, d_in // 32, 16), dtype=torch.uint8)
        scales = torch.randint(120, 128, (experts, d_out, d_in // 32), generator=generator)
        params[f"{name}_blocks"], params[f"{name}_scales"] = blocks, scales.to(torch.uint8)
    model = GptOssModel(course_config(folder)).eval()
    load_hf_weights(model, Mxfp4Checkpoint(params, torch.float32))
    expected = convert_moe_packed_tensors(
        params["model.layers.1.mlp.experts.down_proj_blocks"],
        params["model.layers.1.mlp.experts.down_proj_scales"],
        dtype=torch.float32,
    )
    assert torch.equal(model.trf_blocks[1].ff.experts.down, expected)
    with pytest.raises(ValueError, match="without their scales: model.layers.0.mlp.experts.down"):
        Mxfp4Checkpoint(
            {k: v for k, v in params.items() if "layers.0.mlp.experts.down_proj_s" not in k}
        )


def course_config(folder) -> dict:
    return gpt_oss_config_from_hf(saved_config(folder))


def test_the_published_20b_config_has_the_published_parameter_counts():
    cfg = GPT_OSS_CONFIG_20B
    with torch.device("meta"):
        course = GptOssModel(cfg)
        reference = transformers.GptOssForCausalLM(
            transformers.GptOssConfig(
                vocab_size=cfg["vocab_size"],
                hidden_size=cfg["emb_dim"],
                intermediate_size=cfg["moe_hidden_dim"],
                num_hidden_layers=cfg["n_layers"],
                num_attention_heads=cfg["n_heads"],
                num_key_value_heads=cfg["n_kv_groups"],
                head_dim=cfg["head_dim"],
                num_local_experts=cfg["num_experts"],
                num_experts_per_tok=cfg["num_experts_per_token"],
            )
        )
    total, active = moe_parameter_counts(course)
    assert total == sum(p.numel() for p in reference.parameters()) == 20_914_757_184
    # OpenAI's model card: 20.91B total, 3.61B active per token. Its active count leaves out
    # the token embedding (a lookup, no arithmetic), which moe_parameter_counts counts as
    # active (Qwen's "3.3B activated" includes it): 4.19B - 0.58B.
    assert active == 4_187_440_704
    embedding = course.tok_emb.weight.numel()
    assert round(total / 1e9, 2) == 20.91 and round((active - embedding) / 1e9, 2) == 3.61


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "llama"}, "'llama' is not supported; expected gpt_oss"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ],
)
def test_unsupported_configs_are_refused_by_name(change, message):
    with pytest.raises(ValueError, match=message):
        gpt_oss_config_from_hf({**transformers.GptOssConfig(**SMALL).to_dict(), **change})


def test_bad_input_is_named():
    with pytest.raises(
        ValueError, match=r"a gpt-oss cfg needs num_experts \(see GPT_OSS_CONFIG_20B\)"
    ):
        GptOssModel({k: v for k, v in GPT_OSS_CONFIG_20B.items() if k != "num_experts"})
    with pytest.raises(ValueError, match=r"blocks \(2, 3, 16\) need scales of shape \(2, 3\)"):
        dequantize_mxfp4(
            torch.zeros(2, 3, 16, dtype=torch.uint8), torch.zeros(2, dtype=torch.uint8)
        )


def test_under_the_test_switch_the_standin_runs_with_the_cache(capsys):
    loaded = load_pretrained_gpt_oss()
    assert loaded.is_standin
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "LLM_COURSE_STANDIN=1" in out and "gpt-oss" in out
    ids = torch.tensor([loaded.tokenizer.encode("Every effort moves you")])
    plain = generate(loaded.model, ids, 8, loaded.model.context_length)
    cached = generate(loaded.model, ids, 8, loaded.model.context_length, use_cache=True)
    assert torch.equal(plain, cached) and plain.shape == (1, ids.shape[1] + 8)


def test_loading_an_mxfp4_checkpoint_dequantises_each_tensor_once(pair, monkeypatch):
    # load_hf_weights checks shapes with the checkpoint's shape_of, so each expert tensor is
    # dequantised only for its copy (each is about 1 GB in bfloat16 in gpt-oss-20b).
    _, _, folder = pair
    params = dict(saved_weights(folder))
    for name in [n for n in params if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        experts, d_in, d_out = params.pop(name).shape
        params[f"{name}_blocks"] = torch.zeros(experts, d_out, d_in // 32, 16, dtype=torch.uint8)
        params[f"{name}_scales"] = torch.full((experts, d_out, d_in // 32), 127, dtype=torch.uint8)
    checkpoint = Mxfp4Checkpoint(params, torch.float32)
    name = "model.layers.0.mlp.experts.gate_up_proj"
    assert checkpoint.shape_of(name) == checkpoint[name].shape
    calls = []  # whole tensors (E, rows, G, B) dequantised; each then goes expert by expert
    original = gpt_oss.dequantize_mxfp4

    def counted(blocks, *rest):
        calls.extend([1] if blocks.dim() == 4 else [])
        return original(blocks, *rest)

    monkeypatch.setattr(gpt_oss, "dequantize_mxfp4", counted)
    load_hf_weights(GptOssModel(course_config(folder)), checkpoint)
    assert len(calls) == len(checkpoint.quantised)


def test_sinks_of_the_wrong_shape_are_named():
    queries = keys = values = torch.randn(1, 4, 3, 8)
    hidden = torch.zeros(3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"one logit per head, shape \(4,\); got \(3,\)"):
        attend(queries, keys, values, hidden, sinks=torch.zeros(3))


def test_a_config_without_a_number_of_experts_is_named():
    with pytest.raises(ValueError, match="num_experts or num_local_experts"):
        experts_in({"num_experts_per_tok": 4})
