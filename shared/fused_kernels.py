"""The GPT model's fast path: Chapter 4's modules computed with PyTorch's fused kernels.

use_fused_kernels(model) makes each LayerNorm, GELU and MultiHeadAttention of a model (a GPTModel,
a classifier made from one, a KVCacheGPTModel) compute with one kernel where the chapter's code
runs several operations:
- LayerNorm -> FusedLayerNorm: torch.nn.functional.layer_norm;
- GELU -> FusedGELU: torch.nn.functional.gelu in the same tanh approximation;
- MultiHeadAttention -> shared.fast_attention.FusedMultiHeadAttention: one product for the
  queries, keys and values, and scaled_dot_product_attention (KVCacheMultiHeadAttention computes
  the same way, reading and extending a LayerKV).
Each twin subclasses the chapter's class and only overrides forward, so the model keeps its
weights, state_dict, device and dtype, and computes the same up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shared.attention import MultiHeadAttention
from shared.fast_attention import FusedMultiHeadAttention, KVCacheMultiHeadAttention, swap_class
from shared.gpt import GELU, LayerNorm


class FusedLayerNorm(LayerNorm):
    """LayerNorm with PyTorch's single layer_norm kernel. forward: x (..., d) -> (..., d)"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.scale.shape, self.scale, self.shift, self.eps)


class FusedGELU(GELU):
    """GELU (tanh approximation) with PyTorch's single gelu kernel. forward: x -> same shape"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


# The chapter's class -> its fused twin. Exact classes only: a subclass (grouped-query attention,
# say) computes something else and keeps its own forward.
FUSED_TWINS: dict[type[nn.Module], type[nn.Module]] = {
    LayerNorm: FusedLayerNorm,
    GELU: FusedGELU,
    MultiHeadAttention: FusedMultiHeadAttention,
}


def use_fused_kernels(model: nn.Module) -> nn.Module:
    """Switch every chapter LayerNorm, GELU and MultiHeadAttention inside model to its fused
    twin (and KVCacheMultiHeadAttention to its fused computation), in place; returns model."""
    for module in model.modules():
        if type(module) in FUSED_TWINS:
            swap_class(module, FUSED_TWINS[type(module)])
        elif type(module) is KVCacheMultiHeadAttention:
            module.fused = True  # its cached keys and values stay valid: same weights
    return model
