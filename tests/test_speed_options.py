"""shared.speed: the training options give the plain loop's results, or the documented ones."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from shared.dataset import create_dataloader_v1
from shared.pretraining import calc_loss_batch, train_model_simple
from shared.speed import (
    TrainingOptions,
    accumulation_groups,
    apply_lr_schedule,
    autocast_context,
    learning_rate_at,
    make_adamw,
    steps_per_epoch,
    train_model,
    train_step,
    unwrap_model,
)
from shared.tokenizers import gpt2_tokenizer
from tests.conftest import TEXT, TINY, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

LOSS = calc_loss_batch  # the loss train_step is given: Chapter 5's next-token cross-entropy


def global_batch(rows: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token windows: inputs and targets, each (rows, 12)."""
    ids = torch.randint(
        0, TINY["vocab_size"], (rows, 13), generator=torch.Generator().manual_seed(seed)
    )
    return ids[:, :-1], ids[:, 1:]


def grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def total_norm(tensors) -> float:
    return torch.linalg.vector_norm(torch.stack([t.norm() for t in tensors])).item()


# Learning-rate schedule


def test_warmup_then_cosine_values_at_key_steps():
    lr = lambda step: learning_rate_at(step, 110, 1e-3, 10, True, 1e-5)  # noqa: E731
    assert lr(0) == pytest.approx(1e-4)  # first warmup step: peak / warmup_steps
    assert lr(4) == pytest.approx(5e-4)
    assert lr(9) == pytest.approx(1e-3)  # last warmup step reaches the peak
    assert lr(10) == pytest.approx(1e-3)  # decay starts at the peak
    assert lr(60) == pytest.approx((1e-3 + 1e-5) / 2)  # half way: the mean of peak and min
    assert lr(35) == pytest.approx(1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi / 4)) / 2)
    assert lr(109) == pytest.approx(1e-5, abs=1e-6) and lr(109) > 1e-5
    assert lr(110) == lr(500) == pytest.approx(1e-5)  # past the end: min_lr
    values = [lr(s) for s in range(110)]
    assert all(a < b for a, b in zip(values[:9], values[1:10]))
    assert all(a > b for a, b in zip(values[10:], values[11:]))


def test_schedule_without_cosine_or_warmup():
    assert learning_rate_at(50, 100, 3e-4, warmup_steps=10) == 3e-4  # warmup, then constant
    assert learning_rate_at(0, 100, 3e-4, cosine_decay=True) == 3e-4  # cosine from step 0
    assert learning_rate_at(99, 100, 3e-4) == 3e-4
    assert learning_rate_at(3, 4, 1.0, warmup_steps=8, cosine_decay=True) == 0.5  # all warmup


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 10, 1e-3), "step >= 0"),
        ((0, 0, 1e-3), "total_steps >= 1"),
        ((0, 10, 1e-3, -2), "warmup_steps"),
        ((0, 10, 1e-3, 0, True, 2e-3), "min_lr <= peak_lr"),
    ],
)
def test_schedule_rejects_bad_settings(args, message):
    with pytest.raises(ValueError, match=message):
        learning_rate_at(*args)


def test_apply_lr_schedule_keeps_the_peak_across_a_state_dict_round_trip():
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    options = TrainingOptions(warmup_steps=4, cosine_decay=True, min_lr=1e-4)
    apply_lr_schedule(optimizer, 1, 20, options)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    restored = torch.optim.AdamW(model.parameters(), lr=123.0)
    restored.load_state_dict(optimizer.state_dict())
    apply_lr_schedule(restored, 12, 20, options)
    assert restored.param_groups[0]["initial_lr"] == 1e-3
    assert restored.param_groups[0]["lr"] == pytest.approx(
        learning_rate_at(12, 20, 1e-3, 4, True, 1e-4)
    )
    plain = torch.optim.AdamW(model.parameters(), lr=1e-3)
    apply_lr_schedule(plain, 5, 20, TrainingOptions())  # no schedule: nothing changes
    assert plain.param_groups[0]["lr"] == 1e-3 and "initial_lr" not in plain.param_groups[0]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("grad_accumulation_steps", 0),
        ("warmup_steps", -1),
        ("min_lr", -1e-3),
        ("max_grad_norm", 0.0),
    ],
)
def test_options_reject_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        TrainingOptions(**{field: value})


# One training step


def test_default_step_is_the_books_step():
    inputs, targets = global_batch()
    model_a, model_b = tiny_model(), tiny_model()
    opt_a = torch.optim.AdamW(model_a.parameters(), lr=1e-2, weight_decay=0.1)
    opt_b = torch.optim.AdamW(model_b.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        opt_a.zero_grad()
        loss_a = calc_loss_batch(inputs, targets, model_a, "cpu")
        loss_a.backward()
        opt_a.step()
        loss_b = train_step(model_b, [(inputs, targets)], opt_b, "cpu", loss_fn=LOSS)
        assert loss_b.item() == loss_a.item()
    for p, q in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_accumulating_two_micro_batches_equals_one_batch_of_both():
    inputs, targets = global_batch(rows=6)
    whole, split = tiny_model(), tiny_model()
    opt_whole = torch.optim.SGD(whole.parameters(), lr=0.5)
    opt_split = torch.optim.SGD(split.parameters(), lr=0.5)
    loss_whole = train_step(whole, [(inputs, targets)], opt_whole, "cpu", loss_fn=LOSS)
    options = TrainingOptions(grad_accumulation_steps=2)
    micro = [(inputs[:3], targets[:3]), (inputs[3:], targets[3:])]
    loss_split = train_step(split, micro, opt_split, "cpu", options, loss_fn=LOSS)
    assert loss_split.item() == pytest.approx(loss_whole.item(), rel=1e-6)
    for g, h in zip(grads(whole), grads(split), strict=True):
        torch.testing.assert_close(h, g, atol=1e-7, rtol=1e-5)
    for p, q in zip(whole.parameters(), split.parameters(), strict=True):
        torch.testing.assert_close(q, p, atol=1e-7, rtol=1e-5)
    # Without dividing each micro-batch's loss, the gradient would be twice as large.
    assert total_norm(grads(split)) == pytest.approx(total_norm(grads(whole)), rel=1e-5)


def test_training_with_accumulation_equals_training_with_the_larger_batch():
    windows = TensorDataset(*global_batch(rows=8))
    val = DataLoader(windows, batch_size=2)  # the loss on all 8 windows, as they are learnt
    results = []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        train = DataLoader(windows, batch_size=batch_size)
        model = tiny_model(seed=5)
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.1)
        _, val_losses, tokens = train_model(
            model,
            train,
            val,
            optimizer,
            "cpu",
            3,
            1,
            2,
            "I",
            gpt2_tokenizer(),
            options=TrainingOptions(grad_accumulation_steps=accumulation),
        )
        results.append((val_losses, tokens, [p.detach() for p in model.parameters()]))
    (val_a, tokens_a, weights_a), (val_b, tokens_b, weights_b) = results
    assert len(val_a) == 6 and tokens_a == tokens_b == [48 * step for step in range(1, 7)]
    assert val_b == pytest.approx(val_a, rel=1e-5)
    assert val_a[-1] < val_a[0] - 1  # it trained
    for p, q in zip(weights_a, weights_b, strict=True):
        torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-4)


def test_accumulation_groups_and_steps_per_epoch():
    assert list(accumulation_groups(range(5), 2)) == [[0, 1], [2, 3], [4]]
    assert list(accumulation_groups(range(4), 1)) == [[0], [1], [2], [3]]
    assert steps_per_epoch(5, 2) == 3 and steps_per_epoch(4, 2) == 2 and steps_per_epoch(4, 1) == 4
    with pytest.raises(ValueError, match="size must be >= 1"):
        list(accumulation_groups(range(3), 0))


def test_clipping_bounds_the_gradient_norm_and_keeps_its_direction():
    inputs, targets = global_batch()
    free, clipped = tiny_model(), tiny_model()
    train_step(
        free, [(inputs, targets)], torch.optim.SGD(free.parameters(), lr=0.0), "cpu", loss_fn=LOSS
    )
    norm = total_norm(grads(free))
    limit = norm / 10
    options = TrainingOptions(max_grad_norm=limit)
    train_step(
        clipped,
        [(inputs, targets)],
        torch.optim.SGD(clipped.parameters(), lr=0.0),
        "cpu",
        options,
        loss_fn=LOSS,
    )
    assert total_norm(grads(clipped)) == pytest.approx(limit, rel=1e-4)
    for g, h in zip(grads(free), grads(clipped), strict=True):
        torch.testing.assert_close(h, g * (limit / norm), atol=1e-8, rtol=1e-4)
    # A limit above the norm leaves the gradients alone.
    loose = tiny_model()
    options = TrainingOptions(max_grad_norm=norm * 2)
    train_step(
        loose,
        [(inputs, targets)],
        torch.optim.SGD(loose.parameters(), lr=0.0),
        "cpu",
        options,
        loss_fn=LOSS,
    )
    for g, h in zip(grads(free), grads(loose), strict=True):
        assert torch.equal(g, h)


def test_bf16_autocast_runs_on_cpu_and_its_loss_is_close_to_fp32():
    inputs, targets = global_batch()
    model = tiny_model()
    with autocast_context("cpu", bf16=True):
        assert model(inputs).dtype == torch.bfloat16
        loss_bf16 = calc_loss_batch(inputs, targets, model, "cpu")
    with autocast_context(torch.device("cpu"), bf16=False):
        assert model(inputs).dtype == torch.float32
        loss_fp32 = calc_loss_batch(inputs, targets, model, "cpu")
    assert loss_bf16.dtype == torch.float32  # cross-entropy runs in float32 under autocast
    assert loss_bf16.item() == pytest.approx(loss_fp32.item(), rel=1e-2)
    assert loss_bf16.item() != loss_fp32.item()  # it really ran in bf16
    # Training steps in bf16 follow the float32 ones closely; the weights stay float32.
    fp32, bf16 = tiny_model(), tiny_model()
    opt_fp32 = torch.optim.AdamW(fp32.parameters(), lr=1e-3)
    opt_bf16 = torch.optim.AdamW(bf16.parameters(), lr=1e-3)
    for _ in range(3):
        a = train_step(fp32, [(inputs, targets)], opt_fp32, "cpu", loss_fn=LOSS)
        b = train_step(
            bf16, [(inputs, targets)], opt_bf16, "cpu", TrainingOptions(bf16=True), loss_fn=LOSS
        )
        assert b.item() == pytest.approx(a.item(), rel=1e-2)
    assert all(p.dtype == torch.float32 for p in bf16.parameters())


def test_schedule_and_compile_options_reach_the_loop(monkeypatch):
    compiled = []

    def fake_compile(model):  # torch.compile on a CPU takes long; check the wiring only
        compiled.append(model)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    train = create_dataloader_v1(TEXT, batch_size=2, max_length=8, stride=8, shuffle=False)
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    options = TrainingOptions(compile=True, warmup_steps=2, cosine_decay=True, min_lr=1e-4)
    train_model(
        model, train, train, optimizer, "cpu", 2, 100, 1, "I", gpt2_tokenizer(), options=options
    )
    assert compiled == [model]
    total = 2 * len(train)
    last = learning_rate_at(total - 1, total, 2e-3, 2, True, 1e-4)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(last) and last < 2e-4
    assert optimizer.param_groups[0]["initial_lr"] == 2e-3


def test_make_adamw_and_unwrap_model():
    model = tiny_model()
    optimizer = make_adamw(model.parameters(), lr=3e-4, weight_decay=0.1)
    assert isinstance(optimizer, torch.optim.AdamW)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (3e-4, 0.1) and group["fused"]
    assert len(group["params"]) == len(list(model.parameters()))
    assert unwrap_model(torch.compile(model)) is model and unwrap_model(model) is model


def test_fused_adamw_on_cpu_matches_the_books_adamw():
    torch.manual_seed(0)
    fused_model = tiny_model()
    plain_model = copy.deepcopy(fused_model)
    fused = make_adamw(fused_model.parameters(), lr=1e-3, weight_decay=0.1)
    plain = torch.optim.AdamW(plain_model.parameters(), lr=1e-3, weight_decay=0.1)
    ids = torch.randint(0, fused_model.tok_emb.num_embeddings, (2, 8))
    for _ in range(5):
        for model, optimizer in ((fused_model, fused), (plain_model, plain)):
            optimizer.zero_grad()
            model(ids).logsumexp(dim=-1).mean().backward()
            optimizer.step()
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_make_adamw_is_fused_on_cuda():
    model = tiny_model().cuda()
    assert make_adamw(model.parameters(), lr=1e-3, weight_decay=0.0).param_groups[0]["fused"]


def test_train_step_minimises_the_loss_function_it_is_given():
    inputs, targets = global_batch()
    plain, doubled = tiny_model(), tiny_model()
    calls = []

    def twice_the_loss(input_batch, target_batch, model, device):
        calls.append((input_batch.shape, device))
        return 2 * calc_loss_batch(input_batch, target_batch, model, device)

    train_step(
        plain, [(inputs, targets)], torch.optim.SGD(plain.parameters(), lr=0.0), "cpu", loss_fn=LOSS
    )
    loss = train_step(
        doubled,
        [(inputs[:2], targets[:2]), (inputs[2:], targets[2:])],
        torch.optim.SGD(doubled.parameters(), lr=0.0),
        "cpu",
        TrainingOptions(grad_accumulation_steps=2),
        loss_fn=twice_the_loss,
    )
    assert calls == [((2, 12), "cpu"), ((2, 12), "cpu")]
    assert loss.item() == pytest.approx(2 * calc_loss_batch(inputs, targets, plain, "cpu").item())
    for g, h in zip(grads(plain), grads(doubled), strict=True):
        torch.testing.assert_close(h, 2 * g, atol=1e-7, rtol=1e-4)


def test_train_model_with_default_options_is_the_books_loop(capsys):
    """train_model without options gives train_model_simple's losses, weights and output."""
    train = create_dataloader_v1(TEXT, batch_size=2, max_length=8, stride=8, shuffle=False)
    results = []
    for loop in (train_model_simple, train_model):
        model = tiny_model(seed=7)
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1)
        history = loop(model, train, train, optimizer, "cpu", 2, 3, 1, "I", gpt2_tokenizer())
        results.append((history, model.state_dict(), capsys.readouterr().out))
    (history_a, weights_a, out_a), (history_b, weights_b, out_b) = results
    assert history_a == history_b and out_a == out_b and "Ep 2" in out_a
    for key, value in weights_a.items():
        assert torch.equal(value, weights_b[key]), key
