"""Text cleaning, tokenization and the vocabulary: shared by training and serving.

This module imports neither torch nor the model code, so the service can load a tokenizer without them. The
Chinese char segmenter is pure Python (token for token spaCy's); the ``char+word`` segmenter adds jieba's words
with jieba itself (imported on first use, no spaCy); other segmenters load spaCy on first use, and spaCy imports
thinc, which imports torch when it is installed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

PAD, UNK = "<pad>", "<unk>"
SEP = "<sep>"  # char+word: between the chars and the words; clean_text strips "<...>", so no text makes one
CHAR_WORD = "char+word"
_HTML_TAG = re.compile(r"<[^>]{1,200}>")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_SPACES = re.compile(r"\s+")


def clean_text(text: str, lowercase: bool = True) -> str:
    """HTML tags and URLs out, NFKC (full-width to half-width), whitespace folded, optionally lower case."""
    text = _HTML_TAG.sub(" ", text)
    text = _URL.sub(" ", text)
    text = unicodedata.normalize("NFKC", text)
    text = _SPACES.sub(" ", text).strip()
    return text.lower() if lowercase else text


def text_key(text: str) -> str:
    """The key that says two texts are the same text: :func:`clean_text`, always lower-cased.

    The split dedupes and assigns splits by it, the nightly contract finds known and conflicting texts by it;
    it depends on no params (``preprocess.lowercase`` shapes the tokenizer's input, not a text's identity), so
    a key stored in the split is comparable with a key computed from a batch under any configuration.
    """
    return clean_text(text, lowercase=True)


@dataclass(frozen=True)
class TokenizerConfig:
    """Everything needed to rebuild the tokenizer: saved beside the vocabulary."""

    language: str = "zh"
    segmenter: str = "char"
    lowercase: bool = True
    max_len: int = 128
    min_len: int = 1


class Tokenizer:
    """clean → spaCy tokens → ids. ``min_len`` pads short inputs (a CNN needs at least its widest kernel).

    Segmenter ``char+word`` (zh only) puts two views of the text in one sequence: see :func:`char_word_tokens`.
    """

    def __init__(self, config: TokenizerConfig, vocab: dict[str, int]) -> None:
        if vocab.get(PAD) != 0 or vocab.get(UNK) != 1:
            raise ValueError(f"vocabulary must map {PAD!r} to 0 and {UNK!r} to 1")
        if config.segmenter == CHAR_WORD and vocab.get(SEP) != 2:
            raise ValueError(
                f"segmenter {CHAR_WORD!r} needs {SEP!r} at id 2 in the vocabulary (got: {vocab.get(SEP)}); "
                "build it with build_vocab(..., reserved=special_tokens(config))"
            )
        if config.segmenter == CHAR_WORD and config.language != "zh":
            raise ValueError(f"segmenter {CHAR_WORD!r} is for language 'zh' (got: {config.language!r})")
        self.config = config
        self.vocab = vocab
        # spaCy (which pulls thinc, and thinc torch) only for segmenters that need it: zh "char" is pure Python,
        # zh "char+word" pure Python and jieba
        pure = is_char_segmenter(config) or config.segmenter == CHAR_WORD
        self._nlp = None if pure else make_nlp(config.language, config.segmenter)

    def _pure_tokens(self, cleaned: str) -> list[str]:
        if self.config.segmenter == CHAR_WORD:
            return char_word_tokens(cleaned, self.config.max_len)
        return char_tokens(cleaned)

    def tokens(self, text: str) -> list[str]:
        cleaned = clean_text(text, self.config.lowercase)
        if self._nlp is None:
            return self._pure_tokens(cleaned)
        return [t.text for t in self._nlp.make_doc(cleaned) if not t.is_space]

    def iter_tokens(self, texts: Iterable[str], batch_size: int = 1000) -> Iterator[list[str]]:
        cleaned = (clean_text(t, self.config.lowercase) for t in texts)
        if self._nlp is None:
            yield from map(self._pure_tokens, cleaned)
            return
        for doc in self._nlp.pipe(cleaned, batch_size=batch_size):
            yield [t.text for t in doc if not t.is_space]

    def ids(self, tokens: Sequence[str]) -> list[int]:
        unk = self.vocab[UNK]
        return [self.vocab.get(tok, unk) for tok in tokens[: self.config.max_len]]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(B, T) int64 ids, T = the longest text in the batch (≤ max_len, ≥ min_len), padded with 0."""
        return pad_batch([self.ids(toks) for toks in self.iter_tokens(texts)], self.config.min_len)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tokenizer.json").write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        (folder / "vocab.json").write_text(
            json.dumps(self.vocab, ensure_ascii=False) + "\n", encoding="utf-8"
        )

    @classmethod
    def load(cls, folder: Path) -> Tokenizer:
        config = TokenizerConfig(**json.loads((folder / "tokenizer.json").read_text()))
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        return cls(config, vocab)


def is_char_segmenter(config: TokenizerConfig) -> bool:
    return config.language == "zh" and config.segmenter == "char"


def char_tokens(cleaned: str) -> list[str]:
    """spaCy's ``blank("zh")`` char segmenter without spaCy: one token per code point, whitespace dropped.

    spaCy splits the text with ``list(text)``, folds whitespace into ``Token.whitespace_`` or whitespace-only
    tokens (``is_space`` is ``str.isspace``), which ``Tokenizer.tokens`` drops: what is left is exactly this.
    ``tests/unit/test_text.py`` checks the equality on thousands of real texts.
    """
    return [ch for ch in cleaned if not ch.isspace()]


def char_word_tokens(cleaned: str, max_len: int) -> list[str]:
    """Chars, ``<sep>``, words: the ``char+word`` segmenter's tokens of a cleaned text, at most ``max_len``.

    The chars are :func:`char_tokens`, cut to ``h = (max_len - 1) // 2``; the words are jieba's (default mode,
    as spaCy's jieba segmenter cuts, whitespace-only words dropped), cut to ``max_len - 1 - h``. A text has at
    most as many words as chars, so the words are cut only when the chars are too. ``<sep>`` is always there,
    even for an empty text. One vocabulary holds both views: a one-char word and that char share an id.
    """
    h = (max_len - 1) // 2
    words = [w for w in load_jieba().lcut(cleaned) if w and not w.isspace()]
    return [*char_tokens(cleaned)[:h], SEP, *words[: max(0, max_len - 1 - h)]]


def load_jieba() -> Any:
    """jieba, imported on first use with its dictionary-loading chatter silenced."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


def special_tokens(config: TokenizerConfig) -> tuple[str, ...]:
    """Tokens with fixed ids after ``<pad>`` = 0 and ``<unk>`` = 1: ``<sep>`` = 2 for ``char+word``."""
    return (SEP,) if config.segmenter == CHAR_WORD else ()


def base_vocab(config: TokenizerConfig) -> dict[str, int]:
    """The vocabulary before any text: ``<pad>``, ``<unk>`` and the segmenter's special tokens."""
    return {tok: i for i, tok in enumerate((PAD, UNK, *special_tokens(config)))}


def make_nlp(language: str, segmenter: str) -> Any:
    """A blank spaCy pipeline; for Chinese, ``segmenter`` is ``char`` or ``jieba``."""
    import spacy

    if language == "zh":
        return spacy.blank("zh", config={"nlp": {"tokenizer": {"segmenter": segmenter}}})
    return spacy.blank(language)


def build_vocab(
    token_lists: Iterable[Sequence[str]], min_freq: int, max_size: int, reserved: Sequence[str] = ()
) -> dict[str, int]:
    """Most frequent tokens first (ties by token, for a stable order), after ``<pad>`` = 0, ``<unk>`` = 1 and
    the ``reserved`` tokens (ids 2, 3, ..., whether seen or not; see :func:`special_tokens`)."""
    counts = Counter(tok for toks in token_lists for tok in toks)
    fixed = [PAD, UNK, *(t for t in reserved if t not in (PAD, UNK))]
    ranked = sorted(
        (t for t, n in counts.items() if n >= min_freq and t not in fixed), key=lambda t: (-counts[t], t)
    )
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(fixed))}
    for token in ranked[: max(0, max_size - len(vocab))]:
        vocab[token] = len(vocab)
    logger.info("vocabulary: %d tokens kept of %d seen (min_freq=%d)", len(vocab), len(counts), min_freq)
    return vocab


def pad_batch(rows: Sequence[Sequence[int]], min_len: int = 1) -> np.ndarray:
    """Right-pad id lists with 0 into one (B, T) int64 array."""
    width = max([min_len, *(len(r) for r in rows)])
    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def hash_unit(key: str, salt: str) -> float:
    """A uniform number in [0, 1) fixed by the text and the salt."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64
