"""Chapter 7 in the browser: chat with an instruction-finetuned GPT, streamed (Gradio).

From the repository root, after ``pip install -e ".[apps]"`` and finetuning a model with
``python ch07/finetune_instructions.py`` (it writes ch07/<model>-sft.pth):

    python ch07/app.py                                      # the newest checkpoint in ch07/
    python ch07/app.py --checkpoint ch07/gpt2-355M-sft.pth

then open http://127.0.0.1:7860. Any save_checkpoint file that stores the model's ``config``
(and, optionally, its prompt ``style``) works, a preference-tuned (DPO) one included. In a
notebook in this folder: ``from app import build_app`` and ``build_app().launch()``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

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
from shared.cli import errors_as_one_line
from shared.device import get_device
from shared.gpt2_weights import standin_gpt
from shared.instruction import END_OF_TEXT_ID, format_prompt, format_training_text
from shared.pretraining import read_checkpoint_extra
from shared.tokenizers import gpt2_tokenizer

HERE = Path(__file__).resolve().parent
TITLE = "Chapter 7: chat with your finetuned GPT"
INTRO = (
    "Give an instruction; the model answers in the prompt style it was finetuned with, token by "
    "token. Temperature 0 gives the chapter's greedy answers."
)
CREATE_CHECKPOINT = (
    "Create one with `python ch07/finetune_instructions.py` (GPT-2 355M, the book's settings) "
    "or, in a few minutes on a CPU, `python ch07/finetune_instructions.py --standin "
    "--max-entries 80 --epochs 1`; see ch07/README.md."
)
TURN_SEPARATOR = "\n\n"


def find_checkpoint(folder: Path = HERE) -> Path | None:
    """The most recently written ``.pth`` file in folder that stores a model config, or None."""
    found = []
    for path in folder.glob("*.pth"):
        try:
            if isinstance(read_checkpoint_extra(path).get("config"), dict):
                found.append(path)
        except (ValueError, OSError, RuntimeError):
            continue  # not a save_checkpoint file
    return max(found, key=lambda path: path.stat().st_mtime, default=None)


def load_model(checkpoint: str | Path | None = None, device="cpu") -> AppModel:
    """The finetuned model (None: find_checkpoint() in ch07/); without one, the untrained
    stand-in, with a banner saying how to create a checkpoint."""
    checkpoint = checkpoint or find_checkpoint() or HERE  # the folder: none was found there

    def untrained() -> AppModel:
        app_model = for_generation(standin_gpt())
        app_model.description = (
            "the course's stand-in (a random 4-layer GPT, not GPT-2), not finetuned: "
            "its answers are noise"
        )
        return app_model

    def load() -> AppModel:
        app_model = load_gpt_checkpoint(checkpoint, device)
        tuning = "instruction-finetuned" + (
            ", then preference-tuned with DPO" if "dpo" in app_model.extra else ""
        )
        app_model.description += f" ({tuning})"
        return app_model

    app_model = load_or_fall_back(load, untrained, CREATE_CHECKPOINT, checkpoint)
    app_model.model.to(device)
    return app_model


def message_text(content) -> str:
    """The text of a chat message's content: a string, or Gradio's list of {"text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def past_turns(history: list[dict]) -> list[dict]:
    """The (instruction, response) turns of a chat history of {"role", "content"} messages, as
    instruction entries {"instruction", "input", "output"}."""
    turns, instruction = [], None
    for message in history:
        if message.get("role") == "user":
            instruction = message_text(message.get("content"))
        elif message.get("role") == "assistant" and instruction is not None:
            turns.append(
                {
                    "instruction": instruction,
                    "input": "",
                    "output": message_text(message["content"]),
                }
            )
            instruction = None
    return turns


def chat_prompt_ids(
    turns: list[dict], message: str, style: str, tokenizer, budget: int
) -> tuple[list[int], int]:
    """Token ids of the prompt for message, preceded by the latest past turns that fit.

    Each past turn is written as it was trained (format_training_text), the new message as
    format_prompt; turns are separated by a blank line. Turns are dropped oldest first until
    the prompt has at most budget tokens. Returns (ids, number of past turns kept); raises
    ValueError when the message alone needs more than budget tokens.
    """
    current = format_prompt({"instruction": message, "input": ""}, style)
    for kept in range(len(turns), -1, -1):
        texts = [format_training_text(turn, style) for turn in turns[len(turns) - kept :]]
        ids = tokenizer.encode(TURN_SEPARATOR.join([*texts, current]), disallowed_special=())
        if len(ids) <= budget:
            return ids, kept
    raise ValueError(
        f"the message needs {len(ids):,} tokens in the prompt template, more than the "
        f"{budget:,} that leave room for the answer"
    )


def respond(app_model: AppModel, tokenizer, device, message, history, max_new_tokens, temperature):
    """Stream the answer to message: yields (chat history, text box value, status Markdown)."""
    history = list(history or [])
    problem = input_problem(message, "message")
    if problem:
        yield history, message, problem
        return
    context, style = app_model.config["context_length"], app_model.extra.get("style", "alpaca")
    budget = context - int(max_new_tokens)
    turns = past_turns(history)
    try:
        ids, kept = chat_prompt_ids(turns, message, style, tokenizer, budget)
    except ValueError as err:
        yield (
            history,
            message,
            (
                f"Cannot answer: {err}. The model reads at most {context:,} tokens; shorten the "
                "message or lower the maximum of new tokens."
            ),
        )
        return
    history += [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
    forgotten = len(turns) - kept
    note = f"{forgotten} earlier turn(s) no longer fit the context and were left out. " * (
        forgotten > 0
    )
    start, new_ids = time.perf_counter(), []
    for new_ids in stream_generate(
        app_model.model,
        torch.tensor([ids], device=device),
        int(max_new_tokens),
        context,
        temperature=float(temperature),
        eos_id=END_OF_TEXT_ID,
        seed=123,  # this request's own random numbers
    ):
        history[-1]["content"] = tokenizer.decode(new_ids).strip()
        yield history, "", note + f"Answering: {len(new_ids)} tokens ..."
    answer = tokenizer.decode(new_ids).strip()
    history[-1]["content"] = answer or "(an empty answer)"
    elapsed = time.perf_counter() - start
    yield (
        history,
        "",
        note + f"{len(new_ids)} tokens in {elapsed:.1f} s, prompt {len(ids):,} tokens.",
    )


def model_note(app_model: AppModel) -> str:
    """Which model answers, in which prompt style, and what it remembers."""
    style = app_model.extra.get("style", "alpaca")
    context = app_model.config["context_length"]
    return (
        f"{app_model.description}; prompt style: {style}. It has no memory beyond its context: "
        f"it sees earlier turns of this chat only while they fit into {context:,} tokens "
        "(the oldest are left out first), and nothing after you clear the chat or reload the page."
    )


def build_app(checkpoint: str | Path | None = None, device=None):
    """The page (a gr.Blocks): the model note, the chat, a message box and settings. Not launched."""
    device = get_device(device)
    app_model = load_model(checkpoint, device)
    app_model.description = model_note(app_model)
    tokenizer = gpt2_tokenizer()
    longest_answer = min(512, app_model.config["context_length"] // 2)
    gr, page = new_page(TITLE)
    with page:
        page_header(gr, TITLE, INTRO, app_model)
        chat = gr.Chatbot(label="Chat", render_markdown=False, elem_id="chat", height=360)
        message = gr.Textbox(
            label="Your instruction", placeholder="Rewrite this sentence ...", elem_id="chat-input"
        )
        with gr.Row():
            send = gr.Button("Send", variant="primary", elem_id="send")
            stop = gr.Button("Stop", elem_id="stop")
            clear = gr.Button("Clear the chat", elem_id="clear")
        status = gr.Markdown(elem_id="message")
        with gr.Accordion("Answer settings", open=False):
            max_new_tokens = gr.Slider(
                1,
                longest_answer,
                min(128, longest_answer),
                step=1,
                label="Max new tokens",
                elem_id="max-new-tokens",
            )
            temperature = gr.Slider(
                0, 2, 0.0, step=0.05, label="Temperature (0: greedy)", elem_id="temperature"
            )
        inputs, outputs = [message, chat, max_new_tokens, temperature], [chat, message, status]

        def answer(*values):
            yield from respond(app_model, tokenizer, device, *values)

        events = [
            trigger(answer, inputs, outputs, concurrency_limit=1)
            for trigger in (send.click, message.submit)
        ]
        stop.click(None, cancels=events)
        clear.click(lambda: ([], ""), None, [chat, status])
    return page


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    return app_arguments(
        "Chat with an instruction-finetuned GPT in the browser (Chapter 7).",
        "the newest .pth file in ch07/ that stores a model config: a checkpoint of "
        "finetune_instructions.py or dpo_finetune.py",
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with errors_as_one_line():
        launch(build_app(args.checkpoint, args.device), args)


if __name__ == "__main__":
    main()
