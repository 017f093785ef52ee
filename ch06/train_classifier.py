"""Finetune a GPT as a spam classifier (Chapter 6), and classify messages with it.

Examples (from the repository root):

    python ch06/train_classifier.py train                       # the chapter's settings
    python ch06/train_classifier.py train --trainable-blocks all --epochs 3
    python ch06/train_classifier.py train --pad-length context --output runs/padded.pth
    python ch06/train_classifier.py classify "WINNER! Claim your prize now" "See you at 6?"
    echo "Free entry to win a car" | python ch06/train_classifier.py classify -

``train`` downloads the SMS Spam Collection (once; cached), balances and splits it 70/10/20 into
CSV files, loads pretrained GPT-2 (offline: a randomly initialised stand-in, said in one line with
the reason; with ``--require-gpt2`` an error instead),
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
from shared.cli import HelpFormatter, errors_as_one_line
from shared.device import get_device
from shared.gpt2_weights import GPT2_HF_NAMES, load_pretrained_gpt2, standin_gpt
from shared.tokenizers import gpt2_tokenizer

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "review_classifier.pth"


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def trainable_blocks(value: str) -> int | str:
    if value == "all":
        return value
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected "all" or a number, got {value!r}') from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {number}")
    return number


def pad_length(value: str) -> int | str:
    if value in ("longest", "context"):
        return value
    try:
        return positive_int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'expected "longest", "context" or a number >= 1, got {value!r}'
        ) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the two subcommands, train and classify."""
    parser = argparse.ArgumentParser(
        description="Finetune a GPT as a spam classifier (Chapter 6), or classify messages.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    defaults = HelpFormatter

    train = commands.add_parser(
        "train", help="data -> finetuned classifier", formatter_class=defaults
    )
    train.add_argument(
        "--model",
        choices=[*GPT2_HF_NAMES, "standin"],
        default="124M",
        help="GPT-2 size to start from (offline: the random stand-in); "
        "'standin' skips the download and uses the stand-in",
    )
    train.add_argument(
        "--require-gpt2",
        action="store_true",
        help="stop with an error when GPT-2's weights cannot be had, instead of using the stand-in",
    )
    train.add_argument(
        "--trainable-blocks",
        type=trainable_blocks,
        default=None,
        help="how many of the last transformer blocks to train (with the final norm and the "
        'head); 0 trains only those two; "all" trains the whole model (default: 1 for GPT-2, '
        '"all" for the random stand-in, as in the chapter)',
    )
    train.add_argument(
        "--epochs", type=positive_int, default=5, help="passes over the training set"
    )
    train.add_argument(
        "--pad-length",
        type=pad_length,
        default="longest",
        help='pad (or cut) messages to: "longest" training message, the model\'s "context" '
        "length, or a number of tokens",
    )
    train.add_argument(
        "--lr",
        type=float,
        default=None,
        help="AdamW learning rate (default: 5e-5 for GPT-2, 2e-4 for the stand-in, as in the "
        "chapter)",
    )
    train.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay")
    train.add_argument("--batch-size", type=positive_int, default=8, help="messages per batch")
    train.add_argument("--eval-freq", type=positive_int, default=50, help="evaluate every N steps")
    train.add_argument("--eval-iter", type=positive_int, default=5, help="batches per evaluation")
    train.add_argument(
        "--max-train-examples",
        type=positive_int,
        default=None,
        help="train on only the first N training messages, for quick trials (default: all 1,045)",
    )
    train.add_argument(
        "--data-dir", type=Path, default=HERE, help="where train/validation/test.csv are written"
    )
    train.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="classifier file")
    train.add_argument("--seed", type=int, default=123, help="random seed (split, weights, order)")
    train.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best one)")

    classify = commands.add_parser(
        "classify", help="label messages with a saved classifier", formatter_class=defaults
    )
    classify.add_argument(
        "messages", nargs="+", help='messages to classify; "-" reads one message per line of stdin'
    )
    classify.add_argument(
        "--classifier", type=Path, default=DEFAULT_OUTPUT, help="a file written by 'train'"
    )
    classify.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best one)")
    args = parser.parse_args(argv)
    if args.command == "train" and args.require_gpt2 and args.model == "standin":
        parser.error("--require-gpt2 contradicts --model standin")
    return args


def load_base_model(name: str, seed: int, allow_standin: bool = True):
    """(model, config, description, is_standin) for a GPT-2 size or "standin"."""
    if name == "standin":
        pretrained = standin_gpt(seed)
    else:
        pretrained = load_pretrained_gpt2(name, seed=seed, allow_standin=allow_standin)
    return pretrained.model, pretrained.config, pretrained.description, pretrained.is_standin


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
    model, config, description, is_standin = load_base_model(
        args.model, args.seed, allow_standin=not args.require_gpt2
    )
    print(f"Model: {description}")
    defaults = FINETUNE_DEFAULTS["standin" if is_standin else "gpt2"]
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
    if not args.classifier.is_file():
        raise ValueError(
            f"classifier file {args.classifier} does not exist; train one with "
            "'python ch06/train_classifier.py train'"
        )
    model, extra = load_classifier(args.classifier, device)
    tokenizer = gpt2_tokenizer()
    messages = []
    for message in args.messages:
        messages += sys.stdin.read().splitlines() if message == "-" else [message]
    for message in messages:
        label = classify_review(message, model, tokenizer, device, max_length=extra["max_length"])
        print(f"{label}\t{message}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device) if args.device else get_device()
    with errors_as_one_line():
        (train if args.command == "train" else classify)(args, device)


if __name__ == "__main__":
    main()
