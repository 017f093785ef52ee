"""Execute notebooks top to bottom the way the test suite checks them, and save them clean.

    python setup/execute_notebooks.py ch03/ch03.ipynb [more.ipynb ...]
    python setup/execute_notebooks.py --clean-only ch03/ch03.ipynb   # strip metadata, run nothing

Each notebook runs in its own folder with the environment of the test suite (conftest.py's
GPT-2 stand-in switch and allocator setting), and is saved without run-specific metadata
(per-cell execution timestamps), so that saving a rerun with the same outputs changes nothing in
git. Progress bars
are saved as they end: a cell's stderr is kept as one output holding what the bars left on
screen (each "\r" redraw replaces the line, one final line per loop), which is also exactly what
nbval compares; the evaluations printed on stdout are kept as they came.
Committed notebooks are executed with this script; tests/test_notebook_hygiene.py checks them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from shared.cli import HelpFormatter, errors_as_one_line, positive_int, read_json_file

# Cell metadata that a run writes and that says nothing about the notebook itself.
RUN_SPECIFIC_CELL_KEYS = ("execution", "ExecuteTime", "collapsed", "scrolled")


# A line's text up to a carriage return that is not a line end: a progress bar redrawing itself.
REDRAWN_TEXT = re.compile(r"[^\n]*\r(?!\n)")


def final_screen_text(text: str) -> str:
    """What a terminal shows of text after its "\r" redraws: the last state of each line."""
    return REDRAWN_TEXT.sub("", text)


def collapse_progress(outputs: list[dict]) -> list[dict]:
    """One stderr output per cell, holding what its progress bars left; stdout kept in order.

    The stderr output takes the place of the cell's last stderr output; consecutive stdout
    outputs that the bars had split are joined again.
    """
    stderr_at = [
        i for i, o in enumerate(outputs) if o["output_type"] == "stream" and o["name"] == "stderr"
    ]
    if not stderr_at:
        return outputs
    merged_text = final_screen_text("".join("".join(outputs[i]["text"]) for i in stderr_at))
    collapsed: list[dict] = []
    for i, output in enumerate(outputs):
        if i in stderr_at:
            if i == stderr_at[-1]:  # kept even when empty: nbval compares the stderr key too
                collapsed.append({"name": "stderr", "output_type": "stream", "text": merged_text})
            continue
        previous = collapsed[-1] if collapsed else None
        if (
            previous is not None
            and output["output_type"] == "stream"
            and previous["output_type"] == "stream"
            and previous["name"] == output["name"]
        ):
            previous["text"] = "".join(previous["text"]) + "".join(output["text"])
        else:
            collapsed.append(output)
    for output in collapsed:
        if output["output_type"] == "stream" and isinstance(output["text"], str):
            output["text"] = output["text"].splitlines(keepends=True)
    return collapsed


def clean_notebook(nb: dict) -> dict:
    """Drop run-specific metadata and widget state, collapse progress bars; return nb (in place)."""
    nb["metadata"].pop("widgets", None)
    for cell in nb["cells"]:
        for key in RUN_SPECIFIC_CELL_KEYS:
            cell.get("metadata", {}).pop(key, None)
        if cell["cell_type"] == "code":
            cell["outputs"] = collapse_progress(cell["outputs"])
    return nb


def write_notebook(nb: dict, path: Path) -> None:
    """Write nb as Jupyter does (1-space indent, keys in order, trailing newline), atomically."""
    tmp = path.with_suffix(".ipynb.tmp")
    tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def execute(path: Path, timeout: int) -> float:
    """Execute the notebook at path in its own folder; return the wall time in seconds."""
    import nbformat
    from nbconvert.preprocessors import ExecutePreprocessor

    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    ExecutePreprocessor(timeout=timeout, kernel_name="python3").preprocess(
        nb, {"metadata": {"path": str(path.parent)}}
    )
    elapsed = time.perf_counter() - start
    write_notebook(clean_notebook(json.loads(nbformat.writes(nb))), path)
    return elapsed


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument("notebooks", nargs="+", type=Path, help="notebook files (.ipynb)")
    parser.add_argument(
        "--clean-only",
        action="store_true",
        help="only strip run-specific metadata and collapse progress bars",
    )
    parser.add_argument(
        "--timeout", type=positive_int, default=1800, help="seconds allowed per cell"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import conftest  # noqa: F401  the suite's environment: the stand-in switch, the allocator

    # A missing or unreadable notebook, or a cell running past --timeout: one line; a failing cell
    # stays a traceback.
    with errors_as_one_line():
        for path in args.notebooks:
            if args.clean_only:
                write_notebook(clean_notebook(read_json_file(path)), path)
                print(f"{path}: cleaned")
            else:
                seconds = execute(path.resolve(), args.timeout)
                print(f"{path}: executed in {seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
