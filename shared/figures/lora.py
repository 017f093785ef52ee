"""Figure of the LoRA bonus notebook (ch06/lora-classification.ipynb): a linear layer with a
low-rank adapter beside it, and the merged layer."""

from __future__ import annotations

from matplotlib.figure import Figure

from shared.figures import figure
from shared.figures.draw import FONT, arrow, box, canvas, label


@figure(
    alt="A LoRA layer: the input x goes through the frozen pretrained layer W (d_in to d_out) "
    "and, beside it, through two small trainable layers, down (d_in to r) and up (r to d_out), "
    "scaled by alpha over r; the two results are added. After training, W plus the scaled "
    "product of up's and down's weights is one merged weight that computes the same."
)
def lora_layer() -> Figure:
    fig, ax = canvas(9.6, 3.9)
    # The LoRA layer: x -> W (frozen) and x -> A -> B (trainable), summed.
    box(ax, 0.2, 1.55, 0.9, 0.5, "x\n(b, n, d_in)", "input", fontsize=FONT - 1)
    box(ax, 1.6, 2.5, 2.0, 0.9, "W: d_in → d_out\npretrained, frozen", "frozen", fontsize=FONT - 1)
    box(ax, 1.6, 0.45, 0.9, 0.9, "down\nd_in → r", "trainable", fontsize=FONT - 1)
    box(ax, 2.75, 0.65, 0.85, 0.5, "up\nr → d_out", "trainable", fontsize=FONT - 1)
    arrow(ax, (1.1, 1.9), (1.6, 2.9))
    arrow(ax, (1.1, 1.7), (1.6, 0.9))
    arrow(ax, (2.5, 0.9), (2.75, 0.9))
    box(ax, 4.05, 1.55, 0.5, 0.5, "+", "white", fontsize=FONT + 2, bold=True)
    arrow(ax, (3.6, 2.95), (4.3, 2.05))
    arrow(ax, (3.6, 0.9), (4.3, 1.55), "× α / r", text_offset=(0.1, -0.1))
    box(ax, 4.95, 1.55, 0.95, 0.5, "y\n(b, n, d_out)", "output", fontsize=FONT - 1)
    arrow(ax, (4.55, 1.8), (4.95, 1.8))
    label(ax, 2.6, 3.7, "LoRALinear: y = W(x) + (α / r) up(down(x))", bold=True)
    label(
        ax, 2.0, 0.02, "trainable: r × (d_in + d_out) numbers instead of d_in × d_out;\n"
        "up starts at zero, so at first y = W(x)", fontsize=FONT - 2, italic=True, va="bottom",
    )  # fmt: skip
    # The merged layer: one matrix, the same outputs.
    ax.plot([6.25, 6.25], [0.2, 3.8], color="#bbbbbb", lw=1, ls=":")
    label(ax, 8.0, 3.7, "after merge_lora", bold=True)
    box(ax, 7.5, 2.8, 1.0, 0.5, "x", "input", fontsize=FONT - 1)
    box(
        ax,
        6.6,
        1.55,
        2.8,
        0.75,
        "W + (α / r) W_up W_down\nd_in → d_out: one matrix",
        "frozen",
        fontsize=FONT - 1,
    )
    box(ax, 7.45, 0.35, 1.1, 0.5, "y (the same)", "output", fontsize=FONT - 1)
    arrow(ax, (8.0, 2.8), (8.0, 2.3))
    arrow(ax, (8.0, 1.55), (8.0, 0.85))
    return fig
