"""Plan the memory of Chapter 4's GPTModel: what training it with AdamW and generating with a KV
cache hold, by part (weights, gradients, optimizer state, activations with or without activation
checkpointing, KV cache), the peak, and the largest batch that fits an 8, 16 or 24 GB GPU
(ch04/memory-planner.ipynb derives the counts; shared.memory computes them).

Examples:

    python ch04/plan_memory.py --size 355M --batch-size 4
    python ch04/plan_memory.py --size 124M --batch-size 8 --checkpointing --dtype bf16
    python ch04/plan_memory.py --config my_model.json --context-length 256
    python ch04/plan_memory.py --size tiny --context-length 128 --measure
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.cli import MODEL_SIZES, HelpFormatter, add_option, errors_as_one_line, read_json_file
from shared.device import get_device
from shared.gpt import GPT2_MODEL_CONFIGS
from shared.memory import (
    TOLERANCE,
    format_bytes,
    inference_memory,
    largest_batch_size,
    measure_peak,
    parameter_count,
    training_memory,
    within_tolerance,
)

GPU_MEMORY_GB = (8, 16, 24)  # the cards of the table: their memory in GiB, as sold
RESERVED_GIB = 1  # kept free of tensors: the CUDA context and the allocator's slack
CONFIG_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "drop_rate")


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    add_option(parser, "--size", "124M")
    parser.add_argument(
        "--config",
        type=Path,
        help="a JSON file with GPTModel's config (vocab_size, context_length, emb_dim, n_heads, "
        "n_layers, drop_rate, qkv_bias) to plan instead of --size (default: none)",
    )
    add_option(parser, "--batch-size", 1)
    add_option(parser, "--context-length", default_text="the model's, 1024 for GPT-2")
    add_option(parser, "--dtype", "fp32")
    parser.add_argument(
        "--checkpointing",
        action="store_true",
        help="activation checkpointing: each block keeps only its input and recomputes the rest "
        "in the backward pass",
    )
    parser.add_argument(
        "--measure",
        action="store_true",
        help="also run two training steps in a separate process on --device and print the "
        "measured peak beside the planned one (for models that fit this machine)",
    )
    add_option(parser, "--device")
    return parser


def model_config(args: argparse.Namespace) -> dict:
    """GPTModel's config: the --config file's, or GPT-2's (no dropout, query/key/value biases)
    in the shape of --size. A ValueError naming the file when it holds no config."""
    if args.config is None:
        return {**GPT2_MODEL_CONFIGS["124M"], **MODEL_SIZES[args.size]}
    cfg = read_json_file(args.config)
    if not isinstance(cfg, dict):
        raise ValueError(f"{args.config}: expected a JSON object with GPTModel's config keys")
    missing = [key for key in CONFIG_KEYS if key not in cfg]
    if missing:
        raise ValueError(f"{args.config}: the config lacks {', '.join(missing)}")
    return {"qkv_bias": False, **cfg}


def print_parts(title: str, parts: dict[str, int], peak: int, where: str) -> None:
    print(title)
    for part, count in parts.items():
        print(f"  {part:24s} {format_bytes(count):>12s}")
    print(f"  {'peak':24s} {format_bytes(peak):>12s}   ({where})")


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    with errors_as_one_line():
        device = get_device(args.device)
        cfg = model_config(args)
        n, b = args.context_length or cfg["context_length"], args.batch_size
        if n > cfg["context_length"]:
            raise ValueError(
                f"--context-length {n} exceeds the model's context_length ({cfg['context_length']})"
            )
        dtype = {"fp32": "float32", "bf16": "bfloat16"}[args.dtype]
        train = training_memory(cfg, b, n, dtype, args.checkpointing, device)
        infer = inference_memory(cfg, b, n, dtype)

    name = args.config or (f"GPT-2 {args.size}" if args.size in GPT2_MODEL_CONFIGS else args.size)
    print(
        f"Model: {name} (emb_dim {cfg['emb_dim']}, {cfg['n_layers']} blocks, {cfg['n_heads']} "
        f"heads, vocabulary {cfg['vocab_size']:,}, dropout {cfg['drop_rate']}: "
        f"{parameter_count(cfg):,} parameters)"
    )
    print(f"Batch: {b} sequence(s) of {n:,} tokens, {dtype}, planned for {device.type}")
    checkpointing = "with" if args.checkpointing else "without"
    print_parts(
        f"\nTraining step (AdamW), {checkpointing} activation checkpointing:",
        train.parts,
        train.peak,
        f"at: {train.peak_moment}",
    )
    print_parts(
        f"\nGeneration with a KV cache of {n:,} positions (one step over all of them):",
        infer.parts,
        infer.peak,
        "weights + KV cache + one step's activations",
    )
    print(
        f"\nLargest batch of {n:,}-token sequences that fits a GPU's memory "
        f"({RESERVED_GIB} GiB of it kept free; 0: not even one):"
    )
    print(f"  {'':34s}" + "".join(f"{f'{gb} GB':>8s}" for gb in GPU_MEMORY_GB))
    rows = {
        f"training, {dtype}": dict(checkpointing=False),
        f"training, {dtype}, checkpointed": dict(checkpointing=True),
        f"generation, {dtype}": dict(training=False),
    }
    for label, how in rows.items():
        fits = [
            largest_batch_size(cfg, (gb - RESERVED_GIB) * 2**30, n, dtype, **how)
            for gb in GPU_MEMORY_GB
        ]
        print(f"  {label:34s}" + "".join(f"{batch:8d}" for batch in fits))

    if args.measure:
        with errors_as_one_line():
            measured = measure_peak(cfg, b, n, dtype, args.checkpointing, device)
        share, slack = TOLERANCE
        verdict = "within" if within_tolerance(measured, train.peak) else "OUTSIDE"
        print(
            f"\nMeasured peak of two training steps on {device}: {format_bytes(measured)} "
            f"(planned {format_bytes(train.peak)}; {verdict} the tolerance of "
            f"{share:.0%} + {format_bytes(slack)})"
        )


if __name__ == "__main__":
    main()
