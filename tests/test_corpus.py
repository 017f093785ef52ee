"""The memory-mapped corpus path yields exactly what the in-memory path does."""

import numpy as np
import pytest
import torch

from shared import corpus
from shared.corpus import TOKEN_DTYPE, TokenWindowDataset, prepare_token_file
from shared.dataset import GPTDatasetV1
from shared.tokenizers import END_OF_TEXT, gpt2_tokenizer

TRICKY = (
    "Hello,  world!\n\n  Indented line\t\tand tabs\n\n\nIt's 2024... café 🚀\n<|endoftext|>\nEnd \n"
)


def test_windows_equal_in_memory_dataset(tmp_path, verdict):
    (tmp_path / "verdict.txt").write_text(verdict, encoding="utf-8")
    n = prepare_token_file([tmp_path / "verdict.txt"], tmp_path / "tokens.bin")
    assert n == 5145
    for max_length, stride in [(256, 256), (4, 1), (16, 5)]:
        mapped = TokenWindowDataset(tmp_path / "tokens.bin", max_length, stride)
        memory = GPTDatasetV1(verdict, gpt2_tokenizer(), max_length, stride)
        assert len(mapped) == len(memory)
        for i in range(len(memory)):
            for a, b in zip(mapped[i], memory[i], strict=True):
                assert torch.equal(a, b)


@pytest.mark.parametrize("block_chars", [7, 64, 1 << 20])
def test_chunked_tokenisation_is_exact(tmp_path, verdict, block_chars):
    text = TRICKY * 3 + verdict[:3000]
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    chunks = list(corpus._safe_chunks(tmp_path / "t.txt", block_chars))
    assert "".join(chunks) == text
    if block_chars < 100:
        assert len(chunks) > 1
    ids = [t for c in chunks for t in gpt2_tokenizer().encode(c, allowed_special={END_OF_TEXT})]
    assert ids == gpt2_tokenizer().encode(text, allowed_special={END_OF_TEXT})


def test_files_are_joined_with_end_of_text(tmp_path):
    (tmp_path / "a.txt").write_text("First document.", encoding="utf-8")
    (tmp_path / "b.txt").write_text("Second one.", encoding="utf-8")
    prepare_token_file([tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path / "ab.bin")
    tokens = np.fromfile(tmp_path / "ab.bin", dtype=TOKEN_DTYPE).tolist()
    tok = gpt2_tokenizer()
    assert tokens == tok.encode("First document.") + [50256] + tok.encode("Second one.")


def test_failed_prepare_leaves_no_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        prepare_token_file([tmp_path / "missing.txt"], tmp_path / "out.bin")
    assert list(tmp_path.iterdir()) == []


def test_too_short_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "s.txt").write_text("Too short.", encoding="utf-8")
    prepare_token_file([tmp_path / "s.txt"], tmp_path / "s.bin")
    with pytest.raises(ValueError, match="too few"):
        TokenWindowDataset(tmp_path / "s.bin", max_length=256, stride=256)
