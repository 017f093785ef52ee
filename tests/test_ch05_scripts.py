"""ch05/train.py and ch05/generate.py, end to end on tiny settings."""

from __future__ import annotations

import argparse
import math
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import shared.data
from shared.data import fetch
from shared.fast_attention import FusedMultiHeadAttention
from shared.fused_kernels import FusedLayerNorm
from shared.gpt import GPT2_MODEL_CONFIGS, GPTModel
from shared.gpt2_weights import STANDIN_ENV, STANDIN_NOTE
from shared.pretraining import (
    generate,
    load_checkpoint,
    read_checkpoint_extra,
    save_checkpoint,
    text_to_token_ids,
    token_ids_to_text,
)
from shared.tokenizers import gpt2_tokenizer
from tests.conftest import TINY
from tests.notebook_code import REPO
from tests.scripts import load_script, run_main, run_script

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = REPO / "ch05" / "train.py"
GENERATE = REPO / "ch05" / "generate.py"

TINY_ARGS = ["--size", "tiny", "--context-length", "16", "--batch-size", "4", "--lr", "3e-3"]
TINY_ARGS += ["--eval-freq", "10"]


def main_error(script: Path, *args) -> str:
    """Run a script in this process (run_main); return its error message (it must fail)."""
    result = run_main(script, *args)
    assert result.returncode != 0, result.stdout
    return result.stderr.strip()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The first 6,000 characters of The Verdict (about 1,500 tokens)."""
    path = tmp_path_factory.mktemp("data") / "verdict-part.txt"
    path.write_text(fetch("the-verdict").read_text(encoding="utf-8")[:6000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> Path:
    """A tiny model trained for two epochs by train.py; returns its checkpoint directory."""
    out = tmp_path_factory.mktemp("run")
    result = run_script(
        TRAIN, "--data", corpus, *TINY_ARGS, "--epochs", "2", "--checkpoint-dir", out
    )
    assert "Ep 2 (Step" in result.stdout and "Final train loss" in result.stdout
    assert "Training" in result.stderr  # the progress bar
    return out


def test_help():
    for script, option in ((TRAIN, "--checkpoint-dir"), (GENERATE, "--top-k")):
        result = run_main(script, "--help")
        assert option in result.stdout and "usage" in result.stdout


def test_train_writes_checkpoint_plot_and_lowers_the_loss(trained):
    assert (trained / "losses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    extra = read_checkpoint_extra(trained / "last.pth")
    assert extra["epoch"] == 2
    assert extra["config"]["emb_dim"] == 64 and extra["config"]["context_length"] == 16
    losses = extra["train_losses"]
    assert len(losses) == len(extra["val_losses"]) == len(extra["track_tokens_seen"]) >= 3
    assert losses[0] > 10.5 and losses[-1] < losses[0] - 1.0
    assert extra["tokens_seen"] == extra["global_step"] * 4 * 16


def test_resume_continues_exactly(corpus, trained, tmp_path):
    run_script(TRAIN, "--data", corpus, *TINY_ARGS, "--epochs", "1", "--checkpoint-dir", tmp_path)
    assert read_checkpoint_extra(tmp_path / "last.pth")["epoch"] == 1
    result = run_script(
        TRAIN,
        "--data",
        corpus,
        *TINY_ARGS,
        "--epochs",
        "2",
        "--checkpoint-dir",
        tmp_path,
        "--resume",
    )
    assert "Resuming from" in result.stdout and "after epoch 1" in result.stdout
    resumed = read_checkpoint_extra(tmp_path / "last.pth")
    straight = read_checkpoint_extra(trained / "last.pth")
    assert resumed["global_step"] == straight["global_step"]
    assert resumed["train_losses"] == pytest.approx(straight["train_losses"], rel=1e-5)
    assert resumed["val_losses"] == pytest.approx(straight["val_losses"], rel=1e-5)


def test_resume_with_another_model_is_refused(corpus, trained, tmp_path):
    (tmp_path / "last.pth").write_bytes((trained / "last.pth").read_bytes())
    args = ["--data", corpus, "--size", "small", "--context-length", "16"]
    message = main_error(TRAIN, *args, "--epochs", "3", "--checkpoint-dir", tmp_path, "--resume")
    assert "pass the same --size" in message and "'emb_dim': 64" in message


def test_train_reports_bad_data_clearly(tmp_path):
    message = main_error(TRAIN, "--data", tmp_path / "missing.txt")
    assert message.startswith("error:") and "missing.txt does not exist" in message
    short = tmp_path / "short.txt"
    short.write_text("Just a few words.", encoding="utf-8")
    assert "too few for one window" in main_error(TRAIN, "--data", short, *TINY_ARGS)
    # The same message reaches a user of the command line, without a traceback.
    result = run_script(TRAIN, "--data", short, *TINY_ARGS, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("error: the training text has 4 tokens, too few for one window")
    assert "--context-length 16" in result.stderr and "Traceback" not in result.stderr


def test_generate_from_checkpoint(trained):
    ckpt = trained / "last.pth"
    prompt = "Every effort moves you"
    greedy = run_script(
        GENERATE,
        "--checkpoint",
        ckpt,
        "--prompt",
        prompt,
        "--temperature",
        "0",
        "--max-new-tokens",
        "12",
    )
    # The same greedy text, computed here from the checkpoint.
    config = read_checkpoint_extra(ckpt)["config"]
    model = GPTModel(config)
    load_checkpoint(ckpt, model)
    tokenizer = gpt2_tokenizer()
    expected_ids = generate(
        model.eval(), text_to_token_ids(prompt, tokenizer), 12, 16, eos_id=tokenizer.eot_token
    )
    assert greedy.stdout.splitlines()[0].startswith("Model: ")
    assert greedy.stdout.split("\n", 1)[1].rstrip("\n") == token_ids_to_text(
        expected_ids, tokenizer
    )
    sampled = run_main(GENERATE, "--checkpoint", ckpt, "--temperature", "1.5", "--seed", "7")
    assert sampled.stdout.count(prompt) == 1 and sampled.stdout != greedy.stdout


def test_generate_same_seed_same_text(trained, capsys):
    args = ["--checkpoint", str(trained / "last.pth"), "--temperature", "1.5", "--top-k", "20"]
    texts = []
    for seed in ("7", "7", "8"):
        load_script(GENERATE).main([*args, "--seed", seed])
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] != texts[2]


def test_generate_reports_bad_checkpoints(tmp_path):
    assert "does not exist" in main_error(GENERATE, "--checkpoint", tmp_path / "nope.pth")
    save_checkpoint(tmp_path / "no-config.pth", torch.nn.Linear(2, 2))  # no config entry
    assert "holds no model config" in main_error(
        GENERATE, "--checkpoint", tmp_path / "no-config.pth"
    )
    for gpt2 in (["--standin"], ["--gpt2", "355M"], ["--gpt2=124M"]):
        with pytest.raises(SystemExit) as exit_info:  # argparse: a checkpoint is not GPT-2
            load_script(GENERATE).main(["--checkpoint", "x.pth", *gpt2])
        assert exit_info.value.code == 2


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty cache and mirror and no network (the tokenizer is built before, from the mirror)."""
    gpt2_tokenizer()
    monkeypatch.setenv(shared.data.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(shared.data.MIRROR_ENV, str(tmp_path / "mirror"))

    def unreachable(url, out, quiet=False):
        raise urllib.error.URLError("network unreachable (test)")

    monkeypatch.setattr(shared.data, "download_to", unreachable)
    monkeypatch.delenv(STANDIN_ENV, raising=False)  # the test suite's switch would skip the fetch
    return tmp_path


def test_generate_gpt2_offline_uses_the_standin(offline, capsys):
    load_script(GENERATE).main(["--gpt2", "124M", "--max-new-tokens", "5", "--temperature", "0"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        "GPT-2 124M weights are not available (network unreachable (test), from http"
    )
    assert lines[0].endswith("); using the stand-in: " + STANDIN_NOTE + ".")
    assert lines[1].startswith("Model: stand-in")
    assert lines[2].startswith("Every effort moves you")


def test_generate_gpt2_from_cached_weights(offline, monkeypatch, capsys):
    config = {**TINY, "n_layers": 1, "qkv_bias": True}  # one block, biased as GPT-2's
    torch.manual_seed(0)
    d = config["emb_dim"]
    params = {
        "wte.weight": torch.randn(config["vocab_size"], d),
        "wpe.weight": torch.randn(config["context_length"], d),
        "ln_f.weight": torch.ones(d),
        "ln_f.bias": torch.zeros(d),
    }
    shapes = {
        "ln_1.weight": (d,),
        "ln_1.bias": (d,),
        "attn.c_attn.weight": (d, 3 * d),
        "attn.c_attn.bias": (3 * d,),
        "attn.c_proj.weight": (d, d),
        "attn.c_proj.bias": (d,),
        "ln_2.weight": (d,),
        "ln_2.bias": (d,),
        "mlp.c_fc.weight": (d, 4 * d),
        "mlp.c_fc.bias": (4 * d,),
        "mlp.c_proj.weight": (4 * d, d),
        "mlp.c_proj.bias": (d,),
    }
    params.update({f"h.0.{name}": torch.randn(shape) for name, shape in shapes.items()})
    cached = offline / "cache" / "gpt2-124M" / "model.safetensors"
    cached.parent.mkdir(parents=True)
    save_file(params, cached)
    monkeypatch.setitem(GPT2_MODEL_CONFIGS, "124M", config)
    load_script(GENERATE).main(["--gpt2", "124M", "--max-new-tokens", "6", "--temperature", "0"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Model: OpenAI GPT-2 124M (gpt2)"
    # The text equals greedy decoding with the same weights loaded here.
    from shared.gpt2_weights import load_weights_into_gpt

    model = GPTModel(config)
    load_weights_into_gpt(model, params)
    tokenizer = gpt2_tokenizer()
    ids = generate(
        model.eval(),
        text_to_token_ids("Every effort moves you", tokenizer),
        6,
        config["context_length"],
        eos_id=tokenizer.eot_token,
    )
    assert "\n".join(out[1:]) == token_ids_to_text(ids, tokenizer)


# Bigger corpora and the speed options (single process; tests/test_distributed.py runs torchrun)


def test_train_streams_a_prepared_token_file_with_speed_options(corpus, tmp_path, capsys):
    from shared.corpus import TOKEN_DTYPE, TokenWindowDataset
    from shared.speed import learning_rate_at

    tokens, run_dir = tmp_path / "tokens.bin", tmp_path / "run"
    train = load_script(TRAIN)
    train.main(["--data", str(corpus), "--token-file", str(tokens), "--prepare-only"])
    assert "Tokenised 1 file(s)" in capsys.readouterr().out and not run_dir.exists()
    text = corpus.read_text(encoding="utf-8")
    assert np.fromfile(tokens, dtype=TOKEN_DTYPE).tolist() == gpt2_tokenizer().encode(text)

    speed = ["--grad-accumulation-steps", "2", "--warmup-steps", "3", "--cosine-decay"]
    speed += ["--min-lr", "1e-4", "--max-grad-norm", "1.0", "--bf16", "--fused-kernels"]
    args = ["--token-file", tokens, *TINY_ARGS, "--epochs", "2", "--checkpoint-dir", run_dir]
    train.main([str(a) for a in [*args, *speed]])
    assert "Final train loss" in capsys.readouterr().out
    extra = read_checkpoint_extra(run_dir / "last.pth")
    batches = int(0.9 * len(TokenWindowDataset(tokens, 16, stride=16))) // 4
    steps = 2 * math.ceil(batches / 2)  # an optimizer step every 2 batches of 4 windows
    assert extra["global_step"] == steps and extra["tokens_seen"] == 2 * batches * 4 * 16
    assert extra["train_losses"][-1] < extra["train_losses"][0] - 1.0
    # --fused-kernels trains the fused twins; the checkpoint's config is the plain model's.
    options = argparse.Namespace(seed=1, lr=1e-3, weight_decay=0.1, fused_kernels=True)
    model, _ = train.build_model_and_optimizer(extra["config"], options, "cpu")
    assert type(model.trf_blocks[0].att) is FusedMultiHeadAttention
    assert type(model.final_norm) is FusedLayerNorm
    GPTModel(extra["config"]).load_state_dict(model.state_dict())  # loads into the plain model
    groups = torch.load(run_dir / "last.pth", weights_only=True)["optimizer_state_dict"]
    group = groups["param_groups"][0]
    assert group["initial_lr"] == 3e-3
    assert group["lr"] == pytest.approx(learning_rate_at(steps - 1, steps, 3e-3, 3, True, 1e-4))


def test_train_reports_bad_token_files_and_flags(tmp_path):
    message = main_error(TRAIN, "--token-file", tmp_path / "missing.bin")
    assert message.startswith("error:") and "missing.bin does not exist" in message
    short = tmp_path / "short.txt"
    short.write_text("Just a few words.", encoding="utf-8")
    message = main_error(TRAIN, "--data", short, "--token-file", tmp_path / "s.bin", *TINY_ARGS)
    assert "too few for one window" in message
    for bad in (
        [],  # neither --data nor --token-file
        ["--data", short, "--prepare-only"],  # nowhere to write the tokens
        ["--data", short, "--grad-accumulation-steps", "0"],
        ["--data", short, "--max-grad-norm", "-1"],
        ["--data", short, "--cosine-decay", "--min-lr", "1.0"],  # above --lr
    ):
        with pytest.raises(SystemExit) as exit_info:  # argparse's usage error
            load_script(TRAIN).main([str(a) for a in bad])
        assert exit_info.value.code == 2, bad
