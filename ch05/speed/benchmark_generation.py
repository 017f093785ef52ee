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

import torch

# The sibling script (its folder is on sys.path when this file runs as a script).
from benchmark_training import gpt2_shape, transformers_model

from shared.cli import HelpFormatter, add_option
from shared.device import best_time, get_device
from shared.fused_kernels import use_fused_kernels
from shared.gpt2_weights import load_weights_into_gpt
from shared.kv_cache import KVCacheGPTModel
from shared.pretraining import generate


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    add_option(parser, "--size", "124M")
    add_option(parser, "--layers", default_text="the size's own")
    add_option(parser, "--prompt-tokens", 8)
    add_option(parser, "--new-tokens", 200)
    add_option(parser, "--repeats", 2)
    add_option(parser, "--device")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    device = get_device(args.device)

    cfg = gpt2_shape(args.size, args.layers)
    torch.manual_seed(123)
    reference = transformers_model(cfg, tied=True).to(device).eval()  # GPT-2 ties its output layer
    params = reference.state_dict()  # transformers' key layout, loaded as GPT-2 weights are
    course = {}
    for fused in (False, True):
        model = KVCacheGPTModel(cfg).eval()  # GPTModel + cache
        if fused:
            use_fused_kernels(model)
        load_weights_into_gpt(model, params)
        course[fused] = model.to(device)

    prompt = torch.randint(
        0, cfg["vocab_size"], (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0)
    ).to(device)
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
    results = {name: best_time(fn, args.repeats, device) for name, fn in runs.items()}

    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
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
