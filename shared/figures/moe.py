"""Figures of the ch05 bonus notebook on Qwen3-MoE: a router choosing k of E experts for each
token, and the parameters a mixture-of-experts model stores against those a token uses."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from shared.figures import COLORS, figure
from shared.figures.draw import FONT, box, canvas, label

TOKENS = ["Every", "effort", "moves", "you", "forward", "."]
NUM_EXPERTS, TOP_K = 16, 4


def router_demo() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An untrained router of 16 experts, top 4, on one random vector per token of TOKENS:
    (probabilities (6, 16), weights (6, 4), experts (6, 4)), from shared.qwen3_moe's route."""
    from shared.qwen3_moe import SparseMoEFeedForward

    torch.manual_seed(0)
    moe = SparseMoEFeedForward(64, 16, NUM_EXPERTS, TOP_K, norm_topk_prob=True)
    tokens = torch.randn(len(TOKENS), 64)
    with torch.no_grad():
        probs = torch.softmax(moe.router(tokens), dim=-1)
        weights, experts = moe.route(tokens)
    return probs, weights, experts


@figure(
    alt="A router choosing 4 of 16 experts for each of six tokens. For each token the router "
    "gives every expert a probability (grey shading); the 4 most probable experts are kept, "
    "their probabilities rescaled to sum to 1 (the numbers in the coloured cells), and only "
    "those 4 experts run on the token. The bottom row counts how many tokens each expert "
    "received: an uneven count is what the load-balancing loss penalises."
)
def router_top_k() -> Figure:
    probs, weights, experts = router_demo()
    fig, ax = canvas(10.0, 4.7)
    cell, left, top = 0.42, 1.45, 3.85
    label(ax, 0.75, 4.35, "token", bold=True)
    label(ax, left + NUM_EXPERTS * cell / 2, 4.35, "router: top 4 of 16 experts", bold=True)
    for e in range(NUM_EXPERTS):
        label(ax, left + (e + 0.5) * cell, top + 0.17, f"{e + 1}", fontsize=FONT - 2)
    largest = float(probs.max())
    for i, token in enumerate(TOKENS):
        y = top - (i + 1) * cell
        box(ax, 0.2, y + 0.03, 1.1, cell - 0.06, token, "token", fontsize=FONT - 1)
        chosen = dict(zip(experts[i].tolist(), weights[i].tolist(), strict=True))
        for e in range(NUM_EXPERTS):
            shade = 1.0 - 0.45 * float(probs[i, e]) / largest  # darker grey: more probable
            color = COLORS["ffn"] if e in chosen else (shade, shade, shade)
            text = f"{chosen[e]:.2f}".lstrip("0") if e in chosen else ""
            patch = box(ax, left + e * cell, y, cell, cell, text, color, fontsize=FONT - 3,
                        rounded=False)  # fmt: skip
            if e in chosen:
                patch.set_edgecolor(COLORS["accent"])
                patch.set_linewidth(1.8)
    label(ax, left + NUM_EXPERTS * cell + 0.15, top - cell, "4 experts run\nper token; their\n"
          "weights sum to 1", ha="left", va="top", fontsize=FONT - 2)  # fmt: skip
    counts = torch.bincount(experts.flatten(), minlength=NUM_EXPERTS).tolist()
    y = top - (len(TOKENS) + 1) * cell - 0.12
    for e, count in enumerate(counts):
        box(ax, left + e * cell, y, cell, cell, str(count), "weight", fontsize=FONT - 2,
            rounded=False)  # fmt: skip
    label(ax, 0.75, y + cell / 2, "tokens per\nexpert", fontsize=FONT - 1)
    label(ax, left + NUM_EXPERTS * cell + 0.15, y + cell / 2, "6 tokens × 4 = 24 runs",
          ha="left", fontsize=FONT - 2)  # fmt: skip
    label(ax, 5.0, 0.3, "grey: the router's probability for each expert (darker = more); "
          "an untrained router on random token vectors. Qwen3-30B-A3B keeps 8 of 128 in each "
          "of its 48 layers.", fontsize=FONT - 2, italic=True)  # fmt: skip
    return fig


# The parts of a model, in the order the bars stack them: (name, colour).
PARTS = [
    ("embeddings + head", "embedding"),
    ("attention + norms", "attention"),
    ("routers", "weight"),
    ("experts", "ffn"),
]


def parameter_parts(cfg: dict) -> dict[str, tuple[int, int]]:
    """{part of PARTS: (stored, used per token)} for Qwen3MoeModel(cfg). Counted on a one-layer
    model built on the meta device (no memory), the per-layer parts times n_layers: every layer
    is the same."""
    from shared.qwen3_moe import Qwen3MoeModel

    with torch.device("meta"):
        one_layer = Qwen3MoeModel({**cfg, "n_layers": 1})
    stored = dict.fromkeys([name for name, _ in PARTS], 0)
    for name, param in one_layer.named_parameters():
        if not name.startswith("trf_blocks."):
            stored["embeddings + head"] += param.numel()
        elif ".ff.router." in name:
            stored["routers"] += param.numel() * cfg["n_layers"]
        elif ".ff.experts." in name:
            stored["experts"] += param.numel() * cfg["n_layers"]
        else:
            stored["attention + norms"] += param.numel() * cfg["n_layers"]
    share = cfg["num_experts_per_token"] / cfg["num_experts"]
    return {
        part: (count, round(count * share) if part == "experts" else count)
        for part, count in stored.items()
    }


@figure(
    alt="Stacked bars of the parameters that Qwen3-30B-A3B and Qwen3-235B-A22B store and the "
    "parameters one token uses. Both models route each token to 8 of their 128 experts in "
    "every layer, so a token uses one sixteenth of the experts: 3.35 of 30.53 billion "
    "parameters in the smaller model and 22.19 of 235.09 billion in the larger. Embeddings, "
    "attention and routers are used by every token; the experts are most of what is stored."
)
def active_vs_total() -> Figure:
    from shared.qwen3_moe import QWEN3_MOE_CONFIG_30B_A3B, QWEN3_MOE_CONFIG_235B_A22B

    fig = Figure(figsize=(9.0, 3.6))
    models = [("Qwen3-30B-A3B", QWEN3_MOE_CONFIG_30B_A3B), ("Qwen3-235B-A22B", QWEN3_MOE_CONFIG_235B_A22B)]  # fmt: skip
    for column, (title, cfg) in enumerate(models):
        ax = fig.add_subplot(1, 2, column + 1)
        parts = parameter_parts(cfg)
        total = sum(stored for stored, _ in parts.values()) / 1e9
        ax.set_xlim(0, total * 1.22)
        for row, which in enumerate((0, 1)):  # 0: stored, 1: used per token
            start = 0.0
            for name, color in PARTS:
                billions = parts[name][which] / 1e9
                ax.barh(1 - row, billions, left=start, height=0.6, color=COLORS[color],
                        edgecolor=COLORS["edge"], label=name if row == 0 else None)  # fmt: skip
                start += billions
            ax.text(start + 0.01 * total, 1 - row, f"{start:.2f} B", va="center",
                    fontsize=FONT - 1)  # fmt: skip
        ax.set_yticks([1, 0], ["stored", "used per\ntoken"], fontsize=FONT - 1)
        ax.set_xlabel("billions of parameters", fontsize=FONT - 1)
        ax.set_title(f"{title}: {cfg['num_experts_per_token']} of {cfg['num_experts']} experts",
                     fontsize=FONT)  # fmt: skip
        ax.tick_params(axis="x", labelsize=FONT - 2)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    fig.legend(*fig.axes[0].get_legend_handles_labels(), loc="lower center", ncol=4,
               fontsize=FONT - 1, frameon=False)  # fmt: skip
    fig.subplots_adjust(left=0.11, right=0.98, top=0.88, bottom=0.3, wspace=0.35)
    return fig
