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


def rope_tables(
    head_dim: int,
    context_length: int,
    base: float = 10_000.0,
    llama3_scaling: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines of every position's rotation angles: (cos, sin), each (L, d), fp32.

    Row p holds the angles p * theta_j of the d / 2 pairs, repeated for both halves of the head.
    llama3_scaling: None, or the keyword arguments of llama3_scale_frequencies (factor,
    low_freq_factor, high_freq_factor, original_context_length).
    """
    if context_length < 1:
        raise ValueError(f"context_length must be >= 1, got {context_length}")
    inv_freq = rope_inverse_frequencies(head_dim, base)
    if llama3_scaling is not None:
        inv_freq = llama3_scale_frequencies(inv_freq, **llama3_scaling)
    positions = torch.arange(context_length, dtype=torch.int64).float()
    angles = torch.outer(positions, inv_freq)  # (L, d / 2)
    angles = torch.cat([angles, angles], dim=-1)  # (L, d): pair (i, i + d / 2) shares an angle
    return torch.cos(angles), torch.sin(angles)


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, offset: int = 0
) -> torch.Tensor:
    """Rotate x (b, h, n, d), whose tokens sit at positions offset ... offset + n - 1.

    cos, sin: tables (L, d) from rope_tables. Pair (x1, x2) = (x[..., i], x[..., i + d / 2])
    becomes (x1 cos - x2 sin, x2 cos + x1 sin). Returns a tensor shaped and typed like x.
    Raises ValueError when the positions run past the table's L rows or d does not match.
    """
    n, d = x.shape[-2], x.shape[-1]
    if d != cos.shape[-1]:
        raise ValueError(f"x has head dimension {d}, the RoPE table {cos.shape[-1]}")
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
