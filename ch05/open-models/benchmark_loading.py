"""Peak memory of four ways to load a model.safetensors, side by side, each in a fresh process.

Saves a randomly initialised model of Llama 3.2 1B's shape (1.24 billion parameters, 4.9 GB in
float32) once as a Hugging Face-layout model.safetensors (reused when the file there was saved
for the same shape and seed), then loads it with each way of shared.weight_loading in its own
process and runs one forward pass over a short random prompt. Prints, per way: the peak
resident memory (from the start of loading to the end of that forward pass), what is resident
right after loading, the model's bytes, the seconds to load and to run the first forward pass,
and whether the logits equal the naive way's (bfloat16: close, within a stated share). Linux
only (the peak counter); the file is read from the page cache, where saving it left it.

    python ch05/open-models/benchmark_loading.py
    python ch05/open-models/benchmark_loading.py --shape qwen3-0.6b --folder ~/models
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import safetensors
import torch

from shared.cli import HelpFormatter, add_option, errors_as_one_line, positive_int
from shared.llama3 import LLAMA3_STANDIN_CONFIG, LLAMA32_CONFIG_1B
from shared.open_models import count_parameters
from shared.qwen3 import QWEN3_CONFIG_0_6B
from shared.weight_loading import (
    BF16_LOGITS_TOLERANCE,
    LOADING_WAYS,
    build_on_meta,
    loading_table,
    measure_loading,
    save_random_checkpoint,
)

SHAPES = {
    "llama3.2-1b": LLAMA32_CONFIG_1B,
    "qwen3-0.6b": QWEN3_CONFIG_0_6B,
    "llama3-standin": LLAMA3_STANDIN_CONFIG,  # 4 layers of width 256, GPT-2's vocabulary
}
DEFAULT_FOLDER = Path(tempfile.gettempdir()) / "llm-course-loading-benchmark"


def machine() -> str:
    """The CPU's name and the memory of this machine (Linux; "" elsewhere)."""
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
        kib = int(Path("/proc/meminfo").read_text().split()[1])  # MemTotal
    except (OSError, StopIteration, ValueError, IndexError):
        return ""
    return f"{os.cpu_count()} x {cpu}, {kib / 2**20:.0f} GiB memory"


def load_average() -> str:
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--shape",
        choices=tuple(SHAPES),
        default="llama3.2-1b",
        help="the configuration whose shape the random model takes: a published one, or "
        "llama3-standin (Llama 3's offline stand-in: 4 layers of width 256)",
    )
    add_option(parser, "--layers", default_text="the shape's")
    parser.add_argument("--vocab", type=positive_int, help="vocabulary size (default: the shape's)")
    parser.add_argument(
        "--folder",
        type=Path,
        default=DEFAULT_FOLDER,
        help="where model.safetensors is saved, or reused when saved there for the same shape "
        "and seed (default: llm-course-loading-benchmark in the system's temporary folder)",
    )
    parser.add_argument(
        "--ways",
        nargs="+",
        metavar="WAY",
        choices=tuple(LOADING_WAYS),
        default=list(LOADING_WAYS),
        help="the ways to measure (naive, meta-assign, one-at-a-time, bf16), in this order; "
        "the first one's logits are the reference "
        "(default: all four)",
    )
    add_option(parser, "--prompt-tokens", 8)
    add_option(parser, "--seed", 0)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    cfg = dict(SHAPES[args.shape])
    cfg["n_layers"] = args.layers or cfg["n_layers"]
    cfg["vocab_size"] = args.vocab or cfg["vocab_size"]
    with errors_as_one_line():
        parameters = count_parameters(build_on_meta(cfg))
        print(
            f"torch {torch.__version__}, safetensors {safetensors.__version__}; {machine()}\n"
            f"{args.shape} shape: n_layers {cfg['n_layers']}, vocab {cfg['vocab_size']:,}, "
            f"{parameters:,} parameters ({parameters * 4 / 2**30:.2f} GiB in float32)"
        )
        path = args.folder / "model.safetensors"
        args.folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        if save_random_checkpoint(cfg, path, args.seed):
            print(f"saved {path} in {time.perf_counter() - start:.1f} s")
        else:
            print(f"reusing {path} (saved for this shape and seed)")
        print(f"load average before: {load_average()}")
        runs = measure_loading(args.ways, path, cfg, args.prompt_tokens)
    print(
        f"load average after: {load_average()}\n\n"
        f"One fresh process per way (one thread); resident memory above what the process held "
        f"before loading.\nforward: one pass over {args.prompt_tokens} random tokens; "
        f"bfloat16 logits count as close within {BF16_LOGITS_TOLERANCE:.0%} of the largest.\n"
    )
    print(loading_table(runs))


if __name__ == "__main__":
    main()
