"""ch07/grpo.ipynb teaches the verifier, the group advantages and the GRPO loss in its own cells;
they must equal shared.reasoning's on the same inputs."""

from __future__ import annotations

import pytest
import torch

from shared import reasoning
from tests.notebook_code import notebook_definitions


@pytest.fixture(scope="module")
def notebook():
    return notebook_definitions("ch07/grpo.ipynb")


COMPLETIONS = [
    " reversed 6 3 9 0 Answer: 9 3 6",
    " reversed 6 3 9 0 Answer: 9 3 6 Answer: 9 2 6",
    " reversed 6 3 9 0 Answer:",
    " Answer: 9 3 6. Is that the answer?",
    " The answer is 30, since she answered 12.",
    "Answers: 4",
    " reversed 6 3 9 0 so 9 3 6",
    " The answer is 1,936.",
    "#### -12",
    "\\boxed{2.50}",
    "nothing",
    "",
]


@pytest.mark.parametrize("completion", COMPLETIONS)
def test_the_notebooks_verifier_is_the_packages(notebook, completion):
    assert notebook["extract_answer"](completion) == reasoning.extract_answer(completion)


@pytest.mark.parametrize("scale_by_std", [True, False])
def test_the_notebooks_advantages_are_the_packages(notebook, scale_by_std):
    rewards = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.5, 2.0, -1.0, 0.0]])
    assert torch.equal(
        notebook["group_advantages"](rewards, scale_by_std),
        reasoning.group_advantages(rewards, scale_by_std),
    )


@pytest.mark.parametrize("aggregation", reasoning.AGGREGATIONS)
def test_the_notebooks_loss_is_the_packages_with_its_gradient(notebook, aggregation):
    torch.manual_seed(0)
    old = torch.randn(6, 5)
    ref = old + 0.2 * torch.randn(6, 5)
    advantages = torch.randn(6)
    mask = torch.ones(6, 5, dtype=torch.bool).tril(diagonal=1)  # completions of 2 to 5 tokens
    grads = []
    losses = []
    for loss_fn in (notebook["grpo_loss"], lambda *a, **k: reasoning.grpo_loss(*a, **k)[0]):
        logprobs = old + 0.4 * torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
        logprobs.requires_grad_(True)
        loss = loss_fn(
            logprobs, old, advantages, mask,
            clip_eps=0.2, ref_logprobs=ref, kl_coef=0.05, aggregation=aggregation, max_tokens=7,
        )  # fmt: skip
        loss.backward()
        losses.append(loss.detach())
        grads.append(logprobs.grad)
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(grads[0], grads[1])
