"""shared.gated_deltanet: the recurrent and chunked gated delta rule agree with each other and
with transformers' own PyTorch versions, the layer equals Qwen3.5's (weights copied by
QWEN3_5_TENSOR_NAMES), generation with a DeltaNetState equals one full pass and the state does
not grow, ch04/attention-variants.ipynb's step and adapter equal the package, and bad input gets
errors that name the value.

Tolerances (everything in float32, whose rounding step is 1.2e-7 relative): the outputs here are
of size 1 to 10 and each is a sum of at most a few dozen products, reached in a different order
by the two forms (the chunked one through triangular solves); the differences measured are up to
about 1e-6, so 1e-5 (absolute and relative) leaves a margin of ten while any error in the maths
(a missing decay, a wrong sign) moves the outputs by 1e-2 or more.
"""

import pytest
import torch

from shared.attention_variants import kv_cache_bytes, kv_cache_bytes_per_token
from shared.gated_deltanet import (
    QWEN3_5_TENSOR_NAMES,
    DeltaNetState,
    GatedDeltaNet,
    chunked_gated_delta_rule,
    deltanet_settings_from_hf,
    deltanet_state_bytes,
    l2_normalize,
    recurrent_gated_delta_rule,
)
from tests.notebook_code import notebook_definitions

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}  # see the module docstring
BATCH, HEADS, TOKENS, D_K, D_V = 2, 3, 37, 8, 6  # 37: not a multiple of any chunk size tried

# A small Qwen3.5 text model: 2 query/key heads serving 4 value heads, key and value heads of
# different sizes, so every reshape and the grouping are exercised.
QWEN3_5_REFERENCE = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 1,  # layer 0 is a linear-attention layer
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 8,
    "linear_value_head_dim": 6,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
}


def delta_inputs(seed: int = 0, tokens: int = TOKENS) -> dict:
    """Random q, k, v, g, beta and an initial state of the shapes the rules take, keys of unit
    length (as the layer makes them) and decays between exp(-2) and 1."""
    gen = torch.Generator().manual_seed(seed)
    shape = (BATCH, HEADS, tokens)
    return {
        "q": torch.randn(*shape, D_K, generator=gen),
        "k": l2_normalize(torch.randn(*shape, D_K, generator=gen)),
        "v": torch.randn(*shape, D_V, generator=gen),
        "g": -2 * torch.rand(*shape, generator=gen),
        "beta": torch.rand(*shape, generator=gen),
        "initial_state": torch.randn(BATCH, HEADS, D_K, D_V, generator=gen),
    }


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 64])
@pytest.mark.parametrize("with_initial_state", [True, False])
def test_chunked_equals_recurrent(chunk_size, with_initial_state):
    inputs = delta_inputs()
    if not with_initial_state:
        inputs["initial_state"] = None
    out, state = recurrent_gated_delta_rule(**inputs)
    chunked_out, chunked_state = chunked_gated_delta_rule(**inputs, chunk_size=chunk_size)
    assert out.shape == (BATCH, HEADS, TOKENS, D_V) and state.shape == (BATCH, HEADS, D_K, D_V)
    torch.testing.assert_close(chunked_out, out, **TOLERANCE)
    torch.testing.assert_close(chunked_state, state, **TOLERANCE)


def test_chunks_carry_the_state_across_calls():
    """Two calls, the second starting from the first's final state, give one call's outputs."""
    inputs = delta_inputs()
    out, state = chunked_gated_delta_rule(**inputs, chunk_size=8)
    first = {name: t[:, :, :20] for name, t in inputs.items() if name != "initial_state"}
    second = {name: t[:, :, 20:] for name, t in inputs.items() if name != "initial_state"}
    out_1, state_1 = chunked_gated_delta_rule(**first, initial_state=inputs["initial_state"])
    out_2, state_2 = recurrent_gated_delta_rule(**second, initial_state=state_1)
    torch.testing.assert_close(torch.cat([out_1, out_2], dim=2), out, **TOLERANCE)
    torch.testing.assert_close(state_2, state, **TOLERANCE)


def test_the_delta_rule_overwrites_what_a_key_recalls():
    """With beta = 1 and no decay, writing (k, v) for a unit-length k makes the memory answer v
    for k, whatever it held before: the correction replaces the old answer, it does not add."""
    inputs = delta_inputs(tokens=1)
    inputs["g"].zero_()
    inputs["beta"].fill_(1.0)
    inputs["q"] = inputs["k"]
    out, _ = recurrent_gated_delta_rule(**inputs)
    torch.testing.assert_close(out, inputs["v"], **TOLERANCE)


def test_gradients_of_both_forms_agree():
    """Training back-propagates through the chunked form: its gradients are the recurrent one's.
    The loss is a sum of squares, so gradients reach about 100: 1e-4 absolute is the relative
    margin of the outputs' tolerance."""
    inputs = delta_inputs(tokens=12)
    grads = []
    for rule, options in (
        (recurrent_gated_delta_rule, {}),
        (chunked_gated_delta_rule, {"chunk_size": 5}),
    ):
        leaves = {name: t.clone().requires_grad_() for name, t in inputs.items()}
        out, state = rule(**leaves, **options)
        (out.square().sum() + state.square().sum()).backward()
        grads.append([leaves[name].grad for name in sorted(leaves)])
    for recurrent_grad, chunked_grad in zip(*grads, strict=True):
        torch.testing.assert_close(chunked_grad, recurrent_grad, atol=1e-4, rtol=1e-5)


def test_the_notebooks_step_and_adapter_equal_the_package():
    """ch04/attention-variants.ipynb writes the step out (delta_rule_step) and wraps the layer
    for GPTModel (DeltaNetAttention): the same results as shared.gated_deltanet."""
    notebook = notebook_definitions("ch04/attention-variants.ipynb")
    inputs = delta_inputs()
    state, steps = inputs["initial_state"], []
    for t in range(TOKENS):
        token = (inputs[name][:, :, t] for name in ("q", "k", "v", "g", "beta"))
        o_t, state = notebook["delta_rule_step"](state, *token)
        steps.append(o_t)
    out, final_state = recurrent_gated_delta_rule(**inputs)
    torch.testing.assert_close(torch.stack(steps, dim=2), out, **TOLERANCE)
    torch.testing.assert_close(state, final_state, **TOLERANCE)

    torch.manual_seed(1)
    adapter = notebook["DeltaNetAttention"](32, 32, 16, 0.0, 4).eval()  # MultiHeadAttention's args
    torch.manual_seed(1)
    layer = GatedDeltaNet(32, 4, 4, 8, 8).eval()
    x = torch.randn(2, 9, 32)
    layer_state = DeltaNetState()
    with torch.no_grad():
        assert torch.equal(adapter(x), layer(x))
        steps = [adapter(x[:, i : i + 1], layer_kv=layer_state) for i in range(9)]
    torch.testing.assert_close(torch.cat(steps, dim=1), layer(x), **TOLERANCE)
    assert layer_state.length == 9


# --- against transformers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen3_5():
    """transformers' modeling_qwen3_5 module (its PyTorch fallback functions and layers)."""
    pytest.importorskip("transformers")
    from transformers.models.qwen3_5 import modeling_qwen3_5

    return modeling_qwen3_5


def heads_second(t: torch.Tensor) -> torch.Tensor:
    """transformers' layout (b, n, h, ...) <-> the course's (b, h, n, ...)."""
    return t.transpose(1, 2)


@pytest.mark.parametrize("form", ["chunked", "recurrent"])
def test_rules_equal_transformers_fallbacks(qwen3_5, form):
    """transformers L2-normalises q and k inside its functions (use_qk_l2norm_in_kernel) and
    always scales q by 1 / sqrt(d_k); the course's functions leave both to the layer."""
    inputs = delta_inputs(seed=1)
    raw_q, raw_k = inputs["q"], 3 * inputs["k"]
    theirs = {
        "query": heads_second(raw_q),
        "key": heads_second(raw_k),
        "value": heads_second(inputs["v"]),
        "g": heads_second(inputs["g"]),
        "beta": heads_second(inputs["beta"]),
        "initial_state": inputs["initial_state"],
        "output_final_state": True,
        "use_qk_l2norm_in_kernel": True,
    }
    ours = {**inputs, "q": l2_normalize(raw_q) * D_K**-0.5, "k": l2_normalize(raw_k)}
    if form == "chunked":
        their_out, their_state = qwen3_5.torch_chunk_gated_delta_rule(**theirs, chunk_size=16)
        out, state = chunked_gated_delta_rule(**ours, chunk_size=16)
    else:
        their_out, their_state = qwen3_5.torch_recurrent_gated_delta_rule(**theirs)
        out, state = recurrent_gated_delta_rule(**ours)
    torch.testing.assert_close(out, heads_second(their_out), **TOLERANCE)
    torch.testing.assert_close(state, their_state, **TOLERANCE)


@pytest.fixture(scope="module")
def layer_pair(qwen3_5):
    """(transformers' Qwen3_5GatedDeltaNet from a small random Qwen3_5ForCausalLM, the course's
    GatedDeltaNet built from the same config with its weights copied by QWEN3_5_TENSOR_NAMES)."""
    config = qwen3_5.Qwen3_5TextConfig(**QWEN3_5_REFERENCE)
    torch.manual_seed(0)
    model = qwen3_5.Qwen3_5ForCausalLM(config).eval()
    with torch.no_grad():  # larger weights than the default 0.02, so the outputs differ clearly
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    params = model.state_dict()
    prefix = "model.layers.0.linear_attn."
    assert {prefix + hf for hf in QWEN3_5_TENSOR_NAMES.values()} == {
        name for name in params if name.startswith(prefix)
    }  # every tensor of the layer is mapped, and nothing else
    ours = GatedDeltaNet(**deltanet_settings_from_hf(config.to_dict())).eval()
    ours.load_state_dict(
        {course: params[prefix + hf] for course, hf in QWEN3_5_TENSOR_NAMES.items()}
    )
    return model.model.layers[0].linear_attn, ours


def test_layer_equals_transformers_layer(layer_pair):
    reference, ours = layer_pair
    x = torch.randn(2, 70, QWEN3_5_REFERENCE["hidden_size"])  # one full chunk of 64 and 6 tokens
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(ours(x), expected, **TOLERANCE)
        torch.testing.assert_close(ours(x[:, :1]), expected[:, :1], **TOLERANCE)  # recurrent path
    assert expected.abs().max() > 1.0  # outputs large enough for the tolerance to mean something


@pytest.mark.parametrize("pieces", [[5, 1, 1, 1, 1], [1] * 9, [4, 3, 2]])
def test_prompt_then_tokens_with_the_state_equals_one_pass(layer_pair, pieces):
    _, layer = layer_pair
    x = torch.randn(2, sum(pieces), QWEN3_5_REFERENCE["hidden_size"])
    state = DeltaNetState()
    with torch.no_grad():
        full_pass = layer(x)
        outputs, start = [], 0
        for size in pieces:
            outputs.append(layer(x[:, start : start + size], state))
            start += size
    torch.testing.assert_close(torch.cat(outputs, dim=1), full_pass, **TOLERANCE)
    assert state.length == sum(pieces)


def test_state_size_is_the_formula_and_does_not_grow():
    torch.manual_seed(0)
    layer = GatedDeltaNet(32, num_key_heads=2, num_value_heads=4, key_head_dim=8, value_head_dim=6)
    per_text = deltanet_state_bytes(2, 4, 8, 6, conv_kernel_size=4, dtype=torch.float32)
    # recurrent 4 heads * 8 * 6 numbers, conv 3 positions * (2 * 16 + 24) channels, 4 bytes each
    assert per_text == (4 * 8 * 6 + 3 * 56) * 4
    state = DeltaNetState()
    assert state.nbytes == 0
    sizes = []
    with torch.no_grad():
        layer(torch.randn(2, 10, 32), state)
        sizes.append(state.nbytes)
        for _ in range(3):
            layer(torch.randn(2, 50, 32), state)
            sizes.append(state.nbytes)
    assert sizes == [2 * per_text] * 4 and state.length == 160
    assert state.recurrent.shape == (2, 4, 8, 6) and state.conv.shape == (2, 56, 3)
    # A KV cache of keys and values of this width (4 heads of 6) would have grown 16-fold.
    kv_per_token = kv_cache_bytes_per_token(4, 6, torch.float32)
    kv = [kv_cache_bytes(kv_per_token, 1, n, batch_size=2) for n in (10, 160)]
    assert kv[1] == 16 * kv[0] and kv[1] > sizes[-1]


def test_bfloat16_layer_keeps_a_float32_state_the_formula_counts():
    torch.manual_seed(0)
    layer = GatedDeltaNet(32, 2, 4, 8, 6, dtype=torch.bfloat16).eval()
    state = DeltaNetState()
    with torch.no_grad():
        out = layer(torch.randn(1, 7, 32, dtype=torch.bfloat16), state)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert state.recurrent.dtype == torch.float32 and state.conv.dtype == torch.bfloat16
    assert state.nbytes == deltanet_state_bytes(2, 4, 8, 6)  # defaults: bf16 conv, fp32 state


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"chunk_size": 0}, r"chunk_size \(0\) must be at least 1"),
        ({"k": torch.zeros(BATCH, HEADS, TOKENS, D_K + 1)}, r"q and k must both be .* k \(2, 3, 37, 9\)"),
        ({"v": torch.zeros(BATCH, HEADS, TOKENS - 1, D_V)}, r"v must be .* got v \(2, 3, 36, 6\)"),
        ({"g": torch.zeros(BATCH, TOKENS, HEADS)}, r"g must be .* = \(2, 3, 37\); got \(2, 37, 3\)"),
        ({"beta": torch.zeros(BATCH, HEADS)}, r"beta must be .* got \(2, 3\)"),
        ({"initial_state": torch.zeros(BATCH, HEADS, D_V, D_K)}, r"initial_state must be .* \(2, 3, 8, 6\); got \(2, 3, 6, 8\)"),
    ],
)  # fmt: skip
def test_bad_rule_inputs_name_the_values(change, message):
    with pytest.raises(ValueError, match=message):
        chunked_gated_delta_rule(**{**delta_inputs(), **change})


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"num_value_heads": 3}, r"num_value_heads \(3\) must be a multiple of num_key_heads \(2\)"),
        ({"conv_kernel_size": 0}, r"conv_kernel_size \(0\) must be at least 1"),
        ({"chunk_size": 0}, r"chunk_size \(0\) must be at least 1"),
    ],
)  # fmt: skip
def test_bad_layer_settings_name_the_values(settings, message):
    base = {"emb_dim": 32, "num_key_heads": 2, "num_value_heads": 4, "key_head_dim": 8}
    with pytest.raises(ValueError, match=message):
        GatedDeltaNet(**{**base, "value_head_dim": 6, **settings})


def test_a_state_of_another_batch_is_a_clear_error():
    layer = GatedDeltaNet(32, 2, 4, 8, 6).eval()
    state = DeltaNetState()
    with torch.no_grad():
        layer(torch.randn(2, 3, 32), state)
        with pytest.raises(ValueError, match="the state holds 2 texts but x has 3"):
            layer(torch.randn(3, 1, 32), state)


def test_an_unsupported_activation_is_a_clear_error():
    with pytest.raises(ValueError, match="hidden_act 'gelu' is not supported"):
        deltanet_settings_from_hf({"hidden_act": "gelu"})
