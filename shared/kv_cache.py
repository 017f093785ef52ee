"""GPTModel with a key/value cache for generation (ch04/kv-cache.ipynb builds one step by step).

Shapes: b = batch size, n = number of tokens, V = vocab_size.
"""

from __future__ import annotations

import torch

from shared.fast_attention import KVCacheMultiHeadAttention
from shared.gpt import GPTModel


class KVCacheGPTModel(GPTModel):
    """GPTModel whose attention layers can cache keys and values: same cfg, weights, state_dict
    and outputs as GPTModel (and the same random initial weights for the same seed);
    shared.fused_kernels.use_fused_kernels(model) gives it the fused kernels.

    forward(in_idx) computes what GPTModel computes. forward(in_idx, use_cache=True) is for
    generation: the ids (b, n) continue the ones seen since the last reset_kv_cache(), so they
    get the next positions (cached_tokens onwards), their keys and values are cached in every
    attention layer (KVCacheMultiHeadAttention), and only the new ids need passing.
    Returns logits (b, n, vocab_size).
    """

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        for block in self.trf_blocks:
            KVCacheMultiHeadAttention.from_attention(block.att)
        self.cached_tokens = 0  # positions held in the cache

    def reset_kv_cache(self) -> None:
        """Empty the key/value cache of every attention layer."""
        self.cached_tokens = 0
        for block in self.trf_blocks:
            block.att.reset_cache()

    def forward(self, in_idx: torch.Tensor, use_cache: bool = False) -> torch.Tensor:
        if not use_cache:
            return super().forward(in_idx)
        start, seq_len = self.cached_tokens, in_idx.shape[1]
        if start + seq_len > self.context_length:
            raise ValueError(
                f"input has {seq_len} tokens after {start} cached tokens but the model's "
                f"context_length is {self.context_length}; reset_kv_cache() and pass the last "
                f"{self.context_length} tokens at most"
            )
        x = self.embed(in_idx, start_pos=start)
        for block in self.trf_blocks:
            x = block(x, use_cache=True)
        self.cached_tokens += seq_len
        return self.out_head(self.final_norm(x))
