"""gpt-oss (ch05 bonus): OpenAI's open-weight mixture of experts, from the course's parts.

gpt-oss-20b is the course's open decoder (shared.open_models: pre-norm RMSNorm, RoPE,
grouped-query attention) with four things switched on and one new feed-forward:

- attention sinks: each head has one learned logit that joins every query's softmax as a score
  with no value (shared.attention_ops.attend's sinks), so a head may attend to almost nothing;
- biases in the query, key, value and output projections (cfg attention_bias);
- alternating attention: even layers see a band of the last 128 positions (sliding window),
  odd layers every earlier position; YaRN-scaled RoPE in every layer, banded ones included
  (cfg rope_scale_sliding), with the blend's boundaries left fractional (truncate False);
- a sparse mixture of experts in every block (shared.qwen3_moe.SparseMoEFeedForward, with a
  router bias): 32 experts, top 4, the softmax taken over the 4 chosen logits; each expert a
  clamped SwiGLU with biases (ClampedSwiGLUExperts), stored fused, as transformers keeps them.

So a token uses about 3.6 of the 20.9 billion parameters without the token embedding, as
OpenAI's model card counts them (4.2 billion with it, as moe_parameter_counts counts).

The weights (``openai/gpt-oss-20b`` on Hugging Face, Apache 2.0, not gated) store the experts'
matrices in MXFP4: 4-bit floating-point numbers (e2m1) in blocks of 32 that share one power-of-
two scale (``..._blocks`` and ``..._scales`` tensors); dequantize_mxfp4 turns them into floats
and Mxfp4Checkpoint presents such files under the names of the dequantised tensors.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path

import torch
from torch import nn

from shared.data import DataFile, fetch
from shared.open_models import (
    HuggingFaceTokenizer,
    OpenDecoderModel,
    OpenTransformerBlock,
    PretrainedOpenModel,
    build_standin,
    check_json,
    decoder_config_from_hf,
    load_or_standin,
)
from shared.qwen3_moe import SparseMoEFeedForward, experts_in
from shared.weight_loading import ShardedSafetensors, load_into_empty, shard_files

# openai/gpt-oss-20b's config.json in the course's names. Sizes (24 layers, 32 experts, top 4,
# 2880 wide, 64 query and 8 key/value heads) are those of OpenAI's model card; the rest are the
# file's values as public copies of it show them, and transformers' GptOssConfig defaults agree.
GPT_OSS_CONFIG_20B = {
    "vocab_size": 201_088,  # vocab_size
    "context_length": 131_072,  # max_position_embeddings
    "emb_dim": 2880,  # hidden_size
    "n_heads": 64,  # num_attention_heads
    "n_kv_groups": 8,  # num_key_value_heads
    "head_dim": 64,  # head_dim (n_heads * head_dim = 4096 > emb_dim)
    "hidden_dim": 2880,  # intermediate_size: each expert's width (no dense layers)
    "n_layers": 24,  # num_hidden_layers
    "layer_types": ["sliding_attention", "full_attention"] * 12,  # layer_types
    "sliding_window": 128,  # sliding_window
    "rope_base": 150_000.0,  # rope_theta
    "rope_llama3_scaling": None,
    "rope_yarn_scaling": {  # rope_scaling (rope_type "yarn")
        "factor": 32.0,  # factor
        "original_context_length": 4096,  # original_max_position_embeddings
        "beta_fast": 32.0,  # beta_fast
        "beta_slow": 1.0,  # beta_slow
        "attention_factor": None,  # not in the file: 0.1 ln(32) + 1
        "truncate": False,  # truncate
    },
    "rope_scale_sliding": True,  # one rotary table for every layer (transformers' GptOssModel)
    "norm_eps": 1e-5,  # rms_norm_eps
    "qk_norm": False,
    "tie_embeddings": False,  # tie_word_embeddings
    "attention_bias": True,  # attention_bias
    "attention_sinks": True,  # no key: every gpt-oss attention layer has self_attn.sinks
    "num_experts": 32,  # num_local_experts
    "num_experts_per_token": 4,  # num_experts_per_tok (experts_per_token)
    "moe_hidden_dim": 2880,  # intermediate_size
    "swiglu_limit": 7.0,  # swiglu_limit
    "swiglu_alpha": 1.702,  # not in the file: fixed in OpenAI's and transformers' code
}

# The offline stand-in: gpt-oss's architecture at a small size (head_dim, window and RoPE kept),
# with GPT-2's vocabulary (its tokenizer stands in for gpt-oss's), randomly initialised.
GPT_OSS_STANDIN_CONFIG = {
    **GPT_OSS_CONFIG_20B,
    "vocab_size": 50_257,
    "context_length": 8192,
    "emb_dim": 256,
    "n_heads": 4,
    "n_kv_groups": 2,
    "hidden_dim": 128,
    "n_layers": 4,
    "layer_types": ["sliding_attention", "full_attention"] * 2,
    "num_experts": 8,
    "num_experts_per_token": 2,
    "moe_hidden_dim": 128,
}

# What a gpt-oss cfg has beyond the open decoder's keys.
MOE_KEYS = (
    "num_experts",
    "num_experts_per_token",
    "moe_hidden_dim",
    "swiglu_limit",
    "swiglu_alpha",
)


def clamped_swiglu(
    gate: torch.Tensor, up: torch.Tensor, limit: float, alpha: float
) -> torch.Tensor:
    """gpt-oss's gate: (up + 1) * gate * sigmoid(alpha * gate), gate clamped from above at limit
    and up to [-limit, limit] (so no activation runs away). Shapes (..., hidden) -> same."""
    gate = gate.clamp(max=limit)
    up = up.clamp(-limit, limit)
    return (up + 1) * gate * torch.sigmoid(alpha * gate)


class ClampedSwiGLUExperts(nn.Module):
    """num_experts clamped-SwiGLU experts with biases, stored fused (E = num_experts,
    d = emb_dim, H = hidden_dim), as transformers and the checkpoints hold them:

    gate_up (E, d, 2H): each expert's gate and up columns interleaved (gate, up, gate, up ...),
    gate_up_bias (E, 2H); down (E, H, d), down_bias (E, d). Tokens are multiplied from the left
    (tokens @ gate_up[e]), so these are the transposes of nn.Linear weights.
    experts[e](tokens (t, d)) -> (t, d) runs expert e (what SparseMoEFeedForward calls).
    """

    def __init__(
        self,
        emb_dim: int,
        hidden_dim: int,
        num_experts: int,
        limit: float,
        alpha: float,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.limit, self.alpha = limit, alpha
        self.gate_up = nn.Parameter(torch.empty(num_experts, emb_dim, 2 * hidden_dim, dtype=dtype))
        self.gate_up_bias = nn.Parameter(torch.zeros(num_experts, 2 * hidden_dim, dtype=dtype))
        self.down = nn.Parameter(torch.empty(num_experts, hidden_dim, emb_dim, dtype=dtype))
        self.down_bias = nn.Parameter(torch.zeros(num_experts, emb_dim, dtype=dtype))
        nn.init.normal_(self.gate_up, std=0.02)  # transformers' initializer_range
        nn.init.normal_(self.down, std=0.02)

    def __len__(self) -> int:
        return self.gate_up.shape[0]

    def __getitem__(self, expert: int) -> partial:
        return partial(self.run_expert, expert)

    def run_expert(self, expert: int, tokens: torch.Tensor) -> torch.Tensor:
        """Expert `expert` on tokens (t, d) -> (t, d)."""
        gate_up = tokens @ self.gate_up[expert] + self.gate_up_bias[expert]  # (t, 2H)
        hidden = clamped_swiglu(gate_up[:, 0::2], gate_up[:, 1::2], self.limit, self.alpha)
        return hidden @ self.down[expert] + self.down_bias[expert]


# The experts' tensors and their names in Hugging Face's files (within model.layers.<i>.mlp).
EXPERT_HF_NAMES = {
    "gate_up": "gate_up_proj",
    "gate_up_bias": "gate_up_proj_bias",
    "down": "down_proj",
    "down_bias": "down_proj_bias",
}


class GptOssBlock(OpenTransformerBlock):
    """The open block with attention sinks and biases (cfg) and a SparseMoEFeedForward of
    ClampedSwiGLUExperts with a router bias as its feed-forward (ff); the softmax over the top k
    router logits is SparseMoEFeedForward's norm_topk_prob routing.
    forward: as OpenTransformerBlock."""

    def make_feed_forward(self, cfg: dict) -> SparseMoEFeedForward:
        experts = ClampedSwiGLUExperts(
            cfg["emb_dim"],
            cfg["moe_hidden_dim"],
            cfg["num_experts"],
            cfg["swiglu_limit"],
            cfg["swiglu_alpha"],
            cfg.get("dtype"),
        )
        return SparseMoEFeedForward(
            cfg["emb_dim"],
            cfg["moe_hidden_dim"],
            cfg["num_experts"],
            cfg["num_experts_per_token"],
            norm_topk_prob=True,
            dtype=cfg.get("dtype"),
            router_bias=True,
            experts=experts,
        )

    def hf_names(self) -> dict[str, str]:
        """The base block's names (biases and sinks included), plus the router (mlp.router) and
        the four fused expert tensors."""
        names = super().hf_names()
        names["ff.router.weight"] = "mlp.router.weight"
        names["ff.router.bias"] = "mlp.router.bias"
        for course, hf in EXPERT_HF_NAMES.items():
            names[f"ff.experts.{course}"] = f"mlp.experts.{hf}"
        return names


class GptOssModel(OpenDecoderModel):
    """gpt-oss: OpenDecoderModel whose every block is a GptOssBlock (cfg: GPT_OSS_CONFIG_20B's
    keys). Raises ValueError naming the MOE_KEYS cfg lacks."""

    def __init__(self, cfg: dict):
        missing = [key for key in MOE_KEYS if key not in cfg]
        if missing:
            raise ValueError(f"a gpt-oss cfg needs {', '.join(missing)} (see GPT_OSS_CONFIG_20B)")
        super().__init__(cfg)

    def make_block(self, cfg: dict, layer_type: str) -> nn.Module:
        return GptOssBlock(cfg, layer_type)


def gpt_oss_config_from_hf(hf_config: dict) -> dict:
    """The course's cfg from a Hugging Face config.json of GptOssForCausalLM.

    decoder_config_from_hf (whose refusal of attention biases gpt-oss is exempt from) plus
    attention sinks, every layer's RoPE scaled, the experts (num_local_experts,
    num_experts_per_tok, intermediate_size) and the clamped SwiGLU (swiglu_limit; swiglu_alpha,
    1.702 when the file has none). layer_types defaults to sliding, full, sliding ... as in
    transformers. Raises ValueError for another model type or activation.
    """
    model_type = hf_config.get("model_type")
    if model_type != "gpt_oss":
        raise ValueError(f"model_type {model_type!r} is not supported; expected gpt_oss")
    if hf_config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {hf_config['hidden_act']!r} is not supported; expected silu")
    n_layers = hf_config["num_hidden_layers"]
    layer_types = hf_config.get("layer_types") or [
        "full_attention" if i % 2 else "sliding_attention" for i in range(n_layers)
    ]
    cfg = decoder_config_from_hf({**hf_config, "attention_bias": False, "layer_types": layer_types})
    return {
        **cfg,
        "qk_norm": False,
        "rope_scale_sliding": True,
        "attention_bias": bool(hf_config.get("attention_bias", True)),
        "attention_sinks": True,
        "num_experts": experts_in(hf_config),
        "num_experts_per_token": hf_config["num_experts_per_tok"],
        "moe_hidden_dim": hf_config["intermediate_size"],
        "swiglu_limit": hf_config.get("swiglu_limit", 7.0),
        "swiglu_alpha": hf_config.get("swiglu_alpha", 1.702),
    }


# FP4 (e2m1: a sign, 2 exponent bits, 1 mantissa bit) value of each 4-bit code 0 ... 15.
FP4_E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
FP4_E2M1_VALUES += tuple(-v for v in FP4_E2M1_VALUES)
MXFP4_SCALE_BIAS = 127  # an e8m0 scale byte s stands for 2 ** (s - 127)


def dequantize_mxfp4(
    blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """MXFP4 numbers as floats: blocks (..., G, B) uint8, two 4-bit codes per byte (the low
    nibble first), scales (..., G) uint8, one power of two per block of 2B values -> (..., G * 2B)
    in dtype. Raises ValueError when the shapes do not fit."""
    if blocks.shape[:-1] != scales.shape:
        raise ValueError(
            f"MXFP4 blocks {tuple(blocks.shape)} need scales of shape "
            f"{tuple(blocks.shape[:-1])}, got {tuple(scales.shape)}"
        )
    if blocks.dim() > 3:  # (E, rows, G, B): one expert at a time, so the float32 steps stay small
        return torch.stack([dequantize_mxfp4(b, s, dtype) for b, s in zip(blocks, scales)])
    table = torch.tensor(FP4_E2M1_VALUES, dtype=torch.float32, device=blocks.device)
    blocks = blocks.to(torch.uint8)
    codes = torch.stack([blocks & 0x0F, blocks >> 4], dim=-1).flatten(-2).int()  # (G, 2B)
    exponents = scales.to(torch.int32) - MXFP4_SCALE_BIAS
    values = torch.ldexp(table[codes], exponents[..., None])  # exact: a power of two per block
    return values.flatten(-2).to(dtype)


class Mxfp4Checkpoint(Mapping):
    """A checkpoint (names -> tensors) whose MXFP4 tensors read as the tensors they stand for.

    Each pair X_blocks (E, rows, G, B), X_scales (E, rows, G) becomes X, dequantised and with its
    last two dimensions swapped, (E, G * 2B, rows): the fused layout ClampedSwiGLUExperts holds
    (gpt-oss's files store each expert's matrix by output rows). Other tensors pass unchanged.
    Dequantised on each access, in dtype; nothing is kept. shape_of(name) reads no values.
    """

    def __init__(self, params: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.bfloat16):
        self.params, self.dtype = params, dtype
        quantised = {name.removesuffix("_blocks") for name in params if name.endswith("_blocks")}
        lacking = sorted(f"{name}_scales" for name in quantised if f"{name}_scales" not in params)
        if lacking:
            raise ValueError(f"MXFP4 blocks without their scales: {', '.join(lacking)}")
        self.quantised = quantised

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self.quantised:
            blocks, scales = self.params[f"{name}_blocks"], self.params[f"{name}_scales"]
            return dequantize_mxfp4(blocks, scales, self.dtype).transpose(-1, -2)
        if name.endswith(("_blocks", "_scales")) and name.rpartition("_")[0] in self.quantised:
            raise KeyError(name)
        return self.params[name]

    def shape_of(self, name: str) -> torch.Size:
        """The shape of self[name], without dequantising it."""
        if name in self.quantised:
            *lead, rows, groups, block = self.params[f"{name}_blocks"].shape
            return torch.Size([*lead, groups * 2 * block, rows])
        if hasattr(self.params, "shape_of"):
            return self.params.shape_of(name)
        return self[name].shape

    def __iter__(self) -> Iterator[str]:
        for name in self.params:
            if name.endswith("_blocks") and name.removesuffix("_blocks") in self.quantised:
                yield name.removesuffix("_blocks")
            elif not (name.endswith("_scales") and name.removesuffix("_scales") in self.quantised):
                yield name

    def __len__(self) -> int:
        return len(self.params) - len(self.quantised)


def harmony_prompt(user_message: str) -> str:
    """gpt-oss's chat format (OpenAI's "harmony") for one user message, without a system or
    developer message: the assistant's reply follows, ended by <|return|> (its final answer;
    the model first writes an analysis channel)."""
    return f"<|start|>user<|message|>{user_message}<|end|><|start|>assistant"


_HF = "https://huggingface.co/openai/gpt-oss-20b/resolve/main"
_FOLDER = "gpt-oss-20b"  # in the course's cache

# The shards' names come from the index (its weight_map), fetched first (shard_files).
GPT_OSS_20B_FILES = [
    DataFile(f"{_FOLDER}/tokenizer.json", f"{_HF}/tokenizer.json", check=check_json),
    DataFile(
        f"{_FOLDER}/model.safetensors.index.json",
        f"{_HF}/model.safetensors.index.json",
        check=check_json,
    ),
]


def standin_gpt_oss(seed: int = 123) -> PretrainedOpenModel:
    """GptOssModel(GPT_OSS_STANDIN_CONFIG), seeded, with GPT-2's tokenizer (build_standin)."""
    return build_standin(
        GptOssModel,
        GPT_OSS_STANDIN_CONFIG,
        "gpt-oss",
        "shared.gpt_oss.GPT_OSS_STANDIN_CONFIG",
        seed,
    )


def load_pretrained_gpt_oss(
    dtype: torch.dtype = torch.bfloat16, seed: int = 123
) -> PretrainedOpenModel:
    """gpt-oss-20b with OpenAI's weights and tokenizer, in eval mode, parameters in dtype.

    Downloads (once, then from the cache) about 14 GB of safetensors files (the experts in
    MXFP4), which the index names; the experts are dequantised as they are read
    (Mxfp4Checkpoint) into a model built without random numbers (load_into_empty), so it needs
    about 42 GB of memory in bfloat16 (20.9 billion parameters) plus one dequantised tensor.
    The weights are open (Apache 2.0), not gated. Prompts use harmony_prompt; eos_id is
    <|return|>. When LLM_COURSE_STANDIN=1, or the files cannot be had (offline), prints one
    line saying so and returns standin_gpt_oss(seed).
    """

    def load_real(paths: list[Path]) -> PretrainedOpenModel:
        tokenizer = HuggingFaceTokenizer(paths[0])
        cfg = {**GPT_OSS_CONFIG_20B, "dtype": dtype}
        shards = [fetch(spec) for spec in shard_files(paths[1], _FOLDER, _HF)]
        params = Mxfp4Checkpoint(ShardedSafetensors(shards), dtype)
        return PretrainedOpenModel(
            model=load_into_empty(GptOssModel, cfg, params),
            tokenizer=tokenizer,
            config=cfg,
            eos_id=tokenizer.token_id("<|return|>"),
            description="gpt-oss-20b (openai/gpt-oss-20b)",
            is_standin=False,
        )

    return load_or_standin(
        "gpt-oss-20b", GPT_OSS_20B_FILES, load_real, lambda: standin_gpt_oss(seed)
    )
