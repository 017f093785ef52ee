"""Choosing the device the course runs on."""

from __future__ import annotations

import torch


def get_device(name: str | torch.device | None = None) -> torch.device:
    """torch.device(name); without a name, CUDA if available, then Apple's mps, else the CPU."""
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
