"""Instruction finetuning of Chapter 7: prompt formats, batching, responses, and judging them.

An instruction entry is a dict with the strings ``instruction``, ``output`` and, optionally,
``input`` (empty or missing when the instruction stands alone).

Shapes: b = batch size, n = tokens in the longest entry of a batch, plus one, minus one for the
shift (cut to ``allowed_max_length`` when given).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from shared.pretraining import generate

PROMPT_STYLES = ("alpaca", "phi3")
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
# What separates the prompt from the response in each style.
RESPONSE_HEADERS = {"alpaca": "\n\n### Response:\n", "phi3": "\n<|assistant|>\n"}
END_OF_TEXT_ID = 50256  # GPT-2's <|endoftext|>, also the padding token of the batches

DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434/api/chat"


def _check_style(style: str) -> None:
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; choose one of {PROMPT_STYLES}")


def validate_entry(
    entry: object, index: int, required: Sequence[str] = ("instruction", "output")
) -> None:
    """Raise ValueError naming the entry's index and the field unless ``entry`` is well formed.

    Well formed: a dict whose ``required`` fields (by default ``instruction`` and ``output``)
    are strings and whose ``input``, if present, is a string.
    """
    if not isinstance(entry, dict):
        first, *rest = (repr(field) for field in required)
        fields = [first, "'input' (optional)", *rest]
        raise ValueError(
            f"entry {index} is a {type(entry).__name__}, expected a dict with the fields "
            f"{', '.join(fields[:-1])} and {fields[-1]}"
        )
    for field in required:
        if field not in entry:
            raise ValueError(f"entry {index} has no {field!r} field")
    for field in ("input", *required):
        if field in entry and not isinstance(entry[field], str):
            raise ValueError(
                f"entry {index}: field {field!r} is a {type(entry[field]).__name__}, "
                "expected a string"
            )


def validate_entries(
    data: Sequence[dict], required: Sequence[str] = ("instruction", "output")
) -> None:
    """Check every entry with validate_entry; the first malformed one raises ValueError."""
    for index, entry in enumerate(data):
        validate_entry(entry, index, required)


def format_input(entry: dict, style: str = "alpaca") -> str:
    """The prompt part of an entry (instruction and optional input), without the response.

    style="alpaca": the preamble, "\\n\\n### Instruction:\\n" + instruction, and
    "\\n\\n### Input:\\n" + input only when the input is non-empty.
    style="phi3": "<|user|>\\n" + instruction, and "\\n" + input when non-empty.
    """
    _check_style(style)
    user_input = entry.get("input", "")
    if style == "alpaca":
        text = f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{entry['instruction']}"
        return text + (f"\n\n### Input:\n{user_input}" if user_input else "")
    return f"<|user|>\n{entry['instruction']}" + (f"\n{user_input}" if user_input else "")


def format_prompt(entry: dict, style: str = "alpaca") -> str:
    """What the model sees when asked to respond: format_input plus the response header."""
    return format_input(entry, style) + RESPONSE_HEADERS[style]


def format_training_text(entry: dict, style: str = "alpaca") -> str:
    """The full training text of an entry: format_prompt followed by the expected output."""
    return format_prompt(entry, style) + entry["output"]


def split_instruction_data(
    data: Sequence[dict], train_frac: float = 0.85, test_frac: float = 0.10
) -> tuple[list[dict], list[dict], list[dict]]:
    """Split in the book's order: the first train_frac for training, the next test_frac for
    testing, the rest for validation. Returns (train, val, test); 1,100 entries -> 935, 55, 110.
    """
    if not (0 < train_frac and 0 <= test_frac and train_frac + test_frac <= 1):
        raise ValueError(
            f"need 0 < train_frac, 0 <= test_frac and train_frac + test_frac <= 1, "
            f"got {train_frac} and {test_frac}"
        )
    train_end = int(len(data) * train_frac)
    test_end = train_end + int(len(data) * test_frac)
    return list(data[:train_end]), list(data[test_end:]), list(data[train_end:test_end])


class InstructionDataset(Dataset):
    """Entries formatted with format_training_text and tokenised once, up front.

    Validates every entry first (ValueError naming the index and field of a malformed one).
    Item i: the token ids of entry i, a list[int] of varying length.
    """

    def __init__(self, data: Sequence[dict], tokenizer, style: str = "alpaca"):
        _check_style(style)
        validate_entries(data)
        self.data = data
        self.encoded_texts = [
            tokenizer.encode(format_training_text(entry, style)) for entry in data
        ]

    def __getitem__(self, index: int) -> list[int]:
        return self.encoded_texts[index]

    def __len__(self) -> int:
        return len(self.encoded_texts)


def custom_collate_fn(
    batch: Sequence[Sequence[int]],
    pad_token_id: int = END_OF_TEXT_ID,
    ignore_index: int = -100,
    allowed_max_length: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a batch of token-id lists into (inputs, targets), each (b, n) int64 on ``device``.

    Every entry gets one end-of-text token (pad_token_id) and is padded with it up to the longest
    entry + 1. Targets are the inputs shifted left by one. In the targets, the first padding
    token stays (the model learns to end its response) and every later one becomes ignore_index,
    so padding adds nothing to the loss. With allowed_max_length, both are cut to that many
    tokens.
    """
    if len(batch) == 0:
        raise ValueError("cannot collate an empty batch")
    padded_length = max(len(item) for item in batch) + 1
    inputs_list, targets_list = [], []
    for item in batch:
        padded = torch.full((padded_length,), pad_token_id, dtype=torch.long)
        padded[: len(item)] = torch.as_tensor(item, dtype=torch.long)
        inputs = padded[:-1]
        targets = padded[1:].clone()
        # targets[len(item) - 1] is the first padding token (the end of the text); mask the rest.
        targets[len(item) :] = ignore_index
        if allowed_max_length is not None:
            inputs = inputs[:allowed_max_length]
            targets = targets[:allowed_max_length]
        inputs_list.append(inputs)
        targets_list.append(targets)
    return torch.stack(inputs_list).to(device), torch.stack(targets_list).to(device)


def create_instruction_dataloader(
    data: Sequence[dict],
    tokenizer,
    batch_size: int = 8,
    shuffle: bool = False,
    drop_last: bool = False,
    allowed_max_length: int | None = 1024,
    device: str | torch.device = "cpu",
    style: str = "alpaca",
    num_workers: int = 0,
    *,
    dataset: Callable[..., Dataset] | None = None,
    collate_fn: Callable | None = None,
) -> DataLoader:
    """DataLoader over InstructionDataset(data) batched by custom_collate_fn.

    Yields (inputs, targets), each (b, n) int64 on ``device``. dataset and collate_fn replace
    InstructionDataset and custom_collate_fn (shared.preference's loader does), with the same
    options.
    """
    dataset = dataset or InstructionDataset
    collate = partial(
        collate_fn or custom_collate_fn, allowed_max_length=allowed_max_length, device=device
    )
    return DataLoader(
        dataset(data, tokenizer, style=style),
        batch_size=batch_size,
        collate_fn=collate,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
    )


def split_for_finetuning(data: Sequence[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """split_instruction_data(data) with the three sizes printed, as ch07's finetuning scripts
    report them; ValueError when a set is empty."""
    train_data, val_data, test_data = split_instruction_data(data)
    print(
        f"{len(data)} entries: {len(train_data)} training, {len(val_data)} validation, "
        f"{len(test_data)} test"
    )
    if not (train_data and val_data and test_data):
        raise ValueError("too few entries for a training, validation and test set")
    return train_data, val_data, test_data


def finetuning_loaders(
    create_loader: Callable[..., DataLoader],
    train_data: Sequence[dict],
    val_data: Sequence[dict],
    test_data: Sequence[dict],
    **loader_args,
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """The (train, val, test) loaders create_loader (create_instruction_dataloader or
    shared.preference.create_preference_dataloader) makes with loader_args, the training one
    shuffled and of full batches only; ValueError when the training entries fill no batch."""
    train_loader = create_loader(train_data, shuffle=True, drop_last=True, **loader_args)
    val_loader = create_loader(val_data, **loader_args)
    test_loader = create_loader(test_data, **loader_args)
    if len(train_loader) == 0:
        raise ValueError(
            f"{len(train_data)} training entries make no full batch of "
            f"{loader_args['batch_size']}; use more entries or a smaller --batch-size"
        )
    return train_loader, val_loader, test_loader


def generate_response(
    model: nn.Module,
    tokenizer,
    entry: dict,
    device: str | torch.device,
    max_new_tokens: int = 256,
    style: str = "alpaca",
    context_size: int | None = None,
    eos_id: int = END_OF_TEXT_ID,
    use_cache: bool | None = None,
) -> str:
    """The model's response to one entry (greedy decoding), without the prompt.

    The prompt is format_prompt(entry, style); decoding stops at eos_id or after max_new_tokens.
    Only the new tokens are decoded, so the prompt is stripped exactly. context_size defaults to
    the model's positional-embedding length; a longer prompt keeps its last context_size tokens,
    with a warning. use_cache: decode with the model's key/value cache (a
    shared.kv_cache.KVCacheGPTModel), which gives the same tokens without recomputing the
    prompt at every step; None (the default) uses it whenever the model has one.
    """
    if context_size is None:
        context_size = model.pos_emb.num_embeddings
    if use_cache is None:
        use_cache = hasattr(model, "new_cache")
    prompt_ids = tokenizer.encode(format_prompt(entry, style))
    if len(prompt_ids) > context_size:
        warnings.warn(
            f"the prompt has {len(prompt_ids)} tokens, more than the model's context of "
            f"{context_size}; keeping its last {context_size} tokens",
            stacklevel=2,
        )
        prompt_ids = prompt_ids[-context_size:]
    idx = torch.tensor([prompt_ids], device=device)
    model.eval()
    out = generate(model, idx, max_new_tokens, context_size, eos_id=eos_id, use_cache=use_cache)
    new_ids = [t for t in out[0, len(prompt_ids) :].tolist() if t != eos_id]
    return tokenizer.decode(new_ids).strip()


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def token_f1(prediction: str, reference: str) -> float:
    """Word-overlap F1 between two texts, in [0, 1].

    Both are lowercased and split into words (runs of letters, digits, underscores); precision
    and recall count shared words with multiplicity. Two empty texts score 1, one empty text 0.
    """
    pred, ref = _words(prediction), _words(reference)
    if not pred or not ref:
        return float(pred == ref)
    shared = sum((Counter(pred) & Counter(ref)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(pred), shared / len(ref)
    return 2 * precision * recall / (precision + recall)


def ollama_url(host: str = "127.0.0.1", port: int = 11434) -> str:
    """The address of Ollama's chat endpoint on host:port."""
    return f"http://{host}:{port}/api/chat"


def ollama_is_running(url: str = DEFAULT_OLLAMA_URL, timeout: float = 2.0) -> bool:
    """True when an HTTP server answers at the root of ``url``'s host and port."""
    parts = urllib.parse.urlsplit(url)
    try:
        with urllib.request.urlopen(f"{parts.scheme}://{parts.netloc}/", timeout=timeout):
            return True
    except (urllib.error.URLError, OSError):
        return False


def query_model(
    prompt: str,
    model: str = "llama3",
    url: str = DEFAULT_OLLAMA_URL,
    seed: int = 123,
    num_ctx: int = 2048,
    timeout: float = 300.0,
) -> str:
    """Send one user message to Ollama's /api/chat and return the whole reply text.

    Greedy (temperature 0) and seeded, so a judge gives the same answer twice. The reply
    streams as newline-delimited JSON chunks, each with ``message.content``, the last with
    ``"done": true``. Raises ConnectionError when no server answers and RuntimeError when the
    server reports an error (for example a model that has not been pulled).
    """
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "options": {"seed": seed, "temperature": 0, "num_ctx": num_ctx},
    }
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        detail = err.read().decode("utf-8", errors="replace").strip()
        raise RuntimeError(f"{url} answered HTTP {err.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as err:
        raise ConnectionError(
            f"no Ollama server answers at {url} ({err}); start one with `ollama serve` "
            f"and pull the judge with `ollama pull {model}`"
        ) from None
    reply = []
    with response:
        for line in response:
            if not line.strip():
                continue
            chunk = json.loads(line)
            if "error" in chunk:
                raise RuntimeError(f"{url} reported an error: {chunk['error']}")
            reply.append(chunk.get("message", {}).get("content", ""))
            if chunk.get("done"):
                break
    return "".join(reply)


def judge_prompt(entry: dict, json_key: str = "model_response") -> str:
    """The instruction to a judge model: score entry[json_key] against entry["output"], 0-100."""
    return (
        "You grade answers to instructions.\n\n"
        f"Task:\n{format_input(entry)}\n\n"
        f"Reference answer:\n{entry['output']}\n\n"
        f"Answer to grade:\n{entry[json_key]}\n\n"
        "Score the answer to grade from 0 (wrong or unrelated) to 100 (as good as the "
        "reference answer). Reply with the integer score only."
    )


_SCORE = re.compile(r"\s*(?:score\s*[:=]?\s*)?(\d{1,3})(?:\s*/\s*100)?\s*\.?\s*", re.IGNORECASE)


def parse_score(reply: str) -> int | None:
    """The integer score 0-100 in a judge's reply, or None when the reply is not just a score.

    Accepted: "85", " 85.\\n", "85/100", "Score: 85". Anything else (words, ranges, numbers
    above 100) is None.
    """
    match = _SCORE.fullmatch(reply)
    if match is None or int(match.group(1)) > 100:
        return None
    return int(match.group(1))


class JudgeScores(NamedTuple):
    """Scores from a judge model: ``scores`` (one int per scored entry) and ``skipped`` (the
    indices of entries whose reply was not a score)."""

    scores: list[int]
    skipped: list[int]

    @property
    def average(self) -> float | None:
        """Mean score, or None when nothing was scored."""
        return sum(self.scores) / len(self.scores) if self.scores else None


def generate_model_scores(
    json_data: Sequence[dict],
    json_key: str = "model_response",
    model: str = "llama3",
    url: str = DEFAULT_OLLAMA_URL,
    progress: bool = True,
) -> JudgeScores:
    """Ask a judge model served by Ollama to score entry[json_key] of every entry, 0-100.

    A reply that is not a score (see parse_score) is skipped and its index recorded.
    """
    for index, entry in enumerate(json_data):
        if json_key not in entry:
            raise ValueError(f"entry {index} has no {json_key!r} field to score")
    scores, skipped = [], []
    for index, entry in enumerate(tqdm(json_data, desc="Scoring", disable=not progress)):
        score = parse_score(query_model(judge_prompt(entry, json_key), model=model, url=url))
        if score is None:
            skipped.append(index)
        else:
            scores.append(score)
    return JudgeScores(scores, skipped)
