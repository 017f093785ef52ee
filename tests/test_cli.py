"""The scripts' command line (shared.cli): one meaning per option name across scripts, every
script on the shared help formatter and with --device where it runs a model, the chapter READMEs
listing the options; first-run friction: every --help shows each default once; bad input
(unreadable checkpoints, non-UTF-8 or invalid JSON files, missing data, weights that cannot be
had) is one ``error: ...`` line with exit status 1, never a traceback."""

from __future__ import annotations

import argparse
import errno
import functools
import json
import re
import subprocess
import sys
import urllib.error
from collections import defaultdict
from pathlib import Path

import pytest
import torch

import shared.data
from shared.classification import load_classifier
from shared.cli import (
    HelpFormatter,
    InputFileError,
    add_gpt2_options,
    add_option,
    check_utf8,
    device_name,
    dropout_probability,
    errors_as_one_line,
    fraction,
    gpt2_from_options,
    non_negative_float,
    non_negative_int,
    port_number,
    positive_float,
    positive_int,
    read_json_file,
    read_text_file,
)
from shared.gpt2_weights import GPT2_HF_NAMES, STANDIN_CONFIG, STANDIN_ENV
from shared.pretraining import load_checkpoint, read_checkpoint_extra, save_checkpoint
from shared.tokenizers import gpt2_tokenizer
from tests.notebook_code import REPO
from tests.scripts import load_script, run_script

# Every script with a command line, its parser from build_parser().
SCRIPTS = [
    "ch04/generate_untrained.py",
    "ch04/plan_memory.py",
    "ch05/train.py",
    "ch05/generate.py",
    "ch05/app.py",
    "ch05/speed/benchmark_training.py",
    "ch05/speed/benchmark_generation.py",
    "ch05/open-models/benchmark_generation.py",
    "ch05/open-models/benchmark_loading.py",
    "ch05/open-models/pretrain_architectures.py",
    "ch06/train_classifier.py",
    "ch06/app.py",
    "ch07/finetune_instructions.py",
    "ch07/dpo_finetune.py",
    "ch07/grpo_train.py",
    "ch07/score_responses.py",
    "ch07/app.py",
    "setup/execute_notebooks.py",
    "setup/device_check.py",
]
# So no --device (benchmark_loading measures the CPU's resident memory).
NO_MODEL = {
    "ch07/score_responses.py",
    "setup/execute_notebooks.py",
    "ch05/open-models/benchmark_loading.py",
}
# They read no file, data or weights: argparse's usage error covers every bad input they take.
NO_INPUT = {s for s in SCRIPTS if "benchmark" in s}
# Runs before the course is installed, and copied on its own: it imports nothing of shared.
STANDALONE = {"setup/python_environment_check.py"}
UNREADABLE = "not a readable PyTorch checkpoint: truncated or corrupt?"
REAL_MIRROR = shared.data.mirror_dir()  # read before any test replaces the variable


def option_help(help_text: str) -> dict[str, str]:
    """{option: its help, on one line} for every option of an argparse --help output."""
    entries, current = {}, None
    for line in help_text.splitlines():
        start = re.match(r"  (-[\w-]+)(, --[\w-]+)?", line)
        if start:
            current = start.group(2)[2:] if start.group(2) else start.group(1)
            entries[current] = line[start.end() :]
        elif current and line.startswith("    "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return {option: " ".join(text.split()) for option, text in entries.items()}


def test_option_help_parser():
    text = (
        "usage: x [-h] [--size SIZE]\n              [--flag]\n\noptions:\n"
        "  -h, --help   show this help\n  --size {a,b}\n               the size (default:\n"
        "               a)\n  --flag       on or off (default: False)\n\ngroup:\n  --n N  n\n"
    )
    assert option_help(text) == {
        "--help": "show this help",
        "--size": "{a,b} the size (default: a)",
        "--flag": "on or off (default: False)",
        "--n": "N n",
    }


@functools.cache
def script_parsers(script: str) -> dict[str, argparse.ArgumentParser]:
    """{"<script>" or "<script> <subcommand>": parser} of the script's build_parser()."""
    sys.path.insert(0, str((REPO / script).parent))  # the speed benchmarks import each other
    try:
        parser = load_script(REPO / script).build_parser()
    finally:
        sys.path.remove(str((REPO / script).parent))
    found = {script: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update({f"{script} {name}": sub for name, sub in action.choices.items()})
    return found


def all_parsers() -> dict[str, argparse.ArgumentParser]:
    return {name: p for script in SCRIPTS for name, p in script_parsers(script).items()}


def test_every_script_with_a_command_line_is_checked():
    tracked = subprocess.run(
        ["git", "ls-files", "ch0*.py", "setup/*.py"], cwd=REPO, capture_output=True, text=True
    ).stdout.split()
    with_parser = {f for f in tracked if "argparse" in (REPO / f).read_text(encoding="utf-8")}
    assert with_parser == set(SCRIPTS) | STANDALONE


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_option_shows_its_default_once(script):
    seen = 0
    for name, parser in script_parsers(script).items():
        options = option_help(parser.format_help())
        options.pop("--help")
        seen += len(options)
        for option, help_line in options.items():
            assert help_line.count("(default") == 1, f"{name} {option}: {help_line}"
            assert "(default: None)" not in help_line, f"{name} {option}: {help_line}"
    assert seen >= 2


def test_every_script_uses_the_shared_formatter_and_one_line_errors():
    for name, parser in all_parsers().items():
        assert parser.formatter_class is HelpFormatter, name
    for script in set(SCRIPTS) - NO_INPUT:
        assert "with errors_as_one_line():" in (REPO / script).read_text(encoding="utf-8"), script


def test_every_script_that_runs_a_model_has_the_device_option():
    for name, parser in all_parsers().items():
        if name.split()[0] not in NO_MODEL and parser._subparsers is None:  # each command's own
            assert "--device" in parser._option_string_actions, name


def meaning(action: argparse.Action) -> tuple:
    """What an option means: its help without the default, its type, choices and action kind
    (the default may differ from script to script)."""
    help_text = re.sub(r" ?\(default[^)]*\)", "", action.help or "")
    choices = tuple(action.choices) if action.choices is not None else None
    return help_text, action.type, choices, type(action).__name__


def conflicts(parsers: dict[str, argparse.ArgumentParser]) -> dict[str, dict[tuple, list[str]]]:
    """{option: {meaning: [parsers]}} for each option string that means more than one thing."""
    meanings = defaultdict(lambda: defaultdict(list))
    for name, parser in parsers.items():
        for option, action in parser._option_string_actions.items():
            if option not in ("-h", "--help"):
                meanings[option][meaning(action)].append(name)
    return {option: dict(m) for option, m in meanings.items() if len(m) > 1}


def test_each_option_name_means_one_thing_in_every_script():
    assert conflicts(all_parsers()) == {}


def test_conflicts_finds_an_option_with_two_meanings():
    def parser(*arguments: tuple[str, dict]) -> argparse.ArgumentParser:
        made = argparse.ArgumentParser(formatter_class=HelpFormatter)
        for option, spec in arguments:
            made.add_argument(option, **spec)
        return made

    model = ("--model", {"choices": ["124M", "355M"], "help": "GPT-2 size"})
    judge = ("--model", {"default": "llama3", "help": "the judge's name"})
    epochs = ("--epochs", {"type": int, "default": 5, "help": "passes (default: five)"})
    same = {
        "a": parser(model, epochs),
        "b": parser(model, ("--epochs", {**epochs[1], "default": 2})),
    }
    assert conflicts(same) == {}  # another default, the same meaning
    found = conflicts({**same, "c": parser(judge, ("--epochs", {"type": float, "help": "passes"}))})
    assert set(found) == {"--model", "--epochs"}
    assert sorted(found["--model"].values()) == [["a", "b"], ["c"]]


def test_chapter_readmes_list_every_option():
    for script in SCRIPTS:
        if not script.startswith("ch"):
            continue
        readme = (REPO / script).parent / "README.md"
        text = readme.read_text(encoding="utf-8")
        for name, parser in script_parsers(script).items():
            for option in parser._option_string_actions:
                if option not in ("-h", "--help"):
                    assert re.search(rf"{option}(?![\w-])", text), f"{readme}: {name} {option}"


def test_shared_validators_say_what_they_expected():
    assert positive_int("3") == 3 and non_negative_int("0") == 0 and fraction("0.1") == 0.1
    assert positive_float("1e-3") == 1e-3 and non_negative_float("0") == 0.0
    assert port_number("1") == 1 and port_number("65535") == 65535
    assert dropout_probability("0") == 0.0 and dropout_probability("0.999") == 0.999
    for check, text, expected in (
        (positive_int, "0", "expected a whole number >= 1, got '0'"),
        (positive_int, "1.5", "expected a whole number >= 1, got '1.5'"),
        (non_negative_int, "-1", "expected a whole number >= 0, got '-1'"),
        (positive_float, "0", "expected a number > 0, got '0'"),
        (non_negative_float, "nan", "expected a number >= 0, got 'nan'"),
        (fraction, "1", "expected a number between 0 and 1, got '1'"),
        (dropout_probability, "1", "expected a number >= 0 and < 1, got '1'"),
        (dropout_probability, "-0.1", "expected a number >= 0 and < 1, got '-0.1'"),
        (port_number, "0", "expected a port number from 1 to 65535, got '0'"),
        (port_number, "65536", "expected a port number from 1 to 65535, got '65536'"),
        (device_name, "gpu", "unknown device 'gpu'; use cpu, cuda, cuda:N or mps"),
    ):
        with pytest.raises(argparse.ArgumentTypeError) as info:
            check(text)
        assert str(info.value) == expected
    assert device_name("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(argparse.ArgumentTypeError, match="this machine has no cuda device"):
            device_name("cuda")


@pytest.mark.parametrize(
    "script, option",
    [(app, "--port") for app in ("ch05/app.py", "ch06/app.py", "ch07/app.py")]
    + [("ch07/score_responses.py", "--ollama-port")],
)
def test_port_options_take_only_port_numbers(script, option, capsys):
    (parser,) = script_parsers(script).values()
    assert getattr(parser.parse_args([option, "65535"]), option[2:].replace("-", "_")) == 65535
    for bad in ("0", "65536"):
        with pytest.raises(SystemExit):
            parser.parse_args([option, bad])
        assert f"expected a port number from 1 to 65535, got '{bad}'" in capsys.readouterr().err


def test_train_takes_a_dropout_rate_below_one(capsys):
    (parser,) = script_parsers("ch05/train.py").values()
    assert parser.parse_args(["--dropout", "0"]).dropout == 0.0
    with pytest.raises(SystemExit):
        parser.parse_args(["--dropout", "1"])
    assert "--dropout: expected a number >= 0 and < 1, got '1'" in capsys.readouterr().err


def test_gpt2_options_pick_the_model(monkeypatch):
    parser = argparse.ArgumentParser()
    add_gpt2_options(parser, "355M")
    add_option(parser, "--seed", 7)
    assert vars(parser.parse_args([])) == {
        "gpt2": "355M", "standin": False, "require_gpt2": False, "seed": 7
    }  # fmt: skip
    assert parser._option_string_actions["--gpt2"].choices == tuple(GPT2_HF_NAMES)
    with pytest.raises(SystemExit):  # argparse: not allowed with --standin
        parser.parse_args(["--standin", "--require-gpt2"])
    monkeypatch.setenv(STANDIN_ENV, "1")
    standin = gpt2_from_options(parser.parse_args(["--standin"]))
    assert standin.is_standin and standin.config == STANDIN_CONFIG
    assert gpt2_from_options(parser.parse_args(["--gpt2", "124M"])).is_standin  # the switch
    with pytest.raises(shared.data.DataUnavailableError, match="GPT-2 124M weights are required"):
        gpt2_from_options(parser.parse_args(["--gpt2", "124M", "--require-gpt2"]))


def test_help_formatter_adds_a_default_only_where_the_help_lacks_one():
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument("--lr", type=float, default=None, help="rate (default: 1e-3 or 5e-5)")
    parser.add_argument("--epochs", type=int, default=5, help="passes")
    help_text = " ".join(parser.format_help().split())
    assert "rate (default: 1e-3 or 5e-5) --epochs" in help_text
    assert "passes (default: 5)" in help_text


def main_exit(script: str, *args) -> str:
    """Run a script's main() in this process; return what it exits with."""
    with pytest.raises(SystemExit) as info:
        load_script(REPO / script).main([str(a) for a in args])
    return info.value.code


# --- unreadable checkpoints --------------------------------------------------------------------


@pytest.fixture
def bad_checkpoints(tmp_path) -> list[Path]:
    """An empty, a truncated and a garbage .pth file (the truncated one from a real checkpoint)."""
    good = save_checkpoint(tmp_path / "good.pth", torch.nn.Linear(4, 4), config={"a": 1})
    files = {
        "empty.pth": b"",
        "truncated.pth": good.read_bytes()[: good.stat().st_size // 2],
        "garbage.pth": b"<html>Not Found</html>" * 10,
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    return [tmp_path / name for name in files]


def test_unreadable_checkpoints_give_one_line_naming_the_file(bad_checkpoints):
    for path in bad_checkpoints:
        for load in (
            lambda p: load_checkpoint(p, torch.nn.Linear(4, 4)),
            read_checkpoint_extra,
            load_classifier,
        ):
            with pytest.raises(ValueError) as info:
                load(path)
            assert str(info.value) == f"{path}: {UNREADABLE}"
            assert info.value.__cause__ is None and info.value.__suppress_context__


def test_scripts_report_unreadable_checkpoints(bad_checkpoints, tmp_path):
    truncated = bad_checkpoints[1]
    # As a learner sees it: one line on stderr, exit status 1.
    result = run_script(REPO / "ch05/generate.py", "--checkpoint", truncated, check=False)
    assert result.returncode == 1 and result.stderr == f"error: {truncated}: {UNREADABLE}\n"
    for path in bad_checkpoints:
        expected = f"error: {path}: {UNREADABLE}"
        assert main_exit("ch05/generate.py", "--checkpoint", path) == expected
        classify = ("classify", "--checkpoint", path, "hi", "--device", "cpu")
        assert main_exit("ch06/train_classifier.py", *classify) == expected
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "last.pth").write_bytes(b"")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Every effort moves you. " * 200, encoding="utf-8")
    resume = ("--data", corpus, "--context-length", "8", "--checkpoint-dir", run_dir, "--resume")
    assert main_exit("ch05/train.py", *resume) == f"error: {run_dir / 'last.pth'}: {UNREADABLE}"


# --- files the user gives ----------------------------------------------------------------------


@pytest.fixture
def latin1(tmp_path) -> Path:
    path = tmp_path / "café.txt"
    path.write_bytes("Every effort moves you, said the café owner. ".encode("latin-1") * 50)
    return path


def test_read_helpers_name_the_file(tmp_path, latin1):
    with pytest.raises(
        InputFileError, match=r"café\.txt: not UTF-8 text \(byte 0xe9 at position 36\)"
    ):
        read_text_file(latin1)
    with pytest.raises(InputFileError, match="re-encode it as UTF-8"):
        check_utf8(latin1, block_bytes=7)  # the position is counted across blocks
    broken = tmp_path / "broken.json"
    broken.write_text('[{"instruction": "a",}]', encoding="utf-8")
    with pytest.raises(InputFileError) as info:
        read_json_file(broken)
    assert str(info.value).startswith(f"{broken}: not valid JSON: ")
    assert "(line 1, column 22)" in str(info.value)
    with pytest.raises(InputFileError, match=r"nope\.json: No such file or directory"):
        read_json_file(tmp_path / "nope.json")
    (tmp_path / "fine.json").write_text(json.dumps([1, "é"]), encoding="utf-8")
    assert read_json_file(tmp_path / "fine.json") == [1, "é"]


def test_errors_as_one_line_exits_with_status_1():
    for err, message in (
        (ValueError("bad value\n  on two lines"), "error: bad value on two lines"),
        (OSError(errno.ENOENT, "No such file or directory", "x.txt"), "error: x.txt: No such file or directory"),
        (shared.data.DataUnavailableError("f.txt: could not get it"), "error: f.txt: could not get it"),
    ):  # fmt: skip
        with pytest.raises(SystemExit) as info, errors_as_one_line():
            raise err
        assert info.value.code == message
    with pytest.raises(KeyError), errors_as_one_line():  # a bug stays a traceback
        raise KeyError("bug")


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("ch05/train.py", ["--data", "{latin1}"], "error: {latin1}: not UTF-8 text"),
        (
            "ch05/train.py",
            ["--data", "{latin1}", "--token-file", "{tmp}/t.bin", "--prepare-only"],
            "error: {latin1}: not UTF-8 text",
        ),
        ("ch07/finetune_instructions.py", ["--data", "{latin1}"], "error: {latin1}: not UTF-8"),
        ("ch07/finetune_instructions.py", ["--data", "{json}"], "error: {json}: not valid JSON"),
        ("ch07/score_responses.py", ["--responses", "{json}"], "error: {json}: not valid JSON"),
        (
            "ch07/finetune_instructions.py",
            ["--data", "{entries}"],
            "error: {entries}: entry 1 has no 'output' field",
        ),
        (
            "ch05/train.py",
            ["--data", "{short}", "--context-length", "256"],
            "error: the training text has ",
        ),
    ],
)
def test_scripts_report_bad_files_in_one_line(script, args, expected, tmp_path, latin1):
    paths = {"latin1": latin1, "tmp": tmp_path}
    paths["json"] = tmp_path / "broken.json"
    paths["json"].write_text("[{", encoding="utf-8")
    paths["entries"] = tmp_path / "entries.json"
    paths["entries"].write_text(
        json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}])
    )
    paths["short"] = tmp_path / "short.txt"
    paths["short"].write_text("Far too short.", encoding="utf-8")
    message = main_exit(script, *(a.format(**paths) for a in args))
    assert message.startswith(expected.format(**paths)) and "\n" not in message, message


def test_too_short_text_names_the_context_length_flag(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Far too short. " * 30, encoding="utf-8")
    assert main_exit("ch05/train.py", "--data", short, "--context-length", "64") == (
        "error: the validation text (--val-fraction) has 13 tokens, too few for one window of "
        "--context-length 64 plus its one-token-shifted target (needs 65); use more text or a "
        "smaller --context-length"
    )


# --- data and weights that cannot be had -------------------------------------------------------


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network, an empty cache and mirror, the test suite's switch unset; the tokenizer's
    cached encoding dropped, so it too must be fetched."""
    monkeypatch.setenv(shared.data.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(shared.data.MIRROR_ENV, str(tmp_path / "mirror"))
    monkeypatch.delenv(STANDIN_ENV, raising=False)

    def unreachable(url, out, quiet=False):
        raise urllib.error.URLError(OSError("Network is unreachable (test)"))

    monkeypatch.setattr(shared.data, "download_to", unreachable)
    gpt2_tokenizer.cache_clear()
    yield tmp_path
    gpt2_tokenizer.cache_clear()


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("ch04/generate_untrained.py", ["Hello"]),
        ("ch05/train.py", ["--data", "{corpus}"]),
        ("ch05/generate.py", ["--gpt2", "124M"]),
        ("ch07/finetune_instructions.py", ["--standin"]),
    ],
)
def test_missing_data_is_one_line(offline, script, args):
    corpus = offline / "corpus.txt"
    corpus.write_text("Every effort moves you. " * 100, encoding="utf-8")
    message = main_exit(script, *(a.format(corpus=corpus) for a in args))
    assert re.match(
        r"error: (gpt2/\S+|instruction-data\.json): could not get it from https://", message
    )
    assert "Network is unreachable (test)" in message and "\n" not in message


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("ch05/generate.py", ["--gpt2", "124M", "--require-gpt2"]),
        ("ch06/train_classifier.py", ["train", "--require-gpt2"]),
        ("ch07/finetune_instructions.py", ["--data", "{entries}", "--gpt2", "124M", "--require-gpt2"]),
    ],
)  # fmt: skip
@pytest.mark.skipif(REAL_MIRROR is None, reason=f"{shared.data.MIRROR_ENV} is not set")
def test_require_gpt2_stops_with_an_error(offline, monkeypatch, script, args):
    entries = offline / "entries.json"
    entries.write_text(
        json.dumps([{"instruction": f"Say {i}.", "output": str(i)} for i in range(40)])
    )
    empty_mirror = shared.data.mirror_dir()
    monkeypatch.setenv(shared.data.MIRROR_ENV, str(REAL_MIRROR))
    gpt2_tokenizer()  # the tokenizer from the real mirror (kept by its cache); the weights nowhere
    monkeypatch.setenv(shared.data.MIRROR_ENV, str(empty_mirror))
    args = [a.format(entries=entries) for a in args]
    message = main_exit(script, *args)
    assert message.startswith(
        "error: gpt2-124M/model.safetensors: could not get it from "
        "https://huggingface.co/openai-community/gpt2/resolve/main/model.safetensors: "
        "Network is unreachable (test). "
    ), message
    monkeypatch.setenv(STANDIN_ENV, "1")  # the switch never hides a requirement
    assert f"required, but {STANDIN_ENV}=1 is set" in main_exit(script, *args)


def test_require_gpt2_contradicts_the_standin():
    for script, args in (
        ("ch06/train_classifier.py", ["train", "--standin", "--require-gpt2"]),
        ("ch07/finetune_instructions.py", ["--standin", "--require-gpt2"]),
        ("ch05/generate.py", ["--checkpoint", "x.pth", "--require-gpt2"]),
        ("ch05/generate.py", ["--standin", "--require-gpt2"]),
    ):
        assert main_exit(script, *args) == 2  # argparse's usage error
