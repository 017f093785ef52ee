"""Figures of the ch05 bonus notebooks on Llama 3.2 and Qwen3: what changed in the transformer
block since GPT-2, and how rotary position embeddings turn queries and keys by position.

block_column, repeat_bracket and outline_changed draw the block diagrams of every open-model
figure (Gemma 3, OLMo 3 and Qwen3.5 compare their blocks with Llama's and Qwen3's the same way).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from shared.figures import COLORS, figure
from shared.figures.draw import FONT, arrow, box, canvas, label
from shared.rope import apply_rope


def outline_changed(patch: FancyBboxPatch, linewidth: float = 2.2) -> None:
    """Outline a box in the accent colour: the open-model figures' mark for what a model changes."""
    patch.set_edgecolor(COLORS["accent"])
    patch.set_linewidth(linewidth)


def block_column(
    ax: Axes,
    x: float,
    y: float,
    parts: Sequence[tuple[str, str, bool]],
    w: float = 2.6,
    h: float = 0.5,
    gap: float = 0.32,
) -> list[float]:
    """A model's layers as a column of boxes from (x, y) upwards, an arrow from each to the next.

    parts: bottom to top, (text, colour, changed); changed boxes are outlined in the accent
    colour. Returns the bottom of every box (to place brackets and shortcuts beside them).
    """
    bottoms = [y + i * (h + gap) for i in range(len(parts))]
    for (text, color, changed), bottom in zip(parts, bottoms, strict=True):
        patch = box(ax, x, bottom, w, h, text, color, fontsize=FONT - 1)
        if changed:
            outline_changed(patch)
    for below, above in zip(bottoms, bottoms[1:]):
        arrow(ax, (x + w / 2, below + h), (x + w / 2, above))
    return bottoms


def repeat_bracket(
    ax: Axes, x: float, bottom: float, top: float, text_offset: float = -0.14
) -> None:
    """A grey line at x from bottom to top beside the boxes that repeat, labelled "× n_layers"
    (rotated) text_offset inches to its side (negative: to the left)."""
    ax.plot([x, x], [bottom, top], color="#999999", linewidth=1.0)
    ax.text(
        x + text_offset,
        (bottom + top) / 2,
        "× n_layers",
        rotation=90,
        ha="center",
        va="center",
        fontsize=FONT - 1,
        color="#555555",
    )


@figure(
    alt="GPT-2's transformer block beside the block of Llama 3 and Qwen3, bottom to top. "
    "GPT-2 adds learned position embeddings to the token embeddings, and each block has "
    "LayerNorm, multi-head attention, LayerNorm and a GELU feed-forward. Llama 3 and Qwen3 "
    "drop the position embeddings; their blocks use RMSNorm, grouped-query attention with "
    "rotary positions (and, in Qwen3, RMSNorm on queries and keys), RMSNorm and a SwiGLU "
    "feed-forward, all without biases; the output head shares the token embedding matrix."
)
def gpt2_vs_open_block() -> Figure:
    fig, ax = canvas(9.0, 5.7)
    gpt2 = [
        ("token + learned position\nembeddings", "position", False),
        ("LayerNorm (scale, shift)", "norm", False),
        ("multi-head attention\n12 heads, 12 key/value heads", "attention", False),
        ("LayerNorm (scale, shift)", "norm", False),
        ("feed-forward: Linear, GELU,\nLinear (with biases)", "ffn", False),
        ("final LayerNorm, output head\n(separate matrix in the book)", "output", False),
    ]
    open_model = [
        ("token embeddings only\n(no position embeddings)", "embedding", True),
        ("RMSNorm (scale only)", "norm", True),
        ("grouped-query attention, RoPE\nQwen3: RMSNorm on q and k", "attention", True),
        ("RMSNorm (scale only)", "norm", True),
        ("SwiGLU: silu(gate) * up,\ndown (no biases)", "ffn", True),
        ("final RMSNorm, output head\ntied to the token embeddings", "output", True),
    ]
    for x, title, parts in (
        (0.4, "GPT-2 (2019)", gpt2),
        (5.2, "Llama 3.2 / Qwen3 (2024-25)", open_model),
    ):
        block_column(ax, x, 0.3, parts)
        label(ax, x + 1.3, 5.4, title, bold=True)
    # The same place in both columns: arrows from left to right name the change.
    changes = ["RoPE", "RMSNorm", "GQA", "RMSNorm", "SwiGLU", "tied"]
    for i, change in enumerate(changes):
        y = 0.3 + i * 0.82 + 0.25
        arrow(ax, (3.05, y), (5.15, y), color="#999999")
        label(ax, 4.1, y + 0.13, change, fontsize=FONT - 1, color="accent")
    # The four middle boxes form the block that repeats.
    repeat_bracket(ax, 0.28, 1.1, 4.1)
    repeat_bracket(ax, 7.92, 1.1, 4.1, text_offset=0.2)
    return fig


@figure(
    alt="Rotary position embeddings in one pair of dimensions. Left: the same query vector "
    "at positions 0 to 4 is turned by a further angle theta at each position. Right: a "
    "query at position 5 with a key at position 3, and the same query and key at positions "
    "9 and 7; both pairs are 2 positions apart, so the angle between them, and their dot "
    "product, is the same."
)
def rope_rotation() -> Figure:
    fig = Figure(figsize=(9.0, 4.6))
    theta = 0.35  # radians per position in this pair (an illustrative speed)
    # A head of one pair that turns by theta per position, rotated by the course's apply_rope.
    angles = torch.arange(12.0)[:, None] * theta  # (positions, 1)
    cos, sin = torch.cos(angles).repeat(1, 2), torch.sin(angles).repeat(1, 2)  # (12, 2)
    query = torch.tensor([1.0, 0.25])
    key = torch.tensor([-0.3, 0.85])

    def at(vector: torch.Tensor, position: int) -> tuple[float, float]:
        turned = apply_rope(vector.view(1, 1, 1, 2), cos, sin, offset=position).view(2)
        return float(turned[0]), float(turned[1])

    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for ax, bottom in ((left, -0.35), (right, -1.25)):
        ax.set_aspect("equal")
        ax.set_xlim(-1.25, 1.25)
        ax.set_ylim(bottom, 1.3)
        ax.axhline(0, color="#cccccc", linewidth=0.8)
        ax.axvline(0, color="#cccccc", linewidth=0.8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("dimension i", fontsize=FONT - 1)
        ax.set_ylabel("dimension i + d/2", fontsize=FONT - 1)

    for position in range(5):
        x, y = at(query, position)
        shade = 0.35 + 0.65 * position / 4
        left.annotate(
            "",
            xy=(x, y),
            xytext=(0, 0),
            arrowprops={"arrowstyle": "-|>", "color": "#3182bd", "alpha": shade, "lw": 1.6},
        )
        left.text(x * 1.12, y * 1.12, f"p={position}", fontsize=FONT - 2, ha="center")
    left.set_title("a query at positions 0-4:\nturned by θ per position", fontsize=FONT)

    for (pq, pk), style in (((5, 3), "-"), ((9, 7), "--")):
        for vector, position, color in ((query, pq, "#3182bd"), (key, pk, "#e6550d")):
            x, y = at(vector, position)
            right.annotate(
                "",
                xy=(x, y),
                xytext=(0, 0),
                arrowprops={"arrowstyle": "-|>", "color": color, "lw": 1.6, "ls": style},
            )
            name = "q" if vector is query else "k"
            right.text(x * 1.13, y * 1.13, f"{name}@{position}", fontsize=FONT - 2, ha="center")
    dot_near = sum(a * b for a, b in zip(at(query, 5), at(key, 3)))
    dot_far = sum(a * b for a, b in zip(at(query, 9), at(key, 7)))
    right.set_title(
        f"q·k at (5, 3): {dot_near:.3f}   at (9, 7): {dot_far:.3f}\nonly the distance counts",
        fontsize=FONT,
    )
    fig.text(
        0.5,
        0.02,
        f"θ = {theta} rad ({math.degrees(theta):.0f}°) per position in this pair; "
        "each pair of a head turns at its own speed",
        ha="center",
        fontsize=FONT - 1,
        style="italic",
    )
    fig.subplots_adjust(left=0.05, right=0.98, top=0.85, bottom=0.12, wspace=0.25)
    return fig
