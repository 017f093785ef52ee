"""Tests of shared.lora: adapters start as no change, train alone, and merge into plain layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shared.classification import convert_to_classifier
from shared.gpt import GPTModel
from shared.lora import LoRALinear, add_lora, count_parameters, merge_lora
from tests.conftest import TINY
from tests.notebook_code import notebook_definitions

CONFIG = {**TINY, "vocab_size": 50, "context_length": 8, "emb_dim": 16, "qkv_bias": True}


def trained_like(layer: LoRALinear) -> LoRALinear:
    """The layer with a random (non-zero) up weight, as after some training."""
    with torch.no_grad():
        layer.up.weight.normal_()
    return layer


def test_lora_linear_shapes_zero_start_and_scaled_update():
    torch.manual_seed(0)
    base = nn.Linear(6, 4)
    layer = LoRALinear(base, rank=3, alpha=8)
    assert layer.down.weight.shape == (3, 6) and layer.up.weight.shape == (4, 3)
    assert layer.down.bias is None and layer.up.bias is None
    assert torch.count_nonzero(layer.up.weight) == 0 and torch.count_nonzero(layer.down.weight) > 0
    # down starts as nn.Linear(6, 3) would: uniform within 1/sqrt(d_in)
    assert layer.down.weight.abs().max() <= 6**-0.5
    x = torch.randn(2, 5, 6)
    assert torch.equal(layer(x), base(x))
    trained_like(layer)
    expected = base(x) + (8 / 3) * (x @ layer.down.weight.T @ layer.up.weight.T)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.delta_weight(), (8 / 3) * layer.up.weight @ layer.down.weight)
    assert torch.linalg.matrix_rank(layer.delta_weight()) <= 3
    for rank in (0, -1, 2.0):
        with pytest.raises(ValueError, match="rank must be a positive integer"):
            LoRALinear(base, rank=rank, alpha=1)


def test_add_lora_keeps_outputs_and_trains_only_the_adapters():
    torch.manual_seed(0)
    model = GPTModel(CONFIG)
    x = torch.randint(0, 50, (2, 8))
    before = model(x).detach()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    total = count_parameters(model)

    assert add_lora(model, rank=4, alpha=4) is model
    assert torch.equal(model(x).detach(), before)
    adapted = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert [m.base for m in adapted] == linears  # every linear layer, in order, wrapped once
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.endswith((".down.weight", ".up.weight")) for name in trainable)
    expected = sum(4 * (m.base.in_features + m.base.out_features) for m in adapted)
    assert count_parameters(model) == expected
    assert count_parameters(model, trainable_only=False) == total + expected

    # One optimizer step moves only the adapters.
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(x).sum().backward()
    optimizer.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert not torch.equal(model(x).detach(), before)


def test_adapters_follow_the_base_layers_device_and_dtype():
    layer = LoRALinear(nn.Linear(6, 4, dtype=torch.float64), rank=2, alpha=2)
    assert layer.down.weight.dtype == layer.up.weight.dtype == torch.float64


def test_merged_layer_computes_base_plus_update():
    torch.manual_seed(0)
    layer = trained_like(LoRALinear(nn.Linear(6, 4), rank=3, alpha=6))
    model = nn.Sequential(layer)
    x = torch.randn(5, 6)
    expected = layer(x).detach()
    merge_lora(model)
    merged = model[0]
    assert type(merged) is nn.Linear and merged.weight.shape == (4, 6)
    torch.testing.assert_close(merged.weight, layer.base.weight + layer.delta_weight())
    assert torch.equal(merged.bias, layer.base.bias)
    torch.testing.assert_close(merged(x), expected)  # float32 rounding: rtol 1.3e-6, atol 1e-5
    no_bias = nn.Sequential(LoRALinear(nn.Linear(6, 4, bias=False), rank=2, alpha=2))
    assert merge_lora(no_bias)[0].bias is None


def test_merging_a_lora_classifier_keeps_its_predictions():
    torch.manual_seed(0)
    model = convert_to_classifier(GPTModel(CONFIG), num_classes=2, trainable_blocks="all")
    keys = list(model.state_dict())
    add_lora(model, rank=4, alpha=8)
    for module in model.modules():
        if isinstance(module, LoRALinear):
            trained_like(module)
    x = torch.randint(0, 50, (16, 8))
    model.eval()
    logits = model(x)[:, -1, :].detach()
    assert merge_lora(model) is model
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert list(model.state_dict()) == keys  # loadable into the plain classifier
    merged_logits = model(x)[:, -1, :].detach()
    torch.testing.assert_close(merged_logits, logits, atol=1e-5, rtol=0)
    assert torch.equal(merged_logits.argmax(-1), logits.argmax(-1))
    assert count_parameters(model) == 0  # the frozen base stays frozen


def test_lora_notebook_builds_what_shared_lora_holds():
    nb = notebook_definitions("ch06/lora-classification.ipynb")
    torch.manual_seed(0)
    base = nn.Linear(6, 4)
    x = torch.randn(3, 6)
    torch.manual_seed(1)
    ours = trained_like(LoRALinear(base, rank=2, alpha=4))
    torch.manual_seed(1)
    theirs = nb["LoRALinear"](base, rank=2, alpha=4)
    assert torch.equal(theirs.down.weight, ours.down.weight)
    with torch.no_grad():
        theirs.up.weight.copy_(ours.up.weight)
    torch.testing.assert_close(theirs(x), ours(x))

    torch.manual_seed(0)
    model_a = GPTModel(CONFIG)
    model_b = GPTModel(CONFIG)
    model_b.load_state_dict(model_a.state_dict())
    torch.manual_seed(2)
    add_lora(model_a, rank=2, alpha=2)
    nb["freeze"](model_b)
    torch.manual_seed(2)
    nb["wrap_linear_layers"](model_b, rank=2, alpha=2)
    assert list(model_a.state_dict()) == list(model_b.state_dict())
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), name
    assert [p.requires_grad for p in model_a.parameters()] == [
        p.requires_grad for p in model_b.parameters()
    ]
