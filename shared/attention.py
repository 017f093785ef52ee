"""Attention mechanisms of Chapter 3, from simplified self-attention to multi-head attention.

Shapes: b = batch size, n = number of tokens, d_in / d_out = input / output embedding size,
h = number of heads, d_head = d_out // h.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention_v1(nn.Module):
    """Self-attention with trainable weight matrices held as nn.Parameter.

    forward: x (n, d_in) -> context vectors (n, d_out)
    """

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.W_query = nn.Parameter(torch.rand(d_in, d_out))
        self.W_key = nn.Parameter(torch.rand(d_in, d_out))
        self.W_value = nn.Parameter(torch.rand(d_in, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        queries = x @ self.W_query
        keys = x @ self.W_key
        values = x @ self.W_value
        attn_scores = queries @ keys.T
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
        return attn_weights @ values


class SelfAttention_v2(nn.Module):
    """Self-attention with nn.Linear projections (better initialisation, optional bias).

    forward: x (n, d_in) -> context vectors (n, d_out)
    """

    def __init__(self, d_in: int, d_out: int, qkv_bias: bool = False):
        super().__init__()
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        queries = self.W_query(x)
        keys = self.W_key(x)
        values = self.W_value(x)
        attn_scores = queries @ keys.T
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
        return attn_weights @ values


def causal_mask(context_length: int) -> torch.Tensor:
    """Boolean (context_length, context_length) mask, True above the diagonal (future tokens)."""
    return torch.triu(torch.ones(context_length, context_length, dtype=torch.bool), diagonal=1)


class CausalAttention(nn.Module):
    """Single-head self-attention that cannot look ahead, with dropout on the attention weights.

    forward: x (b, n, d_in) with n <= context_length -> context vectors (b, n, d_out)
    """

    def __init__(
        self, d_in: int, d_out: int, context_length: int, dropout: float, qkv_bias: bool = False
    ):
        super().__init__()
        self.d_out = d_out
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", causal_mask(context_length), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        num_tokens = x.shape[1]
        queries = self.W_query(x)
        keys = self.W_key(x)
        values = self.W_value(x)
        attn_scores = queries @ keys.transpose(1, 2)
        attn_scores = attn_scores.masked_fill(self.mask[:num_tokens, :num_tokens], -torch.inf)
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
        attn_weights = self.dropout(attn_weights)
        return attn_weights @ values


class MultiHeadAttentionWrapper(nn.Module):
    """Several CausalAttention heads run one after another, outputs concatenated.

    forward: x (b, n, d_in) -> (b, n, num_heads * d_out)
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        context_length: int,
        dropout: float,
        num_heads: int,
        qkv_bias: bool = False,
    ):
        super().__init__()
        self.heads = nn.ModuleList(
            CausalAttention(d_in, d_out, context_length, dropout, qkv_bias)
            for _ in range(num_heads)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(x) for head in self.heads], dim=-1)


class MultiHeadAttention(nn.Module):
    """Causal multi-head attention: one projection for all heads, split by view/transpose.

    d_out is the total output size; each of the num_heads heads works in d_out // num_heads
    dimensions, and out_proj mixes the concatenated heads.

    fused=True is the fast path with the same weights and results: one matrix product for the
    query, key and value projections and PyTorch's fused scaled_dot_product_attention (flash or
    memory-efficient kernels where the device has them). The state_dict is the same either way.

    forward: x (b, n, d_in) -> (b, n, d_out). With use_cache=True the keys and values of x are
    appended to a cache, and x's queries attend to every cached position before them (positions
    cached + n <= context_length); reset_cache() empties it.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        context_length: int,
        dropout: float,
        num_heads: int,
        qkv_bias: bool = False,
        fused: bool = False,
    ):
        super().__init__()
        if d_out % num_heads != 0:
            raise ValueError(
                f"d_out ({d_out}) must be divisible by num_heads ({num_heads}) "
                "so that every head gets the same number of dimensions"
            )
        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.fused = fused
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", causal_mask(context_length), persistent=False)
        self.cache_k: torch.Tensor | None = None  # (b, h, cached, d_head)
        self.cache_v: torch.Tensor | None = None
        # Fused path, cached generation without autograd: the query, key and value weights
        # stacked once, (weight, bias), reused while the cache holds keys; reset_cache() frees it.
        self.stacked_qkv: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """(b, n, d_out) -> (b, h, n, d_head)."""
        b, n, _ = t.shape
        return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def project_qkv(
        self, x: torch.Tensor, use_cache: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of x (b, n, d_in), each (b, h, n, d_head).

        The fused path stacks the three weights into one (3 * d_out, d_in) product. In cached
        generation without autograd it stacks them at the first step and reuses the stack for
        every later token (the cached keys and values assume unchanged weights anyway), at the
        cost of one extra copy of the three weights until reset_cache().
        """
        layers = (self.W_query, self.W_key, self.W_value)
        if not self.fused:
            return tuple(self.split_heads(layer(x)) for layer in layers)
        keep = use_cache and not torch.is_grad_enabled()
        if keep and self.cache_k is not None and self.stacked_qkv is not None:
            weight, bias = self.stacked_qkv
        else:
            weight = torch.cat([layer.weight for layer in layers])
            biases = [layer.bias for layer in layers]
            bias = None if biases[0] is None else torch.cat(biases)
            self.stacked_qkv = (weight, bias) if keep else None
        return tuple(self.split_heads(t) for t in F.linear(x, weight, bias).split(self.d_out, -1))

    def reset_cache(self) -> None:
        """Forget the cached keys and values (and the stacked weights kept for them)."""
        self.cache_k = self.cache_v = None
        self.stacked_qkv = None

    def forward(self, x: torch.Tensor, use_cache: bool = False) -> torch.Tensor:
        b, num_tokens, _ = x.shape
        queries, keys, values = self.project_qkv(x, use_cache)
        if use_cache:
            if self.cache_k is not None:
                keys = torch.cat([self.cache_k, keys], dim=2)
                values = torch.cat([self.cache_v, values], dim=2)
            self.cache_k, self.cache_v = keys, values
        num_keys = keys.shape[2]
        if num_keys > self.mask.shape[0]:
            raise ValueError(
                f"{num_keys} positions exceed the context_length of {self.mask.shape[0]}"
            )
        # Query i sits at position num_keys - num_tokens + i and may see keys up to there.
        future = self.mask[num_keys - num_tokens : num_keys, :num_keys]

        if self.fused:
            # is_causal lets PyTorch pick its flash kernel; it aligns the mask to the top left,
            # so it only fits when nothing is cached. One new query may see every key.
            causal = num_tokens == num_keys and num_tokens > 1
            partial = num_tokens != num_keys and num_tokens > 1
            context = F.scaled_dot_product_attention(
                queries,
                keys,
                values,
                attn_mask=~future if partial else None,
                dropout_p=self.dropout.p if self.training else 0.0,
                is_causal=causal,
            )
        else:
            attn_scores = queries @ keys.transpose(2, 3)  # (b, h, n, num_keys)
            attn_scores = attn_scores.masked_fill(future, -torch.inf)
            attn_weights = torch.softmax(attn_scores / self.head_dim**0.5, dim=-1)
            attn_weights = self.dropout(attn_weights)
            context = attn_weights @ values  # (b, h, n, d_head)

        context = context.transpose(1, 2).contiguous().view(b, num_tokens, self.d_out)
        return self.out_proj(context)
