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
from functools import cache
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
    text = nfkc(strip_markup(text))
    text = _SPACES.sub(" ", text).strip()
    return text.lower() if lowercase else text


def strip_markup(text: str) -> str:
    """HTML tags and URLs replaced by a space; each regex runs only on a text it can match (most have none)."""
    if "<" in text:  # every tag starts with it
        text = _HTML_TAG.sub(" ", text)
    if "://" in text or "." in text:  # every URL holds one ("http(s)://" or "www."), whatever its case
        text = _URL.sub(" ", text)
    return text


# NFKC maps most of the Halfwidth and Fullwidth Forms block (U+FF00-FFEF: full-width ASCII such as "，" and
# "１", half-width katakana) and the ideographic space U+3000 to one code point each: the corpora's only
# non-NFKC characters, in ~80% of the texts, which send unicodedata.normalize down its slow path (~6 us/text)
_WIDTH_BLOCK, _IDEOGRAPHIC_SPACE = 0xFF00, 0x3000
_WIDE = re.compile("[\u3000\uff00-\uffef]")


@cache
def _narrow_point(point: int) -> int:
    """The NFKC of one code point when that is one code point, else the code point itself."""
    mapped = unicodedata.normalize("NFKC", chr(point))
    return ord(mapped) if len(mapped) == 1 else point


@cache
def _width_table() -> np.ndarray:
    """(240,) uint32: :func:`_narrow_point` of each code point of the block."""
    return np.array([_narrow_point(_WIDTH_BLOCK + i) for i in range(0xF0)], dtype=np.uint32)


def _narrow(match: re.Match[str]) -> str:
    return chr(_narrow_point(ord(match.group())))


def nfkc(text: str) -> str:
    """``unicodedata.normalize("NFKC", text)``, mostly without its slow path: see :func:`_nfkc_or`."""
    if unicodedata.is_normalized("NFKC", text):
        return text
    return _nfkc_or(_WIDE.sub(_narrow, text), text)


def _nfkc_or(narrowed: str, text: str) -> str:
    """NFKC of ``text``, given ``narrowed``: ``text`` with some code points replaced by their own NFKC.

    Exact: replacing a code point by its NFKC leaves a compatibility-equivalent string (the same NFKD, and
    NFKD works code point by code point before its reordering), so both strings have the same NFKC; when
    ``narrowed`` is already in NFKC, it is that NFKC. Otherwise unicodedata does the whole text.
    """
    if unicodedata.is_normalized("NFKC", narrowed):
        return narrowed
    return unicodedata.normalize("NFKC", text)


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
        self._chars: CharTable | None = None  # the char segmenter's batch path, built on first use

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
        """(B, T) int64 ids, T = the longest text in the batch (≤ max_len, ≥ min_len), padded with 0.

        The char segmenter skips the token lists: one text at a time in plain string calls, a batch with its
        code points in numpy (:class:`CharTable`); the same ids as ``ids(tokens(text))``, which
        tests/unit/test_text.py checks on real and edge-case texts.
        """
        if not is_char_segmenter(self.config):
            return pad_batch([self.ids(toks) for toks in self.iter_tokens(texts)], self.config.min_len)
        if len(texts) < CHAR_BATCH_MIN:
            return pad_batch([self._char_ids(text) for text in texts], self.config.min_len)
        if self._chars is None:
            self._chars = CharTable(self.vocab)
        cleaned = self._cleaned(texts)
        return self._chars.encode(cleaned, self.config.max_len, self.config.min_len)

    def _char_ids(self, text: str) -> list[int]:
        """One text's ids under the char segmenter: :func:`clean_text` less the whitespace folding, whose
        whitespace :func:`char_tokens` drops anyway (lower case sees no difference: Python's only
        context-dependent lowering, a final sigma, reads a space and a run of them alike)."""
        cleaned = nfkc(strip_markup(text))
        cleaned = cleaned.lower() if self.config.lowercase else cleaned
        get, unk = self.vocab.get, self.vocab[UNK]
        return [get(ch, unk) for ch in "".join(cleaned.split())[: self.config.max_len]]

    def _cleaned(self, texts: Sequence[str]) -> list[str]:
        """Each text as :meth:`_char_ids` cleans it, NFKC's common case done once for the batch in numpy."""
        pieces = [strip_markup(text) for text in texts]
        narrowed = _from_points(_narrow_points(_code_points("".join(pieces))))
        cleaned, end = [], 0
        for piece in pieces:
            start, end = end, end + len(piece)
            text = _nfkc_or(narrowed[start:end], piece)
            cleaned.append(text.lower() if self.config.lowercase else text)
        return cleaned

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


CHAR_BATCH_MIN = 4  # texts: below this, numpy's fixed cost per call outweighs what it saves


def _code_points(text: str) -> np.ndarray:
    """(N,) uint32, one per code point (lone surrogates too, as Python strings may hold them)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _from_points(points: np.ndarray) -> str:
    return points.tobytes().decode("utf-32-le", "surrogatepass")


def _narrow_points(points: np.ndarray) -> np.ndarray:
    """A copy of ``points`` with the ideographic space and the width block replaced as :func:`nfkc` does."""
    points = points.copy()
    block = (points >= _WIDTH_BLOCK) & (points < _WIDTH_BLOCK + 0xF0)
    points[block] = _width_table()[points[block] - _WIDTH_BLOCK]
    points[points == _IDEOGRAPHIC_SPACE] = _narrow_point(_IDEOGRAPHIC_SPACE)
    return points


class CharTable:
    """A char vocabulary as an array over code points, to encode a batch of cleaned texts in numpy.

    ``ids[c]`` is the id of the one-char token ``chr(c)``, ``<unk>`` for a char without one and -1 for
    whitespace (dropped, as :func:`char_tokens` drops it); the last slot stands for every code point past the
    table (looked at one by one: only whitespace among them is not ``<unk>``).
    """

    def __init__(self, vocab: dict[str, int]) -> None:
        chars = {ord(token): i for token, i in vocab.items() if len(token) == 1}
        size = max([*chars, _IDEOGRAPHIC_SPACE]) + 2
        self.ids = np.full(size, vocab[UNK], dtype=np.int64)
        self.ids[list(chars)] = list(chars.values())
        # re's \s is str.isspace (tests/unit/test_text.py): one scan instead of `size` isspace calls
        everything = "".join(map(chr, range(size - 1)))
        self.ids[[m.start() for m in re.finditer(r"\s", everything)]] = -1

    def lookup(self, points: np.ndarray) -> np.ndarray:
        """(N,) code points → (N,) ids, -1 for whitespace."""
        last = len(self.ids) - 1
        ids = self.ids[np.minimum(points, last)]
        for i in np.flatnonzero(points >= last).tolist():
            ids[i] = -1 if chr(points[i]).isspace() else self.ids[last]
        return ids

    def encode(self, cleaned: Sequence[str], max_len: int, min_len: int) -> np.ndarray:
        """(B, T) ids of cleaned texts, as ``pad_batch`` pads ``[ids(char_tokens(t)) for t in cleaned]``."""
        ids = self.lookup(_code_points("".join(cleaned)))  # (N,): every text's code points, one after another
        owner = np.repeat(np.arange(len(cleaned)), [len(text) for text in cleaned])  # (N,): the text of each
        kept = ids >= 0
        ids, owner = ids[kept], owner[kept]
        counts = np.bincount(owner, minlength=len(cleaned))  # (B,): chars per text
        starts = np.cumsum(counts) - counts  # (B,): where each text's kept chars begin
        position = np.arange(len(ids)) - np.repeat(starts, counts)  # (N,): each char's place in its text
        inside = position < max_len
        width = max(min_len, min(max_len, int(counts.max(initial=0))))
        out = np.zeros((len(cleaned), width), dtype=np.int64)
        out[owner[inside], position[inside]] = ids[inside]
        return out


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
