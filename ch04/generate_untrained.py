"""Build Chapter 4's GPT model with random weights and let it continue a prompt.

The model is untrained, so the continuation is gibberish; the point is to see the whole pipeline
(tokenizer -> GPTModel -> greedy decoding -> tokenizer) run end to end. Examples:

    python ch04/generate_untrained.py "Hello, I am"
    python ch04/generate_untrained.py "Hello, I am" --size tiny --max-new-tokens 20 --seed 1
"""

from __future__ import annotations

import argparse

import torch

from shared.cli import MODEL_SIZES, HelpFormatter, add_option, errors_as_one_line
from shared.device import get_device
from shared.gpt import GPT_CONFIG_124M, GPTModel, generate_text_simple
from shared.tokenizers import gpt2_tokenizer


def model_config(size: str) -> dict:
    """The configuration for a --size choice: the chapter's GPT_CONFIG_124M with that size's
    width, depth and heads (shared.cli.MODEL_SIZES); "124M" is GPT_CONFIG_124M itself."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(MODEL_SIZES)}")
    return {**GPT_CONFIG_124M, **MODEL_SIZES[size]}


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="Continue a prompt with an untrained (randomly initialised) GPT model, "
        "using greedy decoding (Chapter 4).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("prompt", help='the text to continue, e.g. "Hello, I am"')
    add_option(parser, "--size", "124M")
    add_option(parser, "--max-new-tokens", 10)
    add_option(parser, "--seed", 123)
    add_option(parser, "--device")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options of argv (default: sys.argv); a usage error for an empty prompt."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.prompt.strip():
        parser.error("the prompt is empty; give some text to continue")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = get_device(args.device)
    cfg = model_config(args.size)
    with errors_as_one_line():  # offline without the tokenizer's files: one line, no traceback
        tokenizer = gpt2_tokenizer()

    torch.manual_seed(args.seed)
    model = GPTModel(cfg).to(device).eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"Model: {args.size} ({n_params:,} parameters), seed {args.seed}, on {device}")

    prompt_ids = tokenizer.encode(args.prompt)
    print(f"Prompt: {args.prompt!r} ({len(prompt_ids)} tokens)")
    context = cfg["context_length"]
    if len(prompt_ids) > context:
        print(
            f"The prompt is longer than the context of {context} tokens: the model sees its last {context}."
        )

    idx = torch.tensor([prompt_ids], device=device)
    out = generate_text_simple(model, idx, args.max_new_tokens, context_size=context)
    ids = out[0].tolist()
    print(f"Token ids: {ids}")
    print(f"Output: {tokenizer.decode(ids)!r}")


if __name__ == "__main__":
    main()
