"""The course's own diagrams, drawn with matplotlib from code in this package.

A notebook shows a figure with one call, for example ``show("ch03.qkv_projections")``: the
function ``qkv_projections`` of ``shared.figures.ch03`` draws it, and it is displayed as an SVG
output of that code cell. Committed with the notebook, the output shows wherever the notebook is
opened alone (JupyterLab, GitHub, Colab, an nbconvert HTML page); nbval compares the SVG text on
every run, and tests/test_figures.py re-renders each committed figure and fails on a difference.

Each figure function takes no arguments, returns a matplotlib Figure, and is decorated with
``@figure(alt="...")``: the alt text is the SVG's <title> and the output's text/plain fallback.
Colours come from ``COLORS`` so the same thing looks the same in every chapter.
"""

from __future__ import annotations

import importlib
import io
import re
from collections.abc import Callable
from html import escape

import matplotlib
from matplotlib.figure import Figure

# One colour per concept, used by every chapter.
COLORS = {
    "token": "#dbe9f6",  # text pieces, token ids
    "embedding": "#c6e2c4",  # embedding vectors (token embeddings)
    "position": "#f9dcb5",  # position embeddings
    "input": "#cfe3f7",  # model inputs
    "target": "#f7cfd8",  # training targets
    "query": "#9ecae1",
    "key": "#fdae6b",
    "value": "#a1d99b",
    "weight": "#dadaeb",  # attention weights, scores
    "context": "#bcbddc",  # context vectors (attention outputs)
    "mask": "#d9d9d9",  # masked-out positions
    "trainable": "#fcbba1",
    "frozen": "#e0e0e0",
    "norm": "#fff2ae",  # normalisation layers
    "ffn": "#f4cae4",  # feed-forward
    "attention": "#b3cde3",  # attention layers
    "output": "#e5d8bd",  # output heads, logits
    "cache": "#ccebc5",  # cached tensors
    "ignore": "#eeeeee",  # ignored (-100) positions
    "edge": "#444444",  # outlines and arrows
    "accent": "#d62728",  # one highlighted thing
}

SVG_SALT = "llm-from-scratch-course"  # fixed ids in the SVG, so a rerun writes identical text

_FIGURE_MODULE = re.compile(r"^[a-z0-9_]+$")


def figure(alt: str) -> Callable:
    """Decorator for a figure function: records its alt text (plain words, one or two sentences)."""

    def mark(function: Callable[[], Figure]) -> Callable[[], Figure]:
        function.alt = alt
        return function

    return mark


def figure_function(name: str) -> Callable[[], Figure]:
    """The function behind a figure name "<module>.<function>", e.g. "ch03.qkv_projections"."""
    module, _, function = name.partition(".")
    if not (_FIGURE_MODULE.match(module) and function):
        raise ValueError(f"figure name {name!r} is not '<module>.<function>'")
    draw = getattr(importlib.import_module(f"shared.figures.{module}"), function, None)
    if draw is None or not hasattr(draw, "alt"):
        raise ValueError(f"no figure {function!r} in shared.figures.{module}")
    return draw


def render_svg(name: str) -> str:
    """Draw the figure called name and return it as SVG text, identical on every run."""
    draw = figure_function(name)
    with matplotlib.rc_context({"svg.hashsalt": SVG_SALT, "svg.fonttype": "path"}):
        fig = draw()
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML prolog and DOCTYPE: inline SVG needs neither
    title = f"<title>{escape(draw.alt)}</title>"
    return re.sub(r"(<svg[^>]*>)", lambda m: m.group(1) + title, svg, count=1)


def show(name: str) -> None:
    """Display the figure called name in a notebook (SVG, with its alt text as plain text)."""
    from IPython.display import display

    draw = figure_function(name)
    display(
        {"image/svg+xml": render_svg(name), "text/plain": f"[figure {name}] {draw.alt}"},
        raw=True,
        metadata={"figure": name},
    )
