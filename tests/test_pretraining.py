"""shared.pretraining: loss, training loop, decoding and checkpoints, on tiny models."""

from __future__ import annotations

import math

import pytest
import tiktoken
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from shared.checkpoints import describe_mismatch
from shared.dataset import create_dataloader_v1
from shared.gpt import GPTModel, generate_text_simple
from shared.kv_cache import KVCacheGPTModel
from shared.pretraining import (
    calc_loss_batch,
    calc_loss_loader,
    evaluate_model,
    generate,
    generate_tokens,
    load_checkpoint,
    load_model_checkpoint,
    plot_losses,
    read_checkpoint_extra,
    save_checkpoint,
    text_to_token_ids,
    token_ids_to_text,
    train_model_simple,
)
from shared.tokenizers import gpt2_tokenizer
from tests.conftest import TEXT, TINY, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


class FixedLogits(nn.Module):
    """A 'model' whose next-token logits are always the same vector: (b, n) -> (b, n, V)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(idx.shape[0], idx.shape[1], -1)


# Text <-> token ids


def test_text_token_ids_round_trip_matches_tiktoken():
    tokenizer = gpt2_tokenizer()
    text = "Every effort moves you<|endoftext|> forward"
    ids = text_to_token_ids(text, tokenizer)
    reference = tiktoken.Encoding(
        name="ref",
        pat_str=tokenizer._pat_str,
        mergeable_ranks=tokenizer._mergeable_ranks,
        special_tokens={"<|endoftext|>": 50256},
    ).encode(text, allowed_special="all")
    assert ids.dtype == torch.long and ids.shape == (1, len(reference))
    assert ids[0].tolist() == reference
    assert 50256 in ids[0].tolist()
    assert token_ids_to_text(ids, tokenizer) == text
    assert token_ids_to_text(ids[0], tokenizer) == text


def test_token_ids_to_text_rejects_a_batch():
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        token_ids_to_text(torch.zeros(2, 3, dtype=torch.long), gpt2_tokenizer())


# Losses


def test_calc_loss_batch_is_cross_entropy_of_flattened_logits():
    model = tiny_model().eval()
    inputs = torch.randint(0, 50257, (2, 8), generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 50257, (2, 8), generator=torch.Generator().manual_seed(1))
    loss = calc_loss_batch(inputs, targets, model, "cpu")
    with torch.no_grad():
        logits = model(inputs)
    # Independent reference: the mean negative log-probability of each target token.
    log_probs = torch.log_softmax(logits, dim=-1)
    manual = -log_probs.gather(-1, targets.unsqueeze(-1)).mean()
    torch.testing.assert_close(loss.detach(), manual)
    torch.testing.assert_close(
        loss.detach(), F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    )
    # Perplexity is exp(loss); an untrained model is close to uniform over the 50,257 tokens.
    assert math.isclose(math.exp(loss.item()), torch.exp(loss).item(), rel_tol=1e-6)
    assert 0.5 * 50257 < math.exp(loss.item()) < 2 * 50257
    # Targets of -100 are ignored.
    masked = targets.clone()
    masked[:, 4:] = -100
    kept = -log_probs[:, :4].gather(-1, targets[:, :4].unsqueeze(-1)).mean()
    torch.testing.assert_close(calc_loss_batch(inputs, masked, model, "cpu").detach(), kept)


def test_calc_loss_loader_averages_the_first_batches():
    model = tiny_model().eval()
    inputs = torch.randint(0, 50257, (6, 8), generator=torch.Generator().manual_seed(2))
    targets = torch.randint(0, 50257, (6, 8), generator=torch.Generator().manual_seed(3))
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=2)
    per_batch = [calc_loss_batch(x, y, model, "cpu").item() for x, y in loader]
    with torch.no_grad():
        assert calc_loss_loader(loader, model, "cpu") == pytest.approx(sum(per_batch) / 3)
        assert calc_loss_loader(loader, model, "cpu", 2) == pytest.approx(sum(per_batch[:2]) / 2)
        assert calc_loss_loader(loader, model, "cpu", 10) == pytest.approx(sum(per_batch) / 3)


def test_calc_loss_loader_refuses_an_empty_loader():
    empty = DataLoader(
        TensorDataset(torch.zeros(1, 4), torch.zeros(1, 4)), batch_size=2, drop_last=True
    )
    with pytest.raises(ValueError, match="no batches"):
        calc_loss_loader(empty, tiny_model(), "cpu")


def test_evaluate_model_uses_eval_mode_and_restores_training():
    model = tiny_model(drop_rate=0.5)
    loader = create_dataloader_v1(TEXT, batch_size=2, max_length=8, stride=8, shuffle=False)
    model.train()
    first = evaluate_model(model, loader, loader, "cpu", eval_iter=2)
    second = evaluate_model(model, loader, loader, "cpu", eval_iter=2)
    assert first == second  # dropout is off while evaluating
    assert first[0] == pytest.approx(first[1])
    assert model.training
    assert all(p.grad is None for p in model.parameters())


# Decoding


def test_temperature_zero_and_top_k_one_are_greedy():
    model = tiny_model().eval()
    idx = torch.tensor([[15496, 11, 314, 716]])
    greedy = generate_text_simple(model, idx, max_new_tokens=6, context_size=16)
    assert torch.equal(generate(model, idx, 6, 16), greedy)
    assert torch.equal(generate(model, idx, 6, 16, temperature=0.0, top_k=5), greedy)
    torch.manual_seed(0)
    assert torch.equal(generate(model, idx, 6, 16, temperature=1.5, top_k=1), greedy)


def test_same_seed_same_sample():
    model = tiny_model().eval()
    idx = torch.tensor([[15496, 11]])
    torch.manual_seed(42)
    first = generate(model, idx, 10, 16, temperature=1.4, top_k=50)
    torch.manual_seed(42)
    second = generate(model, idx, 10, 16, temperature=1.4, top_k=50)
    torch.manual_seed(43)
    other = generate(model, idx, 10, 16, temperature=1.4, top_k=50)
    assert first.shape == (1, 12)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_top_k_samples_only_the_k_most_likely():
    logits = torch.tensor([4.0, 0.5, 3.0, -1.0, 2.0, 1.0])
    model = FixedLogits(logits)
    torch.manual_seed(0)
    out = generate(model, torch.zeros(500, 1, dtype=torch.long), 1, 4, temperature=5.0, top_k=3)
    assert set(out[:, 1].tolist()) == {0, 2, 4}
    torch.manual_seed(0)
    out = generate(model, torch.zeros(2000, 1, dtype=torch.long), 1, 4, temperature=1.0)
    counts = torch.bincount(out[:, 1], minlength=6).float() / 2000
    torch.testing.assert_close(counts, torch.softmax(logits, 0), atol=0.03, rtol=0)


def test_eos_stops_generation():
    eos = 3
    logits = torch.full((6,), -10.0)
    logits[eos] = 10.0
    idx = torch.tensor([[1, 2]])
    assert torch.equal(generate(FixedLogits(logits), idx, 5, 4, eos_id=eos), idx)
    assert generate(FixedLogits(logits), idx, 5, 4).shape == (1, 7)  # without eos_id: no stop

    class CountUp(nn.Module):
        """Predicts 'previous token + 1', so from 0 it emits 1, 2, 3, ..."""

        def forward(self, idx):
            return F.one_hot((idx + 1) % 6, 6).float() * 10

    out = generate(CountUp(), torch.tensor([[0], [1]]), 5, 4, eos_id=4)
    # Row 1 reaches 4 first and is padded with eos; generation stops once row 0 reaches 4 too.
    assert out.tolist() == [[0, 1, 2, 3], [1, 2, 3, 4]]


def test_long_prompts_are_cropped_to_the_context():
    model = tiny_model().eval()
    idx = torch.randint(0, 50257, (1, 40), generator=torch.Generator().manual_seed(4))
    out = generate(model, idx, 3, context_size=16)
    assert out.shape == (1, 43) and torch.equal(out[:, :40], idx)
    assert torch.equal(out, generate_text_simple(model, idx, 3, 16))


def test_generate_rejects_bad_settings():
    model = tiny_model()
    idx = torch.tensor([[1]])
    with pytest.raises(ValueError, match="temperature"):
        generate(model, idx, 1, 16, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        generate(model, idx, 1, 16, temperature=1.0, top_k=0)


@pytest.mark.parametrize("use_cache", [False, True])
@pytest.mark.parametrize("temperature, top_k", [(0.0, None), (1.5, 20)])
def test_generate_tokens_yields_what_generate_appends(use_cache, temperature, top_k):
    torch.manual_seed(123)
    model = KVCacheGPTModel(TINY).eval()
    idx = torch.randint(0, 50257, (2, 5), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(7)
    steps = list(
        generate_tokens(
            model, idx, 20, 16, temperature=temperature, top_k=top_k, use_cache=use_cache
        )
    )
    torch.manual_seed(7)
    expected = generate(model, idx, 20, 16, temperature, top_k, use_cache=use_cache)
    assert all(step.shape == (2, 1) for step in steps) and len(steps) == 20  # the window slides
    assert torch.equal(torch.cat([idx, *steps], dim=1), expected)


def test_generate_tokens_stops_before_eos_and_checks_at_the_call():
    model = tiny_model().eval()
    idx = torch.tensor([[15496, 11, 995]])
    greedy = generate(model, idx, 6, 16)[0, 3:].tolist()
    eos = greedy[2]
    assert greedy.index(eos) == 2, "pick a token that does not occur earlier"
    assert [int(t) for t in generate_tokens(model, idx, 6, 16, eos_id=eos)] == greedy[:2]
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_tokens(model, idx, -1, 16)  # no next() needed
    with pytest.raises(TypeError, match="KVCacheGPTModel"):
        generate_tokens(model, idx, 1, 16, use_cache=True)


def test_two_cached_generations_interleave_on_one_model():
    torch.manual_seed(123)
    model = KVCacheGPTModel(TINY).eval()
    prompts = torch.tensor([[1, 2, 3]]), torch.tensor([[7, 8]])
    alone = [generate(model, prompt, 16, 16, use_cache=True) for prompt in prompts]
    streams = [generate_tokens(model, prompt, 16, 16, use_cache=True) for prompt in prompts]
    steps = list(zip(*streams))  # a step of one, then a step of the other, and the window slides
    for i, prompt in enumerate(prompts):
        assert torch.equal(torch.cat([prompt, *(pair[i] for pair in steps)], dim=1), alone[i])


# Training


def loaders():
    train = create_dataloader_v1(TEXT, batch_size=2, max_length=8, stride=8, shuffle=False)
    val = create_dataloader_v1(TEXT[:200], batch_size=2, max_length=8, stride=8, shuffle=False)
    return train, val


def test_train_model_simple_lowers_the_loss(capsys):
    model = tiny_model()
    train, val = loaders()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    train_losses, val_losses, tokens = train_model_simple(
        model, train, val, optimizer, "cpu", 2, 4, 2, "I had", gpt2_tokenizer()
    )
    steps = 2 * len(train)
    n_evals = len(range(0, steps, 4))
    assert len(train_losses) == len(val_losses) == len(tokens) == n_evals
    assert tokens == [(step + 1) * 2 * 8 for step in range(0, steps, 4)]
    assert train_losses[-1] < train_losses[0] - 2
    out = capsys.readouterr().out
    assert "Ep 1 (Step 000000): Train loss" in out
    assert out.count("I had") == 2  # one sample per epoch


def test_train_model_simple_without_a_start_context_prints_no_sample(capsys):
    model = tiny_model()
    train, val = loaders()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    train_losses, _, _ = train_model_simple(
        model, train, val, optimizer, "cpu", 1, 4, 2, None, gpt2_tokenizer()
    )
    lines = capsys.readouterr().out.splitlines()  # the losses only
    assert len(lines) == len(train_losses) and all(line.startswith("Ep 1 (") for line in lines)


def steps_losses(model, optimizer, batches):
    """Train on each (inputs, targets) of batches; return the losses before each step."""
    losses = []
    for inputs, targets in batches:
        optimizer.zero_grad()
        loss = calc_loss_batch(inputs, targets, model, "cpu")
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_resuming_from_a_checkpoint_matches_uninterrupted_training(tmp_path):
    train, _ = loaders()
    batches = list(train) * 2  # N + M = 2 * len(train) steps
    n = len(batches) // 2 + 1

    model = tiny_model(seed=7)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.1)
    uninterrupted = steps_losses(model, optimizer, batches)

    model = tiny_model(seed=7)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.1)
    first = steps_losses(model, optimizer, batches[:n])
    save_checkpoint(tmp_path / "ckpt.pth", model, optimizer, step=n)

    fresh = tiny_model(seed=99)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=5e-3, weight_decay=0.1)
    extra = load_checkpoint(tmp_path / "ckpt.pth", fresh, fresh_optimizer)
    assert extra == {"step": n}
    second = steps_losses(fresh, fresh_optimizer, batches[n:])
    assert first + second == pytest.approx(uninterrupted, rel=1e-5)
    assert second[0] < uninterrupted[0]  # it really continued from the trained state


def test_train_model_simple_resumes_epochs(tmp_path):
    train, val = loaders()
    tokenizer = gpt2_tokenizer()
    eval_freq = len(train)  # evaluate at the start of every epoch

    model = tiny_model(seed=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    whole, _, _ = train_model_simple(
        model, train, val, optimizer, "cpu", 2, eval_freq, 1, "I", tokenizer
    )

    model = tiny_model(seed=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    part1, _, _ = train_model_simple(
        model, train, val, optimizer, "cpu", 1, eval_freq, 1, "I", tokenizer
    )
    save_checkpoint(tmp_path / "ckpt.pth", model, optimizer)
    model = tiny_model(seed=9)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    load_checkpoint(tmp_path / "ckpt.pth", model, optimizer)
    part2, _, _ = train_model_simple(
        model, train, val, optimizer, "cpu", 1, eval_freq, 1, "I", tokenizer
    )
    assert part1 + part2 == pytest.approx(whole, rel=1e-5)


def test_plot_losses_has_epochs_and_tokens_axes():
    fig = plot_losses([0, 0.5, 1.0], [0, 100, 200], [10.0, 6.0, 4.0], [10.0, 7.0, 6.5])
    ax1, ax2 = fig.axes
    assert ax1.get_xlabel() == "Epochs" and ax2.get_xlabel() == "Tokens seen"
    assert [line.get_label() for line in ax1.get_lines()] == ["Training loss", "Validation loss"]
    assert list(ax1.get_lines()[1].get_ydata()) == [10.0, 7.0, 6.5]


# Checkpoints


def test_checkpoint_round_trip_restores_model_and_optimizer(tmp_path):
    model = tiny_model(seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train, _ = loaders()
    steps_losses(model, optimizer, list(train)[:2])
    path = save_checkpoint(tmp_path / "sub" / "model.pth", model, optimizer, epoch=3, note="hi")
    fresh = tiny_model(seed=2)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    assert read_checkpoint_extra(path) == {"epoch": 3, "note": "hi"}
    assert load_checkpoint(path, fresh, fresh_optimizer) == {"epoch": 3, "note": "hi"}
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert fresh_optimizer.state_dict()["state"][0]["step"] == 2
    # A model-only checkpoint cannot restore an optimizer.
    save_checkpoint(tmp_path / "weights.pth", model)
    with pytest.raises(ValueError, match="no optimizer state"):
        load_checkpoint(tmp_path / "weights.pth", fresh, fresh_optimizer)


def test_describe_mismatch_counts_and_shortens_the_lists():
    assert describe_mismatch([], []) == ""
    assert describe_mismatch(["a"], []) == "1 missing (a)"
    names = [f"t{i}" for i in range(8)]
    assert describe_mismatch(["a", "b"], names, shown=3) == (
        "2 missing (a, b); 8 unexpected (t0, t1, t2, ...)"
    )


def test_wrong_shape_names_the_tensor_and_both_shapes(tmp_path):
    save_checkpoint(tmp_path / "small.pth", tiny_model())
    bigger = tiny_model(emb_dim=48)
    with pytest.raises(
        ValueError, match=r"'tok_emb\.weight' has shape \(50257, 32\).*\(50257, 48\)"
    ):
        load_checkpoint(tmp_path / "small.pth", bigger)
    deeper = tiny_model(n_layers=3)
    with pytest.raises(
        ValueError, match=r"does not match the model: \d+ missing \(trf_blocks\.2\."
    ):
        load_checkpoint(tmp_path / "small.pth", deeper)


def test_load_model_checkpoint_builds_the_stored_config(tmp_path):
    model = tiny_model(seed=5)
    path = save_checkpoint(tmp_path / "model.pth", model, config=TINY, note="hi")
    loaded, extra = load_model_checkpoint(path)
    assert type(loaded) is GPTModel and extra == {"config": TINY, "note": "hi"}
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values())
    )
    cached, _ = load_model_checkpoint(path, KVCacheGPTModel)
    assert type(cached) is KVCacheGPTModel

    with pytest.raises(ValueError, match="nope.pth does not exist"):
        load_model_checkpoint(tmp_path / "nope.pth")
    save_checkpoint(tmp_path / "bare.pth", model)
    with pytest.raises(ValueError, match="bare.pth holds no model config"):
        load_model_checkpoint(tmp_path / "bare.pth")
    narrower = tiny_model(emb_dim=16)
    save_checkpoint(tmp_path / "wrong.pth", narrower, config=TINY)  # a config that does not fit
    with pytest.raises(ValueError, match="shape"):
        load_model_checkpoint(tmp_path / "wrong.pth")


def test_checkpoints_load_with_weights_only(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {}, "extra": {"x": Payload()}}, path)
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        load_checkpoint(path, tiny_model())
    with pytest.raises(TypeError, match=r"extra\['x'\]"):
        save_checkpoint(tmp_path / "ok.pth", tiny_model(), x=Payload())
    assert not (tmp_path / "ok.pth").exists()


def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "model.pth"
    model = tiny_model(seed=1)
    save_checkpoint(path, model, epoch=1)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"partial")
        raise OSError("disk full (test)")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, tiny_model(seed=2), epoch=2)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth"]  # no temporary file left
    monkeypatch.undo()
    assert load_checkpoint(path, tiny_model(seed=3)) == {"epoch": 1}


# The chapter notebook teaches the same functions step by step; they must behave identically.


@pytest.fixture(scope="module")
def notebook():
    from tests.notebook_code import notebook_definitions

    return notebook_definitions("ch05/ch05.ipynb")


def test_notebook_config_is_the_books(notebook):
    from shared.gpt import GPT_CONFIG_124M

    assert notebook["GPT_CONFIG_124M"] == {**GPT_CONFIG_124M, "context_length": 256}


def test_notebook_text_and_loss_functions_match_shared(notebook):
    tokenizer = gpt2_tokenizer()
    text = "Hello,<|endoftext|> world"
    ids = notebook["text_to_token_ids"](text, tokenizer)
    assert torch.equal(ids, text_to_token_ids(text, tokenizer))
    assert notebook["token_ids_to_text"](ids, tokenizer) == token_ids_to_text(ids, tokenizer)
    assert notebook["token_ids_to_text"](ids[0], tokenizer) == text

    model = tiny_model().eval()
    train, val = loaders()
    x, y = next(iter(train))
    with torch.no_grad():
        assert torch.equal(
            notebook["calc_loss_batch"](x, y, model, "cpu"), calc_loss_batch(x, y, model, "cpu")
        )
        assert notebook["calc_loss_loader"](train, model, "cpu", 3) == calc_loss_loader(
            train, model, "cpu", 3
        )
    assert notebook["evaluate_model"](model, train, val, "cpu", 2) == evaluate_model(
        model, train, val, "cpu", 2
    )
    empty = DataLoader(
        TensorDataset(torch.zeros(1, 4), torch.zeros(1, 4)), batch_size=2, drop_last=True
    )
    with pytest.raises(ValueError, match="no batches"):
        notebook["calc_loss_loader"](empty, model, "cpu")


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"temperature": 1.3},
        {"temperature": 0.8, "top_k": 5},
        {"temperature": 2.0, "top_k": 40, "eos_id": 13},
        {"top_k": 1, "eos_id": 11},
    ],
)
def test_notebook_generate_matches_shared(notebook, settings):
    model = tiny_model().eval()
    idx = torch.tensor([[15496, 11, 314], [40, 1107, 588]])
    torch.manual_seed(5)
    ours = notebook["generate"](model, idx, 12, 16, **settings)
    torch.manual_seed(5)
    theirs = generate(model, idx, 12, 16, **settings)
    assert torch.equal(ours, theirs)


def test_notebook_training_loop_matches_shared(notebook, capsys):
    tokenizer = gpt2_tokenizer()
    train, val = loaders()
    results = []
    for train_fn in (notebook["train_model_simple"], train_model_simple):
        model = tiny_model(seed=11, drop_rate=0.1)
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.1)
        torch.manual_seed(3)
        losses = train_fn(model, train, val, optimizer, "cpu", 2, 3, 2, "I had", tokenizer)
        results.append((losses, capsys.readouterr().out))
    assert results[0] == results[1]
