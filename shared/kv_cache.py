"""GPTModel with a key/value cache for generation (ch04/kv-cache.ipynb builds one step by step).

The cache is an object of its own (shared.attention_ops.KVCache, a LayerKV per block), made by
new_cache() and passed to forward, as in the notebook: the model holds only weights, so one
model can decode several texts at once, each with its own cache.
Shapes: b = batch size, n = number of tokens, V = vocab_size.
"""

from __future__ import annotations

import torch

from shared.attention_ops import KVCache, LayerKV  # noqa: F401  re-exported: the cache classes
from shared.fast_attention import KVCacheMultiHeadAttention
from shared.gpt import GPTModel


class KVCacheGPTModel(GPTModel):
    """GPTModel whose attention layers can read and extend a KVCache: same cfg, weights,
    state_dict and outputs as GPTModel (and the same random initial weights for the same seed);
    shared.fused_kernels.use_fused_kernels(model) gives it the fused kernels.

    forward(in_idx) computes what GPTModel computes. forward(in_idx, cache) is for generation:
    the ids (b, n) continue the cache.length ones the cache has seen, so they get the next
    positions, their keys and values are appended to the cache's layers, and only the new ids
    need passing. new_cache() gives an empty cache. Returns logits (b, n, vocab_size).
    """

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        for block in self.trf_blocks:
            KVCacheMultiHeadAttention.from_attention(block.att)

    def new_cache(self) -> KVCache:
        """An empty cache for one batch of texts (b rows, fixed at its first forward)."""
        return KVCache(len(self.trf_blocks))

    def forward(self, in_idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        if cache is None:
            return super().forward(in_idx)
        start, seq_len = cache.length, in_idx.shape[1]
        if start + seq_len > self.context_length:
            raise ValueError(
                f"input has {seq_len} tokens after {start} cached tokens but the model's "
                f"context_length is {self.context_length}; start a new cache (new_cache()) and "
                f"pass the last {self.context_length} tokens at most"
            )
        x = self.embed(in_idx, start_pos=start)
        for block, layer_kv in zip(self.trf_blocks, cache.layers, strict=True):
            x = block(x, layer_kv=layer_kv)
        return self.out_head(self.final_norm(x))
