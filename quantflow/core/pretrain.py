"""Character embeddings pre-trained on the corpus's own text (gensim word2vec), to initialize a model's
embedding layer instead of random vectors.

Trained on the encoded training split only (ids as tokens: no re-tokenization, no other split's text, nothing
downloaded). gensim is imported on first use: the service never loads this module.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def id_sentences(ids: np.ndarray) -> list[list[str]]:
    """(N, T) right-padded ids → one list of id strings per text (padding dropped, unknown id 1 kept)."""
    return [[str(i) for i in row[row != 0]] for row in ids]


def word2vec_vectors(
    ids: np.ndarray, vocab_size: int, dim: int, seed: int, epochs: int = 5, window: int = 5
) -> np.ndarray:
    """(vocab_size, dim) skip-gram vectors for the ids of ``ids``; ids never seen keep small random vectors.

    The vectors are scaled by one factor to the spread of a default ``nn.Embedding`` init (unit variance), so the learning rate
    tuned for random init still fits; row 0 (padding) is zero.
    """
    from gensim.models import Word2Vec

    model = Word2Vec(
        id_sentences(ids),
        vector_size=dim,
        window=window,
        min_count=1,
        sg=1,
        epochs=epochs,
        seed=seed,
        workers=1,  # one worker: gensim is reproducible only single-threaded
    )
    rng = np.random.default_rng(seed)
    out = rng.normal(0.0, 1.0, (vocab_size, dim)).astype(np.float32)
    known = [int(k) for k in model.wv.index_to_key if int(k) < vocab_size]
    vectors = np.stack([model.wv[str(k)] for k in known])
    centered = vectors - vectors.mean(axis=0)  # the component every vector shares carries no information
    out[known] = centered / (centered.std() + 1e-6)  # one scale for all: the geometry stays
    out[0] = 0.0
    logger.info("pretrain: word2vec vectors for %d of %d ids (dim %d)", len(known), vocab_size, dim)
    return out
