"""Reasoning with verifiable rewards (ch07/grpo.ipynb builds it step by step): a task whose
answers code can check, a verifier and its rewards, groups of sampled completions, inference-time
scaling (majority vote, best-of-N), and GRPO, group relative policy optimization.

The loop: sample G completions for each prompt, score each with the verifier, compare each
score with its group's mean (the advantage), and raise the probability of the completions that
did better than their group, with PPO's clipped ratio and, optionally, a KL penalty that keeps
the policy near a frozen reference model.

Shapes: P = prompts, G = completions per prompt (a group), b = P * G rows (each prompt's G
completions next to each other), n = prompt tokens, m = completion tokens.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from os import PathLike
from pathlib import Path

import torch
from torch import nn

from shared.preference import frozen_copy  # noqa: F401  re-exported: GRPO's reference model
from shared.pretraining import generate_tokens
from shared.qwen3 import chat_prompt

# --- the task: problems whose answers code can check ------------------------------------------


@dataclass(frozen=True)
class Problem:
    """A question with one numeric answer.

    prompt: the text the model continues; answer: the true value; solution: a worked solution
    that ends with the marked answer (what supervised finetuning imitates; may be empty).
    """

    prompt: str
    answer: Fraction
    solution: str = ""


def spaced_digits(number: int, width: int = 0) -> str:
    """The digits of number >= 0, zero-padded to width, one space apart: 47 -> "4 7", and
    (47, 3) -> "0 4 7". GPT-2's tokenizer then sees one digit per token (" 4", " 7")."""
    return " ".join(str(number).zfill(width))


def addition_problem(a: int, b: int, digits: int) -> Problem:
    """a + b with both numbers written with `digits` digits. The worked solution first writes
    the sum's digits from the ones place up (the order in which the carries are worked out),
    then the answer the other way round, after the marker "Answer:"."""
    total = a + b
    from_the_right = spaced_digits(total, digits + 1)[::-1]
    return Problem(
        prompt=f"Q: {spaced_digits(a, digits)} + {spaced_digits(b, digits)} =",
        answer=Fraction(total),
        solution=f" reversed {from_the_right} Answer: {spaced_digits(total)}",
    )


def addition_splits(
    digits: int, sizes: dict[str, int], seed: int = 123
) -> dict[str, list[Problem]]:
    """Disjoint sets of addition problems of two `digits`-digit numbers, e.g.
    sizes={"train": 20000, "validation": 500, "test": 500}: no (a, b) pair is in two sets."""
    pairs = 10 ** (2 * digits)
    if digits < 1 or min(sizes.values()) < 0 or sum(sizes.values()) > pairs:
        raise ValueError(
            f"digits must be >= 1 and the sizes {sizes} non-negative, adding up to at most "
            f"{pairs:,} (all pairs of {digits}-digit numbers)"
        )
    drawn = iter(random.Random(seed).sample(range(pairs), sum(sizes.values())))
    splits = {}
    for name, size in sizes.items():
        splits[name] = [
            addition_problem(*divmod(next(drawn), 10**digits), digits) for _ in range(size)
        ]
    return splits


class TaskTokenizer:
    """GPT-2's tokenizer restricted to the tokens a task's texts use, numbered 0 ... V-1, so
    that a small model needs V embedding rows instead of 50,257. The texts are split into
    exactly GPT-2's tokens; only their numbers change.

    base: a tiktoken encoding (shared.tokenizers.gpt2_tokenizer()); texts: every text the task
    can produce. encode(text) -> ids; decode(ids) -> text; eos_id: <|endoftext|>'s number.
    """

    def __init__(self, base, texts: Iterable[str]):
        self.base = base
        used = {token for text in texts for token in base.encode(text)}
        self.base_ids = sorted(used | {base.eot_token})
        self.ids = {base_id: i for i, base_id in enumerate(self.base_ids)}
        self.eos_id = self.ids[base.eot_token]

    @property
    def vocab_size(self) -> int:
        return len(self.base_ids)

    def encode(self, text: str) -> list[int]:
        ids = []
        for token in self.base.encode(text):
            if token not in self.ids:
                piece = self.base.decode([token])
                raise ValueError(
                    f"{piece!r} (GPT-2 token {token}) is not in this task's vocabulary"
                )
            ids.append(self.ids[token])
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.base.decode([self.base_ids[i] for i in ids])


def addition_tokenizer(base) -> TaskTokenizer:
    """The TaskTokenizer of the addition problems (of any number of digits) on GPT-2's base."""
    every_digit = addition_problem(1234567890, 0, 10)
    return TaskTokenizer(base, [every_digit.prompt + every_digit.solution])


# A GPTModel small enough to learn 3-digit addition on a laptop CPU in about half a minute
# (ch07/grpo.ipynb); vocab_size comes from the task's tokenizer.
ADDITION_MODEL_CONFIG = {
    "context_length": 32,
    "emb_dim": 96,
    "n_heads": 4,
    "n_layers": 3,
    "drop_rate": 0.0,
    "qkv_bias": False,
}


# --- the verifier and the rewards --------------------------------------------------------------

# Where an answer is announced: "Answer: 42", "the answer is 42", "#### 42" (GSM8K's worked
# solutions), "\boxed{42}" (what maths-tuned models write).
ANSWER_MARKER = re.compile(r"\banswer\b(?:\s+is)?\s*[:=]?|####|\\boxed\{", re.IGNORECASE)
# A number: digits one space apart ("1 9 3 6", as the addition task writes them), or an ordinary
# number with optional sign, thousands commas and decimals ("-1,936.5").
NUMBER = re.compile(r"-?(?:\d(?: \d)+(?!\d)|\d+(?:,\d{3})*(?:\.\d+)?)")


@dataclass(frozen=True)
class Extraction:
    """What a completion answered: value (None when it holds no number) and marked (True when
    the number follows an answer marker, the format the prompt asks for)."""

    value: Fraction | None
    marked: bool


def parse_number(text: str) -> Fraction:
    """A number as NUMBER matches it -> its exact value: "1 9 3 6" -> 1936, "1,936.5" -> 3873/2."""
    return Fraction(text.replace(" ", "").replace(",", ""))


def extract_answer(completion: str) -> Extraction:
    """The answer a completion gives: the first number after its last answer marker that a
    number follows; with no such marker, its last number (marked=False); with no number at all,
    value None."""
    for marker in reversed(list(ANSWER_MARKER.finditer(completion))):
        found = NUMBER.search(completion, marker.end())
        if found:
            return Extraction(parse_number(found.group()), marked=True)
    numbers = NUMBER.findall(completion)
    return Extraction(parse_number(numbers[-1]) if numbers else None, marked=False)


def score_completions(completions: Sequence[str], answers: Sequence[Fraction]) -> dict:
    """The verifier's rewards, one per completion, as float tensors (b,): "correct" is 1 where the
    extracted answer equals the true one, "format" is 1 where it follows an answer marker."""
    if len(completions) != len(answers):
        raise ValueError(f"{len(completions)} completions but {len(answers)} answers")
    found = [extract_answer(text) for text in completions]
    correct = [e.value is not None and e.value == answer for e, answer in zip(found, answers)]
    return {
        "correct": torch.tensor(correct, dtype=torch.float32),
        "format": torch.tensor([e.marked for e in found], dtype=torch.float32),
    }


def total_reward(scores: dict, format_weight: float = 0.0) -> torch.Tensor:
    """The reward GRPO maximises: correct + format_weight * format, (b,)."""
    return scores["correct"] + format_weight * scores["format"]


# --- sampling completions ----------------------------------------------------------------------


@dataclass
class Rollouts:
    """Sampled completions of one batch of prompts that all have n tokens.

    sequences (b, n + m): prompt then completion ids, eos after a completion's end; mask (b, m):
    True for each completion's tokens up to and including its first eos (what the policy chose);
    texts: the completions decoded, without eos; prompt_length: n.
    """

    sequences: torch.Tensor
    mask: torch.Tensor
    texts: list[str]
    prompt_length: int

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_length :]


def completion_mask(completion_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(b, m) ids -> (b, m) bool: True up to and including the first eos of each row."""
    is_eos = (completion_ids == eos_id).long()
    return (is_eos.cumsum(dim=1) - is_eos) == 0


def sample_completions(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    tokenizer,
    *,
    group_size: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Rollouts:
    """group_size completions of each prompt, sampled in one batch (with the model's KV cache
    when it has one; temperature 0 is greedy decoding).

    prompt_ids (P, n) -> Rollouts with b = P * group_size rows, row p * group_size + g holding
    prompt p's g-th completion. The model is left in eval mode (no dropout: GRPO compares the
    probabilities of one and the same network).
    """
    model.eval()
    repeated = prompt_ids.to(model_device(model)).repeat_interleave(group_size, dim=0)
    steps = generate_tokens(
        model,
        repeated,
        max_new_tokens,
        model.context_length,
        temperature=temperature,
        top_k=top_k,
        eos_id=tokenizer.eos_id,
        use_cache=hasattr(model, "new_cache"),
        generator=generator,
    )
    new = list(steps)
    if len(new) < max_new_tokens or not new:
        # generate_tokens stops without yielding the step at which the last rows ended: their
        # eos (which the policy chose, and which GRPO must train) is put back here.
        new.append(torch.full((repeated.shape[0], 1), tokenizer.eos_id, device=repeated.device))
    completion = torch.cat(new, dim=1)
    mask = completion_mask(completion, tokenizer.eos_id)
    texts = [
        tokenizer.decode([t for t, keep in zip(row, kept) if keep and t != tokenizer.eos_id])
        for row, kept in zip(completion.tolist(), mask.tolist())
    ]
    return Rollouts(torch.cat([repeated, completion], dim=1), mask, texts, prompt_ids.shape[1])


def model_device(model: nn.Module) -> torch.device:
    """The device model's parameters are on."""
    return next(model.parameters()).device


def encode_prompts(problems: Sequence[Problem], tokenizer) -> list[torch.Tensor]:
    """Each problem's prompt as a (n_i,) tensor of ids."""
    return [torch.tensor(tokenizer.encode(p.prompt)) for p in problems]


def by_prompt_length(
    problems: Sequence[Problem], tokenizer
) -> list[tuple[list[int], torch.Tensor]]:
    """The problems grouped by prompt length, so each group samples as one batch with no
    padding: [(indices into problems, prompt ids (P_i, n_i)), ...]."""
    buckets: dict[int, list[int]] = {}
    encoded = encode_prompts(problems, tokenizer)
    for i, ids in enumerate(encoded):
        buckets.setdefault(len(ids), []).append(i)
    return [(idx, torch.stack([encoded[i] for i in idx])) for idx in buckets.values()]


def sample_answers(
    model: nn.Module,
    problems: Sequence[Problem],
    tokenizer,
    *,
    samples: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    batch_size: int = 512,
) -> tuple[list[list[str]], list[list[int]]]:
    """`samples` completions of every problem: (texts[problem][sample], tokens generated
    [problem][sample], eos included)."""
    texts: list[list[str]] = [[] for _ in problems]
    lengths: list[list[int]] = [[] for _ in problems]
    per_batch = max(1, batch_size // samples)
    for idx, prompt_ids in by_prompt_length(problems, tokenizer):
        for start in range(0, len(idx), per_batch):
            rollouts = sample_completions(
                model,
                prompt_ids[start : start + per_batch],
                tokenizer,
                group_size=samples,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                generator=generator,
            )
            counts = rollouts.mask.sum(dim=1).tolist()
            for row, text in enumerate(rollouts.texts):
                problem = idx[start + row // samples]
                texts[problem].append(text)
                lengths[problem].append(counts[row])
    return texts, lengths


def accuracy(
    model: nn.Module, problems: Sequence[Problem], tokenizer, max_new_tokens: int
) -> float:
    """The share of problems whose greedy completion the verifier accepts."""
    texts, _ = sample_answers(
        model, problems, tokenizer, samples=1, max_new_tokens=max_new_tokens, temperature=0.0
    )
    scores = score_completions([t[0] for t in texts], [p.answer for p in problems])
    return scores["correct"].mean().item()


# --- inference-time scaling ------------------------------------------------------------------


def majority_vote(completions: Sequence[str]) -> Fraction | None:
    """The answer most completions give (self-consistency); ties go to the answer seen first;
    completions without a number do not vote."""
    votes = Counter(e.value for e in map(extract_answer, completions) if e.value is not None)
    return max(votes, key=votes.__getitem__) if votes else None


def inference_scaling(
    texts: Sequence[Sequence[str]],
    lengths: Sequence[Sequence[int]],
    problems: Sequence[Problem],
    sizes: Sequence[int],
) -> list[dict]:
    """Accuracy of majority voting and of best-of-N with the verifier over the first N of each
    problem's sampled completions (texts, lengths from sample_answers), for each N in sizes.

    Best-of-N keeps a completion the verifier accepts, so it is right when any of the N is
    (pass@N): the ceiling a perfect verifier gives. Rows: {"n", "majority", "best_of_n",
    "tokens"} with tokens the mean generated per problem.
    """
    rows = []
    for n in sizes:
        if n > min(map(len, texts)):
            raise ValueError(f"N = {n} needs {n} samples per problem; have {min(map(len, texts))}")
        majority = best = 0
        for completions, problem in zip(texts, problems):
            first = completions[:n]
            majority += majority_vote(first) == problem.answer
            best += bool(score_completions(first, [problem.answer] * n)["correct"].any())
        tokens = sum(sum(counts[:n]) for counts in lengths) / len(problems)
        count = len(problems)
        rows.append(
            {"n": n, "majority": majority / count, "best_of_n": best / count, "tokens": tokens}
        )
    return rows


# --- supervised finetuning on worked solutions -------------------------------------------------


def supervised_batch(
    problems: Sequence[Problem], tokenizer, ignore_index: int = -100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets (b, n) for next-token training on prompt + solution + eos: the targets
    of the prompt's tokens and of the padding after eos are ignore_index, so the loss counts only
    the solution (and its end). Padding uses eos."""
    rows = []
    for p in problems:
        prompt = tokenizer.encode(p.prompt)
        answer = tokenizer.encode(p.solution) + [tokenizer.eos_id]
        rows.append((prompt, answer))
    width = max(len(prompt) + len(answer) for prompt, answer in rows) - 1
    inputs = torch.full((len(rows), width), tokenizer.eos_id)
    targets = torch.full((len(rows), width), ignore_index)
    for i, (prompt, answer) in enumerate(rows):
        ids = torch.tensor(prompt + answer)
        inputs[i, : len(ids) - 1] = ids[:-1]
        targets[i, len(prompt) - 1 : len(ids) - 1] = ids[len(prompt) :]
    return inputs, targets


def finetune_on_solutions(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    problems: Sequence[Problem],
    tokenizer,
    steps: int,
    batch_size: int = 64,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Supervised finetuning on worked solutions: steps updates, each on batch_size problems
    drawn at random (seeded), with the loss on the solution tokens only (supervised_batch).
    Returns the loss of each step; on_step(step, loss) is called after each."""
    draw = random.Random(seed)
    device = model_device(model)
    model.train()
    losses = []
    for step in range(1, steps + 1):
        inputs, targets = supervised_batch(draw.sample(list(problems), batch_size), tokenizer)
        logits = model(inputs.to(device))
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.to(device).flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    return losses


# --- GRPO --------------------------------------------------------------------------------------


def group_advantages(
    rewards: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """Each completion's reward relative to its group: (P, G) -> (P, G).

    reward - the group's mean, divided by the group's standard deviation (+ eps) when
    scale_by_std (GRPO); Dr. GRPO leaves the division out. A group whose rewards are all equal
    teaches nothing: its advantages are 0.
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(
            f"rewards must be (prompts, group_size) with group_size >= 2, got {tuple(rewards.shape)}"
        )
    if not torch.isfinite(rewards).all():
        bad = (~torch.isfinite(rewards)).nonzero()[0].tolist()
        raise ValueError(f"reward at (prompt, sample) {tuple(bad)} is {rewards[tuple(bad)].item()}")
    rewards = rewards.float()
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    # Exactly 0 where a group's rewards are all equal (the float mean of equal numbers may miss
    # them by a rounding error, which the division by std + eps would blow up).
    all_equal = (rewards == rewards[:, :1]).all(dim=1, keepdim=True)
    centred = centred.masked_fill(all_equal, 0.0)
    return centred / (rewards.std(dim=1, keepdim=True) + eps) if scale_by_std else centred


def completion_logprobs(
    model: nn.Module, sequences: torch.Tensor, prompt_length: int
) -> torch.Tensor:
    """log p(token | the tokens before it) of each completion token: (b, n + m) -> (b, m)."""
    logits = model(sequences[:, :-1])[:, prompt_length - 1 :]  # the predictions of the completion
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    targets = sequences[:, prompt_length:]
    return logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


AGGREGATIONS = ("sequence", "token", "constant")


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    aggregation: str = "sequence",
    max_tokens: int | None = None,
) -> tuple[torch.Tensor, dict]:
    """GRPO's clipped policy objective, negated to be minimised.

    logprobs (b, m): the policy's, with gradient; old_logprobs (b, m): the sampling policy's;
    advantages (b,): one per completion, shared by its tokens; mask (b, m): the completion's
    tokens (prompt and padding excluded); ref_logprobs (b, m): a frozen reference model's, for
    the KL penalty kl_coef * KL (the k3 estimate exp(ref - logp) - (ref - logp) - 1, >= 0).
    Per token: -min(ratio * A, clip(ratio, 1 - clip_eps, 1 + clip_eps) * A) + kl_coef * KL, with
    ratio = exp(logprobs - old_logprobs). aggregation: "sequence" averages each completion's
    tokens, then the completions (GRPO); "token" averages all tokens of the batch (DAPO);
    "constant" sums each completion's tokens and divides by b * max_tokens (Dr. GRPO: a fixed
    generation budget, m when None), so no completion's length changes its tokens' weight.
    Values at masked positions are ignored, even inf or NaN.
    Returns (loss, stats) with stats' "kl" (mean per completion token), "clipped" (the share of
    completion tokens whose ratio lies outside [1 - clip_eps, 1 + clip_eps], whatever the
    advantage's sign) and "ratio" (mean) as floats.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if kl_coef > 0 and ref_logprobs is None:
        raise ValueError("kl_coef > 0 needs ref_logprobs (the reference model's log-probabilities)")
    hidden = ~mask.bool()
    logprobs, old_logprobs = (
        logprobs.masked_fill(hidden, 0.0),
        old_logprobs.masked_fill(hidden, 0.0),
    )
    if ref_logprobs is not None:
        ref_logprobs = ref_logprobs.masked_fill(hidden, 0.0)
    mask = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs)
    gain = advantages.unsqueeze(1)
    objective = torch.minimum(ratio * gain, ratio.clamp(1 - clip_eps, 1 + clip_eps) * gain)
    per_token = -objective
    kl = torch.zeros_like(logprobs)
    if ref_logprobs is not None:
        log_ref_ratio = ref_logprobs - logprobs
        kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1
        per_token = per_token + kl_coef * kl
    if aggregation == "sequence":
        loss = ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
    elif aggregation == "token":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
    else:
        loss = (per_token * mask).sum() / (mask.shape[0] * (max_tokens or mask.shape[1]))
    tokens = mask.sum().clamp(min=1)
    clipped = ((ratio - ratio.clamp(1 - clip_eps, 1 + clip_eps)).abs() > 0).to(mask.dtype)
    stats = {
        "kl": ((kl * mask).sum() / tokens).item(),
        "clipped": ((clipped * mask).sum() / tokens).item(),
        "ratio": ((ratio * mask).sum() / tokens).item(),
    }
    return loss, stats


@dataclass
class GRPOSettings:
    """One GRPO run's settings (ch07/grpo.ipynb explains each).

    group_size (G) completions for each of prompts_per_step prompts, sampled at temperature, at
    most max_new_tokens each; updates_per_batch policy updates on each batch of samples (1: the
    ratio is exactly 1 and clipping never acts; more reuse the samples, as PPO does);
    clip_eps; kl_coef, the KL penalty's weight (0: none; a reference model given to grpo_step
    is then only measured); scale_by_std (False: Dr. GRPO's advantages);
    aggregation (see grpo_loss); format_weight: the format reward's weight; max_grad_norm.
    """

    group_size: int = 8
    prompts_per_step: int = 16
    max_new_tokens: int = 16
    temperature: float = 1.0
    updates_per_batch: int = 1
    clip_eps: float = 0.2
    kl_coef: float = 0.0
    scale_by_std: bool = True
    aggregation: str = "sequence"
    format_weight: float = 0.0
    max_grad_norm: float = 1.0

    def __post_init__(self):
        if self.group_size < 2:
            raise ValueError(
                f"group_size must be >= 2 (advantages compare a group), got {self.group_size}"
            )
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.temperature <= 0:
            raise ValueError(
                f"temperature must be > 0: greedy completions are all alike and teach nothing, "
                f"got {self.temperature}"
            )
        for name in ("prompts_per_step", "max_new_tokens", "updates_per_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.clip_eps < 1 or self.kl_coef < 0 or self.max_grad_norm <= 0:
            raise ValueError(
                "clip_eps must be in (0, 1), kl_coef >= 0 and max_grad_norm > 0, got "
                f"{self.clip_eps}, {self.kl_coef} and {self.max_grad_norm}"
            )


def grpo_step(
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    problems: Sequence[Problem],
    tokenizer,
    settings: GRPOSettings,
    reference: nn.Module | None = None,
    generator: torch.Generator | None = None,
    reward_fn: Callable[[list[str], list[Fraction]], torch.Tensor] | None = None,
) -> dict:
    """One GRPO step on problems: sample a group per prompt, score, compute advantages, then
    settings.updates_per_batch clipped updates of the policy. reward_fn(texts, answers) -> (b,)
    replaces the verifier's total_reward when given.

    Returns the step's means: "reward", "correct", "format", "length" (completion tokens),
    "kl", "clipped", "ratio", "loss".
    """
    if settings.kl_coef > 0 and reference is None:
        raise ValueError(
            "kl_coef > 0 needs a reference model (frozen_copy(policy) before training)"
        )
    batches = []
    scores_all = []
    for idx, prompt_ids in by_prompt_length(problems, tokenizer):
        rollouts = sample_completions(
            policy,
            prompt_ids,
            tokenizer,
            group_size=settings.group_size,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            generator=generator,
        )
        answers = [problems[i].answer for i in idx for _ in range(settings.group_size)]
        scores = score_completions(rollouts.texts, answers)
        if reward_fn is None:
            rewards = total_reward(scores, settings.format_weight)
        else:
            rewards = reward_fn(rollouts.texts, answers)
            if rewards.shape != (len(answers),):
                raise ValueError(
                    f"reward_fn returned shape {tuple(rewards.shape)}; expected ({len(answers)},)"
                )
        advantages = (
            group_advantages(rewards.view(len(idx), settings.group_size), settings.scale_by_std)
            .flatten()
            .to(rollouts.sequences.device)
        )
        with torch.no_grad():
            old = completion_logprobs(policy, rollouts.sequences, rollouts.prompt_length)
            ref = None  # with a reference model, the KL is measured even when not penalised
            if reference is not None:
                ref = completion_logprobs(reference, rollouts.sequences, rollouts.prompt_length)
        batches.append([rollouts, advantages, old, ref, len(idx) / len(problems)])
        scores_all.append((scores, rewards, rollouts.mask.sum(dim=1)))
    if settings.aggregation == "token":  # one mean over every token of the step's buckets
        tokens = [batch[0].mask.sum().item() for batch in batches]
        for batch, count in zip(batches, tokens):
            batch[4] = count / max(1, sum(tokens))
    for _ in range(settings.updates_per_batch):
        optimizer.zero_grad()
        step_stats = Counter()
        for rollouts, advantages, old, ref, share in batches:
            logprobs = completion_logprobs(policy, rollouts.sequences, rollouts.prompt_length)
            loss, stats = grpo_loss(
                logprobs,
                old,
                advantages,
                rollouts.mask,
                clip_eps=settings.clip_eps,
                ref_logprobs=ref,
                kl_coef=settings.kl_coef,
                aggregation=settings.aggregation,
                max_tokens=settings.max_new_tokens,
            )
            (loss * share).backward()
            step_stats.update({k: v * share for k, v in stats.items()})
            step_stats["loss"] += loss.item() * share
        nn.utils.clip_grad_norm_(policy.parameters(), settings.max_grad_norm)
        optimizer.step()
    correct = torch.cat([s["correct"] for s, _, _ in scores_all])
    form = torch.cat([s["format"] for s, _, _ in scores_all])
    rewards = torch.cat([r for _, r, _ in scores_all])
    lengths = torch.cat([n for _, _, n in scores_all]).float()
    return {
        "reward": rewards.mean().item(),
        "correct": correct.mean().item(),
        "format": form.mean().item(),
        "length": lengths.mean().item(),
        **dict(step_stats),
    }


def train_grpo(
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_problems: Sequence[Problem],
    tokenizer,
    settings: GRPOSettings,
    steps: int,
    *,
    eval_problems: Sequence[Problem] = (),
    eval_every: int = 0,
    reference: nn.Module | None = None,
    seed: int = 0,
    start_step: int = 0,
    on_step: Callable[[int, dict], None] | None = None,
) -> list[dict]:
    """steps GRPO steps, each on settings.prompts_per_step training problems drawn at random
    (seeded: the draw and the sampling depend only on seed and the step number, so a run
    resumed at start_step continues as it would have). Every eval_every steps (and after the
    last) the greedy accuracy on eval_problems is logged as "accuracy".

    Returns one dict per step: grpo_step's means plus "step" (and "accuracy" where measured);
    on_step(step, row) is called after each (for progress bars and checkpoints).
    """
    history = []
    for step in range(start_step + 1, start_step + steps + 1):
        draw = random.Random(f"{seed}-{step}")
        problems = draw.sample(list(train_problems), settings.prompts_per_step)
        generator = torch.Generator(model_device(policy)).manual_seed(draw.randrange(2**62))
        row = {"step": step}
        row |= grpo_step(policy, optimizer, problems, tokenizer, settings, reference, generator)
        if eval_problems and eval_every and (step % eval_every == 0 or step == start_step + steps):
            row["accuracy"] = accuracy(policy, eval_problems, tokenizer, settings.max_new_tokens)
        history.append(row)
        if on_step is not None:
            on_step(step, row)
    return history


# --- a real maths data set ---------------------------------------------------------------------

# What a GSM8K prompt asks for after the problem: working, then an answer the verifier finds.
GSM8K_INSTRUCTION = (
    "Solve the problem step by step. End your reply with a line of the form "
    '"Answer: <number>", giving the number alone.'
)


def gsm8k_problems(path_or_lines) -> list[Problem]:
    """GSM8K's problems as Problems for Qwen3 (ch07/grpo_train.py --model qwen3-0.6b).

    path_or_lines: a GSM8K file's path (str or Path; shared.data.GSM8K_FILES fetches them), or
    its lines: one JSON object per line, {"question": ..., "answer": ...}, the answer a worked
    solution whose last line is "#### <number>". Blank lines are skipped.

    prompt: Qwen3's chat format (shared.qwen3.chat_prompt, thinking off) of the question
    followed by GSM8K_INSTRUCTION; answer: the number after the last "####", thousands commas
    removed ("#### 1,200" -> 1200, "#### -3" -> -3); solution: the worked solution without
    GSM8K's calculator notes ("<<48/2=24>>") and ending "Answer: <number>" instead of "####".
    Raises ValueError naming the line (counted from 1) that is not such an object.
    """
    if isinstance(path_or_lines, str | PathLike):
        lines = Path(path_or_lines).read_text(encoding="utf-8").splitlines()
        where = f"{path_or_lines} line"
    else:
        lines, where = list(path_or_lines), "line"
    problems = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            raise ValueError(f"{where} {number}: not valid JSON") from None
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("question"), str)
            and isinstance(entry.get("answer"), str)
        ):
            raise ValueError(
                f'{where} {number}: expected a JSON object with a "question" and an "answer" text'
            )
        worked, marker, final = entry["answer"].rpartition("####")
        final = final.strip()
        if not marker:
            raise ValueError(f'{where} {number}: the answer does not end in "#### <number>"')
        try:
            answer = Fraction(final.replace(",", ""))
        except ValueError:
            raise ValueError(f"{where} {number}: {final!r} after '####' is not a number") from None
        steps = re.sub(r"<<[^<>]*>>", "", worked).strip()
        problems.append(
            Problem(
                prompt=chat_prompt(f"{entry['question'].strip()}\n\n{GSM8K_INSTRUCTION}"),
                answer=answer,
                solution=f"{steps}\nAnswer: {final}",
            )
        )
    return problems
