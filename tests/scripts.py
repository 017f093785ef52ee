"""Running the course's command-line scripts from tests: as a subprocess, or imported."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import runpy
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
    """Import a script as a module, to call its functions in this process (registered in
    sys.modules first, as an import does: dataclasses look their module up there)."""
    name = f"{script.parent.name}_{script.stem}"
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_main(script: Path, *args, stdin: str = "") -> subprocess.CompletedProcess:
    """Run the script in this process, as `python script args...` would run it from the
    repository root: as __main__ (its own `if __name__ == "__main__":` block decides the exit
    status), with sys.argv set, stdin, stdout and stderr captured as text.

    Much faster than run_script for help texts and argument errors (no new interpreter, no
    second import of torch). Exit status as the interpreter gives it: SystemExit's int, 1 with
    its string printed to stderr, 0 for None or no SystemExit. Not covered: byte-level encoding
    of the streams and output written by native code; keep one run_script test per script.
    """
    argv = [str(script), *map(str, args)]
    out, err = io.StringIO(), io.StringIO()
    argv_before, stdin_before, cwd_before = sys.argv, sys.stdin, os.getcwd()
    sys.argv, sys.stdin = argv, io.StringIO(stdin)
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(script), run_name="__main__")
                code = 0
            except SystemExit as exit_:
                code = exit_.code
            if code is not None and not isinstance(code, int):
                print(code, file=sys.stderr)
                code = 1
    finally:
        sys.argv, sys.stdin = argv_before, stdin_before
        os.chdir(cwd_before)
    return subprocess.CompletedProcess(argv, code or 0, out.getvalue(), err.getvalue())
