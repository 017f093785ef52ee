"""What the tests share: one tiny GPT config, its builder and text, and the fixtures and helpers
of more than one test module (no test module imports from another).

pytest finds the fixtures here itself. The plain names (TINY, TEXT, tiny_model, leftovers,
FakeOllama, REFERENCE_CONFIG, hf_logits) are imported from tests.conftest, the module pytest
loads (tests is a package). A test that needs other sizes derives them from TINY where it uses
them, as {**TINY, "context_length": 64}. The repository's conftest.py, one folder up, makes the
suite hermetic.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from shared import data
from shared.data import fetch
from shared.gpt import GPTModel
from shared.instruction import ollama_url
from shared.tokenizers import gpt2_tokenizer

# --- the tiny model ------------------------------------------------------------------------------

# GPT-2's vocabulary and no query/key/value bias (as GPT_CONFIG_124M), no dropout, tiny sizes.
TINY = {
    "vocab_size": 50257,
    "context_length": 16,
    "emb_dim": 32,
    "n_heads": 2,
    "n_layers": 2,
    "drop_rate": 0.0,
    "qkv_bias": False,
}

TEXT = (
    "I had always thought Jack Gisburn rather a cheap genius--though a good fellow enough--so "
    "it was no great surprise to me to hear that, in the height of his glory, he had dropped "
    "his painting, married a rich widow, and established himself in a villa on the Riviera. "
) * 2


def tiny_model(seed: int = 123, **overrides) -> GPTModel:
    """A GPTModel of TINY (with overrides), its weights drawn after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    return GPTModel({**TINY, **overrides})


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread than on several competing for a busy CPU.

    Modules of tiny-model tests ask for it with pytestmark = pytest.mark.usefixtures("one_thread").
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return gpt2_tokenizer()


@pytest.fixture(scope="module")
def verdict() -> str:
    return fetch("the-verdict").read_text(encoding="utf-8")


# --- local HTTP servers and empty data directories ----------------------------------------------


class Server:
    """Routes of a local HTTP server and how many requests each received.

    ``routes[path] = (body, announced_length)``: the server announces ``announced_length`` bytes
    (``None``: the body's true length) and sends ``body``, then closes the connection.
    ``raw[path]``: bytes sent as they are, in place of an HTTP response.
    ``redirects[path]``: an address answered with 302 Found (as the Hugging Face hub answers).
    ``errors[path]``: an HTTP error status answered instead of the file (403, 429, ...).
    """

    def __init__(self) -> None:
        self.routes: dict[str, tuple[bytes, int | None]] = {}
        self.raw: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.errors: dict[str, int] = {}
        self.hits: dict[str, int] = {}
        self.base = ""

    def serve(self, path: str, body: bytes, announced_length: int | None = None) -> str:
        self.routes[path] = (body, announced_length)
        return self.base + path


def make_handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
            server.hits[self.path] = server.hits.get(self.path, 0) + 1
            if self.path in server.raw:
                self.wfile.write(server.raw[self.path])
                self.close_connection = True
                return
            if self.path in server.errors:
                self.send_error(server.errors[self.path])
                return
            if self.path in server.redirects:
                self.send_response(302)
                self.send_header("Location", server.redirects[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.path not in server.routes:
                self.send_error(404)
                return
            body, announced = server.routes[self.path]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body) if announced is None else announced))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def log_message(self, format, *args) -> None:  # quiet test output
            pass

    return Handler


@pytest.fixture
def server():
    state = Server()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    httpd.timeout = 5
    httpd.daemon_threads = True
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """An empty cache and an empty mirror, set through the two environment variables."""
    cache, mirror = tmp_path / "cache", tmp_path / "mirror"
    mirror.mkdir()
    monkeypatch.setenv(data.CACHE_ENV, str(cache))
    monkeypatch.setenv(data.MIRROR_ENV, str(mirror))
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    return cache, mirror


def leftovers(directory: Path) -> list[str]:
    """Every file and temporary ``.part`` folder below ``directory``, relative to it."""
    if not directory.exists():
        return []
    return sorted(
        str(p.relative_to(directory))
        for p in directory.rglob("*")
        if p.is_file() or p.name.endswith(".part")
    )


class FakeOllama:
    """A local HTTP server speaking Ollama's streaming /api/chat protocol.

    reply(prompt) gives the assistant's answer, sent in chunks of a few characters as
    newline-delimited JSON, then a final chunk with "done": true. Requests are recorded.
    Only the models in ``models`` exist; others get HTTP 404 with an error, as Ollama does.
    """

    def __init__(self, reply, models=("llama3",)):
        self.reply = reply
        self.models = set(models)
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = b"Ollama is running"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                length = int(self.headers["Content-Length"])
                request = json.loads(self.rfile.read(length))
                fake.requests.append(request)
                if self.path != "/api/chat" or request["model"] not in fake.models:
                    body = json.dumps({"error": f"model '{request['model']}' not found"}).encode()
                    self.send_response(404)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                text = fake.reply(request["messages"][-1]["content"])
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.end_headers()
                for start in range(0, len(text), 3):
                    chunk = {
                        "model": request["model"],
                        "message": {"role": "assistant", "content": text[start : start + 3]},
                        "done": False,
                    }
                    self.wfile.write(json.dumps(chunk).encode() + b"\n")
                    self.wfile.flush()
                final = {"model": request["model"], "message": {"role": "assistant", "content": ""}}
                self.wfile.write(json.dumps({**final, "done": True}).encode() + b"\n")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = ollama_url("127.0.0.1", self.port)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


# --- a reference GPT-2 from transformers ---------------------------------------------------------

REFERENCE_CONFIG = {
    **TINY,
    "vocab_size": 1000,
    "context_length": 64,
    "emb_dim": 64,
    "n_heads": 4,
    "qkv_bias": True,
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A small random GPT2LMHeadModel of REFERENCE_CONFIG and its two safetensors files
    (transformers', official)."""
    transformers = pytest.importorskip("transformers")
    cfg = REFERENCE_CONFIG
    config = transformers.GPT2Config(
        vocab_size=cfg["vocab_size"],
        n_positions=cfg["context_length"],
        n_embd=cfg["emb_dim"],
        n_layer=cfg["n_layers"],
        n_head=cfg["n_heads"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=cfg["vocab_size"] - 1,
        eos_token_id=cfg["vocab_size"] - 1,
    )
    torch.manual_seed(0)
    hf_model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # random biases and norms too, so every tensor's placement is tested
        for param in hf_model.parameters():
            param.normal_(0.0, 0.2)
    folder = tmp_path_factory.mktemp("hf")
    hf_model.save_pretrained(folder, safe_serialization=True)
    hf_file = folder / "model.safetensors"
    official = {
        key.removeprefix("transformer."): tensor.contiguous()
        for key, tensor in load_file(hf_file).items()
        if key != "lm_head.weight"
    }
    # Older official files also hold the causal-mask buffers; they must be ignored.
    n = cfg["context_length"]
    official["h.0.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
    official["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    official_file = folder / "official.safetensors"
    save_file(official, official_file)
    return hf_model, hf_file, official_file


def hf_logits(hf_model, ids):
    with torch.no_grad():
        return hf_model(ids).logits
