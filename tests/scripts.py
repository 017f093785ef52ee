"""Running the course's command-line scripts from tests: as a subprocess, or imported."""

from __future__ import annotations

import importlib.util
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
