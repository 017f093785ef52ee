"""What the browser apps of Chapters 5, 6 and 7 share: loading, streaming, checking input, pages.

The apps themselves are ``ch05/app.py`` (text completion), ``ch06/app.py`` (spam classifier) and
``ch07/app.py`` (chat). Their pages are built with Gradio, an optional extra
(``pip install -e ".[apps]"``): this module imports it only when a page is built, so the rest of
the course never needs it.

Shapes: n = prompt tokens, m = new tokens.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from shared.cli import HelpFormatter, add_option, port_number
from shared.gpt import GPT2_MODEL_CONFIGS, GPTModel
from shared.gpt2_weights import STANDIN_CONFIG, PretrainedGPT
from shared.kv_cache import KVCacheGPTModel
from shared.pretraining import generate_tokens, load_model_checkpoint

# Longest text the apps accept, in characters: four times GPT-2's context of 1,024 tokens at
# about five characters per token. Longer input is refused with a message, not tokenised.
MAX_INPUT_CHARS = 20_000
DEFAULT_PORT = 7860  # Gradio's usual port
INSTALL_HINT = 'pip install -e ".[apps]"'


@dataclass
class AppModel:
    """The model an app serves, in eval mode, and what the page says about it.

    description: which model answers, in words; banner: Markdown warning shown on top of the page
    when the wanted checkpoint could not be used (None when all is well); extra: the checkpoint's
    extra entries (config, prompt style, ...).
    """

    model: GPTModel
    config: dict
    description: str
    banner: str | None = None
    extra: dict = field(default_factory=dict)


def describe_config(config: dict) -> str:
    """Name a GPTModel config: the course's stand-in, a GPT-2 size, or its layers and width.

    Both the stand-in and GPT-2 use query/key/value biases; the models ch05/train.py trains from
    scratch do not, so a GPT-2-sized one of those is not called GPT-2.
    """
    shape = ("emb_dim", "n_layers", "n_heads", "vocab_size", "qkv_bias")
    if all(config.get(key) == STANDIN_CONFIG[key] for key in shape):
        return "the course's stand-in (a 4-layer, 256-dimension GPT, not GPT-2)"
    for size, gpt2 in GPT2_MODEL_CONFIGS.items():
        if all(config.get(key) == gpt2[key] for key in shape):
            return f"GPT-2 {size}"
    return "a custom GPT ({})".format(
        ", ".join(f"{key}={config.get(key)}" for key in ("n_layers", "emb_dim", "n_heads"))
    )


def load_gpt_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> AppModel:
    """A KVCacheGPTModel (for generation) from a shared.pretraining.save_checkpoint file that
    stores its ``config``, such as those of ch05/train.py and ch07/finetune_instructions.py.

    Raises ValueError naming the file when it is missing, holds no config, or does not fit.
    """
    model, extra = load_model_checkpoint(path, KVCacheGPTModel)
    description = f"{describe_config(extra['config'])}, from `{Path(path).name}`"
    return AppModel(model.to(device).eval(), extra["config"], description, extra=extra)


def for_generation(pretrained: PretrainedGPT) -> AppModel:
    """The model of load_pretrained_gpt2 or standin_gpt as a KVCacheGPTModel (same weights)."""
    model = KVCacheGPTModel(pretrained.config)
    model.load_state_dict(pretrained.model.state_dict())
    return AppModel(model.eval(), pretrained.config, pretrained.description)


def shown_path(path: str | Path) -> str:
    """path as a page shows it: relative to the working directory when it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def load_or_fall_back(
    load: Callable[[], AppModel],
    fall_back: Callable[[], AppModel],
    missing: str,
    path: str | Path | None,
) -> AppModel:
    """load(), or, when there is no checkpoint or it cannot be read, fall_back() with a banner.

    missing: Markdown telling how to create the checkpoint; path: the checkpoint looked for, or
    the folder searched for one (None: no checkpoint was wanted, so fall_back() is the model
    meant and gets no banner).
    """
    if path is not None:
        shown = shown_path(path)
        if Path(path).is_dir():
            problem = f"No checkpoint in `{shown}`."
        elif not Path(path).is_file():
            problem = f"No checkpoint at `{shown}`."
        else:
            try:
                return load()
            except (ValueError, OSError, RuntimeError) as err:
                problem = f"Could not load `{shown}`: {err}"
    fallback = fall_back()
    if path is not None:
        fallback.banner = (
            f"**⚠️ {problem}** {missing} Until then this page uses {fallback.description}."
        )
    return fallback


def input_problem(value: object, what: str, max_chars: int = MAX_INPUT_CHARS) -> str | None:
    """Why ``value`` cannot be used as the text input called ``what``, or None when it can."""
    if not isinstance(value, str):
        return f"The {what} must be text, not {type(value).__name__}."
    if not value.strip():
        return f"Type a {what} first: it is empty."
    if len(value) > max_chars:
        return (
            f"The {what} has {len(value):,} characters; this app accepts at most {max_chars:,}. "
            "Shorten it."
        )
    return None


def stream_generate(
    model: KVCacheGPTModel,
    idx: torch.Tensor,
    max_new_tokens: int,
    context_size: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    seed: int | None = None,
) -> Iterator[list[int]]:
    """shared.pretraining.generate with the KV cache, one token at a time.

    idx: the prompt, (1, n). Yields the new token ids so far (a list of length 1, 2, ..., m);
    the last list holds exactly the tokens generate(..., use_cache=True) appends to idx.
    seed: sample with a generator of this request's own, seeded so (None: PyTorch's global
    random numbers); the same seed gives the tokens of torch.manual_seed(seed) and generate.
    Each stream has its own cache, so requests can stream at the same time; closing the
    iterator early (Gradio does when a request is cancelled) stops the generation.
    """
    if idx.dim() != 2 or idx.shape[0] != 1:
        raise ValueError(f"idx must be one prompt of shape (1, n), got {tuple(idx.shape)}")
    generator = None if seed is None else torch.Generator(idx.device).manual_seed(seed)
    settings = dict(temperature=temperature, top_k=top_k, eos_id=eos_id, generator=generator)
    steps = generate_tokens(model, idx, max_new_tokens, context_size, **settings, use_cache=True)
    new_ids: list[int] = []
    with contextlib.closing(steps):
        for token in steps:
            new_ids.append(int(token))
            yield list(new_ids)


def app_arguments(description: str, checkpoint_default: str) -> argparse.ArgumentParser:
    """The command-line options every app has: --checkpoint (checkpoint_default: its default in
    words), --host, --port, --share, --device."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_option(parser, "--checkpoint", default_text=checkpoint_default)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only); 0.0.0.0 lets other "
        "machines, or a cloud machine's port forwarding, connect",
    )
    parser.add_argument("--port", type=port_number, default=DEFAULT_PORT, help="port")
    parser.add_argument(
        "--share",
        action="store_true",
        help="also create a public gradio.live link (anyone with the link can use the app)",
    )
    add_option(parser, "--device")
    return parser


def import_gradio():
    """The gradio module, or an ImportError that says how to install it."""
    try:
        import gradio
    except ImportError:
        raise ImportError(f"the course's apps need Gradio: {INSTALL_HINT}") from None
    return gradio


def page_header(gr, title: str, intro: str, app_model: AppModel) -> None:
    """Inside a gr.Blocks: the title, an introduction, the banner (if any) and the model note."""
    gr.Markdown(f"# {title}\n{intro}")
    if app_model.banner:
        gr.Markdown(f"> {app_model.banner}", elem_id="banner")
    gr.Markdown(f"**Model:** {app_model.description}", elem_id="model-note")


def new_page(title: str):
    """An empty gr.Blocks page titled ``title``, without Gradio's usage statistics."""
    gr = import_gradio()
    return gr, gr.Blocks(title=title, analytics_enabled=False)


def launch(blocks, args: argparse.Namespace) -> None:
    """Serve a page built by an app's build_app on args.host:args.port until interrupted."""
    print(f"Open http://{args.host}:{args.port} in a browser (Ctrl+C stops the app).")
    blocks.launch(server_name=args.host, server_port=args.port, share=args.share, ssr_mode=False)
