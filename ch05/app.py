"""Chapter 5 in the browser: text completion, streamed token by token (Gradio).

From the repository root, after ``pip install -e ".[apps]"``:

    python ch05/app.py                                  # GPT-2 124M (offline: the stand-in)
    python ch05/app.py --gpt2 355M
    python ch05/app.py --checkpoint runs/tiny/last.pth  # a checkpoint of ch05/train.py

then open http://127.0.0.1:7860. In a notebook in this folder: ``from app import build_app`` and
``build_app().launch()`` (see ch05/README.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from shared.apps import (
    AppModel,
    app_arguments,
    for_generation,
    input_problem,
    launch,
    load_gpt_checkpoint,
    load_or_fall_back,
    new_page,
    page_header,
    stream_generate,
)
from shared.cli import add_option, errors_as_one_line
from shared.device import get_device
from shared.gpt2_weights import load_pretrained_gpt2
from shared.pretraining import text_to_token_ids
from shared.tokenizers import gpt2_tokenizer

TITLE = "Chapter 5: text completion"
INTRO = (
    "Type the beginning of a text; the model continues it one token at a time, using its KV "
    "cache. Temperature 0 always picks the most likely token (greedy decoding); higher values "
    "sample, among the top-k likeliest tokens when top-k is above 0."
)
CREATE_CHECKPOINT = (
    "Create one with `python ch05/train.py --data my_text.txt --checkpoint-dir runs/mine` "
    "(it writes `runs/mine/last.pth`; see ch05/README.md)."
)


def load_model(
    checkpoint: str | Path | None = None, gpt2_size: str = "124M", device="cpu"
) -> AppModel:
    """The checkpoint's model; without one (or when it cannot be read) GPT-2 of gpt2_size, which
    is the stand-in where GPT-2's weights cannot be had."""
    app_model = load_or_fall_back(
        lambda: load_gpt_checkpoint(checkpoint, device),
        lambda: for_generation(load_pretrained_gpt2(gpt2_size)),
        CREATE_CHECKPOINT,
        checkpoint,
    )
    app_model.model.to(device)
    return app_model


def complete(
    app_model: AppModel, tokenizer, device, prompt, max_new_tokens, temperature, top_k, seed
):
    """Stream a continuation of prompt: yields (new text so far, status Markdown)."""
    problem = input_problem(prompt, "prompt")
    if problem:
        yield "", problem
        return
    idx = text_to_token_ids(prompt, tokenizer).to(device)  # (1, n)
    context = app_model.config["context_length"]
    note = ""
    if idx.shape[1] > context:
        note = (
            f"The prompt has {idx.shape[1]:,} tokens, more than the model's context of "
            f"{context:,}: the model sees only its last {context:,}. "
        )
    start, new_ids = time.perf_counter(), []
    try:
        for new_ids in stream_generate(
            app_model.model,
            idx,
            int(max_new_tokens),
            context,
            temperature=float(temperature),
            top_k=int(top_k) or None,
            eos_id=tokenizer.eot_token,
            seed=int(seed),  # this request's own random numbers
        ):
            yield tokenizer.decode(new_ids), note + f"Generating: {len(new_ids)} tokens ..."
    except ValueError as err:  # settings out of range (possible through the API)
        yield "", f"Cannot generate: {err}"
        return
    ended = " (the model ended the text)" if len(new_ids) < int(max_new_tokens) else ""
    yield (
        tokenizer.decode(new_ids),
        note + f"{len(new_ids)} new tokens in {time.perf_counter() - start:.1f} s{ended}.",
    )


def build_app(checkpoint: str | Path | None = None, gpt2_size: str = "124M", device=None):
    """The page (a gr.Blocks): prompt, decoding settings, streamed completion. Not launched."""
    device = get_device(device)
    app_model = load_model(checkpoint, gpt2_size, device)
    tokenizer = gpt2_tokenizer()
    gr, page = new_page(TITLE)
    with page:
        page_header(gr, TITLE, INTRO, app_model)
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(
                    "Every effort moves you", label="Prompt", lines=3, elem_id="prompt"
                )
                completion = gr.Textbox(
                    label="Continuation (the new tokens)",
                    lines=8,
                    interactive=False,
                    elem_id="completion",
                )
                status = gr.Markdown(elem_id="message")
            with gr.Column(scale=2):
                settings = [
                    gr.Slider(1, 512, 50, step=1, label="Max new tokens", elem_id="max-new-tokens"),
                    gr.Slider(
                        0, 2, 1.0, step=0.05, label="Temperature (0: greedy)", elem_id="temperature"
                    ),
                    gr.Slider(0, 200, 50, step=1, label="Top-k (0: all tokens)", elem_id="top-k"),
                    gr.Number(123, precision=0, label="Seed", elem_id="seed"),
                ]
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Stop", elem_id="stop")

        def stream(*values):
            yield from complete(app_model, tokenizer, device, *values)

        event = run.click(
            stream,
            [prompt, *settings],
            [completion, status],
            concurrency_limit=1,
        )
        stop.click(None, cancels=[event])
    return page


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = app_arguments("Text completion in the browser (Chapter 5).", "none: GPT-2, see --gpt2")
    add_option(parser, "--gpt2", "124M")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with errors_as_one_line():
        launch(build_app(args.checkpoint, args.gpt2, args.device), args)


if __name__ == "__main__":
    main()
