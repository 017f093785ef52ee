"""Does your GPU compute what the CPU computes? A few identical training steps on both.

Examples (from the repository root):

    python setup/device_check.py                # the device the course picks (shared.device)
    python setup/device_check.py --device mps

Trains the same small GPTModel (same seed, same batches, AdamW) for a few steps on the CPU and
on the device, then compares the loss of every step and the gradients of the first step. On
correct hardware and software the two differ only by float32 rounding: against float64, this
check's run is off by 6e-8 (relative) in its losses and 3e-7 in its gradients, measured on the
CPU. The check allows 1e-3 (TOLERANCE), thousands of times more, yet flags errors of the kind
readers of the book have met on Apple's mps device: a chapter 7 training loss of 19.88 on mps
against 3.83 on the CPU (rasbt/LLMs-from-scratch issue 791, an Apple M4 with PyTorch 2.8.0).
A pass shows that this small model trains alike on both; some device bugs appear only at other
shapes, so a chapter whose losses look wrong on a GPU is worth running once on the CPU too.
Exits with status 1 when they disagree, saying what to do: update PyTorch, or run the course on
the CPU with LLM_COURSE_DEVICE=cpu (or --device cpu in the scripts).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from shared.cli import HelpFormatter, add_option, errors_as_one_line, positive_int
from shared.device import DEVICE_ENV, get_device
from shared.gpt import GPTModel

TOLERANCE = 1e-3  # largest relative difference allowed (see the module docstring)
CONFIG = {  # small enough for a few seconds on a laptop CPU, big enough to use every kernel
    "vocab_size": 512,
    "context_length": 64,
    "emb_dim": 64,
    "n_heads": 4,
    "n_layers": 2,
    "drop_rate": 0.0,
    "qkv_bias": True,
}


@dataclass
class TrainingRun:
    """What a short training run gives: the loss of each step, and the first step's gradients
    (parameter name -> tensor, on the CPU)."""

    losses: list[float]
    gradients: dict[str, torch.Tensor]


def train_briefly(device: torch.device, steps: int = 4, seed: int = 123) -> TrainingRun:
    """steps AdamW steps of GPTModel(CONFIG) on device, from seeded weights and batches (both
    made on the CPU, so every device starts from the same numbers)."""
    torch.manual_seed(seed)
    model = GPTModel(CONFIG)
    batches = torch.randint(0, CONFIG["vocab_size"], (steps, 4, CONFIG["context_length"] + 1))
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    losses, gradients = [], {}
    for step, batch in enumerate(batches.to(device)):
        optimizer.zero_grad()
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        if step == 0:
            gradients = {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters()}
        optimizer.step()
        losses.append(loss.item())
    return TrainingRun(losses, gradients)


def relative_difference(expected: torch.Tensor, actual: torch.Tensor, floor: float = 0.0) -> float:
    """|actual - expected| / max(|expected|, floor) (Euclidean norms), a float; 0 when both
    are zero."""
    scale = max(expected.norm().item(), floor)
    difference = (actual - expected).norm().item()
    return difference / scale if scale > 0 else difference


def disagreements(reference: TrainingRun, candidate: TrainingRun, tolerance: float) -> list[str]:
    """One line for each step's loss and each gradient whose relative difference from the
    reference exceeds tolerance (empty: they agree). A gradient that is zero but for rounding
    (the key biases': softmax ignores what they add) is measured against a thousandth of the
    norm of all the gradients instead of its own."""
    found = []
    for step, (expected, actual) in enumerate(zip(reference.losses, candidate.losses), 1):
        difference = relative_difference(torch.tensor(expected), torch.tensor(actual))
        if not difference <= tolerance:  # NaN counts as a disagreement
            found.append(f"step {step} loss: {actual:.6f} against {expected:.6f} on the CPU")
    total = torch.cat([g.flatten() for g in reference.gradients.values()]).norm().item()
    for name, expected in reference.gradients.items():
        difference = relative_difference(expected, candidate.gradients[name], 1e-3 * total)
        if not difference <= tolerance:
            found.append(f"gradient of {name}: relative difference {difference:.1e}")
    return found


def check(
    device: torch.device, train: Callable[[torch.device], TrainingRun] = train_briefly
) -> bool:
    """Compare train(device) with train(cpu) and print the verdict; True when they agree."""
    if device.type == "cpu":
        print("The course runs on the CPU, the reference itself: nothing to compare.")
        return True
    reference, candidate = train(torch.device("cpu")), train(device)
    found = disagreements(reference, candidate, TOLERANCE)
    losses = ", ".join(f"{loss:.4f}" for loss in candidate.losses)
    print(f"Losses on {device}: {losses}")
    print(f"Losses on cpu:  {', '.join(f'{loss:.4f}' for loss in reference.losses)}")
    if not found:
        print(f"{device} agrees with the CPU (every difference below {TOLERANCE:g} relative).")
        return True
    print(f"{device} DISAGREES with the CPU beyond {TOLERANCE:g} relative:")
    print("\n".join(f"  {line}" for line in found[:10]))
    print(
        f"Its results cannot be trusted. Update PyTorch (pip install --upgrade torch) and run "
        f"this check again; until it passes, run the course on the CPU: set {DEVICE_ENV}=cpu "
        "(notebooks, scripts and apps follow it) or pass --device cpu to a script."
    )
    return False


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    add_option(parser, "--device")
    parser.add_argument(
        "--train-steps", type=positive_int, default=4, help="training steps on each device"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with errors_as_one_line():
        device = get_device(args.device)
        return 0 if check(device, lambda d: train_briefly(d, steps=args.train_steps)) else 1


if __name__ == "__main__":
    sys.exit(main())
