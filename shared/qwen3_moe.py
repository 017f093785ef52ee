"""Qwen3-MoE (ch05 bonus): Qwen3 whose feed-forwards are mixtures of experts, on shared.qwen3.

Qwen3-30B-A3B is Qwen3Model (grouped-query attention with QK-norm, RoPE, RMSNorm) in which every
block's SwiGLU feed-forward becomes a sparse mixture of experts (SparseMoEFeedForward):

- a router, one linear layer from the token's vector to one score (logit) per expert, whose
  softmax picks each token's top k = 8 of E = 128 experts; the 8 probabilities are renormalised
  to sum to 1 (norm_topk_prob) and weight the experts' outputs;
- fine-grained experts: each is a small SwiGLU (2048 -> 768 -> 2048, no biases), so the 8 a token
  uses together are exactly as wide as one dense feed-forward of 6,144 (intermediate_size),
  while the 128 stored hold 16 times the parameters;
- no shared expert: every expert is routed. (Qwen2.5-MoE had one, and Qwen3-Next and
  DeepSeek-V2/V3 have shared experts that every token passes through beside its routed ones.)

So a token uses about 3.3 of the 30.5 billion parameters (moe_parameter_counts). Training adds
the Switch Transformer's load-balancing loss (load_balancing_loss, on the router logits that
record_router_logits collects), which keeps the router from sending every token to the same
few experts.

The weights (``Qwen/Qwen3-30B-A3B`` on Hugging Face) are open but large: 61 GB of bfloat16 in
sharded safetensors files, which load_pretrained_qwen3_moe reads one tensor at a time into a
model built without random initialisation (shared.weight_loading.load_into_empty), so it needs
about 62 GB of memory (the model and its largest tensor, 0.6 GB). Hugging Face files store one
tensor per expert (``model.layers.0.mlp.experts.5.gate_proj.weight``): the published files do,
and so does transformers' save_pretrained. transformers 5 fuses them into 3-D tensors in memory;
split_fused_experts turns such a state_dict back into per-expert tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from shared.attention_variants import check_experts
from shared.data import DataFile, fetch
from shared.open_models import (
    HuggingFaceTokenizer,
    OpenTransformerBlock,
    PretrainedOpenModel,
    SwiGLUFeedForward,
    build_standin,
    check_json,
    count_parameters,
    decoder_config_from_hf,
    load_or_standin,
)
from shared.qwen3 import Qwen3Model
from shared.weight_loading import ShardedSafetensors, load_into_empty, shard_files

# The values of Qwen/Qwen3-30B-A3B's config.json, in the course's names. Read from public copies
# of that file (fine-tunes that keep it unchanged) and Megatron's recipe for the model, which
# agree; transformers' Qwen3MoeForCausalLM built from them has 30,532,122,624 parameters, of
# which 3,353,032,704 are active per token: the "30.5B in total, 3.3B activated" of Qwen's
# model card. The file also sets decoder_sparse_step 1 and mlp_only_layers [] (every layer
# sparse: the only layout supported here) and use_sliding_window false.
QWEN3_MOE_CONFIG_30B_A3B = {
    "vocab_size": 151_936,  # vocab_size
    "context_length": 40_960,  # max_position_embeddings
    "emb_dim": 2048,  # hidden_size
    "n_heads": 32,  # num_attention_heads
    "n_kv_groups": 4,  # num_key_value_heads
    "head_dim": 128,  # head_dim (n_heads * head_dim = 4096 > emb_dim)
    "hidden_dim": 6144,  # intermediate_size: a dense layer's width, unused (no dense layers)
    "n_layers": 48,  # num_hidden_layers
    "rope_base": 1_000_000.0,  # rope_theta
    "rope_llama3_scaling": None,  # rope_scaling: null
    "norm_eps": 1e-6,  # rms_norm_eps
    "qk_norm": True,  # Qwen3's RMSNorm on queries and keys
    "tie_embeddings": False,  # tie_word_embeddings
    "num_experts": 128,  # num_experts
    "num_experts_per_token": 8,  # num_experts_per_tok (the router's top k)
    "moe_hidden_dim": 768,  # moe_intermediate_size (each expert's SwiGLU width)
    "norm_topk_prob": True,  # norm_topk_prob (the k weights renormalised to sum to 1)
    "router_aux_loss_coef": 0.001,  # router_aux_loss_coef (training only: load_balancing_loss)
}

# Qwen/Qwen3-235B-A22B's config.json, read likewise from public copies and Megatron's recipe:
# the same 128 experts and top 8, at twice the width and 94 layers (235B parameters, 22B active).
QWEN3_MOE_CONFIG_235B_A22B = {
    **QWEN3_MOE_CONFIG_30B_A3B,
    "emb_dim": 4096,  # hidden_size
    "n_heads": 64,  # num_attention_heads
    "hidden_dim": 12_288,  # intermediate_size (unused)
    "n_layers": 94,  # num_hidden_layers
    "moe_hidden_dim": 1536,  # moe_intermediate_size
}

# The offline stand-in: Qwen3-MoE's architecture at a small size (32 experts, top 4, each 96
# wide; head_dim kept at 128), with GPT-2's vocabulary (its tokenizer stands in for Qwen's),
# randomly initialised.
QWEN3_MOE_STANDIN_CONFIG = {
    **QWEN3_MOE_CONFIG_30B_A3B,
    "vocab_size": 50_257,
    "context_length": 8192,
    "emb_dim": 256,
    "n_heads": 4,
    "n_kv_groups": 2,
    "hidden_dim": 384,
    "n_layers": 4,
    "num_experts": 32,
    "num_experts_per_token": 4,
    "moe_hidden_dim": 96,
}

_HF = "https://huggingface.co/Qwen/Qwen3-30B-A3B/resolve/main"
_FOLDER = "qwen3-30b-a3b"  # in the course's cache

# The shards' names come from the index (its weight_map), fetched first (shard_files).
QWEN3_MOE_30B_A3B_FILES = [
    DataFile(f"{_FOLDER}/tokenizer.json", f"{_HF}/tokenizer.json", check=check_json),
    DataFile(
        f"{_FOLDER}/model.safetensors.index.json",
        f"{_HF}/model.safetensors.index.json",
        check=check_json,
    ),
]


class SparseMoEFeedForward(nn.Module):
    """A sparse mixture of SwiGLU experts: each token runs through the top_k of num_experts.

    router: a linear layer (no bias) from the token to one logit per expert. route turns the
    logits into probabilities (softmax, in float32), keeps each token's top_k experts and, with
    norm_topk_prob, divides their probabilities by their sum: that is a softmax over the top_k
    logits alone, the routing of shared.attention_variants.MoEFeedForward. Without it the weights
    are the full softmax's probabilities and sum to less than 1. experts: num_experts
    SwiGLUFeedForward(emb_dim, hidden_dim), or the experts given (any module of num_experts
    entries where experts[e](tokens) runs expert e: gpt-oss's fused ones, shared.gpt_oss);
    router_bias: a bias in the router (gpt-oss). A token's output is the weighted sum of its
    experts' outputs. forward groups the tokens by expert, so that each expert runs once, on
    the tokens that chose it: top_k expert passes per token, not num_experts.

    forward: x (b, n, d) -> (b, n, d)
    """

    def __init__(
        self,
        emb_dim: int,
        hidden_dim: int,
        num_experts: int,
        top_k: int,
        norm_topk_prob: bool = True,
        dtype: torch.dtype | None = None,
        router_bias: bool = False,
        experts: nn.Module | None = None,
    ):
        super().__init__()
        check_experts(num_experts, top_k)
        self.top_k = top_k
        self.norm_topk_prob = norm_topk_prob
        if experts is not None and len(experts) != num_experts:
            raise ValueError(f"{len(experts)} experts given for num_experts={num_experts}")
        self.router = nn.Linear(emb_dim, num_experts, bias=router_bias, dtype=dtype)
        if experts is None:
            experts = nn.ModuleList(
                SwiGLUFeedForward(emb_dim, hidden_dim, dtype) for _ in range(num_experts)
            )
        self.experts = experts

    def route(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each token goes: tokens (t, d) -> (weights, experts), both (t, k); experts are
        expert indices, weights (in tokens' dtype) what their outputs are multiplied by."""
        probs = torch.softmax(self.router(tokens).float(), dim=-1)  # (t, E)
        weights, experts = probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights.to(tokens.dtype), experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])  # (t, d), t = b * n
        weights, experts = self.route(tokens)  # (t, k)
        # The t * k (token, expert) pairs, sorted by expert: each expert's tokens become one
        # run of counts[e] pairs. Pair p belongs to token p // k.
        chosen = experts.flatten()
        order = chosen.argsort(stable=True)
        pair_tokens, pair_weights = order // self.top_k, weights.flatten()[order]
        counts = torch.bincount(chosen, minlength=len(self.experts)).tolist()
        out = torch.zeros_like(tokens)
        start = 0
        for index, count in enumerate(counts):
            if count:  # an expert no token chose does not run
                ids = pair_tokens[start : start + count]
                expert_out = self.experts[index](tokens[ids])
                weighted = pair_weights[start : start + count, None] * expert_out
                out.index_add_(0, ids, weighted)
                start += count
        return out.view_as(x)


# An expert's matrices (SwiGLUFeedForward) and their names in Hugging Face's files.
EXPERT_HF_NAMES = {"fc_gate": "gate_proj", "fc_up": "up_proj", "fc_down": "down_proj"}


class Qwen3MoeBlock(OpenTransformerBlock):
    """Qwen3's block with a SparseMoEFeedForward as its feed-forward (ff): cfg's num_experts,
    num_experts_per_token, moe_hidden_dim, norm_topk_prob.
    forward: as OpenTransformerBlock."""

    def make_feed_forward(self, cfg: dict) -> SparseMoEFeedForward:
        return SparseMoEFeedForward(
            cfg["emb_dim"],
            cfg["moe_hidden_dim"],
            cfg["num_experts"],
            cfg["num_experts_per_token"],
            cfg["norm_topk_prob"],
            cfg.get("dtype"),
        )

    def hf_names(self) -> dict[str, str]:
        """The base block's names, plus the router ("mlp.gate" in Hugging Face's files, not to be
        confused with an expert's gate_proj) and each expert's three matrices."""
        names = super().hf_names()
        names["ff.router.weight"] = "mlp.gate.weight"
        for j in range(len(self.ff.experts)):
            for course, hf in EXPERT_HF_NAMES.items():
                names[f"ff.experts.{j}.{course}.weight"] = f"mlp.experts.{j}.{hf}.weight"
        return names


# What a Qwen3-MoE cfg has beyond Qwen3's keys.
MOE_KEYS = ("num_experts", "num_experts_per_token", "moe_hidden_dim", "norm_topk_prob")


class Qwen3MoeModel(Qwen3Model):
    """Qwen3-MoE: Qwen3Model whose every block is a Qwen3MoeBlock (cfg:
    QWEN3_MOE_CONFIG_30B_A3B's keys). Raises ValueError naming the MOE_KEYS cfg lacks."""

    def __init__(self, cfg: dict):
        missing = [key for key in MOE_KEYS if key not in cfg]
        if missing:
            raise ValueError(
                f"a Qwen3-MoE cfg needs {', '.join(missing)} (see QWEN3_MOE_CONFIG_30B_A3B)"
            )
        super().__init__(cfg)

    def make_block(self, cfg: dict, layer_type: str) -> nn.Module:
        return Qwen3MoeBlock(cfg, layer_type)


def moe_parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(total, active): all of model's parameters, and those one token uses: everything but the
    experts its router did not choose (num_experts - top_k per SparseMoEFeedForward). The token
    embedding and the output head count as active, as in Qwen's published "3.3B activated"
    (OpenAI's count for gpt-oss leaves the embedding out: see shared.gpt_oss)."""
    idle = 0
    for module in model.modules():
        if isinstance(module, SparseMoEFeedForward):
            per_expert = count_parameters(module.experts) // len(module.experts)
            idle += (len(module.experts) - module.top_k) * per_expert
    total = count_parameters(model)
    return total, total - idle


@contextmanager
def record_router_logits(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect router logits while model runs: inside the with block, every forward pass of each
    SparseMoEFeedForward appends its logits (b * n, num_experts) to the list yielded, layer
    after layer (what load_balancing_loss takes)."""
    recorded: list[torch.Tensor] = []

    def keep(module: nn.Module, inputs: tuple, logits: torch.Tensor) -> None:
        recorded.append(logits)

    hooks = [
        module.router.register_forward_hook(keep)
        for module in model.modules()
        if isinstance(module, SparseMoEFeedForward)
    ]
    try:
        yield recorded
    finally:
        for hook in hooks:
            hook.remove()


def load_balancing_loss(
    router_logits: Iterable[torch.Tensor] | torch.Tensor,
    top_k: int,
    token_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The Switch Transformer's auxiliary load-balancing loss, as transformers computes it.

    E * sum_i f_i * P_i over the E experts: f_i is the share of the (token, choice) pairs that
    chose expert i (each token makes top_k choices, so the shares sum to top_k), P_i the mean
    router probability of expert i. Both are taken over the tokens of every layer together.
    A router that spreads the tokens evenly scores top_k; one that sends every token to the same
    top_k experts, with all its probability, scores E. The gradient flows through P only (the
    choices are counts). Training adds router_aux_loss_coef times it to the cross-entropy.

    router_logits: one (t, E) tensor per MoE layer (t = b * n tokens; record_router_logits), or
    (layers, t, E). token_mask: None, or (b, n) or (t,) with 1 for real tokens and 0 for padding,
    which is left out. Returns a float32 scalar.
    """
    logits = router_logits if torch.is_tensor(router_logits) else torch.stack(list(router_logits))
    num_experts = logits.shape[-1]
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k ({top_k}) must be between 1 and the {num_experts} experts")
    probs = torch.softmax(logits.float(), dim=-1)  # (layers, t, E)
    chosen = probs.topk(top_k, dim=-1).indices
    picks = torch.zeros_like(probs).scatter_(-1, chosen, 1.0)  # 1 where a token chose an expert
    if token_mask is None:
        weight = torch.ones(probs.shape[:-1] + (1,), device=probs.device)
    else:
        if token_mask.numel() != probs.shape[1]:
            raise ValueError(
                f"token_mask has {token_mask.numel()} entries but the router logits have "
                f"{probs.shape[1]} tokens per layer"
            )
        weight = token_mask.reshape(1, -1, 1).to(probs.device, torch.float32)
        weight = weight.expand(probs.shape[0], -1, -1)
    tokens = weight.sum()
    share_chosen = (picks * weight).sum(dim=(0, 1)) / tokens  # f, (E,)
    mean_prob = (probs * weight).sum(dim=(0, 1)) / tokens  # P, (E,)
    return num_experts * (share_chosen * mean_prob).sum()


def experts_in(hf_config: dict) -> int:
    """The number of experts a Hugging Face config.json gives, as num_experts (Qwen's files) or
    num_local_experts (gpt-oss's; transformers 5's save_pretrained of Qwen3-MoE); ValueError
    naming both when it gives neither."""
    for key in ("num_experts", "num_local_experts"):
        if hf_config.get(key):
            return hf_config[key]
    raise ValueError("the config gives no number of experts (num_experts or num_local_experts)")


def qwen3_moe_config_from_hf(hf_config: dict) -> dict:
    """The course's cfg from a Hugging Face config.json of Qwen3MoeForCausalLM.

    Reads num_experts (save_pretrained in transformers 5 writes it as num_local_experts),
    num_experts_per_tok, moe_intermediate_size, norm_topk_prob and router_aux_loss_coef on top
    of decoder_config_from_hf. Raises ValueError for another model type or activation, dense
    layers (mlp_only_layers or decoder_sparse_step other than 1: the published Qwen3-MoE models
    have none), or sliding-window attention (use_sliding_window: false in the published ones).
    """
    model_type = hf_config.get("model_type")
    if model_type != "qwen3_moe":
        raise ValueError(f"model_type {model_type!r} is not supported; expected qwen3_moe")
    if hf_config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {hf_config['hidden_act']!r} is not supported; expected silu")
    if hf_config.get("mlp_only_layers") or hf_config.get("decoder_sparse_step", 1) != 1:
        raise ValueError(
            f"mlp_only_layers={hf_config.get('mlp_only_layers')} with decoder_sparse_step="
            f"{hf_config.get('decoder_sparse_step', 1)}: dense layers among the sparse ones are "
            "not supported; every layer must be a mixture of experts (mlp_only_layers [] and "
            "decoder_sparse_step 1, as in the published Qwen3-MoE models)"
        )
    if hf_config.get("use_sliding_window"):
        raise ValueError("use_sliding_window=True is not supported (Qwen3-MoE models set false)")
    return {
        **decoder_config_from_hf(hf_config),
        "qk_norm": True,
        "num_experts": experts_in(hf_config),
        "num_experts_per_token": hf_config["num_experts_per_tok"],
        "moe_hidden_dim": hf_config["moe_intermediate_size"],
        "norm_topk_prob": bool(hf_config.get("norm_topk_prob", False)),
        "router_aux_loss_coef": hf_config.get("router_aux_loss_coef", 0.001),
    }


def split_fused_experts(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """params with transformers 5's in-memory expert layout turned into the files' layout.

    A transformers 5 model holds each layer's experts as two 3-D tensors: mlp.experts.gate_up_proj
    (E, 2 * hidden, d), each expert's gate_proj rows then its up_proj rows, and
    mlp.experts.down_proj (E, d, hidden). They become mlp.experts.<j>.gate_proj.weight,
    .up_proj.weight and .down_proj.weight; other tensors are passed on unchanged.
    """
    split = {}
    for name, tensor in params.items():
        prefix, _, kind = name.rpartition(".experts.")
        if kind == "gate_up_proj":
            for j, (gate, up) in enumerate(zip(*tensor.chunk(2, dim=1), strict=True)):
                split[f"{prefix}.experts.{j}.gate_proj.weight"] = gate
                split[f"{prefix}.experts.{j}.up_proj.weight"] = up
        elif kind == "down_proj":
            for j, down in enumerate(tensor):
                split[f"{prefix}.experts.{j}.down_proj.weight"] = down
        else:
            split[name] = tensor
    return split


def standin_qwen3_moe(seed: int = 123) -> PretrainedOpenModel:
    """Qwen3MoeModel(QWEN3_MOE_STANDIN_CONFIG), seeded, with GPT-2's tokenizer (build_standin)."""
    return build_standin(
        Qwen3MoeModel,
        QWEN3_MOE_STANDIN_CONFIG,
        "Qwen3-MoE",
        "shared.qwen3_moe.QWEN3_MOE_STANDIN_CONFIG",
        seed,
    )


def load_pretrained_qwen3_moe(
    dtype: torch.dtype = torch.bfloat16, seed: int = 123
) -> PretrainedOpenModel:
    """Qwen3-30B-A3B with Qwen's weights and tokenizer, in eval mode, parameters in dtype.

    Downloads (once, then from the cache) 61 GB of weights, in the files that the checkpoint's
    index names, and needs about 62 GB of memory in bfloat16 (the model built without random
    numbers, the weights read one tensor at a time: shared.weight_loading.load_into_empty). The
    tokenizer and chat format are Qwen3's (shared.open_models.HuggingFaceTokenizer,
    chat_prompt); eos_id is <|im_end|>. When LLM_COURSE_STANDIN=1, or the files cannot be had
    (offline), prints one line saying so and returns standin_qwen3_moe(seed).
    """

    def load_real(paths: list[Path]) -> PretrainedOpenModel:
        tokenizer = HuggingFaceTokenizer(paths[0])
        cfg = {**QWEN3_MOE_CONFIG_30B_A3B, "dtype": dtype}
        shards = [fetch(spec) for spec in shard_files(paths[1], _FOLDER, _HF)]
        return PretrainedOpenModel(
            model=load_into_empty(Qwen3MoeModel, cfg, ShardedSafetensors(shards)),
            tokenizer=tokenizer,
            config=cfg,
            eos_id=tokenizer.token_id("<|im_end|>"),
            description="Qwen3-30B-A3B (Qwen/Qwen3-30B-A3B)",
            is_standin=False,
        )

    return load_or_standin(
        "Qwen3-30B-A3B", QWEN3_MOE_30B_A3B_FILES, load_real, lambda: standin_qwen3_moe(seed)
    )
