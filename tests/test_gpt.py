"""shared.gpt against PyTorch's own layers and published GPT-2 sizes, and against ch04.ipynb."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import shared.gpt
from shared.gpt import (
    GELU,
    GPT2_MODEL_CONFIGS,
    GPT_CONFIG_124M,
    FeedForward,
    GPTModel,
    LayerNorm,
    TransformerBlock,
    generate_text_simple,
)
from tests.conftest import TINY
from tests.notebook_code import notebook_definitions

CONFIG = {**TINY, "vocab_size": 97, "context_length": 12, "emb_dim": 16, "n_heads": 4}


def tiny_model(seed: int = 0, **overrides) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel({**CONFIG, **overrides}).eval()


def random_ids(seed: int, b: int = 2, n: int = CONFIG["context_length"]) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, CONFIG["vocab_size"], (b, n), generator=g)


def test_layer_norm_equals_torch_layer_norm():
    torch.manual_seed(0)
    ln = LayerNorm(32)
    with torch.no_grad():
        ln.scale.normal_()
        ln.shift.normal_()
    x = torch.randn(3, 5, 32) * 4 + 100  # large offset: the mean must really be removed
    expected = F.layer_norm(x, (32,), ln.scale, ln.shift, eps=1e-5)
    torch.testing.assert_close(ln(x), expected)
    # Zero-variance input: eps keeps the result finite (it is just the shift).
    flat = torch.full((2, 32), 7.0)
    torch.testing.assert_close(ln(flat), F.layer_norm(flat, (32,), ln.scale, ln.shift, eps=1e-5))


def test_layer_norm_output_has_mean_zero_and_variance_one():
    x = torch.randn(4, 64) * 3 - 2
    out = LayerNorm(64)(x)
    torch.testing.assert_close(out.mean(dim=-1), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(dim=-1, unbiased=False), torch.ones(4), atol=1e-3, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gelu_equals_torch_gelu_tanh(dtype):
    x = torch.linspace(-10, 10, 2001, dtype=dtype)
    torch.testing.assert_close(GELU()(x), F.gelu(x, approximate="tanh"))


def test_feed_forward_equals_functional_reference():
    torch.manual_seed(1)
    ff = FeedForward(CONFIG)
    first, last = ff.layers[0], ff.layers[2]
    assert first.weight.shape == (4 * CONFIG["emb_dim"], CONFIG["emb_dim"])
    x = torch.randn(2, 3, CONFIG["emb_dim"])
    hidden = F.gelu(F.linear(x, first.weight, first.bias), approximate="tanh")
    torch.testing.assert_close(ff(x), F.linear(hidden, last.weight, last.bias))


def reference_forward(model: GPTModel, cfg: dict, idx: torch.Tensor) -> torch.Tensor:
    """GPTModel's forward pass rebuilt from torch.nn.functional primitives and its parameters."""
    d, h = cfg["emb_dim"], cfg["n_heads"]
    b, n = idx.shape
    x = F.embedding(idx, model.tok_emb.weight) + model.pos_emb.weight[:n]
    for block in model.trf_blocks:
        att, ff = block.att, block.ff
        y = F.layer_norm(x, (d,), block.norm1.scale, block.norm1.shift, eps=1e-5)
        q, k, v = (
            F.linear(y, lin.weight, lin.bias).view(b, n, h, d // h).transpose(1, 2)
            for lin in (att.W_query, att.W_key, att.W_value)
        )
        context = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        context = context.transpose(1, 2).reshape(b, n, d)
        x = x + F.linear(context, att.out_proj.weight, att.out_proj.bias)
        y = F.layer_norm(x, (d,), block.norm2.scale, block.norm2.shift, eps=1e-5)
        y = F.gelu(F.linear(y, ff.layers[0].weight, ff.layers[0].bias), approximate="tanh")
        x = x + F.linear(y, ff.layers[2].weight, ff.layers[2].bias)
    x = F.layer_norm(x, (d,), model.final_norm.scale, model.final_norm.shift, eps=1e-5)
    return F.linear(x, model.out_head.weight)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_gpt_model_equals_functional_reference(qkv_bias):
    cfg = {**CONFIG, "qkv_bias": qkv_bias}
    model = tiny_model(2, qkv_bias=qkv_bias).double()
    with torch.no_grad():  # layer norms start at scale 1, shift 0: make them matter
        for module in model.modules():
            if isinstance(module, LayerNorm):
                module.scale.normal_()
                module.shift.normal_()
        for n in (CONFIG["context_length"], 5, 1):
            idx = random_ids(3, n=n)
            logits = model(idx)
            assert logits.shape == (2, n, CONFIG["vocab_size"])
            torch.testing.assert_close(logits, reference_forward(model, cfg, idx))


def test_changing_later_tokens_never_changes_earlier_logits():
    model = tiny_model(4)
    idx = random_ids(5)
    with torch.no_grad():
        logits = model(idx)
        for t in range(CONFIG["context_length"]):
            changed = idx.clone()
            changed[:, t:] = (changed[:, t:] + 1 + t) % CONFIG["vocab_size"]
            changed_logits = model(changed)
            assert torch.equal(changed_logits[:, :t], logits[:, :t]), f"logits before {t} changed"
            assert not torch.allclose(changed_logits[:, t], logits[:, t])


def test_transformer_block_keeps_shape_and_names_its_parts():
    torch.manual_seed(6)
    block = TransformerBlock(CONFIG)
    for name in ("att", "ff", "norm1", "norm2", "drop_shortcut"):
        assert hasattr(block, name)
    x = torch.randn(2, 7, CONFIG["emb_dim"])
    assert block(x).shape == x.shape


def test_dropout_is_active_only_in_training_mode():
    model = tiny_model(7, drop_rate=0.3)
    idx = random_ids(8)
    model.train()
    assert not torch.equal(model(idx), model(idx))
    model.eval()
    assert torch.equal(model(idx), model(idx))


def dropout_rates(model: GPTModel) -> tuple[set, set, set]:
    """The rates of the embedding, attention-weight and shortcut dropout modules of a model."""
    return (
        {model.drop_emb.p},
        {block.att.dropout.p for block in model.trf_blocks},
        {block.drop_shortcut.p for block in model.trf_blocks},
    )


def test_separate_dropout_rates_come_from_the_config():
    rates = {"drop_rate_emb": 0.05, "drop_rate_attn": 0.2, "drop_rate_shortcut": 0.15}
    assert dropout_rates(tiny_model(drop_rate=0.1, **rates)) == ({0.05}, {0.2}, {0.15})
    # Each key defaults to drop_rate; without them the model is the book's.
    assert dropout_rates(tiny_model(drop_rate=0.1, drop_rate_attn=0.3)) == ({0.1}, {0.3}, {0.1})
    assert dropout_rates(tiny_model(drop_rate=0.25)) == ({0.25}, {0.25}, {0.25})
    # Only attention dropout: the embeddings and shortcuts pass through unchanged in training.
    model = tiny_model(drop_rate=0.0, drop_rate_attn=0.5).train()
    block = model.trf_blocks[0]
    x = torch.randn(2, 5, CONFIG["emb_dim"])
    assert torch.equal(block.drop_shortcut(x), x) and torch.equal(model.drop_emb(x), x)
    idx = random_ids(20)
    assert not torch.equal(model(idx), model(idx))


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_gpt_124m_parameter_count_and_memory():
    with torch.device("meta"):
        model = GPTModel(GPT_CONFIG_124M)
    total = count(model)
    assert total == 163_009_536
    assert total - count(model.out_head) == 124_412_160
    assert model.tok_emb.weight.shape == model.out_head.weight.shape == (50257, 768)
    assert f"{total * 4 / 1024**2:.2f}" == "621.83"


# Parameter counts of OpenAI's GPT-2 checkpoints as published on Hugging Face (weight-tied,
# with query/key/value biases): gpt2, gpt2-medium, gpt2-large, gpt2-xl.
PUBLISHED_GPT2_SIZES = {
    "124M": 124_439_808,
    "355M": 354_823_168,
    "774M": 774_030_080,
    "1558M": 1_557_611_200,
}


@pytest.mark.parametrize("name", list(GPT2_MODEL_CONFIGS))
def test_gpt2_model_configs_have_the_published_sizes(name):
    with torch.device("meta"):
        model = GPTModel(GPT2_MODEL_CONFIGS[name])
    assert count(model) - count(model.out_head) == PUBLISHED_GPT2_SIZES[name]


def test_too_long_input_is_rejected_naming_both_lengths():
    model = tiny_model(9)
    n = CONFIG["context_length"] + 3
    with pytest.raises(
        ValueError, match=rf"{n} tokens.*context_length is {CONFIG['context_length']}"
    ):
        model(random_ids(10, n=n))


def test_generate_text_simple_is_greedy():
    model = tiny_model(11)
    idx = random_ids(12, n=3)
    out = generate_text_simple(model, idx, max_new_tokens=4, context_size=CONFIG["context_length"])
    assert out.shape == (2, 7)
    assert torch.equal(out[:, :3], idx)
    with torch.no_grad():
        for t in range(3, 7):  # every new token is the argmax after the tokens before it
            assert torch.equal(out[:, t], model(out[:, :t])[:, -1].argmax(dim=-1))
    assert torch.equal(generate_text_simple(model, idx, 0, CONFIG["context_length"]), idx)


def test_generate_text_simple_crops_a_long_prompt_to_the_context():
    model = tiny_model(13)
    context = CONFIG["context_length"]
    prompt = random_ids(14, b=1, n=context + 8)
    out = generate_text_simple(model, prompt, max_new_tokens=5, context_size=context)
    assert out.shape == (1, context + 13)
    assert torch.equal(out[:, : context + 8], prompt)
    only_last = generate_text_simple(model, prompt[:, -context:], 5, context_size=context)
    assert torch.equal(out[:, -5:], only_last[:, -5:])
    # A smaller context_size than the model's crops further.
    short = generate_text_simple(model, prompt, max_new_tokens=1, context_size=3)
    with torch.no_grad():
        assert short[0, -1] == model(prompt[:, -3:])[0, -1].argmax()


@pytest.fixture(scope="module")
def notebook():
    return notebook_definitions("ch04/ch04.ipynb")


def test_notebook_config_matches_shared(notebook):
    assert notebook["GPT_CONFIG_124M"] == GPT_CONFIG_124M


@pytest.mark.parametrize(
    "name,make_args,input_shape",
    [
        ("LayerNorm", lambda: (CONFIG["emb_dim"],), (2, 5, CONFIG["emb_dim"])),
        ("GELU", lambda: (), (3, 40)),
        ("FeedForward", lambda: (CONFIG,), (2, 5, CONFIG["emb_dim"])),
        ("TransformerBlock", lambda: ({**CONFIG, "qkv_bias": True},), (2, 5, CONFIG["emb_dim"])),
    ],
)
def test_notebook_layers_match_shared(notebook, name, make_args, input_shape):
    taught, finished = notebook[name], getattr(shared.gpt, name)
    assert taught is not finished, "the notebook must define the class, not import it"
    x = torch.randn(*input_shape) * 3
    torch.manual_seed(123)
    ours = taught(*make_args())
    torch.manual_seed(123)
    theirs = finished(*make_args())
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert torch.equal(ours(x), theirs(x))


@pytest.mark.parametrize("drop_rate", [0.0, 0.2])
def test_notebook_gpt_model_matches_shared(notebook, drop_rate):
    taught = notebook["GPTModel"]
    assert taught is not GPTModel
    cfg = {**CONFIG, "drop_rate": drop_rate}
    torch.manual_seed(123)
    ours = taught(cfg)
    torch.manual_seed(123)
    theirs = GPTModel(cfg)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    idx = random_ids(15)
    torch.manual_seed(16)  # training mode: dropout must draw the same masks too
    a = ours(idx)
    torch.manual_seed(16)
    assert torch.equal(a, theirs(idx))
    with pytest.raises(ValueError, match="context_length"):
        ours(random_ids(17, n=CONFIG["context_length"] + 1))


def test_notebook_generate_text_simple_matches_shared(notebook):
    taught = notebook["generate_text_simple"]
    assert taught is not generate_text_simple
    model = tiny_model(18)
    prompt = random_ids(19, n=CONFIG["context_length"] + 2)
    context = CONFIG["context_length"]
    assert torch.equal(
        taught(model, prompt, 6, context), generate_text_simple(model, prompt, 6, context)
    )
