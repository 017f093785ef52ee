"""Low-rank adaptation (LoRA, Hu et al. 2021): finetune a frozen model through small updates.

Every nn.Linear y = x W^T + b of the model is frozen and gets a trainable update of rank r,
written as two bias-free linear layers, ``down`` (d_in -> r) and ``up`` (r -> d_out):

    y = base(x) + (alpha / r) * up(down(x)),   the same as the weight W + (alpha / r) * up.W @ down.W

``down`` starts as nn.Linear starts any layer (uniform, bound 1/sqrt(d_in)), ``up`` at zero, so a
model with fresh adapters computes exactly what it computed before. ch06/lora-classification.ipynb
builds these pieces one at a time. Shapes: x (..., d_in) -> (..., d_out).
"""

from __future__ import annotations

import torch
from torch import nn


class LoRALinear(nn.Module):
    """A linear layer plus its low-rank update: base(x) + scale * up(down(x)), scale = alpha / rank.

    base is used as it is (add_lora freezes it); down (rank, d_in) and up (d_out, rank) are new,
    on base's device and dtype. forward: x (..., base.in_features) -> (..., base.out_features)
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if not (isinstance(rank, int) and rank >= 1):
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.base = base
        self.down = nn.Linear(base.in_features, rank, bias=False, **like)
        self.up = nn.Linear(rank, base.out_features, bias=False, **like)
        nn.init.zeros_(self.up.weight)
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.up(self.down(x))

    def delta_weight(self) -> torch.Tensor:
        """The update as a weight of base's shape (d_out, d_in): scale * up.W @ down.W."""
        return self.scale * (self.up.weight @ self.down.weight)

    def merged(self) -> nn.Linear:
        """One nn.Linear computing this layer's function, with base's requires_grad."""
        base = self.base
        merged = nn.Linear(
            base.in_features,
            base.out_features,
            bias=base.bias is not None,
            device=base.weight.device,
            dtype=base.weight.dtype,
        )
        with torch.no_grad():
            merged.weight.copy_(base.weight + self.delta_weight())
            if base.bias is not None:
                merged.bias.copy_(base.bias)
        return merged.requires_grad_(base.weight.requires_grad)


def _swap_linears(module: nn.Module, make) -> None:
    """Replace each child (at any depth) for which make(child) returns a module, in place."""
    for name, child in module.named_children():
        replacement = make(child)
        if replacement is None:
            _swap_linears(child, make)
        else:
            setattr(module, name, replacement)


def add_lora(model: nn.Module, rank: int, alpha: float) -> nn.Module:
    """Freeze every parameter of model, then wrap each of its nn.Linear layers in a LoRALinear.

    Afterwards only the adapters' down and up weights are trainable. In place; returns model.
    """
    model.requires_grad_(False)
    _swap_linears(model, lambda m: LoRALinear(m, rank, alpha) if isinstance(m, nn.Linear) else None)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRALinear of model into a plain nn.Linear (base weight + update), in place.

    The model computes the same function (up to float rounding) without the adapters' extra
    products, and its state_dict has the keys it had before add_lora. Returns model.
    """
    _swap_linears(model, lambda m: m.merged() if isinstance(m, LoRALinear) else None)
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable, by default) parameters of a model; a tied tensor counts once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
