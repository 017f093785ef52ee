"""shared.attention against PyTorch's own attention, and against the classes ch03.ipynb teaches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from shared.attention import (
    CausalAttention,
    MultiHeadAttention,
    MultiHeadAttentionWrapper,
    SelfAttention_v1,
    SelfAttention_v2,
)
from tests.notebook_code import notebook_definitions

D_IN, CONTEXT = 6, 10


def random_batch(seed: int = 0, b: int = 3, n: int = CONTEXT, d: int = D_IN) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, d, generator=g)


def reference_heads(x, w_q, w_k, w_v, num_heads, causal):
    """F.scaled_dot_product_attention on the given projections; heads merged back: (b, n, d_out)."""
    b, n, _ = x.shape

    def split(t):
        return t.view(b, n, num_heads, -1).transpose(1, 2)

    q, k, v = split(w_q(x)), split(w_k(x)), split(w_v(x))
    context = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return context.transpose(1, 2).reshape(b, n, -1)


@pytest.mark.parametrize("num_heads,qkv_bias", [(1, False), (2, True), (4, False)])
def test_multihead_attention_equals_scaled_dot_product_attention(num_heads, qkv_bias):
    torch.manual_seed(1)
    mha = MultiHeadAttention(D_IN, 8, CONTEXT, dropout=0.0, num_heads=num_heads, qkv_bias=qkv_bias)
    x = random_batch()
    with torch.no_grad():
        expected = mha.out_proj(
            reference_heads(x, mha.W_query, mha.W_key, mha.W_value, num_heads, causal=True)
        )
        torch.testing.assert_close(mha(x), expected)
        # Shorter inputs use the top-left corner of the mask.
        torch.testing.assert_close(mha(x[:, :4]), expected[:, :4])


def test_causal_attention_equals_scaled_dot_product_attention():
    torch.manual_seed(2)
    ca = CausalAttention(D_IN, 5, CONTEXT, dropout=0.0, qkv_bias=True)
    x = random_batch(1)
    with torch.no_grad():
        expected = reference_heads(x, ca.W_query, ca.W_key, ca.W_value, 1, causal=True)
        torch.testing.assert_close(ca(x), expected)


def test_self_attention_v2_equals_unmasked_scaled_dot_product_attention():
    torch.manual_seed(3)
    sa = SelfAttention_v2(D_IN, 4, qkv_bias=True)
    x = random_batch(2, b=1)
    with torch.no_grad():
        expected = reference_heads(x, sa.W_query, sa.W_key, sa.W_value, 1, causal=False)
        torch.testing.assert_close(sa(x[0]), expected[0])


def test_self_attention_v1_equals_v2_after_copying_weights():
    torch.manual_seed(4)
    v1, v2 = SelfAttention_v1(D_IN, 4), SelfAttention_v2(D_IN, 4)
    x = random_batch(3, b=1)[0]
    assert not torch.allclose(v1(x), v2(x))
    with torch.no_grad():
        for name in ("W_query", "W_key", "W_value"):
            getattr(v1, name).copy_(getattr(v2, name).weight.T)
    torch.testing.assert_close(v1(x), v2(x))


def test_multihead_attention_equals_wrapper_after_copying_weights():
    torch.manual_seed(5)
    num_heads, head_dim = 3, 2
    wrapper = MultiHeadAttentionWrapper(D_IN, head_dim, CONTEXT, 0.0, num_heads, qkv_bias=True)
    mha = MultiHeadAttention(D_IN, num_heads * head_dim, CONTEXT, 0.0, num_heads, qkv_bias=True)
    with torch.no_grad():
        for name in ("W_query", "W_key", "W_value"):
            for part in ("weight", "bias"):
                stacked = torch.cat([getattr(getattr(h, name), part) for h in wrapper.heads])
                getattr(getattr(mha, name), part).copy_(stacked)
        x = random_batch(4)
        torch.testing.assert_close(mha(x), mha.out_proj(wrapper(x)))
        # With an identity output projection, the two modules are the same function.
        mha.out_proj.weight.copy_(torch.eye(num_heads * head_dim))
        mha.out_proj.bias.zero_()
        torch.testing.assert_close(mha(x), wrapper(x))


@pytest.mark.parametrize(
    "make",
    [
        lambda: CausalAttention(D_IN, 4, CONTEXT, dropout=0.0),
        lambda: MultiHeadAttentionWrapper(D_IN, 2, CONTEXT, dropout=0.0, num_heads=2),
        lambda: MultiHeadAttention(D_IN, 8, CONTEXT, dropout=0.0, num_heads=4),
    ],
    ids=["causal", "wrapper", "multihead"],
)
def test_changing_later_tokens_never_changes_earlier_outputs(make):
    torch.manual_seed(6)
    module = make()
    x = random_batch(5)
    out = module(x)
    for t in range(CONTEXT):
        changed = x.clone()
        changed[:, t:] = torch.randn_like(changed[:, t:]) * 5
        out_changed = module(changed)
        assert torch.equal(out_changed[:, :t], out[:, :t]), f"output before token {t} changed"
        assert not torch.allclose(out_changed[:, t], out[:, t]), f"token {t} has no effect"


def test_dropout_only_in_training_mode():
    torch.manual_seed(7)
    mha = MultiHeadAttention(D_IN, 8, CONTEXT, dropout=0.5, num_heads=2)
    x = random_batch(6)
    mha.train()
    assert not torch.equal(mha(x), mha(x))
    mha.eval()
    assert torch.equal(mha(x), mha(x))


def test_mask_is_a_non_persistent_buffer_that_follows_the_module():
    mha = MultiHeadAttention(D_IN, 8, CONTEXT, dropout=0.0, num_heads=2)
    assert "mask" in dict(mha.named_buffers())
    assert "mask" not in mha.state_dict()
    assert mha.to(torch.float64).mask.dtype == torch.bool


def test_head_count_that_does_not_divide_d_out_is_rejected():
    with pytest.raises(ValueError, match=r"d_out \(768\).*num_heads \(5\)"):
        MultiHeadAttention(768, 768, context_length=16, dropout=0.0, num_heads=5)


@pytest.fixture(scope="module")
def notebook():
    return notebook_definitions("ch03/ch03.ipynb")


@pytest.mark.parametrize(
    "name,args,batched",
    [
        ("SelfAttention_v1", (D_IN, 4), False),
        ("SelfAttention_v2", (D_IN, 4), False),
        ("CausalAttention", (D_IN, 4, CONTEXT, 0.0), True),
        ("MultiHeadAttentionWrapper", (D_IN, 3, CONTEXT, 0.0, 2), True),
        ("MultiHeadAttention", (D_IN, 8, CONTEXT, 0.0, 4), True),
    ],
)
def test_notebook_classes_match_shared(notebook, name, args, batched):
    import shared.attention

    taught, finished = notebook[name], getattr(shared.attention, name)
    assert taught is not finished, "the notebook must define the class, not import it"
    x = random_batch(8) if batched else random_batch(8, b=1)[0]
    torch.manual_seed(123)
    ours = taught(*args)
    torch.manual_seed(123)
    theirs = finished(*args)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert torch.equal(ours(x), theirs(x))
    # Dropout draws the same random numbers too.
    if batched:
        ours_drop, theirs_drop = (
            taught(*args[:3], 0.5, *args[4:]),
            finished(*args[:3], 0.5, *args[4:]),
        )
        theirs_drop.load_state_dict(ours_drop.state_dict())
        torch.manual_seed(9)
        a = ours_drop(x)
        torch.manual_seed(9)
        assert torch.equal(a, theirs_drop(x))


def test_notebook_multihead_attention_rejects_bad_head_count(notebook):
    with pytest.raises(ValueError, match="divisible"):
        notebook["MultiHeadAttention"](4, 6, 8, 0.0, 4)


def test_notebook_and_shared_modules_are_interchangeable(notebook):
    """A state dict saved from the notebook's class loads into shared's (same names, shapes)."""
    torch.manual_seed(10)
    taught = notebook["MultiHeadAttention"](D_IN, 8, CONTEXT, 0.0, 2, qkv_bias=True)
    finished = MultiHeadAttention(D_IN, 8, CONTEXT, 0.0, 2, qkv_bias=True)
    finished.load_state_dict(taught.state_dict())
    x = random_batch(11)
    assert torch.equal(taught(x), finished(x))
