"""GQA, MLA, sliding-window attention and the MoE feed-forward: equal to the chapter's classes
where they should be, caches of the size the formulas say, and clear errors on bad settings."""

from __future__ import annotations

import pytest
import torch

from shared.attention import MultiHeadAttention
from shared.attention_variants import (
    GroupedQueryAttention,
    MoEFeedForward,
    MultiHeadLatentAttention,
    SlidingWindowAttention,
    kv_cache_bytes,
    kv_cache_bytes_per_token,
    latent_cache_bytes_per_token,
    moe_feedforward_parameters,
    sliding_window_mask,
)
from shared.gpt import FeedForward, GPTModel, generate_text_simple
from shared.kv_cache import KVCacheGPTModel, LayerKV
from shared.pretraining import generate
from tests.conftest import TINY
from tests.notebook_code import notebook_definitions

D, CONTEXT, HEADS = 24, 16, 6
CFG = {"emb_dim": D}


def inputs(num_tokens: int = 9, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, num_tokens, D, generator=torch.Generator().manual_seed(7))


def chapter_attention(qkv_bias: bool = True) -> MultiHeadAttention:
    torch.manual_seed(1)
    return MultiHeadAttention(D, D, CONTEXT, 0.0, HEADS, qkv_bias=qkv_bias).eval()


def cached_step_by_step(
    attention, x: torch.Tensor, chunks=(3, 1, 1, 4), layer_kv: LayerKV | None = None
) -> torch.Tensor:
    """x fed in chunks through a cache (a new LayerKV unless one is given, which is left filled),
    outputs concatenated: (b, n, d_out)."""
    layer_kv = LayerKV() if layer_kv is None else layer_kv
    starts = torch.tensor((0, *chunks)).cumsum(0).tolist()
    outputs = [attention(x[:, a:b], layer_kv) for a, b in zip(starts, starts[1:])]
    assert layer_kv.length == sum(chunks)
    return torch.cat(outputs, dim=1)


def test_gqa_with_one_group_per_head_is_multi_head_attention():
    mha = chapter_attention()
    gqa = GroupedQueryAttention(D, D, CONTEXT, 0.0, HEADS, num_kv_groups=HEADS, qkv_bias=True)
    gqa.load_state_dict(mha.state_dict())  # same parameter names and shapes
    x = inputs()
    assert torch.allclose(gqa(x), mha(x), atol=1e-6)


def test_gqa_heads_of_a_group_share_keys_and_values():
    gqa = GroupedQueryAttention(D, D, CONTEXT, 0.0, HEADS, num_kv_groups=2).eval()
    assert gqa.W_key.weight.shape == (2 * D // HEADS, D)
    # Making the two groups' key/value weights equal turns it into multi-head attention whose
    # heads repeat those weights: heads 0-2 use group 0, heads 3-5 group 1.
    mha = MultiHeadAttention(D, D, CONTEXT, 0.0, HEADS)
    state = gqa.state_dict()
    for name in ("W_key.weight", "W_value.weight"):
        state[name] = state[name].view(2, 1, D // HEADS, D).expand(2, 3, -1, -1).reshape(D, D)
    mha.load_state_dict(state)
    x = inputs()
    assert torch.allclose(gqa(x), mha(x), atol=1e-6)


def test_sliding_window_as_long_as_the_input_is_causal_attention():
    mha = chapter_attention()
    x = inputs(num_tokens=9)
    for window in (9, CONTEXT, 100):
        swa = SlidingWindowAttention(D, D, CONTEXT, 0.0, HEADS, window_size=window, qkv_bias=True)
        swa.load_state_dict(mha.state_dict())
        assert torch.allclose(swa(x), mha(x), atol=1e-6)
    short = SlidingWindowAttention(D, D, CONTEXT, 0.0, HEADS, window_size=3, qkv_bias=True)
    short.load_state_dict(mha.state_dict())
    assert torch.allclose(short(x)[:, :3], mha(x)[:, :3], atol=1e-6)  # inside the window
    assert not torch.allclose(short(x)[:, 3:], mha(x)[:, 3:], atol=1e-3)


def test_sliding_window_mask():
    mask = sliding_window_mask(5, 2)
    visible = (~mask).int().tolist()
    assert visible == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 1, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 1, 1],
    ]


@pytest.mark.parametrize(
    "attention",
    [
        GroupedQueryAttention(D, D, CONTEXT, 0.0, HEADS, num_kv_groups=3),
        SlidingWindowAttention(D, D, CONTEXT, 0.0, HEADS, window_size=4, num_kv_groups=2),
        MultiHeadLatentAttention(D, D, CONTEXT, 0.0, HEADS, latent_dim=5),
    ],
    ids=["gqa", "swa", "mla"],
)
def test_cached_outputs_equal_one_full_pass(attention):
    x = inputs()
    with torch.no_grad():
        assert torch.allclose(cached_step_by_step(attention, x), attention(x), atol=1e-6)


def test_mla_with_an_identity_latent_is_multi_head_attention():
    mha = chapter_attention()
    mla = MultiHeadLatentAttention(D, D, CONTEXT, 0.0, HEADS, latent_dim=D, qkv_bias=True)
    state = {**mha.state_dict(), "W_latent.weight": torch.eye(D)}
    mla.load_state_dict(state)
    x = inputs()
    assert torch.allclose(mla(x), mha(x), atol=1e-6)


def cached_bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def test_cache_formulas_count_the_cached_tensors():
    x, batch, tokens = inputs(num_tokens=9, batch=2), 2, 9
    gqa = GroupedQueryAttention(D, D, CONTEXT, 0.0, HEADS, num_kv_groups=2)
    swa = SlidingWindowAttention(D, D, CONTEXT, 0.0, HEADS, window_size=4, num_kv_groups=3)
    mla = MultiHeadLatentAttention(D, D, CONTEXT, 0.0, HEADS, latent_dim=5)
    caches = {name: LayerKV() for name in ("gqa", "swa", "mla")}
    with torch.no_grad():
        for attention, layer_kv in zip((gqa, swa, mla), caches.values()):
            cached_step_by_step(attention, x, layer_kv=layer_kv)
    head_dim, f32 = D // HEADS, torch.float32
    for layer_kv in caches.values():
        assert layer_kv.nbytes == cached_bytes(*layer_kv.tensors)
    assert len(caches["gqa"].tensors) == 2 and caches["gqa"].nbytes == kv_cache_bytes(
        kv_cache_bytes_per_token(2, head_dim, f32), 1, tokens, batch
    )
    assert caches["swa"].nbytes == kv_cache_bytes(
        kv_cache_bytes_per_token(3, head_dim, f32), 1, tokens, batch, window_size=4
    )
    keys, values = caches["swa"].tensors
    assert keys.shape == values.shape == (batch, 3, 4, head_dim)
    assert caches["swa"].length == tokens  # positions seen; only the window is kept
    (latent,) = caches["mla"].tensors
    assert latent.shape == (batch, tokens, 5)
    assert caches["mla"].nbytes == kv_cache_bytes(
        latent_cache_bytes_per_token(5, f32), 1, tokens, batch
    )
    # A stack of layers: one LayerKV each.
    layers = [GroupedQueryAttention(D, D, CONTEXT, 0.0, HEADS, num_kv_groups=2) for _ in range(3)]
    layer_kvs = [LayerKV() for _ in layers]
    with torch.no_grad():
        for layer, layer_kv in zip(layers, layer_kvs):
            x = layer(x[:, :7], layer_kv)
    assert sum(layer_kv.nbytes for layer_kv in layer_kvs) == kv_cache_bytes(
        kv_cache_bytes_per_token(2, head_dim, f32), 3, 7, batch
    )


def test_published_sizes():
    # Llama 3.2 1B: 16 layers, 8 key/value heads of 64 dimensions, bf16: 32 KiB per token.
    llama = kv_cache_bytes_per_token(8, 64)
    assert llama == 2048
    assert kv_cache_bytes(llama, 16, 131_072) == 4 * 2**30
    # GPT-2 124M in float32 at 1,024 tokens: 2 x 12 x 1,024 x 768 floats (about 75 MB).
    assert kv_cache_bytes(kv_cache_bytes_per_token(12, 64, torch.float32), 12, 1024) == (
        2 * 12 * 1024 * 768 * 4
    )


def test_moe_with_one_expert_is_the_dense_feed_forward():
    torch.manual_seed(2)
    dense = FeedForward(CFG)
    moe = MoEFeedForward(CFG, num_experts=1, top_k=1)
    moe.experts[0].load_state_dict(dense.state_dict())
    x = inputs()
    assert torch.allclose(moe(x), dense(x), atol=1e-6)


def test_moe_sums_the_top_k_experts_weighted_by_the_router():
    torch.manual_seed(3)
    moe = MoEFeedForward(CFG, num_experts=4, top_k=2)
    x = inputs(num_tokens=5, batch=1)[0]  # (5, d)
    gates, experts = moe.route(x)
    assert torch.allclose(gates.sum(-1), torch.ones(5))
    expected = torch.stack(
        [
            sum(g * moe.experts[e](token) for g, e in zip(gs, es.tolist()))
            for token, gs, es in zip(x, gates, experts)
        ]  # fmt: skip
    )
    assert torch.allclose(moe(x), expected, atol=1e-6)
    assert len(experts.unique()) > 1  # the router really spreads the tokens


def test_moe_parameter_formula():
    moe = MoEFeedForward(CFG, num_experts=4, top_k=2)
    total, active = moe_feedforward_parameters(D, 4, 2)
    assert total == sum(p.numel() for p in moe.parameters())
    expert = sum(p.numel() for p in moe.experts[0].parameters())
    assert active == moe.router.weight.numel() + 2 * expert


def test_variants_run_inside_the_gpt_model():
    cfg = {**TINY, "vocab_size": 50, "context_length": CONTEXT, "emb_dim": D, "n_heads": HEADS}
    torch.manual_seed(4)
    model = GPTModel(cfg).eval()
    for block in model.trf_blocks:
        block.att = MultiHeadLatentAttention(D, D, CONTEXT, 0.0, HEADS, latent_dim=8)
        block.ff = MoEFeedForward(cfg, num_experts=3, top_k=2)
    out = generate_text_simple(model, torch.tensor([[1, 2, 3]]), 4, CONTEXT)
    assert out.shape == (1, 7) and torch.equal(out[:, :3], torch.tensor([[1, 2, 3]]))


@pytest.mark.parametrize(
    "make_attention",
    [
        lambda: GroupedQueryAttention(D, D, CONTEXT, 0.0, HEADS, num_kv_groups=2),
        lambda: SlidingWindowAttention(D, D, CONTEXT, 0.0, HEADS, window_size=3),
        lambda: MultiHeadLatentAttention(D, D, CONTEXT, 0.0, HEADS, latent_dim=8),
    ],
    ids=["gqa", "swa", "mla"],
)
def test_cached_generation_in_the_kv_cache_model_gives_the_same_tokens(make_attention):
    cfg = {**TINY, "vocab_size": 50, "context_length": CONTEXT, "emb_dim": D, "n_heads": HEADS}
    torch.manual_seed(8)
    model = KVCacheGPTModel(cfg).eval()
    for block in model.trf_blocks:
        block.att = make_attention()
    prompt = torch.tensor([[3, 1, 4, 1]])
    uncached = generate(model, prompt, 10, CONTEXT)
    cached = generate(model, prompt, 10, CONTEXT, use_cache=True)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: GroupedQueryAttention(D, D, CONTEXT, 0.0, 6, num_kv_groups=4),
         r"num_heads \(6\) must be divisible by num_kv_groups \(4\)"),
        (lambda: GroupedQueryAttention(D, D, CONTEXT, 0.0, 6, num_kv_groups=0),
         r"num_heads \(6\) must be divisible by num_kv_groups \(0\)"),
        (lambda: SlidingWindowAttention(D, D, CONTEXT, 0.0, 6, window_size=0),
         r"window_size \(0\) must be at least 1"),
        (lambda: MoEFeedForward(CFG, num_experts=4, top_k=5),
         r"top_k \(5\) must be between 1 and num_experts \(4\)"),
        (lambda: MoEFeedForward(CFG, num_experts=4, top_k=0),
         r"top_k \(0\) must be between 1 and num_experts \(4\)"),
        (lambda: MultiHeadLatentAttention(D, D, CONTEXT, 0.0, 6, latent_dim=0),
         r"latent_dim \(0\) must be at least 1"),
    ],
)  # fmt: skip
def test_bad_settings_name_the_values(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_too_many_positions_is_a_clear_error():
    gqa = GroupedQueryAttention(D, D, 4, 0.0, HEADS, num_kv_groups=3)
    with pytest.raises(ValueError, match="5 positions exceed the context_length of 4"):
        gqa(inputs(num_tokens=5))


NOTEBOOK = "ch04/attention-variants.ipynb"
NOTEBOOK_CLASSES = {
    "GroupedQueryAttention": (D, D, CONTEXT, 0.0, HEADS, 2),
    "SlidingWindowAttention": (D, D, CONTEXT, 0.0, HEADS, 3),
    "MultiHeadLatentAttention": (D, D, CONTEXT, 0.0, HEADS, 5),
}


@pytest.fixture(scope="module")
def notebook():
    return notebook_definitions(NOTEBOOK)


@pytest.mark.parametrize("name", NOTEBOOK_CLASSES)
def test_notebook_attention_classes_equal_shared(notebook, name):
    import shared.attention_variants as variants

    args = NOTEBOOK_CLASSES[name]
    torch.manual_seed(5)
    ours = notebook[name](*args).eval()
    torch.manual_seed(5)
    theirs = getattr(variants, name)(*args).eval()
    x = inputs()
    our_kv, their_kv = LayerKV(), LayerKV()
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
        assert torch.equal(
            cached_step_by_step(ours, x, layer_kv=our_kv),
            cached_step_by_step(theirs, x, layer_kv=their_kv),
        )
    # The same cache protocol: the same tensors kept (the window cut, the latent alone).
    assert len(our_kv.tensors) == len(their_kv.tensors)
    assert all(map(torch.equal, our_kv.tensors, their_kv.tensors))


def test_notebook_moe_and_formulas_equal_shared(notebook):
    torch.manual_seed(6)
    ours = notebook["MoEFeedForward"](CFG, 5, 2)
    torch.manual_seed(6)
    theirs = MoEFeedForward(CFG, 5, 2)
    x = inputs()
    assert torch.equal(ours(x), theirs(x))
    assert notebook["kv_cache_bytes_per_token"](8, 64) == kv_cache_bytes_per_token(8, 64)
    assert notebook["latent_cache_bytes_per_token"](256) == latent_cache_bytes_per_token(256)
    assert notebook["kv_cache_bytes"](100, 3, 50, 2, 20) == kv_cache_bytes(100, 3, 50, 2, 20)
    assert notebook["moe_feedforward_parameters"](768, 8, 2) == moe_feedforward_parameters(
        768, 8, 2
    )
