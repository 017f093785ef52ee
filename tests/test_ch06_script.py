"""ch06/train_classifier.py end to end on tiny settings: train a classifier, then classify."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest

from shared.classification import (
    classify_review,
    convert_to_classifier,
    load_classifier,
)
from shared.gpt import GPTModel
from shared.gpt2_weights import STANDIN_CONFIG
from shared.pretraining import read_checkpoint_extra
from shared.tokenizers import gpt2_tokenizer
from tests.notebook_code import REPO
from tests.scripts import run_main, run_script

SCRIPT = REPO / "ch06" / "train_classifier.py"

# The stand-in model on 16 messages of at most 24 tokens, one epoch: a few seconds.
TINY_ARGS = ["--standin", "--max-train-examples", "16", "--pad-length", "24"]
TINY_ARGS += ["--epochs", "1", "--eval-freq", "1", "--eval-iter", "1", "--device", "cpu"]


def run(*args, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return run_script(SCRIPT, *args, stdin=stdin, check=check)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A classifier trained by the script (the stand-in's defaults: all weights, lr 2e-4)."""
    out = tmp_path_factory.mktemp("run")
    result = run("train", *TINY_ARGS, "--data-dir", out, "--output", out / "clf.pth")
    assert result.stdout.startswith("Model: stand-in")
    expected = convert_to_classifier(GPTModel(STANDIN_CONFIG), trainable_blocks="all")
    trainable = sum(p.numel() for p in expected.parameters() if p.requires_grad)
    assert f"16 training messages padded to 24 tokens, 2 batches per epoch; {trainable:,}" in (
        result.stdout
    )
    assert "Ep 1 (Step 000001)" in result.stdout and "Accuracy: training" in result.stdout
    assert "Training" in result.stderr  # the progress bar
    return out / "clf.pth"


def test_help():
    result = run_main(SCRIPT, "--help")
    assert "train" in result.stdout and "classify" in result.stdout
    train_help = run_main(SCRIPT, "train", "--help").stdout
    for option in (
        "--gpt2",
        "--standin",
        "--trainable-blocks",
        "--epochs",
        "--pad-length",
        "--max-train-examples",
        "--output",
    ):
        assert option in train_help
    assert "--checkpoint" in run_main(SCRIPT, "classify", "--help").stdout


def test_train_writes_splits_and_a_classifier(trained):
    data_dir = trained.parent
    sizes = [len(pd.read_csv(data_dir / f"{n}.csv")) for n in ("train", "validation", "test")]
    assert sizes == [1045, 149, 300]
    first16 = pd.read_csv(data_dir / "train-first-16.csv", keep_default_na=False)
    assert first16.equals(pd.read_csv(data_dir / "train.csv", keep_default_na=False).head(16))
    extra = read_checkpoint_extra(trained)
    assert extra["max_length"] == 24 and extra["num_classes"] == 2
    assert extra["config"] == STANDIN_CONFIG and extra["trainable_blocks"] == "all"
    assert extra["epochs"] == 1 and extra["learning_rate"] == 2e-4
    assert extra["description"].startswith("stand-in")
    for key in ("train_accuracy", "val_accuracy", "test_accuracy"):
        assert 0.0 <= extra[key] <= 1.0


def test_classify_matches_the_saved_model(trained):
    messages = [
        "WINNER!! You have been selected for a $1000 prize. Call now!",
        "Are we still on for lunch?",
        "",
        "Grüße 🎉 naïve café",
        "free cash " * 500,  # 1,000 tokens: cut to the classifier's 24, not an error
    ]
    result = run("classify", "--checkpoint", trained, "--device", "cpu", *messages)
    model, extra = load_classifier(trained)
    tokenizer = gpt2_tokenizer()
    expected = [
        f"{classify_review(m, model, tokenizer, 'cpu', max_length=extra['max_length'])}\t{m}"
        for m in messages
    ]
    assert result.stdout.splitlines() == expected
    piped = run_main(
        SCRIPT, "classify", "--checkpoint", trained, "-", stdin="\n".join(messages[:2]) + "\n"
    )
    assert piped.stdout.splitlines() == expected[:2]


def test_bad_input_is_reported_clearly(tmp_path):
    missing = run_main(SCRIPT, "classify", "--checkpoint", tmp_path / "nope.pth", "hi")
    assert missing.returncode == 1 and missing.stderr.startswith("error: classifier file")
    too_long = run_main(SCRIPT, "train", *TINY_ARGS, "--pad-length", "2000", "--data-dir", tmp_path)
    assert too_long.returncode == 1
    assert "--pad-length 2000 exceeds the model's context length (1024)" in too_long.stderr
    blocks = run_main(
        SCRIPT, "train", *TINY_ARGS, "--trainable-blocks", "9", "--data-dir", tmp_path
    )
    assert blocks.returncode == 1 and "the model has 4" in blocks.stderr
    for option, value in (
        ("--pad-length", "long"),
        ("--trainable-blocks", "last"),
        ("--epochs", "0"),
    ):
        result = run_main(SCRIPT, "train", option, value)
        assert result.returncode == 2 and option in result.stderr
