"""Data-parallel training with several processes: one per GPU, or several on a CPU.

``torchrun`` starts one process per GPU (``--nproc_per_node``), on one or several machines
(``--nnodes`` with a rendezvous endpoint), and tells each its place through environment
variables: RANK (0 .. WORLD_SIZE - 1 over all machines), LOCAL_RANK (its GPU on this machine)
and WORLD_SIZE. ``setup_distributed`` reads them and joins the process group: NCCL between
GPUs, gloo between CPU processes. Started without torchrun, everything here describes a single
process, so the same script runs both ways.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from shared.device import DEVICE_ENV, get_device

_TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


def launched_by_torchrun() -> bool:
    """Whether torchrun's RANK, LOCAL_RANK and WORLD_SIZE are all set for this process."""
    return all(name in os.environ for name in _TORCHRUN_VARIABLES)


def setup_distributed(device: str | None = None) -> tuple[int, int, int, torch.device]:
    """Join torchrun's process group; return (rank, local_rank, world_size, device).

    Under torchrun: CUDA (when available and device is None or "cuda") gives each process the
    GPU cuda:LOCAL_RANK and the NCCL backend; device "cpu", or no GPU, gives the CPU and gloo
    (device None: $LLM_COURSE_DEVICE when set, as in get_device).
    Other devices (mps) cannot train data-parallel: ValueError.
    Without torchrun: (0, 0, 1, device), device being the given one or shared.device.get_device().
    """
    if not launched_by_torchrun():
        return 0, 0, 1, get_device(device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    device = device or os.environ.get(DEVICE_ENV, "").strip()  # as get_device does
    requested = torch.device(device).type if device else None
    if requested not in (None, "cuda", "cpu"):
        raise ValueError(
            f"device {device!r} cannot train data-parallel under torchrun; use cuda (NCCL) or "
            "cpu (gloo)"
        )
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but CUDA is not available")
    if requested != "cpu" and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {local_rank} has no GPU: this machine has "
                f"{torch.cuda.device_count()}; start at most that many processes per node"
            )
        torch.cuda.set_device(local_rank)
        run_on, backend = torch.device("cuda", local_rank), "nccl"
    else:
        run_on, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return rank, local_rank, world_size, run_on


def is_main_process() -> bool:
    """True in rank 0 of a process group, and in a single process without one."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def get_world_size() -> int:
    """Number of processes in the process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def cleanup_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
