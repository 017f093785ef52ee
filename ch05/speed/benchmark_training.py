"""Training throughput of the course's GPT, its fast options, and two yardsticks, side by side.

Measures, in one run on this machine: the matmul peak (fp32 and bf16), then tokens per second
and utilisation (model FLOPs per second over the measured peak of the same precision) of a
training step (forward, loss, backward, AdamW step) for each variant:

- the course's GPTModel on its plain path (what the chapters teach), and with each speed option;
- transformers' GPT2LMHeadModel of the same shape (benchmark-only dependency);
- a nanoGPT-style GPT-2 written below (the shape of nanoGPT's model.py: one stacked QKV
  projection, scaled_dot_product_attention with is_causal, torch.nn's LayerNorm and GELU),
  trained with AdamW's fused kernel, as nanoGPT trains it.

Each model is timed with its output layer tied to the token embedding (GPT-2's 124M parameters)
and untied (the course's chapter model: 163M parameters, more to update), and compared like with
like: "vs HF" against transformers with the same tying, precision and optimizer, "vs nano"
against the nanoGPT-style model with the same tying and precision (fused AdamW rows only).
The variants are timed in interleaved rounds (each round builds every variant afresh and times
it), so a machine that slows down or speeds up during the run affects them all alike.

    python ch05/speed/benchmark_training.py                 # GPT-2 124M shape, context 256, batch 2
    python ch05/speed/benchmark_training.py --profile --only "course, fused + f.AdamW, tied"
    python ch05/speed/benchmark_training.py --device cuda --context-length 1024 --batch-size 8
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from shared.cli import (
    MODEL_SIZES,
    HelpFormatter,
    add_option,
    non_negative_int,
    positive_float,
    positive_int,
)
from shared.device import get_device, synchronize
from shared.flops import matmul_peak, training_flops
from shared.fused_kernels import use_fused_kernels
from shared.gpt import GPT2_MODEL_CONFIGS, GPTModel
from shared.speed import make_adamw

COURSE, TRANSFORMERS, NANO = "course", "transformers", "nanoGPT-style"


@dataclass(frozen=True)
class Variant:
    name: str
    model: str = COURSE  # COURSE, TRANSFORMERS or NANO
    tied: bool = True  # output layer tied to the token embedding
    fused: bool = False  # the course's fused kernels: attention (QKV + SDPA), layer norm, GELU
    fused_adamw: bool = False  # AdamW's fused kernel (shared.speed.make_adamw), not the book's
    compile: bool = False  # torch.compile
    bf16: bool = False  # bf16 autocast


def variants(with_compile: bool, precisions: str = "both") -> list[Variant]:
    """Every variant in fp32, then the same under bf16 autocast (precisions: fp32, bf16, both)."""
    fp32 = []
    for tied in (True, False):
        tie = "tied" if tied else "untied"
        fp32 += [
            Variant(f"course, plain, {tie}", tied=tied),
            Variant(f"course, fused kernels, {tie}", tied=tied, fused=True),
            Variant(f"course, fused + f.AdamW, {tie}", tied=tied, fused=True, fused_adamw=True),
        ]
        if with_compile:
            fp32.append(
                Variant(
                    f"course, fused + f.AdamW + compile, {tie}",
                    tied=tied,
                    fused=True,
                    fused_adamw=True,
                    compile=True,
                )
            )
        fp32 += [
            Variant(f"transformers, {tie}", TRANSFORMERS, tied=tied),
            Variant(f"transformers + f.AdamW, {tie}", TRANSFORMERS, tied=tied, fused_adamw=True),
            Variant(f"nanoGPT-style + f.AdamW, {tie}", NANO, tied=tied, fused_adamw=True),
        ]
    bf16 = [replace(v, name=f"{v.name}, bf16", bf16=True) for v in fp32]
    return {"fp32": fp32, "bf16": bf16, "both": fp32 + bf16}[precisions]


def gpt2_shape(size: str, layers: int | None = None) -> dict:
    """GPT-2's config with the width, depth and heads of a --size choice (shared.cli.MODEL_SIZES;
    for GPT-2's sizes GPT2_MODEL_CONFIGS[size]), with `layers` transformer blocks when given."""
    cfg = {**GPT2_MODEL_CONFIGS["124M"], **MODEL_SIZES[size]}
    if layers is not None:
        cfg["n_layers"] = layers
    return cfg


class NanoStyleBlock(nn.Module):
    """One pre-norm transformer block as nanoGPT writes it: the query, key and value as one
    (d, 3d) projection, causal scaled_dot_product_attention, torch.nn's LayerNorm and GELU.

    forward: x (b, n, d) -> (b, n, d)
    """

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_attn, self.ln_mlp = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.attn_out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(
            nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        # (b, n, 3d) -> three (b, heads, n, d_head) views
        q, k, v = self.qkv(self.ln_attn(x)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_out(context.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.ln_mlp(x))


class NanoStyleGPT(nn.Module):
    """A GPT-2 in nanoGPT's shape (biases everywhere, as GPT-2's checkpoints have them).

    forward: token ids (b, n) -> logits (b, n, vocab_size)
    """

    def __init__(self, cfg: dict, tied: bool):
        super().__init__()
        d = cfg["emb_dim"]
        self.tok_emb = nn.Embedding(cfg["vocab_size"], d)
        self.pos_emb = nn.Embedding(cfg["context_length"], d)
        self.blocks = nn.Sequential(
            *(NanoStyleBlock(d, cfg["n_heads"]) for _ in range(cfg["n_layers"]))
        )
        self.ln_final = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, cfg["vocab_size"], bias=False)
        if tied:
            self.lm_head.weight = self.tok_emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.blocks(self.tok_emb(ids) + self.pos_emb(positions))
        return self.lm_head(self.ln_final(x))


def transformers_model(cfg: dict, tied: bool) -> nn.Module:
    """transformers' GPT2LMHeadModel of cfg's shape, without dropout or a cache."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=cfg["vocab_size"],
        n_positions=cfg["context_length"],
        n_embd=cfg["emb_dim"],
        n_layer=cfg["n_layers"],
        n_head=cfg["n_heads"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=tied,
        use_cache=False,
    )
    return GPT2LMHeadModel(config)


class LogitsOf(nn.Module):
    """Wraps a transformers model so that model(ids) returns the logits tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids).logits


def build_model(variant: Variant, cfg: dict, device: torch.device) -> nn.Module:
    """The variant's model with seeded random weights; call it with token ids, get logits."""
    torch.manual_seed(123)
    if variant.model == TRANSFORMERS:
        hf = transformers_model(cfg, variant.tied).to(device)
        return LogitsOf(hf)
    if variant.model == NANO:
        return NanoStyleGPT(cfg, variant.tied).to(device)
    model = GPTModel(cfg)
    if variant.fused:
        use_fused_kernels(model)
    model.to(device)
    if variant.tied:
        model.out_head.weight = model.tok_emb.weight
    return model


def training_step(variant: Variant, cfg: dict, args, device: torch.device):
    """A fresh model of the variant and a function that runs one training step on it."""
    model = build_model(variant, cfg, device)
    model.train()
    step_model = torch.compile(model) if variant.compile else model
    if variant.fused_adamw:
        optimizer = make_adamw(model.parameters(), lr=4e-4, weight_decay=0.1)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(
        0, cfg["vocab_size"], (args.batch_size, args.context_length + 1), generator=generator
    )
    inputs, targets = ids[:, :-1].to(device), ids[:, 1:].to(device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if variant.bf16
        else contextlib.nullcontext()
    )

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits = step_model(inputs)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        loss.backward()
        optimizer.step()

    return step


def time_steps(variant: Variant, cfg: dict, args, device: torch.device) -> list[float]:
    """Seconds of each of args.steps timed steps of a fresh model, after args.warmup untimed."""
    step = training_step(variant, cfg, args, device)
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    del step
    gc.collect()
    return times


def profile_step(variant: Variant, cfg: dict, args, device: torch.device, rows: int = 15) -> str:
    """torch.profiler's table of one training step (after warm-up), by self time per operator."""
    from torch.profiler import ProfilerActivity, profile

    step = training_step(variant, cfg, args, device)
    for _ in range(max(1, args.warmup)):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        synchronize(device)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort_by, row_limit=rows)


def yardstick(chosen: list[Variant], v: Variant, model: str, results: dict[Variant, float]) -> str:
    """How many times faster v is than the yardstick `model` with v's tying and precision, and
    v's optimizer (the nanoGPT-style rows use fused AdamW, so only fused AdamW rows compare with
    them), as "1.07x"; "-" where there is no such row."""
    if model == NANO and not v.fused_adamw:
        return "-"
    for r in chosen:
        same = (r.model, r.tied, r.bf16, r.fused_adamw) == (model, v.tied, v.bf16, v.fused_adamw)
        if same and not r.compile:
            return f"{results[r] / results[v]:.2f}x"
    return "-"


def round_order(chosen: list[Variant], round_index: int, rounds: int) -> list[Variant]:
    """chosen rotated so that the rounds start at variants spread over the list: no variant
    runs first (right after the matmul peak timing) in every round. The order is otherwise
    kept, so each variant follows the same neighbour except when it starts a round."""
    start = round_index * len(chosen) // max(rounds, 1) % max(len(chosen), 1)
    return chosen[start:] + chosen[:start]


def load_average() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # not on every platform
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    add_option(parser, "--size", "124M")
    add_option(parser, "--layers", default_text="the size's own")
    add_option(parser, "--context-length", 256)
    add_option(parser, "--batch-size", 2)
    parser.add_argument("--rounds", type=positive_int, default=2, help="interleaved rounds")
    parser.add_argument(
        "--steps", type=positive_int, default=3, help="timed steps per variant and round"
    )
    parser.add_argument(
        "--warmup", type=non_negative_int, default=1, help="untimed steps first, each round"
    )
    add_option(parser, "--device")
    parser.add_argument(
        "--matmul-size",
        type=positive_int,
        default=2048,
        help="n of the n x n matmuls timing the peak",
    )
    parser.add_argument(
        "--peak-seconds",
        type=positive_float,
        default=3.0,
        help="seconds of matmuls timing each peak",
    )
    parser.add_argument(
        "--only",
        nargs="*",
        help="run only variants whose name contains one of these words (default: all variants)",
    )
    parser.add_argument(
        "--precision", default="both", choices=("fp32", "bf16", "both"), help="which rows to run"
    )
    parser.add_argument(
        "--with-compile", action="store_true", help="add the torch.compile variants (minutes each)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of timing, print torch.profiler's table of one step of each chosen variant",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    device = get_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    cfg = {
        **gpt2_shape(args.size, args.layers),
        "context_length": args.context_length,
        "drop_rate": 0.0,
    }
    chosen = [
        v
        for v in variants(args.with_compile, args.precision)
        if not args.only or any(word in v.name for word in args.only)
    ]
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    print(f"load average before: {load_average()}")
    if args.profile:
        for v in chosen:
            print(f"\n{v.name}: one training step\n{profile_step(v, cfg, args, device)}")
        return

    peaks = {
        False: matmul_peak(torch.float32, device, args.matmul_size, args.peak_seconds),
        True: matmul_peak(torch.bfloat16, device, args.matmul_size, args.peak_seconds),
    }
    flops_per_token = training_flops(cfg, args.context_length) / args.context_length
    tokens_per_step = args.batch_size * args.context_length
    print(
        f"GPT-2 {args.size} shape ({cfg['n_layers']} blocks), context {args.context_length}, "
        f"batch {args.batch_size}; "
        f"{flops_per_token / 1e9:.2f} GFLOP per training token (tied or not: the output layer "
        "is one product either way)"
    )
    print(
        f"Measured matmul peak: fp32 {peaks[False] / 1e9:,.0f} GFLOP/s, "
        f"bf16 {peaks[True] / 1e9:,.0f} GFLOP/s"
    )
    print(
        f"Median of {args.rounds} interleaved rounds x {args.steps} steps "
        f"(after {args.warmup} warm-up per round; each round starts at another variant), "
        "and the fastest and slowest step"
    )
    times: dict[Variant, list[float]] = {v: [] for v in chosen}
    for r in range(args.rounds):
        for v in round_order(chosen, r, args.rounds):
            times[v] += time_steps(v, cfg, args, device)
    results = {v: statistics.median(t) for v, t in times.items()}

    print()
    header = (
        f"{'variant':44s} {'step':>8s} {'fastest-slowest':>15s} {'tokens/s':>9s} {'vs HF':>6s} "
        f"{'vs nano':>7s} {'of peak':>7s}"
    )
    print(header)
    print("-" * len(header))
    for v in chosen:
        seconds = results[v]
        tokens_per_s = tokens_per_step / seconds
        utilisation = tokens_per_s * flops_per_token / peaks[v.bf16]
        vs_hf = yardstick(chosen, v, TRANSFORMERS, results)
        vs_nano = yardstick(chosen, v, NANO, results)
        spread = f"{min(times[v]) * 1e3:.0f}-{max(times[v]) * 1e3:.0f}ms"
        print(
            f"{v.name:44s} {seconds * 1e3:6.0f}ms {spread:>15s} {tokens_per_s:9,.0f} "
            f"{vs_hf:>6s} {vs_nano:>7s} {utilisation:7.1%}"
        )
    print(f"\nload average after: {load_average()}")


if __name__ == "__main__":
    main()
