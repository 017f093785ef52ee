"""Drawing primitives shared by every chapter's figures: a canvas measured in inches, boxes,
arrows, rows of tokens and grids of numbers.

The canvas's data coordinates are inches from the bottom-left corner, so a box of width 1.0 is
one inch wide whatever the figure's size; at the notebook's width a figure is at most 10 inches.
"""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from shared.figures import COLORS

FONT = 10  # points: the body text of every figure
MAX_WIDTH = 10.0  # inches: wider figures are shrunk by the notebook and become hard to read


def canvas(width: float, height: float) -> tuple[Figure, Axes]:
    """A blank figure of width x height inches whose data coordinates are inches."""
    if width > MAX_WIDTH:
        raise ValueError(f"a figure {width} inches wide is too wide (at most {MAX_WIDTH})")
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_axis_off()
    return fig, ax


def box(
    ax: Axes,
    x: float,
    y: float,
    w: float,
    h: float,
    text: str = "",
    color: str = "white",
    fontsize: float = FONT,
    bold: bool = False,
    dashed: bool = False,
    rounded: bool = True,
    text_color: str = "black",
) -> FancyBboxPatch:
    """A filled box with its lower-left corner at (x, y) and centred text; color may be a key of
    COLORS or any matplotlib colour."""
    patch = FancyBboxPatch(
        (x, y),
        w,
        h,
        boxstyle="round,pad=0,rounding_size=0.06" if rounded else "square,pad=0",
        facecolor=COLORS.get(color, color),
        edgecolor=COLORS["edge"],
        linewidth=1.0,
        linestyle="--" if dashed else "-",
    )
    ax.add_patch(patch)
    if text:
        ax.text(
            x + w / 2,
            y + h / 2,
            text,
            ha="center",
            va="center",
            fontsize=fontsize,
            fontweight="bold" if bold else "normal",
            color=text_color,
        )
    return patch


def arrow(
    ax: Axes,
    start: tuple[float, float],
    end: tuple[float, float],
    text: str = "",
    color: str = "edge",
    fontsize: float = FONT - 1,
    curve: float = 0.0,
    text_offset: tuple[float, float] = (0.08, 0.0),
    dashed: bool = False,
) -> None:
    """An arrow from start to end, optionally curved (curve: the arc's bend) and labelled beside
    its middle (text_offset: inches from the middle)."""
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle="-|>",
            mutation_scale=11,
            color=COLORS.get(color, color),
            linewidth=1.1,
            linestyle="--" if dashed else "-",
            connectionstyle=f"arc3,rad={curve}",
            shrinkA=1,
            shrinkB=1,
        )
    )
    if text:
        mx = (start[0] + end[0]) / 2 + text_offset[0]
        my = (start[1] + end[1]) / 2 + text_offset[1]
        ax.text(mx, my, text, ha="left", va="center", fontsize=fontsize, color="#333333")


def label(
    ax: Axes,
    x: float,
    y: float,
    text: str,
    fontsize: float = FONT,
    ha: str = "center",
    va: str = "center",
    bold: bool = False,
    color: str = "black",
    italic: bool = False,
) -> None:
    """Plain text at (x, y)."""
    ax.text(
        x,
        y,
        text,
        ha=ha,
        va=va,
        fontsize=fontsize,
        fontweight="bold" if bold else "normal",
        fontstyle="italic" if italic else "normal",
        color=COLORS.get(color, color),
    )


def row(
    ax: Axes,
    x: float,
    y: float,
    items: Sequence[str],
    color: str | Sequence[str] = "token",
    w: float = 0.8,
    h: float = 0.36,
    gap: float = 0.06,
    fontsize: float = FONT - 1,
) -> list[float]:
    """A row of boxes starting at (x, y), one per item; color is one colour or one per item.
    Returns the x centre of every box (to attach arrows)."""
    colors = [color] * len(items) if isinstance(color, str) else list(color)
    centres = []
    for i, (item, c) in enumerate(zip(items, colors, strict=True)):
        left = x + i * (w + gap)
        box(ax, left, y, w, h, item, c, fontsize=fontsize, rounded=False)
        centres.append(left + w / 2)
    return centres


def grid(
    ax: Axes,
    x: float,
    y: float,
    values: Sequence[Sequence[str]],
    color: str | Sequence[Sequence[str]] = "weight",
    cell: float = 0.42,
    fontsize: float = FONT - 2,
) -> None:
    """A table of cells with its top-left corner at (x, y); values[i][j] is the text of row i,
    column j; color is one colour or one per cell."""
    for i, values_row in enumerate(values):
        for j, value in enumerate(values_row):
            c = color if isinstance(color, str) else color[i][j]
            box(
                ax,
                x + j * cell,
                y - (i + 1) * cell,
                cell,
                cell,
                value,
                c,
                fontsize=fontsize,
                rounded=False,
            )
