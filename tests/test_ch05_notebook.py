"""ch05/ch05.ipynb's own code: the GPT-2 weight loader it builds step by step behaves exactly like
shared.gpt2_weights (which tests/test_gpt2_weights.py checks against transformers), and its
sampling reproduces the book's counts."""

from __future__ import annotations

import pytest
import torch

from shared import gpt2_weights
from shared.gpt import GPTModel
from tests.conftest import TINY
from tests.notebook_code import notebook_definitions

CONFIG = {
    **TINY,
    "vocab_size": 1000,
    "context_length": 32,
    "emb_dim": 48,
    "n_heads": 4,
    "qkv_bias": True,
}


@pytest.fixture(scope="module")
def notebook():
    return notebook_definitions("ch05/ch05.ipynb")


def random_gpt(seed: int) -> GPTModel:
    """A GPTModel of CONFIG whose every parameter is random (biases and norms included)."""
    torch.manual_seed(seed)
    model = GPTModel(CONFIG).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    return model


def loaded_by(load, params, seed: int) -> GPTModel:
    torch.manual_seed(seed)
    model = GPTModel(CONFIG).eval()
    load(model, params)
    return model


def assert_same_state(a: GPTModel, b: GPTModel, skip=()) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if name not in skip:
            assert torch.equal(x, y), name


def test_notebook_loader_gives_the_model_shared_loader_gives(notebook):
    source = random_gpt(seed=1)
    params = gpt2_weights.gpt2_layout_tensors(source)
    assert params["h.1.attn.c_attn.weight"].shape == (48, 144)  # Conv1D layout, q|k|v fused
    assert params["h.0.mlp.c_fc.weight"].shape == (48, 192)
    assert "lm_head.weight" not in params and "out_head.weight" not in params
    ours = loaded_by(notebook["load_weights_into_gpt"], params, seed=2)
    theirs = loaded_by(gpt2_weights.load_weights_into_gpt, params, seed=3)
    assert_same_state(ours, theirs)
    # The round trip restores every tensor; the output head is tied to the token embedding.
    assert_same_state(ours, source, skip={"out_head.weight"})
    assert torch.equal(ours.out_head.weight, source.tok_emb.weight)
    ids = torch.randint(
        0, CONFIG["vocab_size"], (2, 20), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        assert torch.equal(ours(ids), theirs(ids))


def test_notebook_assign_and_loader_name_what_does_not_fit(notebook):
    params = gpt2_weights.gpt2_layout_tensors(random_gpt(seed=5))
    params["h.1.mlp.c_proj.weight"] = torch.zeros(192, 40)
    with pytest.raises(
        ValueError, match=r"'h\.1\.mlp\.c_proj\.weight \(transposed\)'.*\(40, 192\)"
    ):
        loaded_by(notebook["load_weights_into_gpt"], params, seed=6)
    with pytest.raises(ValueError, match=r"'x' has shape \(3,\), but the model needs \(2,\)"):
        notebook["assign"](torch.nn.Parameter(torch.zeros(2)), torch.ones(3), "x")
    without_bias = GPTModel({**CONFIG, "qkv_bias": False})
    with pytest.raises(ValueError, match="qkv_bias=True"):
        notebook["load_weights_into_gpt"](without_bias, params)


def test_notebook_sampling_gives_the_books_counts(notebook, capsys):
    words = ["closer", "every", "effort", "forward", "inches", "moves", "pizza", "toward", "you"]
    logits = torch.tensor([4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79])
    notebook["inverse_vocab"] = dict(enumerate(words))
    notebook["print_sampled_tokens"](torch.softmax(logits, dim=0))
    counts = {
        line.split(" x ")[1]: int(line.split(" x ")[0])
        for line in capsys.readouterr().out.splitlines()
    }
    # The book's printed counts at temperature 1 (seed 123, one draw per call).
    assert counts == {
        "closer": 73, "every": 0, "effort": 0, "forward": 582, "inches": 2,
        "moves": 0, "pizza": 0, "toward": 343, "you": 0,
    }  # fmt: skip
    notebook["print_sampled_tokens"](torch.softmax(logits / 5, dim=0))
    assert "   32 x pizza" in capsys.readouterr().out  # the book: 32 of 1,000 at temperature 5
