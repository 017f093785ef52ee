"""Figures of Chapter 6: the new classification head, what finetuning may change, and why the
classifier reads the last token."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from shared.classification import PAD_TOKEN_ID, convert_to_classifier
from shared.figures import COLORS, figure
from shared.figures.draw import FONT, arrow, box, canvas, label
from shared.gpt import GPT_CONFIG_124M, GPTModel
from shared.tokenizers import gpt2_tokenizer

# A spam message of the SMS Spam Collection, short enough to draw every token.
SPAM_MESSAGE = "85233 FREE>Ringtone!Reply REAL"
PADDING_SHOWN = 2  # pad tokens drawn after the message (the data set pads to 120 tokens)


def _gpt2_classifier_124m() -> GPTModel:
    """GPT-2 124M turned into the chapter's classifier, on the meta device (shapes, no memory)."""
    with torch.device("meta"):
        model = GPTModel({**GPT_CONFIG_124M, "qkv_bias": True})
        return convert_to_classifier(model, num_classes=2, trainable_blocks=1)


def _stack(ax, x: float, w: float, head: str, output: str, head_color: str) -> None:
    """The GPT drawn bottom-up at x: token ids -> embeddings -> blocks -> norm -> head -> output."""
    layers = [
        (0.35, "token ids  (b, n)", "token"),
        (0.95, "token + position embeddings", "embedding"),
        (1.55, "12 transformer blocks", "attention"),
        (2.15, "final LayerNorm  (b, n, 768)", "norm"),
        (2.75, head, head_color),
        (3.35, output, "output"),
    ]
    for i, (y, text, color) in enumerate(layers):
        box(ax, x, y, w, 0.4, text, color, bold=i == 4)
        if i:
            arrow(ax, (x + w / 2, y - 0.2), (x + w / 2, y))


@figure(
    alt="GPT-2's output layer maps each 768-dimensional vector to 50,257 scores, one per "
    "vocabulary token; the classifier replaces it with a new layer that maps the same vector to "
    "2 scores, one for not spam and one for spam. Everything below the head stays the same."
)
def classification_head() -> Figure:
    fig, ax = canvas(9.6, 4.3)
    label(ax, 2.2, 4.05, "pretrained GPT-2 (124M)", bold=True)
    _stack(
        ax,
        0.3,
        3.8,
        "output head: Linear(768 → 50,257)",
        "(b, n, 50,257): next-token scores",
        "output",
    )
    label(ax, 7.4, 4.05, "spam classifier", bold=True)
    _stack(ax, 5.5, 3.8, "new head: Linear(768 → 2)", "(b, n, 2): not spam, spam", "trainable")
    arrow(ax, (4.2, 2.95), (5.4, 2.95), curve=0.0)
    label(ax, 4.8, 3.15, "swap", fontsize=FONT - 1)
    label(
        ax,
        4.8,
        0.05,
        f"head weights: 768 × 50,257 = {768 * 50257:,}  →  768 × 2 + 2 = {768 * 2 + 2:,}",
        fontsize=FONT - 1,
        va="bottom",
    )
    return fig


@figure(
    alt="GPT-2 124M as a spam classifier: the embeddings and the first 11 transformer blocks "
    "are frozen; the last transformer block, the final layer norm and the new 2-class output "
    "layer are trainable, about 7.1 million of the 124.4 million parameters."
)
def frozen_and_trainable() -> Figure:
    model = _gpt2_classifier_124m()

    def count(module: torch.nn.Module) -> str:
        return f"{sum(p.numel() for p in module.parameters()):,}"

    block = count(model.trf_blocks[0])
    parts = [
        ("token embedding  50,257 × 768", count(model.tok_emb), "frozen"),
        ("position embedding  1,024 × 768", count(model.pos_emb), "frozen"),
        ("transformer block 1", block, "frozen"),
        ("transformer blocks 2 to 11", f"10 × {block}", "frozen"),
        ("transformer block 12", block, "trainable"),
        ("final LayerNorm", count(model.final_norm), "trainable"),
        ("new output head  768 → 2", count(model.out_head), "trainable"),
    ]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    fig, ax = canvas(7.6, 4.3)
    for i, (name, params, state) in enumerate(parts):
        y = 0.3 + i * 0.52
        box(ax, 0.3, y, 3.6, 0.4, name, state)
        if i:
            arrow(ax, (2.1, y - 0.12), (2.1, y))
        label(ax, 4.1, y + 0.2, f"{params} parameters", ha="left", fontsize=FONT - 1)
        label(ax, 6.6, y + 0.2, state, ha="left", fontsize=FONT - 1, bold=state == "trainable")
    label(
        ax,
        3.7,
        4.05,
        f"trainable: {trainable:,} of {total:,} parameters ({100 * trainable / total:.1f}%)",
        bold=True,
    )
    return fig


@figure(
    alt="The spam message '85233 FREE>Ringtone!Reply REAL' as GPT-2 tokens followed by padding. "
    "Under the causal mask each position attends only to itself and the positions before it, so "
    "only the last position has seen the whole message; its two output scores decide the class."
)
def last_token_causal() -> Figure:
    tokenizer = gpt2_tokenizer()
    ids = tokenizer.encode(SPAM_MESSAGE) + [PAD_TOKEN_ID] * PADDING_SHOWN
    pieces = [
        "<pad>" if i == PAD_TOKEN_ID else tokenizer.decode([i]).replace(" ", "␣") for i in ids
    ]
    n, cell = len(ids), 0.36
    left, top = 1.55, 4.6
    fig, ax = canvas(9.8, 5.3)
    label(ax, left + n * cell / 2, top + 0.55, "attends to", fontsize=FONT - 1)
    label(ax, left - 0.35, top + 0.2, "token, id", fontsize=FONT - 2)
    for j, piece in enumerate(pieces):
        ax.text(
            left + (j + 0.5) * cell, top + 0.05, piece, rotation=60, ha="left", va="bottom",
            fontsize=FONT - 2, rotation_mode="anchor",
        )  # fmt: skip
    for i, piece in enumerate(pieces):
        y = top - (i + 1) * cell
        label(ax, left - 0.62, y + cell / 2, piece, ha="right", fontsize=FONT - 2)
        label(
            ax,
            left - 0.08,
            y + cell / 2,
            str(ids[i]),
            ha="right",
            fontsize=FONT - 2,
            color="#666666",
        )
        for j in range(n):
            color = "weight" if j <= i else "mask"
            box(ax, left + j * cell, y, cell, cell, "", color, rounded=False)
        if i < n - 1:
            box(ax, 6.2, y + 0.04, 0.9, cell - 0.08, "not read", "ignore", fontsize=FONT - 3)
    last_y = top - n * cell
    ax.add_patch(
        Rectangle(
            (left, last_y), n * cell, cell, fill=False, edgecolor=COLORS["accent"], linewidth=2
        )
    )
    box(
        ax, 6.2, last_y + 0.03, 0.9, cell - 0.06, "2 scores", "output", fontsize=FONT - 2, bold=True
    )
    arrow(
        ax, (left + n * cell + 0.05, last_y + cell / 2), (6.15, last_y + cell / 2), color="accent"
    )
    label(
        ax,
        7.25,
        last_y + cell / 2,
        "the last position has seen\nevery token: read its\nscores (not spam, spam)",
        ha="left",
        fontsize=FONT - 1,
    )
    label(ax, 6.65, top + 0.2, "output\nat each position", fontsize=FONT - 2)
    box(ax, left, 0.12, 0.3, 0.25, "", "weight", rounded=False)
    label(ax, left + 0.4, 0.245, "may attend", ha="left", fontsize=FONT - 2)
    box(ax, left + 1.6, 0.12, 0.3, 0.25, "", "mask", rounded=False)
    label(ax, left + 2.0, 0.245, "masked (a later token)", ha="left", fontsize=FONT - 2)
    label(
        ax,
        left + 4.4,
        0.245,
        f"<pad> = {PAD_TOKEN_ID} (<|endoftext|>), on the right, up to 120 tokens",
        ha="left",
        fontsize=FONT - 2,
    )
    return fig
