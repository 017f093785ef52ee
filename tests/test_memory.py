"""shared.memory: the activations it predicts equal, byte for byte, what autograd saves (tiny
configs, dropout on and off, with and without checkpointing, float32 and bfloat16); weights,
gradients and AdamW's state equal the real tensors'; the KV cache equals a real cache's nbytes;
the predicted peak of a training step is within TOLERANCE of the peak measured in a separate
process (tiny, small and medium configs); bad input is a clear ValueError; ch04/memory-planner's
hand-written counts agree with the module; ch04/plan_memory.py prints the module's plan and
turns bad input into one line."""

from __future__ import annotations

import json
import re

import pytest
import torch

from shared.gpt import GPT2_MODEL_CONFIGS, GPTModel
from shared.kv_cache import KVCacheGPTModel
from shared.memory import (
    TOLERANCE,
    activation_bytes,
    as_dtype,
    format_bytes,
    inference_memory,
    kv_cache_bytes,
    largest_batch_size,
    measure_peaks,
    parameter_count,
    saved_tensor_bytes,
    training_memory,
    training_step,
    within_tolerance,
)
from tests.conftest import TINY
from tests.notebook_code import REPO, notebook_definitions
from tests.scripts import run_main, run_script

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {**TINY, "vocab_size": 97, "context_length": 12, "emb_dim": 12, "n_heads": 3}
SHAPES = [  # (config, batch, tokens)
    (SMALL, 2, 7),
    ({**SMALL, "qkv_bias": True, "n_layers": 3}, 1, 12),
    ({**SMALL, "n_heads": 1, "n_layers": 1, "vocab_size": 5}, 3, 1),
]
DROPOUT = {  # none, everywhere, and only some places (the separate rates of exercise 4.3)
    "no dropout": {"drop_rate": 0.0},
    "dropout": {"drop_rate": 0.1},
    "attention dropout only": {"drop_rate": 0.0, "drop_rate_attn": 0.2},
    "no attention dropout": {"drop_rate": 0.1, "drop_rate_attn": 0.0},
}


@pytest.fixture(scope="module")
def notebook():
    return notebook_definitions("ch04/memory-planner.ipynb")


def batch(cfg: dict, b: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randint(0, cfg["vocab_size"], (b, n)), torch.randint(0, cfg["vocab_size"], (b, n))


@pytest.mark.parametrize("checkpointing", [False, True], ids=["kept", "checkpointed"])
@pytest.mark.parametrize("dropout", list(DROPOUT))
@pytest.mark.parametrize(("cfg", "b", "n"), SHAPES)
def test_activations_equal_what_autograd_saves(cfg, b, n, dropout, checkpointing):
    cfg = {**cfg, **DROPOUT[dropout]}
    torch.manual_seed(0)
    model = GPTModel(cfg)
    ids, targets = batch(cfg, b, n)
    saved = saved_tensor_bytes(model, ids, targets, checkpointing)
    assert saved == sum(activation_bytes(cfg, b, n, checkpointing=checkpointing).values())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_activations_in_half_precision(dtype):
    cfg, b, n = {**SHAPES[0][0], "drop_rate": 0.1}, 2, 7
    torch.manual_seed(0)
    model = GPTModel(cfg).to(dtype)
    ids, targets = batch(cfg, b, n)
    for checkpointing in (False, True):
        predicted = activation_bytes(cfg, b, n, dtype, checkpointing)
        assert saved_tensor_bytes(model, ids, targets, checkpointing) == sum(predicted.values())
    float32 = activation_bytes(cfg, b, n, checkpointing=True)
    assert predicted["token ids"] == float32["token ids"]  # int64 whatever the dtype
    assert predicted["block inputs"] * 2 == float32["block inputs"]


def test_weights_gradients_and_optimizer_state_equal_the_tensors():
    cfg, b, n = {**SHAPES[1][0], "drop_rate": 0.1}, 2, 5
    torch.manual_seed(0)
    model = GPTModel(cfg)
    optimizer = torch.optim.AdamW(model.parameters())
    training_step(model, optimizer, *batch(cfg, b, n))
    plan = training_memory(cfg, b, n)
    params = list(model.parameters())
    assert sum(p.numel() for p in params) == parameter_count(cfg)
    assert plan.parts["weights"] == sum(t.nbytes for t in (*params, *model.buffers()))
    assert plan.parts["gradients"] == sum(p.grad.nbytes for p in params)
    state = [t for p in params for t in optimizer.state[p].values()]
    assert len(state) == 3 * len(params)  # step, exp_avg, exp_avg_sq
    assert plan.parts["optimizer state"] == sum(t.nbytes for t in state)


def test_gpt2_parameter_counts():
    counts = {size: parameter_count(cfg) for size, cfg in GPT2_MODEL_CONFIGS.items()}
    # GPTModel's head is not tied to the embedding: the released counts plus V x d.
    assert counts == {
        "124M": 124_439_808 + 38_597_376,
        "355M": 354_823_168 + 51_463_168,
        "774M": 774_030_080 + 64_328_960,
        "1558M": 1_557_611_200 + 80_411_200,
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_cache_bytes_equal_a_real_cache(dtype):
    cfg = {**SHAPES[1][0], "context_length": 20}
    torch.manual_seed(0)
    model = KVCacheGPTModel(cfg).to(dtype).eval()
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.randint(0, cfg["vocab_size"], (3, 9)), cache)  # a prompt of 9 tokens
        for _ in range(4):  # and 4 generated ones
            model(torch.randint(0, cfg["vocab_size"], (3, 1)), cache)
    assert cache.length == 13
    assert cache.nbytes == kv_cache_bytes(cfg, 3, 13, dtype)
    assert cache.nbytes == 2 * cfg["n_layers"] * 3 * 13 * cfg["emb_dim"] * dtype.itemsize
    plan = inference_memory(cfg, 3, 13, dtype)
    assert plan.parts["KV cache"] == cache.nbytes and plan.peak == sum(plan.parts.values())


MEDIUM = {
    "vocab_size": 50257,
    "context_length": 256,
    "emb_dim": 128,
    "n_heads": 4,
    "n_layers": 4,
    "drop_rate": 0.1,
    "qkv_bias": True,
}
MEASURED = [  # tiny first: a later run may reuse memory an earlier one freed
    ("tiny", dict(cfg=TINY, batch_size=2, num_tokens=16)),
    ("small, checkpointed", dict(cfg={**MEDIUM, "vocab_size": 1000, "n_heads": 8},
                                 batch_size=4, num_tokens=256, checkpointing=True)),
    ("medium", dict(cfg=MEDIUM, batch_size=2, num_tokens=256)),
]  # fmt: skip


def test_predicted_peaks_are_within_the_tolerance_of_measured_ones():
    measured = measure_peaks([run for _, run in MEASURED])
    moments = set()
    for (name, run), peak in zip(MEASURED, measured, strict=True):
        plan = training_memory(
            run["cfg"], run["batch_size"], run["num_tokens"],
            checkpointing=run.get("checkpointing", False),
        )  # fmt: skip
        moments.add(plan.peak_moment)
        assert within_tolerance(peak, plan.peak), (name, peak, plan.peak, plan.peak_moment)
        # What the tolerance allows is smaller than any part a plan could forget.
        share, slack = TOLERANCE
        assert min(plan.parts.values()) > share * plan.peak + slack, name
    assert moments == {"optimizer step", "bottom block backward", "loss backward"}


def test_within_tolerance():
    mib = 2**20
    assert within_tolerance(102 * mib, 100 * mib) and within_tolerance(96 * mib, 100 * mib)
    assert not within_tolerance(105 * mib, 100 * mib) and not within_tolerance(0, 100 * mib)


def test_largest_batch_size():
    cfg, gib = GPT2_MODEL_CONFIGS["124M"], 2**30
    b = largest_batch_size(cfg, 7 * gib, 1024)
    assert training_memory(cfg, b, 1024, device="cuda").peak <= 7 * gib
    assert training_memory(cfg, b + 1, 1024, device="cuda").peak > 7 * gib
    assert largest_batch_size(cfg, gib, 1024) == 0  # 163M parameters x 16 bytes > 1 GiB
    check = largest_batch_size(cfg, 7 * gib, 1024, checkpointing=True)
    assert check > b
    assert largest_batch_size(cfg, 7 * gib, 1024, training=False) > check


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: training_memory(TINY, 2, 8, dtype="float8"), "unknown dtype 'float8'; choose"),
        (lambda: activation_bytes(TINY, 2, 8, dtype=torch.int64), "unknown dtype torch.int64"),
        (lambda: training_memory(TINY, 0, 8), "batch_size must be a whole number >= 1, got 0"),
        (lambda: training_memory(TINY, 2, -1), "num_tokens must be a whole number >= 1, got -1"),
        (lambda: training_memory(TINY, 2.5, 8), "batch_size must be a whole number >= 1, got 2.5"),
        (lambda: kv_cache_bytes(TINY, True, 8), "batch_size must be a whole number >= 1, got True"),
        (lambda: training_memory(TINY, 2, 17), "num_tokens (17) exceeds the context_length (16)"),
        (lambda: inference_memory(TINY, 1, 8, new_tokens=9), "new_tokens (9) exceeds num_tokens"),
        (lambda: training_memory({**TINY, "emb_dim": 0}, 2, 8), "cfg['emb_dim'] must be a whole"),
        (lambda: training_memory({**TINY, "n_heads": 3}, 2, 8), "must be divisible by n_heads"),
        (lambda: training_memory({"emb_dim": 8}, 2, 8), "the config lacks vocab_size"),
        (lambda: training_memory({**TINY, "drop_rate": "0.1"}, 2, 8), "dropout rates must be"),
        (lambda: training_memory({**TINY, "drop_rate_attn": 1.0}, 2, 8), "< 1, got 1.0"),
        (lambda: largest_batch_size(TINY, 0, 8), "memory_bytes must be > 0, got 0"),
    ],
)
def test_bad_input_is_a_clear_value_error(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value)


def test_the_notebook_counts_as_the_module(notebook):
    cfg, b, n = {**SHAPES[0][0], "drop_rate": 0.1}, 2, 7
    torch.manual_seed(0)
    model = GPTModel(cfg)
    ids, targets = batch(cfg, b, n)
    for checkpointing in (False, True):
        expected = saved_tensor_bytes(model, ids, targets, checkpointing)
        assert notebook["saved_bytes"](model, ids, targets, checkpointing) == expected
    for cfg, b, n in SHAPES:
        for rate in (0.0, 0.1):
            cfg = {**cfg, "drop_rate": rate}
            by_hand = notebook["activations_by_hand"](cfg, b, n, 4)
            assert by_hand == sum(activation_bytes(cfg, b, n).values())


def test_dtype_names():
    assert as_dtype("bfloat16") is as_dtype("torch.bfloat16") is torch.bfloat16
    assert as_dtype(torch.float16) is torch.float16


# --- ch04/plan_memory.py -------------------------------------------------------------------------

SCRIPT = REPO / "ch04" / "plan_memory.py"


def test_script_help():
    result = run_script(SCRIPT, "--help")
    for option in ("--size", "--config", "--batch-size", "--context-length", "--dtype",
                   "--checkpointing", "--measure", "--device"):  # fmt: skip
        assert option in result.stdout


def test_script_prints_the_plan_of_shared_memory(tmp_path):
    cfg = {**MEDIUM, "n_layers": 2}
    path = tmp_path / "model.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    args = ("--config", path, "--batch-size", 3, "--context-length", 64, "--dtype", "bf16")
    result = run_main(SCRIPT, *args, "--checkpointing", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    plan = training_memory(cfg, 3, 64, torch.bfloat16, checkpointing=True)
    generation = inference_memory(cfg, 3, 64, torch.bfloat16)
    for part, count in (*plan.parts.items(), *generation.parts.items()):
        assert re.search(rf"\n  {part} +{re.escape(format_bytes(count))}\n", result.stdout), part
    assert f"{format_bytes(plan.peak)}   (at: {plan.peak_moment})" in result.stdout
    assert generation.parts["KV cache"] == kv_cache_bytes(cfg, 3, 64, "bf16")
    fits = [largest_batch_size(cfg, (gb - 1) * 2**30, 64, "bf16", training=False)
            for gb in (8, 16, 24)]  # fmt: skip
    assert re.search(r"generation, bfloat16 +" + " +".join(map(str, fits)), result.stdout)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--context-length", "2048"], "error: --context-length 2048 exceeds the model's "
         "context_length (1024)"),
        (["--config", "{dir}/missing.json"], "error: {dir}/missing.json: No such file"),
        (["--config", "{dir}/list.json"], "error: {dir}/list.json: expected a JSON object"),
        (["--config", "{dir}/partial.json"], "error: {dir}/partial.json: the config lacks "
         "context_length, n_heads"),
        (["--config", "{dir}/odd.json"], "error: emb_dim (64) must be divisible by n_heads"),
    ],
)  # fmt: skip
def test_script_bad_input_is_one_line(tmp_path, args, error):
    (tmp_path / "list.json").write_text("[1, 2]", encoding="utf-8")
    (tmp_path / "partial.json").write_text('{"vocab_size": 10, "emb_dim": 64}', encoding="utf-8")
    odd = {**MEDIUM, "emb_dim": 64, "n_heads": 3}
    (tmp_path / "odd.json").write_text(json.dumps(odd), encoding="utf-8")
    result = run_main(SCRIPT, *(arg.format(dir=tmp_path) for arg in args))
    assert result.returncode == 1
    assert result.stderr.startswith(error.format(dir=tmp_path)) and result.stderr.count("\n") == 1


def test_script_rejects_bad_sizes_with_a_usage_error():
    for args in (["--batch-size", "0"], ["--dtype", "fp8"], ["--size", "7B"]):
        result = run_main(SCRIPT, *args)
        assert result.returncode == 2 and "usage:" in result.stderr
