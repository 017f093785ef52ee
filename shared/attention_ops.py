"""The pieces every attention layer beyond Chapter 3 is made of, written once.

Chapter 3's MultiHeadAttention spells these steps out for the reader; the fast and cached paths
(shared.fast_attention), the attention variants (shared.attention_variants) and the open models'
attention (shared.open_models) call them instead:

- split_heads / merge_heads: (b, n, h * d_head) <-> (b, h, n, d_head);
- repeat_kv: each key/value head copied for the query heads of its group (grouped queries);
- LayerKV / KVCache: what one attention layer / a whole model has cached for one batch of
  texts, kept outside the modules (one per generation, so two can run on one model at once);
  LayerKV.extend appends the new positions and counts them;
- hidden_positions: the rows of a causal (or sliding-window) mask for the newest queries, which
  come after the cached positions; window_hidden_positions: a sliding window's, from distances;
- attend: scores, mask, softmax (optionally with attention sinks), dropout and the weighted sum
  of the values, heads merged.

Shapes: b = batch size, n = number of new tokens (queries), m = number of keys (cached + new),
h = number of heads, g = number of key/value heads, d_head = head size.
"""

from __future__ import annotations

import torch
from torch import nn


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(b, n, heads * d_head) -> (b, heads, n, d_head)."""
    b, n, width = t.shape
    return t.view(b, n, heads, width // heads).transpose(1, 2)


def merge_heads(context: torch.Tensor) -> torch.Tensor:
    """(b, h, n, d_head) -> (b, n, h * d_head): the heads' outputs side by side."""
    b, h, n, d_head = context.shape
    return context.transpose(1, 2).contiguous().view(b, n, h * d_head)


def repeat_kv(t: torch.Tensor, heads_per_group: int) -> torch.Tensor:
    """(b, g, m, d_head) -> (b, g * heads_per_group, m, d_head): each key/value head repeated for
    the heads_per_group consecutive query heads it serves."""
    return t if heads_per_group == 1 else t.repeat_interleave(heads_per_group, dim=1)


class LayerKV:
    """What one attention layer has cached for one batch of texts.

    tensors: the cached keys and values (each (b, g, m, d_head)), or whatever the layer rebuilds
    them from (latent attention keeps one latent (b, m, r)); empty before the first extend.
    length: the positions seen so far, so the next new token sits at position length (a
    sliding window may keep fewer than it has seen). derived: what the layer computes once per
    generation from its weights (the fused path keeps its stacked query/key/value weights here;
    the cached keys assume unchanged weights anyway).
    """

    def __init__(self):
        self.tensors: tuple[torch.Tensor, ...] = ()
        self.length = 0
        self.derived: dict[str, object] = {}

    def extend(self, *new: torch.Tensor, dim: int = 2) -> tuple[torch.Tensor, ...]:
        """Append the new positions (each tensor's dim) to the cached tensors and return all of
        them, cached + new, in the order given."""
        added = new[0].shape[dim]
        if self.tensors:
            new = tuple(torch.cat([old, t], dim=dim) for old, t in zip(self.tensors, new))
        self.tensors = new
        self.length += added
        return new

    def keep_last(self, count: int, dim: int = 2) -> None:
        """Keep only the last count cached positions (a sliding window); length is unchanged.
        The kept positions are copied, so the memory of the dropped ones is freed (a view would
        keep all of it alive, e.g. a whole prompt's after the first step)."""
        start = max(0, self.tensors[0].shape[dim] - count) if self.tensors else 0
        if start > 0:
            self.tensors = tuple(
                t.narrow(dim, start, t.shape[dim] - start).clone() for t in self.tensors
            )

    @property
    def nbytes(self) -> int:
        """Bytes the cached tensors take."""
        return sum(t.numel() * t.element_size() for t in self.tensors)


class KVCache:
    """What a model has cached for one batch of texts: a LayerKV per transformer block.

    length: the positions seen (every layer has seen the same ones); nbytes: the whole cache.
    """

    def __init__(self, num_layers: int):
        self.layers = [LayerKV() for _ in range(num_layers)]

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)


def hidden_positions(mask: torch.Tensor, num_tokens: int, num_keys: int) -> torch.Tensor:
    """The rows of mask (context_length, context_length), True where a query may not look, for
    the last num_tokens of num_keys positions: (num_tokens, num_keys). A clear error when
    num_keys exceeds the mask."""
    if num_keys > mask.shape[0]:
        raise ValueError(f"{num_keys} positions exceed the context_length of {mask.shape[0]}")
    return mask[num_keys - num_tokens : num_keys, :num_keys]


def window_hidden_positions(
    num_tokens: int, num_keys: int, window: int, device: torch.device | None = None
) -> torch.Tensor:
    """The sliding-window mask (num_tokens, num_keys), True where a query may not look, for the
    newest num_tokens queries over the newest num_keys positions (the queries' own among them,
    last): a query sees itself and the window - 1 positions before it. Only distances matter,
    so it fits a cache that has dropped older positions."""
    if window < 1:
        raise ValueError(f"window ({window}) must be at least 1 (the token itself)")
    query_pos = torch.arange(num_keys - num_tokens, num_keys, device=device)[:, None]
    key_pos = torch.arange(num_keys, device=device)[None, :]
    return (key_pos > query_pos) | (query_pos - key_pos >= window)


def attend(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    hidden: torch.Tensor,
    dropout: nn.Module | None = None,
    float32_softmax: bool = False,
    scale: float | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention as Chapter 3 computes it, with the heads merged at the end.

    queries (b, h, n, d_head); keys and values (b, h, m, d_head); hidden (n, m), True where a
    query may not look; dropout on the attention weights (None: none). float32_softmax: take
    the softmax in float32 and cast the weights back to the values' dtype (for bf16 models, as
    Llama and Qwen do); False: in the scores' own dtype, as Chapter 3 does. scale: what the
    scores are multiplied by; None: 1 / sqrt(d_head) (Gemma 3 sets its own). sinks: None, or
    one learned logit per head (h,) that joins every query's softmax as one more score with no
    value (gpt-oss's attention sinks): its share is dropped, so a query's weights sum to less
    than 1 and a head can give (almost) all its attention to nothing.
    Returns the context vectors (b, n, h * d_head).
    """
    scores = queries @ keys.transpose(2, 3)  # (b, h, n, m)
    scores = scores.masked_fill(hidden, -torch.inf)
    scores = scores / queries.shape[-1] ** 0.5 if scale is None else scores * scale
    softmax_dtype = torch.float32 if float32_softmax else None
    if sinks is None:
        weights = torch.softmax(scores, dim=-1, dtype=softmax_dtype)
    else:  # one more column per query row: the head's sink, dropped after the softmax
        if sinks.shape != (scores.shape[1],):
            raise ValueError(
                f"sinks must hold one logit per head, shape ({scores.shape[1]},); "
                f"got {tuple(sinks.shape)}"
            )
        sink_column = sinks.to(scores.dtype).view(1, -1, 1, 1).expand(*scores.shape[:3], 1)
        with_sinks = torch.cat([scores, sink_column], dim=-1)
        weights = torch.softmax(with_sinks, dim=-1, dtype=softmax_dtype)[..., :-1]
    weights = weights.to(values.dtype)
    if dropout is not None:
        weights = dropout(weights)
    return merge_heads(weights @ values)
