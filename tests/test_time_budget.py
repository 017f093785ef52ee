"""The durations report (tests/time_budget.py): budgets per notebook kind, totals, what is over."""

import pytest

from tests import time_budget


@pytest.mark.parametrize(
    ("path", "budget"),
    [
        ("ch05/ch05.ipynb", 720),
        ("ch06/exercise-solutions.ipynb", 300),
        ("ch05/open-models/qwen3.ipynb", 180),
        ("ch04/kv-cache.ipynb", 180),
        ("tests/test_gpt.py", None),
    ],
)
def test_notebook_budget(path, budget):
    assert time_budget.notebook_budget(path) == budget


def test_report_adds_cells_per_file_and_names_what_is_over():
    durations = {
        "ch04/kv-cache.ipynb::Cell 0": 100.0,
        "ch04/kv-cache.ipynb::Cell 1": 90.0,  # 190 s > 180 s
        "ch03/ch03.ipynb::Cell 0": 30.0,
        "tests/test_gpt.py::test_shapes[124M]": 500.0,  # modules have no budget
    }
    assert time_budget.per_file(durations)["ch04/kv-cache.ipynb"] == 190.0
    text = time_budget.report(durations, total_s=1900)
    assert "Over budget: ch04/kv-cache.ipynb: 190 s, budget 180 s; the whole run: 1900 s" in text
    assert "ch03" not in text.split("Over budget:")[1]
    assert time_budget.report(durations, total_s=100).endswith(
        "Over budget: ch04/kv-cache.ipynb: 190 s, budget 180 s"
    )


def test_unreadable_report_is_one_error_line(tmp_path):
    broken = tmp_path / "durations.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"^error: .*durations.json: "):
        time_budget.main([str(broken)])
