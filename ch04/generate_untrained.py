"""Build Chapter 4's GPT model with random weights and let it continue a prompt.

The model is untrained, so the continuation is gibberish; the point is to see the whole pipeline
(tokenizer -> GPTModel -> greedy decoding -> tokenizer) run end to end. Examples:

    python ch04/generate_untrained.py "Hello, I am"
    python ch04/generate_untrained.py "Hello, I am" --size tiny --max-new-tokens 20 --seed 1
"""

from __future__ import annotations

import argparse

import torch

from shared.cli import errors_as_one_line
from shared.device import get_device
from shared.gpt import GPT2_MODEL_CONFIGS, GPT_CONFIG_124M, GPTModel, generate_text_simple
from shared.tokenizers import gpt2_tokenizer

# A model small enough to build and run in a fraction of a second, for quick tries and tests.
TINY_CONFIG = {**GPT_CONFIG_124M, "context_length": 32, "emb_dim": 64, "n_heads": 4, "n_layers": 2}

SIZES = ("tiny", *GPT2_MODEL_CONFIGS)


def model_config(size: str) -> dict:
    """The configuration for a --size choice.

    "124M" is the chapter's GPT_CONFIG_124M; the larger sizes take emb_dim, n_layers and n_heads
    from shared.gpt.GPT2_MODEL_CONFIGS and keep the chapter's other settings; "tiny" is TINY_CONFIG.
    """
    if size == "tiny":
        return dict(TINY_CONFIG)
    if size not in GPT2_MODEL_CONFIGS:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    layers = {k: GPT2_MODEL_CONFIGS[size][k] for k in ("emb_dim", "n_layers", "n_heads")}
    return {**GPT_CONFIG_124M, **layers}


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Continue a prompt with an untrained (randomly initialised) GPT model, "
        "using greedy decoding (Chapter 4).",
    )
    parser.add_argument("prompt", help='the text to continue, e.g. "Hello, I am"')
    parser.add_argument(
        "--size",
        choices=SIZES,
        default="124M",
        help="model size: 124M is the chapter's GPT_CONFIG_124M, tiny a 2-layer model with a "
        "32-token context (default: %(default)s)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=non_negative_int,
        default=10,
        help="how many tokens to generate (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=123,
        help="random seed for the initial weights (default: %(default)s)",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, mps, ... (default: cuda if available, then mps, else cpu)",
    )
    args = parser.parse_args(argv)
    if not args.prompt.strip():
        parser.error("the prompt is empty; give some text to continue")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device) if args.device else get_device()
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
