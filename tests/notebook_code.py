"""The course's notebooks: the list of them, and the code each teaches, read so that tests can
compare it with the `shared` package."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def notebooks() -> list[Path]:
    """Every notebook in the repository, outside hidden folders (checkpoints, virtual envs)."""
    found = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        found += [Path(root, f) for f in sorted(files) if f.endswith(".ipynb")]
    return found


NOTEBOOKS = notebooks()


def ids(paths):
    """Test ids for paths: each relative to the repository."""
    return [str(p.relative_to(REPO)) for p in paths]


def notebook_definitions(notebook: str | Path) -> dict:
    """Execute a notebook's top-level imports, functions, classes and UPPER_CASE constants.

    notebook: a path relative to the repository root, e.g. "ch03/ch03.ipynb".
    Returns the resulting namespace; where a notebook redefines a name as it builds a class up,
    the last definition wins, as it does for a reader running the notebook top to bottom.
    Cells are not run, so nothing is trained or downloaded.
    """
    cells = json.loads((REPO / notebook).read_text(encoding="utf-8"))["cells"]
    kept: list[ast.stmt] = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        # IPython magics and shell escapes are not Python: keep the block structure with `pass`.
        source = "\n".join(
            line[: len(line) - len(line.lstrip())] + "pass"
            if line.lstrip().startswith(("%", "!"))
            else line
            for line in source.splitlines()
        )
        for node in ast.parse(source).body:
            is_constant = isinstance(node, ast.Assign) and all(
                isinstance(t, ast.Name) and t.id.isupper() for t in node.targets
            )
            if is_constant or isinstance(
                node, ast.Import | ast.ImportFrom | ast.FunctionDef | ast.ClassDef
            ):
                kept.append(node)
    namespace: dict = {"__name__": f"notebook:{notebook}"}
    # dont_inherit: the cells are compiled as Jupyter compiles them, without this module's
    # `from __future__ import annotations` (string annotations break a notebook's @dataclass).
    code = compile(ast.Module(body=kept, type_ignores=[]), str(notebook), "exec", dont_inherit=True)
    exec(code, namespace)
    return namespace
