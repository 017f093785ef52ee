"""Pretrain a GPT on your own text files (Chapter 5), with checkpoints and a loss plot.

Examples (from the repository root):

    python ch05/train.py --data my_text.txt --size tiny --epochs 3
    python ch05/train.py --data a.txt b.txt --size 124M --context-length 256 --epochs 10
    python ch05/train.py --data a.txt --checkpoint-dir runs/a --epochs 20 --resume

The text files are joined with GPT-2's <|endoftext|> separator and split into training and
validation text. After every epoch the script saves ``last.pth`` (model, optimizer, config and
loss history) and ``losses.png`` in the checkpoint directory; ``--resume`` continues from
``last.pth`` up to ``--epochs`` epochs in all. ``ch05/generate.py`` generates from such a
checkpoint.

A corpus larger than memory is tokenised once into a memory-mapped token file, and training
then streams its windows from disk (the last --val-fraction of the windows is for validation):

    python ch05/train.py --data books/*.txt --token-file runs/books.bin --prepare-only
    python ch05/train.py --token-file runs/books.bin --size 124M --bf16 --cosine-decay

Several GPUs, or several machines, run the same command under torchrun, one process per GPU
with DistributedDataParallel (see ch05/README.md, "Training at scale"):

    torchrun --nproc_per_node=8 ch05/train.py --token-file runs/books.bin --size 124M
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from shared.cli import (
    MODEL_SIZES,
    HelpFormatter,
    add_option,
    add_training_options,
    check_utf8,
    dropout_probability,
    errors_as_one_line,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    read_text_file,
)
from shared.corpus import TOKEN_DTYPE, TokenWindowDataset, prepare_token_file
from shared.dataset import GPTDatasetV1
from shared.distributed import (
    cleanup_distributed,
    get_world_size,
    is_main_process,
    setup_distributed,
)
from shared.fused_kernels import use_fused_kernels
from shared.gpt import GPTModel
from shared.pretraining import (
    generate_and_print_sample,
    load_checkpoint,
    plot_losses,
    read_checkpoint_extra,
    save_checkpoint,
)
from shared.speed import (
    TrainingOptions,
    enable_tf32,
    make_adamw,
    new_progress,
    steps_per_epoch,
    train_epoch,
    unwrap_model,
)
from shared.tokenizers import END_OF_TEXT, gpt2_tokenizer

CHECKPOINT_NAME = "last.pth"
PLOT_NAME = "losses.png"


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="Pretrain a GPT model on UTF-8 text files (Chapter 5). Under torchrun each "
        "process trains on one GPU (cuda) or on the CPU (--device cpu).",
        formatter_class=HelpFormatter,
    )
    add_option(parser, "--data", nargs="+", metavar="FILE", default_text="none")
    parser.add_argument(
        "--token-file",
        type=Path,
        help="memory-mapped token file to stream from; with --data, tokenise the files into it "
        "first (default: none: train on --data in memory)",
    )
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="only tokenise --data into --token-file, then exit",
    )
    add_option(parser, "--size", "tiny")
    add_option(parser, "--context-length", 256)
    parser.add_argument(
        "--dropout", type=dropout_probability, default=0.1, help="dropout rate of the model"
    )
    add_training_options(parser, epochs=10, batch_size=2, lr=4e-4, weight_decay=0.1)
    parser.add_argument(
        "--val-fraction", type=fraction, default=0.1, help="share of the text kept for validation"
    )
    parser.add_argument(
        "--start-context", default="Every effort moves you", help="prompt of the samples"
    )
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=Path("checkpoints"),
        help="where last.pth and losses.png are written",
    )
    add_option(parser, "--resume")  # from --checkpoint-dir's last.pth, up to --epochs in all
    add_option(parser, "--seed", 123)
    add_option(parser, "--device")
    add_speed_options(parser)
    return parser


def add_speed_options(parser: argparse.ArgumentParser) -> None:
    """The speed group: the TrainingOptions flags and --fused-kernels."""
    speed = parser.add_argument_group("speed (all off by default)")
    speed.add_argument("--bf16", action="store_true", help="bf16 autocast (CPU and CUDA)")
    speed.add_argument("--compile", action="store_true", help="train through torch.compile")
    speed.add_argument(
        "--fused-kernels",
        action="store_true",
        help="fused attention, layer norm and GELU (same weights, same results)",
    )
    speed.add_argument(
        "--grad-accumulation-steps",
        type=positive_int,
        default=1,
        help="micro-batches per optimizer step: a step sees --batch-size x processes x this many "
        "windows",
    )
    speed.add_argument(
        "--warmup-steps", type=non_negative_int, default=0, help="linear learning-rate warmup steps"
    )
    speed.add_argument(
        "--cosine-decay", action="store_true", help="cosine decay of the learning rate to --min-lr"
    )
    speed.add_argument(
        "--min-lr", type=non_negative_float, default=0.0, help="end of the cosine decay"
    )
    speed.add_argument(
        "--max-grad-norm",
        type=positive_float,
        default=None,
        help="clip gradients to this total norm (default: no clipping)",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options of argv (default: sys.argv), with args.options, their TrainingOptions; a
    usage error where they do not go together."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data is None and args.token_file is None:
        parser.error("give the text files (--data), a token file (--token-file), or both")
    if args.prepare_only and (args.data is None or args.token_file is None):
        parser.error("--prepare-only needs --data (the text files) and --token-file (the output)")
    if args.min_lr > args.lr:
        parser.error(f"--min-lr ({args.min_lr}) must not exceed --lr ({args.lr})")
    args.options = training_options(args)
    return args


def training_options(args: argparse.Namespace) -> TrainingOptions:
    """The TrainingOptions of the command line's speed flags (ValueError for bad values)."""
    return TrainingOptions(
        bf16=args.bf16,
        compile=args.compile,
        grad_accumulation_steps=args.grad_accumulation_steps,
        warmup_steps=args.warmup_steps,
        cosine_decay=args.cosine_decay,
        min_lr=args.min_lr,
        max_grad_norm=args.max_grad_norm,
    )


def build_config(args: argparse.Namespace) -> dict:
    """The GPTModel config of the chosen --size, context length and dropout."""
    return {
        "vocab_size": 50257,
        "context_length": args.context_length,
        "drop_rate": args.dropout,
        "qkv_bias": False,
        **MODEL_SIZES[args.size],
    }


def check_files(paths: list[Path]) -> None:
    """ValueError naming the first path that is not an existing UTF-8 text file."""
    for path in paths:
        if not path.is_file():
            raise ValueError(f"data file {path} does not exist (or is not a file)")
        check_utf8(path)


def read_texts(paths: list[Path]) -> str:
    """The files' contents joined by <|endoftext|>; ValueError naming a missing, empty or
    non-UTF-8 file."""
    texts = []
    for path in paths:
        if not path.is_file():
            raise ValueError(f"data file {path} does not exist (or is not a file)")
        text = read_text_file(path)
        if not text.strip():
            raise ValueError(f"data file {path} is empty")
        texts.append(text)
    return END_OF_TEXT.join(texts)


def prepare_tokens(args: argparse.Namespace) -> None:
    """Tokenise --data into --token-file; one process per machine does it, the others wait."""
    check_files(args.data)
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        count = prepare_token_file(args.data, args.token_file)
        log(f"Tokenised {len(args.data)} file(s) into {args.token_file}: {count:,} tokens")
    if dist.is_initialized():
        dist.barrier()


def check_enough_tokens(tokens: int, window: int, what: str) -> None:
    """ValueError, naming --context-length, unless tokens fill one window and its target."""
    if tokens < window + 1:
        raise ValueError(
            f"{what} has {tokens:,} tokens, too few for one window of --context-length {window} "
            f"plus its one-token-shifted target (needs {window + 1:,}); use more text or a "
            "smaller --context-length"
        )


def text_windows(text: str, tokenizer, window: int, what: str) -> GPTDatasetV1:
    """GPTDatasetV1 of text with stride = window; ValueError naming --context-length when the
    text is too short for one window."""
    try:
        return GPTDatasetV1(text, tokenizer, window, stride=window)
    except ValueError:
        tokens = len(tokenizer.encode(text, allowed_special={END_OF_TEXT}))
        check_enough_tokens(tokens, window, what)
        raise


def make_datasets(config: dict, args: argparse.Namespace) -> tuple[Dataset, Dataset]:
    """Training and validation windows of context_length tokens (stride: the same).

    From text files in memory (the last val_fraction of the text is for validation) or streamed
    from a token file (the last val_fraction of its windows).
    """
    window = config["context_length"]
    if args.token_file is None:
        text = read_texts(args.data)
        split = int((1 - args.val_fraction) * len(text))
        tokenizer = gpt2_tokenizer()
        return (
            text_windows(text[:split], tokenizer, window, "the training text"),
            text_windows(text[split:], tokenizer, window, "the validation text (--val-fraction)"),
        )
    if not args.token_file.is_file():
        raise ValueError(
            f"token file {args.token_file} does not exist; make it with --data FILES "
            "--token-file PATH --prepare-only"
        )
    tokens = args.token_file.stat().st_size // np.dtype(TOKEN_DTYPE).itemsize
    check_enough_tokens(tokens, window, f"token file {args.token_file}")
    windows = TokenWindowDataset(args.token_file, window, stride=window)
    split = int((1 - args.val_fraction) * len(windows))
    if not 0 < split < len(windows):
        raise ValueError(
            f"{args.token_file} holds {len(windows)} windows of {window} tokens, too few to "
            f"keep a fraction of {args.val_fraction} for validation; use more text"
        )
    return Subset(windows, range(split)), Subset(windows, range(split, len(windows)))


def make_loaders(train_set: Dataset, val_set: Dataset, args: argparse.Namespace):
    """Training and validation loaders. Under torchrun each process trains on its own share
    of the training windows (a DistributedSampler, reshuffled every epoch) and validates on all
    of the validation windows."""
    processes = get_world_size()
    if len(train_set) < args.batch_size * processes:
        raise ValueError(
            f"the training text gives {len(train_set)} windows, fewer than batch_size="
            f"{args.batch_size} x {processes} process(es), so no full batch; use more text, a "
            "smaller --batch-size or a shorter --context-length"
        )
    sampler = None
    if processes > 1:
        sampler = DistributedSampler(train_set, shuffle=True, seed=args.seed, drop_last=True)
    train_loader = DataLoader(
        train_set,
        batch_size=args.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=True,
    )
    val_loader = DataLoader(val_set, batch_size=args.batch_size, shuffle=False, drop_last=False)
    return train_loader, val_loader


def build_model_and_optimizer(config: dict, args: argparse.Namespace, device):
    """A freshly initialised GPTModel on device and its AdamW optimizer (fused on CPU and CUDA)."""
    torch.manual_seed(args.seed)
    model = GPTModel(config)
    if args.fused_kernels:
        use_fused_kernels(model)  # same weights, checkpoints load into any GPTModel
    model.to(device)
    optimizer = make_adamw(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    return model, optimizer


def resume_state(path: Path, model, optimizer, config: dict, device) -> dict:
    """Load model and optimizer from a checkpoint of the same config; return its progress."""
    saved_config = read_checkpoint_extra(path).get("config")
    if saved_config != config:
        raise ValueError(
            f"{path} was trained with config {saved_config}, not {config}; "
            "pass the same --size, --context-length and --dropout to resume"
        )
    extra = load_checkpoint(path, model, optimizer, map_location=device)
    return {key: extra[key] for key in new_progress()}


def log(message: str) -> None:
    """Print on the main process only (rank 0 under torchrun)."""
    if is_main_process():
        tqdm.write(message)


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
    """Train from state["epoch"] up to args.epochs epochs; rank 0 saves after every epoch."""
    tokenizer = gpt2_tokenizer()
    rank, processes = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    step_model = torch.compile(model) if args.options.compile else model
    steps = steps_per_epoch(len(train_loader), args.options.grad_accumulation_steps)
    remaining = args.epochs - state["epoch"]
    schedule = dict(  # the same in every epoch: the schedule spans all args.epochs
        eval_freq=args.eval_freq,
        eval_iter=args.eval_iter,
        total_steps=args.epochs * steps,
        options=args.options,
    )
    with tqdm(
        total=remaining * steps, desc="Training", unit="step", disable=not is_main_process()
    ) as bar:
        for epoch in range(state["epoch"], args.epochs):
            # Data order and dropout depend on the epoch alone: the same with --resume.
            torch.manual_seed((args.seed + epoch) * processes + rank)
            train_epoch(
                step_model, train_loader, val_loader, optimizer, device, state, bar=bar, **schedule
            )
            if is_main_process():
                plain_model = unwrap_model(model)
                generate_and_print_sample(plain_model, tokenizer, device, args.start_context)
                save_progress(plain_model, optimizer, config, state, args.checkpoint_dir)
    return state


def setup(args: argparse.Namespace, device):
    """Data, model and optimizer (resumed from last.pth with --resume); ValueError when the data
    or the checkpoint does not fit."""
    config = build_config(args)
    train_set, val_set = make_datasets(config, args)
    train_loader, val_loader = make_loaders(train_set, val_set, args)
    model, optimizer = build_model_and_optimizer(config, args, device)
    checkpoint = args.checkpoint_dir / CHECKPOINT_NAME
    if args.resume and checkpoint.exists():  # every process loads it
        state = resume_state(checkpoint, model, optimizer, config, device)
        log(f"Resuming from {checkpoint} after epoch {state['epoch']}")
    else:
        if args.resume:
            log(f"No checkpoint at {checkpoint}; starting from scratch")
        state = new_progress()
    return config, train_loader, val_loader, model, optimizer, state


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with errors_as_one_line():
        _, _, processes, device = setup_distributed(args.device)
        try:
            run(args, device, processes)
        finally:
            cleanup_distributed()


def run(args: argparse.Namespace, device, processes: int) -> None:
    """Prepare the token file, or train (in this process's part of a torchrun job)."""
    if args.data is not None and args.token_file is not None:
        prepare_tokens(args)
        if args.prepare_only:
            return
    config, train_loader, val_loader, model, optimizer, state = setup(args, device)
    if device.type == "cuda":
        enable_tf32()
    per_process = f" per process, {processes} processes" if processes > 1 else ""
    log(
        f"Model '{args.size}': {sum(p.numel() for p in model.parameters()):,} parameters; "
        f"{len(train_loader)} training batches per epoch{per_process}; device {device}"
    )
    if state["epoch"] >= args.epochs:
        log(f"Already trained for {state['epoch']} epochs; raise --epochs to train more")
        return
    if processes > 1:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    state = train(model, optimizer, train_loader, val_loader, config, state, args, device)
    log(
        f"Final train loss {state['train_losses'][-1]:.3f}, val loss {state['val_losses'][-1]:.3f}; "
        f"saved {args.checkpoint_dir / CHECKPOINT_NAME} and {args.checkpoint_dir / PLOT_NAME}"
    )


if __name__ == "__main__":
    main()
