"""Generate text from a ch05/train.py checkpoint or from OpenAI's GPT-2 weights (Chapter 5).

Examples (from the repository root):

    python ch05/generate.py --checkpoint checkpoints/last.pth --prompt "Every effort moves you"
    python ch05/generate.py --prompt "The meaning of life is" --temperature 0.8   # GPT-2 124M
    python ch05/generate.py --gpt2 355M --temperature 0 --max-new-tokens 30       # greedy

Without --checkpoint it generates with GPT-2 (--gpt2, 124M by default), whose weights are
downloaded once and cached (see shared.data). Without them (offline, nothing cached) the script
says why and uses the randomly initialised stand-in of shared.gpt2_weights (--standin asks for
it); with --require-gpt2 it stops with an error instead.
"""

from __future__ import annotations

import argparse
import sys

import torch

from shared.cli import (
    HelpFormatter,
    add_gpt2_options,
    add_option,
    errors_as_one_line,
    gpt2_from_options,
    non_negative_float,
    non_negative_int,
)
from shared.device import get_device
from shared.gpt import GPTModel
from shared.pretraining import (
    generate,
    load_model_checkpoint,
    text_to_token_ids,
    token_ids_to_text,
)
from shared.tokenizers import gpt2_tokenizer


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="Generate text with a GPT model (Chapter 5): a checkpoint of ch05/train.py, "
        "or GPT-2.",
        formatter_class=HelpFormatter,
    )
    add_option(parser, "--checkpoint", default_text="none: GPT-2, see --gpt2")
    add_gpt2_options(parser, "124M")
    parser.add_argument("--prompt", default="Every effort moves you", help="the text to continue")
    add_option(parser, "--max-new-tokens", 50)
    parser.add_argument(
        "--temperature",
        type=non_negative_float,
        default=1.0,
        help="0 picks the most likely token (greedy)",
    )
    parser.add_argument(
        "--top-k", type=non_negative_int, default=50, help="sample among the k likeliest; 0: all"
    )
    add_option(parser, "--seed", 123)
    add_option(parser, "--device")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options of argv (default: sys.argv); a usage error where they do not go together."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.prompt:
        parser.error("--prompt must not be empty")
    given = sys.argv[1:] if argv is None else argv
    gpt2_given = any(arg.split("=")[0] == "--gpt2" for arg in given)
    if args.checkpoint and (gpt2_given or args.standin or args.require_gpt2):
        parser.error("--checkpoint replaces GPT-2: leave out --gpt2, --standin and --require-gpt2")
    return args


def load_model(args: argparse.Namespace) -> tuple[GPTModel, dict]:
    """The model (in eval mode) and its config, from --checkpoint or else as --gpt2 says."""
    if args.checkpoint is None:
        pretrained = gpt2_from_options(args)
        print(f"Model: {pretrained.description}")
        return pretrained.model, pretrained.config
    model, extra = load_model_checkpoint(
        args.checkpoint, hint="use a checkpoint written by ch05/train.py"
    )
    print(f"Model: {args.checkpoint} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    return model.eval(), extra["config"]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = get_device(args.device)
    with errors_as_one_line():
        model, config = load_model(args)
        tokenizer = gpt2_tokenizer()
    model.to(device)
    torch.manual_seed(args.seed)
    token_ids = generate(
        model,
        text_to_token_ids(args.prompt, tokenizer).to(device),
        max_new_tokens=args.max_new_tokens,
        context_size=config["context_length"],
        temperature=args.temperature,
        top_k=args.top_k or None,
        eos_id=tokenizer.eot_token,
    )
    print(token_ids_to_text(token_ids.cpu(), tokenizer))


if __name__ == "__main__":
    main()
