"""The browser apps of Chapters 5 to 7 (ch0X/app.py on shared.apps).

The first tests check the apps' Python side: streaming, input checks, loading, the chat prompt.
The browser tests start each app on 127.0.0.1 with a tiny model, open it in headless Chromium
(the system's browser, driven by Playwright), type into the page and compare what it shows with
the model's own output. They skip, saying why, where Gradio, Playwright or Chromium is missing.
With LLM_COURSE_SCREENSHOTS=<folder> they also save a screenshot of each page there.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from shared.apps import (
    MAX_INPUT_CHARS,
    AppModel,
    describe_config,
    input_problem,
    load_gpt_checkpoint,
    load_or_fall_back,
    stream_generate,
)
from shared.classification import classify_review, convert_to_classifier, save_classifier
from shared.gpt import GPT2_MODEL_CONFIGS, GPTModel
from shared.gpt2_weights import STANDIN_CONFIG
from shared.instruction import format_prompt, format_training_text, generate_response
from shared.kv_cache import KVCacheGPTModel
from shared.pretraining import generate, save_checkpoint, text_to_token_ids
from tests.conftest import TINY
from tests.notebook_code import REPO
from tests.scripts import load_script

CONFIG = {**TINY, "context_length": 96, "emb_dim": 16, "qkv_bias": True}
CH05, CH06, CH07 = (load_script(REPO / f"ch0{n}" / "app.py") for n in (5, 6, 7))


def tiny_model(seed: int = 1, cls=KVCacheGPTModel):
    torch.manual_seed(seed)
    return cls(CONFIG).eval()


# --- the Python side ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt_length, max_new_tokens, temperature, top_k",
    [(5, 12, 0.0, None), (5, 12, 1.3, 20), (90, 15, 0.0, None)],  # the last slides the window
)
def test_stream_generate_yields_generates_tokens_one_at_a_time(
    prompt_length, max_new_tokens, temperature, top_k
):
    model = tiny_model()
    idx = torch.randint(0, 50257, (1, prompt_length), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(7)
    streamed = list(stream_generate(model, idx, max_new_tokens, 96, temperature, top_k))
    torch.manual_seed(7)
    expected = generate(model, idx, max_new_tokens, 96, temperature, top_k)[0, prompt_length:]
    assert [len(ids) for ids in streamed] == list(range(1, max_new_tokens + 1))
    assert all(a == b[: len(a)] for a, b in zip(streamed, streamed[1:]))
    assert streamed[-1] == expected.tolist()


def test_stream_generate_with_a_seed_keeps_its_own_random_numbers():
    model = tiny_model()
    idx = torch.tensor([[15496, 11, 995]])
    torch.manual_seed(5)
    expected = generate(model, idx, 10, 96, temperature=1.5)[0, 3:].tolist()
    stream = stream_generate(model, idx, 10, 96, temperature=1.5, seed=5)
    first = next(stream)
    torch.manual_seed(999)  # another request seeding the global generator halfway
    torch.rand(100)
    assert list(stream)[-1] == expected and first == expected[:1]


def test_stream_generate_stops_at_eos_and_when_closed():
    model = tiny_model()
    idx = torch.tensor([[15496, 11, 995]])
    greedy = generate(model, idx, 8, 96)[0, 3:].tolist()
    eos = greedy[3]  # the fourth token: generation stops before it
    assert greedy.index(eos) == 3, "pick a token that does not occur earlier"
    assert list(stream_generate(model, idx, 8, 96, eos_id=eos))[-1] == greedy[:3]

    stream = stream_generate(model, idx, 50, 96)
    assert next(stream) == greedy[:1]
    stream.close()  # the reader leaves: the generation stops
    assert list(stream_generate(model, idx, 8, 96))[-1] == greedy


def test_two_requests_stream_at_once_from_one_model():
    from concurrent.futures import ThreadPoolExecutor

    model = tiny_model()
    prompts = [torch.tensor([[15496, 11, 995]]), torch.tensor([[40, 716]])]
    expected = [generate(model, idx, 20, 96)[0, idx.shape[1] :].tolist() for idx in prompts]
    interleaved = list(zip(*(stream_generate(model, idx, 20, 96) for idx in prompts)))
    assert list(interleaved[-1]) == expected  # each stream has its own cache
    with ThreadPoolExecutor(2) as pool:  # two requests in threads, as Gradio serves them
        streamed = pool.map(lambda idx: list(stream_generate(model, idx, 20, 96))[-1], prompts)
        assert list(streamed) == expected


def test_stream_generate_rejects_a_batch_and_reports_generate_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"\(1, n\)"):
        next(stream_generate(model, torch.zeros(2, 3, dtype=torch.long), 4, 96))
    with pytest.raises(ValueError, match="temperature"):
        next(stream_generate(model, torch.zeros(1, 3, dtype=torch.long), 4, 96, temperature=-1))


def test_input_problem_names_what_is_wrong():
    assert input_problem("Hello", "prompt") is None
    assert input_problem(None, "prompt") == "The prompt must be text, not NoneType."
    assert input_problem(42, "message") == "The message must be text, not int."
    assert input_problem(" \n\t", "prompt") == "Type a prompt first: it is empty."
    too_long = input_problem("x" * (MAX_INPUT_CHARS + 1), "message")
    assert too_long.startswith("The message has 20,001 characters; this app accepts at most 20,000")


def test_describe_config_tells_the_stand_in_from_gpt2():
    assert describe_config(STANDIN_CONFIG).startswith("the course's stand-in")
    assert describe_config(GPT2_MODEL_CONFIGS["355M"]) == "GPT-2 355M"
    trained_from_scratch = {**GPT2_MODEL_CONFIGS["124M"], "qkv_bias": False}  # ch05/train.py
    assert describe_config(trained_from_scratch) == (
        "a custom GPT (n_layers=12, emb_dim=768, n_heads=12)"
    )


def test_load_or_fall_back_explains_a_missing_or_broken_checkpoint(tmp_path):
    good = tmp_path / "good.pth"
    save_checkpoint(good, tiny_model(cls=GPTModel), config=CONFIG, style="phi3")
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")

    def fall_back():
        return AppModel(tiny_model(2), CONFIG, "the fallback")

    loaded = load_or_fall_back(lambda: load_gpt_checkpoint(good), fall_back, "Train one.", good)
    assert loaded.banner is None and loaded.extra["style"] == "phi3"
    assert loaded.description == "a custom GPT (n_layers=2, emb_dim=16, n_heads=2), from `good.pth`"
    assert isinstance(loaded.model, KVCacheGPTModel)
    assert torch.equal(loaded.model.out_head.weight, tiny_model(cls=GPTModel).out_head.weight)

    for path, problem in ((tmp_path / "none.pth", "No checkpoint at"), (broken, "Could not load")):
        used = load_or_fall_back(
            lambda p=path: load_gpt_checkpoint(p), fall_back, "Train one.", path
        )
        assert used.description == "the fallback"
        assert (
            problem in used.banner
            and "Train one. Until then this page uses the fallback." in used.banner
        )
    assert load_or_fall_back(None, fall_back, "Train one.", None).banner is None
    searched = load_or_fall_back(None, fall_back, "Train one.", tmp_path)
    assert searched.banner.startswith(f"**⚠️ No checkpoint in `{tmp_path}`.**")


def test_ch05_complete_streams_the_greedy_continuation(tokenizer):
    app_model = AppModel(tiny_model(), CONFIG, "tiny")
    updates = list(CH05.complete(app_model, tokenizer, "cpu", "Every effort", 6, 0.0, 0, 123))
    idx = text_to_token_ids("Every effort", tokenizer)
    expected = generate(app_model.model, idx, 6, 96, eos_id=tokenizer.eot_token)[0, 2:]
    assert len(updates) == 7  # one per token, then the final text with its timing
    assert updates[-1][0] == tokenizer.decode(expected.tolist())
    assert updates[-1][1].startswith("6 new tokens in ")

    long_prompt = " word" * 100  # 100 tokens, more than the context of 96
    assert list(CH05.complete(app_model, tokenizer, "cpu", long_prompt, 2, 0.0, 0, 1))[-1][
        1
    ].startswith("The prompt has 100 tokens, more than the model's context of 96")
    assert list(CH05.complete(app_model, tokenizer, "cpu", b"bytes", 2, 0.0, 0, 1)) == [
        ("", "The prompt must be text, not bytes.")
    ]
    assert "top_k" in list(CH05.complete(app_model, tokenizer, "cpu", "Hi", 2, 1.0, -3, 1))[-1][1]


def tiny_classifier(seed: int = 3) -> GPTModel:
    torch.manual_seed(seed)
    return convert_to_classifier(tiny_model(seed, GPTModel), num_classes=2).eval()


def test_ch06_probabilities_come_from_classify_reviews_forward_pass(tokenizer):
    model = tiny_classifier()
    for text in ("Win a free prize now!!!", "See you at lunch", "x" * 500):
        label, probabilities = CH06.classify_with_probabilities(text, model, tokenizer, "cpu", 20)
        assert label == classify_review(text, model, tokenizer, "cpu", max_length=20)
        assert sum(probabilities.values()) == pytest.approx(1.0)
        assert (probabilities["spam"] > 0.5) == (label == "spam")
    app_model = AppModel(model, CONFIG, "tiny", extra={"max_length": 20})
    _, status = CH06.classify(app_model, tokenizer, "cpu", "word" + " word" * 29)
    assert status.endswith(
        "(30 tokens). The classifier reads only the first 20 tokens (the length it was trained with)."
    )
    assert CH06.classify(app_model, tokenizer, "cpu", "") == (
        None,
        "Type a message first: it is empty.",
    )


def test_ch07_prompt_keeps_the_latest_turns_that_fit(tokenizer):
    history = [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": [{"type": "text", "text": "Blue."}]},
        {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": "Apple."},
    ]
    turns = CH07.past_turns(history)
    assert turns == [
        {"instruction": "Name a colour.", "input": "", "output": "Blue."},
        {"instruction": "Name a fruit.", "input": "", "output": "Apple."},
    ]
    ids, kept = CH07.chat_prompt_ids(turns, "And a tree?", "alpaca", tokenizer, budget=1000)
    text = tokenizer.decode(ids)
    assert kept == 2 and text.endswith(format_prompt({"instruction": "And a tree?"}))
    assert text.index("Name a colour.") < text.index("Blue.") < text.index("Name a fruit.")
    last_turn_and_message = (
        format_training_text(turns[1], "phi3")
        + "\n\n"
        + format_prompt({"instruction": "And a tree?"}, "phi3")
    )
    budget = len(tokenizer.encode(last_turn_and_message))
    ids, kept = CH07.chat_prompt_ids(turns, "And a tree?", "phi3", tokenizer, budget)
    assert kept == 1 and tokenizer.decode(ids) == last_turn_and_message
    with pytest.raises(ValueError, match="more than the 10 that leave room"):
        CH07.chat_prompt_ids(turns, "And a tree?", "alpaca", tokenizer, budget=10)


def test_ch07_finds_the_newest_checkpoint_with_a_config(tmp_path):
    assert CH07.find_checkpoint(tmp_path) is None
    older, newer = tmp_path / "a-sft.pth", tmp_path / "b-dpo.pth"
    for path in (older, newer):
        save_checkpoint(path, tiny_model(cls=GPTModel), config=CONFIG)
    os.utime(older, (1, 1))
    (tmp_path / "z-notes.pth").write_bytes(b"not a checkpoint")
    assert CH07.find_checkpoint(tmp_path) == newer
    save_checkpoint(newer, tiny_model(cls=GPTModel), config=CONFIG, dpo={"beta": 0.1})
    assert CH07.load_model(newer).description == (
        "a custom GPT (n_layers=2, emb_dim=16, n_heads=2), from `b-dpo.pth` "
        "(instruction-finetuned, then preference-tuned with DPO)"
    )


# --- in the browser ----------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MISSING = [
    reason
    for reason, missing in (
        (
            'Gradio is not installed (pip install -e ".[apps]")',
            not importlib.util.find_spec("gradio"),
        ),
        (
            "Playwright is not installed (pip install playwright)",
            not importlib.util.find_spec("playwright"),
        ),
        ("no Chromium on PATH (Debian: apt-get install chromium)", CHROMIUM is None),
    )
    if missing
]
TIMEOUT_MS = 30_000  # the page's answers, on a loaded 2-core machine


@pytest.fixture(scope="module")
def browser():
    if MISSING:
        pytest.skip("; ".join(MISSING))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        yield chromium
        chromium.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def opened(blocks, browser, name: str):
    """Serve blocks on 127.0.0.1 and open it in a browser tab; yield the tab (a Playwright page).

    On leaving, with LLM_COURSE_SCREENSHOTS set, the tab is saved as <folder>/<name>.png.
    """
    port = free_port()
    blocks.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        ssr_mode=False,
    )
    tab = browser.new_page(viewport={"width": 1100, "height": 760})
    try:
        tab.set_default_timeout(TIMEOUT_MS)
        tab.goto(f"http://127.0.0.1:{port}/")
        yield tab
        folder = os.environ.get("LLM_COURSE_SCREENSHOTS")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            tab.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)
    finally:
        tab.close()
        blocks.close()


def set_number(tab, elem_id: str, value) -> None:
    """Type value into the number box of a slider and confirm it."""
    box = tab.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_ch05_app_streams_the_models_greedy_completion(browser, tmp_path, tokenizer):
    from playwright.sync_api import expect

    checkpoint = tmp_path / "last.pth"
    save_checkpoint(checkpoint, tiny_model(cls=GPTModel), config=CONFIG)
    prompt = "Every effort moves you"
    idx = text_to_token_ids(prompt, tokenizer)
    reference = generate(tiny_model(cls=GPTModel), idx, 20, 96, eos_id=tokenizer.eot_token)

    with opened(CH05.build_app(checkpoint, device="cpu"), browser, "ch05-app") as tab:
        expect(tab.locator("#model-note")).to_contain_text("a custom GPT")
        expect(tab.locator("#banner")).to_have_count(0)
        tab.locator("#prompt textarea").fill("")
        tab.locator("#generate").click()
        expect(tab.locator("#message")).to_have_text("Type a prompt first: it is empty.")
        tab.locator("#prompt textarea").fill("y" * (MAX_INPUT_CHARS + 1))
        tab.locator("#generate").click()
        expect(tab.locator("#message")).to_contain_text("this app accepts at most 20,000")

        tab.locator("#prompt textarea").fill(prompt)
        set_number(tab, "max-new-tokens", 20)
        set_number(tab, "temperature", 0)
        tab.locator("#generate").click()
        expect(tab.locator("#message")).to_contain_text("20 new tokens in")
        expected = tokenizer.decode(reference[0, idx.shape[1] :].tolist())
        expect(tab.locator("#completion textarea")).to_have_value(expected)


def test_ch06_app_shows_classify_reviews_label_and_both_probabilities(browser, tmp_path, tokenizer):
    from playwright.sync_api import expect

    checkpoint = tmp_path / "classifier.pth"
    model = tiny_classifier()
    save_classifier(checkpoint, model, CONFIG, max_length=24)
    with opened(CH06.build_app(checkpoint, device="cpu"), browser, "ch06-app") as tab:
        tab.locator("#classify").click()
        expect(tab.locator("#message")).to_have_text("Type a message first: it is empty.")
        for text in ("Are we still on for dinner tonight?", CH06.EXAMPLES[0]):
            label, probabilities = CH06.classify_with_probabilities(
                text, model, tokenizer, "cpu", 24
            )
            assert label == classify_review(text, model, tokenizer, "cpu", max_length=24)
            tab.locator("#text textarea").fill(text)
            tab.locator("#classify").click()
            expect(tab.locator("#message")).to_contain_text(f"{label} (")
            verdict = tab.locator("#verdict")
            expect(verdict.get_by_test_id("label-output-value")).to_have_text(label)
            for name, p in probabilities.items():
                percent = f"{name} {math.floor(p * 100 + 0.5)}%"  # rounded as the page does
                expect(verdict.get_by_role("button", name=percent, exact=True)).to_be_visible()


def test_ch06_app_without_a_classifier_shows_a_banner_and_the_stand_in(browser, tmp_path):
    from playwright.sync_api import expect

    missing = tmp_path / "review_classifier.pth"
    with opened(CH06.build_app(missing, device="cpu"), browser, "ch06-app-no-checkpoint") as tab:
        banner = tab.locator("#banner")
        expect(banner).to_contain_text("No checkpoint at")
        expect(banner).to_contain_text("python ch06/train_classifier.py train")
        expect(tab.locator("#model-note")).to_contain_text(
            "untrained classifier on the course's stand-in"
        )


def test_ch07_app_chats_with_the_models_answer_and_says_what_it_remembers(
    browser, tmp_path, tokenizer
):
    from playwright.sync_api import expect

    checkpoint = tmp_path / "tiny-sft.pth"
    save_checkpoint(checkpoint, tiny_model(4, GPTModel), config=CONFIG, style="alpaca")
    instruction = "Rewrite the sentence in passive voice: The cat ate the fish."
    answer = generate_response(
        tiny_model(4, GPTModel), tokenizer, {"instruction": instruction}, "cpu", max_new_tokens=24
    )
    with opened(CH07.build_app(checkpoint, device="cpu"), browser, "ch07-app") as tab:
        note = tab.locator("#model-note")
        expect(note).to_contain_text(
            "from tiny-sft.pth (instruction-finetuned); prompt style: alpaca"
        )
        expect(note).to_contain_text("It has no memory beyond its context")
        tab.locator("#send").click()
        expect(tab.locator("#message")).to_have_text("Type a message first: it is empty.")

        tab.get_by_text("Answer settings").click()
        set_number(tab, "max-new-tokens", 24)
        tab.locator("#chat-input textarea").fill(instruction)
        tab.locator("#chat-input textarea").press("Enter")
        expect(tab.locator("#message")).to_contain_text("tokens in")
        chat = tab.locator("#chat")
        expect(chat).to_contain_text(instruction)
        shown = " ".join(chat.inner_text().split())
        assert " ".join(answer.split()) in shown
