"""End-to-end tests of ch07/dpo_finetune.py on tiny settings (a tiny model, a few entries)."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from shared.gpt import GPTModel
from shared.pretraining import load_checkpoint, save_checkpoint
from tests.conftest import TINY
from tests.notebook_code import REPO
from tests.scripts import load_script, run_main, run_script

SCRIPT = REPO / "ch07" / "dpo_finetune.py"
CONFIG = {**TINY, "context_length": 64}  # --allowed-max-length 64 below


def run(*args: str) -> subprocess.CompletedProcess:
    return run_script(SCRIPT, *args, check=False)


@pytest.fixture
def sft_checkpoint(tmp_path):
    """A checkpoint as finetune_instructions.py writes it (model, config, prompt style)."""
    torch.manual_seed(0)
    path = tmp_path / "tiny-sft.pth"
    save_checkpoint(path, GPTModel(CONFIG), config=CONFIG, style="alpaca")
    return path


def test_help_shows_each_default_once():
    result = run_main(SCRIPT, "--help")
    assert result.returncode == 0
    assert "--checkpoint" in result.stdout and "--beta" in result.stdout
    help_text = " ".join(result.stdout.split())
    assert "(default: 0.1)" in help_text and "(default: 5e-6, the book's)" in help_text
    assert "None" not in help_text
    for option in help_text.split(" --")[1:]:
        assert option.count("default") <= 1, option


def test_dpo_end_to_end(tmp_path, sft_checkpoint):
    out = tmp_path / "tiny-dpo.pth"
    result = run(
        "--checkpoint", str(sft_checkpoint), "--max-entries", "40", "--batch-size", "4",
        "--lr", "1e-3", "--allowed-max-length", "64", "--eval-freq", "4", "--eval-iter", "1",
        "--compare", "1", "--max-new-tokens", "3", "--output", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "40 entries: 34 training, 2 validation, 4 test" in result.stdout
    assert "Test: loss" in result.stdout and "preference accuracy" in result.stdout
    assert result.stdout.count("Before DPO:") == 1 and result.stdout.count("After DPO:") == 1
    assert f"Model saved to {out}" in result.stdout

    # the saved model loads like the SFT checkpoint, keeps its extras, and has moved
    before, after = GPTModel(CONFIG), GPTModel(CONFIG)
    load_checkpoint(sft_checkpoint, before)
    extra = load_checkpoint(out, after)
    assert extra["config"] == CONFIG and extra["style"] == "alpaca"
    assert extra["dpo"]["beta"] == 0.1 and extra["dpo"]["reduction"] == "sum"
    changed = [
        name
        for name, tensor in after.state_dict().items()
        if not torch.equal(tensor, before.state_dict()[name])
    ]
    assert "out_head.weight" in changed


def test_default_checkpoint_name(sft_checkpoint):
    script = load_script(SCRIPT)
    assert script.default_checkpoint(sft_checkpoint).name == "tiny-dpo.pth"


def test_missing_checkpoint_is_one_error_line(tmp_path):
    result = run("--checkpoint", str(tmp_path / "nowhere.pth"), "--max-entries", "20")
    assert result.returncode == 1
    assert result.stderr.startswith("error: no checkpoint at")
    assert "finetune_instructions.py" in result.stderr and "Traceback" not in result.stderr


def test_bad_entry_names_file_index_and_field(tmp_path, sft_checkpoint):
    bad = tmp_path / "prefs.json"
    good = {"instruction": "a", "chosen": "b", "rejected": "c"}
    bad.write_text(json.dumps([good, {"instruction": "a", "chosen": "b"}]))
    result = run_main(SCRIPT, "--checkpoint", sft_checkpoint, "--data", bad)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {bad}: entry 1 has no 'rejected' field"


def test_bad_option_value():
    result = run_main(SCRIPT, "--beta", "0")
    assert result.returncode == 2
    assert "argument --beta: expected a number > 0, got '0'" in result.stderr
    assert "Traceback" not in result.stderr
