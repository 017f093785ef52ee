"""shared.reasoning (issue 21, ch07/grpo.ipynb): the addition task and its splits, the task's
tokenizer, the verifier on what models really write, rewards, group sampling with the KV cache,
inference-time scaling, and GRPO: advantages, the clipped loss against hand-computed gradients,
masking, the KL term, the frozen reference, bad rewards and resuming a run.

Models: a 2-layer, 32-dimensional KVCacheGPTModel on the task's 17-token vocabulary, and Scripted,
a stand-in policy that writes a chosen reply to each prompt (so completions of known lengths and
answers can be sampled through the real sampling code).
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
import torch
from torch import nn

from shared import reasoning
from shared.gpt import GPTModel
from shared.kv_cache import KVCacheGPTModel
from shared.reasoning import (
    Extraction,
    GRPOSettings,
    Problem,
    TaskTokenizer,
    accuracy,
    addition_problem,
    addition_splits,
    addition_tokenizer,
    completion_logprobs,
    completion_mask,
    extract_answer,
    finetune_on_solutions,
    frozen_copy,
    group_advantages,
    grpo_loss,
    grpo_step,
    inference_scaling,
    majority_vote,
    parse_number,
    sample_answers,
    sample_completions,
    score_completions,
    spaced_digits,
    supervised_batch,
    total_reward,
    train_grpo,
)
from shared.tokenizers import gpt2_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 1e-4  # group_advantages' default eps


# --- fixtures and stand-in models ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tok() -> TaskTokenizer:
    """The addition task's tokenizer: 17 tokens, the digits, "Q", ":", " +", " =", " reversed",
    " Answer" and eos."""
    return addition_tokenizer(gpt2_tokenizer())


def tiny_policy(tok: TaskTokenizer, seed: int = 0, cls=KVCacheGPTModel) -> nn.Module:
    torch.manual_seed(seed)
    cfg = {
        "vocab_size": tok.vocab_size,
        "context_length": 32,
        "emb_dim": 32,
        "n_heads": 2,
        "n_layers": 2,
        "drop_rate": 0.0,
        "qkv_bias": False,
    }
    return cls(cfg)


class Scripted(nn.Module):
    """A policy that greedily writes reply(prompt) and then eos (its logits put 20 on that next
    token, 0 elsewhere). A prompt is everything up to its first " ="; no KV cache."""

    def __init__(self, tok: TaskTokenizer, reply, context_length: int = 64):
        super().__init__()
        self.tok, self.reply, self.context_length = tok, reply, context_length
        self.anchor = nn.Parameter(torch.zeros(()))  # model_device reads the parameters
        self.end = tok.encode(" =")[0]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*ids.shape, self.tok.vocab_size)
        for r, row in enumerate(ids.tolist()):
            n = row.index(self.end) + 1
            target = self.tok.encode(self.reply(self.tok.decode(row[:n]))) + [self.tok.eos_id]
            done = len(row) - n
            logits[r, -1, target[done] if done < len(target) else self.tok.eos_id] = 20.0
        return logits


def operands(prompt: str) -> tuple[int, int]:
    """'Q: 4 7 + 1 2 =' -> (47, 12)."""
    left, right = prompt.removeprefix("Q:").removesuffix("=").split("+")
    return int(left.replace(" ", "")), int(right.replace(" ", ""))


def length_reward(texts, answers) -> torch.Tensor:
    """A reward that differs within almost every group: the completion's length in characters."""
    return torch.tensor([float(len(t)) for t in texts])


def parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


# --- the task: problems, splits, the tokenizer, supervised batches -------------------------------


def test_spaced_digits():
    assert spaced_digits(47) == "4 7"
    assert spaced_digits(47, 3) == "0 4 7"
    assert spaced_digits(0) == "0"
    assert spaced_digits(1936) == "1 9 3 6"


@pytest.mark.parametrize(
    ("a", "b", "prompt", "answer", "solution"),
    [
        (47, 12, "Q: 4 7 + 1 2 =", 59, " reversed 9 5 0 Answer: 5 9"),
        (5, 7, "Q: 0 5 + 0 7 =", 12, " reversed 2 1 0 Answer: 1 2"),
        (99, 99, "Q: 9 9 + 9 9 =", 198, " reversed 8 9 1 Answer: 1 9 8"),
        (0, 0, "Q: 0 0 + 0 0 =", 0, " reversed 0 0 0 Answer: 0"),
    ],
)
def test_addition_problem_by_hand(a, b, prompt, answer, solution):
    problem = addition_problem(a, b, 2)
    assert problem == Problem(prompt, Fraction(answer), solution)
    assert extract_answer(problem.solution) == Extraction(Fraction(answer), marked=True)


SIZES = {"train": 300, "validation": 50, "test": 50}


def test_addition_splits_sizes_disjoint_correct():
    splits = addition_splits(2, SIZES, seed=5)
    assert {name: len(problems) for name, problems in splits.items()} == SIZES
    pairs = {name: {operands(p.prompt) for p in problems} for name, problems in splits.items()}
    assert sum(map(len, pairs.values())) == sum(SIZES.values())  # no pair twice, not even within
    assert not pairs["train"] & pairs["validation"]
    assert not pairs["train"] & pairs["test"]
    assert not pairs["validation"] & pairs["test"]
    for problems in splits.values():
        for p in problems:
            a, b = operands(p.prompt)
            assert 0 <= a < 100 and 0 <= b < 100
            assert p.answer == a + b
            assert extract_answer(p.solution) == Extraction(p.answer, marked=True)


def test_addition_splits_deterministic_per_seed():
    assert addition_splits(2, SIZES, seed=5) == addition_splits(2, SIZES, seed=5)
    assert addition_splits(2, SIZES, seed=5) != addition_splits(2, SIZES, seed=6)
    every = addition_splits(1, {"all": 100})["all"]  # exactly all pairs of one-digit numbers
    assert sorted(operands(p.prompt) for p in every) == [
        (a, b) for a in range(10) for b in range(10)
    ]


@pytest.mark.parametrize(
    ("digits", "sizes"),
    [(1, {"train": 101}), (1, {"train": 60, "test": 41}), (2, {"train": -1}), (0, {"train": 1})],
)
def test_addition_splits_bad_sizes_raise(digits, sizes):
    with pytest.raises(ValueError, match="digits must be >= 1"):
        addition_splits(digits, sizes)


def test_addition_tokenizer_covers_every_problem(tok):
    one_digit = [addition_problem(a, b, 1) for a in range(10) for b in range(10)]
    built = TaskTokenizer(tok.base, [p.prompt + p.solution for p in one_digit])
    assert built.base_ids == tok.base_ids and built.eos_id == tok.eos_id
    for digits in (2, 5):
        for p in addition_splits(digits, {"some": 30}, seed=digits)["some"]:
            tok.encode(p.prompt + p.solution)  # raises on a token outside the vocabulary


def test_task_tokenizer_one_token_per_digit_and_round_trip(tok):
    base = tok.base
    assert tok.vocab_size == 17 == len(tok.base_ids)
    assert sorted(tok.ids.values()) == list(range(tok.vocab_size))
    for d in range(10):
        assert len(tok.encode(f" {d}")) == 1
    assert len(tok.encode(" " + spaced_digits(1936))) == 4
    for p in addition_splits(3, {"some": 20}, seed=1)["some"]:  # more digits, same vocabulary
        text = p.prompt + p.solution
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert [tok.base_ids[i] for i in ids] == base.encode(text)  # exactly GPT-2's tokens
        digits = sum(c.isdigit() for c in text)
        assert sum(tok.decode([i]).strip().isdigit() for i in ids) == digits
    assert tok.decode([tok.eos_id]) == "<|endoftext|>"
    assert tok.base_ids[tok.eos_id] == base.eot_token


def test_task_tokenizer_unknown_token_raises_naming_it(tok):
    with pytest.raises(ValueError, match=r"' hello' \(GPT-2 token 23748\) is not in this task"):
        tok.encode("Q: hello")


def test_supervised_batch_masks_prompt_and_padding(tok):
    problems = [addition_problem(4, 7, 1), addition_problem(47, 12, 2)]  # different lengths
    inputs, targets = supervised_batch(problems, tok)
    rows = [(tok.encode(p.prompt), tok.encode(p.solution) + [tok.eos_id]) for p in problems]
    width = max(len(prompt) + len(answer) for prompt, answer in rows) - 1
    assert inputs.shape == targets.shape == (2, width)
    for i, (prompt, answer) in enumerate(rows):
        ids = prompt + answer
        end = len(ids) - 1
        assert inputs[i, :end].tolist() == ids[:-1]
        assert (inputs[i, end:] == tok.eos_id).all()  # padding
        # the prompt's positions (which would predict prompt tokens) and the padding are ignored
        assert (targets[i, : len(prompt) - 1] == -100).all()
        assert (targets[i, end:] == -100).all()
        # elsewhere the targets are the inputs shifted by one: the solution, then eos
        assert targets[i, len(prompt) - 1 : end].tolist() == ids[len(prompt) :]
        assert (
            targets[i, len(prompt) - 1 : end - 1].tolist() == inputs[i, len(prompt) : end].tolist()
        )
        assert targets[i, end - 1] == tok.eos_id
    assert (inputs[0, -1] == tok.eos_id) and (targets[0, -1] == -100)  # the shorter row padded
    _, other = supervised_batch(problems, tok, ignore_index=-1)
    assert ((other == -1) == (targets == -100)).all()


def test_finetune_on_solutions_learns_the_solutions_only(tok):
    problems = addition_splits(1, {"train": 100})["train"]
    model = tiny_policy(tok, seed=6)
    # the first step's loss: cross-entropy on the solution tokens of the seeded draw
    first = random.Random(3).sample(problems, 16)
    inputs, targets = supervised_batch(first, tok)
    with torch.no_grad():
        logits = model(inputs)
    expected = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).item()
    seen = []
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = finetune_on_solutions(
        model,
        optimizer,
        problems,
        tok,
        30,
        batch_size=16,
        seed=3,
        on_step=lambda step, loss: seen.append((step, loss)),
    )
    assert losses[0] == pytest.approx(expected, rel=1e-6)
    assert seen == list(enumerate(losses, start=1)) and len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.7 * losses[0]  # it learns
    again = tiny_policy(tok, seed=6)
    optimizer = torch.optim.AdamW(again.parameters(), lr=1e-2)
    assert finetune_on_solutions(again, optimizer, problems, tok, 30, 16, seed=3) == losses


# --- the verifier and the rewards ----------------------------------------------------------------

F = Fraction

EXTRACTIONS = [
    # the task's own format, and the worked solution
    ("Answer: 1 9 3 6", 1936, True),
    (" reversed 9 5 0 Answer: 5 9", 59, True),
    ("Answer: 0 5 9", 59, True),  # zero-padded
    ("Answer: 59", 59, True),
    # other markers, spellings and spacing
    ("answer: 59", 59, True),
    ("ANSWER=42", 42, True),
    ("Answer : 42", 42, True),
    ("Answer:-3", -3, True),
    ("The answer is 7.", 7, True),
    ("the answer is: 7", 7, True),
    ("So the final answer is 12 apples.", 12, True),
    ("#### 72", 72, True),
    ("Natalia sold 48 clips in April and 24 in May.\n#### 72", 72, True),
    ("\\boxed{12}", 12, True),
    ("so x = 3 and y = \\boxed{-4}", -4, True),
    # after the marker the first number counts
    ("The answer is 7, not 8.", 7, True),
    ("Answer: 5 9 Q: 1 2 + 3 4 =", 59, True),  # runs on into the next question
    ("Answer: 4 7\n1 2", 47, True),  # a line break ends spaced digits
    ("Answer: 12 apples and 3 pears", 12, True),
    # ... after the last marker
    ("Answer: 5 9 Answer: 6 0", 60, True),
    ("Answer: 3\nQ: 1 + 1 = reversed 2 0 Answer: 2", 2, True),
    # commas, decimals, signs, currency
    ("Answer: 1,936", 1936, True),
    ("Answer: $1,234,567.", 1234567, True),
    ("Answer: 3.50", F(7, 2), True),
    ("answer is 0.25", F(1, 4), True),
    ("answer is 1.5.", F(3, 2), True),
    ("Answer: -5", -5, True),
    ("Answer: -1,936.5", F(-3873, 2), True),
    # no marker: the last number
    ("5 9", 59, False),
    ("1 9 3 6", 1936, False),
    ("The sum of 12 and 47 is 59", 59, False),
    ("12 + 47 = 59.", 59, False),
    ("7.", 7, False),
    (" reversed 9 5 0 Answ", 950, False),  # cut off before the marker
    ("Q: 4 7 + 1 2 =", 12, False),  # spaced digits, one number each
    # a marker with no number after it: the last number, unmarked
    ("42 is my answer:", 42, False),
    ("I got 3, then 4. Answer:", 4, False),
    # no number at all
    ("", None, False),
    ("no number here", None, False),
    ("Answer:", None, False),
    ("Answer: I don't know", None, False),
    ("\\boxed{}", None, False),
    ("The answer is 30, since she answered 12 of 42.", 30, True),  # "answered" is no marker
    ("Answer: 7. Is that the answer?", 7, True),  # the last marker that a number follows
]


@pytest.mark.parametrize(("text", "value", "marked"), EXTRACTIONS)
def test_extract_answer(text, value, marked):
    expected = None if value is None else Fraction(value)
    assert extract_answer(text) == Extraction(expected, marked)


def test_extract_answer_value_when_a_later_marker_has_no_number():
    # The right answer stays right; whether it counts as marked is the module's convention.
    assert extract_answer("Answer: 7. Is that the answer? Yes.").value == 7


@pytest.mark.parametrize(
    ("text", "value"),
    [("1 9 3 6", 1936), ("1,936", 1936), ("1,936.5", F(3873, 2)), ("-0.5", F(-1, 2)), ("07", 7)],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_score_completions_and_total_reward():
    texts = ["Answer: 5 9", "5 9", "Answer: 6 0", "nothing", "Answer: 0", "Answer: 5.0"]
    answers = [F(59), F(59), F(59), F(0), F(0), F(5)]
    scores = score_completions(texts, answers)
    assert scores["correct"].dtype == scores["format"].dtype == torch.float32
    assert scores["correct"].tolist() == [1, 1, 0, 0, 1, 1]  # "nothing" is not 0
    assert scores["format"].tolist() == [1, 0, 1, 0, 1, 1]
    assert total_reward(scores).tolist() == [1, 1, 0, 0, 1, 1]
    assert total_reward(scores, 0.5).tolist() == [1.5, 1, 0.5, 0, 1.5, 1.5]
    with pytest.raises(ValueError, match="3 completions but 2 answers"):
        score_completions(["1", "2", "3"], [F(1), F(2)])


# --- group advantages ---------------------------------------------------------------------------


def test_group_advantages_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 0.0, 4.0], [1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 1.0, 1.0]])
    # group 1: mean 1, deviations -1 -1 -1 3, sample variance (1 + 1 + 1 + 9) / 3 = 4, std 2
    # group 2: every reward equal: nothing to learn, advantages 0
    # group 3: mean 1, deviations 1 -1 0 0, sample variance 2 / 3, std sqrt(2/3)
    s3 = math.sqrt(2 / 3)
    expected = torch.tensor(
        [
            [-1 / (2 + EPS), -1 / (2 + EPS), -1 / (2 + EPS), 3 / (2 + EPS)],
            [0.0, 0.0, 0.0, 0.0],
            [1 / (s3 + EPS), -1 / (s3 + EPS), 0.0, 0.0],
        ]
    )
    torch.testing.assert_close(group_advantages(rewards), expected)
    # Dr. GRPO: the deviations only
    dr = torch.tensor([[-1.0, -1.0, -1.0, 3.0], [0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 0.0, 0.0]])
    torch.testing.assert_close(group_advantages(rewards, scale_by_std=False), dr)
    # two completions, one right: +-1/sqrt(2) scaled (sample std of (1, 0) is sqrt(1/2))
    pair = group_advantages(torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(pair, torch.tensor([[0.5, -0.5]]) / (math.sqrt(0.5) + EPS))


@pytest.mark.parametrize(
    ("value", "scale_by_std"),
    # 0.3 and 1.2 (correct + a 0.2 format reward): their float32 mean misses them by a rounding
    # error, which the division by std + eps (std 0) would blow up to about 1e-3
    [(0.0, True), (1.0, True), (0.5, True), (0.3, True), (1.2, True)]
    + [(0.0, False), (0.3, False), (1.2, False)],
)
def test_group_advantages_equal_rewards_are_zero(value, scale_by_std):
    rewards = torch.tensor([[value] * 8, [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    advantages = group_advantages(rewards, scale_by_std=scale_by_std)
    assert advantages[0].abs().max() == 0.0
    assert advantages[1, 0] > 0


@pytest.mark.parametrize(
    ("rewards", "message"),
    [
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), r"\(0, 1\) is nan"),
        (torch.tensor([[1.0, 0.0], [float("inf"), 1.0]]), r"\(1, 0\) is inf"),
        (torch.tensor([[1.0, 0.0, -float("inf")]]), r"\(0, 2\) is -inf"),
        (torch.tensor([1.0, 0.0, 1.0]), r"\(prompts, group_size\).*got \(3,\)"),
        (torch.tensor([[1.0], [0.0]]), r"group_size >= 2, got \(2, 1\)"),
        (torch.zeros(2, 2, 2), r"got \(2, 2, 2\)"),
    ],
)
def test_group_advantages_bad_rewards_raise(rewards, message):
    with pytest.raises(ValueError, match=message):
        group_advantages(rewards)


def test_group_advantages_accept_integer_rewards():
    torch.testing.assert_close(
        group_advantages(torch.tensor([[1, 0]])), group_advantages(torch.tensor([[1.0, 0.0]]))
    )


def test_grpo_settings_checks():
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        GRPOSettings(group_size=1)
    with pytest.raises(ValueError, match="aggregation must be one of"):
        GRPOSettings(aggregation="mean")


SMALL = GRPOSettings(group_size=4, prompts_per_step=3, max_new_tokens=6)


@pytest.mark.parametrize(
    ("reward_fn", "message"),
    [
        (lambda texts, answers: torch.zeros(len(texts), 1), r"shape \(12, 1\); expected \(12,\)"),
        (lambda texts, answers: torch.zeros(len(texts) - 1), r"shape \(11,\); expected \(12,\)"),
        (lambda texts, answers: torch.zeros(3, 4), r"shape \(3, 4\); expected \(12,\)"),
        (
            lambda texts, answers: torch.tensor([float("nan")] + [0.0] * (len(texts) - 1)),
            r"reward at \(prompt, sample\) \(0, 0\) is nan",
        ),
        (
            lambda texts, answers: torch.tensor([0.0] * 5 + [float("inf")] * (len(texts) - 5)),
            r"\(1, 1\) is inf",
        ),
    ],
)
def test_grpo_step_bad_reward_fn_raises_before_any_update(tok, reward_fn, message):
    policy = tiny_policy(tok)
    before = parameters(policy)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    problems = addition_splits(1, {"train": 3})["train"]
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=message):
        grpo_step(policy, optimizer, problems, tok, SMALL, generator=generator, reward_fn=reward_fn)
    assert all(torch.equal(p, before[name]) for name, p in policy.named_parameters())


def test_grpo_step_needs_a_reference_for_kl(tok):
    policy = tiny_policy(tok)
    optimizer = torch.optim.AdamW(policy.parameters())
    problems = addition_splits(1, {"train": 3})["train"]
    settings = GRPOSettings(group_size=2, prompts_per_step=3, max_new_tokens=4, kl_coef=0.1)
    with pytest.raises(ValueError, match="kl_coef > 0 needs a reference model"):
        grpo_step(policy, optimizer, problems, tok, settings)


# --- the GRPO loss: REINFORCE at ratio 1, clipping, masking, KL ---------------------------------


def hand_loss_and_gradient():
    """b = 2 completions, m = 3 positions; the first completion has 2 tokens, the second 3."""
    advantages = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    return advantages, mask


@pytest.mark.parametrize(
    ("aggregation", "loss", "gradient"),
    [
        # per token -A; "sequence": each row's mean (-1, 2), then their mean: 1/2;
        # d/dlogp = -A / (row tokens * b): -1/4 in row 1, 2/6 = 1/3 in row 2
        ("sequence", 0.5, [[-1 / 4, -1 / 4, 0.0], [1 / 3, 1 / 3, 1 / 3]]),
        # "token": sum over the 5 tokens (-1 -1 +2 +2 +2) / 5 = 4/5; gradient -A / 5
        ("token", 0.8, [[-1 / 5, -1 / 5, 0.0], [2 / 5, 2 / 5, 2 / 5]]),
        # "constant": the same sum / (b * m) = 4/6; gradient -A / 6
        ("constant", 4 / 6, [[-1 / 6, -1 / 6, 0.0], [2 / 6, 2 / 6, 2 / 6]]),
    ],
)
def test_ratio_one_gradient_is_reinforce_by_hand(aggregation, loss, gradient):
    advantages, mask = hand_loss_and_gradient()
    logprobs = torch.tensor([[-0.5, -1.0, -3.0], [-2.0, -0.1, -0.7]], requires_grad=True)
    value, stats = grpo_loss(logprobs, logprobs.detach(), advantages, mask, aggregation=aggregation)
    value.backward()
    assert value.item() == pytest.approx(loss)
    torch.testing.assert_close(logprobs.grad, torch.tensor(gradient))
    assert stats["ratio"] == 1.0 and stats["clipped"] == 0.0 and stats["kl"] == 0.0


def reinforce_surrogate(logprobs, advantages, mask, aggregation):
    """-sum(A * mask * logp) / the aggregation's normaliser, written out."""
    weighted = advantages[:, None] * mask * logprobs
    b, m = mask.shape
    if aggregation == "sequence":
        return -(weighted.sum(dim=1) / mask.sum(dim=1)).sum() / b
    if aggregation == "token":
        return -weighted.sum() / mask.sum()
    return -weighted.sum() / (b * m)


@pytest.fixture(scope="module")
def rollouts(tok):
    """Sampled completions of a tiny random policy: 3 prompts, 4 each, of different lengths."""
    policy = tiny_policy(tok, seed=3)
    prompts = torch.tensor([tok.encode(addition_problem(a, b, 1).prompt) for a, b in SOME_PAIRS])
    generator = torch.Generator().manual_seed(1)
    out = sample_completions(
        policy, prompts, tok, group_size=4, max_new_tokens=8, generator=generator
    )
    return policy, out


SOME_PAIRS = [(4, 7), (0, 3), (9, 9)]


def test_rollouts_have_varied_lengths(rollouts):  # what the model tests below rely on
    _, out = rollouts
    lengths = out.mask.sum(dim=1)
    assert len(set(lengths.tolist())) >= 3 and lengths.min() >= 1


@pytest.mark.parametrize("aggregation", ["sequence", "token", "constant"])
def test_ratio_one_gradient_is_reinforce_through_a_model(rollouts, aggregation):
    policy, out = rollouts
    policy = frozen_copy(policy).requires_grad_(True)  # a copy this test may give gradients
    advantages = torch.tensor([1.0, -0.5, 0.0, 2.0, -1.0, 0.3, 0.7, -1.5, 0.0, 0.0, 1.2, -2.0])
    mask = out.mask.float()

    policy.zero_grad()
    logprobs = completion_logprobs(policy, out.sequences, out.prompt_length)
    loss, _ = grpo_loss(logprobs, logprobs.detach(), advantages, out.mask, aggregation=aggregation)
    loss.backward()
    grpo_grads = {name: p.grad.clone() for name, p in policy.named_parameters()}

    policy.zero_grad()
    logprobs = completion_logprobs(policy, out.sequences, out.prompt_length)
    reinforce_surrogate(logprobs, advantages, mask, aggregation).backward()
    for name, p in policy.named_parameters():
        assert p.grad.abs().sum() > 0, name
        torch.testing.assert_close(grpo_grads[name], p.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_completion_logprobs_are_the_completion_tokens_log_probabilities(rollouts):
    policy, out = rollouts
    n = out.prompt_length
    with torch.no_grad():
        got = completion_logprobs(policy, out.sequences, n)
        logits = policy(out.sequences)
    assert got.shape == out.mask.shape
    for t in range(out.sequences.shape[1] - n):
        logp = torch.log_softmax(logits[:, n + t - 1], dim=-1)
        expected = logp.gather(1, out.sequences[:, n + t, None]).squeeze(1)
        torch.testing.assert_close(got[:, t], expected)


@pytest.mark.parametrize(
    ("advantage", "ratio", "gradient", "loss"),
    [
        # A > 0: the objective is capped at (1 + eps) A, so beyond it nothing more to gain
        (1.0, 1.5, 0.0, -1.2),
        (1.0, 0.5, -0.5, -0.5),  # below 1 - eps: still pushed up, d(-ratio A)/dlogp = -ratio A
        (1.0, 1.1, -1.1, -1.1),  # inside the range
        # A < 0: the objective is capped at (1 - eps) A, so below it nothing more to gain
        (-1.0, 0.5, 0.0, 0.8),
        (-1.0, 1.5, 1.5, 1.5),  # above 1 + eps: still pushed down
        (-1.0, 0.9, 0.9, 0.9),
        (2.0, 1.3, 0.0, -2.4),
        (-2.0, 0.7, 0.0, 1.6),
    ],
)
def test_clipping_stops_the_gradient_on_the_advantages_side(advantage, ratio, gradient, loss):
    logprobs = torch.zeros(1, 1, requires_grad=True)
    old = torch.full((1, 1), -math.log(ratio))  # ratio = exp(0 - old)
    value, stats = grpo_loss(
        logprobs, old, torch.tensor([advantage]), torch.ones(1, 1, dtype=torch.bool), clip_eps=0.2
    )
    value.backward()
    assert value.item() == pytest.approx(loss)
    assert logprobs.grad.item() == pytest.approx(gradient, abs=1e-7)
    assert stats["ratio"] == pytest.approx(ratio)
    assert stats["clipped"] == (0.0 if 0.8 <= ratio <= 1.2 else 1.0)


def test_clipping_token_by_token_and_the_clipped_share():
    ratios = torch.tensor([[1.5, 0.5, 3.0], [1.5, 1.1, 0.7]])  # 3.0 is masked out
    mask = torch.tensor([[True, True, False], [True, True, True]])
    advantages = torch.tensor([1.0, -1.0])
    logprobs = torch.zeros(2, 3, requires_grad=True)
    loss, stats = grpo_loss(
        logprobs, -ratios.log(), advantages, mask, clip_eps=0.2, aggregation="token"
    )
    loss.backward()
    # per token -A * ratio where the unclipped term is the minimum, 0 where the clip holds it
    expected = torch.tensor([[0.0, -0.5, 0.0], [1.5, 1.1, 0.0]]) / 5
    torch.testing.assert_close(logprobs.grad, expected)
    # "clipped": unmasked tokens whose ratio the clamp changed (1.5, 0.5, 1.5, 0.7) of 5
    assert stats["clipped"] == pytest.approx(4 / 5)
    assert stats["ratio"] == pytest.approx((1.5 + 0.5 + 1.5 + 1.1 + 0.7) / 5)
    # a wider clip range leaves only 3.0 outside, and it is masked
    _, wide = grpo_loss(logprobs, -ratios.log(), advantages, mask, clip_eps=0.6)
    assert wide["clipped"] == 0.0


@pytest.mark.parametrize("aggregation", ["sequence", "token", "constant"])
def test_masked_tokens_change_nothing(aggregation):
    g = torch.Generator().manual_seed(0)
    b, m = 4, 6
    logprobs = -torch.rand(b, m, generator=g) * 3
    old = logprobs - 0.3 * torch.randn(b, m, generator=g)  # ratios around 1, some clipped
    ref = logprobs - 0.5 * torch.randn(b, m, generator=g)
    mask = torch.tensor(
        [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]]
    )
    mask = mask.bool()
    advantages = torch.tensor([0.5, -1.0, 2.0, -0.2])

    def run(lp, old, ref):
        lp = lp.clone().requires_grad_(True)
        loss, stats = grpo_loss(
            lp, old, advantages, mask, ref_logprobs=ref, kl_coef=0.1, aggregation=aggregation
        )
        loss.backward()
        return loss, lp.grad, stats

    loss, grad, stats = run(logprobs, old, ref)
    assert (grad[~mask] == 0).all() and (grad[mask] != 0).all()
    assert stats["clipped"] > 0 and stats["kl"] > 0
    for scale in (1.0, 5.0):
        noise = [scale * torch.randn(b, m, generator=g) * ~mask for _ in range(3)]
        loss2, grad2, stats2 = run(logprobs + noise[0], old + noise[1], ref + noise[2])
        torch.testing.assert_close(loss2, loss)
        torch.testing.assert_close(grad2, grad)
        assert stats2 == pytest.approx(stats)


def test_tokens_after_eos_change_nothing_through_a_model(rollouts, tok):
    policy, out = rollouts
    policy = frozen_copy(policy).requires_grad_(True)
    reference = tiny_policy(tok, seed=9)
    after_eos = torch.zeros_like(out.sequences, dtype=torch.bool)
    after_eos[:, out.prompt_length :] = ~out.mask
    assert after_eos.any()
    advantages = torch.linspace(-1, 1, out.sequences.shape[0])

    def run(sequences):
        policy.zero_grad()
        logprobs = completion_logprobs(policy, sequences, out.prompt_length)
        with torch.no_grad():
            ref = completion_logprobs(reference, sequences, out.prompt_length)
        loss, _ = grpo_loss(
            logprobs, logprobs.detach() + 0.1, advantages, out.mask, ref_logprobs=ref, kl_coef=0.2
        )
        loss.backward()
        return loss, [p.grad.clone() for p in policy.parameters()]

    loss, grads = run(out.sequences)
    g = torch.Generator().manual_seed(4)
    random_ids = torch.randint(0, tok.vocab_size, out.sequences.shape, generator=g)
    loss2, grads2 = run(torch.where(after_eos, random_ids, out.sequences))
    torch.testing.assert_close(loss2, loss)
    for a, b in zip(grads, grads2):
        torch.testing.assert_close(a, b)


def test_kl_term_zero_when_policy_and_reference_agree():
    g = torch.Generator().manual_seed(1)
    logprobs = (-torch.rand(3, 4, generator=g) * 2).requires_grad_(True)
    old = logprobs.detach() - 0.1
    advantages = torch.tensor([1.0, -1.0, 0.5])
    mask = torch.ones(3, 4, dtype=torch.bool)
    plain, plain_stats = grpo_loss(logprobs, old, advantages, mask)
    (plain_grad,) = torch.autograd.grad(plain, logprobs)
    same, same_stats = grpo_loss(
        logprobs, old, advantages, mask, ref_logprobs=logprobs.detach(), kl_coef=0.5
    )
    (same_grad,) = torch.autograd.grad(same, logprobs)
    assert same_stats["kl"] == 0.0
    torch.testing.assert_close(same, plain)
    torch.testing.assert_close(same_grad, plain_grad)  # k3's gradient is 0 there too
    differ, differ_stats = grpo_loss(
        logprobs, old, advantages, mask, ref_logprobs=logprobs.detach() + 0.3, kl_coef=0.5
    )
    assert differ_stats["kl"] > 0 and differ.item() > plain.item()
    assert plain_stats["kl"] == 0.0


@pytest.mark.parametrize(
    ("log_ref_ratio", "kl"),
    [
        (math.log(2), 2 - math.log(2) - 1),  # k3 = exp(d) - d - 1 with d = ref - logp
        (-math.log(2), 0.5 + math.log(2) - 1),
    ],
)
def test_kl_term_by_hand(log_ref_ratio, kl):
    logprobs = torch.zeros(1, 2, requires_grad=True)
    ref = torch.full((1, 2), log_ref_ratio)
    mask = torch.tensor([[True, False]])
    loss, stats = grpo_loss(
        logprobs, logprobs.detach(), torch.zeros(1), mask, ref_logprobs=ref, kl_coef=0.1
    )
    loss.backward()
    assert stats["kl"] == pytest.approx(kl)
    assert loss.item() == pytest.approx(0.1 * kl)  # the advantage is 0
    # d k3 / d logp = 1 - exp(d)
    expected = torch.tensor([[0.1 * (1 - math.exp(log_ref_ratio)), 0.0]])
    torch.testing.assert_close(logprobs.grad, expected)


def test_grpo_loss_bad_arguments():
    x = torch.zeros(1, 2)
    mask = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="kl_coef > 0 needs ref_logprobs"):
        grpo_loss(x, x, torch.zeros(1), mask, kl_coef=0.1)
    with pytest.raises(ValueError, match="aggregation must be one of"):
        grpo_loss(x, x, torch.zeros(1), mask, aggregation="mean")


# --- the reference model, GRPO steps and resuming ------------------------------------------------


def test_frozen_copy(tok):
    policy = tiny_policy(tok).train()
    reference = frozen_copy(policy)
    assert not reference.training and policy.training
    assert not any(p.requires_grad for p in reference.parameters())
    assert all(p.requires_grad for p in policy.parameters())
    with torch.no_grad():
        next(policy.parameters()).add_(1.0)
    assert not torch.equal(next(policy.parameters()), next(reference.parameters()))


STEP_STATS = {"reward", "correct", "format", "length", "kl", "clipped", "ratio", "loss"}


def test_reference_never_changes_in_grpo_steps(tok):
    policy = tiny_policy(tok, seed=1)
    reference = frozen_copy(policy)
    before = parameters(reference)
    start = parameters(policy)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-2, weight_decay=0.0)
    problems = addition_splits(1, {"train": 3})["train"]
    once = GRPOSettings(group_size=4, prompts_per_step=3, max_new_tokens=6, kl_coef=0.5)
    twice = GRPOSettings(
        group_size=4, prompts_per_step=3, max_new_tokens=6, kl_coef=0.5, updates_per_batch=2
    )
    generator = torch.Generator().manual_seed(0)
    history = [
        grpo_step(policy, optimizer, problems, tok, settings, reference, generator, length_reward)
        for settings in (once, twice, twice)
    ]
    for name, p in reference.named_parameters():
        assert torch.equal(p, before[name]), name
        assert not p.requires_grad and p.grad is None
    assert any(not torch.equal(p, start[name]) for name, p in policy.named_parameters())
    # The first step's one update sees policy = reference (KL 0, ratio 1); then the policy has
    # moved away from the reference, and the second update of a batch reuses its samples.
    assert set(history[0]) == set(history[1]) == STEP_STATS
    assert history[0]["kl"] < 1e-6 and history[0]["ratio"] == pytest.approx(1.0)
    for row in history[1:]:
        assert row["kl"] > 1e-3 and row["ratio"] != pytest.approx(1.0)


def test_reference_never_changes_in_train_grpo(tok):
    policy = tiny_policy(tok, seed=2)
    reference = frozen_copy(policy)
    before = parameters(reference)
    start = parameters(policy)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    train = addition_splits(1, {"train": 20})["train"]
    settings = GRPOSettings(group_size=4, prompts_per_step=2, max_new_tokens=5, kl_coef=0.1)
    history = train_grpo(policy, optimizer, train, tok, settings, 3, reference=reference)
    assert [row["step"] for row in history] == [1, 2, 3]
    for name, p in reference.named_parameters():
        assert torch.equal(p, before[name]), name
        assert not p.requires_grad
    assert any(not torch.equal(p, start[name]) for name, p in policy.named_parameters())


def test_grpo_step_reports_the_rewards_of_its_samples(tok):
    policy = tiny_policy(tok, seed=4)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    # one- and two-digit problems: two prompt lengths, two batches in one step
    problems = addition_splits(1, {"a": 2})["a"] + addition_splits(2, {"b": 3})["b"]
    seen = []

    def reward_fn(texts, answers):
        seen.append((list(texts), list(answers)))
        return length_reward(texts, answers)

    row = grpo_step(
        policy,
        optimizer,
        problems,
        tok,
        SMALL,
        generator=torch.Generator().manual_seed(0),
        reward_fn=reward_fn,
    )
    assert [len(texts) for texts, _ in seen] == [2 * 4, 3 * 4]
    answers = [a for _, batch in seen for a in batch]
    assert answers == [p.answer for p in problems for _ in range(4)]
    lengths = [len(t) for texts, _ in seen for t in texts]
    assert row["reward"] == pytest.approx(sum(lengths) / len(lengths))
    assert row["ratio"] == pytest.approx(1.0) and row["clipped"] == 0.0  # one update


@pytest.mark.parametrize("aggregation", ["sequence", "token", "constant"])
def test_grpo_step_update_is_the_hand_written_reinforce_gradient(tok, aggregation):
    """One step (one update, so ratio 1) with plain SGD at learning rate 1 moves the weights by
    minus the REINFORCE gradient, written out over every completion of both prompt lengths."""
    problems = addition_splits(1, {"a": 2})["a"] + addition_splits(2, {"b": 3})["b"]
    problems = [problems[2], problems[0], problems[3], problems[1], problems[4]]  # interleaved
    settings = GRPOSettings(
        group_size=4, max_new_tokens=6, max_grad_norm=1e9, aggregation=aggregation
    )
    policy = tiny_policy(tok, seed=8)
    before = parameters(policy)

    # the same samples by hand: grpo_step samples one batch per prompt length, in the order
    # by_prompt_length gives (first appearance), from one generator
    expected = tiny_policy(tok, seed=8)
    generator = torch.Generator().manual_seed(0)
    batches = []
    for length in (8, 6):  # two-digit prompts come first here
        chosen = [p for p in problems if len(tok.encode(p.prompt)) == length]
        prompts = torch.tensor([tok.encode(p.prompt) for p in chosen])
        out = sample_completions(
            expected, prompts, tok, group_size=4, max_new_tokens=6, generator=generator
        )
        rewards = length_reward(out.texts, None).view(len(chosen), 4)
        batches.append((out, group_advantages(rewards).flatten()))
    rows = sum(out.sequences.shape[0] for out, _ in batches)
    tokens = sum(out.mask.sum() for out, _ in batches)
    surrogate = 0.0
    for out, advantages in batches:
        logp = completion_logprobs(expected, out.sequences, out.prompt_length)
        weighted = (advantages[:, None] * out.mask * logp).sum(dim=1)
        if aggregation == "sequence":  # each completion's mean, then the mean of all 20
            surrogate -= (weighted / out.mask.sum(dim=1)).sum() / rows
        elif aggregation == "token":  # one mean over the tokens of both batches
            surrogate -= weighted.sum() / tokens
        else:  # the sum over every completion / (all rows * the generation budget, 6)
            surrogate -= weighted.sum() / (rows * 6)
    surrogate.backward()
    assert tokens > rows

    optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
    generator = torch.Generator().manual_seed(0)
    grpo_step(policy, optimizer, problems, tok, settings, None, generator, length_reward)
    for name, p in expected.named_parameters():
        assert p.grad.abs().sum() > 0, name
        step = before[name] - dict(policy.named_parameters())[name].detach()
        torch.testing.assert_close(step, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_grpo_step_clips_the_gradient_norm(tok):
    problems = addition_splits(1, {"a": 3})["a"]
    for max_grad_norm in (1e-3, 1e-2):
        policy = tiny_policy(tok, seed=8)
        before = parameters(policy)
        optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
        settings = GRPOSettings(group_size=4, max_new_tokens=6, max_grad_norm=max_grad_norm)
        generator = torch.Generator().manual_seed(0)
        grpo_step(policy, optimizer, problems, tok, settings, None, generator, length_reward)
        moved = torch.cat([(p - before[n]).flatten() for n, p in policy.named_parameters()])
        assert moved.norm().item() == pytest.approx(max_grad_norm, rel=1e-3)


def test_grpo_step_reference_without_kl_is_only_measured(tok):
    problems = addition_splits(1, {"a": 3})["a"]
    runs = []
    for with_reference in (False, True):
        policy = tiny_policy(tok, seed=1)
        reference = frozen_copy(tiny_policy(tok, seed=2)) if with_reference else None
        optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
        generator = torch.Generator().manual_seed(0)
        row = grpo_step(
            policy, optimizer, problems, tok, SMALL, reference, generator, length_reward
        )
        runs.append((parameters(policy), row))
    (plain, plain_row), (measured, measured_row) = runs
    for name, p in plain.items():
        assert torch.equal(p, measured[name]), name
    assert plain_row["kl"] == 0.0 and measured_row["kl"] > 0.0
    assert plain_row["loss"] == measured_row["loss"]


def test_train_grpo_evaluates_every_eval_every_and_after_the_last(tok):
    train = addition_splits(1, {"train": 20})["train"]
    evaluation = addition_splits(1, {"eval": 3}, seed=4)["eval"]
    settings = GRPOSettings(group_size=2, prompts_per_step=2, max_new_tokens=3)
    policy = tiny_policy(tok)
    optimizer = torch.optim.AdamW(policy.parameters())
    history = train_grpo(
        policy, optimizer, train, tok, settings, 3, eval_problems=evaluation, eval_every=2
    )
    assert [row["step"] for row in history] == [1, 2, 3]
    assert ["accuracy" in row for row in history] == [False, True, True]
    history = train_grpo(policy, optimizer, train, tok, settings, 2, start_step=3)
    assert [row["step"] for row in history] == [4, 5]
    assert not any("accuracy" in row for row in history)  # no eval_problems, no evaluation


def test_train_grpo_resumes_with_the_same_optimizer(tok, monkeypatch):
    # A verifier whose rewards differ within each group, so every step moves the weights along
    # the drawn problems and samples (with the real verifier a random model earns only zeros).
    def verifier(completions, answers):
        lengths = torch.tensor([float(len(t)) for t in completions])
        return {"correct": lengths, "format": torch.zeros_like(lengths)}

    monkeypatch.setattr(reasoning, "score_completions", verifier)
    train = addition_splits(1, {"train": 30})["train"]
    evaluation = addition_splits(1, {"eval": 4}, seed=9)["eval"]
    settings = GRPOSettings(group_size=3, prompts_per_step=2, max_new_tokens=5)

    def run(parts, seed=7, optimizer_per_part=False):
        policy = tiny_policy(tok, seed=5)
        optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
        history, steps_seen, done = [], [], 0
        for steps in parts:
            if optimizer_per_part:
                optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
            history += train_grpo(
                policy,
                optimizer,
                train,
                tok,
                settings,
                steps,
                seed=seed,
                start_step=done,
                eval_problems=evaluation,
                eval_every=2,
                on_step=lambda s, r: steps_seen.append(s),
            )
            done += steps
        return parameters(policy), history, steps_seen

    whole, whole_history, whole_steps = run([4])
    resumed, resumed_history, resumed_steps = run([2, 2])
    assert whole_steps == resumed_steps == [1, 2, 3, 4]
    assert [row["step"] for row in resumed_history] == [1, 2, 3, 4]
    assert ["accuracy" in row for row in whole_history] == [False, True, False, True]
    assert resumed_history == whole_history
    for name, p in whole.items():
        assert torch.equal(p, resumed[name]), name
    # The equality is not trivial: another seed, or a fresh optimizer at the resume, differ.
    other, _, _ = run([4], seed=8)
    fresh, _, _ = run([2, 2], optimizer_per_part=True)
    assert any(not torch.equal(p, other[name]) for name, p in whole.items())
    assert any(not torch.equal(p, fresh[name]) for name, p in whole.items())


# --- sampling ------------------------------------------------------------------------------------


def test_completion_mask_by_hand():
    eos = 9
    ids = torch.tensor(
        [[1, 2, 9, 9, 9], [1, 9, 2, 9, 3], [1, 2, 3, 4, 5], [9, 1, 1, 1, 1], [9, 9, 9, 9, 9]]
    )
    expected = torch.tensor(
        [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 0, 0, 0, 0]]
    ).bool()
    assert torch.equal(completion_mask(ids, eos), expected)


def prompt_batch(tok, pairs, digits=1):
    return torch.tensor([tok.encode(addition_problem(a, b, digits).prompt) for a, b in pairs])


def test_sample_completions_layout_and_texts(tok):
    policy = tiny_policy(tok, seed=3)
    prompts = prompt_batch(tok, SOME_PAIRS)
    G = 4
    out = sample_completions(
        policy,
        prompts,
        tok,
        group_size=G,
        max_new_tokens=8,
        generator=torch.Generator().manual_seed(1),
    )
    b = len(SOME_PAIRS) * G
    assert out.sequences.shape[0] == b and out.prompt_length == prompts.shape[1]
    assert out.mask.shape == out.completion_ids.shape and out.mask.dtype == torch.bool
    for row in range(b):
        assert torch.equal(out.sequences[row, : out.prompt_length], prompts[row // G])
    assert torch.equal(out.mask, completion_mask(out.completion_ids, tok.eos_id))
    for row, text in enumerate(out.texts):
        ids = out.completion_ids[row]
        kept = ids[out.mask[row]].tolist()
        assert text == tok.decode([i for i in kept if i != tok.eos_id])
        assert "<|endoftext|>" not in text
        after = ids[~out.mask[row]]
        assert (after == tok.eos_id).all()  # after its end a completion is padded with eos
    # sampled: not all of a group alike; the same generator seed gives the same samples
    assert len({tuple(r.tolist()) for r in out.completion_ids[:G]}) > 1
    again = sample_completions(
        policy,
        prompts,
        tok,
        group_size=G,
        max_new_tokens=8,
        generator=torch.Generator().manual_seed(1),
    )
    assert torch.equal(again.sequences, out.sequences)


def test_greedy_with_the_cache_equals_greedy_without(tok):
    cached = tiny_policy(tok, seed=11)
    plain = tiny_policy(tok, seed=0, cls=GPTModel)
    plain.load_state_dict(cached.state_dict())
    assert not hasattr(plain, "new_cache")
    prompts = prompt_batch(tok, [(47, 12), (5, 70), (99, 1)], digits=2)
    caches = []  # sample_completions uses the cache when the model has one
    cached.new_cache = lambda: caches.append(KVCacheGPTModel.new_cache(cached)) or caches[-1]
    a = sample_completions(cached, prompts, tok, group_size=2, max_new_tokens=12, temperature=0.0)
    assert len(caches) == 1 and caches[0].length > prompts.shape[1]
    b = sample_completions(plain, prompts, tok, group_size=2, max_new_tokens=12, temperature=0.0)
    assert a.texts == b.texts
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.mask, b.mask)
    assert a.mask.sum(dim=1).max() > 3  # the comparison covers several generated tokens
    assert a.texts[::2] == a.texts[1::2]  # greedy: a group is one completion repeated
    # each row is what its prompt gives alone: the rows follow the prompts
    for p in range(3):
        alone = sample_completions(
            cached, prompts[p : p + 1], tok, group_size=1, max_new_tokens=12, temperature=0.0
        )
        assert alone.texts[0] == a.texts[2 * p]


REPLIES = {"Q: 1 + 2 =": " 3", "Q: 4 + 5 =": " 9 Answer: 9"}


def test_sample_completions_early_end_and_padding(tok):
    model = Scripted(tok, REPLIES.__getitem__)
    prompts = torch.tensor([tok.encode(p) for p in REPLIES])
    out = sample_completions(model, prompts, tok, group_size=2, max_new_tokens=8, temperature=0.0)
    assert out.texts == [" 3", " 3", " 9 Answer: 9", " 9 Answer: 9"]
    eos = tok.eos_id
    short, long = tok.encode(" 3"), tok.encode(" 9 Answer: 9")
    assert len(long) == 4
    # the first completion ends at its eos; after it, eos padding outside the mask
    for row in (0, 1):
        assert out.completion_ids[row, :4].tolist() == short + [eos, eos, eos]
        assert out.mask[row, :4].tolist() == [True, True, False, False]
    for row in (2, 3):
        assert out.completion_ids[row, :4].tolist() == long
        assert out.mask[row, :4].all()


def test_sample_completions_keep_every_eos(tok):
    model = Scripted(tok, REPLIES.__getitem__)
    prompts = torch.tensor([tok.encode(p) for p in REPLIES])
    out = sample_completions(model, prompts, tok, group_size=2, max_new_tokens=8, temperature=0.0)
    assert out.mask.sum(dim=1).tolist() == [2, 2, 5, 5]
    assert out.completion_ids[2, 4] == tok.eos_id


def test_sample_completions_all_end_at_once_or_run_out(tok):
    model = Scripted(tok, lambda prompt: "")
    prompts = torch.tensor([tok.encode(p) for p in REPLIES])
    out = sample_completions(model, prompts, tok, group_size=3, max_new_tokens=8)
    assert out.completion_ids.tolist() == [[tok.eos_id]] * 6
    assert out.mask.all() and out.texts == [""] * 6
    model = Scripted(tok, lambda prompt: " 1 2 3 4 5 6")
    out = sample_completions(model, prompts, tok, group_size=1, max_new_tokens=3, temperature=0.0)
    assert out.completion_ids.tolist() == [tok.encode(" 1 2 3")] * 2  # cut off: no eos
    assert out.mask.all() and out.texts == [" 1 2 3"] * 2


def oracle_reply(prompt: str) -> str:
    """Right when the first number is even, one too many otherwise."""
    a, b = operands(prompt)
    total = a + b if a % 2 == 0 else a + b + 1
    return " reversed 0 Answer: " + spaced_digits(total)


MIXED = [addition_problem(2, 3, 1), addition_problem(47, 12, 2), addition_problem(5, 5, 1)]
MIXED += [addition_problem(80, 19, 2), addition_problem(8, 1, 1)]


@pytest.mark.parametrize(("samples", "batch_size"), [(1, 512), (1, 2), (2, 2), (3, 1)])
def test_sample_answers_follow_their_problems(tok, samples, batch_size):
    model = Scripted(tok, oracle_reply)
    texts, lengths = sample_answers(
        model,
        MIXED,
        tok,
        samples=samples,
        max_new_tokens=16,
        temperature=0.0,
        batch_size=batch_size,
    )
    assert texts == [[oracle_reply(p.prompt)] * samples for p in MIXED]
    assert [len(row) for row in lengths] == [samples] * len(MIXED)


def test_accuracy_is_the_share_of_right_greedy_answers(tok):
    right = accuracy(Scripted(tok, oracle_reply), MIXED, tok, max_new_tokens=16)
    assert right == pytest.approx(3 / 5)  # a = 2, 80 and 8 are even
    assert accuracy(Scripted(tok, lambda p: ""), MIXED, tok, max_new_tokens=16) == 0.0


# --- inference-time scaling ---------------------------------------------------------------------


def test_majority_vote():
    assert majority_vote(["Answer: 3", "5", "Answer: 5", "5.0"]) == 5  # same value, any form
    assert majority_vote(["Answer: 3", "Answer: 5"]) == 3  # a tie: the answer seen first
    assert majority_vote(["8", "7", "7", "8"]) == 8
    assert majority_vote(["no", "nothing", "Answer: 2"]) == 2  # no number: no vote
    assert majority_vote(["no", "Answer:"]) is None
    assert majority_vote([]) is None


def test_inference_scaling_by_hand():
    problems = [Problem("p1", F(5)), Problem("p2", F(7)), Problem("p3", F(0))]
    texts = [
        ["Answer: 3", "Answer: 5", "Answer: 5", "no idea", "Answer: 3"],
        ["Answer: 7", "8", "nothing", "Answer: 8", "7"],
        ["no", "no", "zero", "?", "Answer:"],  # no numbers: never right, not even for 0
    ]
    lengths = [[4, 5, 6, 7, 8], [1, 2, 3, 4, 5], [1, 1, 1, 1, 1]]
    rows = inference_scaling(texts, lengths, problems, [1, 2, 3, 4, 5])
    # majority per N: p1 3 | 3 (tie, 3 first) | 5 | 5 | 3 (tie 3, 5); p2 7 | 7 (tie) | 7 (tie) |
    # 8 | 7 (tie); p3 never. best-of-N: p1 from N = 2, p2 from N = 1, p3 never.
    expected = [
        {"n": 1, "majority": 1 / 3, "best_of_n": 1 / 3, "tokens": (4 + 1 + 1) / 3},
        {"n": 2, "majority": 1 / 3, "best_of_n": 2 / 3, "tokens": (9 + 3 + 2) / 3},
        {"n": 3, "majority": 2 / 3, "best_of_n": 2 / 3, "tokens": (15 + 6 + 3) / 3},
        {"n": 4, "majority": 1 / 3, "best_of_n": 2 / 3, "tokens": (22 + 10 + 4) / 3},
        {"n": 5, "majority": 1 / 3, "best_of_n": 2 / 3, "tokens": (30 + 15 + 5) / 3},
    ]
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected):
        assert row == pytest.approx(want)
    with pytest.raises(ValueError, match="N = 6 needs 6 samples per problem; have 5"):
        inference_scaling(texts, lengths, problems, [1, 6])
    with pytest.raises(ValueError, match="N = 5 needs 5 samples per problem; have 4"):
        inference_scaling(
            [t[:4] if i == 1 else t for i, t in enumerate(texts)], lengths, problems, [5]
        )
