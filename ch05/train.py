"""Pretrain a GPT on your own text files (Chapter 5), with checkpoints and a loss plot.

Examples (from the repository root):

    python ch05/train.py --data my_text.txt --model tiny --epochs 3
    python ch05/train.py --data a.txt b.txt --model 124M --context-length 256 --epochs 10
    python ch05/train.py --data a.txt --checkpoint-dir runs/a --epochs 20 --resume

The text files are joined with GPT-2's <|endoftext|> separator and split into training and
validation text. After every epoch the script saves ``last.pth`` (model, optimizer, config and
loss history) and ``losses.png`` in the checkpoint directory; ``--resume`` continues from
``last.pth`` up to ``--epochs`` epochs in all. ``ch05/generate.py`` generates from such a
checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from tqdm import tqdm

from shared.dataset import create_dataloader_v1
from shared.device import get_device
from shared.gpt import GPT2_MODEL_CONFIGS, GPTModel
from shared.pretraining import (
    calc_loss_batch,
    evaluate_model,
    generate_and_print_sample,
    load_checkpoint,
    plot_losses,
    read_checkpoint_extra,
    save_checkpoint,
)
from shared.tokenizers import END_OF_TEXT, gpt2_tokenizer

# Model sizes: width, depth and heads. "tiny" and "small" train in seconds to minutes on a CPU;
# the others have the architecture of GPT-2's released sizes.
MODEL_PRESETS = {
    "tiny": {"emb_dim": 64, "n_layers": 2, "n_heads": 2},
    "small": {"emb_dim": 256, "n_layers": 4, "n_heads": 4},
    **{
        size: {key: cfg[key] for key in ("emb_dim", "n_layers", "n_heads")}
        for size, cfg in GPT2_MODEL_CONFIGS.items()
    },
}

CHECKPOINT_NAME = "last.pth"
PLOT_NAME = "losses.png"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="Pretrain a GPT model on text files (Chapter 5).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", nargs="+", type=Path, required=True, help="UTF-8 text files")
    parser.add_argument("--model", choices=MODEL_PRESETS, default="tiny", help="model size")
    parser.add_argument("--context-length", type=int, default=256, help="tokens per window")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10, help="epochs in all (also on resume)")
    parser.add_argument("--lr", type=float, default=4e-4, help="AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--val-fraction", type=float, default=0.1, help="text kept for validation")
    parser.add_argument("--eval-freq", type=int, default=5, help="evaluate every N steps")
    parser.add_argument("--eval-iter", type=int, default=5, help="batches per evaluation")
    parser.add_argument(
        "--start-context", default="Every effort moves you", help="prompt of the samples"
    )
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("checkpoints"))
    parser.add_argument("--resume", action="store_true", help="continue from last.pth")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best one)")
    args = parser.parse_args(argv)
    for name in ("context_length", "batch_size", "epochs", "eval_freq", "eval_iter"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0.0 < args.val_fraction < 1.0:
        parser.error("--val-fraction must be between 0 and 1")
    return args


def build_config(args: argparse.Namespace) -> dict:
    """The GPTModel config of the chosen preset and context length."""
    return {
        "vocab_size": 50257,
        "context_length": args.context_length,
        "drop_rate": args.dropout,
        "qkv_bias": False,
        **MODEL_PRESETS[args.model],
    }


def read_texts(paths: list[Path]) -> str:
    """The files' contents joined by <|endoftext|>; ValueError for a missing or empty file."""
    texts = []
    for path in paths:
        if not path.is_file():
            raise ValueError(f"data file {path} does not exist")
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise ValueError(f"data file {path} is empty")
        texts.append(text)
    return END_OF_TEXT.join(texts)


def make_loaders(text: str, config: dict, args: argparse.Namespace):
    """Training and validation loaders: the last val_fraction of the text is for validation."""
    split = int((1 - args.val_fraction) * len(text))
    window = config["context_length"]
    train_loader = create_dataloader_v1(
        text[:split], args.batch_size, window, stride=window, shuffle=True, drop_last=True
    )
    val_loader = create_dataloader_v1(
        text[split:], args.batch_size, window, stride=window, shuffle=False, drop_last=False
    )
    return train_loader, val_loader


def build_model_and_optimizer(config: dict, args: argparse.Namespace, device):
    """A freshly initialised GPTModel on device and its AdamW optimizer."""
    torch.manual_seed(args.seed)
    model = GPTModel(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    return model, optimizer


def new_state() -> dict:
    """Training progress as stored in checkpoints: epochs done, steps, tokens, loss history."""
    return {
        "epoch": 0,
        "global_step": 0,
        "tokens_seen": 0,
        "train_losses": [],
        "val_losses": [],
        "track_tokens_seen": [],
        "track_epochs": [],
    }


def resume_state(path: Path, model, optimizer, config: dict, device) -> dict:
    """Load model and optimizer from a checkpoint of the same config; return its progress."""
    saved_config = read_checkpoint_extra(path).get("config")
    if saved_config != config:
        raise ValueError(
            f"{path} was trained with config {saved_config}, not {config}; "
            "pass the same --model, --context-length and --dropout to resume"
        )
    extra = load_checkpoint(path, model, optimizer, map_location=device)
    return {key: extra[key] for key in new_state()}


def train_epoch(model, optimizer, train_loader, val_loader, state: dict, args, device, bar) -> None:
    """One pass over train_loader; updates state's counters and loss history in place."""
    steps_per_epoch = len(train_loader)
    model.train()
    for input_batch, target_batch in train_loader:
        optimizer.zero_grad()
        loss = calc_loss_batch(input_batch, target_batch, model, device)
        loss.backward()
        optimizer.step()
        state["tokens_seen"] += input_batch.numel()
        if state["global_step"] % args.eval_freq == 0:
            train_loss, val_loss = evaluate_model(
                model, train_loader, val_loader, device, args.eval_iter
            )
            state["train_losses"].append(train_loss)
            state["val_losses"].append(val_loss)
            state["track_tokens_seen"].append(state["tokens_seen"])
            state["track_epochs"].append((state["global_step"] + 1) / steps_per_epoch)
            tqdm.write(
                f"Ep {state['epoch'] + 1} (Step {state['global_step']:06d}): "
                f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}"
            )
        state["global_step"] += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    state["epoch"] += 1


def save_progress(model, optimizer, config: dict, state: dict, checkpoint_dir: Path) -> None:
    """Write last.pth (model, optimizer, config, progress) and the loss plot losses.png."""
    save_checkpoint(checkpoint_dir / CHECKPOINT_NAME, model, optimizer, config=config, **state)
    if state["train_losses"]:
        fig = plot_losses(
            state["track_epochs"],
            state["track_tokens_seen"],
            state["train_losses"],
            state["val_losses"],
        )
        fig.savefig(checkpoint_dir / PLOT_NAME, dpi=120)
        plt.close(fig)


def train(model, optimizer, train_loader, val_loader, config, state, args, device) -> dict:
    """Train from state["epoch"] up to args.epochs epochs, saving after every epoch."""
    tokenizer = gpt2_tokenizer()
    remaining = args.epochs - state["epoch"]
    with tqdm(total=remaining * len(train_loader), desc="Training", unit="step") as bar:
        for epoch in range(state["epoch"], args.epochs):
            torch.manual_seed(args.seed + epoch)  # data order and dropout: same with --resume
            train_epoch(model, optimizer, train_loader, val_loader, state, args, device, bar)
            generate_and_print_sample(model, tokenizer, device, args.start_context)
            save_progress(model, optimizer, config, state, args.checkpoint_dir)
    return state


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device) if args.device else get_device()
    config = build_config(args)
    try:
        text = read_texts(args.data)
        train_loader, val_loader = make_loaders(text, config, args)
        model, optimizer = build_model_and_optimizer(config, args, device)
        checkpoint = args.checkpoint_dir / CHECKPOINT_NAME
        if args.resume and checkpoint.exists():
            state = resume_state(checkpoint, model, optimizer, config, device)
            print(f"Resuming from {checkpoint} after epoch {state['epoch']}")
        else:
            if args.resume:
                print(f"No checkpoint at {checkpoint}; starting from scratch")
            state = new_state()
    except ValueError as err:
        sys.exit(f"error: {err}")
    print(
        f"Model '{args.model}': {sum(p.numel() for p in model.parameters()):,} parameters; "
        f"{len(train_loader)} training batches per epoch; device {device}"
    )
    if state["epoch"] >= args.epochs:
        print(f"Already trained for {state['epoch']} epochs; raise --epochs to train more")
        return
    state = train(model, optimizer, train_loader, val_loader, config, state, args, device)
    print(
        f"Final train loss {state['train_losses'][-1]:.3f}, val loss {state['val_losses'][-1]:.3f}; "
        f"saved {args.checkpoint_dir / CHECKPOINT_NAME} and {args.checkpoint_dir / PLOT_NAME}"
    )


if __name__ == "__main__":
    main()
