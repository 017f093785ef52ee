"""Where the test suite's time goes, against the course guide's budgets.

Reads the durations report that every pytest run writes (conftest.py writes test-durations.json, one
entry per test or notebook cell, in seconds), adds the entries up per file, and prints the files
slowest first with their budget, then the slowest single tests and cells. Names what is over;
never fails on time (exit status 0), since timings on a shared machine are noisy.

    python -m tests.time_budget [test-durations.json] [--total SECONDS]

--total is the wall time of the whole CI run, install included, checked against the 30 minutes.
Under .ci/run the same report ends the test run (conftest.py), before pytest's closing line.
"""

import argparse
import json
from collections import defaultdict
from pathlib import PurePosixPath

SUITE_BUDGET_S = 30 * 60  # the whole test command, install included
CHAPTER_BUDGET_S = 12 * 60  # a chapter notebook at the book's settings (ch05's Verdict run)
EXERCISE_BUDGET_S = 5 * 60
BONUS_BUDGET_S = 3 * 60


def notebook_budget(path: str) -> float | None:
    """The guide's budget in seconds for one notebook, or None for a test module."""
    name = PurePosixPath(path)
    if name.suffix != ".ipynb":
        return None
    if name.stem == "exercise-solutions":
        return EXERCISE_BUDGET_S
    if name.stem == name.parent.name:  # ch05/ch05.ipynb
        return CHAPTER_BUDGET_S
    return BONUS_BUDGET_S


def per_file(durations: dict[str, float]) -> dict[str, float]:
    """Seconds per file: the node ids' part before '::' (a notebook's cells, a module's tests)."""
    totals: dict[str, float] = defaultdict(float)
    for node_id, seconds in durations.items():
        totals[node_id.split("::")[0]] += seconds
    return dict(totals)


def report(durations: dict[str, float], total_s: float | None = None, slowest: int = 15) -> str:
    """The report as text: files with budgets, the slowest tests, and what is over."""
    files = per_file(durations)
    over = []
    lines = [f"{'seconds':>8}  {'budget':>6}  file"]
    for path, seconds in sorted(files.items(), key=lambda item: -item[1]):
        budget = notebook_budget(path)
        mark = ""
        if budget is not None and seconds > budget:
            mark = "  OVER"
            over.append(f"{path}: {seconds:.0f} s, budget {budget:.0f} s")
        budget_text = f"{budget:.0f}" if budget is not None else "-"
        lines.append(f"{seconds:8.1f}  {budget_text:>6}  {path}{mark}")
    tests_s = sum(files.values())
    lines.append(f"{tests_s:8.1f}          all {len(durations)} tests and cells")
    lines.append("")
    lines.append(f"The {slowest} slowest tests and cells:")
    for node_id, seconds in sorted(durations.items(), key=lambda item: -item[1])[:slowest]:
        lines.append(f"{seconds:8.1f}  {node_id}")
    if total_s is not None:
        lines.append("")
        lines.append(
            f"Whole run, install included: {total_s:.0f} s ({total_s / 60:.1f} min), "
            f"budget {SUITE_BUDGET_S / 60:.0f} min"
        )
        if total_s > SUITE_BUDGET_S:
            over.append(f"the whole run: {total_s:.0f} s, budget {SUITE_BUDGET_S} s")
    lines.append("")
    lines.append("Over budget: " + ("; ".join(over) if over else "nothing"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("durations", nargs="?", default="test-durations.json")
    parser.add_argument("--total", type=float, help="wall seconds of the whole run")
    args = parser.parse_args(argv)
    try:
        with open(args.durations, encoding="utf-8") as file:
            durations = json.load(file)
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"error: {args.durations}: {error}") from None
    print(report(durations, args.total))


if __name__ == "__main__":
    main()
