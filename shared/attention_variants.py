"""What shrinks the KV cache and the compute: drop-in replacements for the chapter's classes.

- GroupedQueryAttention: groups of query heads share one key/value head (fewer heads cached).
- MultiHeadLatentAttention: keys and values come from one small latent vector per token, and the
  latent is what gets cached.
- SlidingWindowAttention: each token sees only the most recent positions (fewer positions cached).
- MoEFeedForward: a router sends each token to top_k of num_experts feed-forward networks (the
  parameters grow with num_experts, the compute per token with top_k and the experts' width).

The three attention classes take MultiHeadAttention's arguments plus their own, so they can
replace `block.att` in a GPTModel; MoEFeedForward can replace `block.ff`. Each attention class
reads and extends a cache passed to it, forward(x, layer_kv) with a shared.attention_ops.LayerKV,
as shared.fast_attention.KVCacheMultiHeadAttention does, so they fit a KVCacheGPTModel too.
The formulas at the end give the cache size and the parameter counts without building a model.

Shapes: b = batch size, n = number of new tokens, m = number of keys (cached + new),
h = number of query heads, g = number of key/value groups, d_head = d_out // h,
r = latent_dim, d = emb_dim, E = num_experts, k = top_k.
"""

from __future__ import annotations

import torch
from torch import nn

from shared.attention import MultiHeadAttention, causal_mask
from shared.attention_ops import (  # noqa: F401  attend, hidden_positions: the notebook's names
    LayerKV,
    attend,
    hidden_positions,
    repeat_kv,
    split_heads,
)
from shared.gpt import FeedForward


def sliding_window_mask(context_length: int, window_size: int) -> torch.Tensor:
    """Boolean (context_length, context_length) mask, True where query i may not see key j:
    future keys (j > i) and keys window_size or more positions back (i - j >= window_size).
    Each query sees itself and the window_size - 1 positions before it."""
    too_old = torch.tril(
        torch.ones(context_length, context_length, dtype=torch.bool), diagonal=-window_size
    )
    return causal_mask(context_length) | too_old


class GroupedQueryAttention(MultiHeadAttention):
    """Causal attention where num_heads query heads share num_kv_groups key/value heads.

    The chapter's MultiHeadAttention with narrower key and value projections: each key/value
    head serves num_heads // num_kv_groups consecutive query heads. With num_kv_groups ==
    num_heads it is MultiHeadAttention (same state_dict); with num_kv_groups == 1 it is
    multi-query attention. The cache holds num_kv_groups heads instead of num_heads.

    forward: x (b, n, d_in) -> (b, n, d_out). With a layer_kv, x's keys and values, each
    (b, g, n, d_head), are appended to it.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        context_length: int,
        dropout: float,
        num_heads: int,
        num_kv_groups: int,
        qkv_bias: bool = False,
    ):
        if num_kv_groups < 1 or num_heads % num_kv_groups != 0:
            raise ValueError(
                f"num_heads ({num_heads}) must be divisible by num_kv_groups ({num_kv_groups}) "
                "so that every key/value head serves the same number of query heads"
            )
        super().__init__(d_in, d_out, context_length, dropout, num_heads, qkv_bias)
        self.num_kv_groups = num_kv_groups
        # One key head and one value head per group instead of one per query head.
        self.W_key = nn.Linear(d_in, num_kv_groups * self.head_dim, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, num_kv_groups * self.head_dim, bias=qkv_bias)

    def keep_in_cache(self, layer_kv: LayerKV) -> None:
        """What stays cached after a step: every position seen."""

    def forward(self, x: torch.Tensor, layer_kv: LayerKV | None = None) -> torch.Tensor:
        n = x.shape[1]
        queries = self.split_heads(self.W_query(x))  # (b, h, n, d_head)
        keys = split_heads(self.W_key(x), self.num_kv_groups)  # (b, g, n, d_head)
        values = split_heads(self.W_value(x), self.num_kv_groups)
        if layer_kv is not None:
            keys, values = layer_kv.extend(keys, values)  # (b, g, m, d_head)
            self.keep_in_cache(layer_kv)
        hidden = hidden_positions(self.mask, n, keys.shape[2])
        # Copy each key/value head for the query heads of its group: (b, g, m, .) -> (b, h, m, .)
        heads_per_group = self.num_heads // self.num_kv_groups
        keys, values = repeat_kv(keys, heads_per_group), repeat_kv(values, heads_per_group)
        return self.out_proj(attend(queries, keys, values, hidden, self.dropout))


class SlidingWindowAttention(GroupedQueryAttention):
    """Causal attention in which each token sees only itself and the window_size - 1 tokens
    before it; the cache keeps only the last window_size positions.

    num_kv_groups defaults to num_heads (plain multi-head attention inside the window); models
    such as Gemma 3 combine the window with grouped-query attention. With window_size at least
    the number of positions it equals causal attention.

    forward: x (b, n, d_in) -> (b, n, d_out); a layer_kv keeps keys and values of at most
    window_size positions, each (b, g, <= window_size, d_head).
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        context_length: int,
        dropout: float,
        num_heads: int,
        window_size: int,
        qkv_bias: bool = False,
        num_kv_groups: int | None = None,
    ):
        if window_size < 1:
            raise ValueError(f"window_size ({window_size}) must be at least 1 (the token itself)")
        super().__init__(
            d_in, d_out, context_length, dropout, num_heads, num_kv_groups or num_heads, qkv_bias
        )
        self.window_size = window_size
        self.mask = sliding_window_mask(context_length, window_size)

    def keep_in_cache(self, layer_kv: LayerKV) -> None:
        """Keep only the last window_size positions: older keys are outside every later query's
        window. The mask only depends on the distance between positions, so it still lines up
        after the cut."""
        layer_kv.keep_last(self.window_size)


class MultiHeadLatentAttention(MultiHeadAttention):
    """Causal multi-head attention whose keys and values are rebuilt from a shared latent.

    The chapter's MultiHeadAttention plus a down-projection W_latent that compresses each token
    to latent_dim numbers; W_key and W_value expand that latent to the keys and values of all
    heads. Only the latent is cached: latent_dim numbers per token instead of 2 * d_out.
    (DeepSeek's version also compresses the queries and carries a small separate key part for
    rotary positions; GPT-2's positions are in the embeddings, so this class needs neither.)

    forward: x (b, n, d_in) -> (b, n, d_out). With a layer_kv, x's latents (b, n, latent_dim)
    are appended to it.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        context_length: int,
        dropout: float,
        num_heads: int,
        latent_dim: int,
        qkv_bias: bool = False,
    ):
        if latent_dim < 1:
            raise ValueError(f"latent_dim ({latent_dim}) must be at least 1")
        super().__init__(d_in, d_out, context_length, dropout, num_heads, qkv_bias)
        self.W_latent = nn.Linear(d_in, latent_dim, bias=False)  # down: token -> latent
        self.W_key = nn.Linear(latent_dim, d_out, bias=qkv_bias)  # up: latent -> keys
        self.W_value = nn.Linear(latent_dim, d_out, bias=qkv_bias)  # up: latent -> values

    def forward(self, x: torch.Tensor, layer_kv: LayerKV | None = None) -> torch.Tensor:
        n = x.shape[1]
        latent = self.W_latent(x)  # (b, n, latent_dim)
        if layer_kv is not None:
            (latent,) = layer_kv.extend(latent, dim=1)  # (b, m, latent_dim)
        hidden = hidden_positions(self.mask, n, latent.shape[1])
        queries = self.split_heads(self.W_query(x))
        keys = self.split_heads(self.W_key(latent))  # (b, h, m, d_head)
        values = self.split_heads(self.W_value(latent))
        return self.out_proj(attend(queries, keys, values, hidden, self.dropout))


def check_experts(num_experts: int, top_k: int) -> None:
    """Raise ValueError unless 1 <= top_k <= num_experts (each token goes to top_k experts)."""
    if num_experts < 1:
        raise ValueError(f"num_experts ({num_experts}) must be at least 1")
    if not 1 <= top_k <= num_experts:
        raise ValueError(
            f"top_k ({top_k}) must be between 1 and num_experts ({num_experts}): "
            "a token cannot go to more experts than there are"
        )


class MoEFeedForward(nn.Module):
    """Mixture-of-experts feed-forward: num_experts copies of the chapter's FeedForward and a
    router that sends each token to its top_k experts.

    The router scores every expert for a token; the token goes to the top_k highest, and their
    outputs are summed with weights given by a softmax over those top_k scores. Only top_k
    experts run per token, so the compute per token is that of top_k feed-forwards while the
    parameters are those of num_experts. With one expert and top_k=1 it is FeedForward.

    forward: x (b, n, d) -> (b, n, d)
    """

    def __init__(self, cfg: dict, num_experts: int, top_k: int):
        super().__init__()
        check_experts(num_experts, top_k)
        self.top_k = top_k
        self.router = nn.Linear(cfg["emb_dim"], num_experts, bias=False)
        self.experts = nn.ModuleList(FeedForward(cfg) for _ in range(num_experts))

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each token goes: x (..., d) -> (gates, experts), both (..., k); experts are
        expert indices, gates their weights (each token's gates sum to 1)."""
        top_scores, experts = self.router(x).topk(self.top_k, dim=-1)
        return torch.softmax(top_scores, dim=-1), experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])  # (b * n, d)
        gates, experts = self.route(tokens)  # (b * n, k)
        out = torch.zeros_like(tokens)
        for index, expert in enumerate(self.experts):
            token, slot = torch.nonzero(experts == index, as_tuple=True)
            if token.numel():  # each expert runs only on the tokens routed to it
                weighted = gates[token, slot, None] * expert(tokens[token])
                out = out.index_add(0, token, weighted)
        return out.view_as(x)


def kv_cache_bytes_per_token(
    num_kv_heads: int, head_dim: int, dtype: torch.dtype = torch.bfloat16
) -> int:
    """Bytes that one token's keys and values take in one layer's cache:
    2 (keys and values) * num_kv_heads * head_dim * bytes per number.
    Multi-head attention caches num_kv_heads = num_heads, grouped-query attention num_kv_groups.
    """
    return 2 * num_kv_heads * head_dim * dtype.itemsize


def latent_cache_bytes_per_token(latent_dim: int, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes that one token's latent takes in one layer's cache (multi-head latent attention)."""
    return latent_dim * dtype.itemsize


def kv_cache_bytes(
    bytes_per_token: int,
    num_layers: int,
    num_tokens: int,
    batch_size: int = 1,
    window_size: int | None = None,
) -> int:
    """Bytes of the whole model's cache after num_tokens tokens of batch_size sequences.

    bytes_per_token: one token in one layer (kv_cache_bytes_per_token or
    latent_cache_bytes_per_token). A sliding window caps the cached positions at window_size.
    """
    cached = num_tokens if window_size is None else min(num_tokens, window_size)
    return bytes_per_token * num_layers * cached * batch_size


def moe_feedforward_parameters(emb_dim: int, num_experts: int, top_k: int) -> tuple[int, int]:
    """(total, active) parameters of one MoEFeedForward: every expert is the chapter's
    FeedForward (d -> 4d -> d, with biases: 8d^2 + 5d), the router d * num_experts. Active
    parameters are the ones a single token uses: the router and its top_k experts."""
    expert = 8 * emb_dim**2 + 5 * emb_dim
    router = emb_dim * num_experts
    return router + num_experts * expert, router + top_k * expert
