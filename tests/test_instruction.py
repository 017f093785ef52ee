"""Tests of shared.instruction: prompt formats, batching, responses, and the judge's client."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from shared.gpt import GPTModel
from shared.instruction import (
    InstructionDataset,
    create_instruction_dataloader,
    custom_collate_fn,
    format_input,
    format_prompt,
    format_training_text,
    generate_model_scores,
    generate_response,
    judge_prompt,
    ollama_is_running,
    parse_score,
    query_model,
    split_instruction_data,
    token_f1,
    validate_entries,
)
from shared.kv_cache import KVCacheGPTModel
from shared.pretraining import generate
from tests.conftest import TINY, FakeOllama
from tests.notebook_code import notebook_definitions

WITH_INPUT = {
    "instruction": "Rewrite the sentence in passive voice.",
    "input": "The cat chased the mouse.",
    "output": "The mouse was chased by the cat.",
}
WITHOUT_INPUT = {
    "instruction": "Name a primary color.",
    "input": "",
    "output": "Red.",
}
PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)

CONFIG = {**TINY, "context_length": 32, "emb_dim": 16, "n_layers": 1, "qkv_bias": True}


# --- prompt formats -------------------------------------------------------------------------


def test_format_input_alpaca_with_input():
    assert format_input(WITH_INPUT) == (
        PREAMBLE + "\n\n### Instruction:\nRewrite the sentence in passive voice."
        "\n\n### Input:\nThe cat chased the mouse."
    )


def test_format_input_alpaca_without_input_has_no_input_section():
    assert format_input(WITHOUT_INPUT) == PREAMBLE + "\n\n### Instruction:\nName a primary color."
    # A missing "input" field is the same as an empty one.
    entry = {k: v for k, v in WITHOUT_INPUT.items() if k != "input"}
    assert format_input(entry) == format_input(WITHOUT_INPUT)


def test_training_text_appends_response_section():
    assert format_training_text(WITHOUT_INPUT) == (
        PREAMBLE + "\n\n### Instruction:\nName a primary color.\n\n### Response:\nRed."
    )
    assert format_prompt(WITH_INPUT) == format_input(WITH_INPUT) + "\n\n### Response:\n"


def test_format_input_phi3():
    assert format_input(WITH_INPUT, style="phi3") == (
        "<|user|>\nRewrite the sentence in passive voice.\nThe cat chased the mouse."
    )
    assert format_input(WITHOUT_INPUT, style="phi3") == "<|user|>\nName a primary color."
    assert format_training_text(WITHOUT_INPUT, style="phi3") == (
        "<|user|>\nName a primary color.\n<|assistant|>\nRed."
    )


def test_unknown_style_is_rejected():
    with pytest.raises(ValueError, match="chatml"):
        format_input(WITH_INPUT, style="chatml")


# --- validation and split -------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"input": "", "output": "x"}, r"entry 1 has no 'instruction' field"),
        ({"instruction": "x", "input": ""}, r"entry 1 has no 'output' field"),
        ({"instruction": "x", "input": 3, "output": "y"}, r"entry 1: field 'input' is a int"),
        ({"instruction": ["x"], "output": "y"}, r"entry 1: field 'instruction' is a list"),
        ("just text", r"entry 1 is a str"),
    ],
)
def test_malformed_entry_is_named_by_index_and_field(bad, message, tokenizer):
    with pytest.raises(ValueError, match=message):
        validate_entries([WITH_INPUT, bad])
    with pytest.raises(ValueError, match=message):
        InstructionDataset([WITH_INPUT, bad], tokenizer)


def test_split_follows_the_book_order():
    data = [{"instruction": str(i), "output": str(i)} for i in range(1100)]
    train, val, test = split_instruction_data(data)
    assert (len(train), len(val), len(test)) == (935, 55, 110)
    assert train[0]["instruction"] == "0" and train[-1]["instruction"] == "934"
    assert test[0]["instruction"] == "935" and test[-1]["instruction"] == "1044"
    assert val[0]["instruction"] == "1045" and val[-1]["instruction"] == "1099"
    with pytest.raises(ValueError):
        split_instruction_data(data, train_frac=0.9, test_frac=0.2)


# --- dataset and collate --------------------------------------------------------------------


def test_dataset_tokenises_the_training_text(tokenizer):
    dataset = InstructionDataset([WITH_INPUT, WITHOUT_INPUT], tokenizer)
    assert len(dataset) == 2
    assert dataset[1] == tokenizer.encode(format_training_text(WITHOUT_INPUT))
    assert tokenizer.decode(dataset[0]) == format_training_text(WITH_INPUT)


def test_collate_pads_shifts_and_masks():
    batch = [[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]]
    inputs, targets = custom_collate_fn(batch)
    p = 50256
    assert inputs.tolist() == [
        [0, 1, 2, 3, 4],
        [5, 6, p, p, p],
        [7, 8, 9, p, p],
    ]
    assert targets.tolist() == [
        [1, 2, 3, 4, p],
        [6, p, -100, -100, -100],
        [8, 9, p, -100, -100],
    ]
    assert inputs.dtype == targets.dtype == torch.long


def test_collate_custom_pad_ignore_and_truncation():
    batch = [[0, 1, 2, 3, 4], [5, 6]]
    inputs, targets = custom_collate_fn(
        batch, pad_token_id=99, ignore_index=-1, allowed_max_length=3
    )
    assert inputs.tolist() == [[0, 1, 2], [5, 6, 99]]
    assert targets.tolist() == [[1, 2, 3], [6, 99, -1]]
    with pytest.raises(ValueError, match="empty batch"):
        custom_collate_fn([])


def test_collate_keeps_a_genuine_end_of_text_inside_the_text():
    # Masking is by position: an end-of-text token that belongs to the text stays a target.
    inputs, targets = custom_collate_fn([[1, 50256, 2], [3]])
    assert targets.tolist() == [[50256, 2, 50256], [50256, -100, -100]]


def test_ignored_targets_do_not_change_the_loss():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 5)
    targets = torch.tensor([[1, 4, 2]])
    loss = F.cross_entropy(logits[0, :2], targets[0, :2])
    masked = torch.tensor([[1, 4, -100]])
    assert torch.allclose(F.cross_entropy(logits.flatten(0, 1), masked.flatten()), loss)
    # Whatever the model predicts at an ignored position, the loss stays the same.
    logits[0, 2] = torch.randn(5) * 10
    assert torch.allclose(F.cross_entropy(logits.flatten(0, 1), masked.flatten()), loss)


def test_dataloader_batches(tokenizer):
    loader = create_instruction_dataloader(
        [WITH_INPUT, WITHOUT_INPUT, WITH_INPUT], tokenizer, batch_size=2, allowed_max_length=20
    )
    inputs, targets = next(iter(loader))
    assert inputs.shape == targets.shape == (2, 20)
    assert len(loader) == 2


# --- the chapter notebook teaches the same code ---------------------------------------------


@pytest.fixture(scope="module")
def notebook():
    return notebook_definitions("ch07/ch07.ipynb")


def test_notebook_format_input_matches(notebook):
    for entry in (WITH_INPUT, WITHOUT_INPUT):
        assert notebook["format_input"](entry) == format_input(entry)


def test_notebook_dataset_and_collate_match(notebook, tokenizer):
    data = [WITH_INPUT, WITHOUT_INPUT, WITH_INPUT]
    ours = InstructionDataset(data, tokenizer)
    theirs = notebook["InstructionDataset"](data, tokenizer)
    assert [theirs[i] for i in range(3)] == [ours[i] for i in range(3)]
    batch = [ours[i] for i in range(3)]
    for kwargs in ({}, {"allowed_max_length": 30}, {"ignore_index": -1, "pad_token_id": 7}):
        expected = custom_collate_fn(batch, **kwargs)
        got = notebook["custom_collate_fn"](batch, **kwargs)
        for a, b in zip(got, expected, strict=True):
            assert torch.equal(a, b)


# --- responses ------------------------------------------------------------------------------


class EchoModel(torch.nn.Module):
    """A fake GPT that always predicts a fixed sequence of tokens, then end-of-text."""

    def __init__(self, script: list[int], context_length: int):
        super().__init__()
        self.pos_emb = torch.nn.Embedding(context_length, 1)
        self.script = script
        self.calls: list[int] = []

    def forward(self, idx):
        self.calls.append(idx.shape[1])
        step = len(self.calls) - 1
        token = self.script[step] if step < len(self.script) else 50256
        logits = torch.zeros(idx.shape[0], idx.shape[1], 50257)
        logits[:, -1, token] = 1.0
        return logits


def test_generate_response_strips_prompt_and_stops_at_end_of_text(tokenizer):
    script = tokenizer.encode(" The mouse was chased.")
    model = EchoModel(script, context_length=1024)
    response = generate_response(model, tokenizer, WITH_INPUT, "cpu", max_new_tokens=50)
    assert response == "The mouse was chased."
    assert len(model.calls) == len(script) + 1  # stopped at the end-of-text token


def test_generate_response_truncates_a_long_prompt_from_the_left(tokenizer):
    model = EchoModel(tokenizer.encode(" ok"), context_length=16)
    with pytest.warns(UserWarning, match="keeping its last 16 tokens"):
        response = generate_response(model, tokenizer, WITH_INPUT, "cpu", max_new_tokens=3)
    assert response == "ok"
    assert max(model.calls) == 16


def test_generate_response_with_a_real_gpt(tokenizer):
    torch.manual_seed(0)
    model = GPTModel(CONFIG)
    with pytest.warns(UserWarning):
        response = generate_response(model, tokenizer, WITH_INPUT, "cpu", max_new_tokens=4)
    assert isinstance(response, str)
    prompt_ids = tokenizer.encode(format_prompt(WITH_INPUT))[-32:]
    out = generate(model, torch.tensor([prompt_ids]), 4, 32, eos_id=50256)
    expected = tokenizer.decode([t for t in out[0, 32:].tolist() if t != 50256]).strip()
    assert response == expected


def test_generate_response_uses_the_kv_cache_and_gives_the_uncached_tokens(tokenizer):
    torch.manual_seed(0)
    config = {**CONFIG, "context_length": 64}
    plain = GPTModel(config).eval()
    cached = KVCacheGPTModel(config).eval()
    cached.load_state_dict(plain.state_dict())
    calls = []
    cached.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[1]))
    for entry in (WITH_INPUT, WITHOUT_INPUT):
        # 40 new tokens after a prompt of about 40: the 64-token window slides as well.
        expected = generate_response(plain, tokenizer, entry, "cpu", max_new_tokens=40)
        calls.clear()
        assert generate_response(cached, tokenizer, entry, "cpu", max_new_tokens=40) == expected
        assert calls[0] > 1 and calls[1] == 1  # the prompt once, then one new token per step
        prompt = torch.tensor([tokenizer.encode(format_prompt(entry))])
        assert torch.equal(
            generate(cached, prompt, 40, 64, eos_id=50256, use_cache=True),
            generate(plain, prompt, 40, 64, eos_id=50256),
        )
    calls.clear()
    generate_response(cached, tokenizer, WITHOUT_INPUT, "cpu", max_new_tokens=5, use_cache=False)
    assert len(calls) == 5 and min(calls) > 1  # use_cache=False: the whole window each step
    with pytest.raises(TypeError, match="KV cache"):
        generate_response(plain, tokenizer, WITH_INPUT, "cpu", max_new_tokens=2, use_cache=True)


# --- offline measure ------------------------------------------------------------------------


def test_token_f1():
    assert token_f1("The mouse was chased by the cat.", "the mouse was chased by the cat") == 1.0
    assert token_f1("red", "blue") == 0.0
    # prediction: the, cat, sat (3 words); reference: the, cat, ran, away (4); shared 2
    assert token_f1("The cat sat", "the cat ran away") == pytest.approx(
        2 * (2 / 3) * 0.5 / (2 / 3 + 0.5)
    )
    # multiplicity counts: "the the the" shares only one "the" with "the cat"
    assert token_f1("the the the", "the cat") == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))
    assert token_f1("", "") == 1.0 and token_f1("", "x") == 0.0


# --- the judge's client, against a small local server that speaks Ollama's protocol ---------
# (FakeOllama, tests/conftest.py)


def test_query_model_reassembles_the_streamed_reply():
    answer = "Llamas are domesticated South American camelids."
    with FakeOllama(lambda prompt: answer) as server:
        assert ollama_is_running(server.url)
        assert query_model("What is a llama?", model="llama3", url=server.url) == answer
    request = server.requests[0]
    assert request["model"] == "llama3"
    assert request["messages"] == [{"role": "user", "content": "What is a llama?"}]
    assert request["options"]["temperature"] == 0


def test_query_model_errors_are_clear():
    with FakeOllama(lambda prompt: "x") as server:
        with pytest.raises(RuntimeError, match="model 'phi3' not found"):
            query_model("hi", model="phi3", url=server.url)
        url = server.url
    # The server is gone now: nothing answers on that port.
    assert not ollama_is_running(url, timeout=1.0)
    with pytest.raises(ConnectionError, match="no Ollama server answers"):
        query_model("hi", url=url, timeout=2.0)


@pytest.mark.parametrize(
    "reply, score",
    [
        ("85", 85),
        (" 85.\n", 85),
        ("85/100", 85),
        ("Score: 7", 7),
        ("0", 0),
        ("100", 100),
        ("101", None),
        ("about 80", None),
        ("80-90", None),
        ("I cannot score this.", None),
        ("", None),
    ],
)
def test_parse_score(reply, score):
    assert parse_score(reply) == score


def test_generate_model_scores_skips_and_counts_non_numbers():
    entries = [dict(WITH_INPUT, model_response=r) for r in ("good", "bad", "weird", "fine")]
    replies = {"good": "90", "bad": "10", "weird": "I'd rather not say.", "fine": "50"}

    def judge(prompt):
        for response, reply in replies.items():
            if f"Answer to grade:\n{response}\n" in prompt:
                return reply
        raise AssertionError("the prompt lacks the response to grade")

    with FakeOllama(judge) as server:
        result = generate_model_scores(entries, url=server.url, progress=False)
    assert result.scores == [90, 10, 50]
    assert result.skipped == [2]
    assert result.average == pytest.approx(50.0)
    assert server.requests[0]["messages"][0]["content"] == judge_prompt(entries[0])
    with pytest.raises(ValueError, match="entry 0 has no 'model_response'"):
        generate_model_scores([WITH_INPUT], url=server.url)
