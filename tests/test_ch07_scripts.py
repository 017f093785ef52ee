"""End-to-end tests of ch07's scripts on tiny settings (stand-in model, a few entries)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from shared.data import fetch
from shared.gpt import GPTModel
from shared.gpt2_weights import STANDIN_CONFIG
from shared.instruction import generate_response
from shared.pretraining import load_checkpoint
from shared.tokenizers import gpt2_tokenizer
from tests.conftest import FakeOllama
from tests.notebook_code import REPO
from tests.scripts import run_main, run_script

CH07 = REPO / "ch07"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return run_script(CH07 / script, *args, check=False)


@pytest.mark.parametrize("script", ["finetune_instructions.py", "score_responses.py"])
def test_help(script):
    result = run_main(CH07 / script, "--help")
    assert result.returncode == 0
    assert "usage:" in result.stdout and "--max-entries" in result.stdout


def test_finetune_end_to_end(tmp_path):
    responses, checkpoint = tmp_path / "responses.json", tmp_path / "model.pth"
    result = run(
        "finetune_instructions.py",
        "--standin", "--max-entries", "20", "--epochs", "1", "--batch-size", "4",
        "--allowed-max-length", "48", "--eval-freq", "4", "--eval-iter", "1",
        "--max-new-tokens", "5", "--responses", str(responses), "--output", str(checkpoint),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "20 entries: 17 training, 1 validation, 2 test" in result.stdout
    assert "Test loss" in result.stdout

    # The responses file holds the 2 test entries (entries 17 and 18) with the model's answers.
    written = json.loads(responses.read_text())
    assert len(written) == 2
    source = json.loads(fetch("instruction-data").read_text())
    for entry, original in zip(written, source[17:19], strict=True):
        assert {k: entry[k] for k in original} == original
        assert isinstance(entry["model_response"], str)

    # The saved model gives the same responses again.
    model = GPTModel(STANDIN_CONFIG)
    extra = load_checkpoint(checkpoint, model)
    assert extra["config"] == STANDIN_CONFIG and extra["style"] == "alpaca"
    tokenizer = gpt2_tokenizer()
    for entry in written:
        assert (
            generate_response(model, tokenizer, entry, "cpu", max_new_tokens=5)
            == (entry["model_response"])
        )


def test_finetune_rejects_a_malformed_entry(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}]))
    result = run("finetune_instructions.py", "--standin", "--data", str(bad))
    assert result.returncode == 1
    assert "entry 1 has no 'output' field" in result.stderr
    assert "Traceback" not in result.stderr


def _responses_file(tmp_path: Path) -> Path:
    entries = [
        {"instruction": "Name a color.", "input": "", "output": "Red.", "model_response": r}
        for r in ("Red.", "Blue.", "Green.")
    ]
    path = tmp_path / "responses.json"
    path.write_text(json.dumps(entries))
    return path


def test_score_responses_against_a_local_judge(tmp_path):
    replies = {"Red.": "100", "Blue.": "Hard to say.", "Green.": "20"}

    def judge(prompt: str) -> str:
        return next(reply for response, reply in replies.items() if f"grade:\n{response}" in prompt)

    with FakeOllama(judge, models=("tiny-judge",)) as server:
        result = run_main(
            CH07 / "score_responses.py", "--responses", str(_responses_file(tmp_path)),
            "--judge-model", "tiny-judge", "--ollama-port", str(server.port),
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Scored 2 of 3 responses" in result.stdout
    assert "Skipped 1 replies that were not a score (entries 1)" in result.stdout
    assert "Average score: 60.00" in result.stdout
    assert all(r["model"] == "tiny-judge" for r in server.requests)


def test_score_responses_without_a_server(tmp_path):
    with FakeOllama(lambda prompt: "0") as server:
        port = server.port  # free again once the server has stopped
    result = run_main(
        CH07 / "score_responses.py",
        "--responses",
        str(_responses_file(tmp_path)),
        "--ollama-port",
        port,
    )
    assert result.returncode == 1
    assert f"No Ollama server answers at http://127.0.0.1:{port}/api/chat" in result.stdout
    # F1: "Red." matches exactly (1.0), the other two share no word (0.0)
    assert "over 3 responses: 0.333" in result.stdout


def test_score_responses_missing_field(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "b"}]))
    result = run("score_responses.py", "--responses", str(path))  # a real command line
    assert result.returncode == 1
    assert "entry 0 has no string field 'model_response'" in result.stderr
