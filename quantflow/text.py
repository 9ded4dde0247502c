"""Text cleaning, tokenization and the vocabulary: shared by training and serving.

This module imports neither torch nor the model code, so the service can load a tokenizer without them. The
Chinese char segmenter is pure Python (token for token spaCy's); other segmenters load spaCy on first use, and
spaCy imports thinc, which imports torch when it is installed.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class TokenizerConfig:
    """Everything needed to rebuild the tokenizer: saved beside the vocabulary."""

    language: str = "zh"
    segmenter: str = "char"
    lowercase: bool = True
    max_len: int = 128
    min_len: int = 1


class Tokenizer:
    """clean → spaCy tokens → ids. ``min_len`` pads short inputs (a CNN needs at least its widest kernel)."""

    def __init__(self, config: TokenizerConfig, vocab: dict[str, int]) -> None:
        if vocab.get(PAD) != 0 or vocab.get(UNK) != 1:
            raise ValueError(f"vocabulary must map {PAD!r} to 0 and {UNK!r} to 1")
        self.config = config
        self.vocab = vocab
        # spaCy (which pulls thinc, and thinc torch) only for segmenters that need it: zh "char" is pure Python
        self._nlp = None if is_char_segmenter(config) else make_nlp(config.language, config.segmenter)

    def tokens(self, text: str) -> list[str]:
        cleaned = clean_text(text, self.config.lowercase)
        if self._nlp is None:
            return char_tokens(cleaned)
        return [t.text for t in self._nlp.make_doc(cleaned) if not t.is_space]

    def iter_tokens(self, texts: Iterable[str], batch_size: int = 1000) -> Iterator[list[str]]:
        cleaned = (clean_text(t, self.config.lowercase) for t in texts)
        if self._nlp is None:
            yield from map(char_tokens, cleaned)
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


def make_nlp(language: str, segmenter: str) -> Any:
    """A blank spaCy pipeline; for Chinese, ``segmenter`` is ``char`` or ``jieba``."""
    import spacy

    if language == "zh":
        return spacy.blank("zh", config={"nlp": {"tokenizer": {"segmenter": segmenter}}})
    return spacy.blank(language)


def build_vocab(token_lists: Iterable[Sequence[str]], min_freq: int, max_size: int) -> dict[str, int]:
    """Most frequent tokens first (ties by token, for a stable order), after ``<pad>`` = 0 and ``<unk>`` = 1."""
    counts = Counter(tok for toks in token_lists for tok in toks)
    ranked = sorted((t for t, n in counts.items() if n >= min_freq), key=lambda t: (-counts[t], t))
    vocab = {PAD: 0, UNK: 1}
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
