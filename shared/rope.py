"""Rotary position embeddings (RoPE), as Llama and Qwen use them instead of learned positions.

Each head's query and key vectors are split into d_head / 2 pairs, and the pair j of the token
at position p is rotated by the angle p * theta_j, with theta_j = base ** (-2j / d_head): fast
rotations in the first pairs, slow ones in the last. Because a query at position p and a key
at position q are turned by p * theta_j and q * theta_j, their dot product depends only on
p - q, the relative position.

Pairs follow the Hugging Face layout that Llama and Qwen checkpoints use: dimension i is paired
with dimension i + d_head / 2 (the "rotate half" convention).

Shapes: b = batch size, h = heads, n = tokens, d = d_head, L = context_length (table rows).
"""

from __future__ import annotations

import math

import torch


def check_head_dim(head_dim: int) -> None:
    """Raise ValueError unless head_dim is a positive even number (RoPE rotates pairs)."""
    if head_dim <= 0 or head_dim % 2 != 0:
        raise ValueError(
            f"head_dim must be a positive even number for RoPE, which rotates pairs of "
            f"dimensions; got head_dim={head_dim}"
        )


def rope_inverse_frequencies(head_dim: int, base: float = 10_000.0) -> torch.Tensor:
    """The rotation speed of each pair, theta_j = base ** (-2j / head_dim), shape (d / 2,), fp32."""
    check_head_dim(head_dim)
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    return 1.0 / (base**exponents)


def llama3_scale_frequencies(
    inv_freq: torch.Tensor,
    factor: float,
    low_freq_factor: float,
    high_freq_factor: float,
    original_context_length: int,
) -> torch.Tensor:
    """Llama 3's RoPE frequency scaling, which stretches the context it was pretrained on.

    A pair whose wavelength (2 pi / theta, in tokens) is shorter than original_context_length /
    high_freq_factor keeps its speed (it resolves nearby tokens); one whose wavelength is longer
    than original_context_length / low_freq_factor turns factor times slower (so positions past
    the original context look like positions it saw); the ones between blend the two smoothly.
    inv_freq (d / 2,) -> scaled (d / 2,).
    """
    if high_freq_factor <= low_freq_factor:
        raise ValueError(
            f"high_freq_factor ({high_freq_factor}) must exceed low_freq_factor ({low_freq_factor})"
        )
    wavelength = 2 * math.pi / inv_freq
    long_wavelength = original_context_length / low_freq_factor
    short_wavelength = original_context_length / high_freq_factor
    # 0 at the long-wavelength end, 1 at the short-wavelength end, linear in between.
    blend = (original_context_length / wavelength - low_freq_factor) / (
        high_freq_factor - low_freq_factor
    )
    blended = (1 - blend) * inv_freq / factor + blend * inv_freq
    scaled = torch.where(wavelength > long_wavelength, inv_freq / factor, inv_freq)
    between = (wavelength >= short_wavelength) & (wavelength <= long_wavelength)
    return torch.where(between, blended, scaled)


def yarn_scale_frequencies(
    inv_freq: torch.Tensor,
    base: float,
    factor: float,
    original_context_length: int,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    attention_factor: float | None = None,
    truncate: bool = True,
) -> tuple[torch.Tensor, float]:
    """YaRN's RoPE scaling (OLMo 3's full layers, gpt-oss's every layer).

    Returns (scaled inv_freq (d / 2,), the factor for the cosines and sines). Counted in turns
    over original_context_length tokens, a pair that turns more than beta_fast times keeps its
    speed, one that turns fewer than beta_slow times turns factor times slower, and the ones
    between blend linearly by pair index (the boundaries rounded outwards, as the reference
    does, unless truncate is False: gpt-oss keeps them fractional). The cosines and sines are
    multiplied by attention_factor, by default 0.1 ln(factor) + 1, which sharpens the attention
    softmax over the longer context.
    """
    if factor < 1:
        raise ValueError(f"YaRN's factor must be >= 1, got {factor}")
    half = inv_freq.shape[0]
    head_dim = 2 * half

    def pair_index(turns: float) -> float:
        # The (fractional) pair j that makes `turns` turns over the original context.
        return (
            head_dim
            * math.log(original_context_length / (turns * 2 * math.pi))
            / (2 * math.log(base))
        )

    low, high = pair_index(beta_fast), pair_index(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    span = high - low if high != low else 1e-3  # the reference's guard against 0 / 0
    ramp = (torch.arange(half, dtype=torch.float32) - low) / span
    keep = 1 - ramp.clamp(0, 1)  # 1: keep the speed, 0: slow down by factor
    scaled = inv_freq / factor * (1 - keep) + inv_freq * keep
    if attention_factor is None:
        attention_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
    return scaled, attention_factor


def rope_tables(
    head_dim: int,
    context_length: int,
    base: float = 10_000.0,
    llama3_scaling: dict | None = None,
    yarn_scaling: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines of every position's rotation angles: (cos, sin), each (L, d), fp32.

    Row p holds the angles p * theta_j of the d / 2 pairs, repeated for both halves of the head.
    head_dim: the rotated dimensions (fewer than a head's for partial RoPE, see apply_rope).
    llama3_scaling: None, or the keyword arguments of llama3_scale_frequencies (factor,
    low_freq_factor, high_freq_factor, original_context_length). yarn_scaling: None, or those
    of yarn_scale_frequencies after base (factor, original_context_length, and optionally
    beta_fast, beta_slow, attention_factor, truncate). At most one of the two.
    """
    if context_length < 1:
        raise ValueError(f"context_length must be >= 1, got {context_length}")
    if llama3_scaling is not None and yarn_scaling is not None:
        raise ValueError("give llama3_scaling or yarn_scaling, not both")
    inv_freq = rope_inverse_frequencies(head_dim, base)
    magnitude = 1.0
    if llama3_scaling is not None:
        inv_freq = llama3_scale_frequencies(inv_freq, **llama3_scaling)
    if yarn_scaling is not None:
        inv_freq, magnitude = yarn_scale_frequencies(inv_freq, base, **yarn_scaling)
    positions = torch.arange(context_length, dtype=torch.int64).float()
    angles = torch.outer(positions, inv_freq)  # (L, d / 2)
    angles = torch.cat([angles, angles], dim=-1)  # (L, d): pair (i, i + d / 2) shares an angle
    return torch.cos(angles) * magnitude, torch.sin(angles) * magnitude


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, offset: int = 0
) -> torch.Tensor:
    """Rotate x (b, h, n, d), whose tokens sit at positions offset ... offset + n - 1.

    cos, sin: tables (L, r) from rope_tables, r <= d. Pair (x1, x2) = (x[..., i], x[..., i + r / 2])
    of the first r dimensions becomes (x1 cos - x2 sin, x2 cos + x1 sin); the other d - r pass
    unchanged (partial RoPE, as Qwen3-Next rotates a quarter of each head). Returns a tensor
    shaped and typed like x. Raises ValueError when the positions run past the table's L rows
    or r exceeds d.
    """
    n, d = x.shape[-2], x.shape[-1]
    if cos.shape[-1] > d:
        raise ValueError(f"x has head dimension {d}, fewer than the RoPE table's {cos.shape[-1]}")
    if cos.shape[-1] < d:
        r = cos.shape[-1]
        return torch.cat([apply_rope(x[..., :r], cos, sin, offset), x[..., r:]], dim=-1)
    if offset + n > cos.shape[0]:
        raise ValueError(
            f"positions {offset}..{offset + n - 1} run past the RoPE table, which covers "
            f"{cos.shape[0]} positions (the context_length); use a shorter input"
        )
    cos = cos[offset : offset + n].to(x.dtype)  # (n, d), broadcast over b and h
    sin = sin[offset : offset + n].to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    rotated_half = torch.cat([-x2, x1], dim=-1)
    return x * cos + rotated_half * sin
