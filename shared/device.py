"""Choosing the device the course runs on, and timing work on it.

Every notebook, script and app picks its device with get_device: a name given (a script's
--device), else the environment variable LLM_COURSE_DEVICE (for example LLM_COURSE_DEVICE=cpu
when a GPU or Apple's mps gives wrong results: setup/device_check.py tells), else the best the
machine has.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch

DEVICE_ENV = "LLM_COURSE_DEVICE"


def check_device(name: str | torch.device) -> torch.device:
    """torch.device(name) when PyTorch knows it and this machine has it (cpu, cuda, cuda:1, mps,
    ...); otherwise a ValueError that names it."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {str(name)!r}; use cpu, cuda, cuda:N or mps") from None
    present = {
        "cuda": (device.index or 0) < torch.cuda.device_count(),
        "mps": torch.backends.mps.is_available(),
    }
    if not present.get(device.type, True):
        raise ValueError(f"this machine has no {name} device")
    return device


def get_device(name: str | torch.device | None = None) -> torch.device:
    """The device to run on: name if given, else $LLM_COURSE_DEVICE if set, else CUDA if
    available, then Apple's mps, else the CPU. A name that this machine lacks is a ValueError
    (naming the variable when it came from there)."""
    if name:
        return check_device(name)
    chosen = os.environ.get(DEVICE_ENV, "").strip()
    if chosen:
        try:
            return check_device(chosen)
        except ValueError as error:
            raise ValueError(f"{DEVICE_ENV}={chosen}: {error}") from None
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
