"""ch07/grpo_train.py on tiny settings (a 1-layer model, a few steps), its checkpoints and
--resume, the Qwen3 stand-in path on the built-in toy problems, and GSM8K's parser and file
check (shared.reasoning.gsm8k_problems, shared.data.GSM8K_FILES) on hand-written lines."""

from __future__ import annotations

import dataclasses
import json
import socket
from fractions import Fraction

import pytest
import torch

from shared import data
from shared.checkpoints import read_checkpoint_extra
from shared.data import GSM8K_FILES, CorruptDataError, DataUnavailableError
from shared.qwen3 import chat_prompt
from shared.reasoning import GSM8K_INSTRUCTION, extract_answer, gsm8k_problems
from tests.notebook_code import REPO
from tests.scripts import load_script, run_main, run_script

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPT = REPO / "ch07" / "grpo_train.py"
# A 1-layer model, 5 finetuning steps, small groups, 10 validation and test problems.
TINY_RUN = (
    "--layers", "1", "--sft-steps", "5", "--sft-batch-size", "16", "--group-size", "4",
    "--prompts-per-step", "4", "--eval-size", "10", "--eval-every", "1",
)  # fmt: skip


def test_help_shows_each_default_once():
    result = run_main(SCRIPT, "--help")
    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())
    for option in ("--model", "--sft-steps", "--grpo-steps", "--kl-coef", "--resume"):
        assert option in help_text
    assert "(default: 650 for addition, 0 for qwen3-0.6b)" in help_text
    assert "None" not in help_text
    for option in help_text.split(" --")[1:]:
        assert option.count("(default") <= 1, option


def test_addition_end_to_end(tmp_path):
    out = tmp_path / "run.pth"
    result = run_script(SCRIPT, *TINY_RUN, "--grpo-steps", "2", "--output", out)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Model: a 1-layer, 96-dim GPT (KV cache) with a 17-token")
    assert any(line.startswith("Supervised finetuning: 5 steps of 16 problems") for line in lines)
    assert any(line.startswith("Test accuracy before GRPO: ") for line in lines)
    assert sum(line.startswith("GRPO step ") for line in lines) == 2  # --eval-every 1
    assert "validation accuracy" in lines[-2]
    assert "Test accuracy: " in lines[-1] and f"Saved {out}" in lines[-1]

    extra = read_checkpoint_extra(out)
    assert extra["step"] == 2 and [row["step"] for row in extra["history"]] == [1, 2]
    assert all("accuracy" in row and "reward" in row for row in extra["history"])
    assert extra["config"]["n_layers"] == 1 and extra["config"]["vocab_size"] == 17
    assert extra["run"]["settings"]["group_size"] == 4 and extra["run"]["grpo_lr"] == 2e-4
    assert "reference" not in extra  # no KL penalty: no reference model kept


def run_in_process(capsys, *args) -> str:
    """main(args) in this process; returns what it printed."""
    assert load_script(SCRIPT).main([str(a) for a in args]) == 0
    return capsys.readouterr().out


def test_resume_continues_exactly_as_an_uninterrupted_run(tmp_path, capsys):
    # with a KL penalty, so the reference model (the finetuned one) must survive the resume too
    options = (*TINY_RUN, "--kl-coef", "0.1", "--save-every", "0")
    straight, split = tmp_path / "straight.pth", tmp_path / "split.pth"
    run_in_process(capsys, *options, "--grpo-steps", "4", "--output", straight)
    run_in_process(capsys, *options, "--grpo-steps", "2", "--output", split)
    assert read_checkpoint_extra(split)["step"] == 2
    printed = run_in_process(capsys, *options, "--grpo-steps", "4", "--output", split, "--resume")
    assert f"Resuming from {split} after GRPO step 2" in printed
    assert "Supervised finetuning" not in printed  # done before the checkpoint

    a, b = (torch.load(path, weights_only=True) for path in (straight, split))
    for name, tensor in a["model_state_dict"].items():
        assert torch.equal(tensor, b["model_state_dict"][name]), name
    for name, tensor in a["extra"]["reference"].items():
        assert torch.equal(tensor, b["extra"]["reference"][name]), name
    for key, state in a["optimizer_state_dict"]["state"].items():
        for field, value in state.items():
            assert torch.equal(value, b["optimizer_state_dict"]["state"][key][field]), field
    assert a["extra"]["history"] == b["extra"]["history"]
    assert a["extra"]["test_before"] == b["extra"]["test_before"]

    # nothing left to do; other settings are refused, naming what differs
    again = run_in_process(capsys, *options, "--grpo-steps", "4", "--output", split, "--resume")
    assert "Already trained for 4 GRPO steps" in again
    other = run_main(SCRIPT, *options, "--group-size", "2", "--output", split, "--resume")
    assert other.returncode == 1
    assert other.stderr.startswith(f"error: {split} was saved by a run with other settings")
    assert "settings.group_size: 4 -> 2" in other.stderr and "Traceback" not in other.stderr


def test_resume_without_a_checkpoint_starts_from_scratch(tmp_path, capsys):
    out = tmp_path / "new.pth"
    printed = run_in_process(capsys, *TINY_RUN, "--grpo-steps", "1", "--output", out, "--resume")
    assert f"No checkpoint at {out}; starting from scratch" in printed
    assert read_checkpoint_extra(out)["step"] == 1


def test_qwen3_standin_runs_one_step_on_the_toy_problems(tmp_path):
    # the suite sets LLM_COURSE_STANDIN=1: no download, the stand-in and the toy problems
    out = tmp_path / "qwen3.pth"
    result = run_main(
        SCRIPT, "--model", "qwen3-0.6b", "--grpo-steps", "1", "--group-size", "2",
        "--prompts-per-step", "2", "--max-new-tokens", "3", "--eval-size", "2", "--output", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out_lines = result.stdout.splitlines()
    assert out_lines[0].startswith("Qwen3 0.6B not loaded: LLM_COURSE_STANDIN=1 is set")
    assert out_lines[1].startswith("Model: the stand-in above") and "not Qwen3-0.6B" in out_lines[1]
    assert out_lines[2].startswith(
        "Problems: 20 built-in toy word problems, made in code, not GSM8K"
    )
    assert "GRPO step 1/1" in result.stdout and "Test accuracy: " in out_lines[-1]
    extra = read_checkpoint_extra(out)
    assert extra["run"]["model"] == "qwen3-0.6b" and extra["step"] == 1 and "config" not in extra


def test_toy_problems_are_right_and_parse_like_gsm8k():
    script = load_script(SCRIPT)
    problems = gsm8k_problems(script.toy_word_problem_lines())
    assert len(problems) == 20 and len({p.prompt for p in problems}) == 20
    for problem in problems:
        # the worked solution's own arithmetic gives the answer it ends with
        a, op, b = problem.solution.split(" = ")[0].split()
        worked = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert worked == problem.answer
        assert extract_answer(problem.solution).value == problem.answer


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--prompts-per-step", "20001"), "--prompts-per-step 20001 is more than the 20000"),
        (("--model", "qwen3-0.6b", "--prompts-per-step", "13"), "more than the 12 training"),
    ],
)
def test_sizes_that_do_not_fit_are_one_error_line(args, message, tmp_path):
    result = run_main(SCRIPT, *args, "--output", tmp_path / "x.pth", "--sft-steps", "0")
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_an_unreadable_checkpoint_is_one_error_line(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"<html>Not Found</html>")
    result = run_main(SCRIPT, "--layers", "1", "--output", bad, "--resume")
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"error: {bad}: not a readable PyTorch checkpoint")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--temperature", "0"), "--temperature 0 samples the same completion G times"),
        (("--group-size", "1"), "--group-size must be at least 2"),
        (("--model", "qwen3-0.6b", "--layers", "2"), "--layers applies to --model addition only"),
        (("--aggregation", "mean"), "argument --aggregation: invalid choice: 'mean'"),
        (("--clip-eps", "-1"), "argument --clip-eps: expected a number > 0, got '-1'"),
    ],
)
def test_bad_options_are_usage_errors(args, message):
    result = run_main(SCRIPT, *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


# --- GSM8K: the parser and the file check --------------------------------------------------------


def gsm8k_line(question: str, answer: str) -> str:
    return json.dumps({"question": question, "answer": answer})


GSM8K_LINES = [
    gsm8k_line(
        "A farm sold 1,050 eggs on Monday and 150 on Tuesday. How many eggs did it sell?",
        "It sold 1,050 + 150 = <<1050+150=1200>>1,200 eggs.\n#### 1,200",
    ),
    "",  # blank lines are skipped
    gsm8k_line(
        "Sam has 4 dollars and owes 7. What is his balance?",
        "His balance is 4 - 7 = <<4-7=-3>>-3 dollars.\n#### -3",
    ),
    gsm8k_line("Half of 5?", "5 / 2 = <<5/2=2.5>>2.5\n#### 2.5"),
]


def test_gsm8k_problems_parse_hand_written_lines():
    problems = gsm8k_problems(GSM8K_LINES)
    assert [p.answer for p in problems] == [1200, -3, Fraction(5, 2)]
    first = problems[0]
    assert first.prompt == chat_prompt(
        "A farm sold 1,050 eggs on Monday and 150 on Tuesday. How many eggs did it sell?\n\n"
        + GSM8K_INSTRUCTION
    )
    assert first.solution == "It sold 1,050 + 150 = 1,200 eggs.\nAnswer: 1,200"  # no <<...>>
    for problem in problems:  # the verifier reads each worked solution's answer
        assert extract_answer(problem.solution).value == problem.answer
        assert "<<" not in problem.solution and "####" not in problem.solution


def test_gsm8k_problems_read_a_file(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(GSM8K_LINES) + "\n", encoding="utf-8")
    assert gsm8k_problems(path) == gsm8k_problems(GSM8K_LINES) == gsm8k_problems(str(path))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: not valid JSON"),
        (json.dumps({"question": "q"}), 'line 2: expected a JSON object with a "question"'),
        (json.dumps(["q", "a"]), 'line 2: expected a JSON object with a "question"'),
        (gsm8k_line("q", "no marker, 42"), 'line 2: the answer does not end in "#### <number>"'),
        (gsm8k_line("q", "so\n#### forty"), "line 2: 'forty' after '####' is not a number"),
    ],
)
def test_gsm8k_problems_name_the_bad_line(line, message):
    with pytest.raises(ValueError, match=message):
        gsm8k_problems([GSM8K_LINES[0], line])


def test_gsm8k_files_are_checked_by_structure(tmp_path):
    for split in ("train", "test"):
        spec = GSM8K_FILES[split]
        assert spec.url == (
            "https://raw.githubusercontent.com/openai/grade-school-math/master/"
            f"grade_school_math/data/{split}.jsonl"
        )
        assert spec.sha256 is None and spec.check is not None  # OpenAI publishes no checksum
        assert spec.name not in {entry.name for entry in data.REGISTRY.values()}  # not mirrored
    good = [GSM8K_LINES[0], GSM8K_LINES[2], GSM8K_LINES[3]]
    check = data._gsm8k_check(3)
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(good) + "\n", encoding="utf-8")
    check(path)
    for lines, message in (
        (good[:2], "expected 3 lines \\(GSM8K problems\\), found 2"),
        ([good[0], "<html>Not Found</html>", good[2]], "test.jsonl line 2: not a JSON object"),
        ([good[0], gsm8k_line("q", "42"), good[2]], 'line 2: expected a JSON object with a "q'),
    ):
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        with pytest.raises(CorruptDataError, match=message):
            check(path)
    for split, count in (("train", "7,473"), ("test", "1,319")):  # GSM8K's sizes
        with pytest.raises(CorruptDataError, match=f"expected {count} lines"):
            GSM8K_FILES[split].check(path)


def test_gsm8k_offline_is_the_one_clear_unavailable_error(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(data.MIRROR_ENV, str(tmp_path / "mirror"))
    (tmp_path / "mirror").mkdir()
    # the real entry, pointed at a local port where nothing listens (offline, without a network)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/test.jsonl"
    offline = dataclasses.replace(GSM8K_FILES["test"], url=url)
    with pytest.raises(DataUnavailableError) as info:
        data.fetch(offline, quiet=True)
    message = str(info.value)
    assert message.startswith(f"gsm8k/test.jsonl: could not get it from {url}: ")
    assert "LLM_COURSE_MIRROR" in message and "\n" not in message
