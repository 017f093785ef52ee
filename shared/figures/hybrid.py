"""Figures of the ch05 bonus notebook on Qwen3.5, the linear-attention hybrid: its layer pattern
(three Gated DeltaNet layers, then one gated attention layer) with both blocks beside Qwen3's,
and how its generation cache grows with the context against an all-attention model's."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from shared.figures import COLORS, figure
from shared.figures.draw import FONT, box, canvas, label
from shared.figures.open_models import block_column
from shared.qwen3_5 import QWEN3_5_CONFIG_0_8B, hybrid_cache_bytes

_DELTANET = "value"  # the colour of Gated DeltaNet (a green), beside attention's blue


@figure(
    alt="Top: the 24 layers of Qwen3.5 0.8B in order; three Gated DeltaNet layers, then one "
    "gated attention layer, six times. Bottom: Qwen3's block beside Qwen3.5's two blocks. "
    "All three are RMSNorm, token mixer, RMSNorm, SwiGLU with shortcuts. Qwen3.5 stores its "
    "RMSNorm scales as 1 + weight. In its DeltaNet blocks the token mixer is Gated DeltaNet, a "
    "linear attention with a fixed-size state and no RoPE; in its attention blocks it is "
    "grouped-query attention with QK-norm, RoPE on 64 of each head's 256 dimensions and an "
    "output gate, sigmoid(gate) times the context."
)
def hybrid_layers() -> Figure:
    fig, ax = canvas(9.8, 5.9)
    layer_types = QWEN3_5_CONFIG_0_8B["layer_types"]
    size, gap, left = 0.3, 0.045, 0.8
    label(ax, 4.9, 5.55, "Qwen3.5 0.8B: its 24 layers, first to last", bold=True)
    for i, layer_type in enumerate(layer_types):
        deltanet = layer_type == "linear_attention"
        x = left + i * (size + gap)
        box(
            ax,
            x,
            4.85,
            size,
            size,
            "Δ" if deltanet else "A",
            _DELTANET if deltanet else "attention",
            fontsize=FONT - 1,
            rounded=False,
        )
    label(
        ax,
        4.9,
        4.55,
        "Δ: Gated DeltaNet (fixed-size state)    A: gated attention (KV cache)",
        fontsize=FONT - 1,
        color="#555555",
    )
    qwen3 = [
        ("RMSNorm", "norm", False),
        ("grouped-query attention,\nRoPE, QK-norm", "attention", False),
        ("RMSNorm", "norm", False),
        ("SwiGLU", "ffn", False),
    ]
    deltanet = [
        ("RMSNorm (scale 1 + w)", "norm", True),
        ("Gated DeltaNet: conv, delta\nrule, fixed state; no RoPE", _DELTANET, True),
        ("RMSNorm (scale 1 + w)", "norm", True),
        ("SwiGLU", "ffn", False),
    ]
    attention = [
        ("RMSNorm (scale 1 + w)", "norm", True),
        ("GQA, QK-norm (1 + w), RoPE on\n64 of 256 dims; × σ(gate)", "attention", True),
        ("RMSNorm (scale 1 + w)", "norm", True),
        ("SwiGLU", "ffn", False),
    ]
    for x, title, parts in (
        (0.3, "Qwen3: every layer", qwen3),
        (3.6, "Qwen3.5: 3 layers of 4 (Δ)", deltanet),
        (6.9, "Qwen3.5: every 4th layer (A)", attention),
    ):
        block_column(ax, x, 0.3, parts)
        label(ax, x + 1.3, 3.85, title, bold=True)
    label(
        ax,
        4.9,
        0.12,
        "red outline: what Qwen3.5 changes; each block adds its two sublayers to a shortcut",
        fontsize=FONT - 1,
        color="accent",
        italic=True,
    )
    return fig


@figure(
    alt="Log-log plot of the generation cache of Qwen3.5 0.8B for one text, in bfloat16, by "
    "context length from 1,024 to 262,144 tokens, against the same model with attention in "
    "all 24 layers. The all-attention cache grows from 48 MiB to 12 GiB; the hybrid's from 31 "
    "MiB to 3.0 GiB, a quarter as much at long contexts, since only its 6 attention layers "
    "keep keys and values. Its 18 DeltaNet states take 18.6 MiB at every length."
)
def hybrid_cache_memory() -> Figure:
    fig = Figure(figsize=(8.0, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    cfg = QWEN3_5_CONFIG_0_8B
    all_attention = {**cfg, "layer_types": ["full_attention"] * cfg["n_layers"]}
    lengths = torch.logspace(10, 18, 33, base=2).round().long().tolist()  # 1K ... 256K
    mib = 2**20
    state = hybrid_cache_bytes(cfg, 0) / mib  # before any token: the DeltaNet states alone
    for settings, name, color, style in (
        (all_attention, "all 24 layers attention", COLORS["attention"], "-"),
        (cfg, "Qwen3.5: 6 attention + 18 DeltaNet layers", COLORS["accent"], "-"),
    ):
        sizes = [hybrid_cache_bytes(settings, n) / mib for n in lengths]
        ax.plot(lengths, sizes, style, color=color, linewidth=2.2, label=name)
        ax.annotate(
            f"{sizes[-1] / 1024:.1f} GiB",
            (lengths[-1], sizes[-1]),
            xytext=(-6, 6),
            textcoords="offset points",
            ha="right",
            fontsize=FONT - 1,
        )
    ax.plot(
        lengths,
        [state] * len(lengths),
        "--",
        color="#2ca25f",
        linewidth=1.6,
        label=f"of which the 18 DeltaNet states: {state:.1f} MiB at any length",
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ticks = [2**k for k in range(10, 19, 2)]
    ax.set_xticks(ticks, [f"{t // 1024}K" for t in ticks])
    yticks = [2**k for k in range(4, 15, 2)]
    ax.set_yticks(yticks, [f"{t} MiB" if t < 1024 else f"{t // 1024} GiB" for t in yticks])
    ax.set_xlabel("context length (tokens)", fontsize=FONT)
    ax.set_ylabel("cache of one text (bfloat16)", fontsize=FONT)
    ax.set_title(
        "Qwen3.5 0.8B's generation cache against an all-attention model of its size",
        fontsize=FONT + 1,
    )
    ax.grid(True, which="major", color="#e5e5e5", linewidth=0.8)
    ax.legend(loc="upper left", fontsize=FONT - 1, frameon=False)
    ax.tick_params(labelsize=FONT - 1)
    fig.subplots_adjust(left=0.13, right=0.97, top=0.9, bottom=0.13)
    return fig
