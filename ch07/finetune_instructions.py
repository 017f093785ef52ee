"""Finetune GPT-2 to follow instructions (Chapter 7), then answer the test set.

Data -> finetuned model -> responses file: the 1,100-entry instruction data (or your own JSON
list of {"instruction", "input", "output"} entries) is split 85/10/5 into training, test and
validation sets; the model is finetuned on the training set; its responses to the test set are
written to a JSON file (each test entry plus "model_response") that score_responses.py scores.

Starts from OpenAI's GPT-2 weights. Without them (offline, nothing cached: it says why), or with
--standin, it uses the course's stand-in: a small randomly initialised GPT
(shared.gpt2_weights.STANDIN_CONFIG); with --require-gpt2 it stops with an error instead.

Examples:
    python finetune_instructions.py                      # the book's settings, GPT-2 355M
    python finetune_instructions.py --standin --max-entries 40 --epochs 1 --max-new-tokens 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from shared.cli import HelpFormatter, errors_as_one_line, read_json_file
from shared.data import fetch
from shared.device import get_device
from shared.gpt2_weights import load_pretrained_gpt2, standin_gpt
from shared.instruction import (
    PROMPT_STYLES,
    create_instruction_dataloader,
    format_prompt,
    generate_response,
    split_instruction_data,
    token_f1,
    validate_entries,
)
from shared.pretraining import calc_loss_loader, save_checkpoint, train_model_simple
from shared.tokenizers import gpt2_tokenizer

HERE = Path(__file__).resolve().parent
BOOK_LR = 5e-5  # the book's learning rate for pretrained GPT-2
STANDIN_LR = 1e-3  # the random stand-in learns almost nothing at 5e-5 in two epochs


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Finetune GPT-2 on instruction data and write its responses to the test set.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="JSON list of instruction entries (default: the course's 1,100 entries)",
    )
    parser.add_argument(
        "--max-entries",
        type=int,
        default=None,
        help="use only the first N entries, for quick runs (default: all)",
    )
    parser.add_argument(
        "--model-size",
        default="355M",
        choices=["124M", "355M", "774M", "1558M"],
        help="the GPT-2 size to finetune",
    )
    models = parser.add_mutually_exclusive_group()
    models.add_argument(
        "--standin", action="store_true", help="skip GPT-2 and use the small random stand-in model"
    )
    models.add_argument(
        "--require-gpt2",
        action="store_true",
        help="stop with an error when GPT-2's weights cannot be had, instead of using the stand-in",
    )
    parser.add_argument(
        "--style", default="alpaca", choices=PROMPT_STYLES, help="the prompt format"
    )
    parser.add_argument("--epochs", type=int, default=2, help="passes over the training set")
    parser.add_argument("--batch-size", type=int, default=8, help="entries per batch")
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"learning rate (default: {BOOK_LR} for GPT-2, {STANDIN_LR} for the stand-in)",
    )
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay")
    parser.add_argument(
        "--allowed-max-length",
        type=int,
        default=1024,
        help="cut training sequences to this many tokens",
    )
    parser.add_argument("--eval-freq", type=int, default=5, help="evaluate every N steps")
    parser.add_argument("--eval-iter", type=int, default=5, help="batches per evaluation")
    parser.add_argument(
        "--max-new-tokens", type=int, default=256, help="longest response generated per test entry"
    )
    parser.add_argument(
        "--responses",
        type=Path,
        default=HERE / "instruction-data-with-response.json",
        help="where to write the test entries with the model's responses",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="where to save the finetuned model (default: ch07/<model>-sft.pth)",
    )
    parser.add_argument("--seed", type=int, default=123, help="random seed (weights, order)")
    args = parser.parse_args(argv)
    for name in (
        "max_entries",
        "epochs",
        "batch_size",
        "eval_freq",
        "eval_iter",
        "allowed_max_length",
    ):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.max_new_tokens < 0:
        parser.error(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    return args


def load_data(path: Path | None, max_entries: int | None) -> list[dict]:
    """The instruction entries, validated, optionally only the first max_entries; ValueError
    naming the file (and the entry) when it is not a list of instruction entries."""
    path = path if path is not None else fetch("instruction-data")
    data = read_json_file(path)
    if not isinstance(data, list):
        raise ValueError(f"{path} must hold a JSON list of instruction entries")
    try:
        validate_entries(data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return data[:max_entries] if max_entries is not None else data


def main(argv=None) -> int:
    args = parse_args(argv)
    with errors_as_one_line():
        finetune(args)
    return 0


def finetune(args: argparse.Namespace) -> None:
    """Data -> finetuned model -> responses file and checkpoint; ValueError for bad input."""
    torch.manual_seed(args.seed)
    device = get_device()
    tokenizer = gpt2_tokenizer()
    data = load_data(args.data, args.max_entries)
    train_data, val_data, test_data = split_instruction_data(data)
    print(
        f"{len(data)} entries: {len(train_data)} training, {len(val_data)} validation, "
        f"{len(test_data)} test"
    )
    if not (train_data and val_data and test_data):
        raise ValueError("too few entries for a training, validation and test set")

    if args.standin:
        pretrained = standin_gpt(args.seed)
    else:
        pretrained = load_pretrained_gpt2(
            args.model_size, seed=args.seed, allow_standin=not args.require_gpt2
        )
    model, config, is_standin = pretrained.model, pretrained.config, pretrained.is_standin
    print(f"Model: {pretrained.description}")
    model.to(device)
    lr = args.lr if args.lr is not None else (STANDIN_LR if is_standin else BOOK_LR)
    print(f"Learning rate {lr}")

    loader_args = dict(
        tokenizer=tokenizer,
        batch_size=args.batch_size,
        device=device,
        allowed_max_length=args.allowed_max_length,
        style=args.style,
    )
    torch.manual_seed(args.seed)
    train_loader = create_instruction_dataloader(
        train_data, shuffle=True, drop_last=True, **loader_args
    )
    val_loader = create_instruction_dataloader(val_data, **loader_args)
    test_loader = create_instruction_dataloader(test_data, **loader_args)
    if len(train_loader) == 0:
        raise ValueError(
            f"{len(train_data)} training entries make no full batch of "
            f"{args.batch_size}; use more entries or a smaller --batch-size"
        )

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=args.weight_decay)
    start = time.time()
    train_losses, val_losses, _ = train_model_simple(
        model,
        train_loader,
        val_loader,
        optimizer,
        device,
        num_epochs=args.epochs,
        eval_freq=args.eval_freq,
        eval_iter=args.eval_iter,
        start_context=format_prompt(val_data[0], args.style),
        tokenizer=tokenizer,
    )
    print(
        f"Training took {time.time() - start:.1f} s; last evaluation: train loss "
        f"{train_losses[-1]:.3f}, val loss {val_losses[-1]:.3f}"
    )

    model.eval()
    with torch.no_grad():
        test_loss = calc_loss_loader(test_loader, model, device)
    results = []
    for entry in tqdm(test_data, desc="Responding", unit="entry"):
        response = generate_response(
            model, tokenizer, entry, device, max_new_tokens=args.max_new_tokens, style=args.style
        )
        results.append({**entry, "model_response": response})
    args.responses.parent.mkdir(parents=True, exist_ok=True)
    args.responses.write_text(json.dumps(results, indent=4), encoding="utf-8")
    f1 = sum(token_f1(r["model_response"], r["output"]) for r in results) / len(results)
    print(f"Test loss {test_loss:.3f}; word-overlap F1 with the reference outputs {f1:.3f}")
    print(f"Responses written to {args.responses}")

    name = "standin" if is_standin else f"gpt2-{args.model_size}"
    checkpoint = args.checkpoint or HERE / f"{name}-sft.pth"
    save_checkpoint(checkpoint, model, config=config, style=args.style)
    print(f"Model saved to {checkpoint}")


if __name__ == "__main__":
    sys.exit(main())
