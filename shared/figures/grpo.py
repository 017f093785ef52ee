"""Figures of the reasoning notebook (ch07/grpo.ipynb): the loop of reinforcement learning with
verifiable rewards, on one addition problem and a group of four completions."""

from __future__ import annotations

from matplotlib.figure import Figure

from shared.figures import figure
from shared.figures.draw import FONT, arrow, box, canvas, label

RIGHT = "#c7e9c0"  # a completion the verifier accepts
WRONG = "#fdd0a2"  # one it rejects

# 347 + 589 = 936; the second completion forgets the carry out of the tens.
GROUP = (
    ("reversed 6 3 9 0   Answer: 9 3 6", 1, "+0.5"),
    ("reversed 6 2 9 0   Answer: 9 2 6", 0, "−1.5"),
    ("reversed 6 3 9 0   Answer: 9 3 6", 1, "+0.5"),
    ("reversed 6 3 9 0   Answer: 9 3 6", 1, "+0.5"),
)


@figure(
    alt="The loop of reinforcement learning with verifiable rewards. A prompt, 'Q: 3 4 7 + 5 8 "
    "9 =', goes to the policy, which samples a group of four completions; one of them forgets a "
    "carry and answers 926, the other three answer 936. The verifier reads the number after "
    "'Answer:' and compares it with the truth: rewards 1, 0, 1, 1. Each reward minus the group's "
    "mean (0.75), divided by the group's standard deviation (0.5), is the completion's "
    "advantage: +0.5 for each right one, -1.5 for the wrong one. The policy update raises the "
    "log-probability of completions with a positive advantage and lowers the others, with the "
    "probability ratio clipped and an optional KL penalty to a frozen reference copy; then the "
    "loop starts again with new prompts."
)
def rlvr_loop() -> Figure:
    fig, ax = canvas(10.0, 5.0)
    box(ax, 0.2, 4.15, 2.6, 0.6, "prompt\nQ: 3 4 7 + 5 8 9 =", "input")
    box(ax, 0.2, 2.85, 2.6, 0.65, "policy\n(the model being trained)", "trainable", bold=True)
    arrow(ax, (1.5, 4.15), (1.5, 3.52))
    box(ax, 0.2, 0.95, 2.6, 0.65, "reference\n(frozen copy of the start)", "frozen")

    label(ax, 5.05, 4.92, "a group of G = 4 sampled completions", bold=True)
    label(ax, 7.45, 4.92, "reward", bold=True)
    label(ax, 8.95, 4.92, "advantage", bold=True)
    for i, (text, reward, advantage) in enumerate(GROUP):
        y = 4.3 - i * 0.6
        color = RIGHT if reward else WRONG
        box(ax, 3.4, y, 3.3, 0.45, text, color, fontsize=FONT - 1, rounded=False)
        box(ax, 7.05, y, 0.8, 0.45, str(reward), color, rounded=False)
        box(ax, 8.3, y, 1.3, 0.45, advantage, color, rounded=False)
        arrow(ax, (2.8, 3.18), (3.38, y + 0.22))
        arrow(ax, (6.7, y + 0.22), (7.03, y + 0.22))
        arrow(ax, (7.85, y + 0.22), (8.28, y + 0.22))
    label(ax, 7.45, 2.35, "verifier:\nanswer == 936?", fontsize=FONT - 1, italic=True)
    label(ax, 8.95, 2.35, "(r − mean) / std\nmean 0.75, std 0.5", fontsize=FONT - 1, italic=True)

    box(
        ax, 3.4, 0.95, 6.2, 0.9,
        "update the policy: raise the log-probability of each completion's tokens in\n"
        "proportion to its advantage (ratio to the sampling policy clipped to [1 − ε, 1 + ε])\n"
        "− β · KL(policy ‖ reference), an optional penalty",
        "white", fontsize=FONT - 1,
    )  # fmt: skip
    arrow(ax, (8.95, 2.05), (8.95, 1.87))
    arrow(ax, (2.8, 1.27), (3.38, 1.27), dashed=True)
    arrow(ax, (3.4, 1.75), (1.9, 2.83), curve=-0.25)
    label(ax, 1.55, 2.25, "repeat with\nnew prompts", fontsize=FONT - 1, italic=True)
    label(
        ax, 5.0, 0.45,
        "No worked solutions and no human labels: only a check of the final answer. A group "
        "whose rewards\nare all equal (all right or all wrong) has advantages 0 and teaches "
        "nothing.",
        fontsize=FONT - 1,
    )  # fmt: skip
    return fig
