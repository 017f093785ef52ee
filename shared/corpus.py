"""Corpora larger than memory: tokenise text files once into a memory-mapped token file.

``prepare_token_file`` streams text files through GPT-2's tokenizer into a flat file of uint16
token ids (written to a temporary file and renamed, so an interrupted run leaves nothing half
written). ``TokenWindowDataset`` reads input/target windows straight from that file through a
memory map, so only the windows in use are ever in memory. On the same text it yields exactly
the windows of ``shared.dataset.GPTDatasetV1``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from shared.data import written_atomically
from shared.tokenizers import END_OF_TEXT, gpt2_tokenizer

TOKEN_DTYPE = np.uint16  # GPT-2's 50,257 ids fit in 16 bits
_BLOCK_CHARS = 1 << 20


def _safe_chunks(text_file: Path, block_chars: int = _BLOCK_CHARS) -> Iterator[str]:
    """Yield a text file in pieces that tokenise exactly as the whole text does.

    A piece ends just before a newline that follows a non-space character: GPT-2's pre-tokenizer
    always starts a new pre-token there, so cutting there changes no token.
    """
    carry = ""
    with open(text_file, encoding="utf-8") as f:
        while block := f.read(block_chars):
            text = carry + block
            cut = len(text)
            while (cut := text.rfind("\n", 0, cut)) > 0 and text[cut - 1].isspace():
                pass
            if cut <= 0:  # no safe place yet: read more
                carry = text
                continue
            yield text[:cut]
            carry = text[cut:]
    if carry:
        yield carry


def prepare_token_file(
    text_files: Iterable[str | Path], out_path: str | Path, tokenizer=None
) -> int:
    """Tokenise text files into one flat uint16 token file; return the number of tokens.

    Files are joined with the ``<|endoftext|>`` id between them (not after the last), so
    documents stay separate. tokenizer: anything with ``encode(text, allowed_special=...)`` and
    ``n_vocab`` (default: GPT-2's).
    """
    tokenizer = tokenizer or gpt2_tokenizer()
    if tokenizer.n_vocab > np.iinfo(TOKEN_DTYPE).max + 1:
        raise ValueError(f"vocabulary of {tokenizer.n_vocab:,} ids does not fit in {TOKEN_DTYPE}")
    end_of_text = tokenizer.encode(END_OF_TEXT, allowed_special={END_OF_TEXT})
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    total = 0
    with written_atomically(out_path) as tmp, open(tmp, "wb") as out:
        for i, text_file in enumerate(text_files):
            ids = end_of_text if i > 0 else []
            np.asarray(ids, dtype=TOKEN_DTYPE).tofile(out)
            total += len(ids)
            for chunk in _safe_chunks(Path(text_file)):
                ids = tokenizer.encode(chunk, allowed_special={END_OF_TEXT})
                np.asarray(ids, dtype=TOKEN_DTYPE).tofile(out)
                total += len(ids)
    return total


class TokenWindowDataset(Dataset):
    """Input/target windows read from a token file made by ``prepare_token_file``.

    Window i starts at token i * stride; items are (input_ids, target_ids), both (max_length,)
    int64, targets shifted by one. Raises ValueError when the file holds fewer than
    max_length + 1 tokens.
    """

    def __init__(self, token_file: str | Path, max_length: int, stride: int):
        if max_length < 1 or stride < 1:
            raise ValueError(f"max_length ({max_length}) and stride ({stride}) must be >= 1")
        self.tokens = np.memmap(token_file, dtype=TOKEN_DTYPE, mode="r")
        if len(self.tokens) < max_length + 1:
            raise ValueError(
                f"{Path(token_file).name} has {len(self.tokens)} tokens, too few for one window "
                f"of max_length={max_length} plus its shifted target"
            )
        self.max_length = max_length
        self.stride = stride
        self.num_windows = len(range(0, len(self.tokens) - max_length, stride))

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= idx < self.num_windows:
            raise IndexError(f"window {idx} out of range for {self.num_windows} windows")
        start = idx * self.stride
        window = torch.from_numpy(self.tokens[start : start + self.max_length + 1].astype(np.int64))
        return window[:-1], window[1:]
