"""The course's figures: every committed figure equals what its drawing code draws now."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil

import pytest

import shared.figures
from shared.figures import figure_function, render_svg
from tests.test_repo import NOTEBOOKS, REPO, ids


def committed_figures(notebook) -> list[tuple[str, str]]:
    """(figure name, committed SVG) for every figure output of a notebook."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return [
        (out["metadata"]["figure"], "".join(out["data"]["image/svg+xml"]))
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
    assert [name for name, _ in committed] == shown_in_source(notebook), (
        "a show() call has no committed output: re-execute the notebook"
    )
    stale = [name for name, svg in committed if svg != render_svg(name)]
    assert stale == [], f"re-execute {notebook.relative_to(REPO)}: these figures changed"


def test_every_figure_is_shown_somewhere_and_has_alt_text():
    shown = {name for nb in NOTEBOOKS for name in shown_in_source(nb)}
    assert sorted(set(all_figure_names()) - shown) == []
    for name in all_figure_names():
        alt = figure_function(name).alt
        assert len(alt.split()) >= 6, f"{name}: alt text too short to describe the figure"


def test_a_figure_renders_identically_twice_and_carries_its_alt_text():
    names = all_figure_names()
    if not names:
        pytest.skip("no figures yet")
    svg = render_svg(names[0])
    assert svg == render_svg(names[0])
    assert svg.startswith("<svg") and "<title>" in svg


def test_unknown_figure_names_are_clear_errors():
    with pytest.raises(ValueError, match="not '<module>.<function>'"):
        figure_function("nodot")
    with pytest.raises(ValueError, match="no figure 'nothing' in shared.figures.draw"):
        figure_function("draw.nothing")
