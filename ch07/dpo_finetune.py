"""Preference-tune an instruction-finetuned GPT with DPO (a bonus to Chapter 7).

Checkpoint -> DPO -> checkpoint: starts from the model finetune_instructions.py saved (for
example ch07/gpt2-355M-sft.pth), trains it with direct preference optimization on the
1,100-entry preference data (or your own JSON list of {"instruction", "input", "chosen",
"rejected"} entries) against a frozen copy of itself, and saves the result in the same format,
so every ch07 tool that loads the first checkpoint loads this one too. The data are split like
Chapter 7's (85% training, 10% test, 5% validation); the validation set is evaluated during
training, and at the end the script prints the reward margin and preference accuracy on the
test set and the responses of both models to a few test instructions.

The defaults are the hyperparameters of the book's DPO notebook (one epoch, batches of 8, AdamW
with learning rate 5e-6 and weight decay 0.01, beta 0.1, evaluation every 5 steps on 5 batches),
with one exception: a response's log-probability is the sum over its tokens (--reduction sum,
log p(y | x) as the DPO paper defines it), where the book's notebook takes the per-token mean
(--reduction mean). The sum is the mean times the number of scored tokens, so at the same beta
the summed loss pulls much harder; pass --reduction mean to train as the book's notebook does.

Examples:
    python ch07/finetune_instructions.py && python ch07/dpo_finetune.py    # book's values, summed
    python ch07/dpo_finetune.py --sft-checkpoint ch07/standin-sft.pth --max-entries 200 --lr 1e-4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from shared.data import DataUnavailableError
from shared.device import get_device
from shared.gpt import GPTModel
from shared.instruction import format_input, generate_response, split_instruction_data
from shared.preference import (
    REDUCTIONS,
    calc_dpo_loader,
    create_preference_dataloader,
    frozen_copy,
    load_preference_data,
    train_model_dpo,
)
from shared.pretraining import load_model_checkpoint, save_checkpoint
from shared.tokenizers import gpt2_tokenizer

HERE = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Preference-tune an instruction-finetuned GPT with DPO and save it."
    )
    parser.add_argument(
        "--sft-checkpoint",
        type=Path,
        default=HERE / "gpt2-355M-sft.pth",
        help="the model to start from, as finetune_instructions.py saves it "
        "(default: ch07/gpt2-355M-sft.pth)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="JSON list of preference entries (default: the course's 1,100 entries)",
    )
    parser.add_argument(
        "--max-entries",
        type=int,
        default=None,
        help="use only the first N entries, for quick runs (default: all)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=1,
        help="passes over the training pairs (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="preference pairs per step (default: %(default)s)"
    )
    parser.add_argument(
        "--lr", type=float, default=5e-6, help="learning rate (default: %(default)s, the book's)"
    )
    parser.add_argument(
        "--weight-decay",
        type=float,
        default=0.01,
        help="AdamW's weight decay (default: %(default)s)",
    )
    parser.add_argument(
        "--beta",
        type=float,
        default=0.1,
        help="how far the policy may move from the reference: smaller is further "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--reduction",
        default="sum",
        choices=REDUCTIONS,
        help="a response's log-probability: the sum over its tokens (the DPO paper's log p(y|x)), "
        "or their per-token mean as the book's DPO notebook computes it; at the same beta the sum "
        "gives a much stronger loss (default: %(default)s)",
    )
    parser.add_argument(
        "--allowed-max-length",
        type=int,
        default=1024,
        help="cut prompt + response to this many tokens (default: %(default)s)",
    )
    parser.add_argument(
        "--eval-freq", type=int, default=5, help="evaluate every N steps (default: %(default)s)"
    )
    parser.add_argument(
        "--eval-iter", type=int, default=5, help="batches per evaluation (default: %(default)s)"
    )
    parser.add_argument(
        "--compare",
        type=int,
        default=3,
        help="print both models' responses to the first N test instructions (default: %(default)s)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=64,
        help="longest response generated for the comparison (default: %(default)s)",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="where to save the tuned model (default: beside the SFT checkpoint, "
        "'-sft' replaced by '-dpo')",
    )
    parser.add_argument("--seed", type=int, default=123, help="random seed (default: %(default)s)")
    args = parser.parse_args(argv)
    for name in ("max_entries", "epochs", "batch_size", "eval_freq", "eval_iter"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    for name in ("compare", "max_new_tokens"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.allowed_max_length < 2:
        parser.error(f"--allowed-max-length must be >= 2, got {args.allowed_max_length}")
    if args.lr <= 0 or args.beta <= 0:
        parser.error(f"--lr and --beta must be > 0, got {args.lr} and {args.beta}")
    return args


def load_sft_model(path: Path) -> tuple[GPTModel, dict]:
    """The GPTModel of a finetune_instructions.py checkpoint and its extra entries (config,
    style). Raises ValueError naming the file when it is missing, unreadable or has no config."""
    if not path.is_file():
        raise ValueError(
            f"no checkpoint at {path}; run ch07/finetune_instructions.py first, or pass "
            "--sft-checkpoint"
        )
    return load_model_checkpoint(path, hint="was it saved by finetune_instructions.py?")


def default_checkpoint(sft_checkpoint: Path) -> Path:
    """ch07/gpt2-355M-sft.pth -> ch07/gpt2-355M-dpo.pth (other names get -dpo appended)."""
    stem = sft_checkpoint.stem.removesuffix("-sft")
    return sft_checkpoint.with_name(f"{stem}-dpo{sft_checkpoint.suffix}")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = get_device()
    tokenizer = gpt2_tokenizer()

    try:
        data = load_preference_data(args.data)
        model, extra = load_sft_model(args.sft_checkpoint)
    except (OSError, ValueError, DataUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    data = data[: args.max_entries] if args.max_entries is not None else data
    train_data, val_data, test_data = split_instruction_data(data)
    print(
        f"{len(data)} entries: {len(train_data)} training, {len(val_data)} validation, "
        f"{len(test_data)} test"
    )
    if not (train_data and val_data and test_data):
        print("error: too few entries for a training, validation and test set", file=sys.stderr)
        return 1
    style = extra.get("style", "alpaca")
    print(f"Model: {args.sft_checkpoint} ({sum(p.numel() for p in model.parameters()):,} params)")
    policy = model.to(device)
    reference = frozen_copy(policy)

    loader_args = dict(
        tokenizer=tokenizer,
        batch_size=args.batch_size,
        device=device,
        allowed_max_length=args.allowed_max_length,
        style=style,
    )
    try:
        torch.manual_seed(args.seed)
        train_loader = create_preference_dataloader(
            train_data, shuffle=True, drop_last=True, **loader_args
        )
        val_loader = create_preference_dataloader(val_data, **loader_args)
        test_loader = create_preference_dataloader(test_data, **loader_args)
        if len(train_loader) == 0:
            raise ValueError(
                f"{len(train_data)} training entries make no full batch of {args.batch_size}; "
                "use more entries or a smaller --batch-size"
            )
        optimizer = torch.optim.AdamW(
            policy.parameters(), lr=args.lr, weight_decay=args.weight_decay
        )
        start = time.time()
        history = train_model_dpo(
            policy, reference, train_loader, val_loader, optimizer, device,
            num_epochs=args.epochs, beta=args.beta, eval_freq=args.eval_freq,
            eval_iter=args.eval_iter, reduction=args.reduction,
        )  # fmt: skip
        policy.eval()
        test = calc_dpo_loader(
            test_loader, policy, reference, device, beta=args.beta, reduction=args.reduction
        )
    except ValueError as err:  # e.g. a prompt that leaves no room for its response
        print(f"error: {err}", file=sys.stderr)
        return 1
    val = history.val[-1]
    print(
        f"Training took {time.time() - start:.1f} s; last evaluation: validation loss "
        f"{val.loss:.3f}, reward margin {val.margin:.3f}, accuracy {val.accuracy:.0%}"
    )
    print(
        f"Test: loss {test.loss:.3f}, reward margin {test.margin:.3f} (chosen {test.chosen_reward:.3f}, "
        f"rejected {test.rejected_reward:.3f}), preference accuracy {test.accuracy:.0%}"
    )

    for entry in test_data[: args.compare]:
        print("-" * 60 + f"\n{format_input(entry, style)}\n")
        for name, model in (("Before DPO", reference), ("After DPO", policy)):
            response = generate_response(
                model, tokenizer, entry, device, max_new_tokens=args.max_new_tokens, style=style
            )
            print(f"{name}:\n>> {response}")

    checkpoint = args.checkpoint or default_checkpoint(args.sft_checkpoint)
    dpo = {"beta": args.beta, "reduction": args.reduction, "lr": args.lr, "epochs": args.epochs}
    save_checkpoint(checkpoint, policy, **{**extra, "dpo": dpo})
    print(f"Model saved to {checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
