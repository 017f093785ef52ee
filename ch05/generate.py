"""Generate text from a ch05/train.py checkpoint or from OpenAI's GPT-2 weights (Chapter 5).

Examples (from the repository root):

    python ch05/generate.py --checkpoint checkpoints/last.pth --prompt "Every effort moves you"
    python ch05/generate.py --gpt2 124M --prompt "The meaning of life is" --temperature 0.8
    python ch05/generate.py --gpt2 355M --temperature 0 --max-new-tokens 30   # greedy

GPT-2 weights are downloaded once and cached (see shared.data). Without them (offline, nothing
cached) the script says why and uses the randomly initialised stand-in of shared.gpt2_weights;
with --require-gpt2 it stops with an error instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from shared.cli import HelpFormatter, errors_as_one_line
from shared.device import get_device
from shared.gpt import GPTModel
from shared.gpt2_weights import GPT2_HF_NAMES, load_pretrained_gpt2
from shared.pretraining import (
    generate,
    load_model_checkpoint,
    text_to_token_ids,
    token_ids_to_text,
)
from shared.tokenizers import gpt2_tokenizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="Generate text with a GPT model (Chapter 5).",
        formatter_class=HelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint", type=Path, help="a checkpoint written by ch05/train.py (default: none)"
    )
    source.add_argument(
        "--gpt2", choices=GPT2_HF_NAMES, help="OpenAI's GPT-2 weights of this size (default: none)"
    )
    parser.add_argument(
        "--require-gpt2",
        action="store_true",
        help="with --gpt2: stop with an error when the weights cannot be had, instead of using "
        "the random stand-in",
    )
    parser.add_argument("--prompt", default="Every effort moves you", help="the text to continue")
    parser.add_argument(
        "--max-new-tokens", type=int, default=50, help="how many tokens to generate at most"
    )
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="0 picks the most likely token (greedy)"
    )
    parser.add_argument(
        "--top-k", type=int, default=50, help="sample among the k likeliest; 0: all"
    )
    parser.add_argument("--seed", type=int, default=123, help="random seed for sampling")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best one)")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 0:
        parser.error("--max-new-tokens must be >= 0")
    if args.temperature < 0:
        parser.error("--temperature must be >= 0")
    if args.top_k < 0:
        parser.error("--top-k must be >= 0")
    if not args.prompt:
        parser.error("--prompt must not be empty")
    if args.require_gpt2 and not args.gpt2:
        parser.error("--require-gpt2 goes with --gpt2")
    return args


def load_model(args: argparse.Namespace) -> tuple[GPTModel, dict]:
    """The model (in eval mode) and its config, from --checkpoint or --gpt2."""
    if args.gpt2:
        pretrained = load_pretrained_gpt2(args.gpt2, allow_standin=not args.require_gpt2)
        print(f"Model: {pretrained.description}")
        return pretrained.model, pretrained.config
    model, extra = load_model_checkpoint(
        args.checkpoint, hint="use a checkpoint written by ch05/train.py"
    )
    print(f"Model: {args.checkpoint} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    return model.eval(), extra["config"]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device) if args.device else get_device()
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
