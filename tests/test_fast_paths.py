"""The fast paths (fused attention, KV cache) give the plain path's results with its weights."""

import functools

import pytest
import torch
import torch.nn.functional as F

from shared.attention import MultiHeadAttention
from shared.fast_attention import FusedMultiHeadAttention, KVCacheMultiHeadAttention, swap_class
from shared.fused_kernels import FusedGELU, FusedLayerNorm, use_fused_kernels
from shared.gpt import GELU, GPTModel, LayerNorm
from shared.kv_cache import KVCacheGPTModel
from tests.conftest import TINY

CONFIG = {
    **TINY,
    "vocab_size": 97,
    "context_length": 24,
    "emb_dim": 48,
    "n_heads": 4,
    "qkv_bias": True,
}

# Every way to build the model: (class, with the fused kernels).
PATHS = {
    "plain": (GPTModel, False),
    "fused": (GPTModel, True),
    "kv cache": (KVCacheGPTModel, False),
    "kv cache, fused": (KVCacheGPTModel, True),
}


def twin_models(**overrides) -> tuple[GPTModel, GPTModel]:
    """A plain and a fused GPTModel holding the same weights, in eval mode."""
    plain, fused = (path_model(name, **overrides) for name in ("plain", "fused"))
    return plain, fused


def path_model(name: str, **overrides) -> GPTModel:
    """The model of PATHS[name], holding the weights of GPTModel built with seed 1, in eval mode."""
    torch.manual_seed(1)
    weights = GPTModel({**CONFIG, **overrides}).state_dict()
    cls, fused = PATHS[name]
    model = cls({**CONFIG, **overrides}).eval()
    if fused:
        use_fused_kernels(model)
    model.load_state_dict(weights)  # same keys, so this is strict
    return model


def cached_models() -> list[KVCacheGPTModel]:
    return [path_model("kv cache"), path_model("kv cache, fused")]


@pytest.mark.parametrize("batch_size", [1, 5])
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_fused_attention_equals_plain(batch_size, qkv_bias):
    torch.manual_seed(0)
    plain = MultiHeadAttention(
        16, 32, context_length=12, dropout=0.0, num_heads=4, qkv_bias=qkv_bias
    )
    fused = FusedMultiHeadAttention(16, 32, 12, 0.0, 4, qkv_bias=qkv_bias)
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(batch_size, 12, 16)
    torch.testing.assert_close(fused(x), plain(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(PATHS))
def test_every_path_has_the_plain_state_dict_and_outputs(name):
    plain, other = path_model("plain"), path_model(name)
    assert list(other.state_dict()) == list(plain.state_dict())
    ids = torch.randint(0, CONFIG["vocab_size"], (3, CONFIG["context_length"]))
    if name.endswith("fused"):
        torch.testing.assert_close(other(ids), plain(ids), atol=1e-5, rtol=0)
    else:  # the same operations in the same order
        assert torch.equal(other(ids), plain(ids))


def test_each_path_has_its_classes():
    plain, fused = path_model("plain"), path_model("fused")
    assert type(plain.trf_blocks[0].att) is MultiHeadAttention
    assert type(fused.trf_blocks[0].att) is FusedMultiHeadAttention
    assert (
        type(fused.final_norm) is FusedLayerNorm
        and type(fused.trf_blocks[1].norm2) is FusedLayerNorm
    )
    assert type(fused.trf_blocks[0].ff.layers[1]) is FusedGELU
    for name in ("kv cache", "kv cache, fused"):
        att = path_model(name).trf_blocks[0].att
        assert type(att) is KVCacheMultiHeadAttention and att.fused == name.endswith("fused")


def test_fast_paths_start_from_the_same_random_weights():
    """Built with the same seed, every path holds GPTModel's initial weights (no re-initialising)."""
    torch.manual_seed(3)
    expected = GPTModel(CONFIG).state_dict()
    for cls, fused in PATHS.values():
        torch.manual_seed(3)
        model = cls(CONFIG)
        if fused:
            use_fused_kernels(model)
        for key, value in model.state_dict().items():
            assert torch.equal(value, expected[key]), key


def test_use_fused_kernels_keeps_parameters_and_leaves_subclasses_alone():
    from shared.attention_variants import GroupedQueryAttention

    model = GPTModel(CONFIG)
    model.trf_blocks[1].att = GroupedQueryAttention(48, 48, 24, 0.0, 4, num_kv_groups=2)
    before = list(model.parameters())
    use_fused_kernels(model)
    assert type(model.trf_blocks[1].att) is GroupedQueryAttention  # its own forward stays
    assert all(p is q for p, q in zip(model.parameters(), before, strict=True))  # the same tensors


def test_swap_class_needs_a_subclass():
    with pytest.raises(TypeError, match="FusedGELU does not subclass LayerNorm"):
        swap_class(LayerNorm(8), FusedGELU)


def test_fused_gradients_equal_plain():
    plain, fused = twin_models()
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 10))
    for model in (plain, fused):
        model(ids).logsumexp(-1).mean().backward()
    for (name, p), q in zip(plain.named_parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("fused", [False, True])
def test_cached_forward_equals_full_forward(fused):
    model = cached_models()[int(fused)]
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 20))
    full = model(ids)
    cache = model.new_cache()
    pieces = [model(ids[:, a:b], cache) for a, b in [(0, 7), (7, 8), (8, 13), (13, 20)]]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)
    assert cache.length == 20
    assert cache.nbytes == 2 * 2 * CONFIG["emb_dim"] * 4 * CONFIG["n_layers"] * 20  # keys, values


def test_cache_beyond_context_is_a_clear_error():
    model = cached_models()[0]
    cache = model.new_cache()
    model(torch.zeros(1, 20, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="after 20 cached tokens.*context_length is 24"):
        model(torch.zeros(1, 5, dtype=torch.long), cache)


def test_caches_are_independent_so_two_texts_can_interleave():
    model = cached_models()[1]
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 9))
    first, second = model.new_cache(), model.new_cache()
    with torch.no_grad():
        pieces = {0: [model(ids[:1, :5], first)], 1: [model(ids[1:, :3], second)]}
        pieces[0].append(model(ids[:1, 5:], first))  # one step of one text, then the other's
        pieces[1].append(model(ids[1:, 3:], second))
        full = model(ids)
    for row, cache in ((0, first), (1, second)):
        assert cache.length == 9
        torch.testing.assert_close(
            torch.cat(pieces[row], dim=1), full[row : row + 1], atol=1e-5, rtol=0
        )


def test_stacked_qkv_weights_live_as_long_as_the_cache():
    plain, fused = path_model("plain"), cached_models()[1]
    ids = torch.randint(0, CONFIG["vocab_size"], (1, 5))
    att = fused.trf_blocks[0].att
    stacked = torch.cat([att.W_query.weight, att.W_key.weight, att.W_value.weight])
    with torch.no_grad():
        cache = fused.new_cache()
        fused(ids[:, :4], cache)
        kept = cache.layers[0].derived["stacked_qkv"]
        torch.testing.assert_close(kept[0], stacked, atol=0, rtol=0)
        fused(ids[:, 4:], cache)
        assert cache.layers[0].derived["stacked_qkv"] is kept  # reused at the next token
        # New weights need a new cache, which restacks them.
        for model in (plain, fused):
            model.trf_blocks[0].att.W_key.weight.mul_(1.5)
        cache = fused.new_cache()
        fused(ids[:, :4], cache)
        last = fused(ids[:, 4:], cache)
    restacked = cache.layers[0].derived["stacked_qkv"][0]
    torch.testing.assert_close(
        restacked[CONFIG["emb_dim"] : 2 * CONFIG["emb_dim"]], att.W_key.weight
    )
    torch.testing.assert_close(last[:, -1], plain(ids)[:, -1], atol=1e-5, rtol=0)
    # With autograd on, nothing is kept: the stacked weights are part of the graph.
    cache = fused.new_cache()
    fused(ids, cache).sum().backward()
    assert cache.layers[0].derived == {} and att.W_query.weight.grad is not None


def test_cached_generation_under_inference_mode():
    from shared.pretraining import generate

    with torch.inference_mode():
        torch.manual_seed(0)
        model = use_fused_kernels(KVCacheGPTModel(CONFIG)).eval()
        prompt = torch.randint(0, CONFIG["vocab_size"], (1, 4))
        args = dict(max_new_tokens=6, context_size=CONFIG["context_length"])
        cached = generate(model, prompt, **args, use_cache=True)
        assert torch.equal(cached, generate(model, prompt, **args))


def test_fused_layer_norm_and_gelu_equal_plain():
    torch.manual_seed(0)
    x = torch.randn(3, 7, 48) * 3
    plain = LayerNorm(48)
    with torch.no_grad():
        plain.scale.uniform_(0.5, 1.5)
        plain.shift.uniform_(-0.5, 0.5)
    fused = FusedLayerNorm(48)
    fused.load_state_dict(plain.state_dict())
    torch.testing.assert_close(fused(x), plain(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(FusedGELU()(x), GELU()(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("max_new_tokens", [5, 40])  # 40 runs well past the 24-token context
def test_cached_generation_equals_uncached(fused, max_new_tokens):
    from shared.pretraining import generate

    uncached_model = path_model("fused" if fused else "plain")
    model = path_model("kv cache, fused" if fused else "kv cache")
    prompt = torch.randint(0, CONFIG["vocab_size"], (2, 6))
    args = dict(max_new_tokens=max_new_tokens, context_size=CONFIG["context_length"])
    plain = generate(uncached_model, prompt, **args)
    cached = generate(model, prompt, **args, use_cache=True)
    assert plain.shape == (2, 6 + max_new_tokens)
    assert torch.equal(cached, plain)
    # sampling with a seed draws the same tokens too
    sampled = [
        (
            torch.manual_seed(7),
            generate(model, prompt, **args, temperature=1.0, top_k=5, use_cache=c),
        )[1]
        for c in (False, True)
    ]
    assert torch.equal(sampled[0], sampled[1])


def test_cached_generation_needs_a_model_with_a_cache():
    from shared.pretraining import generate

    with pytest.raises(TypeError, match="KV cache, got GPTModel.*KVCacheGPTModel"):
        generate(path_model("plain"), torch.zeros(1, 3, dtype=torch.long), 2, 24, use_cache=True)


def test_kv_cache_attention_without_cache_is_the_plain_module():
    torch.manual_seed(0)
    plain = MultiHeadAttention(16, 32, 12, 0.0, 4, qkv_bias=True)
    cached = KVCacheMultiHeadAttention(16, 32, 12, 0.0, 4, qkv_bias=True)
    cached.load_state_dict(plain.state_dict())
    x = torch.randn(2, 12, 16)
    assert torch.equal(cached(x), plain(x))
    assert list(cached.state_dict()) == list(plain.state_dict())  # weights only, no cache


@pytest.fixture(scope="module")
def kv_notebook():
    from tests.notebook_code import notebook_definitions

    return notebook_definitions("ch04/kv-cache.ipynb")


@pytest.mark.parametrize("preallocated", [False, True])
def test_notebook_step_by_step_cache_gives_the_uncached_tokens(kv_notebook, preallocated):
    from shared.gpt import generate_text_simple

    cfg = {**CONFIG, "qkv_bias": False}
    torch.manual_seed(3)
    plain = GPTModel(cfg).eval()
    cached = kv_notebook["CachingGPTModel"](cfg).eval()
    cached.load_state_dict(plain.state_dict())  # strict: GPTModel's names and shapes
    if preallocated:
        layer_kv = functools.partial(kv_notebook["PreallocatedLayerKV"], CONFIG["context_length"])
    else:
        layer_kv = kv_notebook["LayerKV"]
    generate_cached = kv_notebook["generate_cached"]
    prompt = torch.randint(0, CONFIG["vocab_size"], (2, 5))
    new = CONFIG["context_length"] - 5  # up to the end of the context
    expected = generate_text_simple(plain, prompt, new, CONFIG["context_length"])
    ids, cache = generate_cached(cached, prompt, new, layer_kv)
    assert torch.equal(ids, expected)
    assert cache.length == CONFIG["context_length"] - 1  # the last token is never fed
    # A second text gets a cache of its own.
    other = torch.randint(0, CONFIG["vocab_size"], (1, 3))
    other_ids, other_cache = generate_cached(cached, other, 4, layer_kv)
    assert torch.equal(other_ids, generate_text_simple(plain, other, 4, CONFIG["context_length"]))
    assert other_cache.length == 3 + 4 - 1 and cache.length == CONFIG["context_length"] - 1


def test_notebook_preallocated_cache_refuses_to_overflow(kv_notebook):
    layer = kv_notebook["PreallocatedLayerKV"](capacity=4)
    keys = torch.randn(1, 2, 3, 5)
    all_keys, _ = layer.extend(keys, keys + 1)
    assert torch.equal(all_keys, keys) and layer.keys.shape == (1, 2, 4, 5)
    with pytest.raises(ValueError, match="5 positions do not fit in a cache of 4"):
        layer.extend(torch.randn(1, 2, 2, 5), torch.randn(1, 2, 2, 5))


def test_notebook_cached_attention_refuses_to_pass_the_context(kv_notebook):
    att = kv_notebook["CachingAttention"](8, 8, context_length=6, dropout=0.0, num_heads=2)
    layer_kv = kv_notebook["LayerKV"]()
    att(torch.randn(1, 5, 8), layer_kv)
    with pytest.raises(ValueError, match="7 positions exceed the context_length of 6"):
        att(torch.randn(1, 2, 8), layer_kv)
    assert layer_kv.length == 5  # nothing was added


def test_notebook_memory_formula_matches_the_cache_tensors(kv_notebook):
    model = kv_notebook["CachingGPTModel"](CONFIG).eval()
    _, cache = kv_notebook["generate_cached"](model, torch.zeros(3, 4, dtype=torch.long), 6)
    assert not any("cache" in name for name in model.state_dict())  # weights only
    held = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert held == kv_notebook["kv_cache_bytes"](CONFIG, num_tokens=9, batch_size=3)
    # GPT-2 124M at its full context: 2 x 768 x 4 bytes x 12 layers x 1,024 tokens = 72 MiB.
    assert kv_notebook["kv_cache_bytes"]({"emb_dim": 768, "n_layers": 12}, 1024) == 72 * 1024**2


def test_attention_primitives_match_pytorch():
    from shared.attention import causal_mask
    from shared.attention_ops import LayerKV, attend, hidden_positions, repeat_kv, split_heads

    torch.manual_seed(0)
    q, k, v = (split_heads(torch.randn(2, 5, 24), 4) for _ in range(3))  # (2, 4, 5, 6) each
    context = attend(q, k, v, hidden_positions(causal_mask(8), 5, 5))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(context, expected.transpose(1, 2).reshape(2, 5, 24))
    # The last 2 of 5 positions as new queries after 3 cached keys: the last rows of the above.
    rows = attend(q[:, :, 3:], k, v, hidden_positions(causal_mask(8), 2, 5))
    torch.testing.assert_close(rows, context[:, 3:])
    layer_kv = LayerKV()
    layer_kv.extend(k[:, :, :3], v[:, :, :3])
    keys, values = layer_kv.extend(k[:, :, 3:], v[:, :, 3:])
    assert torch.equal(keys, k) and torch.equal(values, v) and layer_kv.length == 5
    layer_kv.keep_last(2)  # a sliding window: fewer positions kept, the same positions seen
    assert torch.equal(layer_kv.tensors[0], k[:, :, 3:]) and layer_kv.length == 5
    assert torch.equal(repeat_kv(k[:, :2], 2), k[:, [0, 0, 1, 1]])
    with pytest.raises(ValueError, match="9 positions exceed the context_length of 8"):
        hidden_positions(causal_mask(8), 1, 9)


def test_fused_kernels_mid_generation_keep_the_cache_and_the_cache_comes_first():
    model = path_model("kv cache")
    ids = torch.randint(0, CONFIG["vocab_size"], (1, 9))
    expected = path_model("kv cache, fused")(ids)
    cache = model.new_cache()
    model(ids[:, :6], cache)
    use_fused_kernels(model)  # the keys and values cached so far stay valid
    last = model(ids[:, 6:], cache)
    torch.testing.assert_close(last, expected[:, 6:], atol=1e-5, rtol=0)
    fused = use_fused_kernels(GPTModel(CONFIG)).trf_blocks[0].att
    with pytest.raises(TypeError, match="add the KV cache first"):
        KVCacheMultiHeadAttention.from_attention(fused)
