"""Figures of Chapter 4: the GPT model end to end, one transformer block, the feed-forward
module's expand/contract, and the greedy generation loop."""

from __future__ import annotations

from matplotlib.figure import Figure

from shared.figures import figure
from shared.figures.draw import FONT, arrow, box, canvas, label, row

# Chapter 4's batch text and its GPT-2 token ids.
TEXT = [("Every", 6109), ("␣effort", 3626), ("␣moves", 6100), ("␣you", 345)]
# "Hello, I am" and the token the untrained 124M model (seed 123) appends first.
PROMPT = [("Hello", 15496), (",", 11), ("␣I", 314), ("␣am", 716)]
FIRST_NEW = ("␣Feature", 27018)


@figure(
    alt="The GPT model from token ids to logits, with the sizes of GPT-2 124M: token embedding "
    "(50,257 x 768) plus position embedding (1,024 x 768), dropout, 12 transformer blocks, a "
    "final layer norm and a linear output layer that gives 50,257 logits for every position."
)
def gpt_model() -> Figure:
    fig, ax = canvas(10.0, 6.75)
    cx, w, h = 2.9, 4.2, 0.5
    left, note_x, aside_x = cx - w / 2, cx + w / 2 + 0.25, 7.55
    centres = row(ax, 0.3, 0.2, [f"{t}\n{i}" for t, i in TEXT], "token", w=0.72, h=0.55, gap=0.04)
    label(ax, note_x, 0.47, "token ids (b, n) = (1, 4)", ha="left")
    y_emb = 1.15
    box(ax, left, y_emb, 2.0, h, "token embedding\n50,257 x 768", "embedding", fontsize=FONT - 1)
    box(
        ax,
        cx + 0.1,
        y_emb,
        2.0,
        h,
        "position embedding\nrows 0 … 3 of 1,024 x 768",
        "position",
        fontsize=FONT - 1,
    )
    for c in centres:
        arrow(ax, (c, 0.75), (left + 1.0 + (c - 1.8) * 0.3, y_emb))
    label(ax, note_x, y_emb + h / 2, "(b, n, 768) and (n, 768)", ha="left")
    y_sum = 1.95
    box(ax, cx - 0.17, y_sum, 0.34, 0.34, "+", "white", bold=True)
    arrow(ax, (left + 1.0, y_emb + h), (cx - 0.17, y_sum + 0.1))
    arrow(ax, (cx + 1.1, y_emb + h), (cx + 0.17, y_sum + 0.1))
    stages = [
        (2.6, h, "dropout", "white", "input embeddings (b, n, 768)"),
        (3.35, 0.9, "12 x transformer block", "attention", "(b, n, 768) in and out"),
        (4.55, h, "final layer norm", "norm", "(b, n, 768)"),
        (5.3, h, "output layer: linear, 768 → 50,257", "output", "no bias"),
        (
            6.05,
            h,
            "logits (b, n, 50,257)",
            "output",
            "a score per token of the\nvocabulary, per position",
        ),
    ]
    arrow(ax, (cx, y_sum + 0.34), (cx, stages[0][0]))
    for i, (y, height, text, color, note) in enumerate(stages):
        box(ax, left, y, w, height, text, color, bold="block" in text)
        label(ax, note_x, y + height / 2, note, ha="left", fontsize=FONT - 1)
        if i + 1 < len(stages):
            arrow(ax, (cx, y + height), (cx, stages[i + 1][0]))
    label(
        ax,
        aside_x,
        3.8,
        "each block:\nlayer norm, masked\nmulti-head attention\n(12 heads), layer norm,\n"
        "feed-forward, and two\nshortcut connections",
        ha="left",
        fontsize=FONT - 1,
        italic=True,
    )
    label(
        ax,
        aside_x,
        1.6,
        "GPT_CONFIG_124M:\nvocab_size 50,257\ncontext_length 1,024\nemb_dim 768\n"
        "n_heads 12, n_layers 12\ndrop_rate 0.1",
        ha="left",
        fontsize=FONT - 1,
    )
    return fig


@figure(
    alt="One transformer block with pre-LayerNorm: the input (b, n, 768) goes through layer norm "
    "1, masked multi-head attention and dropout, and a shortcut adds the block's input back; "
    "the result goes through layer norm 2, the feed-forward module and dropout, and a second "
    "shortcut adds it back. The output has the input's shape."
)
def transformer_block() -> Figure:
    fig, ax = canvas(10.0, 3.3)
    yc, h = 1.45, 0.75  # centre line of the main path, box height
    parts = [  # (left, width, text, colour); None marks a sum
        (0.1, 0.95, "input x\n(b, n, 768)", "input"),
        (1.3, 0.75, "layer\nnorm 1", "norm"),
        (2.3, 1.35, "masked multi-\nhead attention\n(12 heads)", "attention"),
        (3.9, 0.8, "dropout", "white"),
        (4.95, 0.34, None, None),
        (5.55, 0.75, "layer\nnorm 2", "norm"),
        (6.55, 1.0, "feed-\nforward", "ffn"),
        (7.8, 0.8, "dropout", "white"),
        (8.85, 0.34, None, None),
    ]
    for left, w, text, color in parts:
        if text is None:
            box(ax, left, yc - 0.17, w, 0.34, "+", "white", bold=True)
        else:
            box(ax, left, yc - h / 2, w, h, text, color, fontsize=FONT - 1)
    for (left, w, *_), (next_left, *_) in zip(parts, parts[1:], strict=False):
        arrow(ax, (left + w, yc), (next_left, yc))
    arrow(ax, (9.19, yc), (9.9, yc))
    label(ax, 9.55, yc - 0.35, "output\n(b, n, 768)", fontsize=FONT - 2, va="top")
    # The shortcuts: branch off before the norm, join at the sum.
    top = 2.55
    for start, (sum_left, *_), name in [
        (1.17, parts[4], "shortcut 1"),
        (5.42, parts[8], "shortcut 2"),
    ]:
        end = sum_left + 0.17
        ax.plot([start], [yc], "o", color="#444444", ms=4)
        ax.plot([start, start, end], [yc, top, top], color="#444444", lw=1.1)
        arrow(ax, (end, top), (end, yc + 0.17))
        label(ax, (start + end) / 2, top + 0.2, f"{name}: x + sub-layer(x)", fontsize=FONT - 1)
    label(
        ax,
        5.0,
        0.35,
        "Pre-LayerNorm: each sub-layer sees normalised input, while the shortcut carries x\n"
        "unchanged. Input and output have the same shape, so 12 blocks can be chained.",
        fontsize=FONT - 1,
        italic=True,
    )
    return fig


@figure(
    alt="The feed-forward module on one token: a linear layer expands its 768 numbers to 3,072, "
    "GELU is applied to each, and a second linear layer contracts them back to 768. Every "
    "position is treated on its own."
)
def feed_forward() -> Figure:
    fig, ax = canvas(10.0, 4.4)
    mid = 2.45
    bars = [
        (0.4, 0.75, "token vector\n768"),
        (3.3, 2.9, "expanded\n3,072 (= 4 x 768)"),
        (5.7, 2.9, "after GELU\n3,072"),
        (8.6, 0.75, "output\n768"),
    ]
    colors = ["input", "ffn", "ffn", "context"]
    for (x, height, text), color in zip(bars, colors, strict=True):
        box(ax, x, mid - height / 2, 0.5, height, "", color, rounded=False)
        label(ax, x + 0.25, mid - height / 2 - 0.3, text, fontsize=FONT - 1, va="top")
    arrow(
        ax,
        (0.9, mid),
        (3.3, mid),
        text="Linear(768, 3072)\n2,362,368 parameters",
        text_offset=(-0.85, 0.35),
    )
    arrow(ax, (3.8, mid), (5.7, mid), text="GELU", text_offset=(-0.3, 0.22))
    arrow(
        ax,
        (6.2, mid),
        (8.6, mid),
        text="Linear(3072, 768)\n2,360,064 parameters",
        text_offset=(-0.85, 0.35),
    )
    label(
        ax,
        5.0,
        4.15,
        "Applied to every position on its own. Same shape in and out, (b, n, 768); "
        "4.7 million of a block's 7.1 million parameters",
        fontsize=FONT - 1,
        italic=True,
    )
    return fig


@figure(
    alt="Greedy generation: the token ids of 'Hello, I am' go into the model, which returns "
    "logits (1, 4, 50,257); only the last position's 50,257 logits are kept; argmax picks the "
    "id 27018, ' Feature', which is appended, and the loop repeats on the longer sequence, "
    "cropped to the last context_size tokens."
)
def generation_loop() -> Figure:
    fig, ax = canvas(10.0, 3.5)
    y, y2 = 2.15, 0.45  # the rows of ids before and after one step
    ids = [f"{t}\n{i}" for t, i in PROMPT]
    centres = row(ax, 0.45, y, ids, "token", w=0.78, h=0.6, gap=0.05)
    box(ax, 3.95, y, 1.1, 0.6, "GPTModel", "attention", bold=True)
    arrow(ax, (centres[-1] + 0.39, y + 0.3), (3.95, y + 0.3))
    box(ax, 5.5, y - 0.15, 1.45, 0.9, "logits\n(1, 4, 50,257)", "output", fontsize=FONT - 1)
    arrow(ax, (5.05, y + 0.3), (5.5, y + 0.3))
    box(ax, 7.4, y - 0.15, 1.4, 0.9, "last position\n(1, 50,257)", "output", fontsize=FONT - 1)
    arrow(ax, (6.95, y + 0.3), (7.4, y + 0.3))
    new_token = f"{FIRST_NEW[1]} ({FIRST_NEW[0]})"
    box(ax, 8.1, y2 - 0.1, 1.75, 0.8, f"argmax:\n{new_token}", "token", fontsize=FONT - 1)
    arrow(ax, (8.1, y - 0.15), (8.9, y2 + 0.7))
    centres2 = row(
        ax,
        0.45,
        y2,
        ids + [f"{FIRST_NEW[0]}\n{FIRST_NEW[1]}"],
        ["token"] * 4 + ["target"],
        w=0.78,
        h=0.6,
        gap=0.05,
    )
    arrow(ax, (8.1, y2 + 0.3), (centres2[-1] + 0.39, y2 + 0.3))
    label(ax, 6.35, y2 + 0.5, "4. append", fontsize=FONT - 1)
    arrow(ax, (0.25, y2 + 0.3), (0.25, y + 0.3))
    label(
        ax,
        0.45,
        (y + y2) / 2 + 0.3,
        "repeat with the longer sequence; step 1 crops it to the last context_size tokens",
        ha="left",
        fontsize=FONT - 1,
    )
    label(
        ax,
        0.45,
        3.2,
        "1. run the model on the ids (the last context_size at most)",
        ha="left",
        fontsize=FONT - 1,
    )
    label(ax, 5.5, 3.2, "2. keep the last position's scores", ha="left", fontsize=FONT - 1)
    label(ax, 8.97, 1.65, "3. most likely", fontsize=FONT - 1)
    return fig
