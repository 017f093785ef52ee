"""The course's own diagrams, drawn with matplotlib from code in this package.

A notebook shows a figure with one call, for example ``show("ch03.qkv_projections")``: the
function ``qkv_projections`` of ``shared.figures.ch03`` draws it, and it is displayed as a PNG
output of that code cell, rendered at twice the resolution it is shown at (sharp on high-density
screens). Committed with the notebook, the output shows wherever the notebook is opened alone:
JupyterLab (which does not render SVG outputs of notebooks it has not trusted, so PNG, not SVG),
GitHub, Colab, an nbconvert HTML page. Each output records a digest of the drawing code
(``source_digest``) and the matplotlib version: tests/test_figures.py fails when the code changed
since the figure was committed, and, with the same matplotlib, when its pixels differ.
``render_svg`` gives the vector version, for documents and slides. Drawing never changes the
caller's random state (figures that draw random weights seed their own generator).

Each figure function takes no arguments, returns a matplotlib Figure, and is decorated with
``@figure(alt="...")``: the alt text is the SVG's <title> and the output's text/plain fallback.
Colours come from ``COLORS`` so the same thing looks the same in every chapter.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import inspect
import io
import re
import sys
from collections.abc import Callable
from html import escape
from pathlib import Path

import matplotlib
import torch
from matplotlib.figure import Figure

# One colour per concept, used by every chapter.
COLORS = {
    "token": "#fff5d6",  # text pieces, token ids
    "embedding": "#c6e2c4",  # embedding vectors (token embeddings)
    "position": "#f9dcb5",  # position embeddings
    "input": "#c6dbef",  # model inputs
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
SHOWN_DPI = 100  # pixels per inch at which a notebook shows a figure (matplotlib's default)
PNG_DPI = 2 * SHOWN_DPI

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


def _draw(name: str) -> Figure:
    """Call the figure function of name without touching the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        return figure_function(name)()


def source_digest(name: str) -> str:
    """A digest of the code a figure is drawn from: its module, the drawing primitives, this file."""
    module = importlib.import_module(f"shared.figures.{name.partition('.')[0]}")
    digest = hashlib.sha256()
    draw_primitives = importlib.import_module("shared.figures.draw")
    for source in (module, draw_primitives, sys.modules[__name__]):
        digest.update(Path(inspect.getfile(source)).read_bytes())
    return digest.hexdigest()[:16]


def render_svg(name: str) -> str:
    """Draw the figure called name and return it as SVG text, identical on every run."""
    draw = figure_function(name)
    with matplotlib.rc_context({"svg.hashsalt": SVG_SALT, "svg.fonttype": "path"}):
        fig = _draw(name)
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML prolog and DOCTYPE: inline SVG needs neither
    title = f"<title>{escape(draw.alt)}</title>"
    return re.sub(r"(<svg[^>]*>)", lambda m: m.group(1) + title, svg, count=1)


def render_png(name: str) -> bytes:
    """Draw the figure called name and return it as PNG bytes (PNG_DPI), identical on every run
    with the same matplotlib."""
    fig = _draw(name)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=PNG_DPI, metadata={"Software": None})
    return buffer.getvalue()


def show(name: str) -> None:
    """Display the figure called name in a notebook: a PNG shown at SHOWN_DPI, with its alt text
    as the plain-text version of the output."""
    from IPython.display import display

    draw = figure_function(name)
    png = render_png(name)
    width = int.from_bytes(png[16:20], "big") * SHOWN_DPI // PNG_DPI  # from the PNG header
    display(
        {
            "image/png": base64.b64encode(png).decode("ascii"),
            "text/plain": f"[figure {name}] {draw.alt}",
        },
        raw=True,
        metadata={
            "image/png": {"width": width},
            "figure": name,
            "source": source_digest(name),
            "matplotlib": matplotlib.__version__,
        },
    )
