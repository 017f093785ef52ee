"""shared.practice's checks of the PyTorch primer (ch02/pytorch-primer.ipynb), tested both ways:
each passes on right code and fails, with the message meant for it, on wrong code written the way
learners write it (the functions and classes below, one mistake each)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shared import device as course_device
from shared import practice
from tests.test_practice import outcome_of  # runs a check, asserts it printed one verdict

pytestmark = pytest.mark.usefixtures("one_thread")


# --- tensors --------------------------------------------------------------------------------


def to_batch(rows):
    return torch.tensor(rows)


def to_batch_stacked(rows):
    return torch.stack([torch.tensor(row) for row in rows])


def to_batch_float(rows):
    return torch.Tensor(rows)


def to_batch_cat(rows):
    return torch.cat([torch.tensor(row) for row in rows])


def to_batch_columns(rows):
    return torch.stack([torch.tensor(row) for row in rows], dim=1)


def to_batch_list(rows):
    return rows


def to_batch_not_yet(rows):
    # YOUR CODE HERE
    raise NotImplementedError


# --- broadcasting ---------------------------------------------------------------------------


def normalize_rows(x):
    return x / x.sum(dim=-1, keepdim=True)


def normalize_without_keepdim(x):
    return x / x.sum(dim=-1)


def normalize_columns(x):
    return x / x.sum(dim=0, keepdim=True)


def normalize_dim_1(x):
    return x / x.sum(dim=1, keepdim=True)


def normalize_by_total(x):
    return x / x.sum()


def normalize_in_place(x):
    x /= x.sum(dim=-1, keepdim=True)
    return x


# --- autograd -------------------------------------------------------------------------------


def sgd_step(w, x, y, lr):
    loss = ((x @ w - y) ** 2).mean()
    loss.backward()
    with torch.no_grad():
        w -= lr * w.grad
    w.grad = None


def sgd_step_autograd_grad(w, x, y, lr):
    loss = ((x @ w - y) ** 2).mean()
    (grad,) = torch.autograd.grad(loss, w)
    with torch.no_grad():
        w.sub_(lr * grad)


def sgd_step_without_zeroing(w, x, y, lr):
    loss = ((x @ w - y) ** 2).mean()
    loss.backward()
    with torch.no_grad():
        w -= lr * w.grad


def sgd_step_uphill(w, x, y, lr):
    loss = ((x @ w - y) ** 2).mean()
    loss.backward()
    with torch.no_grad():
        w += lr * w.grad
    w.grad = None


def sgd_step_rebinding(w, x, y, lr):
    loss = ((x @ w - y) ** 2).mean()
    loss.backward()
    with torch.no_grad():
        w = w - lr * w.grad  # noqa: F841  (the mistake: a new local tensor)


def sgd_step_outside_no_grad(w, x, y, lr):
    loss = ((x @ w - y) ** 2).mean()
    loss.backward()
    w -= lr * w.grad


def sgd_step_detached(w, x, y, lr):
    loss = ((x @ w - y) ** 2).mean()
    loss.backward()
    with torch.no_grad():
        w -= lr * w.grad
    w.requires_grad_(False)


# --- nn.Module ------------------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self, sizes):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


class MLPSequential(MLP):
    def __init__(self, sizes):
        nn.Module.__init__(self)
        self.layers = nn.Sequential(*(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])))


class MLPInAList(MLP):
    def __init__(self, sizes):
        nn.Module.__init__(self)
        self.layers = [nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])]


class MLPOneLayerShort(MLP):
    def __init__(self, sizes):
        nn.Module.__init__(self)
        self.layers = nn.ModuleList(
            nn.Linear(sizes[i], sizes[i + 1]) for i in range(len(sizes) - 2)
        )


class MLPWithoutBias(MLP):
    def __init__(self, sizes):
        nn.Module.__init__(self)
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(sizes, sizes[1:]))


class MLPSquareLayers(MLP):
    def __init__(self, sizes):
        nn.Module.__init__(self)
        self.layers = nn.ModuleList(nn.Linear(a, a) for a in sizes[:-1])


class MLPReluAtTheEnd(MLP):
    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


class MLPNotYet(nn.Module):
    def __init__(self, sizes):
        super().__init__()
        # YOUR CODE HERE
        raise NotImplementedError


# --- a training loop ------------------------------------------------------------------------


def train_epoch(model, loader, optimizer):
    total = 0.0
    for inputs, targets in loader:
        loss = F.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total / len(loader)


def train_epoch_without_zero_grad(model, loader, optimizer):
    total = 0.0
    for inputs, targets in loader:
        loss = F.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total / len(loader)


def train_epoch_without_step(model, loader, optimizer):
    total = 0.0
    for inputs, targets in loader:
        loss = F.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        total += loss.item()
    return total / len(loader)


def train_epoch_zeroing_before_step(model, loader, optimizer):
    total = 0.0
    for inputs, targets in loader:
        loss = F.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.zero_grad()
        optimizer.step()
        total += loss.item()
    return total / len(loader)


def train_epoch_summing(model, loader, optimizer):
    total = 0.0
    for inputs, targets in loader:
        loss = F.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total


def train_epoch_last_loss(model, loader, optimizer):
    for inputs, targets in loader:
        loss = F.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


def train_epoch_tensor(model, loader, optimizer):
    total = 0.0
    for inputs, targets in loader:
        loss = F.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss
    return total / len(loader)


# --- saving and loading ---------------------------------------------------------------------


def save(model, path):
    torch.save(model.state_dict(), path)


def save_whole_model(model, path):
    torch.save(model, path)


def save_method(model, path):
    torch.save(model.state_dict, path)


def save_parameter_list(model, path):
    torch.save(list(model.parameters()), path)


def save_arguments_swapped(model, path):
    torch.save(path, model.state_dict())


def load(model, path):
    model.load_state_dict(torch.load(path, weights_only=True))
    return model


def load_without_weights_only(model, path):
    model.load_state_dict(torch.load(path))
    return model


def load_unsafely(model, path):
    model.load_state_dict(torch.load(path, weights_only=False))
    return model


def load_the_path(model, path):
    model.load_state_dict(path)
    return model


def load_rebinding(model, path):
    model = torch.load(path, weights_only=True)
    return model


def load_returning_report(model, path):
    return model.load_state_dict(torch.load(path, weights_only=True))


def load_not_yet(model, path):
    # YOUR CODE HERE
    raise NotImplementedError


# --- devices --------------------------------------------------------------------------------


def run_on(model, batch, device):
    model.to(device)
    batch = batch.to(device)
    return model(batch)


def run_on_batch_not_kept(model, batch, device):
    model.to(device)
    batch.to(device)
    return model(batch)


def run_on_cuda(model, batch, device):
    model.to("cuda")
    return model(batch.to("cuda"))


def run_on_the_best_device(model, batch, device):
    device = course_device.get_device()
    model.to(device)
    return model(batch.to(device))


def run_on_batch_only(model, batch, device):
    return model(batch.to(device))


# --- the operations the course leans on -----------------------------------------------------


def split_heads(x, num_heads):
    b, n, d = x.shape
    return x.view(b, n, num_heads, d // num_heads).transpose(1, 2)


def split_heads_permuted(x, num_heads):
    b, n, d = x.shape
    return x.reshape(b, n, num_heads, d // num_heads).permute(0, 2, 1, 3)


def split_heads_direct_view(x, num_heads):
    b, n, d = x.shape
    return x.view(b, num_heads, n, d // num_heads)


def split_heads_not_transposed(x, num_heads):
    b, n, d = x.shape
    return x.view(b, n, num_heads, d // num_heads)


def split_heads_transposed_first(x, num_heads):
    b, n, d = x.shape
    return x.transpose(1, 2).reshape(b, num_heads, n, d // num_heads)


def split_heads_true_division(x, num_heads):
    b, n, d = x.shape
    return x.view(b, n, num_heads, d / num_heads).transpose(1, 2)


def masked_softmax(scores, pad_mask):
    return torch.softmax(scores.masked_fill(pad_mask, -torch.inf), dim=-1)


def masked_softmax_zero(scores, pad_mask):
    return torch.softmax(scores.masked_fill(pad_mask, 0.0), dim=-1)


def masked_softmax_after(scores, pad_mask):
    return torch.softmax(scores, dim=-1).masked_fill(pad_mask, 0.0)


def masked_softmax_inverted(scores, pad_mask):
    return torch.softmax(scores.masked_fill(~pad_mask, -torch.inf), dim=-1)


def masked_softmax_dim_0(scores, pad_mask):
    return torch.softmax(scores.masked_fill(pad_mask, -torch.inf), dim=0)


def masked_softmax_in_place(scores, pad_mask):
    return torch.softmax(scores.masked_fill_(pad_mask, -torch.inf), dim=-1)


def masked_softmax_float_mask(scores, pad_mask):
    return torch.softmax(scores.masked_fill(pad_mask.float(), -torch.inf), dim=-1)


def cross_entropy(logits, targets):
    log_probs = torch.log_softmax(logits, dim=-1)
    return -log_probs[torch.arange(len(targets)), targets].mean()


def cross_entropy_gather(logits, targets):
    log_probs = torch.log_softmax(logits, dim=-1)
    return -log_probs.gather(1, targets.unsqueeze(1)).mean()


def cross_entropy_log_of_softmax(logits, targets):
    probs = torch.softmax(logits, dim=-1)
    return -torch.log(probs[torch.arange(len(targets)), targets]).mean()


def cross_entropy_no_minus(logits, targets):
    log_probs = torch.log_softmax(logits, dim=-1)
    return log_probs[torch.arange(len(targets)), targets].mean()


def cross_entropy_summed(logits, targets):
    log_probs = torch.log_softmax(logits, dim=-1)
    return -log_probs[torch.arange(len(targets)), targets].sum()


def cross_entropy_grid(logits, targets):
    return -torch.log_softmax(logits, dim=-1)[:, targets].mean()


def cross_entropy_raw_logits(logits, targets):
    return -logits[torch.arange(len(targets)), targets].mean()


def cross_entropy_over_rows(logits, targets):
    return -torch.log_softmax(logits, dim=0)[torch.arange(len(targets)), targets].mean()


def cross_entropy_as_number(logits, targets):
    return cross_entropy(logits, targets).item()


class CausalMask(nn.Module):
    diagonal, kind = 1, "buffer"

    def __init__(self, context_length):
        super().__init__()
        ones = torch.ones(context_length, context_length, dtype=torch.bool)
        mask = torch.triu(ones, diagonal=self.diagonal)
        if self.kind == "buffer":
            self.register_buffer("mask", mask, persistent=False)
        elif self.kind == "plain":
            self.mask = mask
        elif self.kind == "parameter":
            self.mask = nn.Parameter(mask.float(), requires_grad=False)
        elif self.kind == "float":
            self.register_buffer("mask", mask.float())
        elif self.kind == "tril":
            self.register_buffer("mask", torch.tril(ones, diagonal=-1))

    def forward(self, scores):
        n = scores.shape[-1]
        return scores.masked_fill(self.mask[:n, :n], -torch.inf)


class PersistentMask(CausalMask):
    def __init__(self, context_length):
        nn.Module.__init__(self)
        self.register_buffer(
            "mask", torch.triu(torch.ones(context_length, context_length), 1).bool()
        )


class MaskAsAttribute(CausalMask):
    kind = "plain"


class MaskAsParameter(CausalMask):
    kind = "parameter"


class MaskOfFloats(CausalMask):
    kind = "float"


class MaskHidingItself(CausalMask):
    diagonal = 0


class MaskHidingThePast(CausalMask):
    kind = "tril"


class MaskNotYet(nn.Module):
    def __init__(self, context_length):
        super().__init__()
        # YOUR CODE HERE
        raise NotImplementedError

    def forward(self, scores):
        n = scores.shape[-1]
        return scores.masked_fill(self.mask[:n, :n], -torch.inf)


# --- the tests ------------------------------------------------------------------------------

CHECKS = [
    practice.tensor_batch,
    practice.row_normalize,
    practice.gradient_step,
    practice.mlp,
    practice.training_loop,
    practice.save_weights,
    practice.load_weights,
    practice.device_move,
    practice.split_heads,
    practice.masked_softmax,
    practice.cross_entropy_by_hand,
    practice.mask_buffer,
]

RIGHT = [
    (practice.tensor_batch, to_batch),
    (practice.tensor_batch, to_batch_stacked),
    (practice.row_normalize, normalize_rows),
    (practice.gradient_step, sgd_step),
    (practice.gradient_step, sgd_step_autograd_grad),
    (practice.mlp, MLP),
    (practice.mlp, MLPSequential),
    (practice.training_loop, train_epoch),
    (practice.save_weights, save),
    (practice.load_weights, load),
    (practice.device_move, run_on),
    (practice.split_heads, split_heads),
    (practice.split_heads, split_heads_permuted),
    (practice.masked_softmax, masked_softmax),
    (practice.cross_entropy_by_hand, cross_entropy),
    (practice.cross_entropy_by_hand, cross_entropy_gather),
    (practice.cross_entropy_by_hand, F.cross_entropy),
    (practice.mask_buffer, CausalMask),
    (practice.mask_buffer, PersistentMask),
]


@pytest.mark.parametrize(
    "check, candidate", RIGHT, ids=[f"{c.__name__}-{x.__name__}" for c, x in RIGHT]
)
def test_right_code_passes(check, candidate, capsys):
    outcome = outcome_of(check, candidate, capsys)
    assert outcome.passed, outcome.message
    assert outcome.message.startswith("✓ ") and ": right. " in outcome.message


NOT_YET = [
    (practice.tensor_batch, to_batch_not_yet),
    (practice.mlp, MLPNotYet),
    (practice.load_weights, load_not_yet),
    (practice.mask_buffer, MaskNotYet),
]


@pytest.mark.parametrize("check, blank", NOT_YET, ids=[c.__name__ for c, _ in NOT_YET])
def test_a_blank_is_not_implemented_yet(check, blank, capsys):
    outcome = outcome_of(check, blank, capsys)
    assert outcome.status == practice.NOT_IMPLEMENTED
    assert "not implemented yet" in outcome.message and "Traceback" not in outcome.message


WRONG = [
    # (check, wrong code, what the message must say)
    (practice.tensor_batch, to_batch_float, "the ids are torch.float32: token ids are integers"),
    (practice.tensor_batch, to_batch_cat, "shape (6,) vs expected (2, 3): the rows were joined end to end"),
    (practice.tensor_batch, to_batch_columns, "shape (3, 2) vs expected (2, 3): one column per list"),
    (practice.tensor_batch, to_batch_list, "is a list, not a tensor"),
    (practice.row_normalize, normalize_without_keepdim, "the sums lost their dimension"),
    (practice.row_normalize, normalize_columns, "each column is divided by its sum (dim=0)"),
    (practice.row_normalize, normalize_dim_1, "dim=1 is the last dimension of a matrix only: for a batch of shape (2, 3, 3)"),
    (practice.row_normalize, normalize_by_total, "it divides by the sum of the whole tensor"),
    (practice.row_normalize, normalize_in_place, "it changed the tensor passed in"),
    (practice.gradient_step, sgd_step_without_zeroing, "the second step used the sum of both steps' gradients"),
    (practice.gradient_step, sgd_step_uphill, "w moved along the gradient, up the loss"),
    (practice.gradient_step, sgd_step_rebinding, "w is unchanged after step 1"),
    (practice.gradient_step, sgd_step_outside_no_grad, "raised RuntimeError: a leaf Variable that requires grad is being used in an in-place operation. (at: w -= lr * w.grad). Autograd records"),
    (practice.gradient_step, sgd_step_detached, "w no longer requires a gradient"),
    (practice.mlp, MLPInAList, "model.parameters() is empty, so an optimizer would train nothing: self.layers is a list"),
    (practice.mlp, MLPOneLayerShort, "2 layers for sizes (4, 8, 8, 2), expected 3"),
    (practice.mlp, MLPWithoutBias, "the layers have no biases"),
    (practice.mlp, MLPSquareLayers, "parameter layers.0.weight has shape (4, 4), expected (8, 4)"),
    (practice.mlp, MLPReluAtTheEnd, "the outputs differ from the layers applied in order"),
    (practice.training_loop, train_epoch_without_zero_grad, "the gradients add up across batches"),
    (practice.training_loop, train_epoch_without_step, "the gradients are computed but never applied"),
    (practice.training_loop, train_epoch_zeroing_before_step, "the weights never changed and no gradients are left"),
    (practice.training_loop, train_epoch_summing, "it returns the sum of the batch losses"),
    (practice.training_loop, train_epoch_last_loss, "it returns the last batch's loss"),
    (practice.training_loop, train_epoch_tensor, "it returns a tensor"),
    (practice.save_weights, save_whole_model, "the file holds the whole model"),
    (practice.save_weights, save_method, "the file holds the state_dict method itself"),
    (practice.save_weights, save_parameter_list, "a list of tensors without their names"),
    (practice.save_weights, save_arguments_swapped, "torch.save(obj, path): the object comes first"),
    (practice.load_weights, load_without_weights_only, "torch.load is called without weights_only=True"),
    (practice.load_weights, load_unsafely, "torch.load is called without weights_only=True"),
    (practice.load_weights, load_the_path, "load_state_dict takes the dict that torch.load"),
    (practice.load_weights, load_rebinding, "the model passed in keeps its old weights"),
    (practice.load_weights, load_returning_report, "it returns what load_state_dict returns"),
    (practice.device_move, run_on_batch_not_kept, "batch = batch.to(device) (tensor.to returns a moved copy: keep it)"),
    (practice.device_move, run_on_the_best_device, "asked for device 'meta', the outputs are on cpu"),
    (practice.device_move, run_on_batch_only, "The model and its input must be on the same device: move both"),
    (practice.split_heads, split_heads_direct_view, "a direct view to (b, num_heads, num_tokens, head_dim)"),
    (practice.split_heads, split_heads_not_transposed, "shape (2, 3, 2, 4) vs expected (2, 2, 3, 4): split, but"),
    (practice.split_heads, split_heads_transposed_first, "it transposes before splitting"),
    (practice.split_heads, split_heads_true_division, "d // num_heads, not d / num_heads"),
    (practice.masked_softmax, masked_softmax_zero, "filled with 0 instead of -inf"),
    (practice.masked_softmax, masked_softmax_after, "the mask is applied after softmax"),
    (practice.masked_softmax, masked_softmax_inverted, "the mask is inverted"),
    (practice.masked_softmax, masked_softmax_dim_0, "the softmax runs over dim=0"),
    (practice.masked_softmax, masked_softmax_in_place, "it changed the scores passed in"),
    (practice.masked_softmax, masked_softmax_float_mask, "masked_fill takes a bool mask"),
    (practice.cross_entropy_by_hand, cross_entropy_log_of_softmax, "for a batch with a row of logits [0, 120, -120] the loss is inf, F.cross_entropy gives 61.6"),
    (practice.cross_entropy_by_hand, cross_entropy_no_minus, "the sign is missing"),
    (practice.cross_entropy_by_hand, cross_entropy_summed, "summed instead of averaged"),
    (practice.cross_entropy_by_hand, cross_entropy_grid, "an N x N grid"),
    (practice.cross_entropy_by_hand, cross_entropy_raw_logits, "the logits are used without log_softmax"),
    (practice.cross_entropy_by_hand, cross_entropy_over_rows, "the softmax runs over dim=0"),
    (practice.cross_entropy_by_hand, cross_entropy_as_number, "returned a Python number"),
    (practice.mask_buffer, MaskAsAttribute, "self.mask is a plain attribute, not a buffer"),
    (practice.mask_buffer, MaskAsParameter, "the mask is a parameter (nn.Parameter)"),
    (practice.mask_buffer, MaskOfFloats, "the mask is torch.float32: masked_fill takes a bool mask"),
    (practice.mask_buffer, MaskHidingItself, "the mask hides each token from itself too"),
    (practice.mask_buffer, MaskHidingThePast, "the mask hides the past instead of the future"),
]  # fmt: skip


@pytest.mark.parametrize(
    "check, wrong, expected", WRONG, ids=[f"{c.__name__}-{w.__name__}" for c, w, _ in WRONG]
)
def test_wrong_code_gets_the_message_meant_for_it(check, wrong, expected, capsys):
    outcome = outcome_of(check, wrong, capsys)
    assert outcome.status == practice.FAILED, outcome.message
    assert outcome.message.startswith("✗ ")
    assert expected in outcome.message


def test_every_primer_check_is_tested_right_and_wrong_three_times_or_more():
    counts = {check.__name__: sum(1 for w in WRONG if w[0] is check) for check in CHECKS}
    assert min(counts.values()) >= 3, counts
    assert {c.__name__ for c, _ in RIGHT} == set(counts)


def test_a_device_written_in_the_code_is_named(capsys):
    outcome = outcome_of(practice.device_move, run_on_cuda, capsys)
    assert outcome.status == practice.FAILED
    if torch.cuda.is_available():
        assert "asked for the CPU, it ran on cuda" in outcome.message
    else:
        assert "Use the device passed in, not a device name written in the code" in (
            outcome.message
        )


def test_the_checks_leave_no_file_behind_and_the_random_numbers_alone(
    capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for check, candidate in ((practice.save_weights, save), (practice.load_weights, load)):
        assert outcome_of(check, candidate, capsys).passed
    assert torch.equal(torch.rand(3), expected)
    assert list(tmp_path.iterdir()) == []
