"""The GPT model of Chapter 4: layer norm, GELU, feed-forward, transformer block, GPTModel.

The same model with PyTorch's fused kernels is shared.fused_kernels.use_fused_kernels(model), and
with a key/value cache for generation shared.kv_cache.KVCacheGPTModel: both keep these weights.
Shapes: b = batch size, n = number of tokens, d = emb_dim, V = vocab_size.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from shared.attention import MultiHeadAttention

GPT_CONFIG_124M = {
    "vocab_size": 50257,  # GPT-2's BPE vocabulary
    "context_length": 1024,  # longest input the positional embedding covers
    "emb_dim": 768,  # embedding size
    "n_heads": 12,  # attention heads per block
    "n_layers": 12,  # transformer blocks
    "drop_rate": 0.1,  # dropout rate
    "qkv_bias": False,  # bias in the query/key/value projections
}

_GPT2_BASE = {"vocab_size": 50257, "context_length": 1024, "drop_rate": 0.0, "qkv_bias": True}

# The architectures of OpenAI's released GPT-2 checkpoints (they use qkv biases, no dropout needed
# for inference). Keys are the model sizes used throughout the course.
GPT2_MODEL_CONFIGS = {
    "124M": {**_GPT2_BASE, "emb_dim": 768, "n_layers": 12, "n_heads": 12},
    "355M": {**_GPT2_BASE, "emb_dim": 1024, "n_layers": 24, "n_heads": 16},
    "774M": {**_GPT2_BASE, "emb_dim": 1280, "n_layers": 36, "n_heads": 20},
    "1558M": {**_GPT2_BASE, "emb_dim": 1600, "n_layers": 48, "n_heads": 25},
}


class LayerNorm(nn.Module):
    """Normalise the last dimension to mean 0 and variance 1, then scale and shift.

    Uses the biased variance (divide by d) and eps=1e-5, like torch.nn.LayerNorm.
    forward: x (..., d) -> (..., d)
    """

    def __init__(self, emb_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        norm_x = (x - mean) / torch.sqrt(var + self.eps)
        return self.scale * norm_x + self.shift


class GELU(nn.Module):
    """Gaussian error linear unit, in the tanh approximation that GPT-2 used.

    forward: x (any shape) -> same shape
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


class FeedForward(nn.Module):
    """Position-wise feed-forward network: expand to 4*d, GELU, project back to d.

    forward: x (b, n, d) -> (b, n, d)
    """

    def __init__(self, cfg: dict):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(cfg["emb_dim"], 4 * cfg["emb_dim"]),
            GELU(),
            nn.Linear(4 * cfg["emb_dim"], cfg["emb_dim"]),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def dropout_rate(cfg: dict, where: str) -> float:
    """The dropout rate cfg gives one place ("emb", "attn" or "shortcut"): cfg["drop_rate_<where>"]
    when present, else cfg["drop_rate"]."""
    return cfg.get(f"drop_rate_{where}", cfg["drop_rate"])


class TransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block: attention and feed-forward, each with a shortcut.

    forward: x (b, n, d) -> (b, n, d); att_options go to the attention layer (none here;
    shared.kv_cache.KVCacheGPTModel passes each layer its cache, layer_kv).
    """

    def __init__(self, cfg: dict):
        super().__init__()
        self.att = MultiHeadAttention(
            d_in=cfg["emb_dim"],
            d_out=cfg["emb_dim"],
            context_length=cfg["context_length"],
            dropout=dropout_rate(cfg, "attn"),
            num_heads=cfg["n_heads"],
            qkv_bias=cfg["qkv_bias"],
        )
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(dropout_rate(cfg, "shortcut"))

    def forward(self, x: torch.Tensor, **att_options) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x), **att_options))  # attention + shortcut
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))  # feed-forward + shortcut
        return x


class GPTModel(nn.Module):
    """GPT-2 style language model.

    cfg keys: vocab_size, context_length, emb_dim, n_heads, n_layers, drop_rate, qkv_bias; and,
    optionally:
    - drop_rate_emb, drop_rate_attn, drop_rate_shortcut: separate dropout rates after the
      embeddings, on the attention weights, and before each shortcut (each defaults to drop_rate).
    forward: token ids (b, n) with n <= context_length -> logits (b, n, vocab_size);
    hidden_states: the same ids -> the final layer norm's output (b, n, emb_dim), which out_head
    turns into the logits (for a loss that needs the logits at a few positions only);
    embed: the ids -> token plus position embeddings after dropout (b, n, emb_dim).
    """

    def __init__(self, cfg: dict):
        super().__init__()
        self.context_length = cfg["context_length"]
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(dropout_rate(cfg, "emb"))
        self.trf_blocks = nn.Sequential(*(TransformerBlock(cfg) for _ in range(cfg["n_layers"])))
        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, in_idx: torch.Tensor) -> torch.Tensor:
        return self.out_head(self.hidden_states(in_idx))

    def hidden_states(self, in_idx: torch.Tensor) -> torch.Tensor:
        seq_len = in_idx.shape[1]
        if seq_len > self.context_length:
            raise ValueError(
                f"input has {seq_len} tokens but the model's context_length is "
                f"{self.context_length}; crop the input to its last {self.context_length} tokens"
            )
        x = self.embed(in_idx)
        x = self.trf_blocks(x)
        return self.final_norm(x)

    def embed(self, in_idx: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        """Token plus position embeddings, after dropout: (b, n) -> (b, n, emb_dim). The tokens
        sit at positions start_pos ... start_pos + n - 1 (after the cached ones, with a cache)."""
        positions = torch.arange(start_pos, start_pos + in_idx.shape[1], device=in_idx.device)
        tok_embeds = self.tok_emb(in_idx)
        pos_embeds = self.pos_emb(positions)
        return self.drop_emb(tok_embeds + pos_embeds)


def generate_text_simple(
    model: nn.Module, idx: torch.Tensor, max_new_tokens: int, context_size: int
) -> torch.Tensor:
    """Greedy decoding: append the most likely next token, max_new_tokens times.

    idx: token ids (b, n). The model sees at most the last context_size tokens.
    Returns (b, n + max_new_tokens).
    """
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]
        with torch.no_grad():
            logits = model(idx_cond)
        next_id = torch.argmax(logits[:, -1, :], dim=-1, keepdim=True)  # (b, 1)
        idx = torch.cat((idx, next_id), dim=1)
    return idx
