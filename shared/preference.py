"""Preference tuning with direct preference optimization (DPO), a bonus to Chapter 7.

A preference entry is an instruction entry (``instruction``, optional ``input``) with two
responses to it: the preferred one, ``chosen``, and the dispreferred one, ``rejected``. Other
fields (the course's data also has the ``output`` of Chapter 7) are ignored.

DPO (Rafailov et al., 2023) tunes a policy model, starting from an instruction-finetuned one,
against a frozen copy of it, the reference. The implicit reward of a response y to a prompt x is
beta * (log p_policy(y | x) - log p_reference(y | x)); the loss, -log sigmoid(reward of chosen -
reward of rejected), pushes the chosen response up and the rejected one down, relative to where
the reference put them. No reward model, no sampling: two forward passes per response.

Shapes: b = batch size; n = tokens of the batch's longest prompt + response (+1 end-of-text
token, -1 for the shift of inputs against targets; chosen and rejected batches each have their
own n); V = vocab_size.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.ticker import MaxNLocator
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from shared.data import fetch
from shared.instruction import (
    END_OF_TEXT_ID,
    create_instruction_dataloader,
    custom_collate_fn,
    format_prompt,
    validate_entries,
)

PREFERENCE_FIELDS = ("instruction", "chosen", "rejected")  # required; "input" is optional
REDUCTIONS = ("sum", "mean")


def validate_preference_entries(data: Sequence[dict]) -> None:
    """Check every entry (shared.instruction.validate_entry with the fields ``instruction``,
    ``chosen`` and ``rejected``); the first bad one raises ValueError naming index and field."""
    validate_entries(data, required=PREFERENCE_FIELDS)


def load_preference_data(path: str | Path | None = None) -> list[dict]:
    """The validated preference entries of a JSON file (default: the course's 1,100 entries).

    Raises ValueError naming the file when it is not UTF-8 JSON holding a list, or naming the
    file, the entry's index and the field of a malformed entry; OSError when it cannot be read.
    """
    path = Path(path) if path is not None else fetch("instruction-data-with-preference")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text; re-encode it as UTF-8") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of preference entries")
    try:
        validate_preference_entries(data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return data


class PreferenceDataset(Dataset):
    """Preference entries tokenised once, up front; validates them first (ValueError naming
    the index and field of a malformed one).

    Item i: a dict of token-id lists, ``prompt`` (format_prompt(entry, style): the instruction,
    the input and the response header), ``chosen`` and ``rejected`` (each response alone). The
    prompt and the responses are encoded apart, so where the prompt ends is known exactly.
    """

    def __init__(self, data: Sequence[dict], tokenizer, style: str = "alpaca"):
        validate_preference_entries(data)
        self.data = data
        self.encoded = [
            {
                "prompt": tokenizer.encode(format_prompt(entry, style)),
                "chosen": tokenizer.encode(entry["chosen"]),
                "rejected": tokenizer.encode(entry["rejected"]),
            }
            for entry in data
        ]

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.encoded[index]

    def __len__(self) -> int:
        return len(self.encoded)


class PreferenceBatch(NamedTuple):
    """A batch of prompts with both responses: inputs and targets, (b, n_chosen) for the chosen
    and (b, n_rejected) for the rejected sequences, int64. A target equal to ignore_index (the
    prompt and the padding) does not count in the log-probability of the response."""

    chosen_inputs: torch.Tensor
    chosen_targets: torch.Tensor
    rejected_inputs: torch.Tensor
    rejected_targets: torch.Tensor

    def to(self, device: str | torch.device) -> PreferenceBatch:
        """The same batch on ``device``."""
        return PreferenceBatch(*(tensor.to(device) for tensor in self))


def preference_collate_fn(
    batch: Sequence[dict[str, list[int]]],
    pad_token_id: int = END_OF_TEXT_ID,
    ignore_index: int = -100,
    allowed_max_length: int | None = None,
    device: str | torch.device = "cpu",
) -> PreferenceBatch:
    """Batch PreferenceDataset items into a PreferenceBatch on ``device``.

    Each prompt + response is padded as in Chapter 7 (shared.instruction.custom_collate_fn): one
    end-of-text token ends the response and stays a target, later padding targets become
    ignore_index, and with allowed_max_length both are cut to that many tokens. In addition
    the targets that are prompt tokens become ignore_index, so only the response (and its end)
    is scored. Raises ValueError when the cut leaves a response without a single target.
    """
    if len(batch) == 0:
        raise ValueError("cannot collate an empty batch")
    tensors = []
    for key in ("chosen", "rejected"):
        inputs, targets = custom_collate_fn(
            [item["prompt"] + item[key] for item in batch],
            pad_token_id=pad_token_id,
            ignore_index=ignore_index,
            allowed_max_length=allowed_max_length,
            device=device,
        )
        for row, item in enumerate(batch):
            # targets[j] is token j + 1: the prompt's tokens 1 .. p-1 are targets 0 .. p-2
            targets[row, : len(item["prompt"]) - 1] = ignore_index
            if bool((targets[row] == ignore_index).all()):
                raise ValueError(
                    f"row {row} of the batch: its prompt has {len(item['prompt'])} tokens, so "
                    f"allowed_max_length={allowed_max_length} leaves nothing of the {key} "
                    "response; raise allowed_max_length"
                )
        tensors += [inputs, targets]
    return PreferenceBatch(*tensors)


def create_preference_dataloader(data: Sequence[dict], tokenizer, **options) -> DataLoader:
    """DataLoader over PreferenceDataset(data) batched by preference_collate_fn: yields
    PreferenceBatch objects on ``device``. options: those of create_instruction_dataloader
    (batch_size, shuffle, drop_last, allowed_max_length, device, style, num_workers)."""
    return create_instruction_dataloader(
        data, tokenizer, **options, dataset=PreferenceDataset, collate_fn=preference_collate_fn
    )


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")


def sequence_logprob(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100, reduction: str = "sum"
) -> torch.Tensor:
    """Log-probability of each row's targets under the logits, ignoring ignore_index targets.

    logits: (b, n, V); targets: (b, n). Returns (b,): with reduction="sum" the log-probability
    of the whole response, log p(y | x) = sum over its tokens of log p(token | tokens before),
    which is minus the summed cross-entropy of Chapter 5; with "mean", its average per token
    (what the book's DPO code uses). Logits at ignored positions have no effect.
    """
    _check_reduction(reduction)
    # Flattened to (b * n, V), as in Chapter 5: the softmax then runs over contiguous rows, about
    # four times faster on a CPU than over dim 1 of logits.transpose(1, 2).
    token_logprobs = -F.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index, reduction="none"
    ).view_as(targets)  # (b, n), 0 where ignored
    mask = targets != ignore_index
    return _per_row(token_logprobs.masked_fill(~mask, 0.0), mask, reduction)


def _per_row(token_logprobs: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
    """(b, n) log-probabilities, 0 where mask is False -> (b,): their sum, or their mean over mask."""
    total = token_logprobs.sum(dim=-1)
    if reduction == "sum":
        return total
    return total / mask.sum(dim=-1).clamp(min=1)


def response_logprob(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, reduction: str = "sum"
) -> torch.Tensor:
    """sequence_logprob of model(inputs) for targets: inputs and targets (b, n) -> (b,).

    model: a GPTModel (anything with its hidden_states and out_head). The output layer, which
    gives every position 50,257 scores and is most of a small model's cost, runs only at the
    scored positions (targets != -100): the response tokens, a small share of each row, whose
    rest is prompt and padding. The result is sequence_logprob(model(inputs), targets) up to
    float rounding.
    """
    _check_reduction(reduction)
    mask = targets != -100
    hidden = model.hidden_states(inputs)[mask]  # (k, emb_dim), the k scored positions
    scored = -F.cross_entropy(model.out_head(hidden), targets[mask], reduction="none")  # (k,)
    token_logprobs = scored.new_zeros(targets.shape).masked_scatter(mask, scored)
    return _per_row(token_logprobs, mask, reduction)


class DPOLoss(NamedTuple):
    """loss: scalar (with gradient), the mean over the batch; chosen_rewards and rejected_rewards:
    (b,), beta * (policy - reference) log-probabilities of each response, without gradient."""

    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def dpo_loss(
    policy_chosen_logprobs: torch.Tensor,
    policy_rejected_logprobs: torch.Tensor,
    reference_chosen_logprobs: torch.Tensor,
    reference_rejected_logprobs: torch.Tensor,
    beta: float = 0.1,
) -> DPOLoss:
    """The DPO loss from the log-probabilities of the chosen and rejected responses, each (b,).

    reward = beta * (policy log-prob - reference log-prob) for each response;
    loss = mean over the batch of -log sigmoid(chosen reward - rejected reward).
    With the policy equal to the reference every reward is 0 and the loss is log 2. beta sets
    how far the policy may move from the reference: the smaller, the further.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    chosen_rewards = beta * (policy_chosen_logprobs - reference_chosen_logprobs)
    rejected_rewards = beta * (policy_rejected_logprobs - reference_rejected_logprobs)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return DPOLoss(loss, chosen_rewards.detach(), rejected_rewards.detach())


def dpo_loss_batch(
    batch: PreferenceBatch,
    policy: nn.Module,
    reference: nn.Module,
    device: str | torch.device,
    beta: float = 0.1,
    reduction: str = "sum",
) -> DPOLoss:
    """dpo_loss of one PreferenceBatch: four forward passes, the reference's without gradient."""
    batch = batch.to(device)
    policy_chosen = response_logprob(policy, batch.chosen_inputs, batch.chosen_targets, reduction)
    policy_rejected = response_logprob(
        policy, batch.rejected_inputs, batch.rejected_targets, reduction
    )
    with torch.no_grad():
        reference_chosen = response_logprob(
            reference, batch.chosen_inputs, batch.chosen_targets, reduction
        )
        reference_rejected = response_logprob(
            reference, batch.rejected_inputs, batch.rejected_targets, reduction
        )
    return dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)


class DPOMetrics(NamedTuple):
    """Averages over preference pairs: the DPO loss, the rewards of the chosen and the rejected
    responses, and the accuracy (the share of pairs whose chosen reward is the higher)."""

    loss: float
    chosen_reward: float
    rejected_reward: float
    accuracy: float

    @property
    def margin(self) -> float:
        """Mean reward margin: chosen reward - rejected reward."""
        return self.chosen_reward - self.rejected_reward


def calc_dpo_loader(
    data_loader,
    policy: nn.Module,
    reference: nn.Module,
    device: str | torch.device,
    beta: float = 0.1,
    num_batches: int | None = None,
    reduction: str = "sum",
) -> DPOMetrics:
    """DPOMetrics over the first num_batches batches (all when None) of a preference loader,
    averaged over pairs. Runs without gradients; the caller chooses eval or train mode.
    Raises ValueError when the loader yields no batch."""
    if len(data_loader) == 0:
        raise ValueError("the preference data loader yields no batches")
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    pairs, loss, chosen, rejected, correct = 0, 0.0, 0.0, 0.0, 0.0
    with torch.no_grad():
        for i, batch in enumerate(data_loader):
            if i >= num_batches:
                break
            result = dpo_loss_batch(batch, policy, reference, device, beta, reduction)
            size = result.chosen_rewards.numel()
            pairs += size
            loss += result.loss.item() * size
            chosen += result.chosen_rewards.sum().item()
            rejected += result.rejected_rewards.sum().item()
            correct += (result.chosen_rewards > result.rejected_rewards).sum().item()
    return DPOMetrics(loss / pairs, chosen / pairs, rejected / pairs, correct / pairs)


def evaluate_dpo(
    policy: nn.Module,
    reference: nn.Module,
    train_loader,
    val_loader,
    device: str | torch.device,
    beta: float = 0.1,
    eval_iter: int = 5,
    reduction: str = "sum",
) -> tuple[DPOMetrics, DPOMetrics]:
    """DPOMetrics on eval_iter batches of the training and of the validation loader, with the
    policy in eval mode (put back into training mode afterwards)."""
    policy.eval()
    train = calc_dpo_loader(train_loader, policy, reference, device, beta, eval_iter, reduction)
    val = calc_dpo_loader(val_loader, policy, reference, device, beta, eval_iter, reduction)
    policy.train()
    return train, val


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of model in eval mode whose parameters require no gradient: the DPO reference."""
    return copy.deepcopy(model).eval().requires_grad_(False)


@dataclass
class DPOHistory:
    """What train_model_dpo measured, one entry per evaluation: the optimizer steps done and
    the tokens seen before it, and the DPOMetrics on the training and validation batches."""

    steps: list[int] = field(default_factory=list)
    tokens_seen: list[int] = field(default_factory=list)
    train: list[DPOMetrics] = field(default_factory=list)
    val: list[DPOMetrics] = field(default_factory=list)


def train_model_dpo(
    policy: nn.Module,
    reference: nn.Module,
    train_loader,
    val_loader,
    optimizer: torch.optim.Optimizer,
    device: str | torch.device,
    num_epochs: int,
    beta: float = 0.1,
    eval_freq: int = 5,
    eval_iter: int = 5,
    reduction: str = "sum",
) -> DPOHistory:
    """Train the policy with the DPO loss against the frozen reference for num_epochs.

    optimizer holds the policy's parameters. The reference is put in eval mode and its
    parameters stop requiring gradients; it must share no parameter with the policy (use
    frozen_copy). Every eval_freq optimizer steps (starting with the first) both loaders are
    evaluated on eval_iter batches (evaluate_dpo) and the losses and reward margins printed.
    A tqdm bar counts the steps. Returns the DPOHistory.

    reduction (see sequence_logprob): "sum", the default, scores a response by the sum of its
    tokens' log-probabilities, log p(y | x) as in the DPO paper; "mean" by their per-token
    average, as the book's DPO notebook does. The sum is the average times the number of scored
    tokens, so at the same beta it gives larger rewards and a stronger loss.
    """
    if eval_freq < 1 or eval_iter < 1:
        raise ValueError(f"eval_freq ({eval_freq}) and eval_iter ({eval_iter}) must be >= 1")
    if len(train_loader) == 0:
        raise ValueError("the training loader yields no batches; there is nothing to train on")
    if {id(p) for p in policy.parameters()} & {id(p) for p in reference.parameters()}:
        raise ValueError(
            "the reference model shares parameters with the policy; pass a frozen copy "
            "(shared.preference.frozen_copy(policy)) made before training"
        )
    _check_reduction(reduction)
    reference.eval().requires_grad_(False)
    history, tokens_seen, step = DPOHistory(), 0, 0
    policy.train()
    with tqdm(total=num_epochs * len(train_loader), desc="DPO", unit="step") as bar:
        for epoch in range(num_epochs):
            for batch in train_loader:
                optimizer.zero_grad()
                result = dpo_loss_batch(batch, policy, reference, device, beta, reduction)
                result.loss.backward()
                optimizer.step()
                tokens_seen += batch.chosen_inputs.numel() + batch.rejected_inputs.numel()
                if step % eval_freq == 0:
                    train, val = evaluate_dpo(
                        policy, reference, train_loader, val_loader, device, beta, eval_iter,
                        reduction,
                    )  # fmt: skip
                    history.steps.append(step + 1)
                    history.tokens_seen.append(tokens_seen)
                    history.train.append(train)
                    history.val.append(val)
                    tqdm.write(
                        f"Ep {epoch + 1} (Step {step:06d}): Train loss {train.loss:.3f}, "
                        f"Val loss {val.loss:.3f}, Train reward margin {train.margin:.3f}, "
                        f"Val reward margin {val.margin:.3f}"
                    )
                step += 1
                bar.update(1)
    return history


def plot_dpo_history(history: DPOHistory):
    """Two panels against optimizer steps: the DPO loss and the reward margin, each for the
    training and the validation batches. Returns the matplotlib figure."""
    fig, (loss_ax, margin_ax) = plt.subplots(1, 2, figsize=(9, 3))
    for ax, name, values in (
        (loss_ax, "DPO loss", lambda m: m.loss),
        (margin_ax, "Reward margin (chosen - rejected)", lambda m: m.margin),
    ):
        ax.plot(history.steps, [values(m) for m in history.train], label="Training")
        ax.plot(history.steps, [values(m) for m in history.val], linestyle="-.", label="Validation")
        ax.set_xlabel("Optimizer steps")
        ax.set_ylabel(name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    fig.tight_layout()
    return fig
