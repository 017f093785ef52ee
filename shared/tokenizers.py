"""Tokenizers of Chapter 2: from a regex tokenizer to byte-pair encoding."""

from __future__ import annotations

import functools

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from shared.data import fetch

END_OF_TEXT = "<|endoftext|>"


@functools.cache
def gpt2_tokenizer() -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding (50,257 tokens), built from files fetched through shared.data.

    Gives exactly the ids of ``tiktoken.get_encoding("gpt2")``, but works offline from the
    course's cache or mirror (see shared.data) instead of tiktoken's own download.
    """
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(fetch("gpt2-vocab-bpe")),
        encoder_json_file=str(fetch("gpt2-encoder-json")),
    )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={END_OF_TEXT: 50256},
        explicit_n_vocab=50257,
    )
