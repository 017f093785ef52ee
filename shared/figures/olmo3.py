"""Figures of the ch05 bonus notebook on OLMo 3: its transformer block beside Llama 3's (where the
norms sit, QK-norm over the whole projections), and its pattern of sliding-window and
full-attention layers with what each keeps in the KV cache."""

from __future__ import annotations

from matplotlib.figure import Figure

from shared.figures import COLORS, figure
from shared.figures.draw import FONT, arrow, box, canvas, grid, label
from shared.figures.open_models import block_column, outline_changed, repeat_bracket
from shared.olmo3 import OLMO3_CONFIG_7B

_SLIDING = "#eaf1f8"  # sliding-window layers: a paler attention colour
_W, _H, _GAP, _Y0 = 2.9, 0.5, 0.34, 0.35  # column boxes: width, height, gap, first box's bottom


def _column(ax, x: float, title: str, parts: list[tuple[str, str, bool]]) -> None:
    """One block, bottom to top: parts as (text, colour, changed), changed ones outlined in red.
    Boxes 1-2 and 3-4 are the two sublayers with their norms: a shortcut (on the left) skips
    each pair and is added to its output."""
    label(ax, x + _W / 2, _Y0 + 6 * (_H + _GAP) + 0.05, title, bold=True)
    centre = x + _W / 2
    bottoms = block_column(ax, x, _Y0, parts, w=_W, h=_H, gap=_GAP)
    for first in (1, 3):  # the shortcut around boxes first and first + 1
        start = bottoms[first] - _GAP / 2
        end = bottoms[first + 2] - _GAP / 2
        side = x - 0.22
        ax.plot([centre, side, side], [start, start, end], color=COLORS["edge"], linewidth=1.0)
        arrow(ax, (side, end), (centre - 0.12, end))
        label(ax, centre, end, "+", fontsize=FONT + 1, bold=True)


_OLMO_ATTENTION = "attention: RMSNorm over all q, all k;\nwindow in 3 of 4 layers; RoPE/YaRN"


@figure(
    alt="Llama 3's transformer block beside OLMo 3's, bottom to top. In Llama 3 each shortcut "
    "goes around an RMSNorm followed by its sublayer (attention, then the SwiGLU feed-forward): "
    "the norm comes before. In OLMo 3 the shortcut goes around the sublayer followed by its "
    "RMSNorm: the sublayer's output is normalised before it is added. OLMo 3's attention "
    "normalises all query dimensions together and all key dimensions together before splitting "
    "the heads, uses a sliding window in 3 of every 4 layers, and its output head is not tied "
    "to the token embeddings."
)
def llama_vs_olmo3_block() -> Figure:
    fig, ax = canvas(8.6, 5.8)
    llama = [
        ("token embeddings", "embedding", False),
        ("RMSNorm", "norm", False),
        ("grouped-query attention\nRoPE (Llama 3 scaling)", "attention", False),
        ("RMSNorm", "norm", False),
        ("SwiGLU feed-forward", "ffn", False),
        ("final RMSNorm, output head\ntied to the token embeddings", "output", False),
    ]
    olmo = [
        ("token embeddings", "embedding", False),
        (_OLMO_ATTENTION, "attention", True),
        ("RMSNorm (after attention)", "norm", True),
        ("SwiGLU feed-forward", "ffn", False),
        ("RMSNorm (after feed-forward)", "norm", True),
        ("final RMSNorm, output head\n(its own matrix)", "output", True),
    ]
    _column(ax, 0.6, "Llama 3: x + sublayer(norm(x))", llama)
    _column(ax, 5.3, "OLMo 3: x + norm(sublayer(x))", olmo)
    for x in (4.0, 8.45):  # the four middle boxes repeat n_layers times
        repeat_bracket(ax, x, _Y0 + _H + _GAP / 2, _Y0 + 5 * (_H + _GAP) - _GAP / 2)
    label(ax, 4.3, 0.12, "red outline: changed from Llama 3", fontsize=FONT - 2, italic=True)
    return fig


def _kv_cache_gib(cfg: dict, tokens: int, window: int | None) -> float:
    """GiB of keys and values (bfloat16) one layer keeps for tokens positions (window: the
    sliding window; the cache keeps window - 1 positions)."""
    kept = tokens if window is None else min(tokens, window - 1)
    return kept * 2 * cfg["n_kv_groups"] * cfg["head_dim"] * 2 / 2**30


@figure(
    alt="Top: OLMo 3 7B's 32 layers as a row of boxes, every fourth one (layers 4, 8, ... 32) "
    "with full attention and YaRN-scaled RoPE, the others with a sliding window of 4,096 "
    "positions and plain RoPE. Bottom: on 10 tokens, a full-attention layer's causal mask lets "
    "the last token see all 10, a sliding window (of 4 here) only the last 4; at 65,536 tokens "
    "the sliding layers keep 4,095 positions each in the KV cache, so the 7B model's cache "
    "takes 9.5 GiB in bfloat16 instead of 32 GiB."
)
def sliding_and_full_layers() -> Figure:
    cfg = OLMO3_CONFIG_7B
    fig, ax = canvas(9.6, 5.6)
    label(ax, 4.8, 5.35, f"OLMo 3 7B: {cfg['n_layers']} layers", bold=True)
    width = 0.27
    for i, layer_type in enumerate(cfg["layer_types"]):
        full = layer_type == "full_attention"
        color = "attention" if full else _SLIDING
        patch = box(ax, 0.4 + i * width, 4.55, width - 0.03, 0.55, color=color, rounded=False)
        if full:
            outline_changed(patch, linewidth=1.6)
            label(ax, 0.4 + i * width + width / 2 - 0.015, 4.38, str(i + 1), fontsize=FONT - 3)
    yarn = cfg["rope_yarn_scaling"]
    box(ax, 0.4, 3.7, 0.3, 0.3, "", _SLIDING, rounded=False)
    sliding_text = (
        f"sliding window of {cfg['sliding_window']:,} positions, plain RoPE "
        f"(base {cfg['rope_base']:,.0f})"
    )
    label(ax, 0.8, 3.85, sliding_text, ha="left", fontsize=FONT - 1)
    outline_changed(box(ax, 0.4, 3.25, 0.3, 0.3, "", "attention", rounded=False), linewidth=1.0)
    full_text = (
        f"full attention, RoPE with YaRN: {yarn['original_context_length']:,} -> "
        f"{cfg['context_length']:,} positions (×{yarn['factor']:g})"
    )
    label(ax, 0.8, 3.4, full_text, ha="left", fontsize=FONT - 1)

    n, window, cell = 10, 4, 0.24
    for k, (title, span) in enumerate(
        (("full attention", n), (f"sliding window ({window})", window))
    ):
        x = 0.6 + k * 3.0
        visible = [[0 <= i - j < span for j in range(n)] for i in range(n)]
        colors = [["weight" if v else "mask" for v in r] for r in visible]
        label(ax, x + n * cell / 2, 2.8, title, fontsize=FONT - 1, bold=True)
        grid(ax, x, 2.6, [[""] * n] * n, colors, cell=cell)
    legend = "rows: queries; columns: keys; purple: may attend, grey: hidden"
    label(ax, 3.3, 0.1, legend, fontsize=FONT - 2, italic=True)

    tokens = cfg["context_length"]
    n_full, n_sliding = (
        cfg["layer_types"].count(t) for t in ("full_attention", "sliding_attention")
    )
    full = n_full * _kv_cache_gib(cfg, tokens, None)
    sliding = n_sliding * _kv_cache_gib(cfg, tokens, cfg["sliding_window"])
    every_layer_full = cfg["n_layers"] * _kv_cache_gib(cfg, tokens, None)
    lines = [
        f"KV cache at {tokens:,} tokens (bfloat16):",
        f"{n_full} full layers keep every position: {full:.1f} GiB",
        f"{n_sliding} sliding layers keep {cfg['sliding_window'] - 1:,} each: {sliding:.1f} GiB",
        f"together {full + sliding:.1f} GiB; all full: {every_layer_full:.0f} GiB",
    ]
    for i, line in enumerate(lines):
        label(ax, 6.4, 2.4 - i * 0.4, line, ha="left", fontsize=FONT - 1, bold=i == 0)
    return fig
