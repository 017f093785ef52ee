"""ch05/training-extras.ipynb builds warmup, cosine decay and gradient clipping itself; its
pieces must compute what shared.speed (and the PyTorch function it calls) computes."""

from __future__ import annotations

import math

import pytest
import torch

from shared.pretraining import calc_loss_batch
from shared.speed import TrainingOptions, learning_rate_at, train_step
from tests.conftest import tiny_model
from tests.notebook_code import notebook_definitions

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def notebook():
    return notebook_definitions("ch05/training-extras.ipynb")


@pytest.mark.parametrize(
    ("total", "peak", "warmup", "min_lr"),
    [
        (90, 2e-3, 9, 2e-4),
        (100, 1e-3, 0, 0.0),
        (50, 5e-4, 10, 5e-4),
        (8, 1.0, 8, 0.1),
        (8, 1.0, 12, 0.0),
    ],
)
def test_notebook_schedule_is_shared_learning_rate_at(notebook, total, peak, warmup, min_lr):
    ours = [notebook["scheduled_lr"](s, total, peak, warmup, min_lr) for s in range(total + 5)]
    theirs = [learning_rate_at(s, total, peak, warmup, True, min_lr) for s in range(total + 5)]
    assert ours == pytest.approx(theirs, rel=1e-12)
    if warmup:  # warmup alone: learning_rate_at without cosine decay
        ours = [notebook["warmup_lr"](s, warmup, peak) for s in range(total)]
        assert ours == pytest.approx(
            [learning_rate_at(s, total, peak, warmup) for s in range(total)]
        )


def test_notebook_constants_are_the_runs_settings(notebook):
    assert notebook["TOTAL_STEPS"] == 90 and notebook["WARMUP_STEPS"] == 9
    assert math.isclose(notebook["MIN_LR"], notebook["PEAK_LR"] / 10)


def gradients(model, seed: int = 0) -> None:
    ids = torch.randint(0, 50257, (2, 9), generator=torch.Generator().manual_seed(seed))
    model.zero_grad()
    calc_loss_batch(ids[:, :-1], ids[:, 1:], model, "cpu").backward()


@pytest.mark.parametrize("fraction", [0.1, 0.9, 2.0])
def test_notebook_clipping_is_torch_clip_grad_norm_and_train_steps(notebook, fraction):
    ours, theirs, stepped = tiny_model(), tiny_model(), tiny_model()
    gradients(ours)
    gradients(theirs)
    norm = notebook["total_norm"](list(ours.parameters()))
    max_norm = fraction * norm.item()
    returned = notebook["clip_gradients"](ours.parameters(), max_norm)
    reference = torch.nn.utils.clip_grad_norm_(theirs.parameters(), max_norm)
    torch.testing.assert_close(returned, reference)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-9)
    expected = min(max_norm, norm.item())
    assert notebook["total_norm"](list(ours.parameters())).item() == pytest.approx(
        expected, rel=1e-5
    )
    # shared.speed.train_step with max_grad_norm clips the same way before its optimizer step.
    ids = torch.randint(0, 50257, (2, 9), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD(stepped.parameters(), lr=0.0)
    options = TrainingOptions(max_grad_norm=max_norm)
    train_step(
        stepped, [(ids[:, :-1], ids[:, 1:])], optimizer, "cpu", options, loss_fn=calc_loss_batch
    )
    for a, b in zip(ours.parameters(), stepped.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-9)
