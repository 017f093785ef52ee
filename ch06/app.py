"""Chapter 6 in the browser: is a text message spam? (Gradio)

From the repository root, after ``pip install -e ".[apps]"`` and training a classifier with
``python ch06/train_classifier.py train`` (it writes ch06/review_classifier.pth):

    python ch06/app.py
    python ch06/app.py --checkpoint runs/padded.pth

then open http://127.0.0.1:7860. In a notebook in this folder: ``from app import build_app`` and
``build_app().launch()`` (see ch06/README.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from shared.apps import (
    AppModel,
    app_arguments,
    describe_config,
    input_problem,
    launch,
    load_or_fall_back,
    new_page,
    page_header,
)
from shared.classification import LABELS, classify_review, convert_to_classifier, load_classifier
from shared.cli import errors_as_one_line
from shared.device import get_device
from shared.gpt2_weights import standin_gpt
from shared.tokenizers import gpt2_tokenizer

HERE = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = HERE / "review_classifier.pth"
TITLE = "Chapter 6: spam or not spam?"
INTRO = (
    "Paste a text message. The finetuned GPT reads it up to its last token and scores the two "
    "classes; the page shows the label `classify_review` gives and both probabilities."
)
CREATE_CHECKPOINT = (
    "Create it with `python ch06/train_classifier.py train` (a few minutes on a CPU; see "
    "ch06/README.md), then reload this app."
)
EXAMPLES = [
    "WINNER!! You have been selected to receive a $1000 prize. Call now to claim.",
    "Are we still on for dinner tonight? I can pick you up at 7.",
]


def load_model(checkpoint: str | Path | None = None, device="cpu") -> AppModel:
    """The classifier saved at checkpoint (None: ch06/review_classifier.pth); without it, an
    untrained classifier on the stand-in, with a banner saying how to train one."""
    checkpoint = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT

    def load() -> AppModel:
        model, extra = load_classifier(checkpoint, device)
        description = (
            f"a spam classifier finetuned from {describe_config(extra['config'])}, "
            f"from `{Path(checkpoint).name}`"
        )
        return AppModel(model, extra["config"], description, extra=extra)

    def untrained() -> AppModel:
        standin = standin_gpt()
        torch.manual_seed(123)  # the new 2-class head
        model = convert_to_classifier(standin.model, num_classes=2).to(device).eval()
        description = "an untrained classifier on the course's stand-in: its labels are chance"
        return AppModel(model, standin.config, description, extra={"max_length": None})

    return load_or_fall_back(load, untrained, CREATE_CHECKPOINT, checkpoint)


def classify_with_probabilities(
    text: str, model, tokenizer, device, max_length: int | None
) -> tuple[str, dict[str, float]]:
    """classify_review's label and the softmax of the same forward pass's class scores.

    Returns (label, {"spam": p, "not spam": 1 - p}).
    """
    scores = {}

    def keep_last_token_scores(module, args, output):  # output: (1, n, 2)
        scores["last"] = output[0, -1].float()

    handle = model.register_forward_hook(keep_last_token_scores)
    try:
        label = classify_review(text, model, tokenizer, device, max_length=max_length)
    finally:
        handle.remove()
    probabilities = torch.softmax(scores["last"], dim=-1)
    return label, {
        "spam": probabilities[LABELS["spam"]].item(),
        "not spam": probabilities[LABELS["ham"]].item(),
    }


def classify(app_model: AppModel, tokenizer, device, text):
    """The page's answer to one message: (probabilities for gr.Label or None, status Markdown)."""
    problem = input_problem(text, "message")
    if problem:
        return None, problem
    max_length = app_model.extra["max_length"]
    label, probabilities = classify_with_probabilities(
        text, app_model.model, tokenizer, device, max_length
    )
    n_tokens = len(tokenizer.encode(text, disallowed_special=()))
    context = app_model.config["context_length"]
    limit = context if max_length is None else min(max_length, context)
    status = f"**{label}** ({n_tokens:,} tokens)."
    if n_tokens > limit:
        why = "its context" if limit == context else "the length it was trained with"
        status += f" The classifier reads only the first {limit:,} tokens ({why})."
    return probabilities, status


def build_app(checkpoint: str | Path | None = None, device=None):
    """The page (a gr.Blocks): a message box, the label and both probabilities. Not launched."""
    device = get_device(device)
    app_model = load_model(checkpoint, device)
    tokenizer = gpt2_tokenizer()
    gr, page = new_page(TITLE)
    with page:
        page_header(gr, TITLE, INTRO, app_model)
        with gr.Row():
            with gr.Column():
                text = gr.Textbox(label="Message", lines=4, elem_id="text")
                run = gr.Button("Classify", variant="primary", elem_id="classify")
                gr.Examples(EXAMPLES, inputs=text)
            with gr.Column():
                verdict = gr.Label(num_top_classes=2, label="Verdict", elem_id="verdict")
                status = gr.Markdown(elem_id="message")
        run.click(
            lambda value: classify(app_model, tokenizer, device, value),
            text,
            [verdict, status],
            concurrency_limit=1,
        )
    return page


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    return app_arguments(
        "A spam classifier in the browser (Chapter 6).",
        f"ch06/{DEFAULT_CHECKPOINT.name}, as ch06/train_classifier.py train saves it",
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with errors_as_one_line():
        launch(build_app(args.checkpoint, args.device), args)


if __name__ == "__main__":
    main()
