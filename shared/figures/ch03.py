"""Figures of Chapter 3: attention as a weighted sum, queries/keys/values, the causal mask,
dropout on attention weights, and how multi-head attention splits and merges heads."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, Rectangle

from shared.attention import SelfAttention_v2
from shared.attention import causal_mask as causal_mask_of
from shared.figures import COLORS, figure
from shared.figures.draw import FONT, arrow, box, canvas, grid, label

TOKENS = ["Your", "journey", "starts", "with", "one", "step"]
# The chapter's 3-dimensional toy embeddings of "Your journey starts with one step".
INPUTS = torch.tensor(
    [
        [0.43, 0.15, 0.89],
        [0.55, 0.87, 0.66],
        [0.57, 0.85, 0.64],
        [0.22, 0.58, 0.33],
        [0.77, 0.25, 0.10],
        [0.05, 0.80, 0.55],
    ]
)


@figure(
    alt="Two ways to translate 'Your journey starts with one step' into German. Top: an "
    "encoder-decoder RNN squeezes the whole sentence through the encoder's last hidden state, "
    "a bottleneck. Bottom: with attention, the decoder producing 'Schritt' looks back at every "
    "encoder state, weighting them (illustrative weights, thicker means more)."
)
def encoder_decoder() -> Figure:
    target = ["Deine", "Reise", "beginnt", "mit", "einem", "Schritt"]
    fig, ax = canvas(10.0, 5.6)
    step, w = 0.74, 0.62
    enc = [0.45 + i * step for i in range(6)]
    dec = [5.3 + j * step for j in range(6)]
    for panel, top in enumerate((5.25, 2.55)):
        title = (
            "encoder-decoder RNN: the last hidden state carries the whole sentence"
            if panel == 0
            else 'with attention: to produce "Schritt", the decoder looks at every encoder state'
        )
        label(ax, 0.2, top, title, ha="left", bold=True)
        y_state = top - 1.15
        for i, x in enumerate(enc):
            box(
                ax, x - 0.22, y_state - 0.17, 0.44, 0.34, f"h{i + 1}", "position", fontsize=FONT - 2
            )
            if panel == 0:  # the words enter below the encoder
                word_y = y_state - 0.95
                box(ax, x - w / 2, word_y, w, 0.32, TOKENS[i], "token", fontsize=FONT - 2)
                arrow(ax, (x, y_state - 0.62), (x, y_state - 0.18))
            else:  # room below for the attention arcs: the words are written above
                label(ax, x, y_state + 0.32, TOKENS[i], fontsize=FONT - 2, italic=True)
            if i:
                arrow(ax, (x - step + 0.22, y_state), (x - 0.22, y_state))
        for j, x in enumerate(dec):
            box(
                ax, x - 0.22, y_state - 0.17, 0.44, 0.34, f"d{j + 1}", "position", fontsize=FONT - 2
            )
            box(
                ax,
                x - w / 2,
                y_state + 0.45,
                w,
                0.32,
                target[j],
                "target",
                fontsize=FONT - 2,
                rounded=False,
            )
            arrow(ax, (x, y_state + 0.18), (x, y_state + 0.45))
            if j:
                arrow(ax, (x - step + 0.22, y_state), (x - 0.22, y_state))
        if panel == 0:
            arrow(ax, (enc[-1] + 0.22, y_state), (dec[0] - 0.22, y_state), color="accent")
            label(
                ax,
                (enc[-1] + dec[0]) / 2,
                y_state + 0.3,
                "bottleneck",
                color="accent",
                fontsize=FONT - 1,
            )
        else:
            weights = [0.03, 0.04, 0.03, 0.05, 0.15, 0.70]  # illustrative, not computed
            for x, weight in zip(enc, weights):
                ax.add_patch(
                    FancyArrowPatch(
                        (x, y_state - 0.18),
                        (dec[-1] - 0.1, y_state - 0.18),
                        arrowstyle="-|>",
                        mutation_scale=9,
                        connectionstyle="arc3,rad=0.22",
                        color=COLORS["accent"],
                        linewidth=0.5 + 5 * weight,
                        alpha=0.35 + 0.65 * weight,
                    )
                )
    return fig


def _chapter_scores() -> torch.Tensor:
    """The attention scores Q Kᵀ of section 3.5: SelfAttention_v2 built after seed 789."""
    torch.manual_seed(789)
    attention = SelfAttention_v2(d_in=3, d_out=2)
    with torch.no_grad():
        return attention.W_query(INPUTS) @ attention.W_key(INPUTS).T


def _causal_weights(scores: torch.Tensor) -> torch.Tensor:
    """softmax(masked scores / √d_k) with d_k = 2, as in the chapter."""
    future = causal_mask_of(len(scores))
    return torch.softmax(scores.masked_fill(future, float("-inf")) / 2**0.5, dim=-1)


def _numbers(values: torch.Tensor, digits: int = 2) -> list[str]:
    return [f"{v:.{digits}f}" for v in values.tolist()]


@figure(
    alt="Attention for one query, 'journey': its dot product with every input gives six "
    "scores, the softmax turns them into weights that sum to 1, and the weighted sum of the "
    "inputs is the context vector of 'journey'."
)
def attention_one_query() -> Figure:
    query = INPUTS[1]
    scores = INPUTS @ query
    weights = torch.softmax(scores, dim=0)
    context = weights @ INPUTS
    fig, ax = canvas(10.0, 4.5)
    top, h = 3.3, 0.46
    label(ax, 1.8, 4.15, "inputs x\n(3 numbers each)", bold=True)
    label(ax, 4.55, 4.15, "1. scores ω\nx · query", bold=True)
    label(ax, 6.35, 4.15, "2. weights α\nsoftmax(ω)", bold=True)
    label(ax, 8.95, 4.15, "3. context vector z\nΣ α · x", bold=True)
    for i, token in enumerate(TOKENS):
        y = top - i * (h + 0.08)
        color = "query" if i == 1 else "input"
        label(ax, 0.85, y + h / 2, token, ha="right", bold=i == 1)
        box(
            ax,
            0.95,
            y,
            1.75,
            h,
            "  ".join(_numbers(INPUTS[i])),
            color,
            fontsize=FONT - 1,
            rounded=False,
        )
        arrow(ax, (2.75, y + h / 2), (4.05, y + h / 2), color="#999999")
        box(ax, 4.1, y, 0.9, h, f"{scores[i]:.2f}", "weight", fontsize=FONT - 1, rounded=False)
        arrow(ax, (5.05, y + h / 2), (5.6, y + h / 2), color="#999999")
        box(ax, 5.65, y, 0.75, h, f"{weights[i]:.2f}", "weight", fontsize=FONT - 1, rounded=False)
        bar = 1.2 * weights[i].item() / weights.max().item()
        ax.add_patch(Rectangle((6.45, y + 0.1), bar, h - 0.2, color="#756bb1"))
        arrow(ax, (7.75, y + h / 2), (8.0, 2.0), color="#cccccc")
    box(ax, 8.05, 1.75, 1.8, 0.5, "  ".join(_numbers(context)), "context", fontsize=FONT - 1)
    label(ax, 8.95, 1.4, "context vector of 'journey'", fontsize=FONT - 2, italic=True)
    label(ax, 4.55, 0.1, "query = x of 'journey'", fontsize=FONT - 2, italic=True)
    label(ax, 6.35, 0.1, f"weights sum to {weights.sum():.2f}", fontsize=FONT - 2, italic=True)
    return fig


@figure(
    alt="Self-attention with trainable weights: the inputs X (6 tokens x 3) are multiplied by "
    "three trainable matrices W_query, W_key and W_value (3 x 2) into queries Q, keys K and "
    "values V (6 x 2); Q times K transposed, scaled by the square root of d_k and softmaxed, "
    "gives the 6 x 6 attention weights, which multiply V into the context vectors."
)
def qkv_projections() -> Figure:
    fig, ax = canvas(10.0, 4.2)
    box(ax, 0.2, 1.55, 1.15, 1.1, "inputs X\n(6, 3)", "input")
    rows = [
        ("query", "W_query", "queries Q"),
        ("key", "W_key", "keys K"),
        ("value", "W_value", "values V"),
    ]
    for n, (color, weight, name) in enumerate(rows):
        y = 3.2 - n * 1.25
        box(ax, 2.1, y, 1.2, 0.6, f"{weight}\n(3, 2)", color, dashed=True)
        box(ax, 3.95, y, 1.25, 0.6, f"{name}\n(6, 2)", color)
        arrow(ax, (1.35, 2.1), (2.1, y + 0.3))
        arrow(ax, (3.3, y + 0.3), (3.95, y + 0.3))
    box(ax, 5.9, 2.6, 1.5, 0.75, "scores\nQ Kᵀ (6, 6)", "weight")
    arrow(ax, (5.2, 3.5), (5.9, 3.1))
    arrow(ax, (5.2, 2.25), (5.9, 2.85))
    box(
        ax,
        7.9,
        2.6,
        1.9,
        0.75,
        "weights (6, 6)\nsoftmax(scores / √d_k)",
        "weight",
        fontsize=FONT - 1,
    )
    arrow(ax, (7.4, 2.97), (7.9, 2.97))
    box(ax, 7.9, 0.55, 1.9, 0.75, "context vectors\nweights · V (6, 2)", "context")
    arrow(ax, (8.85, 2.6), (8.85, 1.3))
    arrow(ax, (5.2, 0.95), (7.9, 0.92))
    label(
        ax,
        2.7,
        0.35,
        "dashed: trainable weights (learned in training)",
        fontsize=FONT - 2,
        italic=True,
    )
    label(ax, 2.7, 4.0, "1. project", bold=True)
    label(ax, 7.85, 4.0, "2. compare", bold=True)
    label(ax, 8.95, 1.95, "3. mix", bold=True, ha="left")
    return fig


@figure(
    alt="The causal mask on the six tokens: the scores above the diagonal (a token looking at "
    "later tokens) are set to minus infinity, and the softmax then spreads each row's weight "
    "over the visible tokens only, so every row still sums to 1."
)
def causal_mask() -> Figure:
    scores = _chapter_scores()
    n = len(TOKENS)
    future = causal_mask_of(n)
    weights = _causal_weights(scores)
    cell = 0.4
    fig, ax = canvas(10.0, 3.75)
    panels = [
        (
            "scores Q Kᵀ (every token sees all)",
            [[f"{v:.2f}" for v in r] for r in scores.tolist()],
            "weight",
        ),
        (
            "future scores set to -∞",
            [["-∞" if future[i, j] else f"{scores[i, j]:.2f}" for j in range(n)] for i in range(n)],
            [["mask" if future[i, j] else "weight" for j in range(n)] for i in range(n)],
        ),
        (
            "softmax(· / √d_k): rows sum to 1",
            [["0" if future[i, j] else f"{weights[i, j]:.2f}" for j in range(n)] for i in range(n)],
            [["mask" if future[i, j] else "weight" for j in range(n)] for i in range(n)],
        ),
    ]
    for k, (title, values, colors) in enumerate(panels):
        x = 0.85 + k * 3.1
        label(ax, x + n * cell / 2, 3.45, title, bold=True, fontsize=FONT - 1)
        grid(ax, x, 3.1, values, colors, cell=cell, fontsize=FONT - 3)
        if k < 2:
            arrow(ax, (x + n * cell + 0.1, 1.9), (x + 3.0, 1.9))
    for i, token in enumerate(TOKENS):
        label(ax, 0.8, 3.1 - (i + 0.5) * cell, token, ha="right", fontsize=FONT - 2)
    label(
        ax,
        0.85 + n * cell / 2,
        0.3,
        "rows: queries; columns: keys (the same six tokens)",
        fontsize=FONT - 2,
        italic=True,
    )
    return fig


@figure(
    alt="Dropout on the causal attention weights during training: with a rate of 0.5, about "
    "half of the weights become 0 and the others are doubled, so the expected sum of each row "
    "stays 1; at inference dropout is switched off."
)
def dropout_attention() -> Figure:
    n = len(TOKENS)
    future = causal_mask_of(n)
    weights = _causal_weights(_chapter_scores())
    torch.manual_seed(123)
    dropped = torch.nn.Dropout(0.5)(weights)
    cell = 0.42
    fig, ax = canvas(7.5, 3.75)

    def colors(matrix):
        return [
            [
                "mask" if future[i, j] else ("white" if matrix[i, j] == 0 else "context")
                for j in range(n)
            ]
            for i in range(n)
        ]

    for k, (title, matrix) in enumerate(
        (("causal weights", weights), ("after dropout(p = 0.5)", dropped))
    ):
        x = 0.85 + k * 3.7
        label(ax, x + n * cell / 2, 3.45, title, bold=True, fontsize=FONT - 1)
        values = [
            ["" if future[i, j] else f"{matrix[i, j]:.2f}" for j in range(n)] for i in range(n)
        ]
        grid(ax, x, 3.1, values, colors(matrix), cell=cell, fontsize=FONT - 3)
    arrow(ax, (0.85 + n * cell + 0.15, 1.85), (4.45, 1.85))
    for i, token in enumerate(TOKENS):
        label(ax, 0.8, 3.1 - (i + 0.5) * cell, token, ha="right", fontsize=FONT - 2)
    label(
        ax,
        3.75,
        0.25,
        "white: dropped (0); the kept weights are scaled by 1 / (1 - 0.5) = 2",
        fontsize=FONT - 2,
        italic=True,
    )
    return fig


@figure(
    alt="Multi-head attention with shapes: the input (b, n, d_in) is projected to queries, keys "
    "and values (b, n, d_out), each is viewed as (b, n, h, d_head) and transposed to "
    "(b, h, n, d_head), every head attends on its own slice, and the heads are transposed back, "
    "merged into (b, n, d_out) and mixed by the output projection."
)
def multihead_split() -> Figure:
    fig, ax = canvas(10.0, 4.3)
    w, h = 1.55, 0.75
    steps_top = [
        ("input x\n(b, n, d_in)", "input"),
        ("W_query, W_key,\nW_value\n→ (b, n, d_out)", "attention"),
        ("view\n(b, n, h, d_head)", "attention"),
        ("transpose(1, 2)\n(b, h, n, d_head)", "attention"),
    ]
    steps_bottom = [
        ("per head: weights\n(b, h, n, n) · V\n→ (b, h, n, d_head)", "weight"),
        ("transpose(1, 2)\n(b, n, h, d_head)", "context"),
        ("contiguous().view:\nmerge (b, n, d_out)", "context"),
        ("out_proj\n(b, n, d_out)", "attention"),
    ]
    xs = [0.25 + k * 2.45 for k in range(4)]
    for x, (text, color) in zip(xs, steps_top):
        box(ax, x, 3.1, w, h, text, color, fontsize=FONT - 1)
    for x, (text, color) in zip(reversed(xs), steps_bottom):
        box(ax, x, 1.45, w, h, text, color, fontsize=FONT - 1)
    for a, b in zip(xs, xs[1:]):
        arrow(ax, (a + w, 3.47), (b, 3.47))
        arrow(ax, (b, 1.82), (a + w, 1.82))
    arrow(ax, (xs[3] + w / 2, 3.1), (xs[3] + w / 2, 2.2))
    # the heads of one sequence: d_out columns cut into h slices of d_head
    y0 = 0.3
    label(
        ax,
        0.25,
        y0 + 0.55,
        "example: d_out = 4, h = 2 heads, d_head = 2; GPT-2: 768 = 12 x 64",
        ha="left",
        fontsize=FONT - 1,
        italic=True,
    )
    for head in range(2):
        for col in range(2):
            box(
                ax,
                0.25 + (head * 2 + col) * 0.45,
                y0,
                0.45,
                0.35,
                f"h{head + 1}",
                "weight" if head == 0 else "position",
                fontsize=FONT - 2,
                rounded=False,
            )
    label(
        ax,
        2.2,
        y0 + 0.17,
        "one token's d_out numbers: the first d_head belong to head 1, the next to head 2",
        ha="left",
        fontsize=FONT - 2,
    )
    return fig
