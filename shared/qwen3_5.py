"""Qwen3.5 (ch05 bonus): a hybrid of linear and gated full attention, on shared.open_models.

Qwen3.5 0.8B is Qwen3 (shared.qwen3) with four changes:

- in three layers of every four, attention is replaced by **Gated DeltaNet**
  (shared.gated_deltanet.GatedDeltaNet): linear attention whose memory of the past is one
  fixed-size matrix per head instead of a key/value cache that grows with the text;
- the fourth layer keeps full attention, **gated**: the query projection gives every head a
  gate as well as its query, and each head's context is multiplied by sigmoid(gate) before
  out_proj (GatedAttention);
- **partial RoPE**: only the first quarter of each head's 256 dimensions is rotated (rope_dim 64,
  base 10,000,000); the other 192 carry no position;
- every RMSNorm of the blocks (and QK-norm) stores its scale as 1 + weight (norm_offset 1.0).

The generation cache (HybridCache) holds a LayerKV (shared.attention_ops) for each attention
layer and a DeltaNetState for each DeltaNet layer: only the attention layers' part grows with
the context. Weights and tokenizer (``Qwen/Qwen3.5-0.8B`` on Hugging Face, open) are those of a
vision-language model; load_pretrained_qwen3_5 keeps its language model (text_weights). The
tokenizer.json is read by shared.open_models.HuggingFaceTokenizer, and the chat format is
Qwen3's <|im_start|> one (shared.qwen3.chat_prompt). Without a network it says so in one line and
returns a small random stand-in.

Shapes: b = batch size, n = tokens, d = emb_dim, h = n_heads, g = n_kv_groups, k = head_dim.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from shared.attention_ops import KVCache, LayerKV, split_heads
from shared.attention_variants import kv_cache_bytes, kv_cache_bytes_per_token
from shared.data import DataFile
from shared.gated_deltanet import (
    QWEN3_5_TENSOR_NAMES,
    DeltaNetState,
    GatedDeltaNet,
    deltanet_state_bytes,
)
from shared.gpt2_weights import check_safetensors
from shared.open_models import (
    HuggingFaceTokenizer,
    OpenDecoderModel,
    OpenTransformerBlock,
    PretrainedOpenModel,
    RMSNorm,
    RoPEGroupedQueryAttention,
    SwiGLUFeedForward,
    build_standin,
    check_json,
    decoder_config_from_hf,
    load_hf_weights,
    load_or_standin,
)

# The token mixer of each layer: Gated DeltaNet, or gated full attention.
HYBRID_LAYER_TYPES = ("linear_attention", "full_attention")


def hybrid_layer_types(n_layers: int, full_attention_interval: int = 4) -> list[str]:
    """Qwen3.5's layer pattern: every full_attention_interval-th layer (4th, 8th, ...) has full
    attention, the others Gated DeltaNet (transformers' rule when config.json gives
    full_attention_interval instead of layer_types)."""
    if full_attention_interval < 1:
        raise ValueError(
            f"full_attention_interval must be at least 1, got {full_attention_interval}"
        )
    return [
        "full_attention" if (i + 1) % full_attention_interval == 0 else "linear_attention"
        for i in range(n_layers)
    ]


# The values of Qwen/Qwen3.5-0.8B's config.json (its text_config), in the course's names. They
# were read from public copies of that file (test fixtures of projects that load the model);
# the language model's parameter count they give, 752,393,024, matches the 752M that
# conversions of the checkpoint report for its language part (the vision encoder is left out).
QWEN3_5_CONFIG_0_8B = {
    "vocab_size": 248_320,  # vocab_size
    "context_length": 262_144,  # max_position_embeddings
    "emb_dim": 1024,  # hidden_size
    "n_heads": 8,  # num_attention_heads
    "n_kv_groups": 2,  # num_key_value_heads
    "head_dim": 256,  # head_dim (n_heads * head_dim = 2048 > emb_dim)
    "hidden_dim": 3584,  # intermediate_size (SwiGLU width)
    "n_layers": 24,  # num_hidden_layers
    "layer_types": hybrid_layer_types(24),  # layer_types: 3 DeltaNet, 1 attention, six times
    "rope_base": 10_000_000.0,  # rope_parameters.rope_theta
    "rope_llama3_scaling": None,  # rope_parameters.rope_type: default
    "rope_dim": 64,  # head_dim * rope_parameters.partial_rotary_factor (0.25)
    "norm_eps": 1e-6,  # rms_norm_eps
    "qk_norm": True,  # q_norm, k_norm (always in Qwen3.5)
    "norm_offset": 1.0,  # Qwen3.5's RMSNorm multiplies by 1 + weight
    "tie_embeddings": True,  # tie_word_embeddings
    "deltanet_key_heads": 16,  # linear_num_key_heads (queries and keys)
    "deltanet_value_heads": 16,  # linear_num_value_heads
    "deltanet_key_head_dim": 128,  # linear_key_head_dim
    "deltanet_value_head_dim": 128,  # linear_value_head_dim
    "deltanet_conv_kernel": 4,  # linear_conv_kernel_dim
}

# Settings every Qwen3.5 has (Qwen3_5Model refuses a cfg without them).
QWEN3_5_ARCHITECTURE = {"qk_norm": True, "norm_offset": 1.0}

# The offline stand-in: Qwen3.5's architecture at a small size (4 layers: 3 DeltaNet, 1 gated
# attention; head sizes, partial RoPE and RoPE base kept), with GPT-2's vocabulary (its
# tokenizer stands in for Qwen's), randomly initialised.
QWEN3_5_STANDIN_CONFIG = {
    **QWEN3_5_CONFIG_0_8B,
    "vocab_size": 50_257,
    "context_length": 8192,
    "emb_dim": 256,
    "n_heads": 2,
    "n_kv_groups": 1,
    "hidden_dim": 896,
    "n_layers": 4,
    "layer_types": hybrid_layer_types(4),
    "deltanet_key_heads": 4,
    "deltanet_value_heads": 4,
}

_HF = "https://huggingface.co/Qwen/Qwen3.5-0.8B/resolve/main"

QWEN3_5_0_8B_FILES = [
    DataFile("qwen3.5-0.8b/tokenizer.json", f"{_HF}/tokenizer.json", check=check_json),
    DataFile(
        "qwen3.5-0.8b/model.safetensors",
        f"{_HF}/model.safetensors-00001-of-00001.safetensors",
        check=check_safetensors,
    ),
]


class GatedAttention(RoPEGroupedQueryAttention):
    """Qwen3.5's full attention: RoPEGroupedQueryAttention (with QK-norm) whose context is gated.

    W_query gives each head 2 * head_dim outputs, its query and then its gate (the layout of
    Qwen3.5's q_proj). The heads attend as in the parent class (attend_positions); each context
    dimension is then multiplied by sigmoid(gate), a number in (0, 1) computed from the token
    itself, before out_proj: a head can switch itself off for a token, and the output is no
    longer a plain sum of values (the softmax weights must sum to 1; the gate need not).
    forward(x (b, n, d_in), cos, sin, mask, layer_kv) -> (b, n, d_in), as the parent's.
    """

    def __init__(
        self,
        d_in: int,
        num_heads: int,
        num_kv_groups: int,
        head_dim: int,
        norm_eps: float = 1e-6,
        dtype: torch.dtype | None = None,
        norm_offset: float = 0.0,
    ):
        super().__init__(
            d_in,
            num_heads,
            num_kv_groups,
            head_dim,
            qk_norm=True,
            norm_eps=norm_eps,
            dtype=dtype,
            norm_offset=norm_offset,
        )
        self.W_query = nn.Linear(d_in, 2 * num_heads * head_dim, bias=False, dtype=dtype)

    def project(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (b, n, d_in) -> queries (b, h, n, k), keys and values (b, g, n, k), QK-normed and
        not yet rotated, and the gate's logits (b, n, h * k), heads side by side."""
        b, n, _ = x.shape
        both = self.W_query(x).view(b, n, self.num_heads, 2, self.head_dim)
        queries = self.q_norm(both[:, :, :, 0].transpose(1, 2))
        gate = both[:, :, :, 1].reshape(b, n, self.num_heads * self.head_dim)
        keys = self.k_norm(split_heads(self.W_key(x), self.num_kv_groups))
        values = split_heads(self.W_value(x), self.num_kv_groups)
        return queries, keys, values, gate

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        layer_kv: LayerKV | None = None,
    ) -> torch.Tensor:
        queries, keys, values, gate = self.project(x)
        context = self.attend_positions(queries, keys, values, cos, sin, mask, layer_kv)
        return self.out_proj(context * torch.sigmoid(gate))


class GatedAttentionBlock(OpenTransformerBlock):
    """Qwen3.5's attention layer: OpenTransformerBlock (pre-norm) with GatedAttention.
    forward: x (b, n, d), RoPE tables cos, sin (L, rope_dim), causal mask, layer_kv -> (b, n, d)
    """

    def __init__(self, cfg: dict):
        super().__init__(cfg, "full_attention")

    def make_attention(self, cfg: dict, layer_type: str) -> GatedAttention:
        return GatedAttention(
            d_in=cfg["emb_dim"],
            num_heads=cfg["n_heads"],
            num_kv_groups=cfg["n_kv_groups"],
            head_dim=cfg["head_dim"],
            norm_eps=cfg["norm_eps"],
            dtype=cfg.get("dtype"),
            norm_offset=cfg.get("norm_offset", 0.0),
        )


class DeltaNetBlock(nn.Module):
    """Qwen3.5's linear-attention layer: x + att(norm1(x)), then x + ff(norm2(x)), where att is
    a GatedDeltaNet (cfg's deltanet_* sizes) and ff the SwiGLU of the attention layers.

    forward(x (b, n, d), cos, sin, mask, state) -> (b, n, d): the same call as an attention
    block's, so the decoder runs both kinds in one loop; the DeltaNet needs neither RoPE tables
    nor a mask (its state only ever holds the past), and its cache is a DeltaNetState.
    """

    def __init__(self, cfg: dict):
        super().__init__()
        dtype, offset = cfg.get("dtype"), cfg.get("norm_offset", 0.0)
        self.norm1 = RMSNorm(cfg["emb_dim"], cfg["norm_eps"], dtype, offset)
        self.att = GatedDeltaNet(
            emb_dim=cfg["emb_dim"],
            num_key_heads=cfg["deltanet_key_heads"],
            num_value_heads=cfg["deltanet_value_heads"],
            key_head_dim=cfg["deltanet_key_head_dim"],
            value_head_dim=cfg["deltanet_value_head_dim"],
            conv_kernel_size=cfg["deltanet_conv_kernel"],
            norm_eps=cfg["norm_eps"],
            dtype=dtype,
        )
        self.norm2 = RMSNorm(cfg["emb_dim"], cfg["norm_eps"], dtype, offset)
        self.ff = SwiGLUFeedForward(cfg["emb_dim"], cfg["hidden_dim"], dtype)

    def hf_names(self) -> dict[str, str]:
        """{parameter name in this block: its Hugging Face name within model.layers.<i>}."""
        names = {
            f"att.{course}": f"linear_attn.{hf}" for course, hf in QWEN3_5_TENSOR_NAMES.items()
        }
        return {
            **names,
            "norm1.scale": "input_layernorm.weight",
            "norm2.scale": "post_attention_layernorm.weight",
            "ff.fc_gate.weight": "mlp.gate_proj.weight",
            "ff.fc_up.weight": "mlp.up_proj.weight",
            "ff.fc_down.weight": "mlp.down_proj.weight",
        }

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        state: DeltaNetState | None = None,
    ) -> torch.Tensor:
        x = x + self.att(self.norm1(x), state)
        return x + self.ff(self.norm2(x))


class HybridCache(KVCache):
    """A hybrid model's cache for one batch of texts: a LayerKV for each full-attention layer
    (it grows with the text) and a DeltaNetState for each DeltaNet layer (fixed size). length
    and nbytes as KVCache's."""

    def __init__(self, layer_types: list[str]):
        self.layers = [
            DeltaNetState() if layer_type == "linear_attention" else LayerKV()
            for layer_type in layer_types
        ]


class Qwen3_5Model(OpenDecoderModel):
    """Qwen3.5: OpenDecoderModel whose layers are DeltaNetBlocks ("linear_attention") or
    GatedAttentionBlocks ("full_attention") as cfg["layer_types"] says (cfg: QWEN3_5_CONFIG_0_8B's
    keys). new_cache() gives a HybridCache. Raises ValueError naming a setting that differs
    from QWEN3_5_ARCHITECTURE or a layer type that is neither.
    """

    def __init__(self, cfg: dict):
        for key, value in QWEN3_5_ARCHITECTURE.items():
            if cfg.get(key) != value:
                raise ValueError(f"Qwen3.5 needs {key}={value!r}, got {cfg.get(key)!r}")
        unknown = sorted(set(cfg.get("layer_types") or []) - set(HYBRID_LAYER_TYPES))
        if unknown:
            raise ValueError(f"layer types {unknown} are not among {HYBRID_LAYER_TYPES}")
        super().__init__(cfg)
        # DeltaNet layers rotate nothing: they keep no RoPE tables.
        for name in ("cos_linear_attention", "sin_linear_attention"):
            if hasattr(self, name):
                self.register_buffer(name, torch.empty(0), persistent=False)

    def make_block(self, cfg: dict, layer_type: str) -> nn.Module:
        if layer_type == "linear_attention":
            return DeltaNetBlock(cfg)
        return GatedAttentionBlock(cfg)

    def new_cache(self) -> HybridCache:
        """An empty cache for one batch of texts (see HybridCache)."""
        return HybridCache(self.layer_types)


def hybrid_cache_bytes(
    cfg: dict, num_tokens: int, batch_size: int = 1, dtype: torch.dtype = torch.bfloat16
) -> int:
    """Bytes of Qwen3_5Model(cfg)'s cache (HybridCache.nbytes) after num_tokens tokens of
    batch_size texts: the keys and values of the full-attention layers, which grow with the
    tokens (shared.attention_variants.kv_cache_bytes), plus a DeltaNet state per DeltaNet layer,
    which does not (shared.gated_deltanet.deltanet_state_bytes: its recurrent part in float32).
    dtype: the model's (keys, values and the convolution's inputs are kept in it). With every
    layer "full_attention" in cfg["layer_types"] it is an all-attention model's cache."""
    layer_types = cfg["layer_types"]
    attention_layers = layer_types.count("full_attention")
    per_token = kv_cache_bytes_per_token(cfg["n_kv_groups"], cfg["head_dim"], dtype)
    state = deltanet_state_bytes(
        cfg["deltanet_key_heads"],
        cfg["deltanet_value_heads"],
        cfg["deltanet_key_head_dim"],
        cfg["deltanet_value_head_dim"],
        cfg["deltanet_conv_kernel"],
        dtype,
    )
    deltanet_layers = len(layer_types) - attention_layers
    return (
        kv_cache_bytes(per_token, attention_layers, num_tokens, batch_size)
        + deltanet_layers * state * batch_size
    )


def qwen3_5_config_from_hf(hf_config: dict) -> dict:
    """The course's cfg from a Hugging Face config.json of Qwen3.5: Qwen3_5ForCausalLM's
    (model_type "qwen3_5_text") or the published vision-language model's ("qwen3_5", whose
    text_config is read). layer_types, when absent, follow full_attention_interval (default 4).

    Raises ValueError for another model type (the MoE sizes, "qwen3_5_moe", are not built
    here), an activation other than SiLU, or attention without the output gate.
    """
    model_type = hf_config.get("model_type")
    if model_type == "qwen3_5":
        hf_config = hf_config["text_config"]
        model_type = hf_config.get("model_type", "qwen3_5_text")
    if model_type != "qwen3_5_text":
        raise ValueError(
            f"model_type {model_type!r} is not supported; expected qwen3_5_text or qwen3_5 "
            "(the dense Qwen3.5 models)"
        )
    if hf_config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {hf_config['hidden_act']!r} is not supported; expected silu")
    if not hf_config.get("attn_output_gate", True):
        raise ValueError("attention without the output gate (attn_output_gate false) is not built")
    cfg = decoder_config_from_hf(hf_config)
    rope = hf_config.get("rope_parameters") or {}
    rotated = rope.get("partial_rotary_factor", hf_config.get("partial_rotary_factor", 0.25))
    layer_types = hf_config.get("layer_types") or hybrid_layer_types(
        cfg["n_layers"], hf_config.get("full_attention_interval", 4)
    )
    return {
        **cfg,
        "layer_types": list(layer_types),
        "rope_dim": int(cfg["head_dim"] * rotated),
        **QWEN3_5_ARCHITECTURE,
        "deltanet_key_heads": hf_config["linear_num_key_heads"],
        "deltanet_value_heads": hf_config["linear_num_value_heads"],
        "deltanet_key_head_dim": hf_config["linear_key_head_dim"],
        "deltanet_value_head_dim": hf_config["linear_value_head_dim"],
        "deltanet_conv_kernel": hf_config["linear_conv_kernel_dim"],
    }


# The published checkpoint is a vision-language model: its language model's tensors are named
# model.language_model.*, beside the vision encoder's (model.visual.*) and the multi-token
# prediction head used in training (mtp.*).
_TEXT_PREFIX, _OTHER_PARTS = "model.language_model.", ("model.visual.", "mtp.")


def text_weights(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The language model's tensors of a Qwen3.5 checkpoint, named as Qwen3_5ForCausalLM names
    them (model.layers.*, model.embed_tokens.weight, ...): model.language_model.* renamed, the
    vision encoder's and the multi-token prediction tensors left out. A text-only checkpoint
    passes unchanged."""
    return {
        "model." + name.removeprefix(_TEXT_PREFIX) if name.startswith(_TEXT_PREFIX) else name: t
        for name, t in params.items()
        if not name.startswith(_OTHER_PARTS)
    }


def standin_qwen3_5(seed: int = 123) -> PretrainedOpenModel:
    """Qwen3_5Model(QWEN3_5_STANDIN_CONFIG), seeded, with GPT-2's tokenizer (see build_standin)."""
    return build_standin(
        Qwen3_5Model,
        QWEN3_5_STANDIN_CONFIG,
        "Qwen3.5",
        "shared.qwen3_5.QWEN3_5_STANDIN_CONFIG",
        seed,
    )


def load_pretrained_qwen3_5(
    dtype: torch.dtype = torch.bfloat16, seed: int = 123
) -> PretrainedOpenModel:
    """Qwen3.5 0.8B's language model with Qwen's weights and tokenizer, in eval mode, parameters
    in dtype (the checkpoint holds the vision encoder too; it is left out).

    eos_id is <|im_end|>, which ends a chat reply (shared.qwen3.chat_prompt). When
    LLM_COURSE_STANDIN=1, or the files cannot be had (offline), prints one line saying so and
    returns standin_qwen3_5(seed).
    """

    def load_real(paths: list[Path]) -> PretrainedOpenModel:
        tokenizer = HuggingFaceTokenizer(paths[0])
        cfg = {**QWEN3_5_CONFIG_0_8B, "dtype": dtype}
        model = Qwen3_5Model(cfg)
        load_hf_weights(model, text_weights(load_file(paths[1])))
        return PretrainedOpenModel(
            model=model.eval(),
            tokenizer=tokenizer,
            config=cfg,
            eos_id=tokenizer.token_id("<|im_end|>"),
            description="Qwen3.5 0.8B (Qwen/Qwen3.5-0.8B), its language model",
            is_standin=False,
        )

    return load_or_standin(
        "Qwen3.5 0.8B", QWEN3_5_0_8B_FILES, load_real, lambda: standin_qwen3_5(seed)
    )
