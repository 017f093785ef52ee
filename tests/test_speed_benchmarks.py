"""The ch05/speed benchmark scripts run end to end on a tiny model; their timings are not tested."""

from __future__ import annotations

import pytest

from tests.notebook_code import REPO
from tests.scripts import load_script, run_script

SPEED = REPO / "ch05" / "speed"

pytest.importorskip("transformers")


def test_training_benchmark_prints_a_row_per_variant():
    result = run_script(
        SPEED / "benchmark_training.py",
        *(
            "--only",
            "course, plain",
            "--precision",
            "bf16",
            "--context-length",
            "8",
            "--batch-size",
            "1",
        ),
        *("--rounds", "1", "--steps", "1", "--warmup", "0", "--matmul-size", "64"),
        *("--size", "tiny", "--layers", "1", "--peak-seconds", "0.1"),
    )
    lines = result.stdout.splitlines()
    assert any(line.startswith("Measured matmul peak: fp32") for line in lines)
    assert any(line.startswith("load average after: ") for line in lines)
    rows = [line.rsplit(maxsplit=6) for line in lines if line.startswith("course, plain")]
    assert [row[0] for row in rows] == ["course, plain, tied, bf16", "course, plain, untied, bf16"]
    for _, step_ms, spread, tokens_per_s, vs_hf, vs_nano, of_peak in rows:
        fastest, slowest = (float(ms) for ms in spread.removesuffix("ms").split("-"))
        assert 0 < fastest <= float(step_ms.removesuffix("ms")) <= slowest
        assert float(tokens_per_s.replace(",", "")) > 0
        assert vs_hf == vs_nano == "-"  # the yardsticks were not selected
        assert of_peak.endswith("%")


def test_training_benchmark_compares_with_both_yardsticks():
    result = run_script(
        SPEED / "benchmark_training.py",
        *(
            "--only",
            "f.AdamW, tied",
            "--precision",
            "fp32",
            "--context-length",
            "4",
            "--batch-size",
            "1",
        ),
        *("--rounds", "1", "--steps", "1", "--warmup", "0", "--matmul-size", "64"),
        *("--size", "tiny", "--layers", "1", "--peak-seconds", "0.1"),
    )
    rows = {
        row[0]: row[4:6]
        for row in (line.rsplit(maxsplit=6) for line in result.stdout.splitlines())
        if len(row) == 7 and row[0].endswith("f.AdamW, tied")
    }
    assert set(rows) == {
        "course, fused + f.AdamW, tied",
        "transformers + f.AdamW, tied",
        "nanoGPT-style + f.AdamW, tied",
    }
    assert rows["transformers + f.AdamW, tied"][0] == "1.00x"
    assert rows["nanoGPT-style + f.AdamW, tied"][1] == "1.00x"
    assert all(
        float(ratio.removesuffix("x")) > 0 for ratio in rows["course, fused + f.AdamW, tied"]
    )


def test_training_benchmark_rounds_start_at_different_variants():
    round_order = load_script(SPEED / "benchmark_training.py").round_order
    chosen = list("abcdef")
    orders = [round_order(chosen, r, 3) for r in range(3)]
    assert [order[0] for order in orders] == ["a", "c", "e"]
    assert all(sorted(order) == chosen for order in orders)  # every variant once per round
    assert round_order(chosen, 0, 1) == chosen


def test_training_benchmark_profiles_one_step():
    result = run_script(
        SPEED / "benchmark_training.py",
        *("--profile", "--only", "course, fused + f.AdamW, tied", "--context-length", "8"),
        *("--batch-size", "1", "--warmup", "0", "--size", "tiny", "--layers", "1"),
    )
    assert "course, fused + f.AdamW, tied: one training step" in result.stdout
    assert "aten::" in result.stdout  # the profiler's operator table


def test_generation_benchmark_agrees_on_tokens():
    result = run_script(
        SPEED / "benchmark_generation.py",
        *("--new-tokens", "4", "--prompt-tokens", "3", "--repeats", "1"),
        *("--size", "tiny", "--layers", "1"),
    )
    verdicts = [line for line in result.stdout.splitlines() if line.startswith("tokens of ")]
    compared = ["course, plain, KV cache", "course, fused, KV cache", "reference (transformers"]
    for name in compared:
        verdict = next(line for line in verdicts if line.startswith(f"tokens of '{name}"))
        assert verdict.endswith(": True"), result.stdout
