"""Pretrain GPT-2, a Llama-3-style and a Qwen3-style model of one size on The Verdict, side by side.

Chapter 5's run (windows of 256 tokens, batch 2, AdamW with weight decay 0.1, 10 epochs) for each
of the three architectures at the same parameter count (shared.architecture_comparison), from
the same seed, on the same batches. Prints the models' parameter counts, a table of the losses
per epoch for each seed, the final losses of every seed side by side and a greedy sample of each
model, and saves a plot of the losses.

    python ch05/open-models/pretrain_architectures.py                      # the book's 124M GPT
    python ch05/open-models/pretrain_architectures.py --size 13M --seeds 123 456

--size 13M --seeds 123 is the run of pretraining-architectures.ipynb (same numbers on the same
machine); 124M, the book's size, is too slow for the notebook on a CPU (see ch05/README.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from shared.architecture_comparison import (
    SMALL_GPT_CONFIG,
    comparison_models,
    final_loss_table,
    loss_table,
    parameter_count,
    plot_architecture_losses,
    pretrain_architecture,
    verdict_loaders,
)
from shared.cli import MODEL_SIZES, HelpFormatter, add_option, errors_as_one_line
from shared.device import get_device
from shared.speed import enable_tf32
from shared.tokenizers import gpt2_tokenizer

# --size 13M is the notebook's small GPT; the others are shared.cli's sizes.
SIZES = {"13M": {k: SMALL_GPT_CONFIG[k] for k in ("emb_dim", "n_layers", "n_heads")}, **MODEL_SIZES}
SMALL_LR, BOOK_LR = 2e-3, 4e-4  # the small GPT's rate in ch05's bonus notebooks; the book's


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--size",
        choices=tuple(SIZES),
        default="124M",
        help="the GPT's shape (13M: the notebook's, 2 blocks of width 128; tiny, small or one of "
        "GPT-2's sizes); the Llama-3- and Qwen3-style models get its parameter count",
    )
    add_option(parser, "--context-length", 256)
    add_option(parser, "--epochs", 10)
    add_option(parser, "--batch-size", 2)
    add_option(
        parser, "--lr", default_text=f"{SMALL_LR} for 13M, tiny and small, {BOOK_LR} (the book's) "
        "for GPT-2's sizes"
    )  # fmt: skip
    add_option(parser, "--weight-decay", 0.1)
    add_option(parser, "--eval-iter", 3)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[123], help="one run of each model per seed"
    )
    parser.add_argument(
        "--output", type=Path, default=Path("architectures.png"), help="where the plot is saved"
    )
    add_option(parser, "--device")
    return parser


def gpt_config(args: argparse.Namespace) -> dict:
    """The GPTModel config of --size and --context-length, without dropout."""
    return {**SMALL_GPT_CONFIG, **SIZES[args.size], "context_length": args.context_length}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with errors_as_one_line():
        run(args)


def run(args: argparse.Namespace) -> None:
    """Train every model for every seed; print the tables and save the plot."""
    device = get_device(args.device)
    if device.type == "cuda":
        enable_tf32()
    lr = args.lr or (SMALL_LR if args.size in ("13M", "tiny", "small") else BOOK_LR)
    models = comparison_models(gpt_config(args))
    for name, (model_class, cfg) in models.items():
        print(f"{name}: {parameter_count(model_class, cfg):,} parameters")
    train_loader, val_loader = verdict_loaders(args.context_length, args.batch_size)
    print(
        f"{len(train_loader)} batches per epoch, {args.epochs} epochs, AdamW lr {lr} "
        f"weight decay {args.weight_decay}, device {device}"
    )
    tokenizer = gpt2_tokenizer()
    runs = []
    for seed in args.seeds:
        for name, (model_class, cfg) in models.items():
            print(f"\n{name}, seed {seed}")
            run = pretrain_architecture(
                name, model_class, cfg, train_loader, val_loader, device, tokenizer,
                seed=seed, num_epochs=args.epochs, lr=lr, weight_decay=args.weight_decay,
                eval_iter=args.eval_iter,
            )  # fmt: skip
            print(f"{run.seconds:.0f} s; sample: {run.sample}")
            runs.append(run)
    with pd.option_context("display.width", 200, "display.precision", 3):
        for seed in args.seeds:
            print(f"\nLosses, seed {seed}:")
            print(loss_table([run for run in runs if run.seed == seed]).to_string(index=False))
        print("\nAfter the last step:")
        print(final_loss_table(runs).to_string())
    plot_architecture_losses(runs).savefig(args.output, dpi=120)
    print(f"\nPlot saved to {args.output}")


if __name__ == "__main__":
    main()
