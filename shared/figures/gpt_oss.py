"""Figures of the ch05 bonus notebook on gpt-oss: what an attention sink does to one query's
weights, and which positions its banded and full layers see."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from shared.attention import causal_mask
from shared.attention_ops import attend, hidden_positions, window_hidden_positions
from shared.figures import COLORS, figure
from shared.figures.draw import FONT


def _weights(scores: torch.Tensor, sink: float | None) -> torch.Tensor:
    """One query's attention weights over len(scores) keys, with or without a sink of that
    logit: attend with one-hot values returns the weights themselves."""
    m = scores.shape[0]
    queries = torch.ones(1, 1, 1, 1)
    keys = scores.view(1, 1, m, 1)  # query . key = the score
    values = torch.eye(m).view(1, 1, m, m)
    hidden = torch.zeros(1, m, dtype=torch.bool)
    sinks = None if sink is None else torch.tensor([sink])
    return attend(queries, keys, values, hidden, scale=1.0, sinks=sinks)[0, 0]


@figure(
    alt="Left: one query's attention weights over eight earlier tokens, without a sink (they "
    "sum to 1) and with a sink logit of 2.0 (the sink takes its share and is dropped, so the "
    "eight weights sum to about 0.61: the head can attend to less than everything). Right: "
    "which of 16 positions each query sees in gpt-oss's two kinds of layer, a band of the last "
    "4 positions (128 in gpt-oss-20b) in layers 0, 2, 4 ... and every earlier position in "
    "layers 1, 3, 5 ..."
)
def gpt_oss_sinks_and_bands() -> Figure:
    fig = Figure(figsize=(9.6, 4.0))
    ax, band, full = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.5, 1, 1]})
    scores = torch.tensor([0.2, -0.5, 1.0, 0.1, -1.0, 0.6, 0.3, 0.9])
    plain, with_sink = _weights(scores, None), _weights(scores, 2.0)
    positions = torch.arange(len(scores))
    ax.bar(positions - 0.2, plain, width=0.4, color=COLORS["weight"], edgecolor="#444444")
    ax.bar(positions + 0.2, with_sink, width=0.4, color=COLORS["accent"], edgecolor="#444444")
    ax.set_ylim(0, 0.32)  # room for the legend
    ax.set_xticks(positions.tolist())
    ax.set_xlabel("key position", fontsize=FONT - 1)
    ax.set_ylabel("attention weight", fontsize=FONT - 1)
    ax.tick_params(labelsize=FONT - 2)
    ax.legend(
        handles=[
            Patch(color=COLORS["weight"], label=f"no sink: sum {plain.sum():.2f}"),
            Patch(color=COLORS["accent"], label=f"sink logit 2.0: sum {with_sink.sum():.2f}"),
        ],
        loc="upper left",
        fontsize=FONT - 2,
    )
    ax.set_title("an attention sink takes a share", fontsize=FONT)
    size, window = 16, 4
    masks = (
        (band, window_hidden_positions(size, size, window), f"layers 0, 2, ...: band of {window}"),
        (full, hidden_positions(causal_mask(size), size, size), "layers 1, 3, ...: full (causal)"),
    )
    for axis, hidden, title in masks:
        axis.imshow((~hidden).float(), cmap="Blues", vmin=0, vmax=1.6)
        axis.set_title(title, fontsize=FONT)
        axis.set_xlabel("key position", fontsize=FONT - 1)
        axis.tick_params(labelsize=FONT - 2)
    band.set_ylabel("query position", fontsize=FONT - 1)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.9, bottom=0.15, wspace=0.3)
    return fig
