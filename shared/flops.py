"""Counting GPTModel's work in floating-point operations, and this machine's throughput
(ch04/flops.ipynb derives the counts step by step).

A matrix product of (m, k) by (k, n) takes m * n * k multiplications and as many additions:
2 * m * n * k FLOPs. Everything else a GPT computes (layer norms, GELU, softmax, the residual
additions) is a few operations per number, negligible next to the products, and not counted,
as torch.utils.flop_counter.FlopCounterMode and model-FLOPs-utilisation figures do not count it.

Shapes: n = tokens per sequence, d = emb_dim, L = n_layers, V = vocab_size.
"""

from __future__ import annotations

import time

import torch

from shared.device import synchronize

# The parts of GPTModel that compute matrix products, in the order a token meets them.
PARTS = ("attention projections", "attention scores", "feed-forward", "output head")


def forward_flops(cfg: dict, num_tokens: int, batch_size: int = 1) -> dict[str, int]:
    """FLOPs of GPTModel(cfg)'s forward pass on batch_size sequences of num_tokens, by part:

    - attention projections: queries, keys, values and the output projection, 4 (d, d)
      matrices per layer: 4 * 2 * n * d * d;
    - attention scores: queries times keys (n, d) @ (d, n), then the weights times the values
      (n, n) @ (n, d), summed over the heads: 2 * 2 * n * n * d (the masked scores are
      computed too, as the chapter's code computes them);
    - feed-forward: (d, 4d) and (4d, d): 2 * 2 * n * d * 4d;
    - output head: (d, V): 2 * n * d * V.
    """
    d, layers, n = cfg["emb_dim"], cfg["n_layers"], num_tokens
    per_sequence = {
        "attention projections": layers * 4 * 2 * n * d * d,
        "attention scores": layers * 2 * 2 * n * n * d,
        "feed-forward": layers * 2 * 2 * n * d * 4 * d,
        "output head": 2 * n * d * cfg["vocab_size"],
    }
    return {part: batch_size * flops for part, flops in per_sequence.items()}


def training_flops(cfg: dict, num_tokens: int, batch_size: int = 1) -> int:
    """FLOPs of one training step (forward and backward) on batch_size sequences: 3 forward
    passes, since the backward pass computes two products for each forward one (the gradient
    with respect to the input and the one with respect to the weights)."""
    return 3 * sum(forward_flops(cfg, num_tokens, batch_size).values())


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int, seconds: float = 3.0) -> float:
    """This machine's best FLOP/s for an (n, n) @ (n, n) product in dtype, over about
    `seconds` of repeats (the ceiling a model's matrix products can reach)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best
