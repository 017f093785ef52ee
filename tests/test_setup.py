"""Tests of setup/python_environment_check.py, the environment check."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "setup" / "python_environment_check.py"

_spec = importlib.util.spec_from_file_location("python_environment_check", SCRIPT)
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)


def test_reads_the_repository_requirements():
    reqs = check.read_requirements(REPO / "requirements.txt")
    names = [Requirement(r).name for r in reqs]
    assert {"torch", "tiktoken", "jupyterlab", "nbval", "numpy"} <= set(names)
    assert all(not r.startswith(("-", "#")) and "#" not in r for r in reqs)


def test_builtin_list_equals_requirements_txt():
    """The fallback list must not drift from requirements.txt."""
    from_file = check.read_requirements(REPO / "requirements.txt")
    assert [str(Requirement(r)) for r in check.BUILTIN_REQUIREMENTS] == [
        str(Requirement(r)) for r in from_file
    ]


def test_read_requirements_skips_comments_blanks_and_options(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text(
        "# a comment\n"
        "\n"
        "numpy>=1.0   # inline comment\n"
        "-e .\n"
        "-r other.txt\n"
        "  pandas\t# tab before the comment\n"
        'tomli>=1; python_version < "3.11"\n',
        encoding="utf-8",
    )
    assert check.read_requirements(path) == [
        "numpy>=1.0",
        "pandas",
        'tomli>=1; python_version < "3.11"',
    ]


def test_satisfied_requirement():
    [row] = check.check_requirements(["numpy>=1.0"])
    assert row == ("numpy", ">=1.0", metadata.version("numpy"), "OK")
    assert row.ok


def test_too_old_requirement():
    [row] = check.check_requirements(["numpy>=999"])
    assert row.installed == metadata.version("numpy")
    assert row.status == "too old" and not row.ok


def test_too_new_requirement_is_a_wrong_version():
    [row] = check.check_requirements(["numpy<1"])
    assert row.status == "wrong version" and not row.ok


def test_missing_package():
    [row] = check.check_requirements(["no-such-package-for-this-course>=1.0"])
    assert row == ("no-such-package-for-this-course", ">=1.0", None, "missing")
    assert not row.ok


def test_requirement_whose_marker_does_not_apply_is_skipped():
    assert check.check_requirements(['numpy>=999; python_version < "3.0"']) == []


@pytest.mark.parametrize(
    ("version_info", "status"),
    [((3, 9, 18), "too old"), ((3, 10, 0), "OK"), ((3, 13, 1), "OK")],
)
def test_python_version(version_info, status):
    row = check.check_python(version_info)
    assert row == ("python", ">=3.10", ".".join(map(str, version_info)), status)


def test_default_requirements_fall_back(tmp_path):
    absent = tmp_path / "requirements.txt"
    reqs, source = check.default_requirements(absent, package="no-such-distribution")
    assert reqs == check.BUILTIN_REQUIREMENTS and "built-in" in source
    reqs, source = check.default_requirements(absent, package="nbval")
    assert reqs and all("extra ==" not in r for r in reqs) and "nbval" in source
    reqs, source = check.default_requirements(REPO / "requirements.txt")
    assert reqs == check.read_requirements(REPO / "requirements.txt")
    assert source == "requirements.txt"


def test_main_reports_a_too_old_package(tmp_path, capsys):
    path = tmp_path / "reqs.txt"
    path.write_text("numpy>=999\nno-such-package-for-this-course\ntqdm>=1\n", encoding="utf-8")
    assert check.main(["--requirements", str(path)]) == 1
    out = capsys.readouterr().out
    assert "numpy is too old" in out and "no-such-package-for-this-course is missing" in out
    assert "tqdm is" not in out


def test_main_succeeds_when_satisfied(tmp_path, capsys):
    path = tmp_path / "reqs.txt"
    path.write_text("numpy>=1.0\n", encoding="utf-8")
    assert check.main(["--requirements", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(
        line.split() == ["numpy", ">=1.0", metadata.version("numpy"), "OK"] for line in lines
    )


def test_script_passes_in_this_environment():
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Requirements from requirements.txt" in result.stdout
    for req in check.read_requirements(REPO / "requirements.txt"):
        name = Requirement(req).name
        assert f"\n{name} " in result.stdout, name
    python = ".".join(map(str, sys.version_info[:3]))
    assert any(
        line.split()[:3] == ["python", ">=3.10", python] for line in result.stdout.splitlines()
    )
    import torch

    from shared.device import get_device

    assert f"Device: {get_device().type}" in result.stdout
    assert torch.__version__ in result.stdout


def test_script_copied_elsewhere_still_works(tmp_path):
    copy = tmp_path / "python_environment_check.py"
    shutil.copy(SCRIPT, copy)
    result = subprocess.run(
        [sys.executable, str(copy)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Requirements from the installed package llm-from-scratch-course" in result.stdout


def test_script_fails_on_an_unmet_requirement(tmp_path):
    path = tmp_path / "reqs.txt"
    path.write_text("numpy>=999\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--requirements", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "numpy is too old" in result.stdout
