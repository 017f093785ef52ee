"""Finetune a GPT as a spam classifier (Chapter 6), and classify messages with it.

Examples (from the repository root):

    python ch06/train_classifier.py train                       # the chapter's settings
    python ch06/train_classifier.py train --standin --max-train-examples 80 --epochs 1
    python ch06/train_classifier.py train --trainable-blocks all --epochs 3
    python ch06/train_classifier.py train --pad-length context --output runs/padded.pth
    python ch06/train_classifier.py classify "WINNER! Claim your prize now" "See you at 6?"
    echo "Free entry to win a car" | python ch06/train_classifier.py classify -

``train`` downloads the SMS Spam Collection (once; cached), balances and splits it 70/10/20 into
CSV files, loads pretrained GPT-2 (``--gpt2``; offline: a randomly initialised stand-in, said in
one line with the reason; with ``--require-gpt2`` an error instead; ``--standin`` asks for it),
replaces the output layer with a 2-class head, freezes all but the last ``--trainable-blocks``
transformer blocks, finetunes, prints training, validation and test accuracy, and saves the
classifier. ``classify`` loads such a file and prints ``spam`` or ``not spam`` for each message.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from shared.classification import (
    FINETUNE_DEFAULTS,
    calc_accuracy_loader,
    classify_review,
    convert_to_classifier,
    create_spam_loaders,
    load_classifier,
    prepare_spam_splits,
    save_classifier,
    train_classifier_simple,
)
from shared.cli import (
    HelpFormatter,
    add_gpt2_options,
    add_option,
    add_training_options,
    errors_as_one_line,
    gpt2_from_options,
    non_negative_int,
    positive_int,
)
from shared.device import get_device
from shared.tokenizers import gpt2_tokenizer

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "review_classifier.pth"
SHOWN_OUTPUT = "ch06/review_classifier.pth"  # DEFAULT_OUTPUT as --help shows it


def trainable_blocks(value: str) -> int | str:
    """argparse type of --trainable-blocks: "all" or a whole number >= 0."""
    if value == "all":
        return value
    try:
        return non_negative_int(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f'expected "all" or a whole number >= 0, got {value!r}'
        ) from None


def pad_length(value: str) -> int | str:
    """argparse type of --pad-length: "longest", "context" or a whole number >= 1."""
    if value in ("longest", "context"):
        return value
    try:
        return positive_int(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f'expected "longest", "context" or a whole number >= 1, got {value!r}'
        ) from None


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the two subcommands, train and classify."""
    parser = argparse.ArgumentParser(
        description="Finetune a GPT as a spam classifier (Chapter 6), or classify messages.",
        formatter_class=HelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_train_options(
        commands.add_parser(
            "train", help="data -> finetuned classifier", formatter_class=HelpFormatter
        )
    )
    classify = commands.add_parser(
        "classify", help="label messages with a saved classifier", formatter_class=HelpFormatter
    )
    classify.add_argument(
        "messages", nargs="+", help='messages to classify; "-" reads one message per line of stdin'
    )
    add_option(classify, "--checkpoint", DEFAULT_OUTPUT, default_text=f"{SHOWN_OUTPUT}, from train")
    add_option(classify, "--device")
    return parser


def add_train_options(train: argparse.ArgumentParser) -> None:
    """The options of the train subcommand."""
    add_gpt2_options(train, "124M")
    train.add_argument(
        "--trainable-blocks",
        type=trainable_blocks,
        default=None,
        help="how many of the last transformer blocks to train (with the final norm and the "
        'head); 0 trains only those two; "all" trains the whole model (default: 1 for GPT-2, '
        '"all" for the random stand-in, as in the chapter)',
    )
    train.add_argument(
        "--pad-length",
        type=pad_length,
        default="longest",
        help='pad (or cut) messages to: "longest" training message, the model\'s "context" '
        "length, or a number of tokens",
    )
    add_training_options(
        train,
        epochs=5,
        batch_size=8,
        lr=None,
        weight_decay=0.1,
        eval_freq=50,
        lr_text="5e-5 for GPT-2, 2e-4 for the stand-in, as in the chapter",
    )
    train.add_argument(
        "--max-train-examples",
        type=positive_int,
        default=None,
        help="train on only the first N training messages, for quick trials (default: all 1,045)",
    )
    train.add_argument(
        "--data-dir",
        type=Path,
        default=HERE,
        help="where train/validation/test.csv are written (default: ch06/)",
    )
    add_option(train, "--output", DEFAULT_OUTPUT, default_text=SHOWN_OUTPUT)
    add_option(train, "--seed", 123)
    add_option(train, "--device")


def training_files(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """The split CSV files; with --max-train-examples, a training file of the first N rows."""
    train_csv, val_csv, test_csv = prepare_spam_splits(args.data_dir, seed=args.seed)
    if args.max_train_examples is not None:
        limited = args.data_dir / f"train-first-{args.max_train_examples}.csv"
        pd.read_csv(train_csv, dtype=str, keep_default_na=False).head(
            args.max_train_examples
        ).to_csv(limited, index=None)
        train_csv = limited
    return train_csv, val_csv, test_csv


def train(args: argparse.Namespace, device: torch.device) -> None:
    pretrained = gpt2_from_options(args)
    model, config, description = pretrained.model, pretrained.config, pretrained.description
    print(f"Model: {description}")
    defaults = FINETUNE_DEFAULTS["standin" if pretrained.is_standin else "gpt2"]
    if args.trainable_blocks is None:
        args.trainable_blocks = defaults["trainable_blocks"]
    if args.lr is None:
        args.lr = defaults["learning_rate"]
    max_length = {"longest": None, "context": config["context_length"]}.get(
        args.pad_length, args.pad_length
    )
    if max_length is not None and max_length > config["context_length"]:
        raise ValueError(
            f"--pad-length {max_length} exceeds the model's context length "
            f"({config['context_length']})"
        )
    n_blocks = config["n_layers"]
    if args.trainable_blocks != "all" and args.trainable_blocks > n_blocks:
        raise ValueError(f"--trainable-blocks {args.trainable_blocks}: the model has {n_blocks}")
    tokenizer = gpt2_tokenizer()
    train_loader, val_loader, test_loader = create_spam_loaders(
        training_files(args),
        tokenizer,
        batch_size=args.batch_size,
        max_length=max_length,
        seed=args.seed,
    )
    max_length = train_loader.dataset.max_length
    if max_length > config["context_length"]:
        raise ValueError(
            f"the longest training message has {max_length} tokens, more than the model's "
            f"context length ({config['context_length']}); pass --pad-length"
        )

    torch.manual_seed(args.seed)
    model = convert_to_classifier(model, num_classes=2, trainable_blocks=args.trainable_blocks)
    model.to(device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(
        f"{len(train_loader.dataset)} training messages padded to {max_length} tokens, "
        f"{len(train_loader)} batches per epoch; {trainable:,} trainable parameters; "
        f"learning rate {args.lr}; device {device}"
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    start = time.time()
    train_classifier_simple(
        model,
        train_loader,
        val_loader,
        optimizer,
        device,
        args.epochs,
        args.eval_freq,
        args.eval_iter,
    )
    print(f"Training took {(time.time() - start) / 60:.2f} minutes")

    accuracies = {
        name: calc_accuracy_loader(loader, model, device)
        for name, loader in (("train", train_loader), ("val", val_loader), ("test", test_loader))
    }
    print(
        f"Accuracy: training {accuracies['train'] * 100:.2f}%, "
        f"validation {accuracies['val'] * 100:.2f}%, test {accuracies['test'] * 100:.2f}%"
    )
    save_classifier(
        args.output,
        model,
        config,
        max_length,
        description=description,
        trainable_blocks=str(args.trainable_blocks),
        learning_rate=args.lr,
        epochs=args.epochs,
        train_accuracy=accuracies["train"],
        val_accuracy=accuracies["val"],
        test_accuracy=accuracies["test"],
    )
    print(f"Saved the classifier to {args.output}")


def classify(args: argparse.Namespace, device: torch.device) -> None:
    if not args.checkpoint.is_file():
        raise ValueError(
            f"classifier file {args.checkpoint} does not exist; train one with "
            "'python ch06/train_classifier.py train'"
        )
    model, extra = load_classifier(args.checkpoint, device)
    tokenizer = gpt2_tokenizer()
    messages = []
    for message in args.messages:
        messages += sys.stdin.read().splitlines() if message == "-" else [message]
    for message in messages:
        label = classify_review(message, model, tokenizer, device, max_length=extra["max_length"])
        print(f"{label}\t{message}")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    device = get_device(args.device)
    with errors_as_one_line():
        (train if args.command == "train" else classify)(args, device)


if __name__ == "__main__":
    main()
