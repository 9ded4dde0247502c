"""The pure-Python char segmenter against spaCy's ``blank("zh")`` one: same tokens, so same ids everywhere."""

from __future__ import annotations

import random

import pytest
import spacy

from quantflow.core.corpora import load_builtin
from quantflow.core.text import (
    PAD,
    UNK,
    Tokenizer,
    TokenizerConfig,
    char_tokens,
    clean_text,
    pad_batch,
)

EDGE_CASES = [
    "",
    "   ",
    "我爱 北京",
    "ＡＢＣ１２３，全角！　全角空格",
    "Hello, World! 123.45 e-mail: a_b@c.de (x) [y] {z}",
    "tabs\tand\nnew\r\nlines\u3000ideographic\u00a0nbsp\u2009thin\u200bzero-width",
    "emoji 😀👍🏽 flags 🇨🇳 combining é ñ ｶﾀｶﾅ ㈱ ①②",
    "<b>html</b> https://example.com/a?b=1 www.x.cn after",
    "a  b   c\x1c\x1d\x1e\x1f\x85end",
]


def spacy_tokens(nlp: spacy.language.Language, text: str, lowercase: bool) -> list[str]:
    return [t.text for t in nlp.make_doc(clean_text(text, lowercase)) if not t.is_space]


@pytest.fixture(scope="module")
def corpus_sample() -> list[str]:
    """A few thousand real texts of both built-in corpora (news sentences and reviews), seeded."""
    rng = random.Random(3)
    texts = load_builtin("news_vs_comment")["text"].tolist()
    return rng.sample(texts, 4000) + EDGE_CASES


@pytest.mark.parametrize("lowercase", [True, False])
def test_char_tokens_equal_spacy_char_segmenter(corpus_sample: list[str], lowercase: bool) -> None:
    nlp = spacy.blank("zh", config={"nlp": {"tokenizer": {"segmenter": "char"}}})
    mismatches = [
        text
        for text in corpus_sample
        if char_tokens(clean_text(text, lowercase)) != spacy_tokens(nlp, text, lowercase)
    ]
    assert not mismatches, f"{len(mismatches)} texts differ, e.g. {mismatches[:3]!r}"
    assert any(ch.isascii() and ch.isalnum() for t in corpus_sample for ch in t)  # Latin/digits covered


def test_tokenizer_ids_equal_spacy_path(corpus_sample: list[str]) -> None:
    """The Tokenizer (pure path) encodes exactly as spaCy's tokens mapped through the same vocab."""
    nlp = spacy.blank("zh")
    chars = sorted({c for t in corpus_sample[:500] for c in clean_text(t)})
    vocab = {PAD: 0, UNK: 1} | {c: i + 2 for i, c in enumerate(chars[::2])}
    tokenizer = Tokenizer(TokenizerConfig(max_len=64), vocab)
    got = tokenizer.encode(corpus_sample[:1000])
    for row, text in zip(got.tolist(), corpus_sample[:1000], strict=True):
        expected = [vocab.get(t, 1) for t in spacy_tokens(nlp, text, True)][:64]
        assert row[: len(expected)] == expected and not any(row[len(expected) :])


@pytest.mark.parametrize("lowercase", [True, False])
def test_batch_encode_equals_token_path(corpus_sample: list[str], lowercase: bool) -> None:
    """Tokenizer.encode's numpy batch path gives the ids of the token path on real texts, batch by batch."""
    chars = sorted({c for t in corpus_sample[:500] for c in clean_text(t, lowercase)})
    vocab = {PAD: 0, UNK: 1} | {c: i + 2 for i, c in enumerate(chars[::2])}
    tokenizer = Tokenizer(TokenizerConfig(lowercase=lowercase, max_len=64), vocab)
    for start in range(0, len(corpus_sample), 64):
        batch = corpus_sample[start : start + 64]
        expected = pad_batch([tokenizer.ids(tokenizer.tokens(t)) for t in batch])
        assert tokenizer.encode(batch).tolist() == expected.tolist(), start
