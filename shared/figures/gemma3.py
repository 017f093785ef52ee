"""Figures of the ch05 bonus notebook on Gemma 3: its block beside Llama's and Qwen3's, and
which positions each of its layers sees (sliding-window and full attention)."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import Patch

from shared.attention_ops import window_hidden_positions
from shared.figures import COLORS, figure
from shared.figures.draw import FONT, canvas, label
from shared.figures.open_models import block_column, repeat_bracket
from shared.gemma3 import GEMMA3_CONFIG_270M

_TOP = 6.95  # the column titles, above Gemma's eight boxes


@figure(
    alt="The transformer block of Llama 3.2 and Qwen3 beside Gemma 3's, bottom to top. Gemma 3 "
    "multiplies the token embeddings by the square root of emb_dim; it normalises both before "
    "and after each sublayer (four RMSNorms per block instead of two, each stored as 1 + "
    "weight); its attention uses QK-norm and, in five of every six layers, a sliding window "
    "of 512 positions; its feed-forward is GeGLU instead of SwiGLU. Both tie the output head "
    "to the token embeddings."
)
def llama_vs_gemma3_block() -> Figure:
    fig, ax = canvas(9.0, 7.3)
    llama = [
        ("token embeddings", "embedding", False),
        ("RMSNorm", "norm", False),
        ("grouped-query attention, RoPE\n(Qwen3: RMSNorm on q and k)", "attention", False),
        ("RMSNorm", "norm", False),
        ("SwiGLU: silu(gate) * up,\ndown", "ffn", False),
        ("final RMSNorm, output head\ntied to the token embeddings", "output", False),
    ]
    gemma = [
        ("token embeddings × √emb_dim", "embedding", True),
        ("RMSNorm (scale 1 + w)", "norm", False),
        ("GQA, RoPE, QK-norm; 5 of 6 layers:\nsliding window of 512", "attention", True),
        ("RMSNorm after attention", "norm", True),
        ("RMSNorm (scale 1 + w)", "norm", False),
        ("GeGLU: gelu(gate) * up,\ndown", "ffn", True),
        ("RMSNorm after feed-forward", "norm", True),
        ("final RMSNorm, output head\ntied to the token embeddings", "output", False),
    ]
    for x, title, parts in ((0.4, "Llama 3.2 / Qwen3", llama), (5.2, "Gemma 3 (2025)", gemma)):
        block_column(ax, x, 0.3, parts)
        label(ax, x + 1.3, _TOP, title, bold=True)
    # The repeated block: boxes 2-5 on the left, 2-7 on the right (0.82 inches per box).
    repeat_bracket(ax, 0.28, 1.1, 4.1)
    repeat_bracket(ax, 7.92, 1.1, 5.74, text_offset=0.2)
    label(
        ax,
        1.7,
        5.8,
        "red outline: what Gemma 3 changes",
        fontsize=FONT - 1,
        color="accent",
        italic=True,
    )
    return fig


@figure(
    alt="The 18 layers of Gemma 3 270M, one row each, and the positions that a token at "
    "position 2,047 attends to. Layers 6, 12 and 18 use full attention and see all 2,048 "
    "positions; the other fifteen use a sliding window and see only the last 512, so their "
    "key/value cache never holds more than 511 earlier positions."
)
def gemma3_layer_pattern() -> Figure:
    cfg = GEMMA3_CONFIG_270M
    window, num_keys = cfg["sliding_window"], 2048
    fig = Figure(figsize=(9.0, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    for i, layer_type in enumerate(cfg["layer_types"]):
        if layer_type == "sliding_attention":
            hidden = window_hidden_positions(1, num_keys, window)[0]
            color, note = COLORS["attention"], f"sees {int((~hidden).sum())}"
        else:
            hidden = window_hidden_positions(1, num_keys, num_keys)[0]  # nothing out of reach
            color, note = COLORS["accent"], f"sees all {int((~hidden).sum()):,}"
        seen = (~hidden).nonzero()[:, 0]
        first, last = int(seen[0]), int(seen[-1])
        ax.barh(i + 1, last - first + 1, left=first, height=0.7, color=color, edgecolor="#444444")
        ax.text(num_keys + 30, i + 1, note, va="center", fontsize=FONT - 2)
    ax.set_ylim(cfg["n_layers"] + 0.8, 0.2)  # layer 1 at the top
    ax.set_xlim(0, num_keys + 330)
    ax.set_yticks(range(1, cfg["n_layers"] + 1))
    ax.tick_params(labelsize=FONT - 2)
    ax.set_xticks([0, 512, 1024, 1536, num_keys - window, num_keys - 1])
    ax.set_xlabel("key position (the query sits at position 2,047)", fontsize=FONT - 1)
    ax.set_ylabel("layer", fontsize=FONT - 1)
    ax.legend(
        handles=[
            Patch(color=COLORS["attention"], label=f"sliding window ({window} positions)"),
            Patch(color=COLORS["accent"], label="full attention"),
        ],
        loc="upper left",
        fontsize=FONT - 2,
    )
    ax.set_title("Gemma 3 270M: what each layer attends to", fontsize=FONT)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.92, bottom=0.12)
    return fig
