"""shared.practice, the practice notebooks' checks, tested both ways: each passes on the course's
own code and fails, with the message meant for it, on wrong code written the way learners write
it (the classes and functions below, one mistake each)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from shared import attention, classification, dataset, gpt, instruction, practice, pretraining

pytestmark = pytest.mark.usefixtures("one_thread")


def outcome_of(check, candidate, capsys) -> practice.Outcome:
    outcome = check(candidate)
    printed = capsys.readouterr().out
    assert printed == outcome.message + "\n", "a check prints its verdict, one line"
    return outcome


# --- Chapter 2: the sliding-window dataset --------------------------------------------------


class Windows(torch.utils.data.Dataset):
    """A learner's GPTDatasetV1 with knobs for their mistakes."""

    shift, step, stop_early, extra = 1, None, 0, 0

    def __init__(self, txt, tokenizer, max_length, stride):
        ids = self.encode(txt, tokenizer)
        step = self.step(max_length, stride) if self.step else stride
        self.items = []
        for i in range(0, len(ids) - max_length - self.stop_early, step):
            window = ids[i : i + max_length + self.extra]
            target = ids[i + self.shift : i + self.shift + max_length + self.extra]
            self.items.append((torch.tensor(window), torch.tensor(target)))

    def encode(self, txt, tokenizer):
        return tokenizer.encode(txt)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


class TargetsNotShifted(Windows):
    shift = 0


class TargetsShiftedByTwo(Windows):
    shift = 2


class StrideIgnored(Windows):
    step = staticmethod(lambda max_length, stride: 1)


class StepsByMaxLength(Windows):
    step = staticmethod(lambda max_length, stride: max_length)


class LastWindowMissing(Windows):
    stop_early = 1


class WindowsOneTooLong(Windows):
    extra = 1


class OwnTokenizer(Windows):
    def encode(self, txt, tokenizer):
        return [ord(c) for c in txt]  # not the tokenizer it was given


class NotYetDataset(torch.utils.data.Dataset):
    def __init__(self, txt, tokenizer, max_length, stride):
        token_ids = tokenizer.encode(txt)  # noqa: F841  (the scaffold's line)
        # YOUR CODE HERE
        raise NotImplementedError


# --- Chapter 3: attention -------------------------------------------------------------------


class Causal(attention.CausalAttention):
    """A learner's forward, with the scaffold's __init__ (the course's)."""

    diagonal, fill, scale, softmax_dim, after_softmax, slice_mask = 1, -torch.inf, True, -1, 0, 1
    dropout_on_output = False

    def forward(self, x):
        n = x.shape[1]
        keys, queries, values = self.W_key(x), self.W_query(x), self.W_value(x)
        scores = queries @ keys.transpose(1, 2)
        mask = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=self.diagonal)
        if not self.slice_mask:
            mask = self.mask  # the whole context_length x context_length mask
        if self.fill is not None and not self.after_softmax:
            scores = scores.masked_fill(mask, self.fill)
        if self.scale:
            scores = scores / keys.shape[-1] ** 0.5
        weights = torch.softmax(scores, dim=self.softmax_dim)
        if self.after_softmax:
            weights = weights.masked_fill(mask, 0.0)
        if not self.dropout_on_output:
            weights = self.dropout(weights)
        context = weights @ values
        return self.dropout(context) if self.dropout_on_output else context


class MaskAfterSoftmax(Causal):
    after_softmax = 1


class NoMask(Causal):
    fill = None


class MaskFilledWithZero(Causal):
    fill = 0.0


class MaskHidesItself(Causal):
    diagonal = 0


class NotScaled(Causal):
    scale = False


class SoftmaxOverQueries(Causal):
    softmax_dim = 1


class MaskNotSliced(Causal):
    slice_mask = 0


class DropoutOnOutput(Causal):
    dropout_on_output = True


class NotYetCausal(attention.CausalAttention):
    def forward(self, x):
        # YOUR CODE HERE
        raise NotImplementedError


class MultiHead(attention.MultiHeadAttention):
    """A learner's MultiHeadAttention.forward, with knobs for their mistakes."""

    split_view = merge_view = unmerged = False
    scale_by_d_out = False
    out_proj_applied = True

    def forward(self, x):
        b, n, _ = x.shape

        def heads(t):
            if self.split_view:
                return t.view(b, self.num_heads, n, self.head_dim)
            return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

        queries, keys, values = heads(self.W_query(x)), heads(self.W_key(x)), heads(self.W_value(x))
        scores = (queries @ keys.transpose(2, 3)).masked_fill(self.mask[:n, :n], -torch.inf)
        scale = (self.d_out if self.scale_by_d_out else self.head_dim) ** 0.5
        weights = self.dropout(torch.softmax(scores / scale, dim=-1))
        context = weights @ values  # (b, heads, n, head_dim)
        if self.unmerged:
            return context
        if self.merge_view:
            context = context.contiguous().view(b, n, self.d_out)
        else:
            context = context.transpose(1, 2).contiguous().view(b, n, self.d_out)
        return self.out_proj(context) if self.out_proj_applied else context


class HeadsNotMerged(MultiHead):
    unmerged = True


class MergedWithoutTranspose(MultiHead):
    merge_view = True


class SplitWithoutTranspose(MultiHead):
    split_view = True


class ScaledByDOut(MultiHead):
    scale_by_d_out = True


class NoOutProj(MultiHead):
    out_proj_applied = False


class RenamedWeights(torch.nn.Module):
    """Right, but with its own parameter names: the values cannot be compared."""

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__()
        self.reference = attention.MultiHeadAttention(
            d_in, d_out, context_length, dropout, num_heads, qkv_bias
        )

    def forward(self, x):
        return self.reference(x)


# --- Chapter 4: layer norm and the transformer block ----------------------------------------


class Norm(gpt.LayerNorm):
    unbiased, eps_inside, dim, keepdim, swapped = False, True, -1, True, False

    def forward(self, x):
        mean = x.mean(dim=self.dim, keepdim=self.keepdim)
        var = x.var(dim=self.dim, keepdim=self.keepdim, unbiased=self.unbiased)
        if self.eps_inside is None:
            norm = (x - mean) / torch.sqrt(var)
        elif self.eps_inside:
            norm = (x - mean) / torch.sqrt(var + self.eps)
        else:
            norm = (x - mean) / (torch.sqrt(var) + self.eps)
        if self.swapped:
            return self.shift * norm + self.scale
        return self.scale * norm + self.shift


class UnbiasedVariance(Norm):
    unbiased = True


class NoEps(Norm):
    eps_inside = None


class EpsOutsideSqrt(Norm):
    eps_inside = False


class NormalisedOverBatch(Norm):
    dim = 0


class NoKeepdim(Norm):
    keepdim = False


class ScaleShiftSwapped(Norm):
    swapped = True


class NotYetNorm(gpt.LayerNorm):
    def forward(self, x):
        # YOUR CODE HERE
        raise NotImplementedError


class PostNorm(gpt.TransformerBlock):
    def forward(self, x):
        x = self.norm1(x + self.drop_shortcut(self.att(x)))
        return self.norm2(x + self.drop_shortcut(self.ff(x)))


class NoShortcut(gpt.TransformerBlock):
    def forward(self, x):
        x = self.drop_shortcut(self.att(self.norm1(x)))
        return self.drop_shortcut(self.ff(self.norm2(x)))


class Norm1Twice(gpt.TransformerBlock):
    def forward(self, x):
        x = x + self.drop_shortcut(self.att(self.norm1(x)))
        return x + self.drop_shortcut(self.ff(self.norm1(x)))


class Parallel(gpt.TransformerBlock):
    def forward(self, x):
        return (
            x
            + self.drop_shortcut(self.att(self.norm1(x)))
            + self.drop_shortcut(self.ff(self.norm2(x)))
        )


class NormedShortcut(gpt.TransformerBlock):
    def forward(self, x):
        x = self.norm1(x)
        x = x + self.drop_shortcut(self.att(x))
        x = self.norm2(x)
        return x + self.drop_shortcut(self.ff(x))


class NoShortcutDropout(gpt.TransformerBlock):
    def forward(self, x):
        x = x + self.att(self.norm1(x))
        return x + self.ff(self.norm2(x))


class LooksAhead(gpt.TransformerBlock):
    def forward(self, x):
        x = x + self.drop_shortcut(self.att(self.norm1(x).flip(1)).flip(1))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


# --- Chapter 5: the loss and top-k sampling -------------------------------------------------


def loss_inputs_as_targets(input_batch, target_batch, model, device):
    logits = model(input_batch.to(device))
    return F.cross_entropy(logits.flatten(0, 1), input_batch.flatten())


def loss_as_number(input_batch, target_batch, model, device):
    logits = model(input_batch.to(device))
    return F.cross_entropy(logits.flatten(0, 1), target_batch.flatten()).item()


def loss_after_softmax(input_batch, target_batch, model, device):
    probs = torch.softmax(model(input_batch.to(device)), dim=-1)
    return F.cross_entropy(probs.flatten(0, 1), target_batch.flatten())


def loss_summed(input_batch, target_batch, model, device):
    logits = model(input_batch.to(device))
    return F.cross_entropy(logits.flatten(0, 1), target_batch.flatten(), reduction="sum")


def loss_shifted_again(input_batch, target_batch, model, device):
    logits = model(input_batch.to(device))
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), target_batch[:, 1:].flatten())


def loss_counting_padding(input_batch, target_batch, model, device):
    logits = model(input_batch.to(device))
    losses = F.cross_entropy(logits.flatten(0, 1), target_batch.flatten(), reduction="none")
    return losses.mean()


def loss_without_gradient(input_batch, target_batch, model, device):
    with torch.no_grad():
        logits = model(input_batch.to(device))
    return F.cross_entropy(logits.flatten(0, 1), target_batch.flatten())


def loss_by_hand(input_batch, target_batch, model, device):
    log_probs = torch.log_softmax(model(input_batch.to(device)), dim=-1)
    return -log_probs.gather(-1, target_batch.unsqueeze(-1)).mean()  # -100 is no index


def not_yet_loss(input_batch, target_batch, model, device):
    # YOUR CODE HERE
    raise NotImplementedError


def top_k(logits, k, temperature):
    """The right answer, the book's way."""
    top_logits, _ = torch.topk(logits, k)
    logits = torch.where(logits < top_logits[:, -1:], torch.tensor(-torch.inf), logits)
    return torch.multinomial(torch.softmax(logits / temperature, dim=-1), num_samples=1)


def top_k_without_temperature(logits, k, temperature):
    top_logits, _ = torch.topk(logits, k)
    logits = torch.where(logits < top_logits[:, -1:], torch.tensor(-torch.inf), logits)
    return torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1)


def top_k_times_temperature(logits, k, temperature):
    return top_k(logits * temperature * temperature, k, temperature)


def top_k_filled_with_zero(logits, k, temperature):
    top_logits, _ = torch.topk(logits, k)
    logits = torch.where(logits < top_logits[:, -1:], torch.tensor(0.0), logits)
    return torch.multinomial(torch.softmax(logits / temperature, dim=-1), num_samples=1)


def top_k_argmax(logits, k, temperature):
    top_logits, _ = torch.topk(logits, k)
    logits = torch.where(logits < top_logits[:, -1:], torch.tensor(-torch.inf), logits)
    return torch.argmax(logits / temperature, dim=-1, keepdim=True)


def top_k_in_place(logits, k, temperature):
    top_logits, _ = torch.topk(logits, k)
    logits[logits < top_logits[:, -1:]] = -torch.inf
    return torch.multinomial(torch.softmax(logits / temperature, dim=-1), num_samples=1)


def top_k_one_row(logits, k, temperature):
    top_logits, _ = torch.topk(logits, k)
    logits = torch.where(logits < top_logits[-1], torch.tensor(-torch.inf), logits)  # row 0 only
    return torch.multinomial(torch.softmax(logits / temperature, dim=-1), num_samples=1)


def top_k_flat(logits, k, temperature):
    return top_k(logits, k, temperature).squeeze(-1)


def not_yet_top_k(logits, k, temperature):
    # YOUR CODE HERE
    raise NotImplementedError


# --- Chapter 6: the classifier's loss -------------------------------------------------------


def first_token_loss(input_batch, target_batch, model, device):
    return F.cross_entropy(model(input_batch)[:, 0, :], target_batch)


def mean_token_loss(input_batch, target_batch, model, device):
    return F.cross_entropy(model(input_batch).mean(dim=1), target_batch)


def every_token_loss(input_batch, target_batch, model, device):
    logits = model(input_batch)
    labels = target_batch.unsqueeze(1).expand(-1, logits.shape[1])
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


def softmax_classifier_loss(input_batch, target_batch, model, device):
    return F.cross_entropy(torch.softmax(model(input_batch)[:, -1, :], dim=-1), target_batch)


def classifier_loss_as_number(input_batch, target_batch, model, device):
    return F.cross_entropy(model(input_batch)[:, -1, :], target_batch).item()


# --- Chapter 7: the collate function --------------------------------------------------------


def collate(batch, pad_token_id=50256, ignore_index=-100, allowed_max_length=None, device="cpu",
            *, shift=1, extra=1, mask="after_first", pad=None):  # fmt: skip
    """A learner's custom_collate_fn, with knobs for their mistakes."""
    pad = pad_token_id if pad is None else pad
    longest = max(len(item) for item in batch) + extra
    inputs, targets = [], []
    for item in batch:
        padded = item + [pad] * (longest - len(item))
        x = torch.tensor(padded[:-1])
        y = torch.tensor(padded[shift:] if shift else padded[:-1])
        is_pad = (y == pad).nonzero().flatten()
        if mask == "after_first" and len(is_pad) > 1:
            y[is_pad[1:]] = ignore_index
        elif mask == "all":
            y[is_pad] = ignore_index
        if allowed_max_length is not None:
            x, y = x[:allowed_max_length], y[:allowed_max_length]
        inputs.append(x)
        targets.append(y)
    return torch.stack(inputs).to(device), torch.stack(targets).to(device)


def collate_not_shifted(batch, **options):
    return collate(batch, **options, shift=0)


def collate_without_mask(batch, **options):
    return collate(batch, **options, mask="none")


def collate_masking_every_pad(batch, **options):
    return collate(batch, **options, mask="all")


def collate_padding_to_longest(batch, **options):
    return collate(batch, **options, extra=0)


def collate_ignoring_max_length(batch, allowed_max_length=None, **options):
    return collate(batch, **options)


def collate_with_fixed_pad(batch, **options):
    return collate(batch, **options, pad=50256)


def not_yet_collate(batch, pad_token_id=50256, ignore_index=-100, allowed_max_length=None,
                    device="cpu"):  # fmt: skip
    # YOUR CODE HERE
    raise NotImplementedError


# --- the cases ------------------------------------------------------------------------------


def reference_top_k(logits, k, temperature):
    return pretraining.pick_next_token(logits, temperature, k)


RIGHT = [
    (practice.sliding_window_dataset, dataset.GPTDatasetV1),
    (practice.sliding_window_dataset, Windows),
    (practice.causal_attention, attention.CausalAttention),
    (practice.causal_attention, Causal),
    (practice.multi_head_attention, attention.MultiHeadAttention),
    (practice.multi_head_attention, MultiHead),
    (practice.layer_norm, gpt.LayerNorm),
    (practice.layer_norm, Norm),
    (practice.transformer_block, gpt.TransformerBlock),
    (practice.loss_batch, pretraining.calc_loss_batch),
    (practice.top_k_sampling, reference_top_k),
    (practice.top_k_sampling, top_k),
    (practice.classifier_loss, classification.calc_classification_loss_batch),
    (practice.instruction_collate, instruction.custom_collate_fn),
    (practice.instruction_collate, collate),
]


@pytest.mark.parametrize(
    "check, candidate", RIGHT, ids=[f"{c.__name__}-{x.__name__}" for c, x in RIGHT]
)
def test_the_course_code_passes(check, candidate, capsys):
    outcome = outcome_of(check, candidate, capsys)
    assert outcome.passed, outcome.message
    assert outcome.message.startswith("✓ ") and ": right. " in outcome.message


NOT_YET = [
    (practice.sliding_window_dataset, NotYetDataset),
    (practice.causal_attention, NotYetCausal),
    (practice.layer_norm, NotYetNorm),
    (practice.loss_batch, not_yet_loss),
    (practice.top_k_sampling, not_yet_top_k),
    (practice.classifier_loss, not_yet_loss),
    (practice.instruction_collate, not_yet_collate),
]


@pytest.mark.parametrize("check, blank", NOT_YET, ids=[c.__name__ for c, _ in NOT_YET])
def test_a_blank_is_not_implemented_yet_not_a_traceback(check, blank, capsys):
    outcome = outcome_of(check, blank, capsys)
    assert outcome.status == practice.NOT_IMPLEMENTED and not outcome.passed
    assert "not implemented yet" in outcome.message and "Traceback" not in outcome.message


WRONG = [
    # (check, wrong code, what the message must say)
    (practice.sliding_window_dataset, TargetsNotShifted, "targets are not shifted by one"),
    (practice.sliding_window_dataset, TargetsShiftedByTwo, "targets are shifted by 2, not by one"),
    (practice.sliding_window_dataset, StrideIgnored, "windows start every 1 token instead of every stride=3"),
    (practice.sliding_window_dataset, StepsByMaxLength, "every 4 tokens (max_length) instead of every stride=3"),
    (practice.sliding_window_dataset, LastWindowMissing, "the last window (starting at token 15) is missing"),
    (practice.sliding_window_dataset, WindowsOneTooLong, "inputs have shape (5,), expected (4,)"),
    (practice.sliding_window_dataset, OwnTokenizer, "not the ids of the tokenizer passed in"),
    (practice.causal_attention, MaskAfterSoftmax, "position 0 can see position 1 (changing token 1 changes the output at position 0): the mask is applied after softmax"),
    (practice.causal_attention, NoMask, "position 0 can see position 1 (changing token 1 changes the output at position 0): no causal mask is applied"),
    (practice.causal_attention, MaskFilledWithZero, "can see position 1 (changing token 1 changes the output at position 0): future scores are set to 0 instead of -inf"),
    (practice.causal_attention, MaskHidesItself, "the mask also hides each token from itself"),
    (practice.causal_attention, NotScaled, "the scores are not scaled"),
    (practice.causal_attention, SoftmaxOverQueries, "position 0 can see position 1 (changing token 1 changes the output at position 0): the softmax runs over the wrong dimension"),
    (practice.causal_attention, MaskNotSliced, "forward on x of shape (2, 6, 3) raised RuntimeError: The size of tensor a (8) must match"),
    (practice.causal_attention, DropoutOnOutput, "apply self.dropout once, to the attention weights"),
    (practice.multi_head_attention, HeadsNotMerged, "shapes (2, 2, 6, 3) vs expected (2, 6, 6): heads not merged"),
    (practice.multi_head_attention, MergedWithoutTranspose, "the heads are merged without transposing back"),
    (practice.multi_head_attention, SplitWithoutTranspose, "the heads are split with view alone"),
    (practice.multi_head_attention, ScaledByDOut, "scaled by sqrt(d_out) instead of sqrt(head_dim)"),
    (practice.multi_head_attention, NoOutProj, "out_proj is not applied"),
    (practice.multi_head_attention, RenamedWeights, "causal and shaped right, but cannot compare with shared.attention.MultiHeadAttention on the same weights"),
    (practice.layer_norm, UnbiasedVariance, "the variance is the unbiased one"),
    (practice.layer_norm, NoEps, "no eps: a row whose values are all equal has variance 0 and becomes NaN"),
    (practice.layer_norm, EpsOutsideSqrt, "eps is added after the square root"),
    (practice.layer_norm, NormalisedOverBatch, "it normalises over dimension 0, not over the last one"),
    (practice.layer_norm, NoKeepdim, "Keep the reduced dimension (keepdim=True)"),
    (practice.layer_norm, ScaleShiftSwapped, "scale and shift are swapped"),
    (practice.transformer_block, PostNorm, "the layer norms come after the shortcuts (post-LN"),
    (practice.transformer_block, NoShortcut, "no shortcut connections"),
    (practice.transformer_block, Norm1Twice, "norm1 is used before the feed-forward too"),
    (practice.transformer_block, Parallel, "the feed-forward reads the block's input"),
    (practice.transformer_block, NormedShortcut, "the shortcut adds the normalised input"),
    (practice.transformer_block, NoShortcutDropout, "apply self.drop_shortcut"),
    (practice.transformer_block, LooksAhead, "position 0 can see position 1"),
    (practice.loss_batch, loss_inputs_as_targets, "the targets are not shifted by one"),
    (practice.loss_batch, loss_as_number, "returned a Python number"),
    (practice.loss_batch, loss_after_softmax, "softmax is applied before cross_entropy"),
    (practice.loss_batch, loss_summed, "summed instead of averaged"),
    (practice.loss_batch, loss_shifted_again, "the targets are shifted a second time"),
    (practice.loss_batch, loss_counting_padding, "padding tokens count in the loss"),
    (practice.loss_batch, loss_without_gradient, "has no gradient"),
    (practice.loss_batch, loss_by_hand, "targets with -100 at ignored positions, model, 'cpu') raised"),
    (practice.top_k_sampling, top_k_without_temperature, "the temperature is ignored"),
    (practice.top_k_sampling, top_k_times_temperature, "multiplied by the temperature instead of divided"),
    (practice.top_k_sampling, top_k_filled_with_zero, "which is not among its 3 most likely tokens"),
    (practice.top_k_sampling, top_k_argmax, "every draw is the row's most likely token"),
    (practice.top_k_sampling, top_k_in_place, "it changed the logits passed in"),
    (practice.top_k_sampling, top_k_one_row, "Does the k-th largest value keep its row dimension?"),
    (practice.top_k_sampling, top_k_flat, "shapes (10000,) vs expected (10000, 1)"),
    (practice.classifier_loss, first_token_loss, "it reads the first token's logits"),
    (practice.classifier_loss, mean_token_loss, "it averages the logits over all tokens"),
    (practice.classifier_loss, every_token_loss, "it computes a loss at every token"),
    (practice.classifier_loss, softmax_classifier_loss, "softmax is applied before cross_entropy"),
    (practice.classifier_loss, classifier_loss_as_number, "returned a Python number"),
    (practice.instruction_collate, collate_not_shifted, "targets are not shifted by one"),
    (practice.instruction_collate, collate_without_mask, "padding tokens count in the loss"),
    (practice.instruction_collate, collate_masking_every_pad, "the first end-of-text token is masked too"),
    (practice.instruction_collate, collate_padding_to_longest, "pad every entry to the longest entry's length + 1"),
    (practice.instruction_collate, collate_ignoring_max_length, "allowed_max_length=3 is ignored"),
    (practice.instruction_collate, collate_with_fixed_pad, "pad_token_id is ignored"),
]  # fmt: skip


@pytest.mark.parametrize(
    "check, wrong, expected", WRONG, ids=[f"{c.__name__}-{w.__name__}" for c, w, _ in WRONG]
)
def test_wrong_code_gets_the_message_meant_for_it(check, wrong, expected, capsys):
    outcome = outcome_of(check, wrong, capsys)
    assert outcome.status == practice.FAILED, outcome.message
    assert outcome.message.startswith("✗ ")
    assert expected in outcome.message


def test_every_check_is_tested_with_three_wrong_implementations_or_more():
    checks = [
        practice.sliding_window_dataset,
        practice.causal_attention,
        practice.multi_head_attention,
        practice.layer_norm,
        practice.transformer_block,
        practice.loss_batch,
        practice.top_k_sampling,
        practice.classifier_loss,
        practice.instruction_collate,
    ]
    counts = {c.__name__: sum(1 for w in WRONG if w[0] is c) for c in checks}
    assert min(counts.values()) >= 3, counts


def test_an_error_names_the_learners_line(capsys):
    outcome = outcome_of(practice.causal_attention, MaskNotSliced, capsys)
    assert "(at: scores = scores.masked_fill(mask, self.fill))" in outcome.message
    assert "slice the mask to the input's length: self.mask[:num_tokens, :num_tokens]" in (
        outcome.message
    )


def test_a_check_leaves_the_callers_random_numbers_alone(capsys):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    practice.causal_attention(attention.CausalAttention)
    assert torch.equal(torch.rand(3), expected)


def test_the_outcome_shows_nothing_more_as_a_cells_value():
    outcome = practice.Outcome("x", practice.PASSED, "✓ x: right.")
    assert outcome._ipython_display_() is None and str(outcome) == "✓ x: right."


def test_an_instance_or_a_value_instead_of_the_class_or_function_is_named(capsys):
    module = attention.CausalAttention(3, 2, 8, 0.0)
    outcome = outcome_of(practice.causal_attention, module, capsys)
    assert outcome.message == (
        "✗ causal attention: pass the class itself, not a CausalAttention object: "
        "check.causal_attention(YourName), without parentheses after YourName"
    )
    outcome = outcome_of(practice.loss_batch, torch.tensor(2.0), capsys)
    assert "pass the function itself, not a Tensor object" in outcome.message


def test_a_list_instead_of_a_tensor_is_named(capsys):
    class Lists(Windows):
        def __getitem__(self, index):
            return tuple(t.tolist() for t in self.items[index])

    outcome = outcome_of(practice.sliding_window_dataset, Lists, capsys)
    assert "item 0's input_ids is a list, not a tensor" in outcome.message
