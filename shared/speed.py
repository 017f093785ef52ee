"""Training faster and at scale: the options of the pretraining loop and the step they shape.

``TrainingOptions`` collects what changes how a training step runs (bf16 autocast,
``torch.compile``, gradient accumulation, learning-rate warmup and cosine decay, gradient
clipping). Every option is off by default, and then a step is exactly the book's:
``zero_grad``, loss, ``backward``, ``step``. ``train_step`` performs one optimizer step with the
options, given the loss function (Chapter 5's ``calc_loss_batch``); ``train_epoch`` is one pass
over the data with them; ``train_model`` is Chapter 5's ``train_model_simple`` built on it (and on
data parallelism), and ``ch05/train.py`` (checkpoints, resuming) trains epoch by epoch with it.

Shapes: b = batch size (rows of one micro-batch), n = number of tokens.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from shared.distributed import get_world_size, is_main_process
from shared.pretraining import (
    calc_loss_batch,
    check_training_args,
    evaluate_and_print,
    generate_and_print_sample,
)


@dataclass(frozen=True)
class TrainingOptions:
    """How the training loop runs; the defaults give the book's plain loop.

    bf16: run forward passes under bf16 autocast (weights and optimizer stay float32).
    compile: train through ``torch.compile(model)`` (evaluation and sampling use the model as is).
    grad_accumulation_steps: micro-batches per optimizer step; their gradients add up to the
        gradient of one batch that many times larger.
    warmup_steps: optimizer steps over which the learning rate rises linearly to its peak.
    cosine_decay: after warmup, lower the learning rate along a half cosine to min_lr.
    min_lr: the learning rate that cosine decay ends at.
    max_grad_norm: clip the gradients' total norm to this before each step (None: no clipping).
    """

    bf16: bool = False
    compile: bool = False
    grad_accumulation_steps: int = 1
    warmup_steps: int = 0
    cosine_decay: bool = False
    min_lr: float = 0.0
    max_grad_norm: float | None = None

    def __post_init__(self):
        if self.grad_accumulation_steps < 1:
            raise ValueError(
                f"grad_accumulation_steps must be >= 1, got {self.grad_accumulation_steps}"
            )
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.min_lr < 0:
            raise ValueError(f"min_lr must be >= 0, got {self.min_lr}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")

    @property
    def schedules_lr(self) -> bool:
        """Whether the learning rate changes from step to step (warmup or cosine decay)."""
        return self.warmup_steps > 0 or self.cosine_decay


def learning_rate_at(
    step: int,
    total_steps: int,
    peak_lr: float,
    warmup_steps: int = 0,
    cosine_decay: bool = False,
    min_lr: float = 0.0,
) -> float:
    """The learning rate of optimizer step `step` (0-based) of a run of total_steps steps.

    Warmup: steps 0 .. warmup_steps - 1 get peak_lr * (step + 1) / warmup_steps, so the last
    warmup step reaches peak_lr. Afterwards the rate stays at peak_lr, or with cosine_decay
    follows min_lr + (peak_lr - min_lr) * (1 + cos(pi * p)) / 2, where
    p = (step - warmup_steps) / (total_steps - warmup_steps) goes from 0 towards 1; steps past
    the end get min_lr.
    """
    if step < 0 or total_steps < 1:
        raise ValueError(f"need step >= 0 and total_steps >= 1, got {step} and {total_steps}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if not 0.0 <= min_lr <= peak_lr:
        raise ValueError(f"need 0 <= min_lr <= peak_lr, got min_lr={min_lr}, peak_lr={peak_lr}")
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if not cosine_decay or total_steps <= warmup_steps:
        return peak_lr
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def apply_lr_schedule(
    optimizer: torch.optim.Optimizer, step: int, total_steps: int, options: TrainingOptions
) -> None:
    """Set every param group's learning rate for optimizer step `step` (see learning_rate_at).

    A group's peak is the learning rate it had when it was first scheduled, kept in
    ``group["initial_lr"]`` (as PyTorch's schedulers do), so the schedule survives a checkpoint
    round trip of the optimizer. Does nothing when the options schedule nothing.
    """
    if not options.schedules_lr:
        return
    for group in optimizer.param_groups:
        peak = group.setdefault("initial_lr", group["lr"])
        group["lr"] = learning_rate_at(
            step,
            total_steps,
            peak,
            options.warmup_steps,
            options.cosine_decay,
            min(options.min_lr, peak),
        )


def autocast_context(device, bf16: bool):
    """A context that runs forward passes under bf16 autocast on device when bf16 is True.

    device: a torch.device or its name ("cpu", "cuda", "cuda:1", ...). With bf16 False it is a
    context that does nothing.
    """
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def make_adamw(params: Iterable[nn.Parameter], lr: float, weight_decay: float):
    """torch.optim.AdamW over params, with its fused kernel when every parameter is a float
    tensor on the CPU or on CUDA (torch >= 2.4): one kernel pass updates each parameter, instead
    of a sequence of element-wise operations (on a 2-core CPU, 124M parameters: about 0.05 s
    instead of 0.3 s per step; same results within float rounding)."""
    params = list(params)
    fused = bool(params) and all(
        p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params
    )
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def enable_tf32() -> None:
    """Let CUDA float32 matrix products use TensorFloat-32 tensor cores: several times faster,
    with about 1e-3 relative precision per product instead of 1e-7. Call it when training on a
    CUDA GPU; it sets float32 matmul precision for the whole process."""
    torch.set_float32_matmul_precision("high")


def _wrappers(model: nn.Module) -> Iterator[nn.Module]:
    """model, then each module wrapped by it (DistributedDataParallel, torch.compile), inwards."""
    while True:
        yield model
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel and torch.compile wrappers (any nesting)."""
    *_, plain = _wrappers(model)
    return plain


def accumulation_groups(batches: Iterable, size: int) -> Iterator[list]:
    """Consecutive groups of `size` batches (the last group may be shorter): one per step."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    group = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def steps_per_epoch(num_batches: int, grad_accumulation_steps: int) -> int:
    """Optimizer steps in one pass over num_batches micro-batches (a last, shorter group counts)."""
    return math.ceil(num_batches / grad_accumulation_steps)


def train_step(
    model: nn.Module,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    device,
    options: TrainingOptions | None = None,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, nn.Module, object], torch.Tensor],
) -> torch.Tensor:
    """One optimizer step on the micro-batches of one accumulation group.

    micro_batches: (inputs, targets) pairs, each (b, n). loss_fn(inputs, targets, model, device)
    returns a micro-batch's mean loss, a scalar (Chapter 5: shared.pretraining.calc_loss_batch).
    Each micro-batch's loss is divided by the number of micro-batches before its backward pass,
    so the gradient is that of their mean loss: k micro-batches of b rows give the gradient of
    one batch of k * b rows (when no targets are ignored). Under DistributedDataParallel,
    gradients are averaged across processes once, on the last micro-batch. Then the gradients are clipped (options.max_grad_norm) and the
    optimizer steps. With options.bf16 the forward passes run under bf16 autocast.
    Returns the mean loss of the micro-batches, a detached scalar tensor.
    """
    options = options or TrainingOptions()
    if not micro_batches:
        raise ValueError("train_step needs at least one (inputs, targets) micro-batch")
    optimizer.zero_grad()
    count = len(micro_batches)
    ddp = next((m for m in _wrappers(model) if isinstance(m, DistributedDataParallel)), None)
    total = torch.zeros((), device=device)
    for i, (input_batch, target_batch) in enumerate(micro_batches):
        last = i == count - 1
        with ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext():
            with autocast_context(device, options.bf16):
                loss = loss_fn(input_batch, target_batch, model, device)
            (loss / count if count > 1 else loss).backward()
        total += loss.detach().float()
    if options.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), options.max_grad_norm)
    optimizer.step()
    return total / count


def train_model(
    model: nn.Module,
    train_loader,
    val_loader,
    optimizer: torch.optim.Optimizer,
    device,
    num_epochs: int,
    eval_freq: int,
    eval_iter: int,
    start_context: str | None,
    tokenizer,
    *,
    options: TrainingOptions | None = None,
) -> tuple[list[float], list[float], list[int]]:
    """shared.pretraining.train_model_simple with options: the same arguments and results.

    options (TrainingOptions): bf16 autocast, torch.compile, gradient accumulation
    (one optimizer step per grad_accumulation_steps batches), learning-rate warmup and cosine
    decay over this call's steps, gradient clipping. None or the defaults: the book's loop.

    Data parallel: model may be wrapped in DistributedDataParallel and train_loader may use a
    DistributedSampler, whose set_epoch is called every epoch. Every process then evaluates its
    own loaders with the unwrapped model: no communication, so no process waits on another, and
    it takes no extra time since the others would wait for the slowest one at the next step
    anyway. Only rank 0 prints (losses, samples, progress bar); tokens seen count the tokens of
    all processes.
    """
    options = options or TrainingOptions()
    check_training_args(train_loader, eval_freq, eval_iter)
    plain_model = unwrap_model(model)
    step_model = torch.compile(model) if options.compile else model
    total_steps = num_epochs * steps_per_epoch(len(train_loader), options.grad_accumulation_steps)
    progress = new_progress()
    with tqdm(
        total=total_steps, desc="Training", unit="step", disable=not is_main_process()
    ) as bar:
        for _ in range(num_epochs):
            train_epoch(
                step_model,
                train_loader,
                val_loader,
                optimizer,
                device,
                progress,
                eval_freq=eval_freq,
                eval_iter=eval_iter,
                total_steps=total_steps,
                options=options,
                bar=bar,
            )
            if is_main_process() and start_context is not None:
                generate_and_print_sample(plain_model, tokenizer, device, start_context)
    return progress["train_losses"], progress["val_losses"], progress["track_tokens_seen"]


def new_progress() -> dict:
    """A training run's progress as train_epoch updates it (and ch05/train.py's checkpoints
    store it): epochs done, optimizer steps, tokens seen, and for each evaluation the training
    and validation loss, the tokens seen and the epoch reached (fractional)."""
    return {
        "epoch": 0,
        "global_step": 0,
        "tokens_seen": 0,
        "train_losses": [],
        "val_losses": [],
        "track_tokens_seen": [],
        "track_epochs": [],
    }


def train_epoch(
    model: nn.Module,
    train_loader,
    val_loader,
    optimizer: torch.optim.Optimizer,
    device,
    progress: dict,
    *,
    eval_freq: int,
    eval_iter: int,
    total_steps: int,
    options: TrainingOptions | None = None,
    bar: tqdm | None = None,
) -> None:
    """One pass over train_loader: one train_step per accumulation group, the learning-rate
    schedule spread over total_steps, and every eval_freq steps (counted over the whole run) an
    evaluation on eval_iter batches of each loader, printed on rank 0. Updates progress
    (new_progress) in place, its epoch last; bar: a tqdm bar to advance, showing the loss.

    model may be wrapped (DistributedDataParallel, torch.compile): evaluation uses the plain
    model inside, on this process's own loaders (see train_model). A DistributedSampler's
    set_epoch gets progress["epoch"].
    """
    options = options or TrainingOptions()
    plain_model = unwrap_model(model)
    steps = steps_per_epoch(len(train_loader), options.grad_accumulation_steps)
    processes, epoch = get_world_size(), progress["epoch"]
    sampler = getattr(train_loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    model.train()
    for i, batches in enumerate(accumulation_groups(train_loader, options.grad_accumulation_steps)):
        step = progress["global_step"]
        apply_lr_schedule(optimizer, step, total_steps, options)
        loss = train_step(model, batches, optimizer, device, options, loss_fn=calc_loss_batch)
        progress["tokens_seen"] += sum(inputs.numel() for inputs, _ in batches) * processes
        if step % eval_freq == 0:
            with autocast_context(device, options.bf16):
                train_loss, val_loss = evaluate_and_print(
                    plain_model,
                    train_loader,
                    val_loader,
                    device,
                    eval_iter,
                    epoch,
                    step,
                    show=is_main_process(),
                )
            progress["train_losses"].append(train_loss)
            progress["val_losses"].append(val_loss)
            progress["track_tokens_seen"].append(progress["tokens_seen"])
            progress["track_epochs"].append(epoch + (i + 1) / steps)
        progress["global_step"] = step + 1
        if bar is not None and not bar.disable:  # reading the loss waits for the device
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            bar.update(1)
    progress["epoch"] = epoch + 1
