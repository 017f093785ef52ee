"""Gemma 3 (ch05 bonus): configurations, tokenizer, chat format and weights, on shared.open_models.

Gemma 3 270M and 1B are OpenDecoderModel with these settings, all of them configuration:

- interleaved attention: five sliding-window layers (each token sees itself and the 511 tokens
  before it) for every full-attention layer, and separate RoPE bases for the two kinds
  (10,000 for the sliding layers, 1,000,000 for the full ones);
- an RMSNorm before and after each sublayer (norm_placement "pre_post"), and on every query
  and key head (QK-norm); Gemma stores every RMSNorm scale as 1 + weight (norm_offset 1.0);
- GeGLU (a GELU gate, tanh approximation) instead of SwiGLU;
- token embeddings multiplied by sqrt(emb_dim), and the output head tied to them;
- attention scores scaled by 1 / sqrt(query_pre_attn_scalar) (256 in both sizes, which equals
  1 / sqrt(head_dim) there).

The weights (``google/gemma-3-270m``, ``-270m-it``, ``google/gemma-3-1b-pt``, ``-1b-it`` on
Hugging Face) are gated: a user who has accepted Google's Gemma licence on the model's page
downloads its ``model.safetensors`` and ``tokenizer.json`` (for example with
``huggingface-cli download google/gemma-3-270m-it model.safetensors tokenizer.json --local-dir
DIR``) and places them in the course's cache as ``gemma-3-270m-it/model.safetensors`` and
``gemma-3-270m-it/tokenizer.json`` (see shared.data for the cache folder; the other variants
likewise). Without them, load_pretrained_gemma3 says so in one line and returns a small random
stand-in.

Attention logit softcapping (Gemma 2) is not implemented: the published 270M and 1B configs
set none, and gemma3_config_from_hf refuses a config that does.
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
    decoder_config_from_hf,
    load_or_standin,
    load_pretrained_files,
)


def gemma3_layer_types(n_layers: int, pattern: int = 6) -> list[str]:
    """Gemma 3's layer pattern: every pattern-th layer (6th, 12th, ...) attends to the full
    context, the others through a sliding window (transformers' rule for config.json files
    that give sliding_window_pattern instead of layer_types)."""
    if pattern < 1:
        raise ValueError(f"sliding_window_pattern must be at least 1, got {pattern}")
    return [
        "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layers)
    ]


# The values of google/gemma-3-270m's config.json (the -it model's is the same), in the course's
# names. Google's repository is gated: they were read from public copies of that file (models
# fine-tuned from it that keep it unchanged); the parameter count they give, 268,098,176,
# is the one published for the model.
GEMMA3_CONFIG_270M = {
    "vocab_size": 262_144,  # vocab_size
    "context_length": 32_768,  # max_position_embeddings
    "emb_dim": 640,  # hidden_size
    "n_heads": 4,  # num_attention_heads
    "n_kv_groups": 1,  # num_key_value_heads
    "head_dim": 256,  # head_dim (n_heads * head_dim = 1024 > emb_dim)
    "hidden_dim": 2048,  # intermediate_size (GeGLU width)
    "n_layers": 18,  # num_hidden_layers
    "layer_types": gemma3_layer_types(18),  # layer_types: 5 sliding, 1 full, three times
    "sliding_window": 512,  # sliding_window
    "rope_base": 1_000_000.0,  # rope_theta (full-attention layers)
    "rope_local_base": 10_000.0,  # rope_local_base_freq (sliding-window layers)
    "rope_llama3_scaling": None,  # rope_scaling: null
    "rope_yarn_scaling": None,  # rope_scaling: null
    "norm_eps": 1e-6,  # rms_norm_eps
    "qk_norm": True,  # q_norm, k_norm (always in Gemma 3)
    "norm_placement": "pre_post",  # input/post_attention/pre_feedforward/post_feedforward norms
    "norm_offset": 1.0,  # Gemma's RMSNorm multiplies by 1 + weight
    "query_scale": 256**-0.5,  # query_pre_attn_scalar: 256
    "ff_activation": "gelu_tanh",  # hidden_activation: gelu_pytorch_tanh
    "emb_scale": True,  # embeddings times sqrt(hidden_size) (always in Gemma 3)
    "tie_embeddings": True,  # tie_word_embeddings: true
}

# google/gemma-3-1b-pt's and -1b-it's config.json, read likewise from public copies of the -it
# one (it gives sliding_window_pattern 6 instead of layer_types; tie_word_embeddings is absent,
# so transformers' default, true, applies). 999,885,952 parameters, as published.
GEMMA3_CONFIG_1B = {
    **GEMMA3_CONFIG_270M,
    "emb_dim": 1152,  # hidden_size
    "hidden_dim": 6912,  # intermediate_size
    "n_layers": 26,  # num_hidden_layers
    "layer_types": gemma3_layer_types(26),  # sliding_window_pattern: 6 (layers 24, 25 slide)
}

# Settings every Gemma 3 has (Gemma3Model refuses a cfg without them).
GEMMA3_ARCHITECTURE = {
    "qk_norm": True,
    "norm_placement": "pre_post",
    "norm_offset": 1.0,
    "ff_activation": "gelu_tanh",
    "emb_scale": True,
}

# The offline stand-in: Gemma 3's architecture at a small size (6 layers: 5 sliding, 1 full;
# head_dim, window and RoPE bases kept), with GPT-2's vocabulary (its tokenizer stands in for
# Gemma's), randomly initialised.
GEMMA3_STANDIN_CONFIG = {
    **GEMMA3_CONFIG_270M,
    "vocab_size": 50_257,
    "context_length": 8192,
    "emb_dim": 256,
    "hidden_dim": 768,
    "n_layers": 6,
    "layer_types": gemma3_layer_types(6),
}

# The published checkpoints: variant -> (Hugging Face repository, config, instruction-tuned).
GEMMA3_VARIANTS = {
    "270m": ("google/gemma-3-270m", GEMMA3_CONFIG_270M, False),
    "270m-it": ("google/gemma-3-270m-it", GEMMA3_CONFIG_270M, True),
    "1b-pt": ("google/gemma-3-1b-pt", GEMMA3_CONFIG_1B, False),
    "1b-it": ("google/gemma-3-1b-it", GEMMA3_CONFIG_1B, True),
}


def gemma3_files(variant: str) -> list[DataFile]:
    """The tokenizer.json and model.safetensors of a variant (a key of GEMMA3_VARIANTS), cached
    as <repository name>/<file>, e.g. gemma-3-270m-it/model.safetensors."""
    if variant not in GEMMA3_VARIANTS:
        raise ValueError(f"Gemma 3 variant {variant!r} is not one of {sorted(GEMMA3_VARIANTS)}")
    repo = GEMMA3_VARIANTS[variant][0]
    folder = repo.split("/")[1]
    url = f"https://huggingface.co/{repo}/resolve/main"
    return [
        DataFile(f"{folder}/tokenizer.json", f"{url}/tokenizer.json", check=check_json),
        DataFile(
            f"{folder}/model.safetensors", f"{url}/model.safetensors", check=check_safetensors
        ),
    ]


def chat_prompt(user_message: str, system_prompt: str | None = None) -> str:
    """Gemma 3's chat format for one user message, ending where the model's reply begins.

    <bos>, then the user's turn between <start_of_turn>user and <end_of_turn>, then
    <start_of_turn>model; the reply ends with <end_of_turn>. Gemma has no system turn: a system
    prompt goes before the message in the user's turn, followed by a blank line. The message is
    stripped of surrounding whitespace (the system prompt is not), as Gemma's template does.
    """
    prefix = f"{system_prompt}\n\n" if system_prompt is not None else ""
    return (
        f"<bos><start_of_turn>user\n{prefix}{user_message.strip()}<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


class Gemma3Model(OpenDecoderModel):
    """Gemma 3: OpenDecoderModel with GEMMA3_ARCHITECTURE's settings (cfg: GEMMA3_CONFIG_270M's
    keys). Raises ValueError naming a setting that differs."""

    def __init__(self, cfg: dict):
        for key, value in GEMMA3_ARCHITECTURE.items():
            if cfg.get(key) != value:
                raise ValueError(f"Gemma 3 needs {key}={value!r}, got {cfg.get(key)!r}")
        super().__init__(cfg)


# Gemma3TextConfig's defaults, for the keys a config.json leaves out.
_HF_DEFAULTS = {
    "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "tie_word_embeddings": True,
}


def gemma3_config_from_hf(hf_config: dict) -> dict:
    """The course's cfg from a Hugging Face config.json of Gemma3ForCausalLM (model_type
    "gemma3_text": the 270M and 1B models).

    layer_types, when absent, follow sliding_window_pattern (default 6). Raises ValueError for
    another model type, an activation other than gelu_pytorch_tanh, bidirectional attention
    (EmbeddingGemma), attention or final-logit softcapping (not implemented: the published
    270M and 1B configs set none), and RoPE scaling that is not implemented (the 4B-27B models'
    linear scaling, see shared.open_models.rope_config_from_hf).
    """
    model_type = hf_config.get("model_type")
    if model_type != "gemma3_text":
        raise ValueError(
            f"model_type {model_type!r} is not supported; expected gemma3_text (the text-only "
            "Gemma 3 270M and 1B; the multimodal gemma3 models are not)"
        )
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if hf_config.get(key) is not None:
            raise ValueError(
                f"{key}={hf_config[key]} is not supported: Gemma 3 270M and 1B use no "
                "softcapping, and this course does not implement it"
            )
    if hf_config.get("use_bidirectional_attention"):
        raise ValueError("use_bidirectional_attention=True (EmbeddingGemma) is not supported")
    activation = hf_config.get("hidden_activation", "gelu_pytorch_tanh")
    if activation != "gelu_pytorch_tanh":
        raise ValueError(
            f"hidden_activation {activation!r} is not supported; expected GeGLU's gelu_pytorch_tanh"
        )
    hf = {**_HF_DEFAULTS, **hf_config}
    if not hf.get("layer_types"):
        pattern = hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 6
        hf["layer_types"] = gemma3_layer_types(hf["num_hidden_layers"], pattern)
    return {
        **decoder_config_from_hf(hf),
        **GEMMA3_ARCHITECTURE,
        "query_scale": hf["query_pre_attn_scalar"] ** -0.5,
    }


def standin_gemma3(seed: int = 123) -> PretrainedOpenModel:
    """Gemma3Model(GEMMA3_STANDIN_CONFIG), seeded, with GPT-2's tokenizer (see build_standin)."""
    return build_standin(
        Gemma3Model, GEMMA3_STANDIN_CONFIG, "Gemma 3", "shared.gemma3.GEMMA3_STANDIN_CONFIG", seed
    )


def load_pretrained_gemma3(
    variant: str = "270m-it", dtype: torch.dtype = torch.bfloat16, seed: int = 123
) -> PretrainedOpenModel:
    """Gemma 3 with Google's weights and tokenizer, in eval mode, parameters in dtype.

    variant: a key of GEMMA3_VARIANTS ("270m", "270m-it", "1b-pt", "1b-it"). The tokenizer is
    Gemma's tokenizer.json read by HuggingFaceTokenizer (the ``tokenizers`` library reads either).
    Gemma expects <bos> first: chat_prompt starts with it; before a plain text for the
    pretrained variants, write "<bos>" yourself. eos_id is <end_of_turn> for the instruction-
    tuned variants (it ends a chat reply) and <eos> for the pretrained ones.

    The weights are gated (see the module docstring for how to get them): the files come from
    the course's cache or mirror (shared.data), or Hugging Face where the user's access allows.
    When LLM_COURSE_STANDIN=1, or the files cannot be had, prints one line saying so and
    returns standin_gemma3(seed).
    """
    files = gemma3_files(variant)
    repo, cfg, instruct = GEMMA3_VARIANTS[variant]

    def load_real(paths: list[Path]) -> PretrainedOpenModel:
        tokenizer = HuggingFaceTokenizer(paths[0])
        return load_pretrained_files(
            Gemma3Model,
            {**cfg, "dtype": dtype},
            paths[1],
            tokenizer,
            eos_id=tokenizer.token_id("<end_of_turn>" if instruct else "<eos>"),
            description=f"Google Gemma 3 {variant} ({repo})",
        )

    return load_or_standin(
        f"Gemma 3 {variant}",
        files,
        load_real,
        lambda: standin_gemma3(seed),
        unavailable_note="is gated (accept Google's Gemma licence on Hugging Face and place its "
        "files in the course cache, see shared.gemma3) or you are offline",
    )
