"""Synonym replacement for the training split, from a lexicon built on the training split itself.

No Chinese synonym lexicon ships with an installed package, so the lexicon is learned: word2vec (gensim) on the
jieba words of the training texts, and a word's "synonyms" are its nearest neighbours above a cosine threshold.
Neighbours in embedding space share contexts, which is not the same as sharing meaning: in review text 好 and 差
share every context ("质量很_"), so such a lexicon can swap a text's sentiment. :func:`build_lexicon` logs its
entries for the most frequent words so a reader sees what the model was trained on; ``make quality`` measures
whether it helps.

Works on the encoded training ids (the format preprocess writes): for a char tokenizer the ids are decoded to
text, segmented with jieba, replaced word by word, and encoded back; for a word tokenizer (jieba) the ids are
the words. Redrawn every epoch, like deletion and swap (:mod:`quantflow.core.augment`). Validation and test texts
are never touched. gensim and jieba are imported on first use (jieba through :func:`quantflow.core.text.load_jieba`): the service
never loads this module.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from quantflow.core.text import UNK, load_jieba

logger = logging.getLogger(__name__)

MIN_COUNT = 5  # a word needs this many occurrences in the training split to get (or be) a synonym
THRESHOLD = 0.8  # cosine similarity a neighbour needs to count as a synonym
TOP_N = 3  # neighbours kept per word
UNKNOWN = "\ufffd"  # stands for <unk> in decoded text: not in any vocabulary, so it encodes back to <unk>


@dataclass(frozen=True)
class SynonymAugmenter:
    """The training texts as word lists, the lexicon, and how to turn words back into ids."""

    words: list[list[str]]  # per training text, in order
    lexicon: dict[str, list[str]]
    vocab: dict[str, int]
    char_level: bool  # True: a word is spelled by one id per char; False: one id per word
    width: int  # T of the id array

    def replace(self, share: float, rng: np.random.Generator) -> np.ndarray:
        """(N, T) ids of one corrupted copy: each word with synonyms is replaced with probability ``share``."""
        out = np.zeros((len(self.words), self.width), dtype=np.int64)
        unk = self.vocab.get(UNK, 1)
        for i, words in enumerate(self.words):
            draws = rng.random(len(words))
            chosen = [
                self.lexicon[w][rng.integers(len(self.lexicon[w]))] if w in self.lexicon and d < share else w
                for w, d in zip(words, draws, strict=True)
            ]
            tokens = [c for w in chosen for c in w] if self.char_level else chosen
            row = [self.vocab.get(t, unk) for t in tokens[: self.width]]
            out[i, : len(row)] = row
        return out


def decode_words(ids: np.ndarray, vocab: dict[str, int], char_level: bool) -> list[list[str]]:
    """Right-padded ids → words per text: jieba on the decoded chars, or the tokens themselves."""
    inverse = {i: t for t, i in vocab.items()}
    inverse[vocab.get(UNK, 1)] = UNKNOWN
    texts = [[inverse.get(int(i), UNKNOWN) for i in row[row != 0]] for row in ids]
    if not char_level:
        return texts
    jieba = load_jieba()
    return [[w for w in jieba.lcut("".join(chars)) if w.strip()] for chars in texts]


def is_content_word(word: str) -> bool:
    """Two or more Chinese characters: single chars and punctuation are mostly function words, not replaced."""
    return len(word) >= 2 and all("\u4e00" <= ch <= "\u9fff" for ch in word)


def build_lexicon(words: Sequence[Sequence[str]], dim: int, seed: int) -> dict[str, list[str]]:
    """word → up to ``TOP_N`` neighbours with cosine ≥ ``THRESHOLD`` (word2vec on ``words``, skip-gram)."""
    from gensim.models import Word2Vec

    model = Word2Vec(
        [list(w) for w in words],
        vector_size=dim,
        window=5,
        min_count=MIN_COUNT,
        sg=1,
        epochs=5,
        seed=seed,
        workers=1,  # reproducible only single-threaded
    )
    lexicon = {}
    for word in filter(is_content_word, model.wv.index_to_key):
        near = [
            n for n, sim in model.wv.most_similar(word, topn=TOP_N) if sim >= THRESHOLD and is_content_word(n)
        ]
        if near:
            lexicon[word] = near
    counts = Counter(w for text in words for w in text)
    frequent = sorted(lexicon, key=lambda w: -counts[w])[:8]
    logger.info(
        "synonyms: %d of %d words have neighbours ≥ %.2f; most frequent: %s",
        len(lexicon),
        len(model.wv.index_to_key),
        THRESHOLD,
        "; ".join(f"{w}→{'/'.join(lexicon[w])}" for w in frequent),
    )
    return lexicon


def synonym_augmenter(
    ids: np.ndarray, vocab: dict[str, int], char_level: bool, dim: int, seed: int
) -> SynonymAugmenter:
    """Segment the training ids once and learn the lexicon from them."""
    words = decode_words(ids, vocab, char_level)
    return SynonymAugmenter(words, build_lexicon(words, dim, seed), vocab, char_level, ids.shape[1])
