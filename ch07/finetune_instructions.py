"""Finetune GPT-2 to follow instructions (Chapter 7), then answer the test set.

Data -> finetuned model -> responses file: the 1,100-entry instruction data (or your own JSON
list of {"instruction", "input", "output"} entries) is split 85/10/5 into training, test and
validation sets; the model is finetuned on the training set; its responses to the test set are
written to a JSON file (each test entry plus "model_response") that score_responses.py scores.

Starts from OpenAI's GPT-2 weights (--gpt2, 355M by default). Without them (offline, nothing
cached: it says why), or with --standin, it uses the course's stand-in: a small randomly
initialised GPT (shared.gpt2_weights.STANDIN_CONFIG); with --require-gpt2 it stops with an error
instead.

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

from shared.cli import (
    HelpFormatter,
    add_gpt2_options,
    add_option,
    add_training_options,
    errors_as_one_line,
    gpt2_from_options,
    read_json_file,
)
from shared.data import fetch
from shared.device import get_device
from shared.instruction import (
    PROMPT_STYLES,
    create_instruction_dataloader,
    finetuning_loaders,
    format_prompt,
    generate_response,
    split_for_finetuning,
    token_f1,
    validate_entries,
)
from shared.pretraining import calc_loss_loader, save_checkpoint, train_model_simple
from shared.tokenizers import gpt2_tokenizer

HERE = Path(__file__).resolve().parent
BOOK_LR = 5e-5  # the book's learning rate for pretrained GPT-2
STANDIN_LR = 1e-3  # the random stand-in learns almost nothing at 5e-5 in two epochs
RESPONSES = HERE / "instruction-data-with-response.json"


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="Finetune GPT-2 on instruction data (a JSON list of entries with "
        '"instruction", "input" and "output") and write its responses to the test set.',
        formatter_class=HelpFormatter,
    )
    add_option(parser, "--data", default_text="the course's 1,100 entries")
    add_option(parser, "--max-entries", default_text="all")
    add_gpt2_options(parser, "355M")
    parser.add_argument(
        "--style", default="alpaca", choices=PROMPT_STYLES, help="the prompt format"
    )
    add_training_options(
        parser,
        epochs=2,
        batch_size=8,
        lr=None,
        weight_decay=0.1,
        lr_text=f"{BOOK_LR} for GPT-2, {STANDIN_LR} for the stand-in",
    )
    add_option(parser, "--allowed-max-length", 1024)
    add_option(parser, "--max-new-tokens", 256)
    add_option(parser, "--responses", RESPONSES, default_text="ch07/" + RESPONSES.name)
    add_option(parser, "--output", default_text="ch07/<model>-sft.pth")
    add_option(parser, "--seed", 123)
    add_option(parser, "--device")
    return parser


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
    args = build_parser().parse_args(argv)
    with errors_as_one_line():
        finetune(args)
    return 0


def finetune(args: argparse.Namespace) -> None:
    """Data -> finetuned model -> responses file and checkpoint; ValueError for bad input."""
    torch.manual_seed(args.seed)
    device = get_device(args.device)
    tokenizer = gpt2_tokenizer()
    data = load_data(args.data, args.max_entries)
    train_data, val_data, test_data = split_for_finetuning(data)

    pretrained = gpt2_from_options(args)
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
    train_loader, val_loader, test_loader = finetuning_loaders(
        create_instruction_dataloader, train_data, val_data, test_data, **loader_args
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

    name = "standin" if is_standin else f"gpt2-{args.gpt2}"
    checkpoint = args.output or HERE / f"{name}-sft.pth"
    save_checkpoint(checkpoint, model, config=config, style=args.style)
    print(f"Model saved to {checkpoint}")


if __name__ == "__main__":
    sys.exit(main())
