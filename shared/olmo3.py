"""OLMo 3 (ch05 bonus): its configuration, tokenizer and weights, on shared.open_models.

OLMo 3 7B (Ai2, 2025) is OpenDecoderModel with four changes from Llama 3:

- the norms sit after the sublayers (norm_placement "post"): x + norm(att(x)), then
  x + norm(ff(x)), so each sublayer's output is normalised before it joins the shortcut;
- QK-norm over the whole projection: one RMSNorm over all n_heads * head_dim query dimensions
  (and one over the n_kv_groups * head_dim key dimensions) before the heads are split, where
  Qwen3 normalises each head on its own (Olmo3Attention);
- sliding-window attention (a window of 4,096 positions) in three of every four layers, full
  attention in the fourth;
- YaRN RoPE scaling (8,192 -> 65,536 positions) on the full-attention layers only; the sliding
  layers rotate unscaled.

It has no tied head, and at 7B plain multi-head attention (32 key/value heads for 32 query
heads). Its RMSNorms multiply by the scale before casting back to the input's dtype (OlmoRMSNorm),
which matters in bfloat16 only. The weights and tokenizer (``allenai/Olmo-3-1025-7B`` on Hugging
Face, Apache 2.0) are open; without a network, load_pretrained_olmo3 says so in one line and
returns a small random stand-in.
"""

from __future__ import annotations

from pathlib import Path

import torch

from shared.attention_ops import split_heads
from shared.data import DataFile, fetch
from shared.open_models import (
    HuggingFaceTokenizer,
    OpenDecoderModel,
    OpenTransformerBlock,
    PretrainedOpenModel,
    RMSNorm,
    RoPEGroupedQueryAttention,
    build_standin,
    check_json,
    decoder_config_from_hf,
    load_or_standin,
    window_of,
)
from shared.weight_loading import ShardedSafetensors, load_into_empty, shard_files

# OLMo 3's pattern: three sliding-window layers, then one full-attention layer (the last layer
# is always full). Olmo3Config fills layer_types with it when a config.json has none.
OLMO3_LAYER_PATTERN = ["sliding_attention"] * 3 + ["full_attention"]

# The values of allenai/Olmo-3-1025-7B's config.json, in the course's names. Its model card gives
# 32 layers, hidden size 4096, 32 query and 32 key/value heads and 65,536 positions. The
# config.json itself could not be read here: the other values come from the book's standalone
# notebook (rasbt/LLMs-from-scratch, ch05/13_olmo3/standalone-olmo3.ipynb, commit 12658fe) and
# agree with what the Olmo 3 report says (a window of 4,096 in 3 of 4 layers, YaRN on the full
# layers only, 8,192 -> 65,536 positions). They give 7,298,011,136 parameters, as transformers'
# Olmo3ForCausalLM counts them (tests/test_olmo3.py) and as Hugging Face lists for fine-tunes
# of this checkpoint.
OLMO3_CONFIG_7B = {
    "vocab_size": 100_278,  # vocab_size
    "context_length": 65_536,  # max_position_embeddings
    "emb_dim": 4096,  # hidden_size
    "n_heads": 32,  # num_attention_heads
    "n_kv_groups": 32,  # num_key_value_heads (= n_heads: multi-head attention)
    "head_dim": 128,  # hidden_size / num_attention_heads (config.json has no head_dim)
    "hidden_dim": 11_008,  # intermediate_size (SwiGLU width)
    "n_layers": 32,  # num_hidden_layers
    "layer_types": OLMO3_LAYER_PATTERN * 8,  # layer_types
    "sliding_window": 4096,  # sliding_window
    "rope_base": 500_000.0,  # rope_theta (both layer types)
    "rope_llama3_scaling": None,
    "rope_yarn_scaling": {  # rope_scaling (rope_type "yarn"), full-attention layers only
        "factor": 8.0,  # factor
        "original_context_length": 8192,  # original_max_position_embeddings
        "beta_fast": 32.0,  # beta_fast
        "beta_slow": 1.0,  # beta_slow
        "attention_factor": 1.2079441541679836,  # attention_factor (= 0.1 ln 8 + 1)
    },
    "norm_eps": 1e-6,  # rms_norm_eps
    "norm_placement": "post",  # Olmo3DecoderLayer: post_attention/post_feedforward_layernorm
    "qk_norm": True,  # q_norm and k_norm over the whole projections
    "tie_embeddings": False,  # tie_word_embeddings
}

# The offline stand-in: OLMo 3's architecture at a small size (head_dim 128, one round of the
# layer pattern, the same window and RoPE), with GPT-2's vocabulary (its tokenizer stands in
# for OLMo's), randomly initialised.
OLMO3_STANDIN_CONFIG = {
    **OLMO3_CONFIG_7B,
    "vocab_size": 50_257,
    "context_length": 8192,
    "emb_dim": 256,
    "n_heads": 2,
    "n_kv_groups": 2,
    "hidden_dim": 768,
    "n_layers": 4,
    "layer_types": OLMO3_LAYER_PATTERN,
}

_REPO = "olmo-3-1025-7b"
_HF = "https://huggingface.co/allenai/Olmo-3-1025-7B/resolve/main"

# The tokenizer and the index of the weights; the index names the safetensors shards.
OLMO3_7B_FILES = [
    DataFile(f"{_REPO}/tokenizer.json", f"{_HF}/tokenizer.json", check=check_json),
    DataFile(
        f"{_REPO}/model.safetensors.index.json",
        f"{_HF}/model.safetensors.index.json",
        check=check_json,
    ),
]


class OlmoRMSNorm(RMSNorm):
    """RMSNorm in OLMo's order of operations: the scale multiplies the float32 normalised x
    before the cast back to x's dtype (RMSNorm casts first, as Llama does). The same in float32;
    in bfloat16 it rounds once instead of twice, as OLMo's checkpoints expect.
    forward: x (..., d) -> (..., d)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class Olmo3Attention(RoPEGroupedQueryAttention):
    """RoPEGroupedQueryAttention with OLMo's QK-norm: one RMSNorm over each whole projection.

    q_norm normalises the n_heads * head_dim query dimensions of a token together (one root
    mean square for all heads, n_heads * head_dim learned scales), k_norm the
    n_kv_groups * head_dim key dimensions, before the heads are split and rotated; a head whose
    projection is larger than the others stays larger. (Qwen3's QK-norm normalises every head
    on its own, with head_dim scales shared by the heads.) The rest is RoPEGroupedQueryAttention.
    forward: x (b, n, d_in), cos, sin, mask, layer_kv -> (b, n, d_in)
    """

    def __init__(
        self,
        d_in: int,
        num_heads: int,
        num_kv_groups: int,
        head_dim: int,
        norm_eps: float = 1e-6,
        dtype: torch.dtype | None = None,
        window: int | None = None,
    ):
        super().__init__(d_in, num_heads, num_kv_groups, head_dim, dtype=dtype, window=window)
        self.q_norm = OlmoRMSNorm(num_heads * head_dim, norm_eps, dtype)
        self.k_norm = OlmoRMSNorm(num_kv_groups * head_dim, norm_eps, dtype)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (b, n, d_in) -> queries (b, h, n, k), keys and values (b, g, n, k), not yet rotated."""
        queries = split_heads(self.q_norm(self.W_query(x)), self.num_heads)
        keys = split_heads(self.k_norm(self.W_key(x)), self.num_kv_groups)
        values = split_heads(self.W_value(x), self.num_kv_groups)
        return queries, keys, values


class Olmo3Block(OpenTransformerBlock):
    """OpenTransformerBlock with norm_placement "post", Olmo3Attention and OlmoRMSNorms:
    x + post_att_norm(att(x)), then x + post_ff_norm(ff(x)).
    forward: x (b, n, d), cos, sin (L, k), mask, layer_kv -> (b, n, d)
    """

    def make_attention(self, cfg: dict, layer_type: str) -> Olmo3Attention:
        return Olmo3Attention(
            d_in=cfg["emb_dim"],
            num_heads=cfg["n_heads"],
            num_kv_groups=cfg["n_kv_groups"],
            head_dim=cfg["head_dim"],
            norm_eps=cfg["norm_eps"],
            dtype=cfg.get("dtype"),
            window=window_of(cfg, layer_type),
        )

    def make_norm(self, cfg: dict) -> OlmoRMSNorm:
        return OlmoRMSNorm(cfg["emb_dim"], cfg["norm_eps"], cfg.get("dtype"))


class Olmo3Model(OpenDecoderModel):
    """OLMo 3: OpenDecoderModel with Olmo3Blocks and an OlmoRMSNorm before the head
    (cfg: OLMO3_CONFIG_7B's keys). Raises ValueError for a cfg without OLMo's norm placement
    ("post") or QK-norm.
    forward: token ids (b, n) -> logits (b, n, V); forward(in_idx, cache) as OpenDecoderModel.
    """

    def __init__(self, cfg: dict):
        if cfg.get("norm_placement") != "post":
            raise ValueError(
                f"OLMo 3 normalises after each sublayer; set norm_placement='post', not "
                f"{cfg.get('norm_placement')!r}"
            )
        if not cfg["qk_norm"]:
            raise ValueError("OLMo 3 normalises queries and keys; set qk_norm=True")
        super().__init__(cfg)
        self.final_norm = OlmoRMSNorm(cfg["emb_dim"], cfg["norm_eps"], cfg.get("dtype"))

    def make_block(self, cfg: dict, layer_type: str) -> Olmo3Block:
        return Olmo3Block(cfg, layer_type)


def olmo3_config_from_hf(hf_config: dict) -> dict:
    """The course's cfg from an Olmo3ForCausalLM config.json (published or saved by
    transformers): decoder_config_from_hf plus OLMo's norm placement and QK-norm. Without
    layer_types or sliding_window it uses Olmo3Config's defaults (OLMO3_LAYER_PATTERN, 4096).
    Raises ValueError for another model_type."""
    model_type = hf_config.get("model_type")
    if model_type != "olmo3":
        raise ValueError(f"model_type {model_type!r} is not supported; expected olmo3")
    n_layers = hf_config["num_hidden_layers"]
    defaults = {
        "layer_types": [OLMO3_LAYER_PATTERN[i % 4] for i in range(n_layers)],
        "sliding_window": 4096,
    }
    cfg = decoder_config_from_hf({**defaults, **hf_config})
    return {**cfg, "norm_placement": "post", "qk_norm": True}


def standin_olmo3(seed: int = 123) -> PretrainedOpenModel:
    """Olmo3Model(OLMO3_STANDIN_CONFIG), seeded, with GPT-2's tokenizer (see build_standin)."""
    return build_standin(
        Olmo3Model, OLMO3_STANDIN_CONFIG, "OLMo 3", "shared.olmo3.OLMO3_STANDIN_CONFIG", seed
    )


def load_pretrained_olmo3(
    dtype: torch.dtype = torch.bfloat16, seed: int = 123
) -> PretrainedOpenModel:
    """OLMo 3 7B (the base model) with Ai2's weights and tokenizer, in eval mode, in dtype.

    The weights are open (Apache 2.0): the tokenizer.json, the index and the shards it names
    (about 14.6 GB in bfloat16) come from the course's cache or mirror (shared.data), or Hugging
    Face. The model is built without random numbers and the shards are read one tensor at a
    time (shared.weight_loading.load_into_empty), so loading holds the model and one tensor:
    in bfloat16 about 15.6 GB, computed from the shapes, not measured: the model's 14.7 GB
    (7,298,011,136 parameters at 2 bytes, 14.6 GB, and 0.13 GB of float32 RoPE tables for
    65,536 positions) plus the largest tensor being copied (the 100,278 x 4,096 embedding or
    head, 0.8 GB). In float32 the parameters take 29.2 GB instead. eos_id is <|endoftext|>,
    which ends a document. When LLM_COURSE_STANDIN=1, or the tokenizer and index cannot be had
    (offline), prints one line saying so and returns standin_olmo3(seed); a shard that cannot
    be had after them raises shared.data.DataUnavailableError naming it.
    """

    def load_real(paths: list[Path]) -> PretrainedOpenModel:
        tokenizer = HuggingFaceTokenizer(paths[0])  # a tokenizer.json read by `tokenizers`
        shards = [fetch(spec) for spec in shard_files(paths[1], _REPO, _HF)]
        cfg = {**OLMO3_CONFIG_7B, "dtype": dtype}
        return PretrainedOpenModel(
            model=load_into_empty(Olmo3Model, cfg, ShardedSafetensors(shards)),
            tokenizer=tokenizer,
            config=cfg,
            eos_id=tokenizer.token_id("<|endoftext|>"),
            description="OLMo 3 7B (allenai/Olmo-3-1025-7B)",
            is_standin=False,
        )

    return load_or_standin("OLMo 3 7B", OLMO3_7B_FILES, load_real, lambda: standin_olmo3(seed))
