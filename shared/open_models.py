"""The decoder that today's open models share, built from GPT-2's by five changes.

Compared with shared.gpt.GPTModel: RMSNorm instead of LayerNorm, rotary position embeddings
(shared.rope) instead of learned ones, a gated feed-forward (SwiGLU) instead of GELU,
grouped-query attention (several query heads share one key/value head) instead of multi-head
attention, and no bias vectors anywhere. Qwen3 adds an RMSNorm on every query and key head
(qk_norm). Gemma 3 and OLMo 3 move the norms, mix sliding-window and full attention layers
and scale RoPE differently; Qwen3-MoE, Qwen3.5 and gpt-oss change the feed-forward or the
token mixer (gpt-oss also brings biases back into attention). Each is configuration here plus
the one or two parts that are really new (shared.gemma3, shared.olmo3, shared.qwen3_moe,
shared.qwen3_5, shared.gpt_oss). The names follow GPTModel (tok_emb, trf_blocks, final_norm,
out_head; att, ff, norm1, norm2).

Configuration keys (shared.llama3, shared.qwen3, ... hold the published ones):
    vocab_size, context_length (rows of the RoPE tables), emb_dim, n_heads, n_kv_groups,
    head_dim, hidden_dim (gated feed-forward width), n_layers, rope_base, rope_llama3_scaling
    (None or the arguments of shared.rope.llama3_scale_frequencies), norm_eps, qk_norm,
    tie_embeddings, and optionally dtype (torch.float32 by default; torch.bfloat16 halves the
    memory). Optional, with their defaults (Llama's): layer_types (None: full attention in every
    layer; else one of LAYER_TYPES per layer), sliding_window (the window of sliding layers),
    rope_local_base (sliding layers' RoPE base; rope_base), rope_yarn_scaling (None or the
    arguments of shared.rope.yarn_scale_frequencies after base), rope_scale_sliding (False;
    True gives sliding layers the full layers' scaled RoPE, as gpt-oss), rope_dim (rotated
    dimensions per head; head_dim), norm_placement ("pre"; see NORM_PLACEMENTS), norm_offset
    (0.0; 1.0 stores RMSNorm scales as 1 + weight), query_scale (None: 1 / sqrt(head_dim)),
    ff_activation ("silu"; "gelu_tanh" for GeGLU), emb_scale (False; True multiplies the
    token embeddings by sqrt(emb_dim)), attention_bias and attention_sinks (False; gpt-oss's
    projection biases and attention sinks, see RoPEGroupedQueryAttention).

Weights load from the Hugging Face safetensors layout (``model.layers.0.self_attn.q_proj.weight``
...) with load_hf_weights; hf_key_mapping lists the names.

Shapes: b = batch size, n = tokens, d = emb_dim, h = n_heads, g = n_kv_groups, k = head_dim,
V = vocab_size, r = rotated dimensions per head.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from shared.attention import causal_mask
from shared.attention_ops import (
    KVCache,
    LayerKV,
    attend,
    hidden_positions,
    repeat_kv,
    split_heads,
    window_hidden_positions,
)
from shared.checkpoints import describe_mismatch
from shared.data import CorruptDataError, DataFile, DataUnavailableError, fetch
from shared.gpt2_weights import STANDIN_ENV
from shared.rope import apply_rope, check_head_dim, rope_tables
from shared.tokenizers import gpt2_tokenizer


class RMSNorm(nn.Module):
    """Root-mean-square normalisation: x / sqrt(mean(x^2) + eps), times a learned scale.

    Unlike LayerNorm it neither subtracts the mean nor adds a shift. The statistics are taken
    in float32 whatever x's dtype (as the reference implementations do). offset=1.0 (Gemma,
    Qwen3.5) stores the scale as its difference from 1 (the weight starts at 0 and the
    output is multiplied by 1 + weight, in float32 before the cast back), as their checkpoints do.
    forward: x (..., d) -> (..., d)
    """

    def __init__(
        self,
        emb_dim: int,
        eps: float = 1e-6,
        dtype: torch.dtype | None = None,
        offset: float = 0.0,
    ):
        super().__init__()
        self.eps = eps
        self.offset = offset
        self.scale = nn.Parameter(torch.full((emb_dim,), 1.0 - offset, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        if self.offset:
            return (normed * (self.offset + self.scale.float())).to(x.dtype)
        return self.scale * normed.to(x.dtype)


GATE_ACTIVATIONS = {
    "silu": F.silu,  # SwiGLU (Llama, Qwen, OLMo)
    "gelu_tanh": partial(F.gelu, approximate="tanh"),  # GeGLU (Gemma)
}


class SwiGLUFeedForward(nn.Module):
    """Gated feed-forward: fc_down(silu(fc_gate(x)) * fc_up(x)), no biases.

    silu(z) = z * sigmoid(z). The gate decides, per hidden unit, how much of fc_up's value
    passes. activation="gelu_tanh" makes it GeGLU (Gemma): the same with GELU as the gate.
    forward: x (b, n, d) -> (b, n, d), through a hidden width hidden_dim.
    """

    def __init__(
        self,
        emb_dim: int,
        hidden_dim: int,
        dtype: torch.dtype | None = None,
        activation: str = "silu",
    ):
        super().__init__()
        if activation not in GATE_ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not one of {sorted(GATE_ACTIVATIONS)}")
        self.activation = GATE_ACTIVATIONS[activation]
        self.fc_gate = nn.Linear(emb_dim, hidden_dim, bias=False, dtype=dtype)
        self.fc_up = nn.Linear(emb_dim, hidden_dim, bias=False, dtype=dtype)
        self.fc_down = nn.Linear(hidden_dim, emb_dim, bias=False, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_down(self.activation(self.fc_gate(x)) * self.fc_up(x))


def check_kv_groups(num_heads: int, num_kv_groups: int) -> None:
    """Raise ValueError unless num_kv_groups >= 1 divides num_heads (each group serves as many
    query heads)."""
    if num_kv_groups < 1 or num_heads % num_kv_groups != 0:
        raise ValueError(
            f"num_heads ({num_heads}) must be divisible by num_kv_groups ({num_kv_groups}): "
            "every key/value group serves the same number of query heads"
        )


class RoPEGroupedQueryAttention(nn.Module):
    """Causal grouped-query attention with rotary positions and an optional QK-norm.

    num_heads query heads of head_dim dimensions share num_kv_groups key/value heads (each
    key/value head serves num_heads / num_kv_groups query heads); num_kv_groups == num_heads is
    multi-head attention. Queries and keys are rotated by RoPE (after the QK-norm, when
    qk_norm=True: an RMSNorm on every head, with norm_offset as in RMSNorm). No biases unless
    bias=True.
    window: None (causal: every earlier position) or a sliding window (each query sees itself
    and the window - 1 positions before it; the cache keeps only those). scale: the scores'
    factor (None: 1 / sqrt(head_dim)). bias: biases in the four projections (gpt-oss); sinks:
    one learned logit per head (self.sinks (h,)) joining each query's softmax
    (shared.attention_ops.attend's attention sinks, gpt-oss).

    forward(x (b, n, d_in), cos, sin, mask, layer_kv) -> (b, n, d_in); cos, sin: RoPE tables
    (L, r), r <= k (see shared.rope.apply_rope); mask: a causal mask
    (shared.attention.causal_mask) covering at least the keys (cached + new), unused with a
    window. With a layer_kv (shared.attention_ops.LayerKV), x's tokens sit at the positions
    after the layer_kv.length it has seen, their rotated keys and their values are appended to
    it, and they attend to every position up to their own. The cache holds g heads, not h:
    that is what GQA saves. (shared.attention_variants.GroupedQueryAttention is the GPT-2 one:
    a MultiHeadAttention subclass with its arguments, no RoPE.)

    The two steps are methods for models that change one of them (OLMo 3 normalises the
    projections before splitting the heads; Qwen3.5 gates the context): project (the
    heads, before RoPE) and attend_positions (RoPE, cache, mask, attention).
    """

    def __init__(
        self,
        d_in: int,
        num_heads: int,
        num_kv_groups: int,
        head_dim: int,
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
        dtype: torch.dtype | None = None,
        window: int | None = None,
        scale: float | None = None,
        norm_offset: float = 0.0,
        bias: bool = False,
        sinks: bool = False,
    ):
        super().__init__()
        check_kv_groups(num_heads, num_kv_groups)
        check_head_dim(head_dim)
        if window is not None and window < 1:
            raise ValueError(f"window ({window}) must be at least 1 (the token itself) or None")
        self.num_heads = num_heads
        self.num_kv_groups = num_kv_groups
        self.head_dim = head_dim
        self.window = window
        self.scale = scale
        self.W_query = nn.Linear(d_in, num_heads * head_dim, bias=bias, dtype=dtype)
        self.W_key = nn.Linear(d_in, num_kv_groups * head_dim, bias=bias, dtype=dtype)
        self.W_value = nn.Linear(d_in, num_kv_groups * head_dim, bias=bias, dtype=dtype)
        self.out_proj = nn.Linear(num_heads * head_dim, d_in, bias=bias, dtype=dtype)
        self.sinks = nn.Parameter(torch.zeros(num_heads, dtype=dtype)) if sinks else None
        self.q_norm = RMSNorm(head_dim, norm_eps, dtype, norm_offset) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, norm_eps, dtype, norm_offset) if qk_norm else None

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (b, n, d_in) -> queries (b, h, n, k), keys and values (b, g, n, k), not yet rotated."""
        queries = split_heads(self.W_query(x), self.num_heads)
        keys = split_heads(self.W_key(x), self.num_kv_groups)
        values = split_heads(self.W_value(x), self.num_kv_groups)
        if self.q_norm is not None:
            queries, keys = self.q_norm(queries), self.k_norm(keys)
        return queries, keys, values

    def attend_positions(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        layer_kv: LayerKV | None = None,
    ) -> torch.Tensor:
        """Rotate, cache, mask and attend: the heads from project -> context (b, n, h * k)."""
        num_tokens = queries.shape[2]
        start = 0 if layer_kv is None else layer_kv.length
        queries = apply_rope(queries, cos, sin, offset=start)
        keys = apply_rope(keys, cos, sin, offset=start)
        if layer_kv is not None:
            keys, values = layer_kv.extend(keys, values)  # (b, g, m, k), the keys rotated
            if self.window is not None:  # later queries need only the last window - 1
                layer_kv.keep_last(self.window - 1)

        # Each key/value head serves num_heads / num_kv_groups consecutive query heads.
        group_size = self.num_heads // self.num_kv_groups
        keys, values = repeat_kv(keys, group_size), repeat_kv(values, group_size)  # (b, h, m, k)

        # Query i sits at position start + i and may see keys 0 ... start + i (or the window).
        num_keys = keys.shape[2]
        if self.window is None:
            hidden = hidden_positions(mask, num_tokens, num_keys)
        else:
            hidden = window_hidden_positions(num_tokens, num_keys, self.window, keys.device)
        return attend(
            queries,
            keys,
            values,
            hidden,
            float32_softmax=True,
            scale=self.scale,
            sinks=self.sinks,
        )

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        layer_kv: LayerKV | None = None,
    ) -> torch.Tensor:
        context = self.attend_positions(*self.project(x), cos, sin, mask, layer_kv)
        return self.out_proj(context)


# Where each block normalises: before each sublayer (Llama, Qwen), after it (OLMo 2 and 3), or
# both (Gemma 2 and 3). A sublayer's output is normalised before it joins the shortcut.
NORM_PLACEMENTS = ("pre", "post", "pre_post")


class OpenTransformerBlock(nn.Module):
    """A block with a shortcut around attention and one around the feed-forward; RMSNorm, GQA,
    a gated feed-forward.

    cfg["norm_placement"] (default "pre"): "pre" is x + att(norm1(x)), then x + ff(norm2(x));
    "post" is x + post_att_norm(att(x)), then x + post_ff_norm(ff(x)); "pre_post" uses all four
    norms. layer_type: "full_attention" or "sliding_attention" (a window of
    cfg["sliding_window"] positions). cfg's optional "query_scale" sets the attention scores'
    factor, "norm_offset" the RMSNorms' (see RMSNorm), "ff_activation" the gate's,
    "attention_bias" and "attention_sinks" (default False) the attention's bias and sinks.
    forward: x (b, n, d), RoPE tables cos, sin (L, r), causal mask -> (b, n, d)
    """

    def __init__(self, cfg: dict, layer_type: str = "full_attention"):
        super().__init__()
        placement = cfg.get("norm_placement", "pre")
        if placement not in NORM_PLACEMENTS:
            raise ValueError(f"norm_placement {placement!r} is not one of {NORM_PLACEMENTS}")
        if layer_type not in LAYER_TYPES:
            raise ValueError(f"layer type {layer_type!r} is not one of {LAYER_TYPES}")
        self.att = self.make_attention(cfg, layer_type)
        self.ff = self.make_feed_forward(cfg)
        pre, post = placement in ("pre", "pre_post"), placement in ("post", "pre_post")
        self.norm1, self.norm2 = (
            (self.make_norm(cfg), self.make_norm(cfg)) if pre else (nn.Identity(), nn.Identity())
        )
        self.post_att_norm, self.post_ff_norm = (
            (self.make_norm(cfg), self.make_norm(cfg)) if post else (nn.Identity(), nn.Identity())
        )

    def make_attention(self, cfg: dict, layer_type: str) -> nn.Module:
        """The block's attention (att): a RoPEGroupedQueryAttention with cfg's settings, windowed
        in a sliding_attention layer. Subclasses with another attention (OLMo 3's QK-norm,
        Qwen3.5's gate) override it."""
        return RoPEGroupedQueryAttention(
            d_in=cfg["emb_dim"],
            num_heads=cfg["n_heads"],
            num_kv_groups=cfg["n_kv_groups"],
            head_dim=cfg["head_dim"],
            qk_norm=cfg["qk_norm"],
            norm_eps=cfg["norm_eps"],
            dtype=cfg.get("dtype"),
            window=window_of(cfg, layer_type),
            scale=cfg.get("query_scale"),
            norm_offset=cfg.get("norm_offset", 0.0),
            bias=cfg.get("attention_bias", False),
            sinks=cfg.get("attention_sinks", False),
        )

    def make_norm(self, cfg: dict) -> nn.Module:
        """One of the block's RMSNorms (with cfg's norm_offset); OLMo 3's override it."""
        return RMSNorm(
            cfg["emb_dim"], cfg["norm_eps"], cfg.get("dtype"), cfg.get("norm_offset", 0.0)
        )

    def make_feed_forward(self, cfg: dict) -> nn.Module:
        """The block's feed-forward (ff): a SwiGLUFeedForward of cfg's hidden_dim and
        ff_activation. Subclasses with another feed-forward (a mixture of experts) override it."""
        return SwiGLUFeedForward(
            cfg["emb_dim"], cfg["hidden_dim"], cfg.get("dtype"), cfg.get("ff_activation", "silu")
        )

    def hf_names(self) -> dict[str, str]:
        """{parameter name in this block: its Hugging Face name within model.layers.<i>}."""
        names = {
            "att.W_query.weight": "self_attn.q_proj.weight",
            "att.W_key.weight": "self_attn.k_proj.weight",
            "att.W_value.weight": "self_attn.v_proj.weight",
            "att.out_proj.weight": "self_attn.o_proj.weight",
            "att.W_query.bias": "self_attn.q_proj.bias",
            "att.W_key.bias": "self_attn.k_proj.bias",
            "att.W_value.bias": "self_attn.v_proj.bias",
            "att.out_proj.bias": "self_attn.o_proj.bias",
            "att.sinks": "self_attn.sinks",
            "att.q_norm.scale": "self_attn.q_norm.weight",
            "att.k_norm.scale": "self_attn.k_norm.weight",
            "ff.fc_gate.weight": "mlp.gate_proj.weight",
            "ff.fc_up.weight": "mlp.up_proj.weight",
            "ff.fc_down.weight": "mlp.down_proj.weight",
            "post_ff_norm.scale": "post_feedforward_layernorm.weight",
            "norm1.scale": "input_layernorm.weight",
            # Llama calls its norm before the feed-forward "post_attention"; Gemma, which also
            # has one after attention, calls them pre_feedforward and post_attention.
            "norm2.scale": "post_attention_layernorm.weight",
            "post_att_norm.scale": "post_attention_layernorm.weight",
        }
        if isinstance(self.post_att_norm, RMSNorm) and isinstance(self.norm2, RMSNorm):
            names["norm2.scale"] = "pre_feedforward_layernorm.weight"
        own = {name for name, _ in self.named_parameters()}
        return {course: hf for course, hf in names.items() if course in own}

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        layer_kv: LayerKV | None = None,
    ) -> torch.Tensor:
        x = x + self.post_att_norm(self.att(self.norm1(x), cos, sin, mask, layer_kv))
        return x + self.post_ff_norm(self.ff(self.norm2(x)))


# The attention of each layer: "full_attention" (causal) or "sliding_attention" (a window).
LAYER_TYPES = ("full_attention", "sliding_attention")


def window_of(cfg: dict, layer_type: str) -> int | None:
    """The attention window of a layer type: cfg["sliding_window"] for sliding_attention, None
    (every earlier position) for full_attention."""
    return cfg["sliding_window"] if layer_type == "sliding_attention" else None


def layer_types_of(cfg: dict) -> list[str]:
    """cfg["layer_types"] (one per layer, checked), or full attention in every layer."""
    layer_types = cfg.get("layer_types") or ["full_attention"] * cfg["n_layers"]
    if len(layer_types) != cfg["n_layers"]:
        raise ValueError(
            f"layer_types lists {len(layer_types)} layers but n_layers is {cfg['n_layers']}"
        )
    if "sliding_attention" in layer_types and not cfg.get("sliding_window"):
        raise ValueError("sliding_attention layers need cfg['sliding_window'] (their width)")
    return list(layer_types)


def rope_tables_for(cfg: dict, layer_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The RoPE tables of one layer type: full-attention layers use rope_base and the scaling
    (rope_llama3_scaling or rope_yarn_scaling); sliding layers use rope_local_base (default
    rope_base) unscaled, as Gemma 3 and OLMo 3 do, unless cfg's optional "rope_scale_sliding"
    is True (gpt-oss: every layer uses the full-attention tables). Partial RoPE: cfg's optional
    "rope_dim" (default head_dim) dimensions of each head are rotated."""
    rotated = cfg.get("rope_dim") or cfg["head_dim"]
    if layer_type == "sliding_attention" and not cfg.get("rope_scale_sliding"):
        base = cfg.get("rope_local_base") or cfg["rope_base"]
        return rope_tables(rotated, cfg["context_length"], base)
    return rope_tables(
        rotated,
        cfg["context_length"],
        cfg["rope_base"],
        llama3_scaling=cfg.get("rope_llama3_scaling"),
        yarn_scaling=cfg.get("rope_yarn_scaling"),
    )


class OpenDecoderModel(nn.Module):
    """The decoder of Llama 3, Qwen3, Gemma 3 and OLMo 3 (see the module docstring for cfg).

    No position embedding: positions enter through RoPE inside attention. With
    tie_embeddings the output head is the token embedding matrix (one tensor, counted once).
    cfg's optional "emb_scale" multiplies the token embeddings by sqrt(emb_dim) (Gemma).
    forward: token ids (b, n) with n <= context_length -> logits (b, n, V).
    forward(in_idx, cache) is for generation, as in shared.kv_cache.KVCacheGPTModel: the ids
    continue the ones the cache (from new_cache()) has seen and only the new ones need passing;
    shared.pretraining.generate (use_cache=True) drives it.
    """

    def __init__(self, cfg: dict):
        super().__init__()
        dtype = cfg.get("dtype")
        check_kv_groups(cfg["n_heads"], cfg["n_kv_groups"])
        check_head_dim(cfg["head_dim"])
        self.layer_types = layer_types_of(cfg)
        self.context_length = cfg["context_length"]
        self.emb_scale = cfg["emb_dim"] ** 0.5 if cfg.get("emb_scale") else None
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"], dtype=dtype)
        self.trf_blocks = nn.ModuleList(
            self.make_block(cfg, layer_type) for layer_type in self.layer_types
        )
        self.final_norm = RMSNorm(cfg["emb_dim"], cfg["norm_eps"], dtype, cfg.get("norm_offset", 0))
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False, dtype=dtype)
        if cfg["tie_embeddings"]:
            self.out_head.weight = self.tok_emb.weight
        self.make_buffers(cfg)

    def make_buffers(self, cfg: dict) -> None:
        """(Re)make the buffers no checkpoint holds, on the CPU: one pair of RoPE tables per
        layer type in use (cos_<type>, sin_<type>, each (L, r), float32) and the causal mask.
        A model built on the meta device calls it again to get real ones (shared.weight_loading).
        """
        for layer_type in sorted(set(self.layer_types)):
            cos, sin = rope_tables_for(cfg, layer_type)
            self.register_buffer(f"cos_{layer_type}", cos, persistent=False)
            self.register_buffer(f"sin_{layer_type}", sin, persistent=False)
        # The causal mask every layer shares, grown with the positions used (causal_mask_for):
        # a full (context_length, context_length) one would take 17 GB at 131,072 positions.
        self.register_buffer("mask", causal_mask(0), persistent=False)

    def make_block(self, cfg: dict, layer_type: str) -> nn.Module:
        """One transformer block; subclasses with other blocks (OLMo 3, Qwen3-MoE) override it."""
        return OpenTransformerBlock(cfg, layer_type)

    def rope_for(self, layer_type: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The (cos, sin) tables of a layer type, each (L, r)."""
        return getattr(self, f"cos_{layer_type}"), getattr(self, f"sin_{layer_type}")

    def causal_mask_for(self, num_keys: int) -> torch.Tensor:
        """shared.attention.causal_mask of at least num_keys (<= context_length) positions.

        Built on first need and doubled when outgrown, so generating token by token rebuilds it
        a few times rather than at every step. Safe when generations run in threads: each
        call returns a mask it has checked, and a smaller one never replaces a larger one.
        """
        mask = self.mask
        if mask.shape[0] < num_keys:
            size = min(self.context_length, max(num_keys, 2 * mask.shape[0]))
            with torch.inference_mode(False):  # one made while sampling must serve training too
                mask = causal_mask(size).to(mask.device)
            if mask.shape[0] > self.mask.shape[0]:
                self.mask = mask
        return mask

    def new_cache(self) -> KVCache:
        """An empty key/value cache for one batch of texts."""
        return KVCache(len(self.trf_blocks))

    def forward(self, in_idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        seq_len = in_idx.shape[1]
        start = 0 if cache is None else cache.length
        if start + seq_len > self.context_length:
            held = f" after {start} cached tokens" if start else ""
            raise ValueError(
                f"input has {seq_len} tokens{held} but the model's context_length (the RoPE "
                f"table) is {self.context_length}; crop the input to its last "
                f"{self.context_length} tokens"
            )
        x = self.tok_emb(in_idx)
        if self.emb_scale is not None:  # in the embedding's dtype, as Gemma's reference does
            x = x * torch.tensor(self.emb_scale, dtype=x.dtype)
        mask = self.causal_mask_for(start + seq_len)
        layers = [None] * len(self.trf_blocks) if cache is None else cache.layers
        for block, layer_type, layer_kv in zip(
            self.trf_blocks, self.layer_types, layers, strict=True
        ):
            x = block(x, *self.rope_for(layer_type), mask, layer_kv)
        return self.out_head(self.final_norm(x))


def count_parameters(model: nn.Module) -> int:
    """Number of parameters, each shared tensor (a tied head) counted once."""
    return sum(p.numel() for p in model.parameters())


def rope_config_from_hf(hf_config: dict) -> dict:
    """The RoPE keys of the course's cfg (rope_base, rope_llama3_scaling, rope_yarn_scaling,
    rope_local_base) from a Hugging Face config.json.

    Reads rope_theta/rope_scaling/rope_local_base_freq (published files) or rope_parameters
    (transformers >= 5), flat or one per layer type (full_attention, sliding_attention).
    Scaling applies to the full-attention layers; sliding layers rotate unscaled. Raises
    ValueError for a RoPE type that is not implemented here.
    """
    params = dict(hf_config.get("rope_parameters") or {})
    if "full_attention" in params or "sliding_attention" in params:
        full = dict(params.get("full_attention") or {})
        local = params.get("sliding_attention")
    else:
        full = params or dict(hf_config.get("rope_scaling") or {})
        local = None
    full.setdefault("rope_theta", hf_config.get("rope_theta", 10_000.0))
    if local is None and "rope_local_base_freq" in hf_config:
        local = {"rope_type": "default", "rope_theta": hf_config["rope_local_base_freq"]}
    cfg = {
        "rope_base": float(full["rope_theta"]),
        "rope_llama3_scaling": None,
        "rope_yarn_scaling": None,
    }
    rope_type = full.get("rope_type", full.get("type", "default"))
    required = {
        "llama3": [
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "original_max_position_embeddings",
        ],
        "yarn": ["factor", "original_max_position_embeddings"],
    }
    missing = [key for key in required.get(rope_type, []) if key not in full]
    if missing:
        raise ValueError(f"{rope_type} RoPE scaling needs {', '.join(missing)}")
    if rope_type == "llama3":
        cfg["rope_llama3_scaling"] = {
            "factor": full["factor"],
            "low_freq_factor": full["low_freq_factor"],
            "high_freq_factor": full["high_freq_factor"],
            "original_context_length": full["original_max_position_embeddings"],
        }
    elif rope_type == "yarn":
        cfg["rope_yarn_scaling"] = {
            "factor": full["factor"],
            "original_context_length": full["original_max_position_embeddings"],
            "beta_fast": full.get("beta_fast") or 32.0,
            "beta_slow": full.get("beta_slow") or 1.0,
            "attention_factor": full.get("attention_factor"),
        }
        if "truncate" in full:  # gpt-oss: False (the blend's boundaries not rounded)
            cfg["rope_yarn_scaling"]["truncate"] = bool(full["truncate"])
    elif rope_type != "default":
        raise ValueError(
            f"RoPE type {rope_type!r} is not supported; expected default, llama3 or yarn"
        )
    if local is not None:
        if local.get("rope_type", "default") != "default":
            raise ValueError(
                f"sliding-window layers with RoPE type {local['rope_type']!r} are not supported"
            )
        cfg["rope_local_base"] = float(local.get("rope_theta", cfg["rope_base"]))
    return cfg


def decoder_config_from_hf(hf_config: dict) -> dict:
    """The keys every open decoder here shares, from a Hugging Face config.json: sizes, RoPE
    (rope_config_from_hf), norms, a tied head, and layer_types/sliding_window where the model
    mixes full and sliding-window attention. Model-specific keys (qk_norm, norm_placement ...)
    are added by each model's reader. Raises ValueError for biases, which none of them has."""
    if hf_config.get("attention_bias") or hf_config.get("mlp_bias"):
        raise ValueError("checkpoints with attention or MLP biases are not supported")
    n_heads = hf_config["num_attention_heads"]
    cfg = {
        "vocab_size": hf_config["vocab_size"],
        "context_length": hf_config["max_position_embeddings"],
        "emb_dim": hf_config["hidden_size"],
        "n_heads": n_heads,
        "n_kv_groups": hf_config.get("num_key_value_heads") or n_heads,
        "head_dim": hf_config.get("head_dim") or hf_config["hidden_size"] // n_heads,
        "hidden_dim": hf_config["intermediate_size"],
        "n_layers": hf_config["num_hidden_layers"],
        **rope_config_from_hf(hf_config),
        "norm_eps": hf_config["rms_norm_eps"],
        "tie_embeddings": bool(hf_config.get("tie_word_embeddings", False)),
    }
    layer_types = hf_config.get("layer_types")
    if layer_types and "sliding_attention" in layer_types:
        cfg["layer_types"] = list(layer_types)
        cfg["sliding_window"] = hf_config["sliding_window"]
    return cfg


def config_from_hf(hf_config: dict) -> dict:
    """The course's cfg from a Hugging Face config.json (LlamaForCausalLM or Qwen3ForCausalLM).

    Raises ValueError for another model type or a RoPE scaling not implemented here.
    """
    model_type = hf_config.get("model_type")
    if model_type not in ("llama", "qwen3"):
        raise ValueError(f"model_type {model_type!r} is not supported; expected llama or qwen3")
    return {**decoder_config_from_hf(hf_config), "qk_norm": model_type == "qwen3"}


def hf_key_mapping(model: OpenDecoderModel) -> dict[str, str]:
    """{course parameter name: Hugging Face tensor name} for every parameter of model.

    A tied head (out_head.weight is tok_emb.weight) is listed once, as tok_emb.weight. Each
    block names its own tensors (hf_names), so a block with other parts (experts) maps itself.
    """
    mapping = {"tok_emb.weight": "model.embed_tokens.weight"}
    for i, block in enumerate(model.trf_blocks):
        for course, hf in block.hf_names().items():
            mapping[f"trf_blocks.{i}.{course}"] = f"model.layers.{i}.{hf}"
    mapping["final_norm.scale"] = "model.norm.weight"
    names = dict(model.named_parameters())  # a tied head is named once, as tok_emb.weight
    if "out_head.weight" in names:
        mapping["out_head.weight"] = "lm_head.weight"
    unmapped = sorted(set(names) - set(mapping))
    if unmapped:
        raise ValueError(f"no Hugging Face name for {', '.join(unmapped)}")
    return mapping


def load_hf_weights(model: OpenDecoderModel, params: dict[str, torch.Tensor]) -> None:
    """Copy a Hugging Face Llama/Qwen3 checkpoint (tensors by name) into model, in its dtype.

    With a tied head the file may omit lm_head.weight or hold a copy of the embedding.
    Raises ValueError listing the tensors that are missing or unexpected, every tensor whose
    shape does not fit (with both shapes), or a stored head that differs from a tied embedding.
    """
    mapping = hf_key_mapping(model)
    tied = "out_head.weight" not in mapping
    expected = set(mapping.values())
    missing = sorted(expected - set(params))
    unexpected = sorted(set(params) - expected - ({"lm_head.weight"} if tied else set()))
    if missing or unexpected:
        raise ValueError(
            f"the checkpoint does not fit this {len(model.trf_blocks)}-layer model: "
            f"{describe_mismatch(missing, unexpected)}; build the model with the checkpoint's "
            "config"
        )
    targets = dict(model.named_parameters())
    # A checkpoint that reads its tensors lazily (dequantising them) may say their shapes alone.
    shape_of = getattr(params, "shape_of", lambda name: params[name].shape)
    wrong = [
        f"{hf} is {tuple(shape_of(hf))}, {course} needs {tuple(targets[course].shape)}"
        for course, hf in mapping.items()
        if shape_of(hf) != targets[course].shape
    ]
    if wrong:
        raise ValueError(f"checkpoint tensors of the wrong shape: {'; '.join(wrong)}")
    if tied and "lm_head.weight" in params:
        if not torch.equal(params["lm_head.weight"], params["model.embed_tokens.weight"]):
            raise ValueError(
                "the checkpoint's lm_head.weight differs from model.embed_tokens.weight, but "
                "the model ties them; build it with tie_embeddings=False"
            )
    with torch.no_grad():
        for course, hf in mapping.items():
            targets[course].copy_(params[hf])


def check_json(path: Path) -> None:
    """Structural check of a JSON file (tokenizer.json); raises shared.data.CorruptDataError."""
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise CorruptDataError(f"{path.name}: not valid JSON ({err})") from None


class HuggingFaceTokenizer:
    """A tokenizer.json (Qwen3's, Gemma 3's, OLMo 3's ...), read by the ``tokenizers`` library.

    encode(text) -> list[int] (special tokens written in the text, such as <|im_start|>, are
    recognised); decode(ids) -> str. token_id(token) -> the id of one special token.
    """

    def __init__(self, path: Path):
        from tokenizers import Tokenizer  # only needed for real open models

        self._tokenizer = Tokenizer.from_file(str(path))

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)

    def token_id(self, token: str) -> int:
        """The id of token (e.g. "<|im_end|>"); ValueError when the vocabulary lacks it."""
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"the tokenizer has no token {token!r}")
        return token_id


@dataclass
class PretrainedOpenModel:
    """A loaded open model with its tokenizer; is_standin tells whether it is the random stand-in.

    tokenizer: has encode(text) -> list[int] and decode(ids) -> str. eos_id: the id that ends
    a reply (generation stops there).
    """

    model: OpenDecoderModel
    tokenizer: object
    config: dict
    eos_id: int
    description: str
    is_standin: bool


def load_pretrained_files(
    model_class: type[OpenDecoderModel],
    cfg: dict,
    weights_path: Path,
    tokenizer: object,
    eos_id: int,
    description: str,
) -> PretrainedOpenModel:
    """model_class(cfg) with the weights of a Hugging Face model.safetensors, in eval mode."""
    model = model_class(cfg)
    load_hf_weights(model, load_file(weights_path))
    return PretrainedOpenModel(
        model=model.eval(),
        tokenizer=tokenizer,
        config=cfg,
        eos_id=eos_id,
        description=description,
        is_standin=False,
    )


def build_standin(
    model_class: type[OpenDecoderModel], cfg: dict, name: str, where: str, seed: int = 123
) -> PretrainedOpenModel:
    """A stand-in for a pretrained model: model_class(cfg) initialised after
    torch.manual_seed(seed), in eval mode, with GPT-2's tokenizer (cfg has GPT-2's vocabulary);
    is_standin=True. name (e.g. "Llama 3") and where (cfg's module) go into the description."""
    torch.manual_seed(seed)
    tokenizer = gpt2_tokenizer()
    return PretrainedOpenModel(
        model=model_class(cfg).eval(),
        tokenizer=tokenizer,
        config=dict(cfg),
        eos_id=tokenizer.eot_token,
        description=f"a randomly initialised {cfg['n_layers']}-layer, {cfg['emb_dim']}-dim "
        f"{name} with GPT-2's tokenizer ({where})",
        is_standin=True,
    )


def load_or_standin(
    name: str,
    files: list[DataFile],
    load_real: Callable[[list[Path]], PretrainedOpenModel],
    standin: Callable[[], PretrainedOpenModel],
    unavailable_note: str = "not available (offline?)",
) -> PretrainedOpenModel:
    """The real model from files fetched by shared.data, or the stand-in, with one line saying why.

    When LLM_COURSE_STANDIN is "1" (the test suite sets it) the network is not touched.
    load_real receives the fetched paths in the order of files.
    """
    if os.environ.get(STANDIN_ENV) == "1":
        reason = f"not loaded: {STANDIN_ENV}=1 is set"
    else:
        try:
            paths = [fetch(spec) for spec in files]
        except DataUnavailableError:
            reason = unavailable_note
        else:
            return load_real(paths)
    loaded = standin()
    print(f"{name} {reason}; using the stand-in: {loaded.description}.")
    return loaded
