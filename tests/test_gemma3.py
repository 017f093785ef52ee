"""shared.gemma3 against transformers' Gemma3ForCausalLM.

A small random Gemma3ForCausalLM (sliding and full layers with a window shorter than the test
sequences, two RoPE bases, a query_pre_attn_scalar that differs from head_dim, every RMSNorm
weight random rather than zero, a tied head) is saved with save_pretrained and read back with
the course's gemma3_config_from_hf and load_hf_weights; it must give the same logits and greedy
tokens, with and without the course's KV cache. The published configs are checked against the
published config.json values and parameter counts, and bad input gets errors naming the value.
"""

import pytest
import torch

from shared.gemma3 import (
    GEMMA3_CONFIG_1B,
    GEMMA3_CONFIG_270M,
    Gemma3Model,
    chat_prompt,
    gemma3_config_from_hf,
    gemma3_files,
    gemma3_layer_types,
    load_pretrained_gemma3,
)
from shared.open_models import (
    HuggingFaceTokenizer,
    count_parameters,
    hf_key_mapping,
)
from shared.pretraining import generate
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

WINDOW = 5
REFERENCE = {
    "vocab_size": 320,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 4,
    "layer_types": [
        "sliding_attention",
        "sliding_attention",
        "full_attention",
        "sliding_attention",
    ],
    "sliding_window": WINDOW,  # shorter than every sequence below
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,  # 4 heads * 32 = 128 query dimensions from a 64-dimensional embedding
    "query_pre_attn_scalar": 24,  # scores times 1 / sqrt(24), not 1 / sqrt(head_dim)
    "rope_parameters": {
        "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    },
    "max_position_embeddings": 48,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "initializer_range": 0.1,  # larger than the default, so the logits differ clearly
    "eos_token_id": None,  # generate the full count of tokens, as the course's generate does
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(reference model, course model loaded from the reference's saved files, saved folder)."""
    torch.manual_seed(0)
    config = transformers.Gemma3TextConfig(**REFERENCE)
    config._attn_implementation = "eager"
    reference = transformers.Gemma3ForCausalLM(config).eval()
    with torch.no_grad():  # Gemma initialises every 1 + weight norm at weight 0: randomise them
        for name, param in reference.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.3)
    folder = tmp_path_factory.mktemp("gemma3")
    course = save_and_load(reference, folder, gemma3_config_from_hf, Gemma3Model)
    return reference, course, folder


def test_config_is_read_from_the_saved_config_json(pair):
    reference, course, folder = pair
    cfg = gemma3_config_from_hf(saved_config(folder))
    assert cfg["layer_types"] == REFERENCE["layer_types"] and cfg["sliding_window"] == WINDOW
    assert (cfg["rope_base"], cfg["rope_local_base"]) == (1_000_000.0, 10_000.0)
    assert cfg["query_scale"] == 24**-0.5 and cfg["head_dim"] == 32
    assert [block.att.window for block in course.trf_blocks] == [WINDOW, WINDOW, None, WINDOW]
    assert course.out_head.weight is course.tok_emb.weight
    assert count_parameters(course) == sum(p.numel() for p in reference.parameters())


def test_logits_match_the_reference(pair):
    reference, course, _ = pair
    # Both compute in float32 with the same operations (the course masks before scaling rather
    # than after, which changes no unmasked score): the logits agree to float32 rounding (here
    # they are equal); 1e-5 leaves room for another BLAS's summation order. A missing feature
    # (the query scale, the local RoPE base, the window, the embedding scale) moves them by 0.9
    # to 3.5.
    assert_logits_match(reference, course, random_ids(40, seed=1, batch=2), atol=1e-5)


def test_greedy_tokens_match_with_and_without_the_kv_cache(pair):
    reference, course, _ = pair
    new = 30  # 36 positions: the sliding layers drop all but the last 5 of them
    assert_greedy_tokens_match(reference, course, random_ids(6, seed=2), new, context_size=48)


def test_cached_logits_equal_the_full_forward_pass_and_sliding_layers_keep_the_window(pair):
    _, course, _ = pair
    # A first chunk of 12 tokens, longer than the window, then one token at a time.
    cache = assert_cached_logits_match(course, random_ids(20, seed=3), prompt_length=12, atol=1e-5)
    kept = [layer.tensors[0].shape[2] for layer in cache.layers]
    assert kept == [WINDOW - 1, WINDOW - 1, 20, WINDOW - 1] and cache.length == 20


def test_bf16_loading_keeps_the_predictions(pair):
    reference, _, folder = pair
    model = load_saved(folder, gemma3_config_from_hf, Gemma3Model, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert relative_logit_error(reference, model, random_ids(16, seed=4)) < 0.05


def test_key_mapping_names_every_tensor_with_gemmas_four_norms(pair):
    _, course, folder = pair
    mapping = hf_key_mapping(course)
    assert set(mapping.values()) == set(saved_weights(folder))
    block = "model.layers.1."
    assert mapping["trf_blocks.1.norm1.scale"] == block + "input_layernorm.weight"
    assert mapping["trf_blocks.1.post_att_norm.scale"] == block + "post_attention_layernorm.weight"
    assert mapping["trf_blocks.1.norm2.scale"] == block + "pre_feedforward_layernorm.weight"
    assert mapping["trf_blocks.1.post_ff_norm.scale"] == block + "post_feedforward_layernorm.weight"
    assert mapping["trf_blocks.1.att.q_norm.scale"] == block + "self_attn.q_norm.weight"


# google/gemma-3-1b-it's config.json as published (from a public copy; the repository is gated),
# in the older format: sliding_window_pattern instead of layer_types, rope_local_base_freq.
PUBLISHED_1B = {
    "architectures": ["Gemma3ForCausalLM"],
    "attention_bias": False,
    "attn_logit_softcapping": None,
    "final_logit_softcapping": None,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 1152,
    "intermediate_size": 6912,
    "max_position_embeddings": 32768,
    "model_type": "gemma3_text",
    "num_attention_heads": 4,
    "num_hidden_layers": 26,
    "num_key_value_heads": 1,
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06,
    "rope_local_base_freq": 10000,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": 512,
    "sliding_window_pattern": 6,
    "vocab_size": 262144,
}
# google/gemma-3-270m's (from public copies too, of models derived from it that keep it),
# in the format transformers 5 writes: layer_types and rope_parameters.
PUBLISHED_270M = {
    **{k: v for k, v in PUBLISHED_1B.items() if not k.startswith(("rope", "sliding_window_"))},
    "hidden_size": 640,
    "intermediate_size": 2048,
    "num_hidden_layers": 18,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
    "rope_parameters": {
        "full_attention": {"rope_theta": 1000000.0, "rope_type": "default"},
        "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"},
    },
    "tie_word_embeddings": True,
}


@pytest.mark.parametrize(
    ("published", "course"),
    [(PUBLISHED_270M, GEMMA3_CONFIG_270M), (PUBLISHED_1B, GEMMA3_CONFIG_1B)],
    ids=["270m", "1b"],
)
def test_the_course_configs_are_the_published_config_json(published, course):
    assert gemma3_config_from_hf(published) == course


@pytest.mark.parametrize(
    ("cfg", "published"),
    # The counts Hugging Face reports from the checkpoints' safetensors headers (and KerasHub's
    # gemma3_270m / gemma3_1b presets): the tied embedding counted once.
    [(GEMMA3_CONFIG_270M, 268_098_176), (GEMMA3_CONFIG_1B, 999_885_952)],
    ids=["270m", "1b"],
)
def test_published_configs_have_the_published_parameter_counts(cfg, published):
    with torch.device("meta"):
        model = Gemma3Model(cfg)
    assert count_parameters(model) == published
    assert [block.att.window for block in model.trf_blocks].count(None) == cfg["n_layers"] // 6


def test_layer_pattern_has_a_full_layer_every_sixth():
    assert gemma3_layer_types(7) == ["sliding_attention"] * 5 + [
        "full_attention",
        "sliding_attention",
    ]
    assert gemma3_layer_types(3, pattern=1) == ["full_attention"] * 3
    with pytest.raises(ValueError, match="sliding_window_pattern must be at least 1, got 0"):
        gemma3_layer_types(3, pattern=0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"final_logit_softcapping": 30.0}, "final_logit_softcapping=30.0 is not supported"),
        ({"attn_logit_softcapping": 50.0}, "attn_logit_softcapping=50.0 is not supported"),
        ({"model_type": "gemma2"}, "model_type 'gemma2' is not supported"),
        ({"use_bidirectional_attention": True}, "use_bidirectional_attention=True"),
        ({"hidden_activation": "silu"}, "hidden_activation 'silu'"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 8.0}}, "RoPE type 'linear'"),
        ({"attention_bias": True}, "biases are not supported"),
    ],
)
def test_configs_the_course_does_not_implement_are_refused_by_value(change, message):
    with pytest.raises(ValueError, match=message):
        gemma3_config_from_hf({**PUBLISHED_1B, **change})


def test_a_cfg_without_gemmas_settings_is_refused_by_value():
    with pytest.raises(ValueError, match="Gemma 3 needs norm_placement='pre_post', got 'pre'"):
        Gemma3Model({**GEMMA3_CONFIG_270M, "norm_placement": "pre"})


def test_variants_name_their_cache_files():
    names = [spec.name for spec in gemma3_files("1b-it")]
    assert names == ["gemma-3-1b-it/tokenizer.json", "gemma-3-1b-it/model.safetensors"]
    assert gemma3_files("270m")[1].url.startswith("https://huggingface.co/google/gemma-3-270m/")
    with pytest.raises(ValueError, match="variant '2b' is not one of"):
        gemma3_files("2b")


def test_chat_prompt_follows_gemmas_template():
    assert chat_prompt("  Hi there \n") == (
        "<bos><start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n"
    )
    assert chat_prompt("Hi", system_prompt="Be brief.") == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    )


def test_a_gemma_style_tokenizer_json_reads_its_chat_tokens(tmp_path):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    # Like Gemma's tokenizer.json: spaces become "▁" before a byte-fallback BPE, and the decoder
    # turns them back; the special tokens sit at Gemma's ids 0-3 and are matched in the text.
    tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials)
    text = "user\nEvery effort moves you forward, every day.\nmodel\n"
    tokenizer.train_from_iterator([text] * 20, trainer)
    tokenizer.save(str(tmp_path / "tokenizer.json"))

    gemma = HuggingFaceTokenizer(tmp_path / "tokenizer.json")
    prompt = chat_prompt("Every effort moves you")
    ids = gemma.encode(prompt)
    assert ids[:2] == [gemma.token_id("<bos>"), gemma.token_id("<start_of_turn>")] == [2, 4]
    assert ids.count(gemma.token_id("<end_of_turn>")) == 1
    assert gemma.decode(ids) == prompt


def test_under_the_test_switch_the_standin_runs_with_the_cache(capsys):
    loaded = load_pretrained_gemma3()
    assert loaded.is_standin
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "LLM_COURSE_STANDIN=1" in out and "Gemma 3 270m-it" in out
    ids = torch.tensor([loaded.tokenizer.encode("Every effort moves you")])
    plain = generate(loaded.model, ids, 8, loaded.model.context_length)
    cached = generate(loaded.model, ids, 8, loaded.model.context_length, use_cache=True)
    assert torch.equal(plain, cached) and plain.shape == (1, ids.shape[1] + 8)


def test_without_the_files_one_line_says_they_are_gated(monkeypatch, capsys):
    import shared.open_models
    from shared.data import DataUnavailableError

    def unavailable(spec, **kwargs):
        raise DataUnavailableError(f"Could not get '{spec.name}'")

    monkeypatch.delenv("LLM_COURSE_STANDIN")
    monkeypatch.setattr(shared.open_models, "fetch", unavailable)
    assert load_pretrained_gemma3("1b-it").is_standin
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("Gemma 3 1b-it is gated")
