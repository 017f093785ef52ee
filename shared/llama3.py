"""Llama 3.2 (ch05 bonus): its configuration, tokenizer and weights, on shared.open_models.

Llama 3.2 1B is OpenDecoderModel with grouped-query attention (32 query heads, 8 key/value
groups), RoPE with Llama 3's frequency scaling, no QK-norm, and the output head tied to the
token embedding. Its weights (``meta-llama/Llama-3.2-1B`` on Hugging Face) are gated: a user who
has accepted Meta's licence downloads ``model.safetensors`` and ``original/tokenizer.model``
(for example with ``huggingface-cli download``) and places them in the course's cache as
``llama-3.2-1b/model.safetensors`` and ``llama-3.2-1b/tokenizer.model`` (see shared.data).
Without them, load_pretrained_llama3 says so in one line and returns a small random stand-in.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

import tiktoken
import torch

from shared.data import CorruptDataError, DataFile
from shared.gpt2_weights import check_safetensors
from shared.open_models import (
    OpenDecoderModel,
    PretrainedOpenModel,
    build_standin,
    load_or_standin,
    load_pretrained_files,
)

# The values of meta-llama/Llama-3.2-1B's config.json, in the course's names.
LLAMA32_CONFIG_1B = {
    "vocab_size": 128_256,  # vocab_size
    "context_length": 131_072,  # max_position_embeddings
    "emb_dim": 2048,  # hidden_size
    "n_heads": 32,  # num_attention_heads
    "n_kv_groups": 8,  # num_key_value_heads
    "head_dim": 64,  # head_dim
    "hidden_dim": 8192,  # intermediate_size (SwiGLU width)
    "n_layers": 16,  # num_hidden_layers
    "rope_base": 500_000.0,  # rope_theta
    "rope_llama3_scaling": {  # rope_scaling (rope_type "llama3")
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_context_length": 8192,  # original_max_position_embeddings
    },
    "norm_eps": 1e-5,  # rms_norm_eps
    "qk_norm": False,
    "tie_embeddings": True,  # tie_word_embeddings
}

# The offline stand-in: Llama 3.2's architecture and RoPE at a small size, with GPT-2's
# vocabulary (its tokenizer stands in for Llama's), randomly initialised.
LLAMA3_STANDIN_CONFIG = {
    **LLAMA32_CONFIG_1B,
    "vocab_size": 50_257,
    "context_length": 8192,
    "emb_dim": 256,
    "n_heads": 4,
    "n_kv_groups": 2,
    "hidden_dim": 768,
    "n_layers": 4,
}

# Llama 3's pre-tokenizer pattern (published with its tokenizer) and its 256 special tokens,
# numbered after the 128,000 byte-pair tokens.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_NAMED_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
]
LLAMA3_SPECIAL_TOKENS = _NAMED_SPECIAL_TOKENS + [
    f"<|reserved_special_token_{i}|>" for i in range(2, 256 - len(_NAMED_SPECIAL_TOKENS) + 2)
]

_HF = "https://huggingface.co/meta-llama/Llama-3.2-1B/resolve/main"


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """The byte-pair ranks of a tiktoken file (Llama 3's tokenizer.model): one "base64 rank" a
    line. Raises CorruptDataError naming the file and line that does not parse."""
    ranks = {}
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except (ValueError, binascii.Error):
                raise CorruptDataError(
                    f"{path.name} line {number}: expected '<base64 token> <rank>'"
                ) from None
    return ranks


def check_tiktoken_file(path: Path) -> None:
    """Structural check of a tokenizer.model file; raises CorruptDataError."""
    if not read_tiktoken_ranks(path):
        raise CorruptDataError(f"{path.name}: no tokens")


LLAMA32_1B_FILES = [
    DataFile(
        "llama-3.2-1b/tokenizer.model", f"{_HF}/original/tokenizer.model", check=check_tiktoken_file
    ),
    DataFile("llama-3.2-1b/model.safetensors", f"{_HF}/model.safetensors", check=check_safetensors),
]


def llama3_tokenizer(path: Path) -> tiktoken.Encoding:
    """Llama 3's tokenizer from its tokenizer.model: tiktoken with Llama 3's pattern and special
    tokens (ids 128000 ... 128255 in the published file). encode(text) -> list[int]; pass
    allowed_special="all" to encode special tokens written in the text."""
    ranks = read_tiktoken_ranks(path)
    specials = {token: len(ranks) + i for i, token in enumerate(LLAMA3_SPECIAL_TOKENS)}
    return tiktoken.Encoding(
        name=Path(path).name,
        pat_str=LLAMA3_PATTERN,
        mergeable_ranks=ranks,
        special_tokens=specials,
    )


class Llama3Model(OpenDecoderModel):
    """Llama 3 / 3.2: OpenDecoderModel without QK-norm (cfg: LLAMA32_CONFIG_1B's keys)."""

    def __init__(self, cfg: dict):
        if cfg["qk_norm"]:
            raise ValueError("Llama 3 has no QK-norm; set qk_norm=False (Qwen3 uses it)")
        super().__init__(cfg)


def standin_llama3(seed: int = 123) -> PretrainedOpenModel:
    """Llama3Model(LLAMA3_STANDIN_CONFIG), seeded, with GPT-2's tokenizer (see build_standin)."""
    return build_standin(
        Llama3Model, LLAMA3_STANDIN_CONFIG, "Llama 3", "shared.llama3.LLAMA3_STANDIN_CONFIG", seed
    )


def load_pretrained_llama3(
    dtype: torch.dtype = torch.bfloat16, seed: int = 123
) -> PretrainedOpenModel:
    """Llama 3.2 1B with Meta's weights and tokenizer, in eval mode, parameters in dtype.

    The files come from the course's cache or mirror (shared.data), or Hugging Face where the
    user's access allows. When LLM_COURSE_STANDIN=1, or the files cannot be had (the model is
    gated), prints one line saying so and returns standin_llama3(seed).
    """

    def load_real(paths: list[Path]) -> PretrainedOpenModel:
        tokenizer = llama3_tokenizer(paths[0])
        return load_pretrained_files(
            Llama3Model,
            {**LLAMA32_CONFIG_1B, "dtype": dtype},
            paths[1],
            tokenizer,
            eos_id=tokenizer.encode("<|end_of_text|>", allowed_special="all")[0],
            description="Meta Llama 3.2 1B (meta-llama/Llama-3.2-1B)",
        )

    return load_or_standin(
        "Llama 3.2 1B",
        LLAMA32_1B_FILES,
        load_real,
        lambda: standin_llama3(seed),
        unavailable_note="is gated (accept Meta's licence on Hugging Face and place its files "
        "in the course cache, see shared.llama3) or you are offline",
    )
