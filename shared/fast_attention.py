"""Fast paths of Chapter 3's MultiHeadAttention, with its constructor, weights and state_dict.

- FusedMultiHeadAttention: the query, key and value projections as one matrix product, and
  PyTorch's fused scaled_dot_product_attention (flash or memory-efficient kernels where the
  device has them). Same results as MultiHeadAttention up to float rounding.
- KVCacheMultiHeadAttention: reads and extends a cache of the keys and values of the tokens
  seen (a shared.attention_ops.LayerKV), so that generation feeds only the newest token
  (ch04/kv-cache.ipynb builds one step by step); shared.kv_cache.KVCacheGPTModel uses it.

Both subclass MultiHeadAttention and add no parameters, so a built model's attention layers can
become them in place (swap_class): shared.fused_kernels.use_fused_kernels and KVCacheGPTModel do.
Shapes: b = batch size, n = number of tokens, h = number of heads, d_head = d_out // h.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shared.attention import MultiHeadAttention
from shared.attention_ops import LayerKV, attend, hidden_positions, merge_heads


def swap_class(module: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """Make module an instance of cls, in place, and return it. cls must subclass the module's
    class and add no parameters or buffers (only methods), so the module keeps its weights,
    state_dict, device, dtype and hooks; torch.nn.utils.parametrize swaps classes the same way."""
    if not issubclass(cls, type(module)):
        raise TypeError(f"{cls.__name__} does not subclass {type(module).__name__}")
    module.__class__ = cls
    return module


def stacked_qkv_weights(att: MultiHeadAttention) -> tuple[torch.Tensor, torch.Tensor | None]:
    """W_query, W_key and W_value of att stacked: weight (3 * d_out, d_in), bias (3 * d_out,) or
    None when the projections have no bias."""
    layers = (att.W_query, att.W_key, att.W_value)
    weight = torch.cat([layer.weight for layer in layers])
    bias = None if att.W_query.bias is None else torch.cat([layer.bias for layer in layers])
    return weight, bias


def project_qkv_stacked(
    att: MultiHeadAttention, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, ...]:
    """Queries, keys and values of x (b, n, d_in) from one product with the stacked weights,
    each split into heads: (b, h, n, d_head)."""
    return tuple(att.split_heads(t) for t in F.linear(x, weight, bias).split(att.d_out, dim=-1))


class FusedMultiHeadAttention(MultiHeadAttention):
    """MultiHeadAttention computed with one QKV product and scaled_dot_product_attention.

    forward: x (b, n, d_in) with n <= context_length -> (b, n, d_out)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_length(x.shape[1])
        queries, keys, values = project_qkv_stacked(self, x, *stacked_qkv_weights(self))
        context = F.scaled_dot_product_attention(
            queries,
            keys,
            values,
            dropout_p=self.dropout.p if self.training else 0.0,
            is_causal=True,  # the causal mask, without building it
        )
        return self.out_proj(merge_heads(context))


class KVCacheMultiHeadAttention(MultiHeadAttention):
    """MultiHeadAttention that can read and extend a key/value cache, for generation.

    Takes MultiHeadAttention's arguments and fused: True computes as FusedMultiHeadAttention
    does (one QKV product and scaled_dot_product_attention), False as MultiHeadAttention does.

    forward: x (b, n, d_in) -> (b, n, d_out). With a layer_kv (shared.attention_ops.LayerKV)
    x holds the n tokens after the layer_kv.length it has seen: their keys and values are
    appended to it, and x's queries attend to every cached position before them (positions
    cached + n <= context_length). The cache lives in layer_kv, not in the module, so one
    module can serve several generations at once. Without a layer_kv it computes exactly what
    the class it mirrors computes.
    """

    def __init__(self, *args, fused: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.fused = fused

    @classmethod
    def from_attention(
        cls, att: MultiHeadAttention, fused: bool = False
    ) -> KVCacheMultiHeadAttention:
        """att (Chapter 3's MultiHeadAttention, weights and all) made into this class in place.
        Build the cache first, then shared.fused_kernels.use_fused_kernels."""
        if type(att) is not MultiHeadAttention:
            raise TypeError(
                f"from_attention needs Chapter 3's MultiHeadAttention, got {type(att).__name__}; "
                "add the KV cache first, then the fused kernels (use_fused_kernels)"
            )
        att = swap_class(att, cls)
        att.fused = fused
        return att

    def project_qkv(self, x: torch.Tensor, layer_kv: LayerKV | None) -> tuple[torch.Tensor, ...]:
        """Queries, keys and values of x (b, n, d_in), each (b, h, n, d_head)."""
        if not self.fused:
            return tuple(self.split_heads(w(x)) for w in (self.W_query, self.W_key, self.W_value))
        if layer_kv is None or torch.is_grad_enabled():
            return project_qkv_stacked(self, x, *stacked_qkv_weights(self))
        # Cached generation without autograd: stack the weights at the first step, then reuse
        # them from the cache (freed with it).
        if "stacked_qkv" not in layer_kv.derived:
            layer_kv.derived["stacked_qkv"] = stacked_qkv_weights(self)
        return project_qkv_stacked(self, x, *layer_kv.derived["stacked_qkv"])

    def forward(self, x: torch.Tensor, layer_kv: LayerKV | None = None) -> torch.Tensor:
        num_tokens = x.shape[1]
        queries, keys, values = self.project_qkv(x, layer_kv)
        if layer_kv is not None:
            keys, values = layer_kv.extend(keys, values)
        num_keys = keys.shape[2]
        # Query i sits at position num_keys - num_tokens + i and may see keys up to there.
        future = hidden_positions(self.mask, num_tokens, num_keys)

        if self.fused:
            # is_causal aligns the mask to the top left, so it only fits when nothing is cached;
            # a single new query may see every key.
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
            return self.out_proj(merge_heads(context))
        return self.out_proj(attend(queries, keys, values, future, self.dropout))
