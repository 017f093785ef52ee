"""Tests of shared.lora: LoRA layers start as the identity update and train only A and B."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shared.classification import convert_to_classifier
from shared.gpt import GPTModel
from shared.lora import (
    LinearWithLoRA,
    LoRALayer,
    count_parameters,
    merge_lora,
    replace_linear_with_lora,
)
from tests.notebook_code import notebook_definitions

TINY_CONFIG = {
    "vocab_size": 50,
    "context_length": 8,
    "emb_dim": 16,
    "n_heads": 2,
    "n_layers": 2,
    "drop_rate": 0.0,
    "qkv_bias": True,
}


def test_lora_layer_shapes_and_zero_start():
    torch.manual_seed(0)
    lora = LoRALayer(in_dim=6, out_dim=4, rank=3, alpha=8)
    assert lora.A.shape == (6, 3) and lora.B.shape == (3, 4)
    assert torch.count_nonzero(lora.B) == 0 and torch.count_nonzero(lora.A) > 0
    x = torch.randn(2, 5, 6)
    assert torch.equal(lora(x), torch.zeros(2, 5, 4))
    with torch.no_grad():
        lora.B.normal_()
    # alpha / rank scaling of x @ A @ B
    assert torch.allclose(lora(x), (8 / 3) * (x @ lora.A @ lora.B))
    with pytest.raises(ValueError, match="rank"):
        LoRALayer(6, 4, rank=0, alpha=1)


def test_wrapped_linear_equals_the_original_at_initialisation():
    torch.manual_seed(0)
    linear = nn.Linear(6, 4)
    wrapped = LinearWithLoRA(linear, rank=2, alpha=4)
    x = torch.randn(3, 6)
    assert torch.equal(wrapped(x), linear(x))


def test_replace_in_gpt_keeps_outputs_and_trains_only_lora():
    torch.manual_seed(0)
    model = GPTModel(TINY_CONFIG)
    x = torch.randint(0, 50, (2, 8))
    before = model(x).detach()
    n_linear = sum(isinstance(m, nn.Linear) for m in model.modules())
    total = count_parameters(model)

    replace_linear_with_lora(model, rank=4, alpha=4)
    assert torch.equal(model(x).detach(), before)
    wrapped = [m for m in model.modules() if isinstance(m, LinearWithLoRA)]
    assert len(wrapped) == n_linear
    assert not any(isinstance(m, nn.Linear) and not _inside_lora(model, m) for m in model.modules())

    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.endswith((".lora.A", ".lora.B")) for name in trainable)
    expected = sum(4 * (m.linear.in_features + m.linear.out_features) for m in wrapped)
    assert count_parameters(model) == expected
    assert count_parameters(model, trainable_only=False) == total + expected

    # One optimizer step moves only A and B.
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(x).sum().backward()
    optimizer.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert not torch.equal(model(x).detach(), before)


def test_merged_layer_computes_base_plus_update():
    torch.manual_seed(0)
    wrapped = LinearWithLoRA(nn.Linear(6, 4), rank=3, alpha=6)
    with torch.no_grad():
        wrapped.lora.B.normal_()
    model = nn.Sequential(wrapped)
    x = torch.randn(5, 6)
    expected = wrapped(x).detach()
    merge_lora(model)
    merged = model[0]
    assert type(merged) is nn.Linear and merged.weight.shape == (4, 6)
    delta = (6 / 3) * (wrapped.lora.A @ wrapped.lora.B).T
    assert torch.allclose(merged.weight, wrapped.linear.weight + delta)
    assert torch.equal(merged.bias, wrapped.linear.bias)
    assert torch.allclose(merged(x), expected, atol=1e-6)
    no_bias = nn.Sequential(LinearWithLoRA(nn.Linear(6, 4, bias=False), rank=2, alpha=2))
    assert merge_lora(no_bias)[0].bias is None


def test_merging_a_lora_classifier_keeps_its_predictions():
    torch.manual_seed(0)
    model = convert_to_classifier(GPTModel(TINY_CONFIG), num_classes=2, trainable_blocks="all")
    keys = list(model.state_dict())
    replace_linear_with_lora(model, rank=4, alpha=8)
    with torch.no_grad():  # as after training: every B non-zero
        for module in model.modules():
            if isinstance(module, LoRALayer):
                module.B.normal_(std=0.5)
    x = torch.randint(0, 50, (16, 8))
    model.eval()
    logits = model(x)[:, -1, :].detach()
    assert merge_lora(model) is model
    assert not any(isinstance(m, (LinearWithLoRA, LoRALayer)) for m in model.modules())
    assert list(model.state_dict()) == keys  # loadable into the plain classifier
    merged_logits = model(x)[:, -1, :].detach()
    assert torch.allclose(merged_logits, logits, atol=1e-5)
    assert torch.equal(merged_logits.argmax(-1), logits.argmax(-1))
    assert count_parameters(model) == 0  # the frozen base stays frozen


def _inside_lora(model: nn.Module, linear: nn.Linear) -> bool:
    return any(isinstance(m, LinearWithLoRA) and m.linear is linear for m in model.modules())


def test_exercise_notebook_lora_matches_shared():
    nb = notebook_definitions("ch07/exercise-solutions.ipynb")
    torch.manual_seed(0)
    linear = nn.Linear(6, 4)
    x = torch.randn(3, 6)
    torch.manual_seed(1)
    ours = LinearWithLoRA(linear, rank=2, alpha=4)
    torch.manual_seed(1)
    theirs = nb["LinearWithLoRA"](linear, rank=2, alpha=4)
    assert torch.equal(theirs.lora.A, ours.lora.A)
    with torch.no_grad():
        ours.lora.B.normal_()
        theirs.lora.B.copy_(ours.lora.B)
    assert torch.allclose(theirs(x), ours(x))

    torch.manual_seed(0)
    model_a = GPTModel(TINY_CONFIG)
    model_b = GPTModel(TINY_CONFIG)
    model_b.load_state_dict(model_a.state_dict())
    torch.manual_seed(2)
    replace_linear_with_lora(model_a, rank=2, alpha=2)
    for p in model_b.parameters():
        p.requires_grad = False
    torch.manual_seed(2)
    nb["replace_linear_with_lora"](model_b, rank=2, alpha=2)
    assert list(model_a.state_dict()) == list(model_b.state_dict())
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), name
