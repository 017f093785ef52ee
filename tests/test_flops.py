"""shared.flops: the hand-derived FLOP counts of GPTModel against PyTorch's FlopCounterMode, part
by part, for several widths, depths, vocabularies and lengths; training = 3 forward passes; and
ch04/flops.ipynb's counting helper."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from shared.flops import PARTS, forward_flops, matmul_peak, training_flops
from shared.gpt import GPT2_MODEL_CONFIGS, GPTModel
from tests.notebook_code import notebook_definitions

pytestmark = pytest.mark.usefixtures("one_thread")


def config(emb_dim: int, n_heads: int, n_layers: int, vocab_size: int, qkv_bias: bool) -> dict:
    return {
        "vocab_size": vocab_size,
        "context_length": 48,
        "emb_dim": emb_dim,
        "n_heads": n_heads,
        "n_layers": n_layers,
        "drop_rate": 0.0,
        "qkv_bias": qkv_bias,
    }


SHAPES = [  # (config, tokens, sequences)
    (config(32, 2, 1, 97, False), 5, 1),
    (config(48, 4, 2, 300, True), 20, 3),
    (config(64, 8, 3, 1000, False), 48, 2),
]


@pytest.fixture(scope="module")
def notebook():
    return notebook_definitions("ch04/flops.ipynb")


@pytest.mark.parametrize(("cfg", "tokens", "batch"), SHAPES)
def test_forward_flops_equal_the_counter_part_by_part(notebook, cfg, tokens, batch):
    torch.manual_seed(0)
    model = GPTModel(cfg)
    ids = torch.randint(0, cfg["vocab_size"], (batch, tokens))
    with FlopCounterMode(display=False) as counter:
        model(ids)
    expected = forward_flops(cfg, tokens, batch_size=batch)
    assert list(expected) == list(PARTS)
    assert counter.get_total_flops() == sum(expected.values())
    assert notebook["counted_by_part"](model, ids) == expected


@pytest.mark.parametrize(("cfg", "tokens", "batch"), SHAPES)
def test_a_training_step_is_three_forward_passes(cfg, tokens, batch):
    torch.manual_seed(0)
    model = GPTModel(cfg)
    ids = torch.randint(0, cfg["vocab_size"], (batch, tokens))
    with FlopCounterMode(display=False) as counter:
        model(ids).logsumexp(-1).mean().backward()
    assert (
        counter.get_total_flops()
        == training_flops(cfg, tokens, batch)
        == 3 * sum(forward_flops(cfg, tokens, batch).values())
    )


def test_the_readme_figures_follow_from_the_formulas():
    gpt2 = GPT2_MODEL_CONFIGS["124M"]
    # README: 770 MFLOP per training token at context 256; 2 x (12 L d^2 + 2 L T d + d V) forward.
    assert round(training_flops(gpt2, 256) / 256 / 1e6) == 770
    d, layers, vocab, n = gpt2["emb_dim"], gpt2["n_layers"], gpt2["vocab_size"], 1024
    per_token = 2 * (12 * layers * d**2 + 2 * layers * n * d + d * vocab)
    assert sum(forward_flops(gpt2, n).values()) == n * per_token


def test_matmul_peak_is_a_positive_rate():
    assert matmul_peak(torch.float32, torch.device("cpu"), n=64, seconds=0.01) > 0
