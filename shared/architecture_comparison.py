"""Pretraining with other architectures (ch05 bonus): GPT-2, Llama 3 and Qwen3 of one size.

To compare how the three decoders learn, they must differ in their blocks only, not in size.
matched_open_config turns a shared.gpt.GPTModel config into a shared.open_models config that
keeps its vocabulary, width (emb_dim), depth (n_layers), heads and context length, and spends
the parameters that GPT-2 puts elsewhere (the position embedding table, full-size key and value
projections, biases, LayerNorm shifts) on a wider SwiGLU feed-forward: hidden_dim is chosen so
that both models have the same number of parameters, to within half a step of hidden_dim
(1.5 * emb_dim * n_layers parameters). The output head stays untied, as in GPTModel.

comparison_models(gpt_cfg) gives the three (class, config) pairs; parameter_breakdown says
where each model's parameters sit. pretrain_architecture trains one of them with the chapter's
loop (shared.pretraining.train_model_simple) on verdict_loaders' data; loss_table,
final_loss_table and plot_architecture_losses put several runs side by side.
ch05/open-models/pretraining-architectures.ipynb runs them at a small size,
ch05/open-models/pretrain_architectures.py at the book's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import matplotlib.pyplot as plt
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from shared.data import fetch
from shared.dataset import create_dataloader_v1
from shared.gpt import GPTModel
from shared.llama3 import LLAMA32_CONFIG_1B, Llama3Model
from shared.open_models import OpenDecoderModel, check_kv_groups, count_parameters
from shared.pretraining import (
    evaluate_model,
    generate,
    text_to_token_ids,
    token_ids_to_text,
    train_model_simple,
)
from shared.qwen3 import QWEN3_CONFIG_0_6B, Qwen3Model
from shared.rope import check_head_dim
from shared.speed import make_adamw

# The small GPT of ch05's bonus notebooks (training-extras, bigram-baseline): 2 blocks of width
# 128 with 4 heads, 13.3M parameters (97% of them in the token embedding and the output head), at
# the chapter's context of 256 tokens; no dropout, since Llama 3 and Qwen3 have none.
SMALL_GPT_CONFIG = {
    "vocab_size": 50257,
    "context_length": 256,
    "emb_dim": 128,
    "n_heads": 4,
    "n_layers": 2,
    "drop_rate": 0.0,
    "qkv_bias": False,
}

GPT_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "qkv_bias")

# Where parameter_breakdown puts a parameter: the first group whose test its name passes.
PARAMETER_GROUPS = {
    "token embedding": lambda name: name.startswith("tok_emb."),
    "position embedding": lambda name: name.startswith("pos_emb."),
    "normalisation": lambda name: "norm" in name,  # norm1, norm2, final_norm, q_norm, k_norm
    "attention": lambda name: ".att." in name,
    "feed-forward": lambda name: ".ff." in name,
    "output head": lambda name: name.startswith("out_head."),
}


def parameter_count(model_class: type[nn.Module], cfg: dict) -> int:
    """Parameters of model_class(cfg), a tied head counted once; built on the meta device, so
    it takes no memory and no time even for 124M (or billions of) parameters."""
    with torch.device("meta"):
        return count_parameters(model_class(cfg))


def check_gpt_config(gpt_cfg: dict) -> None:
    """ValueError for a GPTModel config without one of GPT_KEYS or whose heads do not split
    emb_dim evenly."""
    missing = [key for key in GPT_KEYS if key not in gpt_cfg]
    if missing:
        raise ValueError(f"the GPT config lacks {', '.join(missing)}; it needs {GPT_KEYS}")
    emb_dim, n_heads = gpt_cfg["emb_dim"], gpt_cfg["n_heads"]
    if n_heads < 1 or emb_dim < 1 or emb_dim % n_heads != 0:
        raise ValueError(f"emb_dim ({emb_dim}) must be a positive multiple of n_heads ({n_heads})")


def matched_open_config(
    gpt_cfg: dict,
    *,
    n_kv_groups: int,
    qk_norm: bool,
    rope_base: float,
    norm_eps: float,
    tie_embeddings: bool = False,
) -> dict:
    """The OpenDecoderModel config with as many parameters as GPTModel(gpt_cfg).

    Kept from gpt_cfg: vocab_size, context_length, emb_dim, n_heads (head_dim = emb_dim /
    n_heads) and n_layers. Chosen: hidden_dim, the SwiGLU width that brings the parameter count
    closest to GPT's (its three matrices hold 3 * emb_dim * hidden_dim parameters per block).
    No RoPE scaling (a long-context extension, not needed at a few hundred positions).
    Raises ValueError for a GPT config that does not fit (see check_gpt_config), key/value
    groups that do not divide the heads, or an odd head_dim (RoPE rotates pairs).
    """
    check_gpt_config(gpt_cfg)
    check_kv_groups(gpt_cfg["n_heads"], n_kv_groups)
    head_dim = gpt_cfg["emb_dim"] // gpt_cfg["n_heads"]
    check_head_dim(head_dim)
    cfg = {
        "vocab_size": gpt_cfg["vocab_size"],
        "context_length": gpt_cfg["context_length"],
        "emb_dim": gpt_cfg["emb_dim"],
        "n_heads": gpt_cfg["n_heads"],
        "n_kv_groups": n_kv_groups,
        "head_dim": head_dim,
        "hidden_dim": 1,  # chosen below
        "n_layers": gpt_cfg["n_layers"],
        "rope_base": rope_base,
        "rope_llama3_scaling": None,
        "norm_eps": norm_eps,
        "qk_norm": qk_norm,
        "tie_embeddings": tie_embeddings,
    }
    target = parameter_count(GPTModel, gpt_cfg)
    # Counted, not derived: what one more hidden unit adds, and the count without any.
    per_hidden_unit = parameter_count(OpenDecoderModel, {**cfg, "hidden_dim": 2}) - (
        one_unit := parameter_count(OpenDecoderModel, cfg)
    )
    without_ff = one_unit - per_hidden_unit
    hidden_dim = round((target - without_ff) / per_hidden_unit)
    return {**cfg, "hidden_dim": hidden_dim}


def kv_groups_for(n_heads: int) -> int:
    """Two query heads per key/value group, as in the course's Llama 3 and Qwen3 stand-ins
    (4 heads, 2 groups) and Qwen3 0.6B (16, 8); ValueError for an odd n_heads."""
    if n_heads < 2 or n_heads % 2:
        raise ValueError(
            f"n_heads ({n_heads}) must be even (2 or more): two query heads share each "
            "key/value group"
        )
    return n_heads // 2


def llama3_style_config(gpt_cfg: dict, tie_embeddings: bool = False) -> dict:
    """A Llama-3-style model of GPTModel(gpt_cfg)'s size: RMSNorm, RoPE (Llama 3's base
    500,000), SwiGLU, grouped-query attention with two query heads per key/value group."""
    check_gpt_config(gpt_cfg)
    return matched_open_config(
        gpt_cfg,
        n_kv_groups=kv_groups_for(gpt_cfg["n_heads"]),
        qk_norm=False,
        rope_base=LLAMA32_CONFIG_1B["rope_base"],
        norm_eps=LLAMA32_CONFIG_1B["norm_eps"],
        tie_embeddings=tie_embeddings,
    )


def qwen3_style_config(gpt_cfg: dict, tie_embeddings: bool = False) -> dict:
    """A Qwen3-style model of GPTModel(gpt_cfg)'s size: the Llama-3-style model plus QK-norm,
    with Qwen3's RoPE base (1,000,000) and RMSNorm epsilon (1e-6)."""
    check_gpt_config(gpt_cfg)
    return matched_open_config(
        gpt_cfg,
        n_kv_groups=kv_groups_for(gpt_cfg["n_heads"]),
        qk_norm=True,
        rope_base=QWEN3_CONFIG_0_6B["rope_base"],
        norm_eps=QWEN3_CONFIG_0_6B["norm_eps"],
        tie_embeddings=tie_embeddings,
    )


def comparison_models(gpt_cfg: dict) -> dict[str, tuple[type[nn.Module], dict]]:
    """{"GPT-2": (GPTModel, gpt_cfg), "Llama 3": (Llama3Model, its config), "Qwen3": (Qwen3Model,
    its config)}: the three models of one parameter count, each built by cls(cfg)."""
    return {
        "GPT-2": (GPTModel, dict(gpt_cfg)),
        "Llama 3": (Llama3Model, llama3_style_config(gpt_cfg)),
        "Qwen3": (Qwen3Model, qwen3_style_config(gpt_cfg)),
    }


def parameter_breakdown(model: nn.Module) -> dict[str, int]:
    """Parameters per part of a GPTModel or OpenDecoderModel, every PARAMETER_GROUPS key present
    (0 where the model has none, e.g. "output head" when it is tied to the token embedding).
    Raises ValueError naming a parameter that belongs to none of the groups."""
    counts = dict.fromkeys(PARAMETER_GROUPS, 0)
    for name, param in model.named_parameters():  # a tied head is listed once, as tok_emb
        group = next((g for g, belongs in PARAMETER_GROUPS.items() if belongs(name)), None)
        if group is None:
            raise ValueError(
                f"parameter {name!r} is in none of the parts {list(PARAMETER_GROUPS)}; "
                "parameter_breakdown knows GPTModel's and OpenDecoderModel's names"
            )
        counts[group] += param.numel()
    return counts


# --- the runs -----------------------------------------------------------------------------------


def verdict_loaders(
    context_length: int = 256, batch_size: int = 2, train_ratio: float = 0.9
) -> tuple[DataLoader, DataLoader]:
    """The chapter's data: (train_loader, val_loader) over The Verdict, the first train_ratio of
    its characters for training (shuffled, the last incomplete batch dropped), the rest for
    validation (in order, every window kept); windows of context_length tokens, stride
    context_length. Each batch: (inputs, targets), both (batch_size, context_length)."""
    if not 0 < train_ratio < 1:
        raise ValueError(f"train_ratio must be between 0 and 1, got {train_ratio}")
    text = fetch("the-verdict").read_text(encoding="utf-8")
    split = int(train_ratio * len(text))
    windows = dict(batch_size=batch_size, max_length=context_length, stride=context_length)
    train_loader = create_dataloader_v1(text[:split], **windows, drop_last=True, shuffle=True)
    val_loader = create_dataloader_v1(text[split:], **windows, drop_last=False, shuffle=False)
    return train_loader, val_loader


@dataclass
class PretrainingRun:
    """One architecture's training run.

    The losses are measured after the first optimizer step of every epoch (train_model_simple
    with eval_freq = one epoch, on eval_iter batches of each loader) and after the last step
    (on all batches); steps_done, epochs_done and tokens_seen say when. sample: the greedy
    continuation of the start context after training; seconds: the training time.
    """

    name: str
    seed: int
    parameters: int
    steps_done: list[int]
    epochs_done: list[float]
    tokens_seen: list[int]
    train_losses: list[float]
    val_losses: list[float]
    sample: str
    seconds: float


def pretrain_architecture(
    name: str,
    model_class: type[nn.Module],
    cfg: dict,
    train_loader: DataLoader,
    val_loader: DataLoader,
    device,
    tokenizer,
    *,
    seed: int,
    num_epochs: int,
    lr: float,
    weight_decay: float,
    eval_iter: int,
    start_context: str = "Every effort moves you",
    max_new_tokens: int = 50,
) -> PretrainingRun:
    """Build model_class(cfg) after torch.manual_seed(seed), train it with the chapter's loop
    (AdamW, then train_model_simple for num_epochs, the batch order seeded again with seed, so
    every architecture sees the same batches), evaluate it on all batches and let it continue
    start_context greedily. The model needs only forward(token ids (b, n)) -> logits (b, n, V)
    and a context_length attribute (GPTModel and OpenDecoderModel have both)."""
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
    torch.manual_seed(seed)
    model = model_class(cfg).to(device)
    optimizer = make_adamw(model.parameters(), lr, weight_decay)
    torch.manual_seed(seed)  # the shuffling: the same batch order whatever the model's init drew
    steps = len(train_loader)
    start = time.perf_counter()
    train_losses, val_losses, tokens_seen = train_model_simple(
        model,
        train_loader,
        val_loader,
        optimizer,
        device,
        num_epochs=num_epochs,
        eval_freq=steps,  # after the first step of each epoch
        eval_iter=eval_iter,
        start_context=None,  # its sample reads GPT's position table; ours comes below
        tokenizer=tokenizer,
    )
    seconds = time.perf_counter() - start
    done = [1 + i * steps for i in range(len(train_losses))]  # steps done at each evaluation
    final = evaluate_model(model, train_loader, val_loader, device, eval_iter=steps)
    model.eval()
    prompt = text_to_token_ids(start_context, tokenizer).to(device)
    ids = generate(model, prompt, max_new_tokens, context_size=model.context_length)
    return PretrainingRun(
        name=name,
        seed=seed,
        parameters=count_parameters(model),
        steps_done=[*done, num_epochs * steps],
        epochs_done=[*(n / steps for n in done), num_epochs],
        tokens_seen=[*tokens_seen, num_epochs * steps * tokens_seen[0]],  # [0]: one step's
        train_losses=[*train_losses, final[0]],
        val_losses=[*val_losses, final[1]],
        sample=token_ids_to_text(ids.cpu(), tokenizer).replace("\n", " "),
        seconds=seconds,
    )


def loss_table(runs: list[PretrainingRun]) -> pd.DataFrame:
    """One row per evaluation (epochs, optimizer steps and tokens done), a training and a
    validation loss column per run. Raises ValueError unless the runs were evaluated at the
    same points."""
    if not runs:
        raise ValueError("loss_table needs at least one run")
    first = runs[0]
    for run in runs[1:]:
        if run.steps_done != first.steps_done or run.tokens_seen != first.tokens_seen:
            raise ValueError(
                f"runs {first.name!r} and {run.name!r} were evaluated at different points; "
                "compare runs of the same data, epochs and batch size"
            )
    table = pd.DataFrame(
        {
            "epochs": first.epochs_done,
            "steps": first.steps_done,
            "tokens seen": first.tokens_seen,
        }
    )
    for run in runs:
        table[f"{run.name} train"] = run.train_losses
        table[f"{run.name} val"] = run.val_losses
    return table


def final_loss_table(runs: list[PretrainingRun]) -> pd.DataFrame:
    """The losses after the last step: one row per architecture, a training and a validation
    column per seed (runs of several seeds side by side)."""
    rows: dict[str, dict[str, float]] = {}
    for run in runs:
        row = rows.setdefault(run.name, {})
        row[f"seed {run.seed} train"] = run.train_losses[-1]
        row[f"seed {run.seed} val"] = run.val_losses[-1]
    return pd.DataFrame.from_dict(rows, orient="index")


def plot_architecture_losses(runs: list[PretrainingRun]):
    """Training loss (left) and validation loss (right) against epochs, one line per run, the
    same colour for the same architecture in both panels. Returns the matplotlib figure."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    names = list(dict.fromkeys(run.name for run in runs))
    seeds = {run.seed for run in runs}
    for run in runs:
        label = run.name if len(seeds) == 1 else f"{run.name}, seed {run.seed}"
        style = dict(color=f"C{names.index(run.name)}", marker=".", label=label)
        axes[0].plot(run.epochs_done, run.train_losses, **style)
        axes[1].plot(run.epochs_done, run.val_losses, **style)
    for ax, title in zip(axes, ("Training loss", "Validation loss")):
        ax.set_title(title)
        ax.set_xlabel("Epochs")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Cross-entropy loss")
    axes[1].legend()
    fig.tight_layout()
    return fig
