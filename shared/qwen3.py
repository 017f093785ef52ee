"""Qwen3 (ch05 bonus): its configuration, tokenizer and weights, on shared.open_models.

Qwen3 0.6B is OpenDecoderModel with grouped-query attention (16 query heads, 8 key/value
groups, each head 128-dimensional: 2048 query dimensions from a 1024-dimensional embedding), an
RMSNorm on every query and key head (QK-norm), plain RoPE with base 1,000,000, and the output
head tied to the token embedding. Its weights and tokenizer (``Qwen/Qwen3-0.6B`` on Hugging
Face) are open; without a network, load_pretrained_qwen3 says so in one line and returns a
small random stand-in.
"""

from __future__ import annotations

from pathlib import Path

import torch

from shared.data import DataFile
from shared.gpt2_weights import check_safetensors
from shared.open_models import (
    HuggingFaceTokenizer,
    OpenDecoderModel,
    PretrainedOpenModel,
    build_standin,
    check_json,
    load_or_standin,
    load_pretrained_files,
)

# The values of Qwen/Qwen3-0.6B's config.json, in the course's names.
QWEN3_CONFIG_0_6B = {
    "vocab_size": 151_936,  # vocab_size
    "context_length": 40_960,  # max_position_embeddings
    "emb_dim": 1024,  # hidden_size
    "n_heads": 16,  # num_attention_heads
    "n_kv_groups": 8,  # num_key_value_heads
    "head_dim": 128,  # head_dim (n_heads * head_dim = 2048 > emb_dim)
    "hidden_dim": 3072,  # intermediate_size (SwiGLU width)
    "n_layers": 28,  # num_hidden_layers
    "rope_base": 1_000_000.0,  # rope_theta
    "rope_llama3_scaling": None,  # rope_scaling: null
    "norm_eps": 1e-6,  # rms_norm_eps
    "qk_norm": True,  # Qwen3's RMSNorm on queries and keys
    "tie_embeddings": True,  # tie_word_embeddings
}

# The offline stand-in: Qwen3's architecture at a small size (head_dim kept at 128), with
# GPT-2's vocabulary (its tokenizer stands in for Qwen's), randomly initialised.
QWEN3_STANDIN_CONFIG = {
    **QWEN3_CONFIG_0_6B,
    "vocab_size": 50_257,
    "context_length": 8192,
    "emb_dim": 256,
    "n_heads": 4,
    "n_kv_groups": 2,
    "hidden_dim": 768,
    "n_layers": 4,
}

_HF = "https://huggingface.co/Qwen/Qwen3-0.6B/resolve/main"

QWEN3_0_6B_FILES = [
    DataFile("qwen3-0.6b/tokenizer.json", f"{_HF}/tokenizer.json", check=check_json),
    DataFile("qwen3-0.6b/model.safetensors", f"{_HF}/model.safetensors", check=check_safetensors),
]


def chat_prompt(user_message: str) -> str:
    """Qwen3's chat format for one user message, with thinking switched off (an empty
    <think></think> block): the assistant's reply follows, ended by <|im_end|>."""
    return (
        f"<|im_start|>user\n{user_message}<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


class Qwen3Model(OpenDecoderModel):
    """Qwen3: OpenDecoderModel with QK-norm (cfg: QWEN3_CONFIG_0_6B's keys)."""

    def __init__(self, cfg: dict):
        if not cfg["qk_norm"]:
            raise ValueError("Qwen3 normalises queries and keys; set qk_norm=True")
        super().__init__(cfg)


def standin_qwen3(seed: int = 123) -> PretrainedOpenModel:
    """Qwen3Model(QWEN3_STANDIN_CONFIG), seeded, with GPT-2's tokenizer (see build_standin)."""
    return build_standin(
        Qwen3Model, QWEN3_STANDIN_CONFIG, "Qwen3", "shared.qwen3.QWEN3_STANDIN_CONFIG", seed
    )


def load_pretrained_qwen3(
    dtype: torch.dtype = torch.bfloat16, seed: int = 123
) -> PretrainedOpenModel:
    """Qwen3 0.6B with Qwen's weights and tokenizer, in eval mode, parameters in dtype.

    eos_id is <|im_end|>, which ends a chat reply (see chat_prompt). When
    LLM_COURSE_STANDIN=1, or the files cannot be had (offline), prints one line saying so and
    returns standin_qwen3(seed).
    """

    def load_real(paths: list[Path]) -> PretrainedOpenModel:
        tokenizer = HuggingFaceTokenizer(paths[0])
        return load_pretrained_files(
            Qwen3Model,
            {**QWEN3_CONFIG_0_6B, "dtype": dtype},
            paths[1],
            tokenizer,
            eos_id=tokenizer.token_id("<|im_end|>"),
            description="Qwen3 0.6B (Qwen/Qwen3-0.6B)",
        )

    return load_or_standin("Qwen3 0.6B", QWEN3_0_6B_FILES, load_real, lambda: standin_qwen3(seed))
