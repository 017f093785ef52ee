"""The course's figures: every committed figure equals what its drawing code draws now."""

from __future__ import annotations

import ast
import base64
import importlib
import io
import json
import pkgutil

import matplotlib
import numpy as np
import pytest
from PIL import Image

import shared.figures
from shared.figures import figure_function, render_png, render_svg, source_digest
from tests.notebook_code import NOTEBOOKS, REPO, ids


def committed_figures(notebook) -> list[dict]:
    """The metadata of every figure output of a notebook, with its PNG bytes under "png"."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return [
        {**out["metadata"], "png": base64.b64decode("".join(out["data"].get("image/png", "")))}
        for cell in cells
        for out in cell.get("outputs", [])
        if "figure" in out.get("metadata", {})
    ]


def shown_in_source(notebook) -> list[str]:
    """The names passed to show("...") in a notebook's code cells."""
    names = []
    for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] != "code":
            continue
        code = "\n".join(
            line
            for line in "".join(cell["source"]).splitlines()
            if not line.lstrip().startswith("%")
        )
        for node in ast.walk(ast.parse(code)):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None)) == "show"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                names.append(node.args[0].value)
    return names


WITH_FIGURES = [nb for nb in NOTEBOOKS if shown_in_source(nb)]


def all_figure_names() -> list[str]:
    """Every figure function in the shared.figures modules, as "<module>.<function>"."""
    names = []
    for info in pkgutil.iter_modules(shared.figures.__path__):
        module = importlib.import_module(f"shared.figures.{info.name}")
        names += [
            f"{info.name}.{attr}"
            for attr, value in vars(module).items()
            if callable(value) and hasattr(value, "alt") and value.__module__ == module.__name__
        ]
    return sorted(names)


@pytest.mark.parametrize("notebook", WITH_FIGURES, ids=ids(WITH_FIGURES))
def test_committed_figures_match_their_drawing_code(notebook):
    committed = committed_figures(notebook)
    assert [fig["figure"] for fig in committed] == shown_in_source(notebook), (
        "a show() call has no committed output: re-execute the notebook"
    )
    # The drawing code changed since the figure was committed:
    stale = [
        fig["figure"] for fig in committed if fig.get("source") != source_digest(fig["figure"])
    ]
    # The same code and matplotlib draw something else (the data a figure is drawn from changed):
    stale += [
        fig["figure"]
        for fig in committed
        if fig.get("matplotlib") == matplotlib.__version__
        and not same_pixels(fig["png"], render_png(fig["figure"]))
    ]
    assert stale == [], f"re-execute {notebook.relative_to(REPO)}: these figures changed"


def same_pixels(a: bytes, b: bytes) -> bool:
    """Whether two PNGs show the same image (equal bytes, or equal pixels if encoded differently)."""
    if a == b:
        return True
    first, second = (np.asarray(Image.open(io.BytesIO(png)).convert("RGBA")) for png in (a, b))
    return first.shape == second.shape and bool((first == second).all())


def test_same_pixels_sees_a_changed_figure():
    png = render_png("ch03.causal_mask")
    image = Image.open(io.BytesIO(png)).convert("RGBA")
    reencoded, changed = io.BytesIO(), io.BytesIO()
    image.save(reencoded, format="PNG", compress_level=1)
    image.putpixel((10, 10), (255, 0, 0, 255))
    image.save(changed, format="PNG")
    assert reencoded.getvalue() != png and same_pixels(png, reencoded.getvalue())
    assert not same_pixels(png, changed.getvalue())


def test_every_figure_is_shown_somewhere_and_has_alt_text():
    shown = {name for nb in NOTEBOOKS for name in shown_in_source(nb)}
    assert sorted(set(all_figure_names()) - shown) == []
    for name in all_figure_names():
        alt = figure_function(name).alt
        assert len(alt.split()) >= 6, f"{name}: alt text too short to describe the figure"


def test_a_figure_renders_identically_twice_and_carries_its_alt_text():
    names = all_figure_names()
    svg = render_svg(names[0])
    assert svg == render_svg(names[0])
    assert svg.startswith("<svg") and "<title>" in svg
    assert render_png(names[0]) == render_png(names[0])


def test_unknown_figure_names_are_clear_errors():
    with pytest.raises(ValueError, match="not '<module>.<function>'"):
        figure_function("nodot")
    with pytest.raises(ValueError, match="no figure 'nothing' in shared.figures.draw"):
        figure_function("draw.nothing")


def test_drawing_a_figure_leaves_the_random_state_alone():
    import torch

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    render_png("ch02.text_to_embeddings")  # draws a seeded embedding layer
    assert torch.equal(torch.rand(3), expected)


def test_the_source_digest_follows_the_drawing_code():
    assert source_digest("ch03.causal_mask") == source_digest("ch03.qkv_projections")
    assert source_digest("ch03.causal_mask") != source_digest("ch02.sliding_window")


def test_moe_routing_figure_shows_the_gates_the_notebook_prints():
    """The routes drawn in attention_variants.moe_routing are the ones section 6 of
    ch04/attention-variants.ipynb computes and prints (to two decimals)."""
    from shared.figures.attention_variants import moe_demo_routes

    cells = json.loads((REPO / "ch04/attention-variants.ipynb").read_text(encoding="utf-8"))
    code = next(
        cell
        for cell in cells["cells"]
        if cell["cell_type"] == "code"
        and "moe.route(small_gpt.tok_emb(sentence))" in "".join(cell["source"])
    )
    printed = "".join("".join(out["text"]) for out in code["outputs"] if "text" in out).splitlines()
    drawn = [
        " + ".join(f"{gate:.2f} x expert {expert + 1}" for expert, gate in routes)
        for routes in moe_demo_routes()
    ]
    assert [line.split(" -> ")[1] for line in printed] == drawn
