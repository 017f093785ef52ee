"""Choosing the device the course runs on."""

from __future__ import annotations

import torch


def get_device() -> torch.device:
    """CUDA if available, then Apple's mps, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
