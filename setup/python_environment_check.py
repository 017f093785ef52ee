"""Check that this Python environment can run the course.

Prints, for each package the course needs, the installed version beside the required one, then
the Python version and the device PyTorch will use. Exits with status 1 when a package is missing
or too old, or Python is older than 3.10; with 0 when everything is in place.

The requirements come from the repository's requirements.txt. Where the script runs outside the
repository (copied elsewhere, or in Colab), it uses the requirements of the installed course
package, and failing that a built-in copy of requirements.txt.

Usage: python setup/python_environment_check.py [--requirements FILE]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

MIN_PYTHON = (3, 10)
PACKAGE = "llm-from-scratch-course"  # the distribution that installs `shared`
REQUIREMENTS_FILE = Path(__file__).resolve().parent.parent / "requirements.txt"
# requirements.txt without `-e .`, for when the script runs on its own (a test keeps them equal).
BUILTIN_REQUIREMENTS = [
    "torch>=2.4",
    "tiktoken>=0.8",
    "regex>=2023.0",
    "jupyterlab>=4.0",
    "matplotlib>=3.7",
    "pandas>=2.0",
    "numpy>=1.24",
    "nbval>=0.11",
    "tqdm>=4.66",
    "safetensors>=0.4",
    "tokenizers>=0.19",
]


class Row(NamedTuple):
    """One line of the report: what is required, what is installed, and whether that will do."""

    name: str
    required: str  # the version specifier, e.g. ">=2.2" ("" for any version)
    installed: str | None  # None when the package is not installed
    status: str  # "OK", "missing", "too old" or "wrong version"

    @property
    def ok(self) -> bool:
        return self.status == "OK"


def read_requirements(path: Path) -> list[str]:
    """The requirement lines of a requirements file: no comments, blank lines or options.

    Options such as ``-e .`` (the course's own package) or ``-r other.txt`` are skipped.
    """
    requirements = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = re.split(r"\s#", line, maxsplit=1)[0].strip()  # a comment starts at " #"
        if line and not line.startswith(("#", "-")):
            requirements.append(line)
    return requirements


def default_requirements(
    requirements_file: Path = REQUIREMENTS_FILE, package: str = PACKAGE
) -> tuple[list[str], str]:
    """The requirements to check and where they came from.

    The repository's requirements file when it exists; else the dependencies of the installed
    course package (as in Colab, where only the package is installed); else the built-in list.
    """
    if requirements_file.is_file():
        return read_requirements(requirements_file), requirements_file.name
    try:
        declared = metadata.requires(package) or []
    except metadata.PackageNotFoundError:
        return list(BUILTIN_REQUIREMENTS), "the built-in list (no requirements.txt found)"
    # Skip the optional extras (the test tools), which Requirement marks with `extra == ...`.
    return [r for r in declared if "extra ==" not in r], f"the installed package {package}"


def check_requirements(reqs) -> list[Row]:
    """Compare requirement strings (e.g. ``"torch>=2.4"``) with the installed packages.

    Returns one Row per requirement whose environment marker applies to this Python.
    """
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion, Version

    rows = []
    for text in reqs:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        required = str(req.specifier)
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            rows.append(Row(req.name, required, None, "missing"))
            continue
        if req.specifier.contains(installed, prereleases=True):
            status = "OK"
        else:
            try:
                below_a_minimum = any(
                    s.operator in (">=", ">", "~=", "==")
                    and Version(installed) < Version(s.version)
                    for s in req.specifier
                )
            except InvalidVersion:
                below_a_minimum = False
            status = "too old" if below_a_minimum else "wrong version"
        rows.append(Row(req.name, required, installed, status))
    return rows


def check_python(version_info=sys.version_info) -> Row:
    """A Row for the Python interpreter itself (3.10 or newer is required)."""
    installed = ".".join(str(part) for part in version_info[:3])
    required = ">=" + ".".join(str(part) for part in MIN_PYTHON)
    status = "OK" if tuple(version_info[:2]) >= MIN_PYTHON else "too old"
    return Row("python", required, installed, status)


def describe_device() -> str:
    """The device the course will run on, as `shared.device.get_device()` picks it."""
    try:
        import torch
    except ImportError:
        return "unknown (PyTorch is not installed)"
    try:
        from shared.device import get_device
    except ImportError:  # the course package is not installed: the same choice, by hand
        if os.environ.get("LLM_COURSE_DEVICE", "").strip():
            device = torch.device(os.environ["LLM_COURSE_DEVICE"].strip())
        elif torch.cuda.is_available():
            device = torch.device("cuda")
        elif torch.backends.mps.is_available():
            device = torch.device("mps")
        else:
            device = torch.device("cpu")
    else:
        device = get_device()
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda})"
    if device.type == "mps":
        return "mps (Apple silicon GPU)"
    return "cpu (no CUDA or mps GPU found: everything runs, only more slowly)"


def format_table(rows: list[Row]) -> str:
    """The rows as a plain-text table with a header line."""
    header = Row("package", "required", "installed", "status")
    cells = [header] + [row._replace(installed=row.installed or "-") for row in rows]
    widths = [max(len(getattr(r, field)) for r in cells) for field in Row._fields[:3]]
    lines = [
        "  ".join(value.ljust(width) for value, width in zip(r[:3], widths, strict=True))
        + "  "
        + r.status
        for r in cells
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Print the report; return 0 when everything required is in place, else 1."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--requirements",
        type=Path,
        metavar="FILE",
        help="a requirements file to check against (default: the repository's requirements.txt)",
    )
    args = parser.parse_args(argv)

    if args.requirements is not None:
        reqs, source = read_requirements(args.requirements), str(args.requirements)
    else:
        reqs, source = default_requirements()
    try:
        rows = [check_python()] + check_requirements(reqs)
    except ImportError:
        print("The `packaging` module is missing: install the requirements first,")
        print("    pip install -r requirements.txt")
        return 1

    print(f"Requirements from {source}\n")
    print(format_table(rows))
    print(f"\nDevice: {describe_device()}")

    problems = [row for row in rows if not row.ok]
    if problems:
        print("\nTo fix: " + ", ".join(f"{row.name} is {row.status}" for row in problems) + ".")
        print("Install or upgrade with: pip install -r requirements.txt (see setup/README.md).")
        return 1
    print("\nEverything the course needs is in place.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
