"""Reinforcement learning with verifiable rewards: GRPO on answers that code can check (a bonus
to Chapter 7; ch07/grpo.ipynb builds every piece step by step, this script runs it longer).

--model addition (the default) runs the notebook's pipeline: 3-digit addition problems made in
code (20,000 training, 300 validation and 500 test problems, disjoint, seed 123), a small GPT
(shared.reasoning.ADDITION_MODEL_CONFIG, with the KV cache) on the task's GPT-2 tokens; first
supervised finetuning on worked solutions (--sft-steps), so that the model sometimes answers
right, then GRPO (--grpo-steps): sample a group of completions per prompt, score each with the
verifier, and raise the probability of those that beat their group's mean.

--model qwen3-0.6b runs the same GRPO code on Qwen3-0.6B (Qwen's weights through shared.qwen3,
about 1.5 GB downloaded once, trained in float32) with GSM8K's grade-school word problems
(shared.data.GSM8K_FILES, downloaded on demand); no supervised finetuning by default. Without
the weights (offline, or LLM_COURSE_STANDIN=1 as in the tests) it says so in one line and runs
the small random stand-in on a few built-in toy word problems instead, which shows that the
pipeline runs, not that anything is learned. See ch07/README.md for its cost.

The script prints the greedy test accuracy before and after GRPO and the validation accuracy
every --eval-every steps. It saves a checkpoint (model, optimizer, step, settings, history) to
--output after the finetuning, every --save-every GRPO steps and at the end; --resume continues
from it up to --grpo-steps in all, exactly as the uninterrupted run would have gone on (each
GRPO step draws its problems and samples from --seed and its step number alone).

Examples (from the repository root):
    python ch07/grpo_train.py                                   # addition, about 3 minutes on 2 CPU cores
    python ch07/grpo_train.py --grpo-steps 2000 --resume        # 1,000 more steps
    python ch07/grpo_train.py --kl-coef 0.04 --no-std-scaling --aggregation constant
    python ch07/grpo_train.py --model qwen3-0.6b --device cuda  # GSM8K, a GPU recommended
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from shared.checkpoints import load_checkpoint, read_checkpoint_extra, save_checkpoint
from shared.cli import (
    HelpFormatter,
    add_option,
    errors_as_one_line,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from shared.data import GSM8K_FILES, DataUnavailableError, fetch
from shared.device import get_device
from shared.kv_cache import KVCacheGPTModel
from shared.reasoning import (
    ADDITION_MODEL_CONFIG,
    AGGREGATIONS,
    GRPOSettings,
    Problem,
    accuracy,
    addition_splits,
    addition_tokenizer,
    finetune_on_solutions,
    frozen_copy,
    gsm8k_problems,
    train_grpo,
)
from shared.tokenizers import gpt2_tokenizer

HERE = Path(__file__).resolve().parent
MODELS = ("addition", "qwen3-0.6b")

# Each model's defaults for the options whose default differs between them.
MODEL_DEFAULTS = {
    "addition": {
        "sft_steps": 650,
        "grpo_steps": 1000,
        "grpo_lr": 2e-4,
        "prompts_per_step": 16,
        "max_new_tokens": 16,
        "eval_every": 50,
        "save_every": 100,
        "eval_size": None,  # all: 300 validation and 500 test problems
    },
    "qwen3-0.6b": {
        "sft_steps": 0,
        "grpo_steps": 100,
        "grpo_lr": 1e-6,
        "prompts_per_step": 4,
        "max_new_tokens": 320,
        "eval_every": 10,
        "save_every": 20,
        "eval_size": 50,
    },
}
SFT_WEIGHT_DECAY = 0.1
GRPO_WEIGHT_DECAY = 0.0
GSM8K_VALIDATION = 200  # the last problems of GSM8K's training file: validation, not trained on


def per_model(option: str) -> str:
    """The help text's default of an option whose default depends on --model."""
    values = {model: defaults[option] for model, defaults in MODEL_DEFAULTS.items()}
    return ", ".join(f"{value:g} for {model}" for model, value in values.items())


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="GRPO (reinforcement learning with a verifier's rewards) on 3-digit addition "
        "with a small GPT, or on GSM8K with Qwen3-0.6B, after optional supervised finetuning on "
        "worked solutions; greedy test accuracy before and after, checkpoints and --resume.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--model",
        choices=MODELS,
        default="addition",
        help="addition: a small GPT trained from scratch on addition problems made in code; "
        "qwen3-0.6b: Qwen3-0.6B on GSM8K (the stand-in on toy problems when offline)",
    )
    add_option(parser, "--layers", default_text="3, ADDITION_MODEL_CONFIG's; addition only")
    parser.add_argument(
        "--eval-size",
        type=positive_int,
        help="use only the first N validation and N test problems (default: all, 300 and 500, "
        "for addition; 50 each for qwen3-0.6b)",
    )
    parser.add_argument(
        "--toy-problems",
        action="store_true",
        help="qwen3-0.6b: the built-in toy word problems instead of GSM8K (always so for the "
        "stand-in)",
    )

    sft = parser.add_argument_group("supervised finetuning on worked solutions, before GRPO")
    sft.add_argument(
        "--sft-steps",
        type=non_negative_int,
        help=f"optimizer steps (0: none) (default: {per_model('sft_steps')})",
    )
    sft.add_argument("--sft-lr", type=positive_float, default=1e-3, help="AdamW's learning rate")
    sft.add_argument(
        "--sft-batch-size", type=positive_int, default=64, help="problems per optimizer step"
    )

    grpo = parser.add_argument_group("GRPO")
    grpo.add_argument(
        "--grpo-steps",
        type=non_negative_int,
        help=f"GRPO steps in all, counting those of a resumed run (default: "
        f"{per_model('grpo_steps')})",
    )
    grpo.add_argument(
        "--grpo-lr",
        type=positive_float,
        help=f"AdamW's learning rate (weight decay 0) (default: {per_model('grpo_lr')})",
    )
    grpo.add_argument(
        "--group-size", type=positive_int, default=8, help="completions sampled per prompt, G >= 2"
    )
    grpo.add_argument(
        "--prompts-per-step",
        type=positive_int,
        help=f"training problems per GRPO step (default: {per_model('prompts_per_step')})",
    )
    add_option(grpo, "--max-new-tokens", default_text=per_model("max_new_tokens"))
    grpo.add_argument(
        "--temperature",
        type=non_negative_float,
        default=1.0,
        help="0 picks the most likely token (greedy)",
    )
    grpo.add_argument(
        "--kl-coef",
        type=non_negative_float,
        default=0.0,
        help="weight of the KL penalty to a frozen copy of the starting model (0: no copy kept)",
    )
    grpo.add_argument(
        "--clip-eps",
        type=positive_float,
        default=0.2,
        help="the policy ratio is clipped to [1 - eps, 1 + eps]",
    )
    grpo.add_argument(
        "--no-std-scaling",
        action="store_true",
        help="advantages are reward minus the group's mean, not divided by its standard "
        "deviation (Dr. GRPO)",
    )
    grpo.add_argument(
        "--aggregation",
        choices=AGGREGATIONS,
        default="sequence",
        help="how token losses are averaged: per completion, then over completions (GRPO); over "
        "all tokens (DAPO); or summed and divided by a constant (Dr. GRPO)",
    )
    grpo.add_argument(
        "--updates-per-batch",
        type=positive_int,
        default=1,
        help="policy updates on each batch of samples (more than 1 reuses them, as PPO does)",
    )
    grpo.add_argument(
        "--format-weight",
        type=non_negative_float,
        default=0.0,
        help="weight of the format reward (1 when the answer follows 'Answer:')",
    )
    grpo.add_argument(
        "--max-grad-norm",
        type=positive_float,
        default=1.0,
        help="clip gradients to this total norm",
    )
    grpo.add_argument(
        "--eval-every",
        type=positive_int,
        help=f"greedy validation accuracy every N GRPO steps (and after the last) (default: "
        f"{per_model('eval_every')})",
    )

    run = parser.add_argument_group("checkpoints and the rest")
    add_option(run, "--output", default_text="ch07/grpo-<model>.pth")
    run.add_argument(
        "--save-every",
        type=non_negative_int,
        help=f"also save the checkpoint every N GRPO steps (0: only after the finetuning and at "
        f"the end) (default: {per_model('save_every')})",
    )
    add_option(run, "--resume")  # from the --output checkpoint, up to --grpo-steps in all
    add_option(run, "--seed", 0)
    add_option(run, "--device")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options of argv, with each per-model default filled in; a usage error where they do
    not go together."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for option, value in MODEL_DEFAULTS[args.model].items():
        if getattr(args, option) is None:
            setattr(args, option, value)
    if args.model != "addition" and args.layers is not None:
        parser.error("--layers applies to --model addition only")
    if args.model == "addition" and args.toy_problems:
        parser.error("--toy-problems applies to --model qwen3-0.6b only")
    if args.group_size < 2:
        parser.error("--group-size must be at least 2: advantages compare a group's completions")
    if args.temperature == 0:
        parser.error(
            "--temperature 0 samples the same completion G times, so every advantage is 0 and "
            "GRPO learns nothing; use a temperature > 0"
        )
    if args.output is None:
        args.output = HERE / f"grpo-{args.model}.pth"
    return args


# --- the two tasks -----------------------------------------------------------------------------


@dataclass
class Task:
    """A model and its problems: what the training runs on."""

    model: nn.Module
    tokenizer: object  # encode, decode, eos_id (shared.reasoning's tokenizer interface)
    train: list[Problem]
    validation: list[Problem]
    test: list[Problem]
    config: dict | None  # the GPTModel config (addition), saved with the checkpoint


def addition_task(args: argparse.Namespace) -> Task:
    """3-digit addition and the small GPT of ch07/grpo.ipynb (randomly initialised, --seed)."""
    splits = addition_splits(3, {"train": 20000, "validation": 300, "test": 500}, seed=123)
    tokenizer = addition_tokenizer(gpt2_tokenizer())
    config = {**ADDITION_MODEL_CONFIG, "vocab_size": tokenizer.vocab_size}
    if args.layers is not None:
        config["n_layers"] = args.layers
    torch.manual_seed(args.seed)
    model = KVCacheGPTModel(config)
    print(
        f"Model: a {config['n_layers']}-layer, {config['emb_dim']}-dim GPT (KV cache) with a "
        f"{tokenizer.vocab_size}-token vocabulary, {count_parameters(model):,} parameters"
    )
    return Task(model, tokenizer, splits["train"], splits["validation"], splits["test"], config)


class ChatTokenizer:
    """An open model's tokenizer with the id that ends its replies: the encode, decode and
    eos_id that shared.reasoning uses."""

    def __init__(self, tokenizer, eos_id: int):
        self.tokenizer = tokenizer
        self.eos_id = eos_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids))


# Built-in toy word problems (made here, not GSM8K) for the stand-in and for quick tries:
# (question, worked solution, answer) with GSM8K's layout, so they go through gsm8k_problems.
TOY_TEMPLATES = (
    ("{n} has {a} apples and buys {b} more. How many apples does {n} have now?", "{a} + {b}", "+"),
    ("A box holds {a} pencils. How many pencils are there in {b} boxes?", "{a} * {b}", "*"),
    ("{n} had {a} stickers and gave {b} of them away. How many stickers are left?", "{a} - {b}", "-"),
    ("{n} reads {a} pages a day. How many pages does {n} read in {b} days?", "{a} * {b}", "*"),
    ("A class has {a} girls and {b} boys. How many children are in the class?", "{a} + {b}", "+"),
)  # fmt: skip
TOY_NAMES = ("Ada", "Ben", "Chloe", "Dev")


def toy_word_problem_lines() -> list[str]:
    """20 toy word problems, one JSON line each in GSM8K's format ({"question", "answer"}, the
    answer ending "#### <number>"): every template with four number pairs, made without
    randomness."""
    operations = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    lines = []
    for i in range(4):
        for j, (question, working, op) in enumerate(TOY_TEMPLATES):
            a, b = 12 + 7 * i + 3 * j, 2 + i + j
            result = operations[op](a, b)
            steps = working.format(a=a, b=b)
            text = question.format(n=TOY_NAMES[(i + j) % len(TOY_NAMES)], a=a, b=b)
            lines.append(
                json.dumps({"question": text, "answer": f"{steps} = <<{steps}={result}>>{result}\n#### {result}"})
            )  # fmt: skip
    return lines


def qwen3_task(args: argparse.Namespace) -> Task:
    """Qwen3-0.6B (float32, for training) or its stand-in, with GSM8K or the toy problems."""
    from shared.qwen3 import load_pretrained_qwen3  # the open-model code, only for this path

    loaded = load_pretrained_qwen3(dtype=torch.float32, seed=args.seed)
    model = loaded.model
    if loaded.is_standin:
        print(
            f"Model: the stand-in above ({count_parameters(model):,} parameters), not Qwen3-0.6B: "
            "its run shows that the pipeline works, not what GRPO does to Qwen3"
        )
    else:
        print(
            f"Model: {loaded.description}, Qwen's weights, {count_parameters(model):,} parameters"
        )
    tokenizer = ChatTokenizer(loaded.tokenizer, loaded.eos_id)
    if loaded.is_standin or args.toy_problems:
        problems = gsm8k_problems(toy_word_problem_lines())
        train, validation, test = problems[:12], problems[12:16], problems[16:]
        print(
            f"Problems: {len(problems)} built-in toy word problems, made in code, not GSM8K "
            f"({len(train)} training, {len(validation)} validation, {len(test)} test)"
        )
    else:
        try:
            train_file, test_file = fetch(GSM8K_FILES["train"]), fetch(GSM8K_FILES["test"])
        except DataUnavailableError as err:
            raise DataUnavailableError(
                f"{err} Or pass --toy-problems to run on the built-in toy problems.", err.reason
            ) from None
        train_all, test = gsm8k_problems(train_file), gsm8k_problems(test_file)
        train, validation = train_all[:-GSM8K_VALIDATION], train_all[-GSM8K_VALIDATION:]
        print(
            f"Problems: GSM8K, {len(train):,} training, {len(validation)} validation (the last "
            f"of its training file) and {len(test):,} test problems"
        )
    return Task(model, tokenizer, train, validation, test, None)


def count_parameters(model: nn.Module) -> int:
    """Parameters, a tied output head counted once."""
    return sum(p.numel() for p in model.parameters())


# --- the run -----------------------------------------------------------------------------------


def grpo_settings(args: argparse.Namespace) -> GRPOSettings:
    return GRPOSettings(
        group_size=args.group_size,
        prompts_per_step=args.prompts_per_step,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        updates_per_batch=args.updates_per_batch,
        clip_eps=args.clip_eps,
        kl_coef=args.kl_coef,
        scale_by_std=not args.no_std_scaling,
        aggregation=args.aggregation,
        format_weight=args.format_weight,
        max_grad_norm=args.max_grad_norm,
    )


def run_description(args: argparse.Namespace, task: Task, settings: GRPOSettings) -> dict:
    """What a resumed run must share with the run that saved the checkpoint."""
    return {
        "model": args.model,
        "config": task.config or {},
        "toy_problems": args.toy_problems,
        "seed": args.seed,
        "sft": {"steps": args.sft_steps, "lr": args.sft_lr, "batch_size": args.sft_batch_size},
        "grpo_lr": args.grpo_lr,
        "settings": dataclasses.asdict(settings),
    }


def differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """The entries in which two nested dicts differ, as "name: saved -> current"."""
    found = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found += differences(old, new, f"{prefix}{key}.")
        elif old != new:
            found.append(f"{prefix}{key}: {old} -> {new}")
    return found


def check_sizes(task: Task, args: argparse.Namespace) -> None:
    """ValueError unless the training set can fill a GRPO step and a finetuning batch."""
    for option, needed in (
        ("--prompts-per-step", args.prompts_per_step),
        ("--sft-batch-size", args.sft_batch_size if args.sft_steps else 0),
    ):
        if needed > len(task.train):
            raise ValueError(
                f"{option} {needed} is more than the {len(task.train)} training problems"
            )


def percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with errors_as_one_line():
        train(args)
    return 0


def train(args: argparse.Namespace) -> list[dict]:
    """Build the task, finetune, run GRPO with checkpoints; returns the GRPO history (one dict
    per step). ValueError for options that do not fit the data or a checkpoint."""
    device = get_device(args.device)
    task = addition_task(args) if args.model == "addition" else qwen3_task(args)
    if args.eval_size is not None:
        task.validation, task.test = task.validation[: args.eval_size], task.test[: args.eval_size]
    check_sizes(task, args)
    settings = grpo_settings(args)
    run = run_description(args, task, settings)
    model = task.model.to(device)
    reference = frozen_copy(model) if settings.kl_coef > 0 else None  # replaced if SFT runs
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.grpo_lr, weight_decay=GRPO_WEIGHT_DECAY
    )
    print(f"Device {device}; checkpoint {args.output}")

    def save(step: int) -> None:
        extra = {"run": run, "step": step, "history": history, "test_before": test_before}
        if task.config is not None:
            extra["config"] = task.config
        if reference is not None and args.sft_steps > 0:  # not rebuilt on --resume: keep it
            extra["reference"] = reference.state_dict()
        save_checkpoint(args.output, model, optimizer, **extra)

    def evaluate(problems: list[Problem]) -> float:
        return accuracy(model, problems, task.tokenizer, settings.max_new_tokens)

    if args.resume and args.output.exists():
        saved = read_checkpoint_extra(args.output)
        changed = differences(saved.get("run", {}), run)
        if changed:
            raise ValueError(
                f"{args.output} was saved by a run with other settings ({'; '.join(changed)}); "
                "pass the same options to resume, or a new --output to start a new run"
            )
        extra = load_checkpoint(args.output, model, optimizer, map_location=device)
        if "reference" in extra:
            reference.load_state_dict(extra["reference"])
        start, history, test_before = extra["step"], extra["history"], extra["test_before"]
        print(f"Resuming from {args.output} after GRPO step {start}")
    else:
        if args.resume:
            print(f"No checkpoint at {args.output}; starting from scratch")
        start, history = 0, []
        if args.sft_steps > 0:
            finetune(model, task, args)
            if reference is not None:
                reference = frozen_copy(model)
        test_before = evaluate(task.test)
        print(f"Test accuracy before GRPO: {percent(test_before)} ({len(task.test)} problems)")
        save(0)

    remaining = args.grpo_steps - start
    if remaining <= 0:
        if start:
            print(f"Already trained for {start} GRPO steps; raise --grpo-steps to train more")
        return history

    began = time.time()

    def on_step(step: int, row: dict) -> None:
        history.append(row)
        if "accuracy" in row:
            kl = f"KL {row['kl']:.4f}, " if reference is not None else ""  # measured with one
            print(
                f"GRPO step {step}/{args.grpo_steps}: reward {row['reward']:.3f}, correct "
                f"{percent(row['correct'])}, length {row['length']:.1f} tokens, {kl}"
                f"clipped {percent(row['clipped'])}; validation accuracy {percent(row['accuracy'])} "
                f"({time.time() - began:.0f} s)"
            )
        if args.save_every and step % args.save_every == 0 and step < args.grpo_steps:
            save(step)

    train_grpo(
        model, optimizer, task.train, task.tokenizer, settings, remaining,
        eval_problems=task.validation, eval_every=args.eval_every, reference=reference,
        seed=args.seed, start_step=start, on_step=on_step,
    )  # fmt: skip
    save(args.grpo_steps)
    test_after = evaluate(task.test)
    print(
        f"GRPO took {time.time() - began:.0f} s for {remaining} step{'s' * (remaining > 1)}. "
        f"Test accuracy: {percent(test_before)} before GRPO, {percent(test_after)} after "
        f"({len(task.test)} problems). Saved {args.output}"
    )
    return history


def finetune(model: nn.Module, task: Task, args: argparse.Namespace) -> None:
    """Supervised finetuning on the training problems' worked solutions (AdamW, weight decay
    0.1), with its time and last loss printed."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.sft_lr, weight_decay=SFT_WEIGHT_DECAY)
    began = time.time()
    losses = finetune_on_solutions(
        model, optimizer, task.train, task.tokenizer, args.sft_steps,
        batch_size=args.sft_batch_size, seed=args.seed,
    )  # fmt: skip
    print(
        f"Supervised finetuning: {args.sft_steps} steps of {args.sft_batch_size} problems in "
        f"{time.time() - began:.0f} s, loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    )


if __name__ == "__main__":
    sys.exit(main())
