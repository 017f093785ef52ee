"""Figures of ch04/attention-variants.ipynb: which keys and values are cached under multi-head,
grouped-query and multi-head latent attention, the sliding-window mask beside the causal mask,
a mixture-of-experts router sending tokens to experts, and one step of Gated DeltaNet's state
update."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from shared.figures import COLORS, figure
from shared.figures.ch03 import TOKENS  # Chapter 3's sentence
from shared.figures.draw import FONT, arrow, box, canvas, grid, label

HEADS = 8  # query heads drawn in each panel


def _cache_area(ax, x: float, y: float, w: float, h: float, text: str) -> None:
    """A light green area behind what is cached, captioned underneath."""
    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            w,
            h,
            boxstyle="round,pad=0,rounding_size=0.08",
            facecolor=COLORS["cache"],
            edgecolor="#6a9f5b",
            linewidth=1.0,
            alpha=0.55,
            zorder=0,
        )
    )
    label(ax, x + w / 2, y - 0.22, text, fontsize=FONT - 2, italic=True)


def _line(ax, start: tuple[float, float], end: tuple[float, float], dashed: bool = False) -> None:
    ax.plot(*zip(start, end), color="#888888", linewidth=0.8, linestyle="--" if dashed else "-")


@figure(
    alt="Eight query heads and the keys and values they use. Multi-head attention: every head "
    "has its own key and value, and all 16 are cached per token. Grouped-query attention with "
    "2 groups: four query heads share one key and one value, so 4 vectors are cached. Multi-head "
    "latent attention: one small latent vector per token is cached, and every head's key and "
    "value are recomputed from it by up-projections."
)
def kv_heads_shared() -> Figure:
    fig, ax = canvas(10.0, 4.3)
    w, gap, panel = 0.3, 0.06, 3.35
    for p, (title, groups) in enumerate(
        [("multi-head (MHA)", HEADS), ("grouped-query (GQA), 2 groups", 2), ("latent (MLA)", 0)]
    ):
        x0 = 0.2 + p * panel
        centres = [x0 + i * (w + gap) + w / 2 for i in range(HEADS)]
        label(ax, x0 + 1.43, 4.05, title, bold=True)
        for i, c in enumerate(centres):
            box(ax, c - w / 2, 3.3, w, 0.36, f"q{i + 1}", "query", fontsize=FONT - 3, rounded=False)
        if groups:  # MHA and GQA: the cached key and value heads, shared within a group
            size = HEADS // groups
            cached = []
            for g in range(groups):
                members = centres[g * size : (g + 1) * size]
                mid = sum(members) / size
                kw = max(w, (size - 1) * (w + gap) * 0.6)
                box(ax, mid - kw / 2, 2.1, kw, 0.36, "k", "key", fontsize=FONT - 3, rounded=False)
                box(ax, mid - kw / 2, 1.6, kw, 0.36, "v", "value", fontsize=FONT - 3, rounded=False)
                for c in members:
                    _line(ax, (c, 3.3), (mid, 2.46))
                cached.append(g)
            _cache_area(
                ax, x0 - 0.08, 1.5, 2.98, 1.06, f"cached per token: {groups} keys + {groups} values"
            )
        else:  # MLA: keys and values are rebuilt from the cached latent
            for c in centres:
                box(
                    ax,
                    c - w / 2,
                    2.1,
                    w,
                    0.36,
                    "k",
                    "key",
                    fontsize=FONT - 3,
                    rounded=False,
                    dashed=True,
                )
                box(
                    ax,
                    c - w / 2,
                    1.6,
                    w,
                    0.36,
                    "v",
                    "value",
                    fontsize=FONT - 3,
                    rounded=False,
                    dashed=True,
                )
                _line(ax, (c, 3.3), (c, 2.46))
                _line(ax, (c, 1.6), (x0 + 1.43, 1.02), dashed=True)
            _cache_area(ax, x0 + 0.78, 0.6, 1.3, 0.5, "cached per token: 1 latent")
            box(ax, x0 + 0.88, 0.68, 1.1, 0.34, "latent", "cache", fontsize=FONT - 2)
            label(
                ax,
                x0 + 0.7,
                0.85,
                "W_key, W_value\n(up-projections)",
                fontsize=FONT - 3,
                italic=True,
                ha="right",
            )
    label(
        ax,
        5.0,
        0.1,
        "dashed: recomputed from the latent at every step, not cached",
        fontsize=FONT - 2,
        italic=True,
    )
    return fig


@figure(
    alt="The causal mask and a sliding-window mask with a window of 3 on the six tokens of "
    "'Your journey starts with one step'. Under the causal mask 'step' sees all six tokens; "
    "under the sliding window it sees only 'with', 'one' and itself, so the cache needs to keep "
    "only the last 3 positions."
)
def sliding_window_mask() -> Figure:
    n, window, cell = len(TOKENS), 3, 0.4
    fig, ax = canvas(8.2, 4.0)
    panels = [("causal mask", n), (f"sliding window of {window}", window)]
    for k, (title, span) in enumerate(panels):
        x = 1.0 + k * 4.0
        visible = [[0 <= i - j < span for j in range(n)] for i in range(n)]
        colors = [["weight" if v else "mask" for v in r] for r in visible]
        cells = [["✓" if v else "" for v in r] for r in visible]
        label(ax, x + n * cell / 2, 3.75, title, bold=True)
        grid(ax, x, 3.1, cells, colors, cell=cell, fontsize=FONT - 2)
        for i, token in enumerate(TOKENS):
            label(ax, x - 0.06, 3.1 - (i + 0.5) * cell, token, ha="right", fontsize=FONT - 2)
            ax.text(
                x + (i + 0.5) * cell, 3.16, token, ha="left", va="bottom", rotation=45,
                fontsize=FONT - 3,
            )  # fmt: skip
        cached = "all 6 positions" if span == n else f"the last {span} positions"
        label(ax, x + n * cell / 2, 0.55, f"to generate after 'step',\nthe cache keeps {cached}",
              fontsize=FONT - 2)  # fmt: skip
    label(
        ax,
        4.1,
        0.08,
        "rows: queries; columns: keys; ✓ = may attend",
        fontsize=FONT - 2,
        italic=True,
    )
    return fig


# Section 6 of ch04/attention-variants.ipynb routes Chapter 3's sentence with these settings: the
# token embeddings of an untrained small GPT, an untrained router of 4 experts, top 2, both built
# after torch.manual_seed(123) (the GPT first). The figure computes the same routes.
MOE_DEMO_CONFIG = {
    "vocab_size": 50257,
    "context_length": 64,
    "emb_dim": 96,
    "n_heads": 6,
    "n_layers": 2,
    "drop_rate": 0.0,
    "qkv_bias": False,
}


def moe_demo_routes() -> list[list[tuple[int, float]]]:
    """For each token of TOKENS, its (expert index, gate) pairs, as the notebook computes them."""
    import torch

    from shared.attention_variants import MoEFeedForward
    from shared.gpt import GPTModel
    from shared.tokenizers import gpt2_tokenizer

    ids = torch.tensor([gpt2_tokenizer().encode(" ".join(TOKENS))])
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(123)
        gpt = GPTModel(MOE_DEMO_CONFIG).eval()
        moe = MoEFeedForward(MOE_DEMO_CONFIG, num_experts=4, top_k=2)
        gates, experts = moe.route(gpt.tok_emb(ids))
    return [
        list(zip(e.tolist(), g.tolist(), strict=True))
        for g, e in zip(gates[0], experts[0], strict=True)
    ]


@figure(
    alt="A mixture-of-experts feed-forward: a router scores the 4 experts for each token of "
    "'Your journey starts with one step', keeps the top 2, and the token's output is the sum "
    "of those 2 experts' outputs weighted by the router's gates. Every expert's parameters are "
    "stored, but each token runs through only 2 of the 4."
)
def moe_routing() -> Figure:
    fig, ax = canvas(10.0, 4.3)
    h, step = 0.36, 0.58
    label(ax, 0.85, 4.0, "tokens", bold=True)
    label(ax, 2.45, 4.0, "router", bold=True)
    label(ax, 5.3, 4.0, "experts (feed-forwards)", bold=True)
    label(ax, 8.1, 4.0, "output of each token", bold=True)
    box(
        ax,
        1.95,
        0.45,
        1.0,
        3.25,
        "scores\n4 experts,\nkeeps the\ntop 2",
        "weight",
        fontsize=FONT - 2,
    )
    expert_y = [3.2 - e * 0.85 for e in range(4)]
    for e, y in enumerate(expert_y):
        box(ax, 4.7, y, 1.2, 0.5, f"expert {e + 1}", "ffn")
    for i, (token, routes) in enumerate(zip(TOKENS, moe_demo_routes(), strict=True)):
        y = 3.35 - i * step
        chosen = token == "journey"  # one token's routes highlighted, with its gates
        box(ax, 0.3, y, 1.1, h, token, "token", fontsize=FONT - 1, rounded=False, bold=chosen)
        arrow(ax, (1.4, y + h / 2), (1.95, y + h / 2), color="#999999")
        for e, gate in routes:
            end = (4.7, expert_y[e] + 0.25)
            arrow(ax, (2.95, y + h / 2), end, color="accent" if chosen else "#cccccc")
            if chosen:
                mid = (3.85, (y + h / 2 + end[1]) / 2)  # halfway along the arrow
                ax.text(*mid, f"{gate:.2f}", ha="center", va="center", fontsize=FONT - 2,
                        color=COLORS["accent"], bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})  # fmt: skip
        terms = " + ".join(f"{gate:.2f}·E{e + 1}" for e, gate in routes)
        label(ax, 6.45, y + h / 2, f"{token}:  {terms}", ha="left", fontsize=FONT - 1, bold=chosen)
    label(ax, 8.1, 3.72, "E2 = output of expert 2; gates: softmax over the 2 kept scores",
          fontsize=FONT - 3, italic=True)  # fmt: skip
    label(ax, 5.0, 0.15, "stored: 4 experts' parameters; used per token: 2 experts (untrained router of section 6)",
          fontsize=FONT - 2, italic=True)  # fmt: skip
    return fig


def _state(ax, x: float, y: float, title: str, color: str, size: int = 4) -> None:
    """One head's state: a size x size grid (d_k rows, d_v columns) with its top-left at (x, y)."""
    grid(ax, x, y, [[""] * size for _ in range(size)], color, cell=0.28)
    label(ax, x + size * 0.14, y + 0.2, title, fontsize=FONT - 1)


@figure(
    alt="One step of the gated delta rule for one head. The state S, a d_k by d_v matrix, is "
    "first decayed by exp(g_t) (forget), then corrected: the memory's answer for the key k_t, "
    "S transposed times k_t, is compared with the value v_t, and only the error, scaled by "
    "beta_t, is written back as the outer product of k_t and the error. The output is S "
    "transposed times the query q_t. The state keeps its size at every token, while softmax "
    "attention's cache gains one key and one value per token."
)
def deltanet_state_update() -> Figure:
    fig, ax = canvas(10.0, 4.4)
    label(ax, 5.0, 4.15, "Gated DeltaNet: one state per head, updated once per token", bold=True)
    top, w, h = 3.15, 0.5, 0.34
    _state(ax, 0.35, top, "S before token t", "cache")
    _state(ax, 3.05, top, "exp(g_t) · S", "#e8f5e4")  # faded: decayed
    _state(ax, 6.35, top, "S after token t", "cache")
    middle = top - 0.56
    for x in (1.65, 4.35, 7.65):
        arrow(ax, (x, middle), (x + 1.3, middle))
    box(ax, 8.95, middle - h / 2, w + 0.3, h, "o_t", "context", rounded=False)
    # What each step takes in (x of its box, x of its step's arrow), above that arrow.
    inputs = [
        (2.3, 2.3, "g_t", "weight"),
        (4.45, 5.0, "k_t", "key"),
        (5.0, 5.0, "v_t", "value"),
        (5.55, 5.0, "β_t", "weight"),
        (8.3, 8.3, "q_t", "query"),
    ]
    for x, step_x, text, color in inputs:
        box(ax, x - w / 2, top + 0.35, w, h, text, color, rounded=False)
        arrow(ax, (x, top + 0.35), (step_x, middle + 0.04), color="#999999")
    steps = [
        (2.3, "1. forget\nS ← exp(g_t) S\n(g_t ≤ 0: a decay\nchosen per token)"),
        (5.0, "2. correct\nrecalled = Sᵀ k_t\nS ← S + β_t k_t (v_t − recalled)ᵀ\n(write only what the\nmemory gets wrong)"),
        (8.3, "3. read\no_t = Sᵀ q_t"),
    ]  # fmt: skip
    for x, text in steps:
        ax.text(x, 1.75, text, ha="center", va="top", fontsize=FONT - 1.5, linespacing=1.35)
    label(ax, 0.9, top - 1.3, "d_k rows × d_v columns", fontsize=FONT - 2, italic=True)
    _cache_area(ax, 0.3, 0.25, 9.4, 0.42, "")
    label(
        ax,
        5.0,
        0.46,
        "after t tokens, attention caches t keys and t values per head; this state stays "
        "d_k × d_v numbers per head",
        fontsize=FONT - 1.5,
        italic=True,
    )
    return fig
