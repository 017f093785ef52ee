"""Figures of the DPO notebook (ch07/dpo.ipynb): what the DPO loss compares, drawn from a real
preference pair and its GPT-2 tokens."""

from __future__ import annotations

from matplotlib.figure import Figure

from shared.figures import figure
from shared.figures.draw import FONT, arrow, box, canvas, label, row
from shared.instruction import format_prompt
from shared.preference import load_preference_data
from shared.tokenizers import gpt2_tokenizer

ENTRY = 50  # "Identify the correct spelling of the following word." / "Ocassion"
CHOSEN = "#c7e9c0"  # the preferred response
REJECTED = "#fdd0a2"  # the dispreferred response
DIFFERENT = "#fc9272"  # a token of the rejected response that the chosen one lacks


def _response_tokens(text: str, tokenizer) -> list[str]:
    """The GPT-2 token pieces of a response, plus its end-of-text token."""
    return [tokenizer.decode([i]) for i in tokenizer.encode(text)] + ["<end>"]


@figure(
    alt="A prompt from the preference data with its chosen and its rejected response, which "
    "differ in one token, 'obviously'. Both go through the policy being trained and through a "
    "frozen copy of it, the reference; each gives the log-probability of each response, summed "
    "over the response's tokens with the prompt masked out. A response's reward is beta times "
    "the policy's minus the reference's log-probability, and the DPO loss is minus log sigmoid "
    "of the chosen reward minus the rejected reward."
)
def dpo_loss_pipeline() -> Figure:
    entry = load_preference_data()[ENTRY]
    tokenizer = gpt2_tokenizer()
    fig, ax = canvas(10.0, 5.6)

    # the prompt and the two responses, token by token
    prompt_tokens = len(tokenizer.encode(format_prompt(entry)))
    box(ax, 0.2, 4.75, 9.6, 0.7, "", "mask")
    label(ax, 0.35, 5.1, f"prompt x\n({prompt_tokens} tokens)", bold=True, ha="left")
    label(
        ax, 1.75, 5.1,
        "Below is an instruction that describes a task. Write a response that ...\n"
        f"### Instruction: {entry['instruction']}   ### Input: {entry['input']}   ### Response:",
        ha="left", fontsize=FONT - 1,
    )  # fmt: skip
    chosen_tokens = set(_response_tokens(entry["chosen"], tokenizer))
    for y, name, text, color in (
        (4.1, "chosen", entry["chosen"], CHOSEN),
        (3.6, "rejected", entry["rejected"], REJECTED),
    ):
        label(ax, 0.35, y + 0.18, name, bold=True, ha="left")
        box(ax, 1.2, y, 0.65, 0.36, "x", "mask", rounded=False)
        tokens = _response_tokens(text, tokenizer)
        colors = [color if t in chosen_tokens else DIFFERENT for t in tokens]
        row(ax, 1.91, y, tokens, colors, w=0.68, gap=0.04, fontsize=FONT - 2)
    label(
        ax, 9.8, 3.45, "prompt masked: only the response and its end are scored",
        fontsize=FONT - 1, ha="right", va="top", italic=True,
    )  # fmt: skip

    # the two models
    models = (
        (0.6, "policy (trainable)", "trainable"),
        (5.4, "reference (frozen copy of the SFT model)", "frozen"),
    )
    for x, text, color in models:
        box(ax, x, 2.25, 4.0, 0.5, text, color, bold=True)
        arrow(ax, (5.0, 3.55), (x + 2.0, 2.8))

    # the four log-probabilities
    for x, short in ((0.6, "pol"), (5.4, "ref")):
        for dx, name, color in ((0.0, "chosen", CHOSEN), (2.1, "rejected", REJECTED)):
            box(ax, x + dx, 1.35, 1.9, 0.5, f"log p_{short}({name} | x)", color)
            arrow(ax, (x + 2.0, 2.25), (x + dx + 0.95, 1.88))
    label(ax, 5.0, 1.1, "each: the sum of log-probabilities of the response's tokens",
          fontsize=FONT - 1, italic=True)  # fmt: skip

    # rewards and loss
    box(ax, 0.6, 0.1, 8.8, 0.8, "", "white")
    label(
        ax, 5.0, 0.67,
        "reward(response) = beta × [ log p_pol(response | x) − log p_ref(response | x) ]",
    )  # fmt: skip
    label(
        ax, 5.0, 0.32,
        "DPO loss = − log sigmoid( reward(chosen) − reward(rejected) )      "
        "(log 2 = 0.693 while policy = reference)",
        bold=True,
    )  # fmt: skip
    return fig
