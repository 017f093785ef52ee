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
    python ch07/dpo_finetune.py --checkpoint ch07/standin-sft.pth --max-entries 200 --lr 1e-4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from shared.cli import (
    HelpFormatter,
    add_option,
    add_training_options,
    errors_as_one_line,
    non_negative_int,
    positive_float,
)
from shared.device import get_device
from shared.gpt import GPTModel
from shared.instruction import (
    finetuning_loaders,
    format_input,
    generate_response,
    split_for_finetuning,
)
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


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="Preference-tune an instruction-finetuned GPT with DPO on preference data (a "
        'JSON list of entries with "instruction", "input", "chosen" and "rejected") and save it.',
        formatter_class=HelpFormatter,
    )
    add_option(
        parser,
        "--checkpoint",
        HERE / "gpt2-355M-sft.pth",
        default_text="ch07/gpt2-355M-sft.pth, as finetune_instructions.py saves it",
    )
    add_option(parser, "--data", default_text="the course's 1,100 entries")
    add_option(parser, "--max-entries", default_text="all")
    add_training_options(
        parser, epochs=1, batch_size=8, lr=5e-6, weight_decay=0.01, lr_text="5e-6, the book's"
    )
    parser.add_argument(
        "--beta",
        type=positive_float,
        default=0.1,
        help="how far the policy may move from the reference: smaller is further",
    )
    parser.add_argument(
        "--reduction",
        default="sum",
        choices=REDUCTIONS,
        help="a response's log-probability: the sum over its tokens (the DPO paper's log p(y|x)), "
        "or their per-token mean as the book's DPO notebook computes it; at the same beta the sum "
        "gives a much stronger loss",
    )
    add_option(parser, "--allowed-max-length", 1024)
    parser.add_argument(
        "--compare",
        type=non_negative_int,
        default=3,
        help="print both models' responses to the first N test instructions",
    )
    add_option(parser, "--max-new-tokens", 64)
    add_option(parser, "--output", default_text="beside --checkpoint, '-sft' replaced by '-dpo'")
    add_option(parser, "--seed", 123)
    add_option(parser, "--device")
    return parser


def load_sft_model(path: Path) -> tuple[GPTModel, dict]:
    """The GPTModel of a finetune_instructions.py checkpoint and its extra entries (config,
    style). Raises ValueError naming the file when it is missing, unreadable or has no config."""
    if not path.is_file():
        raise ValueError(
            f"no checkpoint at {path}; run ch07/finetune_instructions.py first, or pass "
            "--checkpoint"
        )
    return load_model_checkpoint(path, hint="was it saved by finetune_instructions.py?")


def default_checkpoint(sft_checkpoint: Path) -> Path:
    """ch07/gpt2-355M-sft.pth -> ch07/gpt2-355M-dpo.pth (other names get -dpo appended)."""
    stem = sft_checkpoint.stem.removesuffix("-sft")
    return sft_checkpoint.with_name(f"{stem}-dpo{sft_checkpoint.suffix}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with errors_as_one_line():
        tune(args)
    return 0


def tune(args: argparse.Namespace) -> None:
    """SFT checkpoint -> DPO -> checkpoint, with the test-set figures and the comparison printed;
    ValueError for bad input (data, checkpoint, a prompt that leaves no room for its response)."""
    torch.manual_seed(args.seed)
    device = get_device(args.device)
    tokenizer = gpt2_tokenizer()
    data = load_preference_data(args.data)
    model, extra = load_sft_model(args.checkpoint)
    data = data[: args.max_entries] if args.max_entries is not None else data
    train_data, val_data, test_data = split_for_finetuning(data)
    style = extra.get("style", "alpaca")
    print(f"Model: {args.checkpoint} ({sum(p.numel() for p in model.parameters()):,} params)")
    policy = model.to(device)
    reference = frozen_copy(policy)

    loader_args = dict(
        tokenizer=tokenizer,
        batch_size=args.batch_size,
        device=device,
        allowed_max_length=args.allowed_max_length,
        style=style,
    )
    torch.manual_seed(args.seed)
    train_loader, val_loader, test_loader = finetuning_loaders(
        create_preference_dataloader, train_data, val_data, test_data, **loader_args
    )
    optimizer = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=args.weight_decay)
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

    checkpoint = args.output or default_checkpoint(args.checkpoint)
    dpo = {"beta": args.beta, "reduction": args.reduction, "lr": args.lr, "epochs": args.epochs}
    save_checkpoint(checkpoint, policy, **{**extra, "dpo": dpo})
    print(f"Model saved to {checkpoint}")


if __name__ == "__main__":
    sys.exit(main())
