"""Running the course's command-line scripts from tests: as a subprocess, or imported."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from tests.notebook_code import REPO


def run_script(
    script: Path, *args, stdin: str | None = None, check: bool = True, timeout: int = 300
) -> subprocess.CompletedProcess:
    """Run `python script args...` from the repository root and capture its output.

    One thread and a non-interactive plot backend keep it fast and headless. With check, a
    non-zero exit fails the test and shows the script's stderr.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=timeout,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def load_script(script: Path) -> ModuleType:
    """Import a script as a module, to call its functions in this process."""
    name = f"{script.parent.name}_{script.stem}"
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(script: Path, *args, stdin: str = "") -> subprocess.CompletedProcess:
    """Call the script's main(argv) in this process, as `python script args...` would run it.

    Much faster than run_script for help texts and argument errors (no new interpreter, no
    second import of torch). The exit status follows the interpreter's rules for SystemExit: a
    string is printed to stderr with status 1, an int is the status, None is 0.
    """
    module = load_script(script)
    argv = list(map(str, args))
    out, err = io.StringIO(), io.StringIO()
    stdin_before, sys.stdin = sys.stdin, io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = module.main(argv)
            except SystemExit as exit_:
                code = exit_.code
            if isinstance(code, str):
                print(code, file=sys.stderr)
                code = 1
    finally:
        sys.stdin = stdin_before
    return subprocess.CompletedProcess(
        [str(script), *argv], code or 0, out.getvalue(), err.getvalue()
    )
