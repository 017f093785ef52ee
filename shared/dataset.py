"""Sliding-window dataset and data loader of Chapter 2."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from shared.tokenizers import END_OF_TEXT, gpt2_tokenizer


class GPTDatasetV1(Dataset):
    """Input/target windows cut from one text: targets are the inputs shifted by one token.

    Window i starts at token i * stride. Each item is (input_ids, target_ids), both
    (max_length,) int64 tensors. Raises ValueError when the text has fewer than
    max_length + 1 tokens, since not even one window would fit.
    """

    def __init__(self, txt: str, tokenizer, max_length: int, stride: int):
        if max_length < 1 or stride < 1:
            raise ValueError(f"max_length ({max_length}) and stride ({stride}) must be >= 1")
        token_ids = tokenizer.encode(txt, allowed_special={END_OF_TEXT})
        if len(token_ids) < max_length + 1:
            raise ValueError(
                f"the text has {len(token_ids)} tokens, too few for one window of "
                f"max_length={max_length} plus its one-token-shifted target "
                f"(needs at least {max_length + 1}); use a longer text or a smaller max_length"
            )
        self.input_ids = []
        self.target_ids = []
        for i in range(0, len(token_ids) - max_length, stride):
            self.input_ids.append(torch.tensor(token_ids[i : i + max_length]))
            self.target_ids.append(torch.tensor(token_ids[i + 1 : i + max_length + 1]))

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.input_ids[idx], self.target_ids[idx]


def create_dataloader_v1(
    txt: str,
    batch_size: int = 4,
    max_length: int = 256,
    stride: int = 128,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
) -> DataLoader:
    """DataLoader over GPTDatasetV1 windows of txt, tokenised with GPT-2's BPE.

    Yields (inputs, targets), each (batch_size, max_length) int64. Raises ValueError when
    drop_last would leave no batch at all (fewer windows than batch_size).
    """
    dataset = GPTDatasetV1(txt, gpt2_tokenizer(), max_length, stride)
    if drop_last and len(dataset) < batch_size:
        raise ValueError(
            f"the text gives {len(dataset)} windows, fewer than batch_size={batch_size}, so "
            "drop_last=True would yield no batch; use a smaller batch_size or drop_last=False"
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
    )
