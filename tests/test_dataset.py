"""The sliding-window dataset and loader (shared.dataset), and the notebook's GPTDatasetV1."""

import pytest
import torch

from shared.dataset import GPTDatasetV1, create_dataloader_v1
from shared.tokenizers import END_OF_TEXT, gpt2_tokenizer
from tests.notebook_code import notebook_definitions


def test_windows_are_shifted_by_one(verdict):
    ids = gpt2_tokenizer().encode(verdict)
    dataset = GPTDatasetV1(verdict, gpt2_tokenizer(), max_length=4, stride=1)
    assert len(dataset) == len(ids) - 4
    inputs, targets = dataset[10]
    assert inputs.tolist() == ids[10:14]
    assert targets.tolist() == ids[11:15]
    assert inputs.dtype == targets.dtype == torch.int64


@pytest.mark.parametrize("max_length, stride", [(4, 4), (4, 1), (2, 2), (8, 2), (256, 128)])
def test_number_and_start_of_windows(verdict, max_length, stride):
    dataset = GPTDatasetV1(verdict, gpt2_tokenizer(), max_length, stride)
    n_tokens = 5_145
    assert len(dataset) == len(range(0, n_tokens - max_length, stride))
    last_inputs, last_targets = dataset[len(dataset) - 1]
    start = (len(dataset) - 1) * stride
    ids = gpt2_tokenizer().encode(verdict)
    assert last_targets.tolist() == ids[start + 1 : start + max_length + 1]
    assert last_inputs.shape == (max_length,)


def test_loader_first_batch_as_in_the_book(verdict):
    loader = create_dataloader_v1(verdict, batch_size=8, max_length=4, stride=4, shuffle=False)
    inputs, targets = next(iter(loader))
    assert inputs.shape == targets.shape == (8, 4)
    assert inputs[0].tolist() == [40, 367, 2885, 1464]
    assert targets[0].tolist() == [367, 2885, 1464, 1807]
    assert inputs[1].tolist() == [1807, 3619, 402, 271]
    assert len(loader) == 1_286 // 8


def test_loader_drop_last_and_shuffle(verdict):
    kept = create_dataloader_v1(verdict, batch_size=7, max_length=4, stride=4, shuffle=False)
    every = create_dataloader_v1(
        verdict, batch_size=7, max_length=4, stride=4, shuffle=False, drop_last=False
    )
    assert len(every) == len(kept) + 1  # 1,286 windows: 183 full batches and one of 5
    assert len(list(every)[-1][0]) == 1_286 % 7
    torch.manual_seed(123)
    shuffled = torch.cat([x for x, _ in create_dataloader_v1(verdict, 8, 4, 4, drop_last=False)])
    ordered = torch.cat([x for x, _ in every])
    assert not torch.equal(shuffled, ordered)
    assert sorted(map(tuple, shuffled.tolist())) == sorted(map(tuple, ordered.tolist()))


def test_end_of_text_is_one_token():
    text = f"Hello there. {END_OF_TEXT} General Kenobi, you are a bold one."
    dataset = GPTDatasetV1(text, gpt2_tokenizer(), max_length=4, stride=4)
    assert 50256 in torch.cat([x for x, _ in dataset]).tolist()


def test_text_too_short_for_one_window():
    with pytest.raises(ValueError, match="too few for one window of max_length=8"):
        GPTDatasetV1("Far too short.", gpt2_tokenizer(), max_length=8, stride=4)
    with pytest.raises(ValueError, match="too few for one window"):
        create_dataloader_v1("Far too short.", batch_size=1, max_length=8, stride=4)


def test_too_few_windows_for_one_batch(verdict):
    with pytest.raises(ValueError, match="fewer than batch_size=64"):
        create_dataloader_v1(verdict[:2_000], batch_size=64, max_length=16, stride=16)
    loader = create_dataloader_v1(
        verdict[:2_000], batch_size=64, max_length=16, stride=16, drop_last=False
    )
    assert len(loader) == 1


@pytest.mark.parametrize("max_length, stride", [(0, 1), (4, 0)])
def test_bad_window_settings(max_length, stride):
    with pytest.raises(ValueError, match="must be >= 1"):
        GPTDatasetV1("some text " * 20, gpt2_tokenizer(), max_length, stride)


def test_notebook_dataset_matches_shared(verdict):
    notebook = notebook_definitions("ch02/ch02.ipynb")
    for max_length, stride in [(4, 4), (4, 1), (8, 2)]:
        ours = notebook["GPTDatasetV1"](verdict, gpt2_tokenizer(), max_length, stride)
        theirs = GPTDatasetV1(verdict, gpt2_tokenizer(), max_length, stride)
        assert len(ours) == len(theirs)
        for index in (0, 1, len(theirs) // 2, len(theirs) - 1):
            assert all(torch.equal(a, b) for a, b in zip(ours[index], theirs[index]))
    with pytest.raises(ValueError, match="too few"):
        notebook["GPTDatasetV1"]("Far too short.", gpt2_tokenizer(), 8, 4)

    settings = {"batch_size": 8, "max_length": 4, "stride": 4, "shuffle": False}
    ours = list(notebook["create_dataloader_v1"](verdict, **settings))
    theirs = list(create_dataloader_v1(verdict, **settings))
    assert len(ours) == len(theirs) == 160
    assert all(torch.equal(a, b) for x, y in zip(ours, theirs) for a, b in zip(x, y))
    with pytest.raises(ValueError, match="fewer than batch_size=64"):
        notebook["create_dataloader_v1"](verdict[:2_000], 64, 16, 16)
