"""ch04/generate_untrained.py end to end, on the tiny configuration."""

from __future__ import annotations

import ast
import subprocess

import pytest
import torch

from shared.gpt import GPT_CONFIG_124M, GPTModel, generate_text_simple
from shared.tokenizers import gpt2_tokenizer
from tests.notebook_code import REPO
from tests.scripts import load_script, run_main, run_script

SCRIPT = REPO / "ch04" / "generate_untrained.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return run_script(SCRIPT, *args, check=False)


def token_ids(stdout: str) -> list[int]:
    line = next(line for line in stdout.splitlines() if line.startswith("Token ids: "))
    return ast.literal_eval(line.removeprefix("Token ids: "))


@pytest.fixture(scope="module")
def script():
    return load_script(SCRIPT)


def test_help_lists_the_options():
    result = run_main(SCRIPT, "--help")
    assert result.returncode == 0
    for option in ("--max-new-tokens", "--seed", "--size", "--device", "prompt"):
        assert option in result.stdout


def test_generates_what_generate_text_simple_generates(script):
    prompt = "Hello, I am"
    result = run(
        prompt, "--size", "tiny", "--max-new-tokens", "7", "--seed", "5", "--device", "cpu"
    )
    assert result.returncode == 0, result.stderr
    ids = token_ids(result.stdout)

    tokenizer = gpt2_tokenizer()
    prompt_ids = tokenizer.encode(prompt)
    assert prompt_ids == [15496, 11, 314, 716]  # GPT-2's ids, as tiktoken gives them
    cfg = script.model_config("tiny")
    torch.manual_seed(5)
    model = GPTModel(cfg).eval()
    expected = generate_text_simple(model, torch.tensor([prompt_ids]), 7, cfg["context_length"])
    assert ids == expected[0].tolist()
    assert f"Output: {tokenizer.decode(ids)!r}" in result.stdout
    n_params = sum(p.numel() for p in model.parameters())
    assert f"({n_params:,} parameters), seed 5" in result.stdout


def test_seed_decides_the_weights():
    first = token_ids(run_main(SCRIPT, "Every effort", "--size", "tiny", "--seed", "1").stdout)
    other = token_ids(run_main(SCRIPT, "Every effort", "--size", "tiny", "--seed", "2").stdout)
    assert len(first) == len(other) == 2 + 10  # 2 prompt tokens, 10 new tokens by default
    assert first[:2] == other[:2]
    assert first[2:] != other[2:]


def test_long_prompt_is_cropped_to_the_context(script):
    context = script.model_config("tiny")["context_length"]
    prompt = " ".join(["word"] * (context + 10))
    result = run_main(SCRIPT, prompt, "--size", "tiny", "--max-new-tokens", "3")
    assert result.returncode == 0, result.stderr
    assert f"longer than the context of {context} tokens" in result.stdout
    assert len(token_ids(result.stdout)) == context + 10 + 3


def test_model_configs(script):
    assert script.model_config("124M") == GPT_CONFIG_124M
    xl = script.model_config("1558M")
    assert (xl["emb_dim"], xl["n_layers"], xl["n_heads"]) == (1600, 48, 25)
    with pytest.raises(ValueError, match="unknown size"):
        script.model_config("7B")


@pytest.mark.parametrize(
    "args,message",
    [
        (["   "], "the prompt is empty"),
        (["Hi", "--max-new-tokens", "-1"], "expected a whole number >= 0"),
        (["Hi", "--size", "huge"], "invalid choice"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(script, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
