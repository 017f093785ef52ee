"""Tests of shared.preference (DPO): data, batching and masking, log-probabilities, the loss,
the training loop, and agreement with the notebook ch07/dpo.ipynb."""

from __future__ import annotations

import json
import math

import pytest
import torch

from shared.data import fetch
from shared.gpt import GPTModel
from shared.instruction import format_prompt
from shared.preference import (
    PreferenceDataset,
    calc_dpo_loader,
    create_preference_dataloader,
    dpo_loss,
    dpo_loss_batch,
    frozen_copy,
    load_preference_data,
    preference_collate_fn,
    response_logprob,
    sequence_logprob,
    train_model_dpo,
)
from tests.conftest import TINY
from tests.notebook_code import notebook_definitions

CONFIG = {**TINY, "context_length": 64, "emb_dim": 16, "n_layers": 1, "qkv_bias": True}

ENTRIES = [
    {
        "instruction": "Name a colour.",
        "input": "",
        "chosen": "Red.",
        "rejected": "Red, obviously.",
    },
    {
        "instruction": "Convert to metres.",
        "input": "3 km",
        "chosen": "3 km is 3,000 metres.",
        "rejected": "It is 3,000 metres, as anyone knows.",
    },
    {"instruction": "Say hi.", "chosen": "Hello!", "rejected": "What?"},
]


def tiny_gpt(seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(CONFIG).eval()


# --- data -----------------------------------------------------------------------------------


def test_course_data_is_registered_and_valid():
    data = load_preference_data()
    assert len(data) == 1100
    assert json.loads(fetch("instruction-data-with-preference").read_text()) == data
    # 6 entries have the same response twice: no preference, so no gradient from them
    assert sum(entry["chosen"] == entry["rejected"] for entry in data) == 6


@pytest.mark.parametrize("missing", ["chosen", "rejected"])
def test_a_bad_entry_names_its_index_and_field(tokenizer, missing):
    bad = {key: value for key, value in ENTRIES[1].items() if key != missing}
    with pytest.raises(ValueError, match=f"entry 2 has no '{missing}' field"):
        PreferenceDataset([ENTRIES[0], ENTRIES[2], bad], tokenizer)


def test_a_field_of_the_wrong_type_is_named(tokenizer):
    with pytest.raises(ValueError, match="entry 1: field 'rejected' is a list"):
        PreferenceDataset([ENTRIES[0], {**ENTRIES[1], "rejected": ["no"]}], tokenizer)
    with pytest.raises(ValueError, match="entry 0 is a str"):
        PreferenceDataset(["not a dict"], tokenizer)


def test_a_bad_file_is_named(tmp_path):
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps([ENTRIES[0], {"instruction": "x", "rejected": "y"}]))
    with pytest.raises(ValueError, match=r"prefs\.json: entry 1 has no 'chosen' field"):
        load_preference_data(path)
    path.write_text("[{")
    with pytest.raises(ValueError, match=r"prefs\.json: not valid JSON"):
        load_preference_data(path)


def test_dataset_encodes_prompt_and_responses_apart(tokenizer):
    item = PreferenceDataset(ENTRIES, tokenizer)[1]
    assert item["prompt"] == tokenizer.encode(format_prompt(ENTRIES[1]))
    assert item["chosen"] == tokenizer.encode("3 km is 3,000 metres.")
    # encoded apart, the pieces still spell the whole text
    joined = tokenizer.decode(item["prompt"] + item["rejected"])
    assert joined == format_prompt(ENTRIES[1]) + ENTRIES[1]["rejected"]


# --- batching and masking -------------------------------------------------------------------


def test_collate_pads_and_masks_prompt_and_padding():
    batch = [
        {"prompt": [1, 2, 3], "chosen": [4, 5], "rejected": [6]},
        {"prompt": [7], "chosen": [8], "rejected": [9, 10, 11]},
    ]
    b = preference_collate_fn(batch, pad_token_id=0)
    # sequences: 1 2 3 4 5 <end>, 7 8 <end> <pad> <pad> <pad>; inputs drop the last position
    assert b.chosen_inputs.tolist() == [[1, 2, 3, 4, 5], [7, 8, 0, 0, 0]]
    # targets: the prompt (after its first token) and the padding after the end are -100
    assert b.chosen_targets.tolist() == [[-100, -100, 4, 5, 0], [8, 0, -100, -100, -100]]
    assert b.rejected_inputs.tolist() == [[1, 2, 3, 6], [7, 9, 10, 11]]
    assert b.rejected_targets.tolist() == [[-100, -100, 6, 0], [9, 10, 11, 0]]


def test_collate_refuses_a_response_cut_off_entirely():
    batch = [{"prompt": [1, 2, 3, 4], "chosen": [5], "rejected": [6]}]
    assert preference_collate_fn(batch, allowed_max_length=4).chosen_targets.tolist() == [
        [-100, -100, -100, 5]
    ]
    with pytest.raises(ValueError, match="row 0 .* 4 tokens, .* nothing of the chosen response"):
        preference_collate_fn(batch, allowed_max_length=3)


def test_sequence_logprob_by_hand():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 1.0, 1.0], [5.0, -3.0, 0.5]]])  # (1, 3, V=3)
    targets = torch.tensor([[2, 0, -100]])
    # log softmax([0, 1, 2])[2] + log softmax([1, 1, 1])[0]
    expected = (2 - math.log(1 + math.e + math.e**2)) + math.log(1 / 3)
    assert sequence_logprob(logits, targets).item() == pytest.approx(expected, abs=1e-6)
    assert sequence_logprob(logits, targets, reduction="mean").item() == pytest.approx(
        expected / 2, abs=1e-6
    )
    with pytest.raises(ValueError, match="unknown reduction 'max'"):
        sequence_logprob(logits, targets, reduction="max")


def test_masked_positions_change_nothing():
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 7)
    targets = torch.tensor([[-100, -100, 3, 1, 0], [4, 2, -100, -100, -100]])
    changed = logits.clone()
    changed[targets == -100] = torch.randn(5, 7) * 100
    assert torch.equal(sequence_logprob(logits, targets), sequence_logprob(changed, targets))


def test_padding_does_not_change_a_responses_logprob(tokenizer):
    # the short entry alone, and in a batch where it is padded to a longer one, scores the same
    model = tiny_gpt()
    dataset = PreferenceDataset(ENTRIES, tokenizer)
    alone = preference_collate_fn([dataset[0]])
    padded = preference_collate_fn([dataset[0], dataset[1]])
    assert padded.chosen_inputs.shape[1] > alone.chosen_inputs.shape[1]
    with torch.no_grad():
        for kind in ("chosen", "rejected"):
            inputs, targets = f"{kind}_inputs", f"{kind}_targets"
            single = response_logprob(model, getattr(alone, inputs), getattr(alone, targets))
            batch = response_logprob(model, getattr(padded, inputs), getattr(padded, targets))
            torch.testing.assert_close(batch[0], single[0], rtol=0, atol=1e-5)
            # other tokens in place of the padding (after prompt, response, end) change nothing
            other = getattr(padded, inputs).clone()
            other[0, len(dataset[0]["prompt"]) + len(dataset[0][kind]) :] = 123
            again = response_logprob(model, other, getattr(padded, targets))
            torch.testing.assert_close(again[0], single[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_response_logprob_is_sequence_logprob_of_the_full_logits(tokenizer, reduction):
    # the output layer at the scored positions only: the same values and the same gradients
    dataset = PreferenceDataset(ENTRIES, tokenizer)
    batch = preference_collate_fn([dataset[0], dataset[1]])
    inputs, targets = batch.chosen_inputs, batch.chosen_targets
    assert 0 < int((targets != -100).sum()) < targets.numel()
    results = []
    for full_logits in (True, False):
        model = tiny_gpt()
        if full_logits:
            value = sequence_logprob(model(inputs), targets, reduction=reduction)
        else:
            value = response_logprob(model, inputs, targets, reduction=reduction)
        value.sum().backward()
        results.append((value, [p.grad for p in model.parameters()]))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want)
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got_grad, want_grad)


# --- the loss -------------------------------------------------------------------------------


def test_dpo_loss_by_hand():
    result = dpo_loss(
        policy_chosen_logprobs=torch.tensor([-1.0, -2.0]),
        policy_rejected_logprobs=torch.tensor([-3.0, -1.5]),
        reference_chosen_logprobs=torch.tensor([-1.5, -2.0]),
        reference_rejected_logprobs=torch.tensor([-2.0, -1.0]),
        beta=0.5,
    )
    # rewards: chosen 0.5 * (-1 + 1.5) = 0.25 and 0; rejected 0.5 * (-3 + 2) = -0.5 and -0.25
    assert result.chosen_rewards.tolist() == [0.25, 0.0]
    assert result.rejected_rewards.tolist() == [-0.5, -0.25]
    # margins 0.75 and 0.25; -log sigmoid(m) = log(1 + exp(-m))
    expected = (math.log(1 + math.exp(-0.75)) + math.log(1 + math.exp(-0.25))) / 2
    assert result.loss.item() == pytest.approx(expected, abs=1e-7)
    assert result.loss.item() == pytest.approx(0.4814, abs=1e-4)
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(*(torch.zeros(1),) * 4, beta=0.0)


def test_policy_equal_to_reference_gives_log2_and_zero_margins(tokenizer):
    policy = tiny_gpt()
    reference = frozen_copy(policy)
    loader = create_preference_dataloader(ENTRIES, tokenizer, batch_size=3)
    with torch.no_grad():
        result = dpo_loss_batch(next(iter(loader)), policy, reference, "cpu", beta=0.1)
    assert result.loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert torch.allclose(result.chosen_rewards, torch.zeros(3), atol=1e-6)
    assert torch.allclose(result.rejected_rewards, torch.zeros(3), atol=1e-6)
    metrics = calc_dpo_loader(loader, policy, reference, "cpu")
    assert metrics.loss == pytest.approx(math.log(2), abs=1e-6)
    assert metrics.margin == pytest.approx(0.0, abs=1e-6)


# --- training -------------------------------------------------------------------------------


def test_training_moves_the_policy_and_never_the_reference(tokenizer):
    policy = tiny_gpt()
    reference = frozen_copy(policy)
    before = {name: tensor.clone() for name, tensor in reference.state_dict().items()}
    torch.manual_seed(0)
    loader = create_preference_dataloader(ENTRIES, tokenizer, batch_size=3)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    history = train_model_dpo(
        policy, reference, loader, loader, optimizer, "cpu", num_epochs=4, beta=0.1, eval_freq=1
    )
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert not any(p.requires_grad for p in reference.parameters())
    assert history.steps == [1, 2, 3, 4]
    assert history.train[0].loss < math.log(2)  # evaluated after the first step
    assert history.train[-1].loss < history.train[0].loss
    assert history.train[-1].margin > history.train[0].margin > 0
    assert history.train[-1].accuracy == 1.0


def test_training_refuses_a_reference_that_is_the_policy(tokenizer):
    policy = tiny_gpt()
    loader = create_preference_dataloader(ENTRIES, tokenizer, batch_size=3)
    optimizer = torch.optim.AdamW(policy.parameters())
    with pytest.raises(ValueError, match="shares parameters with the policy"):
        train_model_dpo(policy, policy, loader, loader, optimizer, "cpu", num_epochs=1)


# --- the notebook teaches the same code -----------------------------------------------------


@pytest.fixture(scope="module")
def notebook():
    return notebook_definitions("ch07/dpo.ipynb")


def test_notebook_dataset_and_collate_match(notebook, tokenizer):
    ours = notebook["PreferenceDataset"](ENTRIES, tokenizer)
    theirs = PreferenceDataset(ENTRIES, tokenizer)
    assert [ours[i] for i in range(3)] == [theirs[i] for i in range(3)]
    for kwargs in ({}, {"allowed_max_length": 60}):
        got = notebook["preference_collate_fn"]([ours[0], ours[1], ours[2]], **kwargs)
        want = preference_collate_fn([theirs[0], theirs[1], theirs[2]], **kwargs)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_notebook_logprob_and_loss_match(notebook):
    torch.manual_seed(2)
    logits = torch.randn(3, 6, 11)
    targets = torch.randint(0, 11, (3, 6))
    targets[:, :2] = -100
    for reduction in ("sum", "mean"):
        torch.testing.assert_close(
            notebook["sequence_logprob"](logits, targets, reduction=reduction),
            sequence_logprob(logits, targets, reduction=reduction),
        )
    logprobs = [torch.randn(4) for _ in range(4)]
    for got, want in zip(
        notebook["dpo_loss"](*logprobs, beta=0.3), dpo_loss(*logprobs, beta=0.3), strict=True
    ):
        torch.testing.assert_close(got, want)
