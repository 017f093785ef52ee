"""The regex tokenizers and gpt2_tokenizer() (shared.tokenizers), and the notebook's versions."""

import hashlib
import shutil
import urllib.error

import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry

import shared.data
from shared.data import REGISTRY, DataUnavailableError, fetch
from shared.tokenizers import (
    END_OF_TEXT,
    UNKNOWN,
    SimpleTokenizerV1,
    SimpleTokenizerV2,
    UnknownTokenError,
    build_vocab,
    gpt2_tokenizer,
    split_text,
)
from tests.notebook_code import notebook_definitions

SAMPLE = '"It\'s the last he painted, you know," Mrs. Gisburn said with pardonable pride.'


def test_split_text_keeps_punctuation_and_drops_whitespace():
    assert split_text("Hello, world. Is this-- a test?") == [
        "Hello",
        ",",
        "world",
        ".",
        "Is",
        "this",
        "--",
        "a",
        "test",
        "?",
    ]
    assert split_text("  \n\t ") == []


def test_verdict_counts(verdict):
    assert len(verdict) == 20_479
    assert len(split_text(verdict)) == 4_690
    assert len(build_vocab(verdict)) == 1_130
    vocab = build_vocab(verdict, [END_OF_TEXT, UNKNOWN])
    assert len(vocab) == 1_132
    assert (vocab[END_OF_TEXT], vocab[UNKNOWN]) == (1_130, 1_131)


def test_build_vocab_sorts_and_numbers_tokens():
    assert build_vocab("b a, a c") == {",": 0, "a": 1, "b": 2, "c": 3}
    assert build_vocab("b a", [UNKNOWN, "a"]) == {"a": 0, "b": 1, UNKNOWN: 2}


def test_v1_round_trip(verdict):
    tokenizer = SimpleTokenizerV1(build_vocab(verdict))
    ids = tokenizer.encode(SAMPLE)
    assert ids[:6] == [1, 56, 2, 850, 988, 602]
    assert tokenizer.decode(ids) == (
        '" It\' s the last he painted, you know," Mrs. Gisburn said with pardonable pride.'
    )
    assert tokenizer.decode(tokenizer.encode(tokenizer.decode(ids))) == tokenizer.decode(ids)


def test_v1_names_unknown_word(verdict):
    tokenizer = SimpleTokenizerV1(build_vocab(verdict))
    with pytest.raises(UnknownTokenError, match="'Hello' is not in the vocabulary"):
        tokenizer.encode("Hello, do you like tea?")
    assert issubclass(UnknownTokenError, KeyError)


def test_v2_maps_unknown_words_to_unk(verdict):
    vocab = build_vocab(verdict, [END_OF_TEXT, UNKNOWN])
    tokenizer = SimpleTokenizerV2(vocab)
    text = f"Hello, do you like tea? {END_OF_TEXT} In the sunlit terraces of the palace."
    ids = tokenizer.encode(text)
    assert ids[0] == vocab[UNKNOWN] and ids.count(vocab[UNKNOWN]) == 2
    assert vocab[END_OF_TEXT] in ids
    assert tokenizer.decode(ids) == (
        f"{UNKNOWN}, do you like tea? {END_OF_TEXT} In the sunlit terraces of the {UNKNOWN}."
    )


def test_v2_needs_unk_token(verdict):
    with pytest.raises(ValueError, match=r"no <\|unk\|> token"):
        SimpleTokenizerV2(build_vocab(verdict))


@pytest.fixture
def tiktoken_cache_with_mirror_files(tmp_path, monkeypatch):
    """tiktoken's own cache, filled from the course's files: no network needed or allowed."""
    for key in ("gpt2-vocab-bpe", "gpt2-encoder-json"):
        name = hashlib.sha1(REGISTRY[key].url.encode()).hexdigest()
        shutil.copy(fetch(key), tmp_path / name)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})

    read_local_file = tiktoken.load.read_file

    def no_network(blobpath):
        if "://" in blobpath:
            raise AssertionError(f"tiktoken tried to download {blobpath}")
        return read_local_file(blobpath)

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)


def test_gpt2_tokenizer_equals_tiktoken_gpt2(tiktoken_cache_with_mirror_files, verdict):
    reference = tiktoken.get_encoding("gpt2")
    ours = gpt2_tokenizer()
    assert ours.n_vocab == reference.n_vocab == 50_257
    assert ours.eot_token == reference.eot_token == 50_256
    assert all(
        ours.decode_single_token_bytes(i) == reference.decode_single_token_bytes(i)
        for i in range(50_256)
    )
    text = f"{verdict}{END_OF_TEXT}Hello, 世界! 🤗  tabs\tand\n\nnewlines"
    ids = ours.encode(text, allowed_special={END_OF_TEXT})
    assert len(ours.encode(verdict)) == 5_145
    assert ids == reference.encode(text, allowed_special={END_OF_TEXT})


def test_gpt2_tokenizer_offline_without_files_says_so(tmp_path, monkeypatch):
    (tmp_path / "mirror").mkdir()
    monkeypatch.setenv("LLM_COURSE_MIRROR", str(tmp_path / "mirror"))
    monkeypatch.setenv("LLM_COURSE_CACHE", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network (simulated)")

    monkeypatch.setattr(shared.data.urllib.request, "urlopen", offline)
    gpt2_tokenizer.cache_clear()  # an encoding built by an earlier test would hide the error
    try:
        with pytest.raises(DataUnavailableError, match="gpt2/encoder.json") as err:
            gpt2_tokenizer()
        assert "LLM_COURSE_MIRROR" in str(err.value) and "LLM_COURSE_CACHE" in str(err.value)
    finally:
        gpt2_tokenizer.cache_clear()


@pytest.fixture(scope="module")
def notebook():
    return notebook_definitions("ch02/ch02.ipynb")


def test_notebook_tokenizers_match_shared(notebook, verdict):
    vocab = build_vocab(verdict, [END_OF_TEXT, UNKNOWN])
    assert notebook["build_vocab"](verdict, [END_OF_TEXT, UNKNOWN]) == vocab
    assert notebook["split_text"](verdict) == split_text(verdict)
    text = f"{SAMPLE} {END_OF_TEXT} Hello -- (a test); x: _y_ !?"
    for name, shared_class in [
        ("SimpleTokenizerV1", SimpleTokenizerV1),
        ("SimpleTokenizerV2", SimpleTokenizerV2),
    ]:
        ours, theirs = notebook[name](vocab), shared_class(vocab)
        known = SAMPLE + " " + END_OF_TEXT
        assert ours.encode(known) == theirs.encode(known)
        assert ours.decode(theirs.encode(known)) == theirs.decode(theirs.encode(known))
    v2_notebook, v2_shared = notebook["SimpleTokenizerV2"](vocab), SimpleTokenizerV2(vocab)
    assert v2_notebook.encode(text) == v2_shared.encode(text)
    assert v2_notebook.decode(v2_shared.encode(text)) == v2_shared.decode(v2_shared.encode(text))
    with pytest.raises(KeyError, match="Hello"):
        notebook["SimpleTokenizerV1"](vocab).encode(text)
