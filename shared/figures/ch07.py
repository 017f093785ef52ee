"""Figures of Chapter 7: the two prompt layouts, a padded and masked instruction batch, and the
instruction-finetuning pipeline from data to scored responses."""

from __future__ import annotations

from matplotlib.figure import Figure

from shared.figures import COLORS, figure
from shared.figures.draw import FONT, arrow, box, canvas, label
from shared.instruction import (
    ALPACA_PREAMBLE,
    END_OF_TEXT_ID,
    custom_collate_fn,
    format_training_text,
)
from shared.tokenizers import gpt2_tokenizer

# Entries of the chapter's instruction data set (indices 50, 12, 63 and 70 of the 1,100).
SPELLING_ENTRY = {
    "instruction": "Identify the correct spelling of the following word.",
    "input": "Ocassion",
    "output": "The correct spelling is 'Occasion.'",
}
BATCH_ENTRIES = [
    {"instruction": "What is the capital of Indonesia?", "input": "",
     "output": "The capital of Indonesia is Jakarta."},
    {"instruction": "What is an antonym of 'soft'?", "input": "", "output": "hard."},
    {"instruction": "What is the chemical symbol for aluminum?", "input": "", "output": "Al."},
]  # fmt: skip
COLUMNS_SHOWN = 9  # the last positions of the batch; the earlier ones hold the prompts


def _legend(ax, x: float, items: list[tuple[str, str]]) -> None:
    """A one-line legend along the bottom, from x: a colour swatch and its meaning per item."""
    for color, text in items:
        box(ax, x, 0.1, 0.3, 0.24, "", color, rounded=False)
        label(ax, x + 0.38, 0.22, text, ha="left", fontsize=FONT - 2)
        x += 0.58 + 0.068 * len(text)


def _template_panel(ax, x: float, w: float, title: str, parts, tokens: int) -> None:
    """One prompt layout: a title, then one box per part (text, colour, lines), top down."""
    label(ax, x + w / 2, 5.05, title, bold=True)
    y = 4.8
    for text, color, lines in parts:
        if text is None:  # a blank line of the template
            y -= 0.12
            continue
        h = 0.2 + 0.18 * lines
        y -= h
        box(ax, x, y, w, h, text, color, fontsize=FONT - 1, rounded=False)
        y -= 0.05
    label(ax, x + w / 2, y - 0.2, f"{tokens} GPT-2 tokens", fontsize=FONT - 1, italic=True)


@figure(
    alt="The same instruction entry laid out in the Alpaca style (a fixed preamble, then "
    "'### Instruction:', '### Input:' and '### Response:' sections) and in the shorter Phi-3 "
    "style ('<|user|>' and '<|assistant|>' markers). The instruction and input come from the "
    "entry; the response is the entry's output, the text the model learns to write."
)
def prompt_styles() -> Figure:
    tokenizer = gpt2_tokenizer()
    entry = SPELLING_ENTRY
    preamble = ALPACA_PREAMBLE.replace(" Write", "\nWrite")
    alpaca = [
        (preamble, "mask", 2),
        (None, "", 0),
        ("### Instruction:", "weight", 1),
        (entry["instruction"], "input", 1),
        (None, "", 0),
        ("### Input:", "weight", 1),
        (entry["input"], "input", 1),
        (None, "", 0),
        ("### Response:", "weight", 1),
        (entry["output"], "target", 1),
    ]
    phi3 = [
        ("<|user|>", "weight", 1),
        (entry["instruction"], "input", 1),
        (entry["input"], "input", 1),
        ("<|assistant|>", "weight", 1),
        (entry["output"], "target", 1),
    ]
    count = {s: len(tokenizer.encode(format_training_text(entry, s))) for s in ("alpaca", "phi3")}
    fig, ax = canvas(10.0, 5.3)
    _template_panel(ax, 0.2, 5.5, "Alpaca style", alpaca, count["alpaca"])
    _template_panel(ax, 6.1, 3.7, "Phi-3 style", phi3, count["phi3"])
    label(
        ax,
        6.1,
        1.25,
        "format_input: the prompt (without the marker)\nformat_prompt: + the response marker\n"
        "format_training_text: + the output",
        ha="left",
        fontsize=FONT - 2,
    )
    _legend(
        ax,
        0.2,
        [
            ("mask", "fixed preamble"),
            ("weight", "section markers"),
            ("input", "instruction and input (from the entry)"),
            ("target", "response: the entry's output"),
        ],
    )
    return fig


def _piece(tokenizer, token_id: int) -> str:
    """A token as drawn in a cell: its text (spaces as ␣, newlines as \\n) and its id."""
    text = tokenizer.decode([token_id]).replace(" ", "␣").replace("\n", "\\n")
    if token_id == END_OF_TEXT_ID:
        text = "<eot>"
    return f"{text}\n{token_id}"


@figure(
    alt="A batch of three real instruction entries of different lengths, padded by "
    "custom_collate_fn: each input row ends in end-of-text tokens (50256) up to the longest "
    "entry; each target row is its input row shifted left by one; in the targets the first "
    "end-of-text token is kept, so the model learns to stop, and every later one becomes -100, "
    "which the loss ignores."
)
def padded_batch() -> Figure:
    tokenizer = gpt2_tokenizer()
    batch = [tokenizer.encode(format_training_text(entry)) for entry in BATCH_ENTRIES]
    inputs, targets = custom_collate_fn(batch)
    n = inputs.shape[1]
    first = n - COLUMNS_SHOWN
    cell_w, cell_h, left = 0.82, 0.46, 1.55
    fig, ax = canvas(10.0, 6.15)
    top = 5.9
    label(ax, left + 0.35, top, f"positions 0 to {first - 1}", fontsize=FONT - 2, italic=True)
    for j in range(COLUMNS_SHOWN):
        label(ax, left + 0.8 + (j + 0.5) * cell_w, top, str(first + j), fontsize=FONT - 2)
    y = top - 0.1
    for row, length in enumerate(len(ids) for ids in batch):
        y -= 0.3
        entry = BATCH_ENTRIES[row]
        label(
            ax, 0.1, y, f"entry {row + 1}: \"{entry['output']}\" ({length} tokens)",
            ha="left", fontsize=FONT - 1, bold=True,
        )  # fmt: skip
        y -= 0.18
        for kind, values in (("inputs", inputs[row]), ("targets", targets[row])):
            y -= cell_h
            label(ax, 0.1, y + cell_h / 2, kind, ha="left", fontsize=FONT - 1)
            box(ax, left, y, 0.72, cell_h, "…", kind[:-1], rounded=False)
            for j in range(COLUMNS_SHOWN):
                position = first + j
                value = int(values[position])
                color, text, bold = ("input" if kind == "inputs" else "target"), "", False
                if value == -100:
                    color, text = "ignore", "-100"
                else:
                    text = _piece(tokenizer, value)
                    if kind == "inputs" and position >= length:  # padding
                        color = "mask"
                    if kind == "targets" and position == length - 1:  # the end of the text
                        color, bold = "accent", True
                box(
                    ax, left + 0.8 + j * cell_w, y, cell_w - 0.04, cell_h, text, color,
                    fontsize=FONT - 3, rounded=False, bold=bold,
                    text_color="white" if bold else "black",
                )  # fmt: skip
                if row == 0 and kind == "inputs" and j:  # the shift, drawn once
                    x = left + 0.8 + j * cell_w + (cell_w - 0.04) / 2
                    arrow(ax, (x, y), (x - cell_w, y - 0.2), color="#888888")
            y -= 0.2
    label(ax, 0.1, top - 1.33, "(shifted left by one)", ha="left", fontsize=FONT - 2, italic=True)
    _legend(
        ax,
        0.1,
        [
            ("input", "input token"),
            ("mask", "padding (50256)"),
            ("target", "target: the next token"),
            ("accent", "end of text, kept"),
            ("ignore", "-100: ignored by the loss"),
        ],
    )
    return fig


@figure(
    alt="The instruction-finetuning pipeline in three stages: prepare the data (1,100 entries, "
    "Alpaca prompts, a 935/55/110 split, padded and masked batches), finetune a pretrained "
    "GPT-2 355M for two epochs with the next-token loss, then answer the 110 test instructions "
    "and score the answers with a judge model (offline: the test loss and a word-overlap F1)."
)
def finetuning_pipeline() -> Figure:
    stages = [
        (
            "1  prepare the data",
            [
                "instruction data\n1,100 entries:\ninstruction, input, output",
                "format as prompts\n(Alpaca or Phi-3)",
                "split\n935 train, 55 validation,\n110 test",
                "batches: pad, shift,\nmask padding with -100",
            ],
            "input",
        ),
        (
            "2  finetune",
            [
                "load pretrained\nGPT-2 355M",
                "train 2 epochs: next-token\ncross-entropy, AdamW",
                "watch the training and\nvalidation loss",
                "save the\nfinetuned model",
            ],
            "trainable",
        ),
        (
            "3  evaluate",
            [
                "answer the 110 test\ninstructions: greedy,\nKV cache, stop at\n<|endoftext|>",
                "save the answers\nbeside the references\n(JSON)",
                "judge model (Llama 3\nvia Ollama) scores\neach answer 0 to 100",
                "offline instead:\ntest loss and\nword-overlap F1",
            ],
            "output",
        ),
    ]
    w, h, gap = 2.05, 0.78, 0.32
    fig, ax = canvas(10.0, 4.45)
    for s, (title, steps, color) in enumerate(stages):
        y = 3.3 - s * 1.45
        label(ax, 0.15, y + h + 0.16, title, ha="left", bold=True)
        for k, text in enumerate(steps):
            x = 0.15 + k * (w + gap)
            alternative = s == 2 and k == 3
            box(ax, x, y, w, h, text, color, fontsize=FONT - 1, dashed=alternative)
            if alternative:
                label(ax, x - gap / 2, y + h / 2, "or", fontsize=FONT - 1, italic=True)
            elif k:
                arrow(ax, (x - gap, y + h / 2), (x, y + h / 2))
        if s < 2:  # on to the next stage: down from the last box, left, down into the first
            last_x, first_x, below = 0.15 + 3 * (w + gap) + w / 2, 0.15 + w - 0.3, y - 0.22
            ax.plot([last_x, last_x, first_x], [y, below, below], color=COLORS["edge"], lw=1.1)
            arrow(ax, (first_x, below), (first_x, y - 1.45 + h))
    return fig
