"""One-line checks for the practice notebooks: a learner's own code against the course's.

    from shared import practice as check

    check.causal_attention(CausalAttention)      # prints what is wrong, or that it is right

Each check builds the learner's piece and the course's finished one (shared.dataset,
shared.attention, shared.gpt, shared.pretraining, shared.classification, shared.instruction) on
the same small inputs, copies the course's weights into the learner's module where the names
match, and probes behaviour: shapes, whether a position sees a later one (change a later token,
watch the earlier outputs), values. Where the values differ, it recomputes the course's piece
with each mistake learners commonly make and names the one that gives the learner's numbers.

Every check prints one verdict and returns an Outcome (status "passed", "failed" or
"not implemented"): a blank still left as ``raise NotImplementedError`` is "not implemented yet",
never a traceback, and an error raised by the learner's code is reported in one line with the line
of their code that raised it. In a notebook only the printed verdict shows.

The checks: sliding_window_dataset (ch02), causal_attention and multi_head_attention (ch03),
layer_norm and transformer_block (ch04), loss_batch and top_k_sampling (ch05), classifier_loss
(ch06), instruction_collate (ch07); and the PyTorch primer's (ch02/pytorch-primer.ipynb, the last
section): tensor_batch, row_normalize, gradient_step, mlp, training_loop, save_weights,
load_weights, device_move, split_heads, masked_softmax, cross_entropy_by_hand, mask_buffer.
"""

from __future__ import annotations

import contextlib
import functools
import os
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PASSED, FAILED, NOT_IMPLEMENTED = "passed", "failed", "not implemented"
MARKS = {PASSED: "✓", FAILED: "✗", NOT_IMPLEMENTED: "…"}
NOT_IMPLEMENTED_TEXT = (
    "not implemented yet: write your code under `# YOUR CODE HERE`, delete the "
    "`raise NotImplementedError` line, run that cell, then run this check again."
)
# Outputs equal within float32 rounding of a different order of operations.
ATOL, RTOL = 1e-5, 1e-4


@dataclass(frozen=True)
class Outcome:
    """A check's verdict: check (its name), status (PASSED, FAILED, NOT_IMPLEMENTED), message
    (the printed line)."""

    check: str
    status: str
    message: str

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def __str__(self) -> str:
        return self.message

    def _ipython_display_(self) -> None:
        """The verdict is printed already; as a cell's last value, the Outcome shows nothing."""


class Mistake(Exception):
    """What is wrong with the learner's code, in plain words (a check's failing verdict)."""


def _check(title: str, success: str) -> Callable:
    """Turn a check's body (which raises Mistake or returns) into a check that prints its
    verdict and returns an Outcome. Runs with the caller's random state saved and restored."""

    def decorate(body: Callable) -> Callable:
        @functools.wraps(body)
        def run(candidate, *args, **kwargs) -> Outcome:
            try:
                with torch.random.fork_rng(devices=[]):
                    body(candidate, *args, **kwargs)
            except NotImplementedError:
                status, text = NOT_IMPLEMENTED, NOT_IMPLEMENTED_TEXT
            except Mistake as mistake:
                status, text = FAILED, str(mistake)
            except Exception as error:  # the learner's code, called outside a _running step
                status, text = FAILED, _raised("your code", error)
            else:
                status, text = PASSED, f"right. {success}"
            outcome = Outcome(body.__name__, status, f"{MARKS[status]} {title}: {text}")
            print(outcome.message)
            return outcome

        return run

    return decorate


# Frames of these folders are the course's or PyTorch's; the learner's line is the last other.
_LIBRARY_DIRS = tuple(
    os.path.dirname(m.__file__) + os.sep for m in (torch, contextlib, functools)
) + (os.path.dirname(__file__) + os.sep,)


def _learner_line(error: BaseException) -> str:
    """' (at: <code>)' for the last line of the learner's own code in error's traceback."""
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if not frame.filename.startswith(_LIBRARY_DIRS)
    ]
    if frames and frames[-1].line:
        return f" (at: {frames[-1].line.strip()})"
    return ""


def _raised(what: str, error: BaseException) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{what} raised {type(error).__name__}: {first}{_learner_line(error)}".rstrip(": ")


@contextlib.contextmanager
def _running(what: str, hint: Callable[[Exception], str] | None = None) -> Iterator[None]:
    """Run the learner's code; an error it raises becomes a Mistake naming what was run, the
    error, the learner's line and, where hint gives one, the likely cause."""
    try:
        yield
    except (NotImplementedError, Mistake):
        raise
    except Exception as error:
        extra = hint(error) if hint else ""
        raise Mistake(_raised(what, error) + (f". {extra}" if extra else "")) from error


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(
        a.detach().double(), b.detach().double(), atol=ATOL, rtol=RTOL, equal_nan=True
    )


def _shape(t) -> str:
    return str(tuple(t.shape))


def _tensor(value, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise Mistake(f"{what} is a {type(value).__name__}, not a tensor")
    return value


def _given(candidate, kind: str, check: str) -> str:
    """The name of the class or function a check was given; a Mistake when it is something
    else (an instance of the class, the result of calling the function, ...)."""
    wanted = isinstance(candidate, type) if kind == "class" else callable(candidate)
    if not wanted or isinstance(candidate, nn.Module):
        raise Mistake(
            f"pass the {kind} itself, not a {type(candidate).__name__} object: "
            f"check.{check}(YourName), without parentheses after YourName"
        )
    return getattr(candidate, "__name__", kind)


def _copy_parameters(mine: nn.Module, reference: nn.Module, name: str) -> None:
    """Copy the reference's parameters into the learner's module, name by name; a Mistake
    naming the differences when the names or shapes do not match."""
    ours = dict(mine.named_parameters())
    theirs = dict(reference.named_parameters())
    if set(ours) != set(theirs):
        missing = sorted(set(theirs) - set(ours))
        extra = sorted(set(ours) - set(theirs))
        raise Mistake(
            f"cannot compare with {name} on the same weights: its parameters are named "
            f"{sorted(theirs)}; yours lack {missing} and have {extra} besides. Keep the names "
            "the scaffold gives."
        )
    for key, param in theirs.items():
        if ours[key].shape != param.shape:
            raise Mistake(
                f"parameter {key} has shape {_shape(ours[key])}, {name}'s {_shape(param)}: "
                "keep the scaffold's __init__"
            )
    with torch.no_grad():
        for key, param in theirs.items():
            ours[key].copy_(param)


def _matching(candidates: list[tuple[str, Callable[[], torch.Tensor]]], got) -> str | None:
    """The explanation of the first candidate mistake whose result equals got."""
    for explanation, compute in candidates:
        with torch.no_grad():
            expected = compute()
        if _close(got, expected):
            return explanation
    return None


def _first_leak(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor):
    """(i, j) with i < j where changing the input at position j changes the output at i, or
    None: the first such pair, scanning later positions j first from the left."""
    with torch.no_grad():
        base = forward(x)
        for j in range(1, x.shape[1]):
            changed = x.clone()
            changed[:, j] += torch.randn_like(changed[:, j]) * 2.0
            diff = (forward(changed) - base).abs().flatten(2).amax(dim=(0, 2))  # per position
            leaks = [i for i in range(j) if not diff[i] <= ATOL]  # nan counts as a leak
            if leaks:
                return leaks[0], j
    return None


# --- Chapter 2: the sliding-window dataset --------------------------------------------------


class _NumberedTokenizer:
    """Encodes "w0 w1 w2 ..." as 1000, 1001, 1002, ...: a token's id tells its position."""

    FIRST_ID = 1000

    def encode(self, text: str, **_) -> list[int]:
        return [self.FIRST_ID + int(word[1:]) for word in text.split()]

    def decode(self, ids) -> str:
        return " ".join(f"w{i - self.FIRST_ID}" for i in ids)


@_check(
    "sliding-window dataset",
    "Same windows as shared.dataset.GPTDatasetV1: inputs of max_length tokens every stride "
    "tokens, targets shifted by one.",
)
def sliding_window_dataset(dataset_class) -> None:
    """Check a GPTDatasetV1-like class: dataset_class(txt, tokenizer, max_length, stride), items
    (input_ids, target_ids), both (max_length,) token-id tensors, targets shifted by one."""
    _given(dataset_class, "class", "sliding_window_dataset")
    from shared.dataset import GPTDatasetV1

    tokenizer = _NumberedTokenizer()
    first = tokenizer.FIRST_ID
    for n_tokens, max_length, stride in ((20, 4, 3), (13, 3, 5)):
        txt = " ".join(f"w{i}" for i in range(n_tokens))
        call = f"{dataset_class.__name__}(txt, tokenizer, max_length={max_length}, stride={stride})"
        setting = f"for {n_tokens} tokens, max_length={max_length} and stride={stride}"
        with _running(call):
            mine = dataset_class(txt, tokenizer, max_length, stride)
        with _running(f"len() of {call}"):
            length = len(mine)
        reference = GPTDatasetV1(txt, tokenizer, max_length, stride)
        expected_starts = [int(reference[i][0][0]) - first for i in range(len(reference))]
        starts = []
        for index in range(length):
            with _running(f"{call}[{index}]"):
                item = mine[index]
            if not (isinstance(item, tuple | list) and len(item) == 2):
                raise Mistake(f"item {index} is not a pair (input_ids, target_ids)")
            inputs = _tensor(item[0], f"item {index}'s input_ids")
            targets = _tensor(item[1], f"item {index}'s target_ids")
            if inputs.dtype != torch.long or targets.dtype != torch.long:
                raise Mistake(
                    f"item {index} holds {inputs.dtype} and {targets.dtype}: token ids are "
                    "integers, torch.tensor(list_of_ids) gives torch.int64"
                )
            ids = inputs.flatten().tolist()
            if not all(first <= i < first + n_tokens for i in ids):
                raise Mistake(
                    f"item {index}'s input_ids {ids} are not the ids of the tokenizer passed in: "
                    "encode txt with the tokenizer argument"
                )
            start = ids[0] - first
            if inputs.shape != (max_length,):
                if inputs.dim() == 1 and start + inputs.shape[0] >= n_tokens:
                    raise Mistake(
                        f"the window starting at token {start} has {inputs.shape[0]} input tokens "
                        f"instead of max_length={max_length}: it runs past the end of the text; "
                        "let the loop stop at len(token_ids) - max_length"
                    )
                raise Mistake(
                    f"inputs have shape {_shape(inputs)}, expected ({max_length},) {setting}: "
                    "a window is token_ids[i : i + max_length]"
                )
            if targets.shape != inputs.shape:
                raise Mistake(
                    f"targets have shape {_shape(targets)}, inputs {_shape(inputs)}: the targets "
                    "are token_ids[i + 1 : i + max_length + 1]"
                )
            shift = int(targets[0]) - int(inputs[0])
            if shift == 0:
                raise Mistake(
                    "targets are not shifted by one: they equal the inputs; the target of each "
                    "position is the next token, token_ids[i + 1 : i + max_length + 1]"
                )
            if shift != 1 or inputs[1:].tolist() != targets[:-1].tolist():
                raise Mistake(
                    f"targets are shifted by {shift}, not by one: the target window is "
                    "token_ids[i + 1 : i + max_length + 1]"
                )
            if ids != list(range(ids[0], ids[0] + max_length)):
                raise Mistake(f"item {index}'s inputs are not consecutive tokens of the text")
            starts.append(start)
        if starts == expected_starts:
            continue
        steps = {b - a for a, b in zip(starts, starts[1:])}
        if len(steps) == 1 and steps != {stride} and starts[:1] == [0]:
            (step,) = steps
            named = " (max_length)" if step == max_length else ""
            raise Mistake(
                f"windows start every {step} token{'s' if step != 1 else ''}{named} instead of every stride={stride} "
                f"tokens {setting}: step the loop by stride"
            )
        if starts == expected_starts[:-1]:
            raise Mistake(
                f"the last window (starting at token {expected_starts[-1]}) is missing {setting}: "
                "the loop should run over range(0, len(token_ids) - max_length, stride)"
            )
        raise Mistake(
            f"the windows start at tokens {starts}, expected {expected_starts} {setting}: "
            "range(0, len(token_ids) - max_length, stride)"
        )


# --- Chapter 3: causal and multi-head attention ---------------------------------------------


def _attention_with(module, x, num_heads, **mistake) -> torch.Tensor:
    """The course's attention on module's weights, with one of the mistakes learners make.

    mistake: mask ("before": right, "none", "after" (zeroed after softmax), "after_inf", "zero"
    (future scores 0), "past", "self"), scale ("sqrt": right, "none", "linear", "d_out"),
    softmax_dim, split/merge ("transpose": right, "view"), out_proj (True: applied).
    """
    mask = mistake.get("mask", "before")
    scale = mistake.get("scale", "sqrt")
    b, n, _ = x.shape
    queries, keys, values = module.W_query(x), module.W_key(x), module.W_value(x)
    d_out = queries.shape[-1]
    head_dim = d_out // num_heads

    def heads(t):
        if mistake.get("split") == "view":
            return t.reshape(b, num_heads, n, head_dim)
        return t.view(b, n, num_heads, head_dim).transpose(1, 2)

    queries, keys, values = heads(queries), heads(keys), heads(values)
    scores = queries @ keys.transpose(-2, -1)
    ones = torch.ones(n, n, dtype=torch.bool)
    future = torch.triu(ones, diagonal=1)
    if mask == "before":
        scores = scores.masked_fill(future, -torch.inf)
    elif mask == "zero":
        scores = scores.masked_fill(future, 0.0)
    elif mask == "self":
        scores = scores.masked_fill(torch.triu(ones), -torch.inf)
    elif mask == "past":
        scores = scores.masked_fill(torch.tril(ones, diagonal=-1), -torch.inf)
    divisor = {"sqrt": head_dim**0.5, "none": 1.0, "linear": head_dim, "d_out": d_out**0.5}[scale]
    weights = torch.softmax(scores / divisor, dim=mistake.get("softmax_dim", -1))
    if mask == "after":
        weights = weights.masked_fill(future, 0.0)
    elif mask == "after_inf":
        weights = weights.masked_fill(future, -torch.inf)
    context = weights @ values  # (b, h, n, head_dim)
    if mistake.get("merge") == "view":
        context = context.reshape(b, n, d_out)
    else:
        context = context.transpose(1, 2).reshape(b, n, d_out)
    if hasattr(module, "out_proj") and mistake.get("out_proj", True):
        context = module.out_proj(context)
    return context


ATTENTION_MISTAKES = [
    (
        {"mask": "none"},
        "no causal mask is applied: fill the scores above the diagonal with -inf before the "
        "softmax (masked_fill with self.mask[:num_tokens, :num_tokens])",
    ),
    (
        {"mask": "after"},
        "the mask is applied after softmax: the softmax's sum still includes the future scores. "
        "Mask the scores with -inf before the softmax",
    ),
    (
        {"mask": "after_inf"},
        "the mask is applied after softmax, filling the weights with -inf, which makes inf and "
        "NaN outputs. Mask the scores with -inf before the softmax",
    ),
    (
        {"mask": "zero"},
        "future scores are set to 0 instead of -inf: exp(0) = 1, so future tokens keep a weight. "
        "Fill them with -torch.inf",
    ),
    (
        {"mask": "past"},
        "the mask hides the past instead of the future: mask where the key comes after the "
        "query, torch.triu(..., diagonal=1), as self.mask does",
    ),
    (
        {"mask": "self"},
        "the mask also hides each token from itself (torch.triu with diagonal=0): the first "
        "position has nothing left to attend to and gets NaN. Use diagonal=1, as self.mask does",
    ),
    (
        {"softmax_dim": -2},
        "the softmax runs over the wrong dimension (over the queries): each query's row of "
        "weights must sum to 1, softmax(..., dim=-1)",
    ),
    (
        {"scale": "none"},
        "the scores are not scaled: divide them by the square root of the keys' dimension, "
        "keys.shape[-1] ** 0.5, before the softmax",
    ),
    (
        {"scale": "linear"},
        "the scores are divided by the keys' dimension instead of its square root "
        "(keys.shape[-1] ** 0.5)",
    ),
]
MULTI_HEAD_MISTAKES = [
    *ATTENTION_MISTAKES,
    (
        {"scale": "d_out"},
        "the scores are scaled by sqrt(d_out) instead of sqrt(head_dim): each head's keys have "
        "head_dim dimensions",
    ),
    (
        {"split": "view"},
        "the heads are split with view alone: view(b, num_tokens, num_heads, head_dim) then "
        "transpose(1, 2), so that every head gets every token (a direct view to (b, num_heads, "
        "num_tokens, head_dim) mixes tokens)",
    ),
    (
        {"merge": "view"},
        "the heads are merged without transposing back: transpose(1, 2) to (b, num_tokens, "
        "num_heads, head_dim) before the view to (b, num_tokens, d_out)",
    ),
    ({"out_proj": False}, "out_proj is not applied to the merged heads: return self.out_proj(...)"),
]


def _mask_hint(n: int, context_length: int) -> Callable[[Exception], str]:
    def hint(error: Exception) -> str:
        if "size" in str(error) and "must match" in str(error):
            return (
                f"With {n} tokens and context_length={context_length}, slice the mask to the "
                "input's length: self.mask[:num_tokens, :num_tokens]"
            )
        return ""

    return hint


def _check_attention(attention_class, reference_class, num_heads: int | None) -> None:
    """The checks shared by causal_attention (num_heads None) and multi_head_attention."""
    d_in, context_length, b, n = 3, 8, 2, 6
    d_out = (
        2 if num_heads is None else 6
    )  # 2 heads of 3: sqrt(d_out), head_dim, sqrt(head_dim) differ
    settings = dict(d_in=d_in, d_out=d_out, context_length=context_length)
    if num_heads is not None:
        settings["num_heads"] = num_heads
    mistakes = ATTENTION_MISTAKES if num_heads is None else MULTI_HEAD_MISTAKES
    heads = num_heads or 1
    reference_name = f"shared.attention.{reference_class.__name__}"

    def build(cls, dropout):
        torch.manual_seed(123)
        return cls(**settings, dropout=dropout).eval()

    args = ", ".join(f"{k}={v}" for k, v in settings.items())
    with _running(f"{attention_class.__name__}({args}, dropout=0.0)"):
        mine = build(attention_class, 0.0)
    reference = build(reference_class, 0.0)
    torch.manual_seed(1)
    x = torch.randn(b, n, d_in)
    run = f"forward on x of shape {_shape(x)}"
    with _running(run, _mask_hint(n, context_length)), torch.no_grad():
        out = _tensor(mine(x), "forward's output")
    expected = (b, n, d_out)
    if tuple(out.shape) != expected:
        if num_heads is not None and out.dim() == 4:
            raise Mistake(
                f"shapes {_shape(out)} vs expected {expected}: heads not merged; transpose(1, 2) "
                "and view the result as (b, num_tokens, d_out)"
            )
        raise Mistake(f"shapes {_shape(out)} vs expected {expected}")
    names_match = True
    try:
        _copy_parameters(mine, reference, reference_name)
    except Mistake as different_names:
        names_match, why = False, different_names
    if names_match:
        with _running(run), torch.no_grad():
            out = mine(x)
        candidates = [
            (text, functools.partial(_attention_with, reference, x, heads, **mistake))
            for mistake, text in mistakes
        ]
        if not torch.isfinite(out).all():
            known = _matching(candidates, out)
            raise Mistake(known or "the output has NaN or inf values")
    leak = _first_leak(mine, x)
    if leak is not None:
        i, j = leak
        known = _matching(candidates, out) if names_match else None
        raise Mistake(
            f"position {i} can see position {j} (changing token {j} changes the output at "
            f"position {i}): "
            + (known or "mask the scores above the diagonal with -inf before the softmax")
        )
    if not names_match:
        raise Mistake(f"causal and shaped right, but {why}")
    with torch.no_grad():
        expected_out = reference(x)
    if not _close(out, expected_out):
        known = _matching(candidates, out)
        largest = (out - expected_out).abs().max().item()
        raise Mistake(
            known
            or f"outputs differ from {reference_name}'s on the same weights (by up to {largest:.3g})"
        )
    # Dropout: the same random numbers must drop the same attention weights as the reference's.
    mine_train, reference_train = build(attention_class, 0.5), build(reference_class, 0.5)
    _copy_parameters(mine_train, reference, reference_name)
    reference_train.load_state_dict(reference.state_dict())
    mine_train.train()
    reference_train.train()
    torch.manual_seed(7)
    with _running(f"forward in training mode with dropout=0.5 on x of shape {_shape(x)}"):
        dropped = mine_train(x)
    torch.manual_seed(7)
    expected_dropped = reference_train(x)
    if _close(dropped, out):
        raise Mistake(
            "dropout is never applied: in training mode, apply self.dropout to the attention "
            "weights right after the softmax"
        )
    if not _close(dropped, expected_dropped):
        raise Mistake(
            f"in training mode (dropout=0.5) the outputs differ from {reference_name}'s with the "
            "same random seed: apply self.dropout once, to the attention weights right after the "
            "softmax"
        )


@_check(
    "causal attention",
    "Same outputs as shared.attention.CausalAttention on the same weights, no position sees a "
    "later one, and dropout acts on the attention weights.",
)
def causal_attention(attention_class) -> None:
    """Check a CausalAttention-like class: attention_class(d_in, d_out, context_length,
    dropout, qkv_bias=False) with W_query, W_key, W_value; forward x (b, n, d_in) ->
    (b, n, d_out)."""
    _given(attention_class, "class", "causal_attention")
    from shared.attention import CausalAttention

    _check_attention(attention_class, CausalAttention, num_heads=None)


@_check(
    "multi-head attention",
    "Same outputs as shared.attention.MultiHeadAttention on the same weights, no position sees "
    "a later one, and dropout acts on the attention weights.",
)
def multi_head_attention(attention_class) -> None:
    """Check a MultiHeadAttention-like class: attention_class(d_in, d_out, context_length,
    dropout, num_heads, qkv_bias=False) with W_query, W_key, W_value, out_proj; forward
    x (b, n, d_in) -> (b, n, d_out)."""
    _given(attention_class, "class", "multi_head_attention")
    from shared.attention import MultiHeadAttention

    _check_attention(attention_class, MultiHeadAttention, num_heads=2)


# --- Chapter 4: layer norm and the transformer block ----------------------------------------


def _layer_norm_with(module, x, **mistake) -> torch.Tensor:
    """The course's layer norm on module's scale and shift, with one of the common mistakes:
    dim, unbiased, eps ("inside": right, "outside", "none"), center, affine ("yes", "none",
    "swapped")."""
    dim = mistake.get("dim", -1)
    mean = x.mean(dim=dim, keepdim=True) if mistake.get("center", True) else 0.0
    var = x.var(dim=dim, keepdim=True, unbiased=mistake.get("unbiased", False))
    eps = mistake.get("eps", "inside")
    if eps == "inside":
        norm = (x - mean) / torch.sqrt(var + module.eps)
    elif eps == "outside":
        norm = (x - mean) / (torch.sqrt(var) + module.eps)
    else:
        norm = (x - mean) / torch.sqrt(var)
    affine = mistake.get("affine", "yes")
    if affine == "none":
        return norm
    if affine == "swapped":
        return module.shift * norm + module.scale
    return module.scale * norm + module.shift


LAYER_NORM_MISTAKES = [
    (
        {"unbiased": True},
        "the variance is the unbiased one (divided by d - 1, torch.var's and torch.std's "
        "default): the layer norm divides by d, x.var(dim=-1, keepdim=True, unbiased=False)",
    ),
    ({"eps": "outside"}, "eps is added after the square root: torch.sqrt(var + self.eps)"),
    (
        {"eps": "none"},
        "no eps: a row whose values are all equal has variance 0 and becomes NaN (0 / 0); "
        "divide by torch.sqrt(var + self.eps)",
    ),
    ({"center": False}, "the mean is not subtracted: (x - mean) / torch.sqrt(var + self.eps)"),
    ({"affine": "none"}, "scale and shift are not applied: self.scale * norm_x + self.shift"),
    ({"affine": "swapped"}, "scale and shift are swapped: self.scale * norm_x + self.shift"),
    *(
        (
            {"dim": d},
            f"it normalises over dimension {d}, not over the last one (the embedding): mean and "
            "var over dim=-1 with keepdim=True",
        )
        for d in (0, 1)
    ),
]


@_check(
    "layer norm",
    "Same outputs as shared.gpt.LayerNorm: each token's vector normalised over the embedding "
    "dimension (biased variance, eps inside the square root), then scaled and shifted.",
)
def layer_norm(layer_norm_class) -> None:
    """Check a LayerNorm-like class: layer_norm_class(emb_dim) with parameters scale and shift
    (emb_dim,); forward x (..., emb_dim) -> same shape."""
    _given(layer_norm_class, "class", "layer_norm")
    from shared.gpt import LayerNorm

    emb_dim = 8
    with _running(f"{layer_norm_class.__name__}(emb_dim={emb_dim})"):
        mine = layer_norm_class(emb_dim)
    reference = LayerNorm(emb_dim)
    torch.manual_seed(3)
    with torch.no_grad():
        reference.scale.copy_(torch.rand(emb_dim) + 0.5)
        reference.shift.copy_(torch.randn(emb_dim))
    _copy_parameters(mine, reference, "shared.gpt.LayerNorm")
    x = torch.randn(2, 3, emb_dim) * 3 + 1
    x[1, 0] = 5.0  # a constant row: variance 0
    x[1, 2] = 0.01 * torch.randn(emb_dim)  # variance 1e-4, where eps matters
    with _running(f"forward on x of shape {_shape(x)}", _keepdim_hint), torch.no_grad():
        out = _tensor(mine(x), "forward's output")
        expected = reference(x)
    if out.shape != expected.shape:
        raise Mistake(f"shapes {_shape(out)} vs expected {_shape(expected)}")
    if not _close(out, expected):
        candidates = [
            (text, functools.partial(_layer_norm_with, reference, x, **mistake))
            for mistake, text in LAYER_NORM_MISTAKES
        ]
        largest = (out - expected).abs().max().item()
        raise Mistake(
            _matching(candidates, out)
            or f"outputs differ from shared.gpt.LayerNorm's (by up to {largest:.3g})"
        )


def _keepdim_hint(error: Exception) -> str:
    if "size" in str(error) and "must match" in str(error):
        return "Keep the reduced dimension (keepdim=True) so that mean and var broadcast"
    return ""


BLOCK_CONFIG = {
    "vocab_size": 50,
    "context_length": 8,
    "emb_dim": 8,
    "n_heads": 2,
    "n_layers": 1,
    "drop_rate": 0.0,
    "qkv_bias": False,
}


def _block_with(block, x, order: str) -> torch.Tensor:
    """A TransformerBlock's forward (without dropout) in one of the orders learners write."""
    att, ff, norm1, norm2 = block.att, block.ff, block.norm1, block.norm2
    if order == "post_norm":
        x = norm1(x + att(x))
        return norm2(x + ff(x))
    if order == "no_shortcut":
        return ff(norm2(att(norm1(x))))
    if order == "no_attention_shortcut":
        x = att(norm1(x))
        return x + ff(norm2(x))
    if order == "no_feed_forward_shortcut":
        return ff(norm2(x + att(norm1(x))))
    if order == "normed_shortcut":
        h = norm1(x)
        x = h + att(h)
        h = norm2(x)
        return h + ff(h)
    if order == "norm1_twice":
        x = x + att(norm1(x))
        return x + ff(norm1(x))
    if order == "parallel":
        return x + att(norm1(x)) + ff(norm2(x))
    if order == "no_norm":
        x = x + att(x)
        return x + ff(x)
    if order == "feed_forward_first":
        x = x + ff(norm2(x))
        return x + att(norm1(x))
    raise ValueError(order)


BLOCK_MISTAKES = [
    (
        "post_norm",
        "the layer norms come after the shortcuts (post-LN, the original transformer's order); "
        "GPT-2 normalises before each sub-layer: x = x + self.att(self.norm1(x))",
    ),
    ("no_shortcut", "no shortcut connections: add each sub-layer's input back, x = x + ..."),
    ("no_attention_shortcut", "the attention has no shortcut: x = x + self.att(self.norm1(x))"),
    (
        "no_feed_forward_shortcut",
        "the feed-forward has no shortcut: x = x + self.ff(self.norm2(x))",
    ),
    (
        "normed_shortcut",
        "the shortcut adds the normalised input: keep x for the shortcut and give only the "
        "attention self.norm1(x) (the same for the feed-forward)",
    ),
    ("norm1_twice", "norm1 is used before the feed-forward too: use self.norm2 there"),
    (
        "parallel",
        "the feed-forward reads the block's input instead of the attention's output: first "
        "x = x + self.att(self.norm1(x)), then x = x + self.ff(self.norm2(x))",
    ),
    ("no_norm", "the layer norms are not applied: self.norm1 before att, self.norm2 before ff"),
    ("feed_forward_first", "the feed-forward comes before the attention: attention goes first"),
]


@_check(
    "transformer block",
    "Same outputs as shared.gpt.TransformerBlock on the same weights: layer norm before "
    "attention and feed-forward, a shortcut around each, dropout on each shortcut branch, and "
    "no position sees a later one.",
)
def transformer_block(block_class) -> None:
    """Check a TransformerBlock-like class: block_class(cfg) with att, ff, norm1, norm2,
    drop_shortcut; forward x (b, n, emb_dim) -> same shape."""
    _given(block_class, "class", "transformer_block")
    from shared.gpt import TransformerBlock

    cfg = BLOCK_CONFIG
    with _running(f"{block_class.__name__}(cfg)"):
        torch.manual_seed(123)
        mine = block_class(cfg).eval()
    torch.manual_seed(123)
    reference = TransformerBlock(cfg).eval()
    with torch.no_grad():  # different norms, so that norm1 and norm2 cannot stand in for each other
        for norm in (reference.norm1, reference.norm2):
            norm.scale.copy_(torch.rand(cfg["emb_dim"]) + 0.5)
            norm.shift.copy_(torch.randn(cfg["emb_dim"]) * 0.5)
    _copy_parameters(mine, reference, "shared.gpt.TransformerBlock")
    torch.manual_seed(1)
    x = torch.randn(2, 6, cfg["emb_dim"])
    with _running(f"forward on x of shape {_shape(x)}"), torch.no_grad():
        out = _tensor(mine(x), "forward's output")
        expected = reference(x)
    if out.shape != expected.shape:
        raise Mistake(f"shapes {_shape(out)} vs expected {_shape(expected)}")
    candidates = [
        (text, functools.partial(_block_with, reference, x, order))
        for order, text in BLOCK_MISTAKES
    ]
    leak = _first_leak(mine, x)
    if leak is not None:
        raise Mistake(
            f"position {leak[0]} can see position {leak[1]}: use self.att, the causal "
            "multi-head attention the scaffold builds"
        )
    if not _close(out, expected):
        largest = (out - expected).abs().max().item()
        raise Mistake(
            _matching(candidates, out)
            or f"outputs differ from shared.gpt.TransformerBlock's (by up to {largest:.3g})"
        )
    # Dropout: with the same random numbers, the same branches must be dropped.
    train_cfg = {**cfg, "drop_rate": 0.5}
    torch.manual_seed(123)
    mine_train = block_class(train_cfg).train()
    torch.manual_seed(123)
    reference_train = TransformerBlock(train_cfg).train()
    reference_train.load_state_dict(reference.state_dict())
    _copy_parameters(mine_train, reference, "shared.gpt.TransformerBlock")
    torch.manual_seed(7)
    with _running("forward in training mode with drop_rate=0.5"):
        dropped = mine_train(x)
    torch.manual_seed(7)
    if not _close(dropped, reference_train(x)):
        raise Mistake(
            "in training mode (drop_rate=0.5) the outputs differ from shared.gpt.TransformerBlock's "
            "with the same random seed: apply self.drop_shortcut to the attention's and to the "
            "feed-forward's output, before adding each shortcut"
        )


# --- Chapter 5: the loss of a batch and top-k sampling --------------------------------------

TINY_GPT = {
    "vocab_size": 50,
    "context_length": 8,
    "emb_dim": 16,
    "n_heads": 2,
    "n_layers": 1,
    "drop_rate": 0.0,
    "qkv_bias": False,
}


def _tiny_gpt(num_classes: int | None = None) -> nn.Module:
    from shared.gpt import GPTModel

    torch.manual_seed(123)
    model = GPTModel(TINY_GPT)
    if num_classes is not None:
        model.out_head = nn.Linear(TINY_GPT["emb_dim"], num_classes)
    return model.eval()


def _scalar_loss(value, what: str) -> torch.Tensor:
    """The learner's loss, or a Mistake saying why it cannot be trained with."""
    if isinstance(value, int | float):
        raise Mistake(
            f"{what} returned a Python number ({value:.4g}), not a tensor: return the loss tensor "
            "(no .item()), so that loss.backward() can compute the gradients"
        )
    loss = _tensor(value, f"the result of {what}")
    if loss.numel() != 1 or loss.dim() != 0:
        raise Mistake(
            f"{what} returned shape {_shape(loss)}: the loss of a batch is one number, the mean "
            "over its positions (F.cross_entropy's default)"
        )
    if not loss.requires_grad:
        raise Mistake(
            f"{what}'s loss has no gradient (computed under torch.no_grad(), or through .item(), "
            ".detach() or argmax): training could not learn from it"
        )
    return loss


def _ce(logits, targets, **options) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), **options)


@_check(
    "calc_loss_batch",
    "Same loss as shared.pretraining.calc_loss_batch: the mean cross-entropy of every "
    "position's logits against its target (the next token), positions with target -100 left out, "
    "with a gradient.",
)
def loss_batch(calc_loss_batch) -> None:
    """Check a calc_loss_batch(input_batch, target_batch, model, device) -> scalar tensor."""
    _given(calc_loss_batch, "function", "loss_batch")
    from shared.pretraining import calc_loss_batch as reference

    model = _tiny_gpt()
    torch.manual_seed(5)
    tokens = torch.randint(0, TINY_GPT["vocab_size"], (2, 7))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    call = f"{calc_loss_batch.__name__}(inputs, targets, model, 'cpu')"
    with _running(call):
        loss = _scalar_loss(calc_loss_batch(inputs, targets, model, "cpu"), call)
    expected = reference(inputs, targets, model, "cpu")
    with torch.no_grad():
        logits = model(inputs)
    if not _close(loss, expected):
        candidates = [
            ("the targets are not shifted by one: the loss compares the logits with "
             "input_batch; compare them with target_batch, the next tokens",
             lambda: _ce(logits, inputs)),
            ("the targets are shifted a second time: target_batch already holds the next token "
             "of each position, so compare logits and targets position by position",
             lambda: _ce(logits[:, :-1], targets[:, 1:])),
            ("softmax is applied before cross_entropy, which applies log-softmax itself: pass "
             "the logits", lambda: _ce(torch.softmax(logits, dim=-1), targets)),
            ("the losses are summed instead of averaged: the mean over positions "
             "(F.cross_entropy's default reduction)",
             lambda: _ce(logits, targets, reduction="sum")),
            ("logits and targets are flattened in different orders: logits.flatten(0, 1) and "
             "target_batch.flatten()",
             lambda: F.cross_entropy(logits.flatten(0, 1), targets.T.flatten())),
            ("nll_loss is given the raw logits, but it expects log-probabilities: use "
             "F.cross_entropy on the logits",
             lambda: F.nll_loss(logits.flatten(0, 1), targets.flatten())),
            ("only the last position counts: every position predicts its next token, so the "
             "loss covers all of them",
             lambda: F.cross_entropy(logits[:, -1], targets[:, -1])),
        ]  # fmt: skip
        raise Mistake(
            _matching(candidates, loss)
            or f"the loss is {loss.item():.4f}; shared.pretraining.calc_loss_batch gives "
            f"{expected.item():.4f} for the same batch and model"
        )
    padded = targets.clone()
    padded[1, 3:] = -100  # positions to ignore (padding, in Chapter 7)
    call = (
        f"{calc_loss_batch.__name__}(inputs, targets with -100 at ignored positions, model, 'cpu')"
    )
    with _running(call):
        loss = _scalar_loss(calc_loss_batch(inputs, padded, model, "cpu"), call)
    expected = reference(inputs, padded, model, "cpu")
    if not _close(loss, expected):
        counted = _ce(logits, padded, reduction="none").mean()
        if _close(loss, counted):
            raise Mistake(
                "padding tokens count in the loss: positions whose target is -100 are left out "
                "of the sum but still counted in the average; F.cross_entropy (ignore_index=-100 "
                "by default, mean over the other positions) does it right"
            )
        raise Mistake(
            "with some targets set to -100 (positions to ignore), the loss is "
            f"{loss.item():.4f} instead of {expected.item():.4f}: leave those positions out"
        )


def _top_k_hint(error: Exception) -> str:
    if "size" in str(error) and "must match" in str(error):
        return (
            "Does the k-th largest value keep its row dimension? With a batch of several rows, "
            "compare each row with its own: top_logits[:, -1:] (shape (b, 1))"
        )
    return ""


@_check(
    "top-k sampling",
    "Samples only among each row's top k tokens, with the probabilities of "
    "softmax(logits / temperature) over them, and leaves the logits passed in unchanged.",
)
def top_k_sampling(sample) -> None:
    """Check sample(logits (b, V), top_k, temperature > 0) -> next token ids (b, 1): a draw from
    softmax(logits / temperature) restricted to the top_k largest logits of each row."""
    _given(sample, "function", "top_k_sampling")
    rows = torch.tensor(
        [[2.0, 1.0, 0.5, 3.0, -1.0, 0.0], [0.0, 2.5, -0.5, 1.0, 2.0, 0.2]]
    )  # top 3: tokens 3, 0, 1 and 1, 4, 3
    draws, top_k, temperature = 5000, 3, 2.0
    logits = rows.repeat_interleave(draws, dim=0)  # (2 * draws, V): each row draws times
    given = logits.clone()
    call = f"{sample.__name__}(logits of shape {_shape(logits)}, top_k={top_k}, temperature={temperature})"
    torch.manual_seed(123)
    with _running(call, _top_k_hint):
        ids = _tensor(sample(given, top_k, temperature), f"the result of {call}")
    if not torch.equal(given, logits):
        raise Mistake(
            "it changed the logits passed in (an in-place assignment or masked_fill_): work on a "
            "copy, e.g. torch.where(...) or masked_fill without the underscore"
        )
    if ids.is_floating_point():
        raise Mistake(f"it returned {ids.dtype} values: return token ids (torch.multinomial's)")
    if tuple(ids.shape) != (logits.shape[0], 1):
        raise Mistake(
            f"shapes {_shape(ids)} vs expected ({logits.shape[0]}, 1): one token id per row, "
            "torch.multinomial(probs, num_samples=1)"
        )
    per_row = ids.view(2, draws)
    allowed = torch.topk(rows, top_k, dim=-1).indices
    for r in range(2):
        outside = sorted(set(per_row[r].tolist()) - set(allowed[r].tolist()))
        if outside:
            raise Mistake(
                f"row {r} sampled token {outside[0]}, which is not among its {top_k} most likely "
                f"tokens {sorted(allowed[r].tolist())}: set every logit below the row's k-th "
                "largest to -inf before the softmax (0 is not enough: exp(0) = 1 is a weight)"
            )
    if all(len(set(per_row[r].tolist())) == 1 for r in range(2)):
        raise Mistake(
            "every draw is the row's most likely token: either it picks with argmax instead of "
            "sampling with torch.multinomial, or it keeps only the largest logit (compare with "
            "the k-th largest, top_logits[:, -1:])"
        )
    counts = torch.stack([torch.bincount(row, minlength=rows.shape[1]) for row in per_row])
    observed = counts.double() / draws

    def probabilities(scaled_rows):
        kth = torch.topk(scaled_rows, top_k, dim=-1).values[:, -1:]
        return torch.softmax(scaled_rows.masked_fill(scaled_rows < kth, -torch.inf), dim=-1)

    expected = probabilities(rows / temperature).double()
    alternatives = [
        ("the temperature is ignored: divide the logits by it before the softmax", rows),
        (
            "the logits are multiplied by the temperature instead of divided by it",
            rows * temperature,
        ),
    ]

    def distance(p):  # the largest total variation distance over the rows
        return (observed - p).abs().sum(dim=-1).max().item() / 2

    if distance(expected) > 0.05:
        for explanation, scaled in alternatives:
            if distance(probabilities(scaled).double()) < 0.05:
                raise Mistake(explanation)
        raise Mistake(
            f"the sampled frequencies {observed.numpy().round(2).tolist()} differ from "
            f"softmax(logits / temperature) over the top {top_k}: "
            f"{expected.numpy().round(2).tolist()}"
        )


# --- Chapter 6: the classifier's last-token loss --------------------------------------------


@_check(
    "classifier loss",
    "Same loss as shared.classification.calc_classification_loss_batch: the cross-entropy of "
    "the last token's class logits against the labels, with a gradient.",
)
def classifier_loss(calc_loss_batch) -> None:
    """Check a calc_loss_batch(input_batch (b, n), labels (b,), model, device) -> scalar
    tensor, for a model whose logits are (b, n, num_classes)."""
    _given(calc_loss_batch, "function", "classifier_loss")
    from shared.classification import calc_classification_loss_batch as reference

    model = _tiny_gpt(num_classes=2)
    torch.manual_seed(5)
    inputs = torch.randint(0, TINY_GPT["vocab_size"], (3, 5))
    labels = torch.tensor([0, 1, 1])
    call = f"{calc_loss_batch.__name__}(inputs, labels, model, 'cpu')"
    with _running(call):
        loss = _scalar_loss(calc_loss_batch(inputs, labels, model, "cpu"), call)
    expected = reference(inputs, labels, model, "cpu")
    if _close(loss, expected):
        return
    with torch.no_grad():
        logits = model(inputs)  # (b, n, 2)
    n = inputs.shape[1]
    candidates = [
        ("it reads the first token's logits (logits[:, 0, :]); in a causal model only the last "
         "token has seen the whole message: logits[:, -1, :]",
         lambda: F.cross_entropy(logits[:, 0, :], labels)),
        ("it averages the logits over all tokens; the last token is the one that has seen the "
         "whole message: logits[:, -1, :]",
         lambda: F.cross_entropy(logits.mean(dim=1), labels)),
        ("it computes a loss at every token (each labelled with the message's class); only the "
         "last token's logits count: logits[:, -1, :]",
         lambda: F.cross_entropy(logits.flatten(0, 1), labels.repeat_interleave(n))),
        ("softmax is applied before cross_entropy, which applies log-softmax itself: pass the "
         "logits", lambda: F.cross_entropy(torch.softmax(logits[:, -1, :], dim=-1), labels)),
        ("the losses are summed instead of averaged over the batch",
         lambda: F.cross_entropy(logits[:, -1, :], labels, reduction="sum")),
    ]  # fmt: skip
    raise Mistake(
        _matching(candidates, loss)
        or f"the loss is {loss.item():.4f}; calc_classification_loss_batch gives "
        f"{expected.item():.4f} for the same batch and model"
    )


# --- Chapter 7: the instruction collate function --------------------------------------------


def _rows(t: torch.Tensor) -> list:
    return t.tolist()


@_check(
    "instruction collate",
    "Same batches as shared.instruction.custom_collate_fn: entries padded with pad_token_id to "
    "the longest + 1, targets shifted by one, every padding token after the first set to "
    "ignore_index (-100), cut to allowed_max_length.",
)
def instruction_collate(collate) -> None:
    """Check a custom_collate_fn(batch, pad_token_id=50256, ignore_index=-100,
    allowed_max_length=None, device="cpu") -> (inputs, targets), each (b, n) int64."""
    _given(collate, "function", "instruction_collate")
    from shared.instruction import custom_collate_fn as reference

    batch = [[11, 12, 13, 14, 15], [21, 22], [31, 32, 33]]
    settings = [
        ({}, "with the defaults"),
        ({"pad_token_id": 7}, "with pad_token_id=7"),
        ({"ignore_index": -1}, "with ignore_index=-1"),
        ({"allowed_max_length": 3}, "with allowed_max_length=3"),
    ]
    for options, setting in settings:
        args = "".join(f", {k}={v}" for k, v in options.items())
        call = f"{collate.__name__}({batch}{args})"
        with _running(call):
            result = collate([list(item) for item in batch], **options)
        if not (isinstance(result, tuple | list) and len(result) == 2):
            raise Mistake(f"{call} should return a pair (inputs, targets)")
        inputs = _tensor(result[0], f"{call}'s inputs")
        targets = _tensor(result[1], f"{call}'s targets")
        want_inputs, want_targets = reference(batch, **options)
        pad = options.get("pad_token_id", 50256)
        ignore = options.get("ignore_index", -100)
        if inputs.dtype != torch.long or targets.dtype != torch.long:
            raise Mistake(f"inputs are {inputs.dtype} and targets {targets.dtype}: use torch.long")
        if inputs.shape != want_inputs.shape or targets.shape != want_targets.shape:
            if "allowed_max_length" in options and inputs.shape[1] > want_inputs.shape[1]:
                raise Mistake(
                    "allowed_max_length=3 is ignored: cut inputs and targets to its length"
                )
            raise Mistake(
                f"shapes {_shape(inputs)} and {_shape(targets)} vs expected "
                f"{_shape(want_inputs)} {setting}: pad every entry to the longest entry's length "
                "+ 1 (so the longest gets an end-of-text token too), then inputs = padded[:-1], "
                "targets = padded[1:]"
            )
        if not torch.equal(inputs, want_inputs):
            if "pad_token_id" in options and (inputs == 50256).any():
                raise Mistake("pad_token_id is ignored (50256 written in its place?): pad with it")
            raise Mistake(
                f"inputs {_rows(inputs)} vs expected {_rows(want_inputs)} {setting}: each entry "
                "padded with pad_token_id, then the last token cut off"
            )
        kept = targets != ignore
        if torch.equal(targets[kept], inputs[kept]):
            raise Mistake(
                "targets are not shifted by one: they equal the inputs; targets = padded[1:]"
            )
        if torch.equal(targets, want_targets):
            continue
        if "ignore_index" in options and (targets == -100).any():
            raise Mistake("ignore_index is ignored (-100 written in its place?): use the argument")
        kept_pads = (targets == pad) & (want_targets == ignore)
        if kept_pads.any():
            raise Mistake(
                "padding tokens count in the loss: in the targets, every padding token after the "
                f"first must be ignore_index ({ignore}), e.g. row {int(kept_pads.any(1).nonzero()[0])}"
                f" is {_rows(targets[kept_pads.any(1)])[0]}, expected "
                f"{_rows(want_targets[kept_pads.any(1)])[0]}"
            )
        lost_ends = (targets == ignore) & (want_targets == pad)
        if lost_ends.any():
            raise Mistake(
                "the first end-of-text token is masked too, so the model never learns to stop: "
                "keep the first padding token of each target and set only the later ones to "
                "ignore_index"
            )
        raise Mistake(f"targets {_rows(targets)} vs expected {_rows(want_targets)} {setting}")


# --- PyTorch primer (ch02/pytorch-primer.ipynb, before chapter 2) ----------------------------
# One check per exercise of the primer: tensors, broadcasting, autograd, nn.Module, a training
# loop, saving and loading, devices, and the operations the course leans on (view/transpose,
# masked_fill with softmax, cross_entropy, register_buffer). Each compares the learner's code
# with a few lines written here (the references below) and names the usual mistake.


def _same_device_hint(error: Exception) -> str:
    if "expected device" in str(error) or "same device" in str(error):
        return (
            "The model and its input must be on the same device: move both, model.to(device) "
            "(which moves the model itself) and batch = batch.to(device) (tensor.to returns a "
            "moved copy: keep it)"
        )
    if "CUDA" in str(error) or "cuda" in str(error):
        return "Use the device passed in, not a device name written in the code"
    return ""


@_check(
    "a batch of token ids",
    "One row per list, one column per token, integers (torch.int64), as the data loaders of "
    "chapter 2 give them.",
)
def tensor_batch(to_batch) -> None:
    """Check to_batch(rows: list of equal-length lists of ints) -> (len(rows), len(row)) int64."""
    _given(to_batch, "function", "tensor_batch")
    rows = [[40, 367, 2885], [1464, 1807, 3619]]
    call = f"{to_batch.__name__}({rows})"
    with _running(call):
        batch = _tensor(to_batch([list(r) for r in rows]), f"the result of {call}")
    expected = torch.tensor(rows)
    if batch.shape != expected.shape:
        if tuple(batch.shape) == (expected.numel(),):
            raise Mistake(
                f"shape {_shape(batch)} vs expected {_shape(expected)}: the rows were joined end "
                "to end (torch.cat joins along an existing dimension); torch.stack adds a new "
                "one, or build it at once with torch.tensor(rows)"
            )
        if tuple(batch.shape) == tuple(reversed(expected.shape)):
            raise Mistake(
                f"shape {_shape(batch)} vs expected {_shape(expected)}: one column per list "
                "instead of one row (torch.stack(..., dim=1), or a transpose): stack along dim=0"
            )
        raise Mistake(f"shape {_shape(batch)} vs expected {_shape(expected)} (rows, tokens)")
    if batch.dtype != torch.long:
        raise Mistake(
            f"the ids are {batch.dtype}: token ids are integers (torch.int64), which embeddings "
            "and cross_entropy need; torch.tensor(rows) keeps them integers, while "
            "torch.Tensor(rows) always makes float32"
        )
    if not torch.equal(batch, expected):
        raise Mistake(f"the values {batch.tolist()} are not the rows {rows}")


def _if_computable(compute: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """compute, or an empty tensor (which matches nothing) where the mistake cannot be computed
    for these shapes."""

    def run() -> torch.Tensor:
        try:
            return compute()
        except RuntimeError:
            return torch.empty(0)

    return run


def _sums_hint(error: Exception) -> str:
    if "size" in str(error) and "must match" in str(error):
        return "Keep the summed dimension (keepdim=True) so that the sums broadcast along each row"
    return ""


@_check(
    "rows that sum to one",
    "Each row divided by its own sum, for any number of leading dimensions: the sums keep "
    "their dimension (keepdim=True) and broadcast along the row.",
)
def row_normalize(normalize_rows) -> None:
    """Check normalize_rows(x (..., n)) -> same shape, each row along the last dimension divided
    by its sum."""
    _given(normalize_rows, "function", "row_normalize")
    torch.manual_seed(2)
    # A square matrix first: there, sums without their dimension broadcast without an error.
    inputs = [torch.rand(3, 3) + 0.1, torch.rand(2, 4) + 0.1, torch.rand(2, 3, 3) + 0.1]
    for x in inputs:
        given = x.clone()
        call = f"{normalize_rows.__name__}(x of shape {_shape(x)})"
        with _running(call, _sums_hint):
            out = _tensor(normalize_rows(given), f"the result of {call}")
        if not torch.equal(given, x):
            raise Mistake("it changed the tensor passed in (x /= ...): return a new tensor")
        expected = x / x.sum(dim=-1, keepdim=True)
        if out.shape != x.shape:
            raise Mistake(f"shape {_shape(out)} for x of shape {_shape(x)}: keep x's shape")
        if _close(out, expected):
            continue
        candidates = [
            (
                "the sums lost their dimension: x.sum(dim=-1) has one number per row, which "
                "broadcasts along the last dimension, so column j was divided by row j's sum "
                "(no error when the matrix is square); keep it with x.sum(dim=-1, keepdim=True)",
                lambda x=x: x / x.sum(dim=-1),
            ),
            (
                "each column is divided by its sum (dim=0): the rows run along the last "
                "dimension, dim=-1",
                lambda x=x: x / x.sum(dim=0, keepdim=True),
            ),
            (
                "dim=1 is the last dimension of a matrix only: for a batch of shape "
                f"{_shape(x)} it sums over the rows' positions; dim=-1 is the last for any shape",
                lambda x=x: x / x.sum(dim=1, keepdim=True),
            ),
            (
                "it divides by the sum of the whole tensor (x.sum()): each row by its own sum, "
                "x.sum(dim=-1, keepdim=True)",
                lambda x=x: x / x.sum(),
            ),
        ]
        candidates = [(text, _if_computable(compute)) for text, compute in candidates]
        raise Mistake(
            _matching(candidates, out)
            or f"for x of shape {_shape(x)} the rows do not sum to 1 "
            f"(sums {out.sum(dim=-1).flatten().numpy().round(3).tolist()})"
        )


def _in_place_hint(error: Exception) -> str:
    if "leaf Variable that requires grad" in str(error):
        return (
            "Autograd records every operation on w; the update is not part of the model, so "
            "do it inside `with torch.no_grad():`"
        )
    if "backward through the graph a second time" in str(error):
        return "Compute the loss again for each backward (the scaffold's first line does)"
    return ""


def _mse_gradient(w, x, y) -> torch.Tensor:
    """d/dw of ((x @ w - y) ** 2).mean(), by hand."""
    return 2 * x.T @ (x @ w - y) / len(y)


@_check(
    "one gradient-descent step",
    "Each call computes the gradient with loss.backward(), moves w against it by lr times it "
    "in place under torch.no_grad(), and clears w.grad for the next step.",
)
def gradient_step(sgd_step) -> None:
    """Check sgd_step(w, x, y, lr) -> None: one step of gradient descent on the leaf tensor w
    (requires_grad=True), in place, for the loss ((x @ w - y) ** 2).mean()."""
    _given(sgd_step, "function", "gradient_step")
    torch.manual_seed(4)
    x, y, lr = torch.randn(6, 3), torch.randn(6), 0.1
    w0 = torch.randn(3)
    w = w0.clone().requires_grad_(True)
    expected = [w0 - lr * _mse_gradient(w0, x, y)]
    expected.append(expected[0] - lr * _mse_gradient(expected[0], x, y))
    for step in (1, 2):
        call = f"{sgd_step.__name__}(w, x, y, lr={lr}) (step {step})"
        before = w.detach().clone()
        with _running(call, _in_place_hint):
            sgd_step(w, x, y, lr)
        if not (isinstance(w, torch.Tensor) and w.is_leaf and w.requires_grad):
            raise Mistake(
                "after the step, w no longer requires a gradient: change its values, not its "
                "requires_grad (w -= lr * w.grad inside torch.no_grad())"
            )
        now = w.detach()
        if torch.equal(now, before):
            raise Mistake(
                f"w is unchanged after step {step}: update the tensor passed in, in place "
                "(w -= lr * w.grad); w = w - lr * w.grad only makes a new local tensor"
            )
        grad = _mse_gradient(before, x, y)
        if _close(now, before + lr * grad):
            raise Mistake("w moved along the gradient, up the loss: subtract it, w -= lr * w.grad")
        if step == 2 and _close(now, before - lr * (grad + _mse_gradient(w0, x, y))):
            raise Mistake(
                "the second step used the sum of both steps' gradients: backward() adds to "
                "w.grad, so clear it after each update (w.grad = None, or w.grad.zero_())"
            )
        if not _close(now, expected[step - 1]):
            raise Mistake(
                f"after step {step}, w is {now.numpy().round(4).tolist()}, expected "
                f"{expected[step - 1].numpy().round(4).tolist()} (w - lr * gradient)"
            )


class _PrimerMLP(nn.Module):
    """The reference of the primer's MLP exercise: one nn.Linear per consecutive pair of sizes,
    ReLU between them. At module level, so that a whole model can be pickled (a mistake that
    save_weights names)."""

    def __init__(self, sizes):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


@_check(
    "a module with registered layers",
    "Every layer's weights and biases are registered parameters (nn.ModuleList), so "
    "model.parameters(), the optimizer, state_dict and .to(device) all see them.",
)
def mlp(mlp_class) -> None:
    """Check an MLP(sizes) nn.Module class whose self.layers holds one nn.Linear(sizes[i],
    sizes[i + 1]) per consecutive pair; forward (b, sizes[0]) -> (b, sizes[-1])."""
    _given(mlp_class, "class", "mlp")
    sizes = (4, 8, 8, 2)
    call = f"{mlp_class.__name__}({sizes})"
    with _running(call):
        torch.manual_seed(1)
        mine = mlp_class(sizes)
    reference = _PrimerMLP(sizes)
    ours = dict(mine.named_parameters())
    theirs = dict(reference.named_parameters())
    layers = getattr(mine, "layers", None)
    if not ours:
        kind = type(layers).__name__ if layers is not None else "nothing"
        raise Mistake(
            f"model.parameters() is empty, so an optimizer would train nothing: self.layers is "
            f"a {kind}, whose layers PyTorch does not see; keep them in nn.ModuleList(...) "
            "(or nn.Sequential)"
        )
    if set(ours) != set(theirs):
        lacking = sorted(set(theirs) - set(ours))
        layer_count = len({k.rsplit(".", 1)[0] for k in ours})
        if lacking and all(k.endswith(".bias") for k in lacking) and len(ours) * 2 == len(theirs):
            raise Mistake("the layers have no biases (bias=False): nn.Linear(a, b) keeps its bias")
        if layer_count != len(sizes) - 1:
            raise Mistake(
                f"{layer_count} layers for sizes {sizes}, expected {len(sizes) - 1}: one "
                "nn.Linear(sizes[i], sizes[i + 1]) per consecutive pair, "
                "zip(sizes, sizes[1:])"
            )
        raise Mistake(
            f"the parameters are named {sorted(ours)}, expected {sorted(theirs)}: keep the "
            "layers in self.layers"
        )
    for key, param in theirs.items():
        if ours[key].shape != param.shape:
            raise Mistake(
                f"parameter {key} has shape {_shape(ours[key])}, expected {_shape(param)}: "
                f"layer i is nn.Linear(sizes[i], sizes[i + 1]) (its weight is (out, in))"
            )
    _copy_parameters(mine, reference, "the reference MLP")
    torch.manual_seed(2)
    x = torch.randn(5, sizes[0])
    with _running(f"forward on x of shape {_shape(x)}"), torch.no_grad():
        out = _tensor(mine(x), "forward's output")
    with torch.no_grad():
        expected = reference(x)
    if not _close(out, expected):
        raise Mistake("the outputs differ from the layers applied in order, ReLU between them")


def _train_reference(model, loader, optimizer, accumulate=False) -> list[float]:
    losses = []
    for inputs, targets in loader:
        loss = F.mse_loss(model(inputs), targets)
        if not accumulate:
            optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _regression_data():
    torch.manual_seed(6)
    x = torch.randn(8, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    return torch.utils.data.TensorDataset(x, y)


@_check(
    "a training loop",
    "For each batch: zero the gradients, compute the loss, backward, step; returns the mean "
    "loss over the batches as a Python number.",
)
def training_loop(train_epoch) -> None:
    """Check train_epoch(model, loader, optimizer) -> float: one pass over loader's (inputs,
    targets) batches, loss F.mse_loss(model(inputs), targets), returning the mean batch loss."""
    _given(train_epoch, "function", "training_loop")
    loader = torch.utils.data.DataLoader(_regression_data(), batch_size=2, shuffle=False)

    def fresh():
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    model, optimizer = fresh()
    start = [p.detach().clone() for p in model.parameters()]
    call = f"{train_epoch.__name__}(model, loader, optimizer)"
    with _running(call):
        result = train_epoch(model, loader, optimizer)
    reference, reference_optimizer = fresh()
    losses = _train_reference(reference, loader, reference_optimizer)
    after = [p.detach() for p in model.parameters()]
    if all(torch.equal(a, b) for a, b in zip(after, start)):
        if all(p.grad is None for p in model.parameters()):
            raise Mistake(
                "the weights never changed and no gradients are left: call loss.backward(), "
                "then optimizer.step(), for each batch (optimizer.zero_grad() goes before "
                "backward, not between backward and step)"
            )
        raise Mistake(
            "the weights never changed: the gradients are computed but never applied; call "
            "optimizer.step() after loss.backward()"
        )
    if not all(_close(a, b) for a, b in zip(after, reference.parameters())):
        accumulated, accumulating_optimizer = fresh()
        _train_reference(accumulated, loader, accumulating_optimizer, accumulate=True)
        if all(_close(a, b) for a, b in zip(after, accumulated.parameters())):
            raise Mistake(
                "the gradients add up across batches: backward() adds to .grad, so call "
                "optimizer.zero_grad() before each loss.backward()"
            )
        raise Mistake(
            "after one epoch the weights differ from those of zero_grad, backward, step for "
            f"each of the {len(loader)} batches"
        )
    if isinstance(result, torch.Tensor):
        raise Mistake(
            "it returns a tensor: a loss tensor keeps its whole computation graph alive; add up "
            "loss.item(), a Python number, instead"
        )
    if not isinstance(result, int | float):
        raise Mistake(f"it returns a {type(result).__name__}: return the mean loss, a number")
    mean = sum(losses) / len(losses)
    if abs(result - mean) <= 1e-5 * max(1.0, abs(mean)):
        return
    if abs(result - sum(losses)) <= 1e-5 * max(1.0, sum(losses)):
        raise Mistake(
            f"it returns the sum of the batch losses ({result:.4f}): divide by the number of "
            f"batches, len(loader), for the mean ({mean:.4f})"
        )
    if abs(result - losses[-1]) <= 1e-5 * max(1.0, abs(losses[-1])):
        raise Mistake(
            f"it returns the last batch's loss ({result:.4f}): the mean over all batches is "
            f"{mean:.4f}"
        )
    raise Mistake(f"it returns {result:.4f}; the mean of the batch losses is {mean:.4f}")


def _file_contents(path) -> object:
    """What a file that torch.save wrote holds (the check's own file: safe to unpickle)."""
    return torch.load(path, weights_only=False)


@_check(
    "saving weights",
    "The file holds the model's state_dict, a dict of named tensors, which "
    "torch.load(path, weights_only=True) reads without running any code from the file.",
)
def save_weights(save) -> None:
    """Check save(model, path) -> None: writes model.state_dict() to path with torch.save."""
    import tempfile
    from pathlib import Path

    _given(save, "function", "save_weights")
    model = _PrimerMLP((3, 4, 2))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pth"
        call = f"{save.__name__}(model, path)"
        with _running(
            call,
            lambda e: (
                "torch.save(obj, path): the object comes first, then the path"
                if "'f'" in str(e) or "write" in str(e)
                else ""
            ),
        ):
            save(model, path)
        if not path.is_file():
            raise Mistake(f"{call} wrote no file at path: torch.save(model.state_dict(), path)")
        contents = _file_contents(path)
        try:
            torch.load(path, weights_only=True)
            loads_safely = True
        except Exception:
            loads_safely = False
    if isinstance(contents, nn.Module):
        raise Mistake(
            "the file holds the whole model (a pickled nn.Module), not its state_dict: "
            "torch.load(path, weights_only=True) refuses it, and loading it with "
            "weights_only=False runs whatever code a file holds; save model.state_dict()"
        )
    if callable(contents):
        raise Mistake(
            "the file holds the state_dict method itself, not its result: call it, "
            "torch.save(model.state_dict(), path)"
        )
    if isinstance(contents, list | tuple):
        raise Mistake(
            "the file holds a list of tensors without their names (list(model.parameters())?): "
            "load_state_dict needs the names, torch.save(model.state_dict(), path)"
        )
    expected = model.state_dict()
    if not isinstance(contents, dict) or set(contents) != set(expected):
        keys = sorted(contents) if isinstance(contents, dict) else type(contents).__name__
        raise Mistake(
            f"the file holds {keys}, expected a state_dict with {sorted(expected)}: "
            "torch.save(model.state_dict(), path)"
        )
    if not all(torch.equal(contents[k], v) for k, v in expected.items()):
        raise Mistake("the saved tensors differ from the model's weights")
    if not loads_safely:
        raise Mistake("torch.load(path, weights_only=True) cannot read the file")


@_check(
    "loading weights",
    "torch.load(path, weights_only=True) reads the tensors without running code from the "
    "file, and model.load_state_dict puts them into the model passed in, which is returned.",
)
def load_weights(load) -> None:
    """Check load(model, path) -> model: model's weights replaced in place by the state_dict
    saved at path, read with torch.load(path, weights_only=True)."""
    import tempfile
    from pathlib import Path
    from unittest import mock

    _given(load, "function", "load_weights")
    saved = _PrimerMLP((3, 4, 2))
    torch.manual_seed(9)
    model = _PrimerMLP((3, 4, 2))
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pth"
        torch.save(saved.state_dict(), path)
        call = f"{load.__name__}(model, path)"

        def hint(error):
            if "state_dict to be dict-like" in str(error):
                return (
                    "load_state_dict takes the dict that torch.load(path, weights_only=True) "
                    "returns, not the path"
                )
            return ""

        with _running(call, hint), mock.patch.object(torch, "load", spy):
            result = load(model, path)
    if not calls:
        raise Mistake("it never reads the file: torch.load(path, weights_only=True)")
    if any(flag is not True for flag in calls):
        raise Mistake(
            "torch.load is called without weights_only=True: a .pth file is a pickle, and "
            "unpickling without it can run any code the file holds (PyTorch before 2.6 "
            "defaults to weights_only=False); pass weights_only=True"
        )
    if not all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), saved.state_dict().values())
    ):
        raise Mistake(
            "the model passed in keeps its old weights: load into it, "
            "model.load_state_dict(torch.load(path, weights_only=True)); model = ... only "
            "rebinds a local name"
        )
    if result is not model:
        if type(result).__name__ == "_IncompatibleKeys":
            raise Mistake(
                "it returns what load_state_dict returns (a report of missing and unexpected "
                "keys), not the model: load_state_dict changes the model in place, so return model"
            )
        raise Mistake(f"it returns a {type(result).__name__}, not the model passed in")


@_check(
    "running on a device",
    "The model and the batch are moved to the device passed in (model.to moves the model in "
    "place, tensor.to returns a moved copy), and the outputs come from there.",
)
def device_move(run_on) -> None:
    """Check run_on(model, batch, device) -> model(batch) computed on device (model and batch
    moved there). Besides the CPU, it uses PyTorch's "meta" device (shapes without data), so it
    catches a device written in the code on a machine without a GPU too."""
    _given(run_on, "function", "device_move")
    torch.manual_seed(3)
    model = nn.Linear(4, 2)
    batch = torch.randn(3, 4)
    with torch.no_grad():
        expected = model(batch)
    call = f"{run_on.__name__}(model, batch, 'cpu')"
    with _running(call, _same_device_hint), torch.no_grad():
        out = _tensor(run_on(model, batch, torch.device("cpu")), f"the result of {call}")
    if out.device.type != "cpu":
        raise Mistake(
            f"asked for the CPU, it ran on {out.device}: use the device passed in, not a name "
            "written in the code"
        )
    if not _close(out, expected):
        raise Mistake("the outputs differ from model(batch)")
    meta = torch.device("meta")
    call = f"{run_on.__name__}(model, batch, 'meta')"
    with _running(call, _same_device_hint), torch.no_grad():
        out = _tensor(run_on(model, batch, meta), f"the result of {call}")
    where = {p.device.type for p in model.parameters()}
    if out.device != meta:
        raise Mistake(
            f"asked for device 'meta', the outputs are on {out.device}: use the device passed "
            "in (get_device() or 'cpu' in the code ignores it)"
        )
    if where != {"meta"}:
        raise Mistake("the model was not moved to the device: model.to(device)")
    if tuple(out.shape) != tuple(expected.shape):
        raise Mistake(f"shape {_shape(out)} vs expected {_shape(expected)}")


@_check(
    "splitting into heads",
    "view to (b, num_tokens, num_heads, head_dim) keeps each token's numbers together, then "
    "transpose(1, 2) gives every head all the tokens: (b, num_heads, num_tokens, head_dim).",
)
def split_heads(split) -> None:
    """Check split(x (b, n, d), num_heads) -> (b, num_heads, n, d // num_heads), head h holding
    dimensions h * head_dim ... (h + 1) * head_dim - 1 of every token."""
    _given(split, "function", "split_heads")
    b, n, d, heads = 2, 3, 8, 2
    x = torch.arange(b * n * d, dtype=torch.float32).view(b, n, d)
    call = f"{split.__name__}(x of shape {_shape(x)}, num_heads={heads})"

    def hint(error):
        if "tuple of ints" in str(error) and "float" in str(error):
            return "head_dim must be an integer: d // num_heads, not d / num_heads"
        return ""

    with _running(call, hint):
        out = _tensor(split(x.clone(), heads), f"the result of {call}")
    expected = x.view(b, n, heads, d // heads).transpose(1, 2)
    if out.shape != expected.shape:
        if tuple(out.shape) == (b, n, heads, d // heads):
            raise Mistake(
                f"shape {_shape(out)} vs expected {_shape(expected)}: split, but the heads are "
                "not moved in front of the tokens; transpose(1, 2)"
            )
        raise Mistake(f"shape {_shape(out)} vs expected {_shape(expected)}")
    if torch.equal(out, expected):
        return
    candidates = [
        (
            "a direct view to (b, num_heads, num_tokens, head_dim) cuts the numbers in memory "
            "order, so a head gets pieces of several tokens: view to (b, num_tokens, num_heads, "
            "head_dim) first, then transpose(1, 2)",
            lambda: x.reshape(b, heads, n, d // heads),
        ),
        (
            "it transposes before splitting, so a head gets numbers from several tokens: "
            "view(b, num_tokens, num_heads, head_dim) first, then transpose(1, 2)",
            lambda: x.transpose(1, 2).reshape(b, heads, n, d // heads),
        ),
    ]
    raise Mistake(
        _matching(candidates, out)
        or "head 0 should hold the first head_dim numbers of every token, x[:, :, :head_dim]"
    )


@_check(
    "masked softmax",
    "Padding positions are filled with -inf before the softmax, so they get weight 0 and every "
    "row's other weights sum to 1; the scores passed in are left unchanged.",
)
def masked_softmax(softmax_with_mask) -> None:
    """Check softmax_with_mask(scores (b, n), pad_mask (b, n) bool, True at padding) ->
    weights (b, n): softmax over the last dimension with the padding positions left out."""
    _given(softmax_with_mask, "function", "masked_softmax")
    torch.manual_seed(8)
    scores = torch.randn(2, 5)
    pad = torch.tensor([[False, False, False, True, True], [False, False, False, False, True]])
    given = scores.clone()
    call = f"{softmax_with_mask.__name__}(scores of shape {_shape(scores)}, pad_mask)"

    def hint(error):
        if "boolean" in str(error):
            return "masked_fill takes a bool mask (True where to fill)"
        return ""

    with _running(call, hint):
        out = _tensor(softmax_with_mask(given, pad.clone()), f"the result of {call}")
    if not torch.equal(given, scores):
        raise Mistake(
            "it changed the scores passed in (masked_fill_ with an underscore works in place): "
            "use masked_fill, which returns a new tensor"
        )
    expected = torch.softmax(scores.masked_fill(pad, -torch.inf), dim=-1)
    if out.shape != expected.shape:
        raise Mistake(f"shape {_shape(out)} vs expected {_shape(expected)}")
    if _close(out, expected):
        return
    candidates = [
        (
            "the padding is filled with 0 instead of -inf: exp(0) = 1, so padding keeps a "
            "weight; masked_fill(pad_mask, -torch.inf)",
            lambda: torch.softmax(scores.masked_fill(pad, 0.0), dim=-1),
        ),
        (
            "the mask is applied after softmax: the weights at padding are 0, but the rest no "
            "longer sum to 1; fill the scores with -inf before the softmax",
            lambda: torch.softmax(scores, dim=-1).masked_fill(pad, 0.0),
        ),
        (
            "the mask is inverted: it hides the real tokens and keeps the padding; pad_mask is "
            "True where to fill",
            lambda: torch.softmax(scores.masked_fill(~pad, -torch.inf), dim=-1),
        ),
        (
            "the softmax runs over dim=0 (down the batch): each row's weights must sum to 1, "
            "dim=-1",
            lambda: torch.softmax(scores.masked_fill(pad, -torch.inf), dim=0),
        ),
    ]
    raise Mistake(
        _matching(candidates, out)
        or f"the weights {out.numpy().round(3).tolist()} differ from the softmax of the scores "
        "with padding filled with -inf"
    )


@_check(
    "cross-entropy by hand",
    "Same as F.cross_entropy: minus the mean over rows of log_softmax(logits) at each row's "
    "target, stable for large logits.",
)
def cross_entropy_by_hand(cross_entropy) -> None:
    """Check cross_entropy(logits (N, C), targets (N,) int64) -> scalar tensor equal to
    F.cross_entropy(logits, targets)."""
    _given(cross_entropy, "function", "cross_entropy_by_hand")
    torch.manual_seed(10)
    logits = torch.randn(4, 5, requires_grad=True)
    targets = torch.tensor([1, 0, 4, 2])
    call = f"{cross_entropy.__name__}(logits of shape {_shape(logits)}, targets)"
    with _running(call):
        loss = _scalar_loss(cross_entropy(logits, targets), call)
    expected = F.cross_entropy(logits, targets)
    if not _close(loss, expected):
        with torch.no_grad():
            log_probs = torch.log_softmax(logits, dim=-1)
            rows = torch.arange(len(targets))
        candidates = [
            (
                "the sign is missing: the loss is minus the mean log-probability (a loss to "
                "minimise is positive)",
                lambda: log_probs[rows, targets].mean(),
            ),
            (
                "the log-probabilities are summed instead of averaged over the rows",
                lambda: -log_probs[rows, targets].sum(),
            ),
            (
                "log_probs[:, targets] takes every target's column for every row (an N x N "
                "grid): one entry per row is log_probs[torch.arange(N), targets]",
                lambda: -log_probs[:, targets].mean(),
            ),
            (
                "the probabilities are taken, not their logarithm: use log_softmax",
                lambda: -torch.softmax(logits, dim=-1)[rows, targets].mean(),
            ),
            (
                "the logits are used without log_softmax: they are not log-probabilities until "
                "normalised, torch.log_softmax(logits, dim=-1)",
                lambda: -logits[rows, targets].mean(),
            ),
            (
                "the softmax runs over dim=0 (over the rows): each row is one distribution over "
                "the classes, dim=-1",
                lambda: -torch.log_softmax(logits, dim=0)[rows, targets].mean(),
            ),
        ]
        raise Mistake(
            _matching(candidates, loss)
            or f"the loss is {loss.item():.4f}; F.cross_entropy gives {expected.item():.4f}"
        )
    large = torch.tensor([[0.0, 120.0, -120.0], [3.0, 1.0, 0.0]])
    large_targets = torch.tensor([0, 2])
    call = f"{cross_entropy.__name__}(logits with values of 120, targets)"
    with _running(call):
        loss = _scalar_loss(cross_entropy(large.requires_grad_(), large_targets), call)
    expected = F.cross_entropy(large, large_targets)
    if not torch.isfinite(loss):
        raise Mistake(
            f"for a batch with a row of logits [0, 120, -120] the loss is {loss.item()}, "
            f"F.cross_entropy gives {expected.item():.1f}: softmax rounds the tiny probabilities to 0 and log(0) is "
            "-inf; torch.log_softmax computes the same without that rounding"
        )
    if not _close(loss, expected):
        raise Mistake(
            f"for logits with large values the loss is {loss.item():.4f}; F.cross_entropy "
            f"gives {expected.item():.4f}"
        )


@_check(
    "a mask kept as a buffer",
    "self.mask is a registered buffer (True above the diagonal): it moves with model.to(device), "
    "is no parameter the optimizer would train, and hides each token's future only.",
)
def mask_buffer(mask_class) -> None:
    """Check a CausalMask(context_length) nn.Module class that registers a (context_length,
    context_length) bool buffer named mask, True above the diagonal (forward given: scores
    (..., n, n) with the future filled with -inf)."""
    _given(mask_class, "class", "mask_buffer")
    context_length, n = 6, 4
    call = f"{mask_class.__name__}(context_length={context_length})"
    with _running(call):
        module = mask_class(context_length)
    expected = torch.triu(torch.ones(context_length, context_length, dtype=torch.bool), 1)
    mask = getattr(module, "mask", None)
    if mask is None:
        raise Mistake("there is no self.mask: self.register_buffer('mask', ...)")
    if any(p is mask for p in module.parameters()):
        raise Mistake(
            "the mask is a parameter (nn.Parameter): model.parameters() hands it to the "
            "optimizer; keep it with self.register_buffer('mask', mask), which is no parameter"
        )
    if not any(b is mask for b in module.buffers()):
        raise Mistake(
            "self.mask is a plain attribute, not a buffer: model.to(device) does not move it, so "
            "on a GPU it stays on the CPU beside scores on the GPU; "
            "self.register_buffer('mask', mask)"
        )
    if mask.dtype != torch.bool:
        raise Mistake(
            f"the mask is {mask.dtype}: masked_fill takes a bool mask; build it with "
            "dtype=torch.bool (or .bool())"
        )
    if tuple(mask.shape) != tuple(expected.shape):
        raise Mistake(
            f"the mask has shape {_shape(mask)}, expected {_shape(expected)}: one row and one "
            "column per position up to context_length"
        )
    if not torch.equal(mask, expected):
        ones = torch.ones_like(expected)
        known = {
            "the mask hides each token from itself too (diagonal=0): torch.triu(..., "
            "diagonal=1) keeps the diagonal visible": torch.triu(ones, 0),
            "the mask hides the past instead of the future: torch.triu (upper triangle, "
            "diagonal=1), not torch.tril": torch.tril(ones, -1),
        }
        for text, wrong in known.items():
            if torch.equal(mask, wrong):
                raise Mistake(text)
        raise Mistake(f"the mask is {mask.int().tolist()}, expected True above the diagonal")
    torch.manual_seed(11)
    scores = torch.randn(2, n, n)
    with _running(f"forward on scores of shape {_shape(scores)}"):
        out = _tensor(module(scores), "forward's output")
    if not torch.equal(out, scores.masked_fill(expected[:n, :n], -torch.inf)):
        raise Mistake("forward's output differs from the scores with the future filled with -inf")
    module.to("meta")
    if module.mask.device.type != "meta":
        raise Mistake("model.to(device) does not move the mask: register it as a buffer")
