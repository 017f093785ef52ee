"""Cached generation of the course's Llama 3 and Qwen3 beside transformers' generate, in one run.

For each architecture a random model is built in transformers (LlamaForCausalLM with Llama 3's
RoPE scaling, Qwen3ForCausalLM) with the widths of Llama 3.2 1B / Qwen3 0.6B but fewer layers
and a smaller vocabulary, and its weights are loaded into the course's Llama3Model / Qwen3Model
with shared.open_models.load_hf_weights, so every variant computes the same function. Batch 1,
greedy, a fixed number of new tokens. Prints tokens per second of each variant and whether the
tokens agree.

    python ch05/open-models/benchmark_generation.py
    python ch05/open-models/benchmark_generation.py --layers 8 --new-tokens 200 --dtype bf16
"""

from __future__ import annotations

import argparse

import torch
import transformers

from shared.cli import HelpFormatter, add_option, positive_int
from shared.device import best_time, get_device
from shared.llama3 import LLAMA32_CONFIG_1B, Llama3Model
from shared.open_models import count_parameters, load_hf_weights
from shared.pretraining import generate
from shared.qwen3 import QWEN3_CONFIG_0_6B, Qwen3Model

ARCHITECTURES = {
    "llama3": (LLAMA32_CONFIG_1B, Llama3Model, transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "qwen3": (QWEN3_CONFIG_0_6B, Qwen3Model, transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
}  # fmt: skip


def reference_config(cfg: dict, config_class: type) -> transformers.PretrainedConfig:
    """The transformers config of the course's cfg (the inverse of config_from_hf)."""
    rope = {"rope_type": "default", "rope_theta": cfg["rope_base"]}
    if cfg["rope_llama3_scaling"] is not None:
        scaling = cfg["rope_llama3_scaling"]
        rope = {
            **rope,
            "rope_type": "llama3",
            "factor": scaling["factor"],
            "low_freq_factor": scaling["low_freq_factor"],
            "high_freq_factor": scaling["high_freq_factor"],
            "original_max_position_embeddings": scaling["original_context_length"],
        }
    return config_class(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["emb_dim"],
        intermediate_size=cfg["hidden_dim"],
        num_hidden_layers=cfg["n_layers"],
        num_attention_heads=cfg["n_heads"],
        num_key_value_heads=cfg["n_kv_groups"],
        head_dim=cfg["head_dim"],
        max_position_embeddings=cfg["context_length"],
        rms_norm_eps=cfg["norm_eps"],
        tie_word_embeddings=cfg["tie_embeddings"],
        rope_parameters=rope,
    )


def benchmark(arch: str, args, device: torch.device) -> None:
    """Time the three variants of one architecture on device and print a table."""
    published, course_class, config_class, reference_class = ARCHITECTURES[arch]
    cfg = {
        **published,
        "vocab_size": args.vocab,
        "n_layers": args.layers,
        # past Llama 3's original 8,192 positions, which its RoPE scaling refers to
        "context_length": max(16_384, args.prompt_tokens + args.new_tokens),
    }
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    reference = reference_class(reference_config(cfg, config_class)).to(dtype).eval()
    course = course_class({**cfg, "dtype": dtype}).eval()
    load_hf_weights(course, reference.state_dict())
    reference.to(device)
    course.to(device)

    prompt = torch.randint(
        0, cfg["vocab_size"], (1, args.prompt_tokens), generator=torch.Generator().manual_seed(1)
    ).to(device)
    n = args.new_tokens

    def reference_run() -> torch.Tensor:
        with torch.no_grad():
            return reference.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                use_cache=True,
                pad_token_id=0,
            )

    runs = {
        "course, no cache": lambda: generate(course, prompt, n, cfg["context_length"]),
        "course, KV cache": lambda: generate(
            course, prompt, n, cfg["context_length"], use_cache=True
        ),
        "transformers generate (cache)": reference_run,
    }
    results = {name: best_time(run, args.repeats, device) for name, run in runs.items()}

    print(
        f"\n{arch}: {count_parameters(course) / 1e6:.0f}M parameters ({cfg['n_layers']} layers, "
        f"emb_dim {cfg['emb_dim']}, {cfg['n_heads']} heads / {cfg['n_kv_groups']} kv groups of "
        f"{cfg['head_dim']}, vocab {cfg['vocab_size']:,}), {args.dtype}, batch 1, greedy, "
        f"{args.prompt_tokens} prompt + {n} new tokens"
    )
    reference_seconds = results["transformers generate (cache)"][0]
    header = (
        f"{'variant':32s} {'seconds':>8s} {'tokens/s':>9s} {'vs transformers':>16s}  same tokens"
    )
    print(header)
    print("-" * len(header))
    expected = results["transformers generate (cache)"][1]
    for name, (seconds, ids) in results.items():
        same = torch.equal(ids, expected)
        print(
            f"{name:32s} {seconds:8.2f} {n / seconds:9.1f} {reference_seconds / seconds:15.2f}x  {same}"
        )


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--arch", choices=[*ARCHITECTURES, "both"], default="both", help="which model to time"
    )
    add_option(parser, "--layers", 2, default_text="2; the published models have 16 and 28")
    parser.add_argument("--vocab", type=positive_int, default=32_000, help="vocabulary size")
    add_option(parser, "--prompt-tokens", 16)
    add_option(parser, "--new-tokens", 64)
    add_option(parser, "--repeats", 2)
    add_option(parser, "--dtype", "fp32")
    add_option(parser, "--device")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    device = get_device(args.device)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"device {device}, threads {torch.get_num_threads()}"
    )
    for arch in ARCHITECTURES if args.arch == "both" else [args.arch]:
        benchmark(arch, args, device)


if __name__ == "__main__":
    main()
