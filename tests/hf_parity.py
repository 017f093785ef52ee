"""Steps shared by the parity tests of the course's open models against transformers.

Each test file builds a small random transformers model (its own config and quirks), then:
save it with save_pretrained and read it back with the course's config reader and
load_hf_weights (`save_and_load`), and check that logits (`assert_logits_match`), greedy tokens
with and without the KV cache (`assert_greedy_tokens_match`) and cached logits
(`assert_cached_logits_match`) agree. Tolerances stay in the test files, beside the reasons.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from shared.open_models import load_hf_weights
from shared.pretraining import generate


def random_ids(length: int, seed: int, batch: int = 1, vocab_size: int = 320) -> torch.Tensor:
    """(batch, length) token ids drawn from their own seeded generator."""
    return torch.randint(
        0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed)
    )


def saved_config(folder: Path) -> dict:
    """The config.json that save_pretrained wrote into folder."""
    return json.loads((Path(folder) / "config.json").read_text())


def saved_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of the single model.safetensors that save_pretrained wrote into folder."""
    return load_file(Path(folder) / "model.safetensors")


def load_saved(
    folder: Path,
    read_config: Callable[[dict], dict],
    model_class: type[torch.nn.Module],
    dtype: torch.dtype | None = None,
) -> torch.nn.Module:
    """The course's model_class built from folder's config.json (read with read_config, e.g.
    config_from_hf) and loaded with its weights, in eval mode; dtype overrides the cfg's."""
    cfg = read_config(saved_config(folder))
    if dtype is not None:
        cfg = {**cfg, "dtype": dtype}
    model = model_class(cfg).eval()
    load_hf_weights(model, saved_weights(folder))
    return model


def save_and_load(
    reference: torch.nn.Module,
    folder: Path,
    read_config: Callable[[dict], dict],
    model_class: type[torch.nn.Module],
) -> torch.nn.Module:
    """Save the transformers reference into folder and read it back as the course's model."""
    reference.save_pretrained(folder)
    return load_saved(folder, read_config, model_class)


def assert_logits_match(
    reference: torch.nn.Module, course: torch.nn.Module, ids: torch.Tensor, atol: float
) -> None:
    """The course's logits for ids (b, n) equal the reference's within atol (rtol 0), and the
    reference's are large enough (above 1) that the comparison is not between near-zero numbers."""
    with torch.no_grad():
        expected = reference(ids).logits
        actual = course(ids)
    assert expected.abs().max() > 1.0
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def reference_greedy(reference: torch.nn.Module, prompt: torch.Tensor, new: int) -> torch.Tensor:
    """transformers' greedy continuation of prompt (1, n): exactly `new` tokens, (1, n + new)."""
    with torch.no_grad():
        return reference.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
        )


def assert_greedy_tokens_match(
    reference: torch.nn.Module,
    course: torch.nn.Module,
    prompt: torch.Tensor,
    new: int,
    context_size: int,
) -> None:
    """The course's generate, without and with the KV cache, continues prompt (1, n) with the
    same `new` greedy tokens as transformers' generate."""
    expected = reference_greedy(reference, prompt, new)
    assert torch.equal(generate(course, prompt, new, context_size=context_size), expected)
    cached = generate(course, prompt, new, context_size=context_size, use_cache=True)
    assert torch.equal(cached, expected)


def assert_cached_logits_match(
    course: torch.nn.Module, ids: torch.Tensor, prompt_length: int, atol: float
):
    """Logits of ids (1, n) fed as a prompt of prompt_length tokens and then one token at a time
    through the course's cache equal the full forward pass's within atol (rtol 0).

    Returns the filled cache, for checks of what each layer kept.
    """
    with torch.no_grad():
        full = course(ids)
        cache = course.new_cache()
        steps = [course(ids[:, :prompt_length], cache)]
        steps += [course(ids[:, i : i + 1], cache) for i in range(prompt_length, ids.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=atol, rtol=0)
    return cache


def relative_logit_error(
    reference: torch.nn.Module, model: torch.nn.Module, ids: torch.Tensor, cache=None
) -> float:
    """The largest gap between model's logits for ids (as float32) and the reference's, as a
    fraction of the reference's largest logit; cache, if given, is passed to model."""
    with torch.no_grad():
        expected = reference(ids).logits
        actual = (model(ids) if cache is None else model(ids, cache)).float()
    return ((actual - expected).abs().max() / expected.abs().max()).item()
