"""Low-rank adaptation (LoRA), the parameter-efficient finetuning of Chapter 7's exercises.

A frozen linear layer W gets a trainable update of rank r: y = x W^T + b + (alpha / r) x A B,
with A (d_in, r) and B (r, d_out). B starts at zero, so at first the model is unchanged.

Shapes: x (..., d_in) -> (..., d_out).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRALayer(nn.Module):
    """The low-rank update (alpha / rank) * x @ A @ B.

    A (in_dim, rank) is initialised like nn.Linear's weights, B (rank, out_dim) with zeros.
    forward: x (..., in_dim) -> (..., out_dim)
    """

    def __init__(self, in_dim: int, out_dim: int, rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank}")
        self.rank = rank
        self.alpha = alpha
        self.A = nn.Parameter(torch.empty(in_dim, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(rank, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.alpha / self.rank) * (x @ self.A @ self.B)


class LinearWithLoRA(nn.Module):
    """An nn.Linear plus a LoRALayer: linear(x) + lora(x).

    forward: x (..., linear.in_features) -> (..., linear.out_features)
    """

    def __init__(self, linear: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.linear = linear
        self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha)
        self.lora.to(device=linear.weight.device, dtype=linear.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.lora(x)


def replace_linear_with_lora(
    model: nn.Module, rank: int, alpha: float, freeze_base: bool = True
) -> nn.Module:
    """Wrap every nn.Linear inside ``model`` in a LinearWithLoRA, in place; returns ``model``.

    With freeze_base (the default), every parameter the model had before is frozen first, so
    only the new A and B matrices are trained.
    """
    if freeze_base:
        for param in model.parameters():
            param.requires_grad = False
    for name, child in model.named_children():
        if isinstance(child, nn.Linear):
            setattr(model, name, LinearWithLoRA(child, rank, alpha))
        else:
            replace_linear_with_lora(child, rank, alpha, freeze_base=False)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LinearWithLoRA inside ``model`` back into a plain nn.Linear, in place.

    The merged weight is W + (alpha / rank) * (A @ B)^T, shape (out_dim, in_dim), so the model
    computes the same function (up to rounding) without the extra products of the LoRA path,
    and its state_dict has the keys of the model before replace_linear_with_lora. The merged
    layers keep the requires_grad flag of the base layer. Returns ``model``.
    """
    for name, child in model.named_children():
        if isinstance(child, LinearWithLoRA):
            setattr(model, name, _merged_linear(child))
        else:
            merge_lora(child)
    return model


def _merged_linear(wrapped: LinearWithLoRA) -> nn.Linear:
    """One nn.Linear computing linear(x) + lora(x) of a LinearWithLoRA."""
    base, lora = wrapped.linear, wrapped.lora
    merged = nn.Linear(
        base.in_features,
        base.out_features,
        bias=base.bias is not None,
        device=base.weight.device,
        dtype=base.weight.dtype,
    )
    with torch.no_grad():
        merged.weight.copy_(base.weight + (lora.alpha / lora.rank) * (lora.A @ lora.B).T)
        if base.bias is not None:
            merged.bias.copy_(base.bias)
    merged.requires_grad_(base.weight.requires_grad)
    return merged


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable, by default) parameters of a model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
