"""ch03/attention-implementations.ipynb: every implementation built from Chapter 3's
MultiHeadAttention computes its outputs, and (where PyTorch has a backward on the device) its
gradients, to float rounding."""

from __future__ import annotations

import pytest
import torch

from shared.attention import MultiHeadAttention
from tests.notebook_code import notebook_definitions

pytestmark = pytest.mark.usefixtures("one_thread")
IMPLEMENTATIONS = [
    "WrapperWithProjection",
    "CombinedQKV",
    "SDPAttention",
    "TorchMultiheadAttention",
    "FlexAttention",
]


@pytest.fixture(scope="module")
def notebook():
    return notebook_definitions("ch03/attention-implementations.ipynb")


def chapter_attention(num_tokens: int = 12) -> MultiHeadAttention:
    torch.manual_seed(3)
    return MultiHeadAttention(32, 32, num_tokens, 0.0, 4, qkv_bias=True).eval()


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
@pytest.mark.parametrize("num_tokens", [1, 7, 12])
def test_each_implementation_computes_the_chapters_outputs(notebook, name, num_tokens):
    chapter = chapter_attention()
    other = notebook[name](chapter).eval()
    x = torch.randn(3, num_tokens, 32, generator=torch.Generator().manual_seed(num_tokens))
    with torch.no_grad():
        torch.testing.assert_close(other(x), chapter(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [n for n in IMPLEMENTATIONS if n != "FlexAttention"])
def test_and_the_chapters_input_gradients(notebook, name):
    chapter = chapter_attention()
    other = notebook[name](chapter)
    x = torch.randn(2, 12, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
    (expected,) = torch.autograd.grad(chapter(x).square().sum(), x)
    (actual,) = torch.autograd.grad(other(x).square().sum(), x)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)


def test_the_fused_kernel_keeps_no_attention_weights_for_backward(notebook):
    chapter = chapter_attention()
    x = torch.randn(2, 12, 32, requires_grad=True)
    kept = notebook["saved_for_backward"](chapter, x)
    weights = 2 * 4 * 12 * 12 * 4  # (b, h, n, n) float32
    fused = notebook["saved_for_backward"](notebook["SDPAttention"](chapter), x)
    assert kept - fused >= 0.9 * weights  # the fused kernel keeps a few numbers per query
