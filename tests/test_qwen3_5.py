"""shared.qwen3_5 against transformers' Qwen3_5ForCausalLM.

A small random Qwen3_5ForCausalLM (Gated DeltaNet in layers 0-2 and 4-6, gated attention in
layers 3 and 7; more DeltaNet value heads than key heads; partial RoPE; every 1 + weight
RMSNorm random rather than zero; a tied head) is saved with save_pretrained and read back with
the course's qwen3_5_config_from_hf and load_hf_weights. It must give the same logits and
greedy tokens, with and without the course's hybrid cache, over more tokens than one DeltaNet
chunk (64). The published config is checked against its parameter count, the vision-language
checkpoint's names are mapped, and bad input gets errors naming the value.
"""

import pytest
import torch

from shared.attention_ops import LayerKV
from shared.gated_deltanet import DeltaNetState
from shared.open_models import count_parameters, hf_key_mapping
from shared.pretraining import generate
from shared.qwen3_5 import (
    QWEN3_5_CONFIG_0_8B,
    GatedAttention,
    Qwen3_5Model,
    hybrid_cache_bytes,
    hybrid_layer_types,
    load_pretrained_qwen3_5,
    qwen3_5_config_from_hf,
    text_weights,
)
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

CONTEXT = 96
REFERENCE = {
    "vocab_size": 320,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 8,
    "full_attention_interval": 4,  # layer_types: 3 linear_attention, 1 full_attention, twice
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,  # 4 heads * 32 = 128 query dimensions (and 128 gate ones) from 64
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,  # each query/key head serves two value heads
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 24,
    "linear_conv_kernel_dim": 4,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 10_000_000.0,
        "partial_rotary_factor": 0.25,  # 8 of each head's 32 dimensions rotate
    },
    "max_position_embeddings": CONTEXT,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "initializer_range": 0.1,  # larger than the default, so the logits differ clearly
    "eos_token_id": None,  # generate the full count of tokens, as the course's generate does
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(reference model, course model loaded from the reference's saved files, saved folder)."""
    torch.manual_seed(0)
    config = transformers.Qwen3_5TextConfig(**REFERENCE)
    config._attn_implementation = "eager"
    reference = transformers.Qwen3_5ForCausalLM(config).eval()
    with torch.no_grad():  # the 1 + weight norms start at weight 0 (and the DeltaNet's at 1)
        for name, param in reference.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.3)
    folder = tmp_path_factory.mktemp("qwen3_5")
    course = save_and_load(reference, folder, qwen3_5_config_from_hf, Qwen3_5Model)
    return reference, course, folder


def test_config_is_read_from_the_saved_config_json(pair):
    reference, course, folder = pair
    cfg = qwen3_5_config_from_hf(saved_config(folder))
    assert cfg["layer_types"] == hybrid_layer_types(8) == reference.config.layer_types
    assert cfg["rope_dim"] == 8 and cfg["rope_base"] == 10_000_000.0
    assert (cfg["deltanet_key_heads"], cfg["deltanet_value_heads"]) == (2, 4)
    assert course.cos_full_attention.shape == (CONTEXT, 8)
    assert course.cos_linear_attention.numel() == 0  # DeltaNet layers keep no RoPE tables
    assert [isinstance(block.att, GatedAttention) for block in course.trf_blocks] == [
        t == "full_attention" for t in cfg["layer_types"]
    ]
    assert course.out_head.weight is course.tok_emb.weight
    assert count_parameters(course) == sum(p.numel() for p in reference.parameters())


def test_logits_match_the_reference(pair):
    reference, course, _ = pair
    # float32 on both sides. The attention layers compute as transformers does; the DeltaNet
    # layers run the same chunked delta rule over 64-token chunks (90 tokens: two chunks), but
    # with their own order of the matrix products and sums inside a chunk (shared.gated_deltanet
    # checks the rule itself against transformers'), and eight layers compound that rounding:
    # here the logits (|logit| < 4) differ by 1.3e-5 at most, so 1e-5 is too tight and 1e-4
    # leaves room for another BLAS. Each Qwen3.5 feature left out moves them by far more: the
    # RoPE base 1e6 instead of 1e7 by 0.23, RoPE on whole heads by 1.5, no output gate by 2.6,
    # plain instead of 1 + weight norms by 4.1.
    assert_logits_match(reference, course, random_ids(90, seed=1, batch=2), atol=1e-4)


def test_greedy_tokens_match_with_and_without_the_cache(pair):
    reference, course, _ = pair
    new = 74  # 80 positions: past one DeltaNet chunk, in the prompt-free steps too
    assert_greedy_tokens_match(reference, course, random_ids(6, seed=2), new, CONTEXT)


def test_cached_logits_equal_the_full_forward_pass(pair):
    _, course, _ = pair
    # A prompt of two chunks (70 tokens), then one token at a time. The prompt runs the chunked
    # form, the single tokens the recurrent one: the same rule, summed in another order (here
    # 1.6e-5 apart at most; float32 rounding, as above).
    cache = assert_cached_logits_match(course, random_ids(80, seed=3), prompt_length=70, atol=1e-4)
    kinds = [type(layer) for layer in cache.layers]
    assert kinds == [
        LayerKV if t == "full_attention" else DeltaNetState for t in course.layer_types
    ]
    assert cache.length == 80


def test_only_the_attention_layers_cache_grows(pair):
    _, course, _ = pair
    sizes = []
    for length in (10, 60):
        cache = course.new_cache()
        with torch.no_grad():
            course(torch.zeros(1, length, dtype=torch.long), cache)
        sizes.append([layer.nbytes for layer in cache.layers])
    grows = [after > before for before, after in zip(*sizes)]
    assert grows == [t == "full_attention" for t in course.layer_types]


@pytest.mark.parametrize("length", [1, 10, 70])
def test_cache_bytes_formula_equals_a_real_cache(pair, length):
    _, course, folder = pair
    cfg = qwen3_5_config_from_hf(saved_config(folder))
    cache = course.new_cache()
    with torch.no_grad():
        course(torch.zeros(2, length, dtype=torch.long), cache)
    assert cache.nbytes == hybrid_cache_bytes(cfg, length, batch_size=2, dtype=torch.float32)
    all_attention = {**cfg, "layer_types": ["full_attention"] * 8}
    kv_per_token = 2 * 2 * 32 * 4  # keys and values, 2 heads of 32 float32 numbers, per layer
    assert (
        hybrid_cache_bytes(all_attention, length, dtype=torch.float32) == 8 * length * kv_per_token
    )


def test_bf16_loading_keeps_the_predictions_and_a_float32_state(pair):
    reference, _, folder = pair
    model = load_saved(folder, qwen3_5_config_from_hf, Qwen3_5Model, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    cache = model.new_cache()
    # bfloat16 keeps 8 significant bits; through eight layers the largest logit error here is
    # 6.6% of the largest logit, and transformers' own model loaded in bfloat16 is 6.8% off.
    assert relative_logit_error(reference, model, random_ids(70, seed=4), cache) < 0.1
    states = [layer for layer in cache.layers if isinstance(layer, DeltaNetState)]
    assert {state.recurrent.dtype for state in states} == {torch.float32}


def test_key_mapping_names_every_tensor_of_the_checkpoint(pair):
    _, course, folder = pair
    stored = set(saved_weights(folder))
    mapping = hf_key_mapping(course)
    assert set(mapping.values()) == stored
    assert mapping["trf_blocks.3.att.W_query.weight"] == "model.layers.3.self_attn.q_proj.weight"
    assert (
        mapping["trf_blocks.0.att.W_qkv.weight"] == "model.layers.0.linear_attn.in_proj_qkv.weight"
    )


def test_the_vision_language_checkpoints_text_weights_load(pair):
    _, course, folder = pair
    params = saved_weights(folder)
    published = {
        name.replace("model.", "model.language_model.", 1): t for name, t in params.items()
    }
    published["model.visual.blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    published["mtp.fc.weight"] = torch.zeros(2, 2)
    assert text_weights(published).keys() == params.keys()
    assert text_weights(params).keys() == params.keys()


def test_the_published_vision_language_config_is_read_from_its_text_config(pair):
    _, _, folder = pair
    text = {**saved_config(folder), "model_type": "qwen3_5_text"}
    published = {"model_type": "qwen3_5", "text_config": text, "vision_config": {}}
    assert qwen3_5_config_from_hf(published) == qwen3_5_config_from_hf(text)


def test_published_0_8b_config_on_the_meta_device():
    with torch.device("meta"):
        model = Qwen3_5Model(QWEN3_5_CONFIG_0_8B)
    # Qwen3.5 0.8B's language model: 752,393,024 parameters from the published config's sizes
    # (the tied embedding counted once), the "752M (language)" that conversions of the
    # checkpoint report beside its vision encoder.
    assert count_parameters(model) == 752_393_024
    assert model.layer_types.count("full_attention") == 6
    assert model.cos_full_attention.shape == (262_144, 64)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"norm_offset": 0.0}, "Qwen3.5 needs norm_offset=1.0, got 0.0"),
        ({"qk_norm": False}, "Qwen3.5 needs qk_norm=True, got False"),
        (
            {"layer_types": ["sliding_attention"] * 3 + ["full_attention"]},
            r"layer types \['sliding_attention'\] are not among",
        ),
    ],
)
def test_a_cfg_that_is_not_qwen3_5_is_refused_by_value(pair, change, message):
    cfg = qwen3_5_config_from_hf(saved_config(pair[2]))
    with pytest.raises(ValueError, match=message):
        Qwen3_5Model({**cfg, "n_layers": 4, **change})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "qwen3_5_moe_text"}, "'qwen3_5_moe_text' is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
        ({"attn_output_gate": False}, "attn_output_gate false"),
    ],
)
def test_config_reader_names_what_it_does_not_support(pair, change, message):
    with pytest.raises(ValueError, match=message):
        qwen3_5_config_from_hf({**saved_config(pair[2]), **change})


def test_a_zero_full_attention_interval_is_refused_by_value():
    with pytest.raises(ValueError, match="full_attention_interval must be at least 1, got 0"):
        hybrid_layer_types(8, 0)


def test_under_the_test_switch_the_standin_runs_with_the_cache(capsys):
    loaded = load_pretrained_qwen3_5()
    assert loaded.is_standin
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "LLM_COURSE_STANDIN=1" in out and "stand-in" in out
    ids = torch.tensor([loaded.tokenizer.encode("Every effort moves you")])
    plain = generate(loaded.model, ids, 8, loaded.model.context_length)
    cached = generate(loaded.model, ids, 8, loaded.model.context_length, use_cache=True)
    assert torch.equal(plain, cached) and plain.shape == (1, ids.shape[1] + 8)
