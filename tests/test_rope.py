"""shared.rope against transformers' rotary embeddings (plain and Llama 3 scaling), and bad input."""

import pytest
import torch

from shared.rope import apply_rope, llama3_scale_frequencies, rope_inverse_frequencies, rope_tables

transformers = pytest.importorskip("transformers")
from transformers.models.llama.modeling_llama import (  # noqa: E402
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

HEAD_DIM = 16
LLAMA3 = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_context_length": 32,
}


def reference_rotary(scaling: dict | None, context: int) -> LlamaRotaryEmbedding:
    rope = {"rope_type": "default", "rope_theta": 500_000.0}
    if scaling is not None:
        rope = {
            "rope_type": "llama3",
            "rope_theta": 500_000.0,
            "factor": scaling["factor"],
            "low_freq_factor": scaling["low_freq_factor"],
            "high_freq_factor": scaling["high_freq_factor"],
            "original_max_position_embeddings": scaling["original_context_length"],
        }
    config = transformers.LlamaConfig(
        hidden_size=4 * HEAD_DIM,
        num_attention_heads=4,
        head_dim=HEAD_DIM,
        max_position_embeddings=context,
        rope_parameters=rope,
    )
    return LlamaRotaryEmbedding(config)


@pytest.mark.parametrize("scaling", [None, LLAMA3], ids=["plain", "llama3"])
def test_rope_matches_reference_including_positions_past_the_original_context(scaling):
    context = 128  # four times the original 32 positions of LLAMA3
    cos, sin = rope_tables(HEAD_DIM, context, base=500_000.0, llama3_scaling=scaling)
    reference = reference_rotary(scaling, context)
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 40, HEAD_DIM), torch.randn(2, 3, 40, HEAD_DIM)
    offset = 80  # positions 80 ... 119, past the original context
    positions = torch.arange(offset, offset + 40).unsqueeze(0)
    ref_cos, ref_sin = reference(q, positions)
    ref_q, ref_k = apply_rotary_pos_emb(q, k, ref_cos, ref_sin)
    torch.testing.assert_close(apply_rope(q, cos, sin, offset), ref_q, atol=1e-6, rtol=0)
    torch.testing.assert_close(apply_rope(k, cos, sin, offset), ref_k, atol=1e-6, rtol=0)


def test_llama3_scaling_keeps_fast_pairs_and_slows_slow_ones():
    inv_freq = rope_inverse_frequencies(HEAD_DIM, 500_000.0)
    scaled = llama3_scale_frequencies(inv_freq, **LLAMA3)
    assert scaled[0] == inv_freq[0]  # wavelength 2 pi < 32 / 4: unchanged
    assert torch.isclose(scaled[-1], inv_freq[-1] / 8.0)  # longest wavelength: 8 times slower
    assert ((scaled <= inv_freq) & (scaled >= inv_freq / 8.0)).all()


def test_rotation_keeps_lengths_and_depends_only_on_relative_position():
    cos, sin = rope_tables(HEAD_DIM, 64)
    torch.manual_seed(1)
    q, k = torch.randn(1, 1, 1, HEAD_DIM), torch.randn(1, 1, 1, HEAD_DIM)
    torch.testing.assert_close(apply_rope(q, cos, sin, 7).norm(), q.norm())
    near = (apply_rope(q, cos, sin, 5) * apply_rope(k, cos, sin, 2)).sum()
    far = (apply_rope(q, cos, sin, 45) * apply_rope(k, cos, sin, 42)).sum()
    torch.testing.assert_close(near, far, atol=1e-5, rtol=0)


def test_odd_head_dim_is_refused_by_name():
    with pytest.raises(ValueError, match="head_dim=7"):
        rope_tables(7, 16)


def test_positions_past_the_table_are_refused_with_the_numbers():
    cos, sin = rope_tables(HEAD_DIM, 16)
    with pytest.raises(ValueError, match=r"positions 10\.\.19 .* covers 16 positions"):
        apply_rope(torch.zeros(1, 1, 10, HEAD_DIM), cos, sin, offset=10)
