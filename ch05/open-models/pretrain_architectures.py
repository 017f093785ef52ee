"""Pretrain GPT-2, a Llama-3-style and a Qwen3-style model of one size on The Verdict, side by side.

Chapter 5's run (windows of 256 tokens, batch 2, AdamW with weight decay 0.1, 10 epochs) for each
of the three architectures at the same parameter count (shared.architecture_comparison), from
the same seed, on the same batches. Prints the models' parameter counts, a table of the losses
per epoch for each seed, the final losses of every seed side by side and a greedy sample of each
model, and saves a plot of the losses.

    python ch05/open-models/pretrain_architectures.py                      # the book's 124M GPT
    python ch05/open-models/pretrain_architectures.py --notebook-model --seeds 123 456

--notebook-model --seeds 123 repeats the runs of pretraining-architectures.ipynb (the same
numbers on the same machine). The book's 124M size, the default here, is too slow for the
notebook on a CPU: each of its three runs takes about as long as the chapter's training.
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

SMALL_LR, BOOK_LR = 2e-3, 4e-4  # the small GPTs' rate in ch05's bonus notebooks; the book's


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    add_option(parser, "--size", "124M")
    parser.add_argument(
        "--notebook-model",
        action="store_true",
        help="train the notebook's GPT instead of --size: 2 blocks of width 128 with 4 heads "
        "(13.3M parameters)",
    )
    add_option(parser, "--context-length", 256)
    add_option(parser, "--epochs", 10)
    add_option(parser, "--batch-size", 2)
    add_option(
        parser, "--lr", default_text=f"{SMALL_LR} for the notebook's model, tiny and small; "
        f"{BOOK_LR}, the book's, for GPT-2's sizes"
    )  # fmt: skip
    add_option(parser, "--weight-decay", 0.1)
    add_option(parser, "--eval-iter", 3)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[123], help="one run of each model per seed"
    )
    parser.add_argument(
        "--plot", type=Path, default=Path("architectures.png"), help="where the plot is saved"
    )
    add_option(parser, "--device")
    return parser


def gpt_config(args: argparse.Namespace) -> dict:
    """The GPTModel config of --size (or the notebook's) and --context-length, no dropout."""
    shape = {} if args.notebook_model else MODEL_SIZES[args.size]
    return {**SMALL_GPT_CONFIG, **shape, "context_length": args.context_length}


def learning_rate(args: argparse.Namespace) -> float:
    """--lr, or its default for the model's size."""
    if args.lr is not None:
        return args.lr
    return SMALL_LR if args.notebook_model or args.size in ("tiny", "small") else BOOK_LR


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with errors_as_one_line():
        compare(args)


def compare(args: argparse.Namespace) -> None:
    """Train every model for every seed; print the tables and save the plot."""
    device = get_device(args.device)
    if device.type == "cuda":
        enable_tf32()
    lr = learning_rate(args)
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
    with pd.option_context("display.width", 200):
        for seed in args.seeds:
            print(f"\nLosses, seed {seed}:")
            table = loss_table([run for run in runs if run.seed == seed])
            print(table.to_string(index=False, float_format="{:.3f}".format))
        print("\nAfter the last step:")
        print(final_loss_table(runs).to_string(float_format="{:.3f}".format))
    plot_architecture_losses(runs).savefig(args.plot, dpi=120)
    print(f"\nPlot saved to {args.plot}")


if __name__ == "__main__":
    main()
