"""Greedy generation with and without the KV cache, beside transformers' generate, in one run.

A GPT-2-shaped model (124M by default) with random weights is built in transformers, and the
same weights are loaded into the course's GPTModel with shared.gpt2_weights, so every variant
computes the same function. Batch 1, greedy, a fixed number of new tokens. Prints seconds and
tokens per second for each variant, the speed-ups, and whether the tokens agree.

    python ch05/speed/benchmark_generation.py
    python ch05/speed/benchmark_generation.py --new-tokens 200 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import torch

# The sibling script (its folder is on sys.path when this file runs as a script).
from benchmark_training import gpt2_shape, transformers_model

from shared.cli import HelpFormatter
from shared.gpt import GPT2_MODEL_CONFIGS
from shared.gpt2_weights import load_weights_into_gpt
from shared.kv_cache import KVCacheGPTModel
from shared.pretraining import generate


def best_time(fn, repeats: int) -> tuple[float, torch.Tensor]:
    """(fastest wall time of fn() over repeats, its last result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--size", default="124M", choices=GPT2_MODEL_CONFIGS, help="the GPT-2 shape to build"
    )
    parser.add_argument(
        "--layers", type=int, help="transformer blocks (default: the GPT-2 shape's own)"
    )
    parser.add_argument("--prompt-tokens", type=int, default=8, help="length of the random prompt")
    parser.add_argument("--new-tokens", type=int, default=200, help="tokens generated per run")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    args = parser.parse_args(argv)

    cfg = gpt2_shape(args.size, args.layers)
    torch.manual_seed(123)
    reference = transformers_model(cfg, tied=True).eval()  # GPT-2 ties its output layer
    params = reference.state_dict()  # transformers' key layout, loaded as GPT-2 weights are
    course = {}
    for fused in (False, True):
        model = KVCacheGPTModel({**cfg, "fused_kernels": fused}).eval()  # GPTModel + cache
        load_weights_into_gpt(model, params)
        course[fused] = model

    prompt = torch.randint(
        0, cfg["vocab_size"], (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0)
    )
    n = args.new_tokens
    context = cfg["context_length"]

    def course_run(fused: bool, use_cache: bool):
        return lambda: generate(course[fused], prompt, n, context, use_cache=use_cache)

    def reference_run():
        with torch.no_grad():
            return reference.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                use_cache=True,
                pad_token_id=cfg["vocab_size"] - 1,
            )

    runs = {
        "course, plain, no cache": course_run(False, False),
        "course, plain, KV cache": course_run(False, True),
        "course, fused, KV cache": course_run(True, True),
        "reference (transformers generate, cache)": reference_run,
    }
    results = {name: best_time(fn, args.repeats) for name, fn in runs.items()}

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"GPT-2 {args.size} shape ({cfg['n_layers']} blocks), batch 1, greedy, "
        f"{args.prompt_tokens} prompt + {n} new tokens"
    )
    print()
    ref_seconds = results["reference (transformers generate, cache)"][0]
    uncached_seconds = results["course, plain, no cache"][0]
    header = f"{'variant':42s} {'seconds':>8s} {'tokens/s':>9s} {'vs uncached':>12s} {'vs ref':>7s}"
    print(header)
    print("-" * len(header))
    for name, (seconds, _) in results.items():
        print(
            f"{name:42s} {seconds:8.2f} {n / seconds:9.1f} {uncached_seconds / seconds:11.2f}x "
            f"{ref_seconds / seconds:6.2f}x"
        )
    tokens = {name: ids[0, -n:] for name, (_, ids) in results.items()}
    baseline = tokens["course, plain, no cache"]
    print()
    for name, ids in tokens.items():
        same = torch.equal(ids, baseline)
        print(f"tokens of {name!r} equal the uncached course tokens: {same}")


if __name__ == "__main__":
    main()
