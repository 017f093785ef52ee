"""The decoder that today's open models (Llama 3, Qwen3) share, built from GPT-2's by five changes.

Compared with shared.gpt.GPTModel: RMSNorm instead of LayerNorm, rotary position embeddings
(shared.rope) instead of learned ones, a SwiGLU feed-forward instead of GELU, grouped-query
attention (several query heads share one key/value head) instead of multi-head attention, and
no bias vectors anywhere. Qwen3 adds an RMSNorm on every query and key head (qk_norm). The
names follow GPTModel (tok_emb, trf_blocks, final_norm, out_head; att, ff, norm1, norm2).

Configuration keys (shared.llama3 and shared.qwen3 hold the published ones):
    vocab_size, context_length (rows of the RoPE table), emb_dim, n_heads, n_kv_groups,
    head_dim, hidden_dim (SwiGLU width), n_layers, rope_base, rope_llama3_scaling (None or the
    arguments of shared.rope.llama3_scale_frequencies), norm_eps, qk_norm, tie_embeddings,
    and optionally dtype (torch.float32 by default; torch.bfloat16 halves the memory).

Weights load from the Hugging Face safetensors layout (``model.layers.0.self_attn.q_proj.weight``
...) with load_hf_weights; hf_key_mapping lists the names.

Shapes: b = batch size, n = tokens, d = emb_dim, h = n_heads, g = n_kv_groups, k = head_dim,
V = vocab_size.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
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
)
from shared.checkpoints import describe_mismatch
from shared.data import CorruptDataError, DataFile, DataUnavailableError, fetch
from shared.gpt2_weights import STANDIN_ENV
from shared.rope import apply_rope, check_head_dim, rope_tables
from shared.tokenizers import gpt2_tokenizer


class RMSNorm(nn.Module):
    """Root-mean-square normalisation: x / sqrt(mean(x^2) + eps), times a learned scale.

    Unlike LayerNorm it neither subtracts the mean nor adds a shift. The statistics are taken
    in float32 whatever x's dtype (as the reference implementations do).
    forward: x (..., d) -> (..., d)
    """

    def __init__(self, emb_dim: int, eps: float = 1e-6, dtype: torch.dtype | None = None):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.scale * normed.to(x.dtype)


class SwiGLUFeedForward(nn.Module):
    """Gated feed-forward: fc_down(silu(fc_gate(x)) * fc_up(x)), no biases.

    silu(z) = z * sigmoid(z). The gate decides, per hidden unit, how much of fc_up's value
    passes. forward: x (b, n, d) -> (b, n, d), through a hidden width hidden_dim.
    """

    def __init__(self, emb_dim: int, hidden_dim: int, dtype: torch.dtype | None = None):
        super().__init__()
        self.fc_gate = nn.Linear(emb_dim, hidden_dim, bias=False, dtype=dtype)
        self.fc_up = nn.Linear(emb_dim, hidden_dim, bias=False, dtype=dtype)
        self.fc_down = nn.Linear(hidden_dim, emb_dim, bias=False, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_down(F.silu(self.fc_gate(x)) * self.fc_up(x))


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
    qk_norm=True). No biases.

    forward(x (b, n, d_in), cos, sin, mask, layer_kv) -> (b, n, d_in); cos, sin: RoPE tables
    (L, k); mask: a causal mask (shared.attention.causal_mask) covering at least the keys
    (cached + new). With a layer_kv (shared.attention_ops.LayerKV), x's tokens sit at the
    positions after the layer_kv.length it has seen, their rotated keys and their values are
    appended to it, and they attend to every position up to their own. The cache holds g
    heads, not h: that is what GQA saves. (shared.attention_variants.GroupedQueryAttention is
    the GPT-2 one: a MultiHeadAttention subclass with its arguments, no RoPE.)
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
    ):
        super().__init__()
        check_kv_groups(num_heads, num_kv_groups)
        check_head_dim(head_dim)
        self.num_heads = num_heads
        self.num_kv_groups = num_kv_groups
        self.head_dim = head_dim
        self.W_query = nn.Linear(d_in, num_heads * head_dim, bias=False, dtype=dtype)
        self.W_key = nn.Linear(d_in, num_kv_groups * head_dim, bias=False, dtype=dtype)
        self.W_value = nn.Linear(d_in, num_kv_groups * head_dim, bias=False, dtype=dtype)
        self.out_proj = nn.Linear(num_heads * head_dim, d_in, bias=False, dtype=dtype)
        self.q_norm = RMSNorm(head_dim, norm_eps, dtype) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, norm_eps, dtype) if qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        layer_kv: LayerKV | None = None,
    ) -> torch.Tensor:
        num_tokens = x.shape[1]
        queries = split_heads(self.W_query(x), self.num_heads)  # (b, h, n, k)
        keys = split_heads(self.W_key(x), self.num_kv_groups)  # (b, g, n, k)
        values = split_heads(self.W_value(x), self.num_kv_groups)
        if self.q_norm is not None:
            queries, keys = self.q_norm(queries), self.k_norm(keys)

        start = 0 if layer_kv is None else layer_kv.length
        queries = apply_rope(queries, cos, sin, offset=start)
        keys = apply_rope(keys, cos, sin, offset=start)
        if layer_kv is not None:
            keys, values = layer_kv.extend(keys, values)  # (b, g, m, k), the keys rotated

        # Each key/value head serves num_heads / num_kv_groups consecutive query heads.
        group_size = self.num_heads // self.num_kv_groups
        keys, values = repeat_kv(keys, group_size), repeat_kv(values, group_size)  # (b, h, m, k)

        # Query i sits at position start + i and may see keys 0 ... start + i.
        future = hidden_positions(mask, num_tokens, keys.shape[2])
        return self.out_proj(attend(queries, keys, values, future, float32_softmax=True))


class OpenTransformerBlock(nn.Module):
    """Pre-norm block: x + att(norm1(x)), then x + ff(norm2(x)); RMSNorm, GQA, SwiGLU.

    forward: x (b, n, d), RoPE tables cos, sin (L, k), causal mask -> (b, n, d)
    """

    def __init__(self, cfg: dict):
        super().__init__()
        dtype = cfg.get("dtype")
        self.att = RoPEGroupedQueryAttention(
            d_in=cfg["emb_dim"],
            num_heads=cfg["n_heads"],
            num_kv_groups=cfg["n_kv_groups"],
            head_dim=cfg["head_dim"],
            qk_norm=cfg["qk_norm"],
            norm_eps=cfg["norm_eps"],
            dtype=dtype,
        )
        self.ff = SwiGLUFeedForward(cfg["emb_dim"], cfg["hidden_dim"], dtype=dtype)
        self.norm1 = RMSNorm(cfg["emb_dim"], cfg["norm_eps"], dtype=dtype)
        self.norm2 = RMSNorm(cfg["emb_dim"], cfg["norm_eps"], dtype=dtype)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        layer_kv: LayerKV | None = None,
    ) -> torch.Tensor:
        x = x + self.att(self.norm1(x), cos, sin, mask, layer_kv)
        return x + self.ff(self.norm2(x))


class OpenDecoderModel(nn.Module):
    """The decoder of Llama 3 and Qwen3 (see the module docstring for cfg).

    No position embedding: positions enter through RoPE inside attention. With
    tie_embeddings the output head is the token embedding matrix (one tensor, counted once).
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
        self.context_length = cfg["context_length"]
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"], dtype=dtype)
        self.trf_blocks = nn.ModuleList(OpenTransformerBlock(cfg) for _ in range(cfg["n_layers"]))
        self.final_norm = RMSNorm(cfg["emb_dim"], cfg["norm_eps"], dtype=dtype)
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False, dtype=dtype)
        if cfg["tie_embeddings"]:
            self.out_head.weight = self.tok_emb.weight
        cos, sin = rope_tables(
            cfg["head_dim"], cfg["context_length"], cfg["rope_base"], cfg["rope_llama3_scaling"]
        )
        self.register_buffer("cos", cos, persistent=False)  # (L, k), float32
        self.register_buffer("sin", sin, persistent=False)
        # The causal mask every layer shares, grown with the positions used (causal_mask_for):
        # a full (context_length, context_length) one would take 17 GB at 131,072 positions.
        self.register_buffer("mask", causal_mask(0), persistent=False)

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
        mask = self.causal_mask_for(start + seq_len)
        layers = [None] * len(self.trf_blocks) if cache is None else cache.layers
        for block, layer_kv in zip(self.trf_blocks, layers, strict=True):
            x = block(x, self.cos, self.sin, mask, layer_kv)
        return self.out_head(self.final_norm(x))


def count_parameters(model: nn.Module) -> int:
    """Number of parameters, each shared tensor (a tied head) counted once."""
    return sum(p.numel() for p in model.parameters())


def config_from_hf(hf_config: dict) -> dict:
    """The course's cfg from a Hugging Face config.json (LlamaForCausalLM or Qwen3ForCausalLM).

    Reads rope_theta/rope_scaling (published files) or rope_parameters (transformers >= 5).
    Raises ValueError for a model type or RoPE scaling that this decoder does not implement.
    """
    model_type = hf_config.get("model_type")
    if model_type not in ("llama", "qwen3"):
        raise ValueError(f"model_type {model_type!r} is not supported; expected llama or qwen3")
    rope = dict(hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {})
    rope_base = rope.get("rope_theta", hf_config.get("rope_theta", 10_000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "llama3":
        scaling = {
            "factor": rope["factor"],
            "low_freq_factor": rope["low_freq_factor"],
            "high_freq_factor": rope["high_freq_factor"],
            "original_context_length": rope["original_max_position_embeddings"],
        }
    elif rope_type == "default":
        scaling = None
    else:
        raise ValueError(f"RoPE type {rope_type!r} is not supported; expected default or llama3")
    if hf_config.get("attention_bias") or hf_config.get("mlp_bias"):
        raise ValueError("checkpoints with attention or MLP biases are not supported")
    n_heads = hf_config["num_attention_heads"]
    return {
        "vocab_size": hf_config["vocab_size"],
        "context_length": hf_config["max_position_embeddings"],
        "emb_dim": hf_config["hidden_size"],
        "n_heads": n_heads,
        "n_kv_groups": hf_config.get("num_key_value_heads") or n_heads,
        "head_dim": hf_config.get("head_dim") or hf_config["hidden_size"] // n_heads,
        "hidden_dim": hf_config["intermediate_size"],
        "n_layers": hf_config["num_hidden_layers"],
        "rope_base": float(rope_base),
        "rope_llama3_scaling": scaling,
        "norm_eps": hf_config["rms_norm_eps"],
        "qk_norm": model_type == "qwen3",
        "tie_embeddings": bool(hf_config.get("tie_word_embeddings", False)),
    }


def hf_key_mapping(model: OpenDecoderModel) -> dict[str, str]:
    """{course parameter name: Hugging Face tensor name} for every parameter of model.

    A tied head (out_head.weight is tok_emb.weight) is listed once, as tok_emb.weight.
    """
    mapping = {"tok_emb.weight": "model.embed_tokens.weight"}
    per_layer = {
        "att.W_query.weight": "self_attn.q_proj.weight",
        "att.W_key.weight": "self_attn.k_proj.weight",
        "att.W_value.weight": "self_attn.v_proj.weight",
        "att.out_proj.weight": "self_attn.o_proj.weight",
        "att.q_norm.scale": "self_attn.q_norm.weight",
        "att.k_norm.scale": "self_attn.k_norm.weight",
        "ff.fc_gate.weight": "mlp.gate_proj.weight",
        "ff.fc_up.weight": "mlp.up_proj.weight",
        "ff.fc_down.weight": "mlp.down_proj.weight",
        "norm1.scale": "input_layernorm.weight",
        "norm2.scale": "post_attention_layernorm.weight",
    }
    names = dict(model.named_parameters())  # a tied head is named once, as tok_emb.weight
    for i in range(len(model.trf_blocks)):
        for course, hf in per_layer.items():
            if f"trf_blocks.{i}.{course}" in names:
                mapping[f"trf_blocks.{i}.{course}"] = f"model.layers.{i}.{hf}"
    mapping["final_norm.scale"] = "model.norm.weight"
    if "out_head.weight" in names:
        mapping["out_head.weight"] = "lm_head.weight"
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
    wrong = [
        f"{hf} is {tuple(params[hf].shape)}, {course} needs {tuple(targets[course].shape)}"
        for course, hf in mapping.items()
        if params[hf].shape != targets[course].shape
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
