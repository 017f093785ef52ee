"""Choosing the device the course runs on, and timing work on it."""

from __future__ import annotations

import time
from collections.abc import Callable

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


def synchronize(device: torch.device) -> None:
    """Wait until the kernels queued on device have run (CUDA queues them; the CPU does not)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(
    fn: Callable[[], torch.Tensor], repeats: int, device: torch.device
) -> tuple[float, torch.Tensor]:
    """(fastest wall time of fn() on device in seconds over repeats, its last result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, result
