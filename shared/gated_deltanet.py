"""Gated DeltaNet: linear attention with a fixed-size state, the linear-attention layer of
Qwen3-Next and Qwen3.5 (Yang, Kautz and Hatamizadeh, "Gated Delta Networks", 2024).

Softmax attention keeps every past key and value (the KV cache grows with the text). A linear
attention layer keeps one matrix per head instead, the state S (d_k x d_v), an associative memory
that maps keys to values: writing the pair (k, v) adds the outer product k v^T, and reading with
a query q gives S^T q. The gated delta rule writes carefully, one token t at a time:

1. forget: S <- exp(g_t) S, with g_t <= 0 (the gate, a log decay chosen per token and head);
2. correct: the memory's current answer for k_t is S^T k_t; only the error v_t - S^T k_t is
   written, scaled by beta_t in (0, 1): S <- S + beta_t k_t (v_t - S^T k_t)^T. With unit-length
   keys and beta_t = 1 the memory then returns exactly v_t for k_t (the delta rule of learning);
3. read: o_t = S^T q_t.

- recurrent_gated_delta_rule: those three steps, token by token (generation uses it);
- chunked_gated_delta_rule: the same outputs, C tokens at a time, mostly matrix products
  (training and prompts use it);
- GatedDeltaNet: the whole layer as Qwen3.5 builds it, with DeltaNetState, its fixed-size
  cache for generation, and QWEN3_5_TENSOR_NAMES, the Hugging Face names of its weights;
- deltanet_state_bytes: the cache's bytes per layer, next to
  shared.attention_variants.kv_cache_bytes.

Shapes: b = batch size, h = heads, n = tokens, d_k = key (and query) head size, d_v = value head
size, C = chunk_size, N = number of chunks, K = conv_kernel_size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shared.attention_ops import merge_heads, repeat_kv, split_heads
from shared.open_models import RMSNorm


def check_delta_rule_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None,
) -> None:
    """Raise ValueError, naming the shapes, unless q and k are (b, h, n, d_k), v (b, h, n, d_v),
    g and beta (b, h, n) and initial_state None or (b, h, d_k, d_v)."""
    if q.dim() != 4 or q.shape != k.shape:
        raise ValueError(
            f"q and k must both be (batch, heads, tokens, d_k); got q {tuple(q.shape)} and "
            f"k {tuple(k.shape)}"
        )
    b, h, n, d_k = k.shape
    if v.dim() != 4 or v.shape[:3] != (b, h, n):
        raise ValueError(
            f"v must be (batch, heads, tokens, d_v) = ({b}, {h}, {n}, d_v) like k; "
            f"got v {tuple(v.shape)}"
        )
    for name, t in (("g", g), ("beta", beta)):
        if t.shape != (b, h, n):
            raise ValueError(
                f"{name} must be (batch, heads, tokens) = ({b}, {h}, {n}); got {tuple(t.shape)}"
            )
    state_shape = (b, h, d_k, v.shape[3])
    if initial_state is not None and initial_state.shape != state_shape:
        raise ValueError(
            f"initial_state must be (batch, heads, d_k, d_v) = {state_shape}; "
            f"got {tuple(initial_state.shape)}"
        )


def _start_state(initial_state: torch.Tensor | None, v: torch.Tensor, d_k: int) -> torch.Tensor:
    """initial_state in v's dtype, or zeros (b, h, d_k, d_v) for v (b, h, ..., d_v): an empty
    memory."""
    if initial_state is not None:
        return initial_state.to(v.dtype)
    return v.new_zeros(v.shape[0], v.shape[1], d_k, v.shape[-1])


def recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule one token at a time (see the module docstring).

    q, k (b, h, n, d_k); v (b, h, n, d_v); g (b, h, n), the log of each token's decay (<= 0);
    beta (b, h, n), each token's write strength; initial_state (b, h, d_k, d_v), the state
    before the first token (None: zeros). Computes in the inputs' dtype; nothing is normalised
    or scaled here (the layer does that).
    Returns the outputs (b, h, n, d_v), o_t = S_t^T q_t, and the state after the last token.
    """
    check_delta_rule_inputs(q, k, v, g, beta, initial_state)
    state = _start_state(initial_state, v, k.shape[-1])
    outputs = v.new_empty(v.shape)
    for t in range(v.shape[2]):
        state = state * g[:, :, t].exp()[..., None, None]  # forget
        k_t = k[:, :, t].unsqueeze(-2)  # (b, h, 1, d_k)
        error = v[:, :, t] - (k_t @ state).squeeze(-2)  # what the memory gets wrong: (b, h, d_v)
        state = state + k_t.transpose(-1, -2) @ (beta[:, :, t, None] * error).unsqueeze(-2)
        outputs[:, :, t] = (q[:, :, t].unsqueeze(-2) @ state).squeeze(-2)  # read
    return outputs, state


def chunked_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    chunk_size: int = 64,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule chunk_size tokens at a time: the outputs and final state of
    recurrent_gated_delta_rule (same arguments), up to rounding.

    Inside a chunk, write S_0 for the state before it, u_i = beta_i (v_i - S'^T k_i) for what
    token i writes (S' the state it sees, already decayed by exp(g_i)), and
    G_i = exp(g_1 + ... + g_i) for the decay from the chunk's start through token i. Then
    S_i = G_i S_0 + sum_{j <= i} (G_i / G_j) k_j u_j^T, and putting that into u_i gives, for the
    chunk's C writes U (C, d_v) at once, a lower-triangular system (the UT transform)
        (I + A) U = diag(beta) V - diag(beta G) K S_0,  A_ij = beta_i (G_i / G_j) k_i.k_j (j < i),
    so U = W_v - W_k S_0 with W_v, W_k solved from it; these and the decayed query-key scores
    depend only on the chunk's own tokens, so they are computed for every chunk at once. What
    needs the state is a short loop over the chunks:
        outputs O = diag(G) Q S_0 + (Q K^T * D) U,  D_ij = G_i / G_j for j <= i, else 0;
        next state S_C = G_C S_0 + (K * G_C / G)^T U.
    Decays are differences of cumulative log decays, exponentiated only where j <= i (never
    above 1). n need not be a multiple of chunk_size: the last chunk is padded with tokens
    whose k, v, g and beta are 0, which neither write nor decay.
    Returns the outputs (b, h, n, d_v) and the state after the last token (b, h, d_k, d_v).
    """
    check_delta_rule_inputs(q, k, v, g, beta, initial_state)
    if chunk_size < 1:
        raise ValueError(f"chunk_size ({chunk_size}) must be at least 1")
    b, h, n, d_k = k.shape
    pad = -n % chunk_size
    q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    g, beta = (F.pad(t, (0, pad)) for t in (g, beta))
    q, k, v = (t.reshape(b, h, -1, chunk_size, t.shape[-1]) for t in (q, k, v))  # (b, h, N, C, .)
    g, beta = (t.reshape(b, h, -1, chunk_size) for t in (g, beta))  # (b, h, N, C)

    log_decay = g.cumsum(dim=-1)  # log G_i
    later = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=g.device).triu(1)
    pair_decay = (log_decay[..., :, None] - log_decay[..., None, :]).masked_fill(later, -torch.inf)
    pair_decay = pair_decay.exp()  # D: (b, h, N, C, C), G_i / G_j on and below the diagonal
    k_beta = k * beta[..., None]
    unit_lower = (k_beta @ k.transpose(-1, -2) * pair_decay).tril(-1) + torch.eye(
        chunk_size, dtype=v.dtype, device=v.device
    )  # I + A
    writes_from_values = torch.linalg.solve_triangular(
        unit_lower, v * beta[..., None], upper=False, unitriangular=True
    )  # W_v: (b, h, N, C, d_v)
    writes_per_state = torch.linalg.solve_triangular(
        unit_lower, k_beta * log_decay.exp()[..., None], upper=False, unitriangular=True
    )  # W_k: (b, h, N, C, d_k)
    scores = q @ k.transpose(-1, -2) * pair_decay  # (b, h, N, C, C)
    q_decayed = q * log_decay.exp()[..., None]  # diag(G) Q
    k_to_end = k * (log_decay[..., -1:] - log_decay).exp()[..., None]  # K * G_C / G
    chunk_decay = log_decay[..., -1].exp()[..., None, None]  # G_C: (b, h, N, 1, 1)

    state = _start_state(initial_state, v, d_k)
    outputs = []
    for c in range(v.shape[2]):
        writes = writes_from_values[:, :, c] - writes_per_state[:, :, c] @ state  # U
        outputs.append(q_decayed[:, :, c] @ state + scores[:, :, c] @ writes)
        state = state * chunk_decay[:, :, c] + k_to_end[:, :, c].transpose(-1, -2) @ writes
    return torch.cat(outputs, dim=2)[:, :, :n], state


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(sum(x^2) + eps) over the last dimension: unit-length vectors (..., d)."""
    return x * torch.rsqrt(x.pow(2).sum(dim=-1, keepdim=True) + eps)


class DeltaNetState:
    """What one GatedDeltaNet layer keeps between generation steps for one batch of texts: its
    size does not depend on how many tokens it has seen.

    conv: the last K - 1 inputs of the short convolution, (b, conv channels, K - 1);
    recurrent: the delta rule's state, (b, h_v, d_k, d_v), in float32; both None before the
    first step. length: the positions seen. nbytes: the bytes held. It answers length and
    nbytes as shared.attention_ops.LayerKV does, so a model's KVCache can hold DeltaNetStates
    for its linear-attention layers beside the LayerKVs of its attention layers.
    """

    def __init__(self):
        self.conv: torch.Tensor | None = None
        self.recurrent: torch.Tensor | None = None
        self.length = 0

    @property
    def nbytes(self) -> int:
        """Bytes the two states take."""
        held = [t for t in (self.conv, self.recurrent) if t is not None]
        return sum(t.numel() * t.element_size() for t in held)


class GatedDeltaNet(nn.Module):
    """The Gated DeltaNet layer of Qwen3.5 (Qwen3-Next computes the same, with its projections
    packed differently).

    For each token x (emb_dim):
    - W_qkv projects it to queries and keys (num_key_heads heads of key_head_dim) and values
      (num_value_heads heads of value_head_dim); a short causal depthwise convolution (each
      channel mixes its last conv_kernel_size inputs) and SiLU follow;
    - queries and keys are L2-normalised (so the delta rule's correction is well scaled) and
      the queries also scaled by 1 / sqrt(key_head_dim); with more value heads than key heads,
      each query/key head serves num_value_heads / num_key_heads consecutive value heads;
    - beta = sigmoid(W_beta x), one write strength per value head;
    - g = -exp(log_decay_rate) * softplus(W_decay x + decay_bias), one log decay per value
      head (Hugging Face: A_log and dt_bias, as in Mamba);
    - the gated delta rule (chunked over chunk_size tokens, recurrent for a single token),
      computed in float32;
    - each head's output is RMS-normalised (norm, shared by the heads) and gated by
      silu(W_gate x), the heads are merged, and out_proj maps them back to emb_dim.
    No position embedding: the convolution and the decay carry the order. No biases.

    forward(x (b, n, emb_dim), state=None) -> (b, n, emb_dim). With a DeltaNetState, x
    continues the tokens it has seen and it is updated to include x; the state stays the same
    size however long the text gets.
    """

    def __init__(
        self,
        emb_dim: int,
        num_key_heads: int,
        num_value_heads: int,
        key_head_dim: int,
        value_head_dim: int,
        conv_kernel_size: int = 4,
        norm_eps: float = 1e-6,
        chunk_size: int = 64,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        sizes = {
            "emb_dim": emb_dim,
            "num_key_heads": num_key_heads,
            "key_head_dim": key_head_dim,
            "value_head_dim": value_head_dim,
            "conv_kernel_size": conv_kernel_size,
            "chunk_size": chunk_size,
        }
        for name, size in sizes.items():
            if size < 1:
                raise ValueError(f"{name} ({size}) must be at least 1")
        if num_value_heads < 1 or num_value_heads % num_key_heads != 0:
            raise ValueError(
                f"num_value_heads ({num_value_heads}) must be a multiple of num_key_heads "
                f"({num_key_heads}): each query/key head serves the same number of value heads"
            )
        self.num_key_heads, self.num_value_heads = num_key_heads, num_value_heads
        self.key_head_dim, self.value_head_dim = key_head_dim, value_head_dim
        self.chunk_size = chunk_size
        key_dim, value_dim = num_key_heads * key_head_dim, num_value_heads * value_head_dim
        self.split_sizes = [key_dim, key_dim, value_dim]  # queries, keys, values
        channels = 2 * key_dim + value_dim
        self.W_qkv = nn.Linear(emb_dim, channels, bias=False, dtype=dtype)
        self.W_gate = nn.Linear(emb_dim, value_dim, bias=False, dtype=dtype)
        self.W_beta = nn.Linear(emb_dim, num_value_heads, bias=False, dtype=dtype)
        self.W_decay = nn.Linear(emb_dim, num_value_heads, bias=False, dtype=dtype)
        # Depthwise (groups=channels): every channel has its own conv_kernel_size weights.
        self.conv = nn.Conv1d(
            channels, channels, conv_kernel_size, groups=channels, bias=False, dtype=dtype
        )
        # Decay rates A = exp(log_decay_rate) drawn from (0.01, 16), as Qwen3.5 initialises them.
        rates = torch.empty(num_value_heads, dtype=dtype).uniform_(0.01, 16)
        self.log_decay_rate = nn.Parameter(rates.log())
        self.decay_bias = nn.Parameter(torch.ones(num_value_heads, dtype=dtype))
        self.norm = RMSNorm(value_head_dim, norm_eps, dtype)
        self.out_proj = nn.Linear(value_dim, emb_dim, bias=False, dtype=dtype)

    def short_conv(self, mixed: torch.Tensor, state: DeltaNetState | None) -> torch.Tensor:
        """The causal depthwise convolution and SiLU: (b, n, channels) -> (b, n, channels).

        Each position sees its own input and the K - 1 before it: those of the state (the end
        of the previous call) or zeros at the start of the text. The state keeps the last K - 1.
        """
        x = mixed.transpose(1, 2)  # (b, channels, n)
        b, channels, n = x.shape
        past = self.conv.kernel_size[0] - 1
        if state is not None and state.conv is not None:
            before = state.conv
        else:
            before = x.new_zeros(b, channels, past)
        x = torch.cat([before, x], dim=-1)  # (b, channels, K - 1 + n)
        if state is not None:
            state.conv = x[:, :, x.shape[-1] - past :]
        return F.silu(self.conv(x)).transpose(1, 2)  # n outputs: the convolution adds no padding

    def decay_and_beta(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The log decays g and the write strengths beta, each (b, h_v, n), in float32."""
        rate = self.log_decay_rate.float().exp()
        g = -rate * F.softplus(self.W_decay(x).float() + self.decay_bias.float())
        beta = torch.sigmoid(self.W_beta(x).float())
        return g.transpose(1, 2), beta.transpose(1, 2)

    def forward(self, x: torch.Tensor, state: DeltaNetState | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        if state is not None and state.recurrent is not None and state.recurrent.shape[0] != b:
            raise ValueError(
                f"the state holds {state.recurrent.shape[0]} texts but x has {b}; "
                "start a new DeltaNetState for a new batch"
            )
        queries, keys, values = self.short_conv(self.W_qkv(x), state).split(self.split_sizes, -1)
        queries = l2_normalize(split_heads(queries, self.num_key_heads).float())
        queries = queries * self.key_head_dim**-0.5  # (b, h_k, n, d_k)
        keys = l2_normalize(split_heads(keys, self.num_key_heads).float())
        heads_per_key = self.num_value_heads // self.num_key_heads
        queries, keys = repeat_kv(queries, heads_per_key), repeat_kv(keys, heads_per_key)
        values = split_heads(values, self.num_value_heads).float()  # (b, h_v, n, d_v)
        g, beta = self.decay_and_beta(x)
        before = None if state is None else state.recurrent
        if n == 1:
            out, after = recurrent_gated_delta_rule(queries, keys, values, g, beta, before)
        else:
            out, after = chunked_gated_delta_rule(
                queries, keys, values, g, beta, self.chunk_size, before
            )
        if state is not None:
            state.recurrent = after
            state.length += n
        gate = split_heads(self.W_gate(x), self.num_value_heads)  # (b, h_v, n, d_v)
        out = self.norm(out.to(x.dtype)).float() * F.silu(gate.float())
        return self.out_proj(merge_heads(out.to(x.dtype)))


# {GatedDeltaNet parameter: Hugging Face name in Qwen3.5's layer (model.layers.<i>.linear_attn.)}
QWEN3_5_TENSOR_NAMES = {
    "W_qkv.weight": "in_proj_qkv.weight",
    "W_gate.weight": "in_proj_z.weight",
    "W_beta.weight": "in_proj_b.weight",
    "W_decay.weight": "in_proj_a.weight",
    "conv.weight": "conv1d.weight",
    "log_decay_rate": "A_log",
    "decay_bias": "dt_bias",
    "norm.scale": "norm.weight",
    "out_proj.weight": "out_proj.weight",
}


def deltanet_settings_from_hf(text_config: dict) -> dict:
    """GatedDeltaNet's keyword arguments from a Qwen3.5 text config (config.json's text_config,
    or a Qwen3_5TextConfig's to_dict()). ValueError if its activation is not SiLU."""
    if text_config.get("hidden_act", "silu") != "silu":
        raise ValueError(
            f"hidden_act {text_config['hidden_act']!r} is not supported; expected silu"
        )
    return {
        "emb_dim": text_config["hidden_size"],
        "num_key_heads": text_config["linear_num_key_heads"],
        "num_value_heads": text_config["linear_num_value_heads"],
        "key_head_dim": text_config["linear_key_head_dim"],
        "value_head_dim": text_config["linear_value_head_dim"],
        "conv_kernel_size": text_config["linear_conv_kernel_dim"],
        "norm_eps": text_config["rms_norm_eps"],
    }


def deltanet_state_bytes(
    num_key_heads: int,
    num_value_heads: int,
    key_head_dim: int,
    value_head_dim: int,
    conv_kernel_size: int = 4,
    dtype: torch.dtype = torch.bfloat16,
    state_dtype: torch.dtype = torch.float32,
) -> int:
    """Bytes one GatedDeltaNet layer keeps for one text, however long (a DeltaNetState's
    nbytes): the recurrent state, num_value_heads * key_head_dim * value_head_dim numbers in
    state_dtype (float32, as GatedDeltaNet and the reference kernels keep it), plus the
    convolution's last conv_kernel_size - 1 inputs of its 2 * num_key_heads * key_head_dim +
    num_value_heads * value_head_dim channels in the model's dtype. Times the batch size and the
    number of layers for a model; compare shared.attention_variants.kv_cache_bytes, which grows
    with the tokens."""
    recurrent = num_value_heads * key_head_dim * value_head_dim * state_dtype.itemsize
    channels = 2 * num_key_heads * key_head_dim + num_value_heads * value_head_dim
    return recurrent + (conv_kernel_size - 1) * channels * dtype.itemsize
