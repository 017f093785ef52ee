"""Tokenizers of Chapter 2: from a regex tokenizer to byte-pair encoding.

- ``build_vocab``, ``SimpleTokenizerV1``, ``SimpleTokenizerV2``: split text into words and
  punctuation with a regular expression and number the distinct pieces.
- ``BPETokenizer``: byte-pair encoding written from scratch; it trains on a text or loads
  OpenAI's GPT-2 files, and then encodes exactly as tiktoken's ``gpt2`` encoding does.
- ``gpt2_tokenizer()``: tiktoken's GPT-2 encoding itself, working offline through shared.data.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Sequence
from os import PathLike
from pathlib import Path
from typing import Literal

import regex
import tiktoken

from shared.data import fetch, written_atomically

END_OF_TEXT = "<|endoftext|>"
UNKNOWN = "<|unk|>"

# The simple tokenizers split on punctuation, double dashes and whitespace, keeping the
# punctuation and dashes as tokens of their own (the capturing group keeps the separators).
SPLIT_PATTERN = re.compile(r'([,.:;?_!"()\']|--|\s)')
# Decoding joins tokens with spaces; this removes the space in front of punctuation again.
SPACE_BEFORE_PUNCTUATION = re.compile(r'\s+([,.:;?_!"()\'])')


# ---------------------------------------------------------------------------------------------
# Simple regex tokenizers
# ---------------------------------------------------------------------------------------------


def split_text(text: str) -> list[str]:
    """Split text into words and punctuation marks, dropping whitespace.

    "Hello, world." -> ["Hello", ",", "world", "."]
    """
    return [piece.strip() for piece in SPLIT_PATTERN.split(text) if piece.strip()]


def build_vocab(text: str, special_tokens: Sequence[str] = ()) -> dict[str, int]:
    """Map every distinct token of ``split_text(text)``, sorted, to 0, 1, 2, ...

    ``special_tokens`` (e.g. ``[END_OF_TEXT, UNKNOWN]``) get the ids after the words, in the
    order given. Returns {token: id}.
    """
    tokens = sorted(set(split_text(text)))
    tokens += [token for token in special_tokens if token not in tokens]
    return {token: token_id for token_id, token in enumerate(tokens)}


class UnknownTokenError(KeyError):
    """A token that is not in a SimpleTokenizerV1's vocabulary."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0])


class SimpleTokenizerV1:
    """Word-level tokenizer over a fixed vocabulary {token: id}, e.g. from ``build_vocab``.

    ``encode`` raises UnknownTokenError, naming the token, for any word outside the
    vocabulary; SimpleTokenizerV2 maps such words to ``<|unk|>`` instead.
    """

    def __init__(self, vocab: dict[str, int]):
        self.str_to_int = vocab
        self.int_to_str = {token_id: token for token, token_id in vocab.items()}

    def encode(self, text: str) -> list[int]:
        """Token ids of ``split_text(text)``."""
        ids = []
        for token in split_text(text):
            if token not in self.str_to_int:
                raise UnknownTokenError(
                    f"{token!r} is not in the vocabulary ({len(self.str_to_int):,} tokens); "
                    f"add it to the text the vocabulary is built from, or use SimpleTokenizerV2, "
                    f"which encodes unknown words as {UNKNOWN}"
                )
            ids.append(self.str_to_int[token])
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the tokens ``ids``, joined by spaces, with no space before punctuation."""
        text = " ".join(self.int_to_str[token_id] for token_id in ids)
        return SPACE_BEFORE_PUNCTUATION.sub(r"\1", text)


class SimpleTokenizerV2(SimpleTokenizerV1):
    """SimpleTokenizerV1 that encodes words outside the vocabulary as ``<|unk|>``.

    The vocabulary must contain ``<|unk|>`` (``build_vocab(text, [END_OF_TEXT, UNKNOWN])``);
    ``<|endoftext|>``, when present, separates independent texts.
    """

    def __init__(self, vocab: dict[str, int]):
        if UNKNOWN not in vocab:
            raise ValueError(
                f"the vocabulary has no {UNKNOWN} token; build it with "
                f"build_vocab(text, [END_OF_TEXT, UNKNOWN])"
            )
        super().__init__(vocab)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``split_text(text)``, with ``<|unk|>``'s id for unknown words."""
        unknown_id = self.str_to_int[UNKNOWN]
        return [self.str_to_int.get(token, unknown_id) for token in split_text(text)]


# ---------------------------------------------------------------------------------------------
# Byte-pair encoding from scratch
# ---------------------------------------------------------------------------------------------

# GPT-2's pre-tokenizer: contractions, runs of letters, of digits, of other symbols (each with
# at most one leading space), and whitespace. BPE merges never cross the pieces it cuts.
# (The pattern of GPT-2's encoder.py, in the form tiktoken writes it: same pieces, possessive
# quantifiers for speed. Written out here so that no private tiktoken module is needed.)
GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
GPT2_PRETOKENIZER = regex.compile(GPT2_PATTERN)

BPE_FILE_FORMAT = "llm-from-scratch-bpe/1"  # the "format" field of BPETokenizer.save's JSON


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte value 0..255 to a printable character, as its files use.

    Printable Latin-1 bytes stand for themselves; the other 68 (controls, space, ...) map, in
    byte order, to chr(256), chr(257), ...: a space is written "Ġ" and a newline "Ċ".
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    mapping = {byte: chr(byte) for byte in printable}
    others = (byte for byte in range(256) if byte not in mapping)
    mapping.update({byte: chr(256 + n) for n, byte in enumerate(others)})
    return mapping


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids``, left to right, by ``new_id``."""
    merged = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


def most_frequent_pair(
    pair_counts: dict[tuple[int, int], int], vocab: dict[int, bytes]
) -> tuple[int, int]:
    """The pair with the highest count; ties go to the pair whose bytes (vocab) sort first."""
    top = max(pair_counts.values())
    return min(
        (pair for pair, count in pair_counts.items() if count == top),
        key=lambda pair: (vocab[pair[0]], vocab[pair[1]]),
    )


def split_special(text: str, special_tokens: Collection[str]) -> list[str]:
    """Cut text around occurrences of ``special_tokens``, keeping them as pieces of their own."""
    if not special_tokens:
        return [text]
    longest_first = sorted(special_tokens, key=len, reverse=True)
    pattern = "(" + "|".join(re.escape(token) for token in longest_first) + ")"
    return [piece for piece in re.split(pattern, text) if piece]


class BPETokenizer:
    """Byte-level byte-pair encoding, as GPT-2 uses it, written from scratch.

    Every text is first cut into pieces by GPT-2's pre-tokenizer; each piece, as UTF-8 bytes,
    starts as a list of byte tokens, and learned merges join adjacent tokens, lowest rank
    first. Any text can be encoded (there is no unknown word), and decode inverts encode.

    vocab: {token id: the bytes it stands for}, including the special tokens.
    merges: {(left id, right id): merged id}, in rank order (the first is applied first).
    special_tokens: {text such as "<|endoftext|>": id}.

    Make one with ``BPETokenizer.train(text, vocab_size)`` or
    ``BPETokenizer.from_gpt2_files(vocab_bpe, encoder_json)``.
    """

    def __init__(
        self,
        vocab: dict[int, bytes],
        merges: dict[tuple[int, int], int],
        special_tokens: dict[str, int],
    ):
        self.vocab = vocab
        self.merges = merges
        self.special_tokens = special_tokens
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        ids_of_bytes = {token: token_id for token_id, token in vocab.items()}
        missing = [byte for byte in range(256) if bytes([byte]) not in ids_of_bytes]
        if missing:
            raise ValueError(f"the vocabulary lacks tokens for the bytes {missing[:10]}...")
        self.byte_ids = [ids_of_bytes[bytes([byte])] for byte in range(256)]
        self._cache: dict[str, list[int]] = {}

    @property
    def n_vocab(self) -> int:
        """The number of tokens, special tokens included (ids run from 0 to n_vocab - 1)."""
        return len(self.vocab)

    @classmethod
    def train(
        cls, text: str, vocab_size: int, special_tokens: Sequence[str] = (END_OF_TEXT,)
    ) -> BPETokenizer:
        """Learn merges on ``text`` until the vocabulary has ``vocab_size`` tokens.

        The vocabulary holds the 256 bytes (ids 0..255), then one token per merge (ids 256..),
        then ``special_tokens``. Each step merges the most frequent adjacent pair (ties: the
        pair whose bytes sort first) and stops early if no pair is left. Pairs are counted
        over the distinct pre-tokenized pieces weighted by their frequency, and after a merge
        only the pieces that contain the merged pair are recounted.
        """
        if vocab_size < 256 + len(special_tokens):
            raise ValueError(
                f"vocab_size={vocab_size} is too small: it must hold the 256 byte tokens and "
                f"the {len(special_tokens)} special tokens"
            )
        piece_counts: Counter[str] = Counter()
        for part in split_special(text, special_tokens):
            if part not in special_tokens:
                piece_counts.update(GPT2_PRETOKENIZER.findall(part))
        words = [list(piece.encode("utf-8")) for piece in piece_counts]
        freqs = list(piece_counts.values())

        pair_counts: Counter[tuple[int, int]] = Counter()
        words_with: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
        for index, (word, freq) in enumerate(zip(words, freqs)):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += freq
                words_with[pair].add(index)

        vocab = {byte: bytes([byte]) for byte in range(256)}
        merges: dict[tuple[int, int], int] = {}
        while len(vocab) + len(special_tokens) < vocab_size and pair_counts:
            best = most_frequent_pair(pair_counts, vocab)
            new_id = len(vocab)
            merges[best] = new_id
            vocab[new_id] = vocab[best[0]] + vocab[best[1]]
            for index in words_with.pop(best):  # only the words that contain the pair change
                word, freq = words[index], freqs[index]
                for pair in zip(word, word[1:]):
                    pair_counts[pair] -= freq
                    if pair_counts[pair] == 0:
                        del pair_counts[pair]
                word = words[index] = merge_pair(word, best, new_id)
                for pair in zip(word, word[1:]):
                    pair_counts[pair] += freq
                    words_with[pair].add(index)

        special = {token: len(vocab) + n for n, token in enumerate(special_tokens)}
        vocab.update({token_id: token.encode("utf-8") for token, token_id in special.items()})
        return cls(vocab, merges, special)

    @classmethod
    def from_gpt2_files(
        cls, vocab_bpe: str | PathLike, encoder_json: str | PathLike
    ) -> BPETokenizer:
        """GPT-2's tokenizer from OpenAI's ``vocab.bpe`` (merges) and ``encoder.json`` (ids).

        Both files write bytes with ``bytes_to_unicode``'s characters. Get them with
        ``shared.data.fetch("gpt2-vocab-bpe")`` and ``fetch("gpt2-encoder-json")``.
        """
        char_to_byte = {char: byte for byte, char in bytes_to_unicode().items()}

        def to_bytes(token: str) -> bytes:
            return bytes(char_to_byte[char] for char in token)

        encoder = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
        special = {token: token_id for token, token_id in encoder.items() if token == END_OF_TEXT}
        vocab = {token_id: to_bytes(token) for token, token_id in encoder.items()}
        vocab.update({token_id: token.encode("utf-8") for token, token_id in special.items()})
        ids = {token: token_id for token_id, token in vocab.items()}

        merges = {}
        lines = Path(vocab_bpe).read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if not line or line.startswith("#version"):
                continue
            try:
                left, right = (to_bytes(part) for part in line.split(" "))
                merges[(ids[left], ids[right])] = ids[left + right]
            except (ValueError, KeyError) as err:
                raise ValueError(
                    f"{vocab_bpe} line {number}: not a merge of known tokens: {line!r}"
                ) from err
        return cls(vocab, merges, special)

    def save(self, path: str | PathLike) -> None:
        """Write the tokenizer to a JSON file (vocabulary as hex bytes, merges in rank order,
        special tokens); written to a temporary file and renamed, so a crash leaves no half file."""
        data = {
            "format": BPE_FILE_FORMAT,
            "vocab": {str(token_id): token.hex() for token_id, token in self.vocab.items()},
            "merges": [[left, right, merged] for (left, right), merged in self.merges.items()],
            "special_tokens": self.special_tokens,
        }
        with written_atomically(path) as tmp:
            tmp.write_text(json.dumps(data), encoding="utf-8")

    @classmethod
    def load(cls, path: str | PathLike) -> BPETokenizer:
        """A tokenizer written by ``save``; raises ValueError naming the file if it is not one."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if data.get("format") != BPE_FILE_FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, not {BPE_FILE_FORMAT!r}")
            vocab = {
                int(token_id): bytes.fromhex(token) for token_id, token in data["vocab"].items()
            }
            merges = {(left, right): merged for left, right, merged in data["merges"]}
            special = {
                str(token): int(token_id) for token, token_id in data["special_tokens"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as err:
            raise ValueError(
                f"{path}: not a tokenizer written by BPETokenizer.save ({err})"
            ) from None
        return cls(vocab, merges, special)

    def _encode_piece(self, piece: str) -> list[int]:
        """Token ids of one pre-tokenized piece: apply the merges, lowest rank first."""
        if piece in self._cache:
            return self._cache[piece]
        ids = [self.byte_ids[byte] for byte in piece.encode("utf-8")]
        while len(ids) > 1:
            pair = min(zip(ids, ids[1:]), key=lambda p: self.ranks.get(p, len(self.ranks)))
            if pair not in self.merges:
                break
            ids = merge_pair(ids, pair, self.merges[pair])
        self._cache[piece] = ids
        return ids

    def encode(
        self, text: str, allowed_special: Collection[str] | Literal["all"] = frozenset()
    ) -> list[int]:
        """Token ids of ``text``, as tiktoken's ``encode`` gives them.

        Special tokens in ``allowed_special`` (or all of them, with "all") become their own
        id; any other special token found in the text raises ValueError, as in tiktoken.
        """
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise ValueError(
                f"allowed_special names {sorted(unknown)}, which this tokenizer does not have "
                f"(its special tokens: {sorted(self.special_tokens)})"
            )
        for token in self.special_tokens:
            if token not in allowed and token in text:
                raise ValueError(
                    f"the text contains the special token {token!r}; pass "
                    f"allowed_special={{{token!r}}} to encode it as one token"
                )
        ids = []
        for part in split_special(text, allowed):
            if part in allowed:
                ids.append(self.special_tokens[part])
            else:
                for piece in GPT2_PRETOKENIZER.findall(part):
                    ids.extend(self._encode_piece(piece))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the token ids; bytes that are not valid UTF-8 become "\\ufffd" (as tiktoken)."""
        try:
            data = b"".join(self.vocab[token_id] for token_id in ids)
        except KeyError as err:
            raise ValueError(
                f"token id {err.args[0]} is not in the vocabulary (0..{self.n_vocab - 1})"
            ) from None
        return data.decode("utf-8", errors="replace")


@functools.cache
def gpt2_tokenizer() -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding (50,257 tokens), built from files fetched through shared.data.

    Gives exactly the ids of ``tiktoken.get_encoding("gpt2")``, but works offline from the
    course's cache or mirror (see shared.data) instead of tiktoken's own download.
    """
    # encoder.json maps every token, written with bytes_to_unicode's characters, to its id;
    # for byte-pair tokens tiktoken's "mergeable ranks" are exactly these ids.
    char_to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
    encoder = json.loads(Path(fetch("gpt2-encoder-json")).read_text(encoding="utf-8"))
    ranks = {
        bytes(char_to_byte[char] for char in token): token_id
        for token, token_id in encoder.items()
        if token != END_OF_TEXT
    }
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={END_OF_TEXT: 50256},
        explicit_n_vocab=50257,
    )
