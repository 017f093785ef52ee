"""Repository-level checks: layout, the README's test command, and every committed notebook."""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import pytest

from shared import REPOSITORY
from tests.notebook_code import NOTEBOOKS, REPO, ids

# The install cell every notebook has right below its title, with the course's address.
COLAB_CELL = f"""\
# In Google Colab only: install the course package `shared` (elsewhere this cell does nothing).
import subprocess
import sys

COURSE = "{REPOSITORY}"
if "google.colab" in sys.modules:
    package = f"llm-from-scratch-course @ git+{{COURSE}}.git"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", package], capture_output=True, text=True
    )
    if install.returncode != 0:
        raise RuntimeError(f"Installing the course from {{COURSE}} failed:\\n{{install.stderr[-1500:]}}")"""


def colab_badge(notebook: Path) -> str:
    """The "Open in Colab" badge (Markdown) of a notebook, opening it from the course's repository."""
    path = notebook.relative_to(REPO).as_posix()
    github = REPOSITORY.removeprefix("https://github.com/")
    return (
        "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"(https://colab.research.google.com/github/{github}/blob/main/{path})"
    )


# Addresses of the course's own repository, wherever they appear (clone, raw files, Colab).
COURSE_ADDRESS = re.compile(
    r"(?:github\.com|githubusercontent\.com|colab\.research\.google\.com/github)/([\w.-]+/[\w.-]+)"
)
# Run-specific cell metadata that setup/execute_notebooks.py strips.
RUN_SPECIFIC_CELL_KEYS = ("execution", "ExecuteTime", "collapsed", "scrolled")

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


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_title_badge_and_colab_cell_open_the_notebook(notebook):
    cells = load(notebook)["cells"]
    title = next(i for i, c in enumerate(cells) if c["cell_type"] == "markdown")
    heading, _, rest = source(cells[title]).partition("\n")
    assert heading.startswith("# "), "the first Markdown cell is the title"
    assert rest.lstrip("\n").startswith(colab_badge(notebook)), "no Colab badge under the title"
    code = [i for i, c in enumerate(cells) if c["cell_type"] == "code"]
    assert code[0] == title + 1 and source(cells[code[0]]) == COLAB_CELL


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_notebook_has_no_run_specific_metadata(notebook):
    found = sorted(
        {key for cell in load(notebook)["cells"] for key in cell.get("metadata", {})}
        & set(RUN_SPECIFIC_CELL_KEYS)
    )
    assert found == [], "save it with: python setup/execute_notebooks.py --clean-only NOTEBOOK"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_progress_bars_are_saved_as_they_end(notebook):
    crowded = []
    for index, cell in enumerate(load(notebook)["cells"]):
        streams = [o for o in cell.get("outputs", []) if o["output_type"] == "stream"]
        stderr = [o for o in streams if o["name"] == "stderr"]
        redrawn = any("\r" in "".join(o["text"]).replace("\r\n", "") for o in streams)
        if len(stderr) > 1 or redrawn:
            crowded.append(index)
    assert crowded == [], "save it with: python setup/execute_notebooks.py --clean-only NOTEBOOK"


def course_documents() -> list[Path]:
    """The notebooks and the Markdown and Python files that a learner reads."""
    docs = [
        p
        for p in REPO.rglob("*.md")
        if not any(x.startswith(".") for x in p.relative_to(REPO).parts)
    ]
    return sorted(docs) + NOTEBOOKS


def test_every_document_names_the_one_course_repository():
    wrong = {}
    for doc in course_documents():
        text = doc.read_text(encoding="utf-8")
        for owner_repo in COURSE_ADDRESS.findall(text):
            owner_repo = owner_repo.removesuffix(".git")
            ours = REPOSITORY.split("/")[-2:]
            theirs = owner_repo.split("/")
            if (theirs[0] == ours[0] or theirs[1] == ours[1]) and theirs != ours:
                wrong.setdefault(str(doc.relative_to(REPO)), []).append(owner_repo)
    assert wrong == {}, f"use shared.REPOSITORY ({REPOSITORY})"
    mentions = [d for d in course_documents() if REPOSITORY in d.read_text(encoding="utf-8")]
    assert len(mentions) >= len(NOTEBOOKS), "every notebook's install cell names the repository"


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


# The chapters' finished code, and the course modules each may import: only earlier chapters and
# the helpers every chapter uses. Fast paths (fused kernels, KV cache, training options, data
# parallelism) and bonus modules are built on these, never the other way round.
HELPERS = {"shared.data", "shared.device"}
CHAPTER_IMPORTS = {
    "tokenizers": HELPERS,
    "dataset": HELPERS | {"shared.tokenizers"},
    "attention": set(),
    "gpt": {"shared.attention"},
    "checkpoints": HELPERS | {"shared.gpt"},
    "pretraining": HELPERS | {"shared.tokenizers", "shared.gpt", "shared.checkpoints"},
    "gpt2_weights": HELPERS | {"shared.gpt", "shared.checkpoints"},
    "classification": HELPERS | {"shared.gpt", "shared.pretraining", "shared.checkpoints"},
    "instruction": HELPERS | {"shared.pretraining", "shared.tokenizers"},
}


def course_imports(path: Path) -> set[str]:
    """The shared modules a Python file imports anywhere in its source (at the top or inside a
    function), found by reading the source."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("shared"):
            imported.add(node.module)
            if node.module == "shared":
                imported |= {f"shared.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names if a.name.startswith("shared")}
    return imported


def shared_imports() -> dict[str, set[str]]:
    """For every module of the shared package, the shared modules it imports."""
    root = REPO / "shared"
    graph = {}
    for path in sorted(root.rglob("*.py")):
        name = ".".join(("shared", *path.relative_to(root).with_suffix("").parts))
        name = name.removesuffix(".__init__")
        graph[name] = course_imports(path) - {name}
    return graph


def test_no_import_circles_in_shared():
    graph = shared_imports()
    assert "shared.pretraining" in graph["shared.speed"]  # the options build on the book's loop

    def circle_from(module, path):
        for imported in sorted(graph.get(module, ())):
            if imported in path:
                return [*path[path.index(imported) :], imported]
            found = circle_from(imported, [*path, imported])
            if found:
                return found
        return None

    circles = [c for m in graph if (c := circle_from(m, [m]))]
    assert circles == [], f"import circle: {' -> '.join(circles[0])}"


@pytest.mark.parametrize("module", sorted(CHAPTER_IMPORTS))
def test_chapter_modules_import_only_earlier_chapters(module):
    imported = course_imports(REPO / "shared" / f"{module}.py")
    assert imported <= CHAPTER_IMPORTS[module], imported - CHAPTER_IMPORTS[module]


def test_import_check_sees_a_fast_path_import(tmp_path):
    source = tmp_path / "gpt.py"
    source.write_text("def f():\n    from shared.fast_attention import swap_class\n")
    assert course_imports(source) == {"shared.fast_attention"}


def attention_softmax_files() -> set[str]:
    """The shared modules that take a softmax of attention scores (a reviewable grep)."""
    pattern = re.compile(r"softmax\((attn_)?scores\b")
    return {
        path.name
        for path in (REPO / "shared").glob("*.py")
        if pattern.search(path.read_text(encoding="utf-8"))
    }


def test_masked_attention_is_written_once_beside_the_chapter():
    """Chapter 3's classes spell attention out for the reader; every other attention layer calls
    shared.attention_ops.attend (or PyTorch's scaled_dot_product_attention). shared.practice is no
    layer: it recomputes attention with the mistakes learners make, to name the one they made."""
    assert attention_softmax_files() == {"attention.py", "attention_ops.py", "practice.py"}
