"""Figures of Chapter 5: the next-token loss over all positions, the training loop, temperature
and top-k on one distribution, and where each tensor of GPT-2's weight file goes in GPTModel."""

from __future__ import annotations

import math

import torch
from matplotlib.figure import Figure

from shared.figures import COLORS, figure
from shared.figures.draw import FONT, arrow, box, canvas, label

# Section 5.1.2: two texts of three tokens, their targets (shifted by one) and the log-probability
# the untrained GPTModel (GPT_CONFIG_124M, context 256, torch.manual_seed(123)) gives each target,
# as ch05.ipynb prints them.
LOSS_EXAMPLE = [
    (
        "text 1",
        ["every", " effort", " moves"],
        [" effort", " moves", " you"],
        [-9.5042, -10.3796, -11.3677],
    ),
    (
        "text 2",
        ["I", " really", " like"],
        [" really", " like", " chocolate"],
        [-11.4798, -9.7764, -12.2561],
    ),
]
TOKEN_IDS = {
    "every": 16833,
    " effort": 3626,
    " moves": 6100,
    " you": 345,
    "I": 40,
    " really": 1107,
    " like": 588,
    " chocolate": 11311,
}

# Section 5.3.1: the toy vocabulary and the next-token logits after "every effort moves you".
TOY_VOCAB = ["closer", "every", "effort", "forward", "inches", "moves", "pizza", "toward", "you"]
TOY_LOGITS = [4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79]


def _token(text: str) -> str:
    """A token as the figures write it: leading space shown as "␣"."""
    return text.replace(" ", "␣")


@figure(
    alt="Inputs and targets of two three-token texts: the target at every position is the next "
    "token. The untrained model gives each target a probability of about 1 in 50,000; the "
    "negative logarithms of these six probabilities, averaged, are the cross-entropy loss, 10.79."
)
def inputs_targets_loss() -> Figure:
    fig, ax = canvas(10.0, 4.7)
    h, step = 0.4, 0.5
    label(ax, 1.55, 4.35, "input token (id)", bold=True)
    label(ax, 3.65, 4.35, "model", bold=True)
    label(ax, 5.6, 4.35, "target = next token", bold=True)
    label(ax, 7.1, 4.35, "p(target)", bold=True)
    label(ax, 8.1, 4.35, "−ln p", bold=True)
    logs = []
    y = 3.6
    for name, inputs, targets, log_probas in LOSS_EXAMPLE:
        label(ax, 0.1, y - step + h / 2, name, ha="left", italic=True)
        for token, target, log_p in zip(inputs, targets, log_probas, strict=True):
            box(
                ax, 0.85, y, 1.4, h, f"{_token(token)} ({TOKEN_IDS[token]})", "input", rounded=False
            )
            arrow(ax, (2.25, y + h / 2), (2.85, y + h / 2), color="#999999")
            arrow(ax, (4.45, y + h / 2), (4.9, y + h / 2), color="#999999")
            box(ax, 4.9, y, 1.4, h, _token(target), "target", rounded=False)
            box(ax, 6.5, y, 1.2, h, f"{math.exp(log_p):.1e}", "output", rounded=False)
            box(ax, 7.8, y, 0.6, h, f"{-log_p:.2f}", "weight", rounded=False)
            logs.append(-log_p)
            y -= step
        y -= 0.3
    box(
        ax,
        2.85,
        0.65,
        1.6,
        3.35,
        "GPTModel\n\nlogits\n(2, 3, 50257)\n\nsoftmax over\nthe vocabulary",
        "output",
    )
    top, bottom = 4.0, 0.65
    ax.plot([8.5, 8.6, 8.6, 8.5], [top, top, bottom, bottom], color=COLORS["edge"], lw=1.1)
    box(
        ax, 8.7, 1.85, 1.25, 0.95, f"mean\n{sum(logs) / len(logs):.2f}\n= loss", "weight", bold=True
    )
    label(
        ax,
        5.0,
        0.25,
        "F.cross_entropy(logits.flatten(0, 1) (6, 50257), targets.flatten() (6,)) computes the "
        "same mean",
        fontsize=FONT - 1,
        italic=True,
    )
    return fig


@figure(
    alt="The training loop: for every epoch and every batch of the training loader, reset the "
    "gradients, compute the loss, backpropagate and let AdamW update the weights; every eval_freq "
    "steps evaluate the training and validation loss, and after each epoch print a sample."
)
def training_loop() -> Figure:
    fig, ax = canvas(10.0, 4.3)
    box(ax, 0.15, 0.15, 9.7, 3.85, "", "white", dashed=True)
    label(
        ax,
        0.35,
        3.75,
        "for each epoch (the chapter: 10 epochs of 9 batches = 90 steps)",
        ha="left",
        bold=True,
    )
    box(ax, 0.35, 1.2, 6.95, 2.25, "", "#f7f7f7", dashed=True)
    label(
        ax,
        0.55,
        3.2,
        "for each batch: inputs, targets (2, 256) from train_loader",
        ha="left",
        bold=True,
    )
    steps = [
        ("1. optimizer\n.zero_grad()", "forget the last\nstep's gradients", "white"),
        ("2. loss =\ncalc_loss_batch(...)", "cross-entropy\nof the batch", "output"),
        ("3. loss\n.backward()", "gradient of the loss\nfor every weight", "weight"),
        ("4. optimizer\n.step()", "AdamW updates\nthe weights", "trainable"),
    ]
    w, gap, x0, y, bh = 1.5, 0.18, 0.55, 1.95, 1.05
    for i, (code, meaning, color) in enumerate(steps):
        x = x0 + i * (w + gap)
        box(ax, x, y, w, bh, "", color)
        label(ax, x + w / 2, y + 0.72, code, fontsize=FONT - 1)
        label(ax, x + w / 2, y + 0.25, meaning, fontsize=FONT - 2, italic=True)
        if i:
            arrow(ax, (x - gap, y + bh / 2), (x, y + bh / 2))
    last = x0 + 3 * (w + gap)
    arrow(ax, (last + w / 2, y), (x0 + w / 2, y), curve=-0.15)
    label(ax, 3.85, 1.37, "next batch", fontsize=FONT - 1, italic=True)
    box(
        ax,
        7.55,
        1.75,
        2.15,
        1.45,
        "every eval_freq steps:\nevaluate_model\ntrain and validation loss\n(eval mode, no gradients,\neval_iter batches each)",
        "target",
        fontsize=FONT - 1,
    )
    arrow(ax, (last + w, y + bh / 2), (7.55, y + bh / 2))
    box(
        ax,
        2.2,
        0.35,
        5.6,
        0.55,
        "after each epoch: generate_and_print_sample (greedy text from the prompt)",
        "input",
        fontsize=FONT - 1,
    )
    arrow(ax, (3.8, 1.2), (3.8, 0.9))
    return fig


def _toy_probas(temperature: float, top_k: int | None) -> torch.Tensor:
    """The distribution generate() samples from: top-k masking, then softmax(logits / T)."""
    logits = torch.tensor(TOY_LOGITS)
    if top_k is not None:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.softmax(logits / temperature, dim=0)


@figure(
    alt="Nine bar charts of the next-token probabilities over a toy vocabulary of nine words. "
    "Temperature 0.1 puts almost everything on 'forward', 1 leaves the softmax as it is, 5 "
    "flattens it so that even 'pizza' gets 4%; top-k with k = 3 first removes all but "
    "'forward', 'toward' and 'closer', whatever the temperature."
)
def temperature_top_k() -> Figure:
    temperatures = [0.1, 1.0, 5.0]
    fig = Figure(figsize=(10.0, 5.6))
    axes = fig.subplots(2, 3, sharey=True)
    x = range(len(TOY_VOCAB))
    for r, top_k in enumerate([None, 3]):
        for c, temperature in enumerate(temperatures):
            ax = axes[r][c]
            probas = _toy_probas(temperature, top_k)
            colors = [COLORS["accent"] if w == "pizza" else COLORS["query"] for w in TOY_VOCAB]
            ax.bar(x, probas.tolist(), color=colors, edgecolor=COLORS["edge"], linewidth=0.6)
            kept = "all 9 words" if top_k is None else f"top-k = {top_k}"
            ax.set_title(f"{kept}, temperature {temperature:g}", fontsize=FONT)
            ax.set_ylim(0, 1.05)
            ax.set_xticks(list(x), TOY_VOCAB, rotation=90, fontsize=FONT - 2)
            ax.tick_params(axis="y", labelsize=FONT - 2)
            pizza = probas[TOY_VOCAB.index("pizza")].item()
            ax.text(8.4, 0.93, f"p(pizza) = {pizza:.2%}", ha="right", fontsize=FONT - 2)
        axes[r][0].set_ylabel("probability", fontsize=FONT - 1)
    fig.text(
        0.5,
        0.005,
        "top row: softmax(logits / temperature); bottom row: only the 3 largest logits kept "
        "(the rest set to −inf), then the same temperatures",
        ha="center",
        va="bottom",
        fontsize=FONT - 1,
        style="italic",
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


# Rows of the weight map: (GPT-2 tensor with its 124M shape, our parameter with its shape,
# what the loader does, colour of our parameter). Biases and norm parameters are copied as they are.
_MAPPING = [
    ("wte.weight  (50257, 768)", "tok_emb.weight  (50257, 768)", "copy", "embedding"),
    ("wpe.weight  (1024, 768)", "pos_emb.weight  (1024, 768)", "copy", "position"),
    ("h.i.ln_1.weight, .bias  (768,)", "norm1.scale, .shift  (768,)", "copy", "norm"),
    (
        "h.i.attn.c_proj.weight  (768, 768), .bias",
        "att.out_proj.weight  (768, 768), .bias",
        "T",
        "attention",
    ),
    ("h.i.ln_2.weight, .bias  (768,)", "norm2.scale, .shift  (768,)", "copy", "norm"),
    (
        "h.i.mlp.c_fc.weight  (768, 3072), .bias",
        "ff.layers[0].weight  (3072, 768), .bias",
        "T",
        "ffn",
    ),
    (
        "h.i.mlp.c_proj.weight  (3072, 768), .bias",
        "ff.layers[2].weight  (768, 3072), .bias",
        "T",
        "ffn",
    ),
    ("ln_f.weight, .bias  (768,)", "final_norm.scale, .shift  (768,)", "copy", "norm"),
]
_QKV = [("W_query", "query"), ("W_key", "key"), ("W_value", "value")]


@figure(
    alt="Where each tensor of GPT-2's weight file goes in GPTModel (124M sizes): embeddings, "
    "layer norms and biases are copied; the fused c_attn weight (768 x 2304) is split into the "
    "query, key and value weights and each is transposed; the other Conv1D weights, stored as "
    "(in, out), are transposed to nn.Linear's (out, in); the output head reuses wte.weight."
)
def gpt2_weight_mapping() -> Figure:
    fig, ax = canvas(10.0, 7.7)
    left, lw, right, rw, h, step = 0.1, 3.95, 6.0, 3.9, 0.38, 0.5
    mid = (left + lw + right) / 2
    label(
        ax, left + lw / 2, 7.4, "GPT-2's model.safetensors\n(Conv1D weight: (in, out))", bold=True
    )
    label(ax, right + rw / 2, 7.4, "our GPTModel\n(nn.Linear weight: (out, in))", bold=True)

    def pair(y, source, target, action, color, dashed=False):
        box(ax, left, y, lw, h, source, "frozen", fontsize=FONT - 1, rounded=False, dashed=dashed)
        box(ax, right, y, rw, h, target, color, fontsize=FONT - 1, rounded=False)
        arrow(ax, (left + lw, y + h / 2), (right, y + h / 2), color="#777777", dashed=dashed)
        text = {"T": "transpose (.T)", "copy": "copy"}.get(action, action)
        label(
            ax,
            mid,
            y + h / 2 + 0.13,
            text,
            fontsize=FONT - 2,
            italic=True,
            color="accent" if action == "T" else "black",
        )

    box(ax, 0.03, 1.55, 9.94, 4.4, "", "none", dashed=True)
    label(
        ax,
        5.0,
        5.75,
        "h.i → trf_blocks[i], for each of the 12 blocks",
        fontsize=FONT - 1,
        italic=True,
    )
    rows = iter(_MAPPING)
    for y in (6.75, 6.25, 5.2):
        pair(y, *next(rows))
    # c_attn: one fused (768, 2304) weight, three blocks of 768 columns, each transposed.
    top, bottom = 4.7, 3.7
    box(
        ax,
        left,
        bottom,
        lw,
        top + h - bottom,
        "h.i.attn.c_attn.weight  (768, 2304)\n.bias  (2304,)\nquery | key | value side by side",
        "frozen",
        fontsize=FONT - 1,
        rounded=False,
    )
    centre = (top + h + bottom) / 2
    for k, (name, color) in enumerate(_QKV):
        y = top - k * step
        text = f"att.{name}.weight  (768, 768), .bias  (768,)"
        box(ax, right, y, rw, h, text, color, fontsize=FONT - 1, rounded=False)
        arrow(ax, (left + lw, centre), (right, y + h / 2), color="#777777")
    label(
        ax,
        mid,
        5.0,
        "split in 3 blocks of 768,\ntranspose each weight",
        fontsize=FONT - 2,
        italic=True,
        color="accent",
    )
    for y in (3.2, 2.7, 2.2, 1.7, 0.95):
        pair(y, *next(rows))
    pair(
        0.35,
        "wte.weight  (50257, 768), used again",
        "out_head.weight  (50257, 768)",
        "tied: copy",
        "output",
        dashed=True,
    )
    return fig
