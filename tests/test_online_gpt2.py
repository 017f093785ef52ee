"""The opt-in online check: OpenAI's real GPT-2 weights in GPTModel against transformers.

Never part of the default run (the marker ``online`` is deselected in pyproject.toml). Run it with

    python -m pytest -m online tests/test_online_gpt2.py -s            # all four sizes
    python -m pytest -m online tests/test_online_gpt2.py -s -k 124M    # one size

For each GPT-2 size it downloads ``model.safetensors`` through shared.data (cached; 0.5, 1.5, 3.2
and 6.4 GB), loads it into GPTModel with shared.gpt2_weights, and compares it with transformers'
``GPT2LMHeadModel.from_pretrained`` of the same size (its own download): the logits on a few
prompts (the largest difference is printed; it must stay within a small fraction of the logits'
scale) and 20 greedily generated tokens (equal). 1558M needs about 20 GB of memory. Where the hub
cannot be reached, each size is skipped with the reason.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from shared.data import DataUnavailableError, fetch
from shared.gpt import GPT2_MODEL_CONFIGS, GPTModel
from shared.gpt2_weights import GPT2_HF_NAMES, gpt2_weights_file, load_weights_into_gpt
from shared.pretraining import generate
from shared.tokenizers import gpt2_tokenizer

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.online

PROMPTS = [
    "Every effort moves you",
    "The meaning of life is",
    "In 1905, Albert Einstein published four papers that",
]
NEW_TOKENS = 20
# Largest logit difference allowed, as a fraction of the largest logit: two float32
# implementations of the same network differ by rounding (order of operations), far below this;
# a misplaced tensor shifts logits by whole units.
RELATIVE_TOLERANCE = 5e-4


@pytest.mark.parametrize("size", list(GPT2_HF_NAMES))
def test_real_gpt2_matches_transformers(size):
    try:
        path = fetch(gpt2_weights_file(size))
    except DataUnavailableError as err:
        pytest.skip(f"the Hugging Face hub cannot be reached: {err.reason}")
    ours = GPTModel(GPT2_MODEL_CONFIGS[size]).eval()
    load_weights_into_gpt(ours, load_file(path))
    name = f"openai-community/{GPT2_HF_NAMES[size]}"
    try:
        reference = transformers.GPT2LMHeadModel.from_pretrained(name, dtype=torch.float32).eval()
    except OSError as err:
        pytest.skip(f"transformers cannot get {name}: {' '.join(str(err).split())[:300]}")

    tokenizer = gpt2_tokenizer()
    worst, scale = 0.0, 0.0
    for prompt in PROMPTS:
        ids = torch.tensor([tokenizer.encode(prompt)])
        with torch.no_grad():
            logits, expected = ours(ids), reference(ids).logits
            worst = max(worst, (logits - expected).abs().max().item())
            scale = max(scale, expected.abs().max().item())

            eot = tokenizer.eot_token
            ours_ids = generate(ours, ids, NEW_TOKENS, 1024, temperature=0.0, eos_id=eot)
            reference_ids = reference.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                eos_token_id=eot,
                pad_token_id=eot,
            )
        # Both stop at <|endoftext|>; transformers keeps it at the end, ours does not.
        reference_list = reference_ids[0].tolist()
        reference_list = reference_list[:-1] if reference_list[-1] == eot else reference_list
        assert ours_ids[0].tolist() == reference_list, (
            f"{prompt!r}: ours {tokenizer.decode(ours_ids[0].tolist())!r}, "
            f"transformers {tokenizer.decode(reference_ids[0].tolist())!r}"
        )
        print(f"GPT-2 {size}: {tokenizer.decode(ours_ids[0].tolist())!r}")
    print(
        f"GPT-2 {size}: largest logit difference {worst:.2e} over {len(PROMPTS)} prompts "
        f"(largest logit {scale:.1f}, tolerance {RELATIVE_TOLERANCE * scale:.2e})"
    )
    assert worst <= RELATIVE_TOLERANCE * scale
