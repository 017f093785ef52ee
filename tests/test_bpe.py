"""Byte-pair encoding from scratch (shared.tokenizers.BPETokenizer), checked against tiktoken."""

import re

import pytest
import tiktoken

from shared.data import fetch
from shared.tokenizers import (
    END_OF_TEXT,
    GPT2_PRETOKENIZER,
    BPETokenizer,
    bytes_to_unicode,
    gpt2_tokenizer,
    merge_pair,
)
from tests.notebook_code import notebook_definitions

# Text that exercises every branch of GPT-2's pre-tokenizer and multi-byte UTF-8.
TRICKY_TEXTS = [
    "",
    "Hello, world!",
    "I'm sure they'll say it's what we've done; YOU'RE right, I'D think.",
    "Numbers: 3.14159, 1,000,000 and 2024-06-01; 12345678901234567890",
    "Unicode: naïve café, Straße, Ελληνικά, русский, 日本語のテキスト, 한국어, עברית, العربية",
    "Emoji: 🤗🦙👩‍👩‍👧‍👦 ✨ 🇫🇷 (flags and joiners)",
    "Runs   of    spaces,\ttabs\t\tand\n\n\nnewlines \n\n  indented\r\n  lines   ",
    "   leading and trailing whitespace   ",
    "someunknownPlace Akwirw ier",
    f"first text{END_OF_TEXT}second text {END_OF_TEXT} third",
    "def f(x):\n    return x ** 2  # code, with <symbols> & {braces} [brackets]\n",
    "\u00a0non-breaking\u00a0space, zero\u200bwidth, ideographic\u3000space",
]


@pytest.fixture(scope="module")
def gpt2_bpe() -> BPETokenizer:
    return BPETokenizer.from_gpt2_files(fetch("gpt2-vocab-bpe"), fetch("gpt2-encoder-json"))


def test_bytes_to_unicode_is_gpt2s_printable_map():
    mapping = bytes_to_unicode()
    assert sorted(mapping) == list(range(256))
    assert len(set(mapping.values())) == 256
    assert all(char.isprintable() and not char.isspace() for char in mapping.values())
    assert (mapping[ord("a")], mapping[ord(" ")], mapping[ord("\n")]) == ("a", "Ġ", "Ċ")


def test_merge_pair_replaces_every_occurrence_left_to_right():
    assert merge_pair([1, 2, 1, 2, 3], (1, 2), 9) == [9, 9, 3]
    assert merge_pair([1, 1, 1], (1, 1), 9) == [9, 1]
    assert merge_pair([1], (1, 2), 9) == [1]


def test_train_learns_most_frequent_pairs_first():
    # pieces: "hug", " hug" x2, " pug", " pun", " bun". (u, g) occurs 4 times, then (h, ug)
    # 3 times, then three pairs tie at 2: (" ", "hug") sorts first.
    tokenizer = BPETokenizer.train("hug hug hug pug pun bun", vocab_size=259, special_tokens=())
    u, g, h, space = (ord(c) for c in "ugh ")
    assert tokenizer.merges == {(u, g): 256, (h, 256): 257, (space, 257): 258}
    assert tokenizer.vocab[258] == b" hug"
    assert tokenizer.encode("hug hug bug") == [257, 258, space, ord("b"), 256]


def test_train_stops_when_no_pair_is_left():
    tokenizer = BPETokenizer.train("ab ab", vocab_size=1_000)
    assert tokenizer.n_vocab == 256 + 2 + 1  # "ab", " ab", and <|endoftext|>
    assert tokenizer.special_tokens == {END_OF_TEXT: 258}


def test_train_rejects_too_small_vocab():
    with pytest.raises(ValueError, match="vocab_size=200 is too small"):
        BPETokenizer.train("some text", vocab_size=200)


def test_trained_on_verdict(verdict):
    tokenizer = BPETokenizer.train(verdict, vocab_size=1_000)
    assert tokenizer.n_vocab == 1_000
    assert tokenizer.special_tokens == {END_OF_TEXT: 999}
    assert list(tokenizer.merges.values()) == list(range(256, 999))
    # Merges never cross GPT-2's pre-tokenizer boundaries: no token has a space after a letter.
    assert not any(re.search(rb"\S ", token) for token in tokenizer.vocab.values())
    ids = tokenizer.encode(verdict)
    assert len(ids) < len(verdict.encode("utf-8")) / 2
    assert tokenizer.decode(ids) == verdict
    for text in TRICKY_TEXTS:
        assert tokenizer.decode(tokenizer.encode(text, allowed_special="all")) == text


def test_trained_encode_equals_tiktoken_with_the_same_merges(verdict):
    """tiktoken, given our learned tokens as its ranks, must cut text exactly as we do."""
    ours = BPETokenizer.train(verdict, vocab_size=600)
    reference = tiktoken.Encoding(
        name="trained-on-verdict",
        pat_str=GPT2_PRETOKENIZER.pattern,
        mergeable_ranks={token: i for i, token in ours.vocab.items() if i < 599},
        special_tokens=ours.special_tokens,
    )
    for text in [verdict, *TRICKY_TEXTS]:
        assert ours.encode(text, allowed_special="all") == reference.encode(
            text, allowed_special="all"
        )


def test_special_tokens_in_training_text_are_never_merged():
    text = f"one fish{END_OF_TEXT}two fish{END_OF_TEXT}" * 20
    tokenizer = BPETokenizer.train(text, vocab_size=300)
    assert not any(b"|" in tokenizer.vocab[i] for i in tokenizer.merges.values())
    ids = tokenizer.encode(text, allowed_special={END_OF_TEXT})
    assert ids.count(tokenizer.special_tokens[END_OF_TEXT]) == 40
    assert tokenizer.decode(ids) == text


def test_gpt2_files_give_gpt2s_vocabulary(gpt2_bpe):
    assert gpt2_bpe.n_vocab == 50_257
    assert len(gpt2_bpe.merges) == 50_000
    assert gpt2_bpe.special_tokens == {END_OF_TEXT: 50_256}
    reference = gpt2_tokenizer()
    assert all(gpt2_bpe.vocab[i] == reference.decode_single_token_bytes(i) for i in range(50_257))


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_gpt2_encode_equals_tiktoken(gpt2_bpe, text):
    ids = gpt2_bpe.encode(text, allowed_special={END_OF_TEXT})
    assert ids == gpt2_tokenizer().encode(text, allowed_special={END_OF_TEXT})
    assert gpt2_bpe.decode(ids) == text


def test_gpt2_encode_equals_tiktoken_on_verdict(gpt2_bpe, verdict):
    ids = gpt2_bpe.encode(verdict)
    assert len(ids) == 5_145
    assert ids == gpt2_tokenizer().encode(verdict)
    assert gpt2_bpe.decode(ids) == verdict


def test_unknown_words_split_into_known_pieces(gpt2_bpe):
    ids = gpt2_bpe.encode("Akwirw ier")
    assert ids == [33901, 86, 343, 86, 220, 959]
    assert [gpt2_bpe.decode([i]) for i in ids] == ["Ak", "w", "ir", "w", " ", "ier"]


def test_special_tokens_need_permission_as_in_tiktoken(gpt2_bpe):
    text = f"a{END_OF_TEXT}b"
    with pytest.raises(ValueError, match="special token"):
        gpt2_tokenizer().encode(text)
    with pytest.raises(ValueError, match=r"allowed_special=\{'<\|endoftext\|>'\}"):
        gpt2_bpe.encode(text)
    assert gpt2_bpe.encode(text, allowed_special="all") == [64, 50256, 65]
    with pytest.raises(ValueError, match="does not have"):
        gpt2_bpe.encode(text, allowed_special={"<|im_start|>"})


def test_decode_bad_ids_and_partial_characters(gpt2_bpe):
    with pytest.raises(ValueError, match="token id 50257 is not in the vocabulary"):
        gpt2_bpe.decode([50_257])
    partial = gpt2_bpe.encode("🤗")[:1]  # the first bytes of a 4-byte character
    assert gpt2_bpe.decode(partial) == gpt2_tokenizer().decode(partial)


@pytest.fixture(scope="module")
def notebook():
    return notebook_definitions("ch02/bpe-from-scratch.ipynb")


def test_notebook_bpe_matches_shared(notebook, verdict):
    ours = notebook["BPETokenizer"].train(verdict, vocab_size=1_000)
    theirs = BPETokenizer.train(verdict, vocab_size=1_000)
    assert ours.merges == theirs.merges and ours.vocab == theirs.vocab
    gpt2_files = fetch("gpt2-vocab-bpe"), fetch("gpt2-encoder-json")
    ours = notebook["BPETokenizer"].from_gpt2_files(*gpt2_files)
    theirs = BPETokenizer.from_gpt2_files(*gpt2_files)
    for text in [verdict, *TRICKY_TEXTS]:
        ids = theirs.encode(text, allowed_special="all")
        assert ours.encode(text, allowed_special="all") == ids
        assert ours.decode(ids) == text


def test_save_and_load_round_trip(tmp_path, verdict, gpt2_bpe):
    trained = BPETokenizer.train(verdict, vocab_size=400)
    for tokenizer in (trained, gpt2_bpe):
        path = tmp_path / "tokenizer.json"
        tokenizer.save(path)
        loaded = BPETokenizer.load(path)
        assert loaded.vocab == tokenizer.vocab
        assert list(loaded.merges.items()) == list(tokenizer.merges.items())  # rank order kept
        assert loaded.special_tokens == tokenizer.special_tokens
        text = TRICKY_TEXTS[4] + TRICKY_TEXTS[5]
        assert loaded.encode(text) == tokenizer.encode(text)
    assert not list(tmp_path.glob("*.tmp"))


def test_load_names_a_file_that_is_not_a_saved_tokenizer(tmp_path):
    bad = tmp_path / "bad.json"
    for content in (
        "not json",
        '{"format": "something else"}',
        '{"format": "llm-from-scratch-bpe/1"}',
    ):
        bad.write_text(content, encoding="utf-8")
        with pytest.raises(
            ValueError, match=r"bad\.json: not a tokenizer written by BPETokenizer.save"
        ):
            BPETokenizer.load(bad)


def test_pretokenizer_pattern_is_tiktokens_gpt2_pattern():
    """GPT2_PATTERN is written out in shared.tokenizers; tiktoken's (private) copy must agree."""
    openai_public = pytest.importorskip("tiktoken_ext.openai_public")
    from shared.tokenizers import GPT2_PATTERN

    assert GPT2_PATTERN == openai_public.r50k_pat_str


def test_shared_tokenizers_uses_only_public_tiktoken_api():
    import ast
    import inspect

    import shared.tokenizers

    tree = ast.parse(inspect.getsource(shared.tokenizers))
    imported = {
        alias.name if isinstance(node, ast.Import) else node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not {
        name for name in imported if name and name.startswith(("tiktoken.", "tiktoken_ext"))
    }


def test_notebook_save_and_load_write_the_same_file_as_shared(notebook, tmp_path, verdict):
    tokenizer = BPETokenizer.train(verdict, vocab_size=300)
    notebook["save_tokenizer"](tokenizer, tmp_path / "notebook.json")
    tokenizer.save(tmp_path / "shared.json")
    assert (tmp_path / "notebook.json").read_text() == (tmp_path / "shared.json").read_text()
    loaded = notebook["load_tokenizer"](tmp_path / "shared.json")
    assert loaded.vocab == tokenizer.vocab and loaded.merges == tokenizer.merges
