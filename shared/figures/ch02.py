"""Figures of Chapter 2: from text to tokens, token IDs, training windows and input embeddings."""

from __future__ import annotations

import re

import torch
from matplotlib.figure import Figure

from shared.figures import figure
from shared.figures.draw import FONT, arrow, box, canvas, label, row
from shared.tokenizers import SPLIT_PATTERN, BPETokenizer, gpt2_tokenizer, merge_pair

SENTENCE = "Every effort moves you"  # the prompt the later chapters continue
VERDICT_START = "I HAD always thought Jack Gisburn rather a cheap genius"


def _visible(piece: str) -> str:
    """A token's text with its spaces shown as "␣" (a leading space is part of GPT-2 tokens)."""
    return piece.replace(" ", "␣").replace("\n", "\\n")


@figure(
    alt="The text 'Every effort moves you' is split into four tokens, each token becomes an "
    "integer ID from GPT-2's vocabulary, and each ID selects a vector of numbers, its embedding."
)
def text_to_embeddings() -> Figure:
    tokenizer = gpt2_tokenizer()
    ids = tokenizer.encode(SENTENCE)
    pieces = [_visible(tokenizer.decode([i])) for i in ids]
    torch.manual_seed(123)  # the embedding layer of section 2.8: GPT-2's vocabulary, 256 dims
    vectors = torch.nn.Embedding(50257, 256)(torch.tensor(ids)).detach()
    fig, ax = canvas(9.6, 4.6)
    left, w, gap = 2.9, 1.2, 0.2
    label(ax, 0.15, 4.15, "text", ha="left", bold=True)
    box(ax, left, 3.95, len(ids) * (w + gap) - gap, 0.42, f'"{SENTENCE}"', "white")
    label(ax, 0.15, 3.1, "tokens\n(tokenizer splits the text)", ha="left")
    xs = row(ax, left, 2.9, pieces, "token", w=w, gap=gap, fontsize=FONT)
    label(ax, 0.15, 2.05, "token IDs\n(position in the vocabulary)", ha="left")
    row(ax, left, 1.85, [str(i) for i in ids], "token", w=w, gap=gap, fontsize=FONT)
    label(
        ax,
        0.15,
        0.75,
        "embedding vectors\n(one row of the embedding\nlayer's weight matrix)",
        ha="left",
    )
    for x, vector in zip(xs, vectors):
        arrow(ax, (x, 3.95), (x, 3.3))
        arrow(ax, (x, 2.9), (x, 2.25))
        arrow(ax, (x, 1.85), (x, 1.3))
        values = [f"{v:.2f}" for v in vector[:2].tolist()] + ["⋮", f"{vector[-1].item():.2f}"]
        for k, value in enumerate(values):
            box(
                ax,
                x - 0.3,
                1.0 - k * 0.26,
                0.6,
                0.26,
                value,
                "embedding",
                fontsize=FONT - 2,
                rounded=False,
            )
    label(ax, xs[-1] + 0.45, 0.62, "256 numbers\neach", ha="left", fontsize=FONT - 1)
    return fig


@figure(
    alt="Three regular expressions split 'Hello, world. Is this-- a test?': whitespace only "
    "leaves punctuation on the words; adding commas and periods splits those off; the final "
    "pattern also splits question marks and double dashes, and whitespace pieces are dropped."
)
def regex_split() -> Figure:
    text = "Hello, world. Is this-- a test?"
    steps = [
        (r're.split(r"(\s)", text)', re.split(r"(\s)", text)),
        (r're.split(r"([,.]|\s)", text)', re.split(r"([,.]|\s)", text)),
        ("final pattern, whitespace dropped", [t for t in SPLIT_PATTERN.split(text) if t.strip()]),
    ]
    fig, ax = canvas(10.0, 3.3)
    label(ax, 0.15, 3.0, f'text: "{text}"', ha="left", bold=True)
    for n, (title, pieces) in enumerate(steps):
        y = 2.2 - n * 0.85
        label(ax, 0.15, y + 0.42, title, ha="left", fontsize=FONT - 1, italic=True)
        x = 0.15
        for piece in pieces:
            shown = "␣" if piece == " " else ("∅" if piece == "" else piece)
            w = 0.16 + 0.095 * len(shown)
            grey = piece.strip() == ""
            box(
                ax,
                x,
                y - 0.1,
                w,
                0.32,
                shown,
                "mask" if grey else "token",
                fontsize=FONT - 1,
                rounded=False,
            )
            x += w + 0.05
    label(ax, 9.85, 0.12, "grey: whitespace and empty strings (∅)", ha="right", fontsize=FONT - 2)
    return fig


BPE_WORDS = {"low": 5, "lower": 2, "newest": 6, "widest": 3}


@figure(
    alt="Byte-pair encoding trained on the words low, lower, newest and widest: every step "
    "merges the most frequent pair of neighbouring tokens into one new token, so the words "
    "are written with fewer and longer tokens after each merge."
)
def bpe_merges() -> Figure:
    steps = 5
    text = "".join(f" {word}" * count for word, count in BPE_WORDS.items())
    tokenizer = BPETokenizer.train(text, vocab_size=256 + steps + 1)
    words = {f" {w}": list(f" {w}".encode()) for w in BPE_WORDS}
    fig, ax = canvas(10.0, 0.9 + 0.55 * (steps + 1))
    top = 0.55 * (steps + 1) + 0.45
    label(ax, 0.15, top + 0.2, "merge", ha="left", bold=True)
    for j, word in enumerate(words):
        label(
            ax, 3.0 + j * 1.75, top + 0.2, f"{word.strip()} (x{BPE_WORDS[word.strip()]})", bold=True
        )
    merges = list(tokenizer.merges.items())
    for step in range(steps + 1):
        y = top - 0.45 - step * 0.55
        if step == 0:
            label(ax, 0.15, y + 0.15, "start: single bytes", ha="left", fontsize=FONT - 1)
        else:
            (left, right), new = merges[step - 1]
            a, b = (_visible(tokenizer.vocab[t].decode()) for t in (left, right))
            label(
                ax,
                0.15,
                y + 0.15,
                f"{step}. {a} + {b} → {_visible(tokenizer.vocab[new].decode())}",
                ha="left",
                fontsize=FONT - 1,
            )
            for word, ids in words.items():
                words[word] = merge_pair(ids, (left, right), new)
        for j, ids in enumerate(words.values()):
            pieces = [_visible(tokenizer.vocab[t].decode()) for t in ids]
            x = 2.3 + j * 1.75
            for piece in pieces:
                w = 0.08 + 0.1 * len(piece)
                box(ax, x, y, w, 0.3, piece, "token", fontsize=FONT - 2, rounded=False)
                x += w + 0.02
    label(
        ax,
        0.15,
        0.12,
        "␣ is the space before each word: GPT-2's pre-tokenizer keeps it with the word",
        ha="left",
        fontsize=FONT - 2,
    )
    return fig


@figure(
    alt="The sliding window over the first tokens of The Verdict: each window of 4 tokens is "
    "an input, its target is the same window shifted one token to the right, and the next "
    "window starts stride = 2 tokens later."
)
def sliding_window() -> Figure:
    tokenizer = gpt2_tokenizer()
    ids = tokenizer.encode(VERDICT_START)[:9]
    pieces = [_visible(tokenizer.decode([i])) for i in ids]
    max_length, stride, w, gap = 4, 2, 0.88, 0.06
    fig, ax = canvas(10.0, 4.95)
    x0 = 1.3
    label(ax, 0.1, 4.63, "text", ha="left", bold=True)
    row(ax, x0, 4.45, pieces, "token", w=w, gap=gap)
    label(ax, 0.1, 4.25, "token ID", ha="left", fontsize=FONT - 1)
    for k, i in enumerate(ids):
        label(ax, x0 + k * (w + gap) + w / 2, 4.25, str(i), fontsize=FONT - 2)
    for n in range(2):
        start = n * stride
        y = 3.3 - n * 1.45
        label(ax, 0.1, y + 0.2, f"window {n + 1}", ha="left", bold=True)
        label(ax, 0.1, y - 0.05, "input x", ha="left", fontsize=FONT - 1)
        label(ax, 0.1, y - 0.6, "target y", ha="left", fontsize=FONT - 1)
        for k in range(max_length):
            x = x0 + (start + k) * (w + gap)
            box(ax, x, y - 0.2, w, 0.32, pieces[start + k], "input", FONT - 1, rounded=False)
            target_x = x + w + gap
            box(
                ax,
                target_x,
                y - 0.75,
                w,
                0.32,
                pieces[start + k + 1],
                "target",
                FONT - 1,
                rounded=False,
            )
            arrow(ax, (x + w / 2, y - 0.2), (target_x + w / 2, y - 0.43), color="#888888")
    arrow(ax, (x0, 0.45), (x0 + stride * (w + gap), 0.45))
    label(
        ax,
        x0 + stride * (w + gap) + 0.1,
        0.45,
        "stride = 2: the next window starts 2 tokens later",
        ha="left",
        fontsize=FONT - 1,
    )
    label(
        ax,
        x0 + 5.2 * (w + gap),
        3.45,
        "max_length = 4 tokens per window;\nthe target is the input shifted by one",
        ha="left",
        fontsize=FONT - 1,
    )
    return fig


@figure(
    alt="Token IDs of shape (8, 4) look up rows of the 50,257 x 256 token embedding matrix, "
    "positions 0 to 3 look up rows of the 4 x 256 position embedding matrix, and the two are "
    "added (broadcast over the batch) into input embeddings of shape (8, 4, 256)."
)
def input_embeddings() -> Figure:
    fig, ax = canvas(9.9, 3.6)
    box(ax, 0.2, 2.35, 1.8, 0.7, "token IDs\n(8, 4)", "token")
    box(ax, 2.6, 2.35, 2.3, 0.7, "token embedding layer\n50,257 x 256", "embedding")
    box(ax, 5.5, 2.35, 1.7, 0.7, "token embeddings\n(8, 4, 256)", "embedding")
    box(ax, 0.2, 0.55, 1.8, 0.7, "positions\n0, 1, 2, 3", "position")
    box(ax, 2.6, 0.55, 2.3, 0.7, "position embedding layer\n4 x 256", "position")
    box(ax, 5.5, 0.55, 1.7, 0.7, "position emb.\n(4, 256)", "position")
    box(ax, 7.65, 1.45, 0.45, 0.5, "+", "white", fontsize=FONT + 4)
    box(ax, 8.4, 1.25, 1.4, 0.9, "input\nembeddings\n(8, 4, 256)", "input", fontsize=FONT - 1)
    arrow(ax, (2.0, 2.7), (2.6, 2.7))
    arrow(ax, (4.9, 2.7), (5.5, 2.7))
    arrow(ax, (2.0, 0.9), (2.6, 0.9))
    arrow(ax, (4.9, 0.9), (5.5, 0.9))
    arrow(ax, (7.2, 2.6), (7.75, 1.95))
    arrow(ax, (7.2, 0.95), (7.75, 1.45))
    arrow(ax, (8.1, 1.7), (8.4, 1.7))
    label(ax, 3.75, 3.3, "look up one row per ID", fontsize=FONT - 1, italic=True)
    label(ax, 3.75, 0.25, "look up one row per position", fontsize=FONT - 1, italic=True)
    label(
        ax,
        6.35,
        1.75,
        "the same 4 position vectors\nare added to all 8 windows",
        fontsize=FONT - 2,
        italic=True,
    )
    return fig
