"""Figures of the KV-cache notebook (ch04/kv-cache.ipynb): what is cached and reused per step."""

from __future__ import annotations

from matplotlib.figure import Figure

from shared.figures import figure
from shared.figures.draw import FONT, arrow, box, canvas, label

# "Hello, I am" and the first token the untrained 124M model (seed 123) generates, with their ids.
TOKENS = [("Hello", 15496), (",", 11), ("␣I", 314), ("␣am", 716), ("␣Feature", 27018)]
NEXT_TOKEN = ("iman", 24086)


@figure(
    alt="One generation step with a KV cache, in one attention layer: the keys and values of "
    "'Hello, I am' (positions 0 to 3) come from the cache; only the new token ' Feature' at "
    "position 4 goes through the layer, its key and value are appended to the cache, and its "
    "query attends to all five keys; the result predicts the next token, 'iman'."
)
def what_is_cached() -> Figure:
    fig, ax = canvas(10.0, 4.9)
    h, step = 0.42, 0.52
    top = 3.75  # y of the first row (position 0)
    rows = [top - i * step for i in range(len(TOKENS))]
    token_x, proj_x, k_x, v_x, q_x = 0.2, 2.05, 4.05, 5.35, 6.65
    label(ax, token_x + 0.8, 4.55, "token (id), position", bold=True)
    label(ax, k_x + 0.55, 4.55, "keys", bold=True)
    label(ax, v_x + 0.55, 4.55, "values", bold=True)
    label(ax, q_x + 0.55, 4.55, "query", bold=True)
    label(ax, proj_x + 0.8, 4.55, "this step's work", bold=True)
    for i, ((text, token_id), y) in enumerate(zip(TOKENS, rows, strict=True)):
        new = i == len(TOKENS) - 1
        box(
            ax,
            token_x,
            y,
            1.6,
            h,
            f"{text} ({token_id}), {i}",
            "token" if new else "white",
            fontsize=FONT - 1,
            bold=new,
            dashed=not new,
            rounded=False,
        )
        box(ax, k_x, y, 1.1, h, f"k{i}", "key" if new else "cache", rounded=False, bold=new)
        box(ax, v_x, y, 1.1, h, f"v{i}", "value" if new else "cache", rounded=False, bold=new)
    y_new = rows[-1]
    box(
        ax,
        proj_x,
        y_new - 0.14,
        1.6,
        h + 0.28,
        "embed at position 4,\nW_key, W_value, W_query",
        "attention",
        fontsize=FONT - 2,
    )
    arrow(ax, (token_x + 1.6, y_new + h / 2), (proj_x, y_new + h / 2))
    arrow(ax, (proj_x + 1.6, y_new + h / 2), (k_x, y_new + h / 2))
    arrow(ax, (proj_x + 1.3, y_new - 0.14), (v_x + 0.55, y_new), curve=0.35)
    arrow(ax, (proj_x + 1.0, y_new - 0.14), (q_x + 0.55, y_new), curve=0.35)
    box(ax, q_x, y_new, 1.1, h, "q4", "query", rounded=False, bold=True)
    # Earlier rows: no query needed any more.
    for y in rows[:-1]:
        label(ax, q_x + 0.55, y + h / 2, "not needed", fontsize=FONT - 2, color="#888888")
    # Brace-like bracket over the cached rows.
    label(
        ax,
        proj_x + 0.8,
        (rows[0] + rows[-2] + h) / 2,
        "read from the cache:\ncomputed at earlier\nsteps, reused as is",
        fontsize=FONT - 1,
        italic=True,
    )
    # Attention of the new query over every key and value.
    out_x = 8.05
    box(
        ax,
        out_x,
        rows[1] - 0.15,
        1.8,
        1.35,
        "q4 attends to\nk0 … k4;\nweighted sum of\nv0 … v4",
        "weight",
        fontsize=FONT - 1,
    )
    arrow(ax, (q_x + 1.1, y_new + h / 2), (out_x + 0.4, rows[1] - 0.15), curve=0.25)
    box(ax, out_x, y_new - 0.05, 1.8, h + 0.1, f"next: {NEXT_TOKEN[0]} ({NEXT_TOKEN[1]})", "output")
    arrow(ax, (out_x + 0.9, rows[1] - 0.15), (out_x + 0.9, y_new + h + 0.05))
    # Legend.
    y_leg = 0.35
    box(ax, 0.2, y_leg, 0.4, 0.3, "", "cache", rounded=False)
    label(ax, 0.7, y_leg + 0.15, "read from the cache", ha="left", fontsize=FONT - 1)
    box(ax, 2.6, y_leg, 0.4, 0.3, "", "key", rounded=False)
    box(ax, 3.05, y_leg, 0.4, 0.3, "", "value", rounded=False)
    box(ax, 3.5, y_leg, 0.4, 0.3, "", "query", rounded=False)
    label(
        ax,
        4.0,
        y_leg + 0.15,
        "computed at this step; the new key and value are appended to the cache",
        ha="left",
        fontsize=FONT - 1,
    )
    label(
        ax,
        0.2,
        y_leg - 0.2,
        "The same happens in each of the 12 layers; the prompt's tokens (dashed) are not fed again.",
        ha="left",
        fontsize=FONT - 1,
        italic=True,
    )
    return fig
