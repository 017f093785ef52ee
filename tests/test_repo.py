"""Repository-level checks: layout, the README's test command, and every committed notebook."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

COLAB_CELL = """\
# Runs only in Google Colab: installs the course package `shared` and what Colab lacks.
import sys

if "google.colab" in sys.modules:
    %pip install -q "llm-from-scratch-course @ git+https://github.com/llm-from-scratch-course/llm-from-scratch.git\""""

LAYOUT = [
    "README.md",
    "requirements.txt",
    "pyproject.toml",
    "nbval_sanitize.cfg",
    ".ci/run",
    "setup/",
    "shared/",
    "tests/",
    *(f"ch0{n}/" for n in range(2, 8)),
]
MACHINE_PATHS = ("/work/", "/tmp/", "/root/", "/home/")
BINARY_OUTPUTS = ("image/png", "image/jpeg", "image/gif")  # base64: no paths, only noise


def notebooks() -> list[Path]:
    """Every notebook in the repository, outside hidden folders (checkpoints, virtual envs)."""
    found = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        found += [Path(root, f) for f in sorted(files) if f.endswith(".ipynb")]
    return found


NOTEBOOKS = notebooks()


def test_layout():
    missing = [
        entry
        for entry in LAYOUT
        if not ((REPO / entry).is_dir() if entry.endswith("/") else (REPO / entry).is_file())
    ]
    assert missing == []
    assert os.access(REPO / ".ci" / "run", os.X_OK), ".ci/run is not executable"


def readme_test_command(readme: str) -> str:
    """The test command: the line starting `pip install -r requirements.txt` in the fenced code
    blocks under the first Markdown heading that contains "test command"."""
    lines, in_fence, under, found_heading = [], False, False, False
    for line in readme.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        elif in_fence:
            if under and line.startswith("pip install -r requirements.txt"):
                lines.append(line)
        elif line.startswith("#"):
            if found_heading:
                break  # the next section
            under = found_heading = "test command" in line.lower()
    assert found_heading, 'README.md has no heading containing "test command"'
    assert len(lines) == 1, f"expected one `pip install -r requirements.txt` line, found {lines}"
    return lines[0]


def test_test_command_parser_follows_the_contract():
    readme = (
        "# Course\n\n```bash\npip install -r requirements.txt && jupyter lab\n```\n\n"
        "## The test command\n\nRun:\n\n```bash\n# a comment, not a heading\n"
        "pip install -r requirements.txt -e . && python -m pytest\n```\n\n"
        "## Next\n\n```bash\npip install -r requirements.txt\n```\n"
    )
    assert readme_test_command(readme) == "pip install -r requirements.txt -e . && python -m pytest"
    with pytest.raises(AssertionError, match="heading"):
        readme_test_command(readme.replace("test command", "tests"))
    with pytest.raises(AssertionError, match="found"):
        readme_test_command(readme.replace("-e . &&", "\npip install -r requirements.txt &&"))


def test_ci_runs_the_readme_test_command():
    readme = REPO / "README.md"
    assert readme.is_file(), "README.md is missing"
    command = readme_test_command(readme.read_text(encoding="utf-8"))
    ci_lines = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert command in (line.strip() for line in ci_lines), f".ci/run does not run: {command}"


def test_setup_guide_shows_the_same_test_command():
    command = readme_test_command((REPO / "README.md").read_text(encoding="utf-8"))
    assert command in (REPO / "setup" / "README.md").read_text(encoding="utf-8").splitlines()


def test_notebooks_are_found():
    assert REPO / "setup" / "python_environment_check.ipynb" in NOTEBOOKS
    assert not any(part.startswith(".") for nb in NOTEBOOKS for part in nb.relative_to(REPO).parts)


def load(notebook: Path) -> dict:
    return json.loads(notebook.read_text(encoding="utf-8"))


def source(cell: dict) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def strings(value, key=""):
    """Every string in a notebook's JSON, except base64 image data."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from strings(item, key)
    elif isinstance(value, dict):
        for k, item in value.items():
            if k not in BINARY_OUTPUTS:
                yield from strings(item, k)


def ids(paths):
    return [str(p.relative_to(REPO)) for p in paths]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_first_code_cell_is_the_colab_cell(notebook):
    code = [source(c) for c in load(notebook)["cells"] if c["cell_type"] == "code"]
    assert code and code[0] == COLAB_CELL


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_notebook_was_executed_top_to_bottom(notebook):
    code = [c for c in load(notebook)["cells"] if c["cell_type"] == "code" and source(c).strip()]
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), "execute it with jupyter nbconvert --execute"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_notebook_has_no_errors(notebook):
    errors = [
        f"cell {i}: {out.get('ename')}: {out.get('evalue')}"
        for i, cell in enumerate(load(notebook)["cells"])
        for out in cell.get("outputs", [])
        if out["output_type"] == "error"
    ]
    assert errors == []


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_notebook_has_no_machine_paths(notebook):
    found = sorted(
        {
            line.strip()
            for s in strings(load(notebook))
            for line in s.splitlines()
            if any(p in line for p in MACHINE_PATHS)
        }
    )
    assert found == [], "absolute machine paths in the notebook"


def test_machine_path_check_sees_outputs_but_not_images():
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "source": ["x = 1\n"],
                "outputs": [
                    {"output_type": "stream", "text": ["saved to /tmp/abc/model.pth\n"]},
                    {"output_type": "display_data", "data": {"image/png": "iVBO/tmp/Rw0K"}},
                ],
            }
        ]
    }
    hits = [s for s in strings(notebook) if any(p in s for p in MACHINE_PATHS)]
    assert hits == ["saved to /tmp/abc/model.pth\n"]
