"""Training throughput of the course's GPT, its fast options, and a reference, side by side.

Measures, in one run on this machine: the matmul peak (fp32 and bf16), then tokens per second
and utilisation (model FLOPs per second over the measured peak of the same precision) of a
training step (forward, loss, backward, AdamW step) for each variant:

- the course's GPTModel on its plain path, and with each speed option;
- transformers' GPT2LMHeadModel of the same shape, the reference (benchmark-only dependency).

Each variant runs with the book's AdamW or with AdamW's fused kernel; "vs ref" compares it with
the reference at the same precision and with the same optimizer.

Both models tie the output layer to the token embedding here, so they have the same parameters.

    python ch05/speed/benchmark_training.py                 # GPT-2 124M shape, context 256, batch 2
    python ch05/speed/benchmark_training.py --device cuda --context 1024 --batch-size 8
"""

from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from shared.cli import HelpFormatter
from shared.gpt import GPT2_MODEL_CONFIGS, GPTModel
from shared.speed import make_adamw


@dataclass(frozen=True)
class Variant:
    name: str
    reference: bool = False  # transformers' GPT2LMHeadModel instead of the course's GPTModel
    fused: bool = False  # fused kernels: attention (QKV + SDPA), layer norm, GELU
    bf16: bool = False  # bf16 autocast
    compile: bool = False  # torch.compile
    # AdamW's fused kernel (shared.speed.make_adamw) instead of the book's torch.optim.AdamW
    fused_adamw: bool = False


VARIANTS = [
    Variant("course, plain"),
    Variant("course, fused kernels", fused=True),
    Variant("reference (transformers)", reference=True),
    Variant("course, fused + fused AdamW", fused=True, fused_adamw=True),
    Variant("course, fused + f.AdamW + compile", fused=True, fused_adamw=True, compile=True),
    Variant("reference + fused AdamW", reference=True, fused_adamw=True),
    Variant("course, plain, bf16", bf16=True),
    Variant("course, fused, bf16", fused=True, bf16=True),
    Variant("reference, bf16", reference=True, bf16=True),
    Variant("course, fused + f.AdamW, bf16", fused=True, fused_adamw=True, bf16=True),
    Variant(
        "course, fused + f.AdamW + compile, bf16",
        fused=True,
        fused_adamw=True,
        bf16=True,
        compile=True,
    ),
    Variant("reference + fused AdamW, bf16", reference=True, fused_adamw=True, bf16=True),
]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int, seconds: float = 3.0) -> float:
    """Best FLOP/s of an n x n matrix product in dtype, over about `seconds` of repeats."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def training_flops_per_token(cfg: dict, context: int) -> float:
    """Matmul FLOPs of one training token: 6 per weight of every matrix product (forward and
    backward, output layer included, embedding lookups excluded) plus attention's
    12 * layers * context * emb_dim (the usual convention for model FLOPs utilisation)."""
    d, layers, vocab = cfg["emb_dim"], cfg["n_layers"], cfg["vocab_size"]
    matmul_weights = layers * 12 * d * d + d * vocab
    return 6 * matmul_weights + 12 * layers * context * d


def reference_model(cfg: dict) -> torch.nn.Module:
    """transformers' GPT2LMHeadModel of cfg's shape, without dropout, seeded random weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(123)
    config = GPT2Config(
        vocab_size=cfg["vocab_size"],
        n_positions=cfg["context_length"],
        n_embd=cfg["emb_dim"],
        n_layer=cfg["n_layers"],
        n_head=cfg["n_heads"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config)


def build_model(variant: Variant, cfg: dict, device: torch.device) -> torch.nn.Module:
    if variant.reference:
        model = reference_model(cfg).to(device)
        model.config.use_cache = False
        return model
    torch.manual_seed(123)
    model = GPTModel({**cfg, "fused_kernels": variant.fused}).to(device)
    model.out_head.weight = model.tok_emb.weight  # tied, like the reference
    return model


def logits_of(model: torch.nn.Module, ids: torch.Tensor, reference: bool) -> torch.Tensor:
    return model(input_ids=ids).logits if reference else model(ids)


def time_training(variant: Variant, cfg: dict, args, device: torch.device) -> float:
    """Seconds per training step, the median of args.steps timed steps after warm-up."""
    model = build_model(variant, cfg, device)
    model.train()
    step_model = torch.compile(model) if variant.compile else model
    if variant.fused_adamw:
        optimizer = make_adamw(model.parameters(), lr=4e-4, weight_decay=0.1)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
    ids = torch.randint(0, cfg["vocab_size"], (args.batch_size, args.context + 1), device=device)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if variant.bf16
        else contextlib.nullcontext()
    )

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits = logits_of(step_model, inputs, variant.reference)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--size", default="124M", choices=GPT2_MODEL_CONFIGS, help="the GPT-2 shape to build"
    )
    parser.add_argument("--context", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--batch-size", type=int, default=2, help="sequences per step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps")
    parser.add_argument(
        "--matmul-size", type=int, default=2048, help="n of the n x n matmuls timing the peak"
    )
    parser.add_argument(
        "--only",
        nargs="*",
        help="run only variants whose name contains one of these words (default: all variants)",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    cfg = {**GPT2_MODEL_CONFIGS[args.size], "context_length": args.context, "drop_rate": 0.0}
    fp32_dtype = torch.float32
    peaks = {
        False: matmul_peak(fp32_dtype, device, args.matmul_size),
        True: matmul_peak(torch.bfloat16, device, args.matmul_size),
    }
    flops_per_token = training_flops_per_token(cfg, args.context)
    tokens_per_step = args.batch_size * args.context

    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    print(
        f"GPT-2 {args.size} shape, context {args.context}, batch {args.batch_size}; "
        f"{flops_per_token / 1e9:.2f} GFLOP per training token"
    )
    print(
        f"Measured matmul peak: fp32 {peaks[False] / 1e9:,.0f} GFLOP/s, bf16 {peaks[True] / 1e9:,.0f} GFLOP/s"
    )
    print()
    header = f"{'variant':40s} {'step':>9s} {'tokens/s':>10s} {'vs ref':>7s} {'of peak':>8s}"
    print(header)
    print("-" * len(header))
    variants = [v for v in VARIANTS if not args.only or any(word in v.name for word in args.only)]
    results = {v: time_training(v, cfg, args, device) for v in variants}
    for v in variants:
        seconds = results[v]
        tokens_per_s = tokens_per_step / seconds
        reference = next(
            (
                r
                for r in variants
                if r.reference and (r.bf16, r.fused_adamw) == (v.bf16, v.fused_adamw)
            ),
            None,
        )
        ratio = results[reference] / seconds if reference in results else float("nan")
        utilisation = tokens_per_s * flops_per_token / peaks[v.bf16]
        print(
            f"{v.name:40s} {seconds * 1e3:7.0f}ms {tokens_per_s:10,.0f} {ratio:6.2f}x "
            f"{utilisation:7.1%}"
        )


if __name__ == "__main__":
    main()
