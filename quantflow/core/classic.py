"""Classic text classifiers on the tokenizer's ids: char n-gram TF-IDF + logistic regression, and NB-LR.

They take the same input as every neural model, ``ids`` (N, T) int64 padded with 0 (``data/features/*.npz``),
so they export to the same ONNX → int8 → registry → service path (see quantflow/core/classic_onnx.py).
The n-grams are runs of 1..``ngram_max`` consecutive ids; padding (id 0) ends a run, so it never takes part
in an n-gram; ids past ``max_len`` are dropped, as the tokenizer drops their tokens. ``<unk>`` (id 1) is a
token like any other.

scikit-learn does the counting: each id becomes one code point (``BASE + id``, outside the Basic Multilingual
Plane) so an n-gram of ids is a short string, fast to hash, and the fitted vocabulary maps back to id tuples.

Models:
- ``tfidf_lr``: L2-normalized TF-IDF → ``LogisticRegression`` (multinomial when there are more than 2 classes).
- ``nb_lr``: the NB-SVM recipe (Wang & Manning, 2012) with logistic regression: the same normalized TF-IDF
  features, each scaled by its naive-Bayes log-count ratio ``r = log((p/|p|₁) / (q/|q|₁))``, p and q the
  ``nb_alpha``-smoothed counts of documents holding the n-gram in the class and outside it. Two classes: one
  ratio, one binary LR. More: one-vs-rest, one ratio and one binary LR per class, probabilities the sigmoids
  normalized to sum 1 (scikit-learn's ``OneVsRestClassifier`` convention). The scaling comes after the L2 norm,
  so in ONNX it folds into the weights of the final Gemm: ``(x ⊙ r_c) · w_c = x · (r_c ⊙ w_c)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from quantflow.core.params import CLASSIC_MODELS, ClassicParams

logger = logging.getLogger(__name__)

__all__ = ["CLASSIC_MODELS", "ClassicFit", "ClassicParams", "fit_classic"]
PAD_ID = 0
BASE = 0x10000  # id i is code point BASE + i: plane 1 and up, no whitespace or case for scikit-learn to fold
MAX_ID = 0x10FFFF - BASE
PAD_CHAR = chr(BASE + PAD_ID)


def id_text(row: np.ndarray, max_len: int) -> str:
    """One row of ids, cut to ``max_len``, as a string of code points ``BASE + id`` (pad included)."""
    return "".join(map(chr, (row[:max_len] + BASE).tolist()))


def id_ngrams(doc: str, ngram_max: int) -> list[str]:
    """Every run of 1..``ngram_max`` consecutive ids of ``doc`` (see :func:`id_text`) that holds no pad."""
    grams: list[str] = []
    for part in doc.split(PAD_CHAR):
        for n in range(1, min(ngram_max, len(part)) + 1):
            grams.extend(part[i : i + n] for i in range(len(part) - n + 1))
    return grams


def gram_ids(gram: str) -> tuple[int, ...]:
    """The ids of an n-gram key of the fitted vocabulary."""
    return tuple(ord(ch) - BASE for ch in gram)


def check_ids(ids: np.ndarray) -> np.ndarray:
    """``ids`` as (N, T) int64, or a ValueError saying what is wrong with it."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be a (N, T) integer array (got shape {ids.shape}, dtype {ids.dtype})")
    if ids.size and (ids.min() < 0 or ids.max() > MAX_ID):
        raise ValueError(f"ids must lie in [0, {MAX_ID}] (got min {ids.min()}, max {ids.max()})")
    return ids.astype(np.int64, copy=False)


@dataclass(frozen=True)
class ClassicFit:
    """A fitted classic model ``model`` (one of CLASSIC_MODELS): scikit-learn's vectorizer and classifier(s),
    and the NB ratios (nb_lr).

    ``classifiers`` holds one model (``tfidf_lr``; ``nb_lr`` with 2 classes) or one binary model per class
    (``nb_lr`` one-vs-rest); ``ratios`` (K, F) one row per classifier, None for ``tfidf_lr``.
    """

    model: str
    settings: ClassicParams
    max_len: int
    num_classes: int
    vectorizer: TfidfVectorizer
    classifiers: tuple[LogisticRegression, ...]
    ratios: np.ndarray | None = None

    def documents(self, ids: np.ndarray) -> list[str]:
        return [id_text(row, self.max_len) for row in check_ids(ids)]

    def features(self, ids: np.ndarray) -> sparse.csr_matrix:
        """(N, F) L2-normalized TF-IDF of the rows of ``ids``."""
        return self.vectorizer.transform(self.documents(ids))

    def predict_proba(self, ids: np.ndarray) -> np.ndarray:
        """(N, C) class probabilities from scikit-learn: the reference the ONNX graph must match."""
        x = self.features(ids)
        if self.ratios is None:
            return self.classifiers[0].predict_proba(x)
        if self.num_classes == 2:
            return self.classifiers[0].predict_proba(x.multiply(self.ratios[0]).tocsr())
        pairs = zip(self.classifiers, self.ratios, strict=True)
        positive = np.column_stack(
            [clf.predict_proba(x.multiply(r).tocsr())[:, 1] for clf, r in pairs]
        )  # (N, C) one-vs-rest sigmoids
        return positive / positive.sum(axis=1, keepdims=True)

    def linear(self) -> tuple[np.ndarray, np.ndarray]:
        """(K, F) weights and (K,) biases on the normalized TF-IDF, NB ratios folded in; K = 1 for 2 classes."""
        coef = np.vstack([clf.coef_ for clf in self.classifiers])
        bias = np.concatenate([clf.intercept_ for clf in self.classifiers])
        if self.ratios is not None:
            coef = coef * self.ratios
        return coef, bias

    def ngrams(self) -> list[tuple[int, ...]]:
        """Column j's n-gram of ids, for every feature column j."""
        grams = self.vectorizer.get_feature_names_out()
        return [gram_ids(g) for g in grams]


def make_vectorizer(settings: ClassicParams) -> TfidfVectorizer:
    return TfidfVectorizer(
        analyzer=partial(id_ngrams, ngram_max=settings.ngram_max),
        lowercase=False,
        max_features=settings.max_features,
        min_df=settings.min_df,
        sublinear_tf=settings.sublinear_tf,
        dtype=np.float64,
    )


def nb_ratio(x: sparse.csr_matrix, positive: np.ndarray, alpha: float) -> np.ndarray:
    """(F,) log-count ratio of n-gram presence in the ``positive`` rows vs the others, ``alpha``-smoothed."""
    present = (x > 0).astype(np.float64)
    p = alpha + np.asarray(present[positive].sum(axis=0)).ravel()
    q = alpha + np.asarray(present[~positive].sum(axis=0)).ravel()
    return np.log((p / p.sum()) / (q / q.sum()))


def _logistic(settings: ClassicParams, seed: int) -> LogisticRegression:
    return LogisticRegression(C=settings.C, max_iter=settings.max_iter, random_state=seed)


def _fit_nb(
    x: sparse.csr_matrix, y: np.ndarray, num_classes: int, settings: ClassicParams, seed: int
) -> tuple[tuple[LogisticRegression, ...], np.ndarray]:
    """One binary LR on ratio-scaled features: class 1 vs 0 for 2 classes, each class vs the rest for more."""
    targets = [1] if num_classes == 2 else list(range(num_classes))
    classifiers, ratios = [], []
    for c in targets:
        positive = y == c
        r = nb_ratio(x, positive, settings.nb_alpha)
        classifiers.append(_logistic(settings, seed).fit(x.multiply(r).tocsr(), positive.astype(np.int64)))
        ratios.append(r)
    return tuple(classifiers), np.vstack(ratios)


def fit_classic(
    ids: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    model: str,
    settings: ClassicParams,
    max_len: int,
    seed: int,
) -> ClassicFit:
    """Fit ``model`` (tfidf_lr or nb_lr, ``train.classic`` settings) on (N, T) ids and (N,) class indexes in
    ``[0, num_classes)``.

    Every class must occur in ``y`` (a class never seen gets no weights and the logits would lose a column).
    """
    if model not in CLASSIC_MODELS:
        raise ValueError(f"unknown classic model {model!r}; choose one of {', '.join(CLASSIC_MODELS)}")
    ids, y = check_ids(ids), np.asarray(y, dtype=np.int64)
    if len(ids) != len(y):
        raise ValueError(f"ids and y differ in length ({len(ids)} vs {len(y)})")
    missing = sorted(set(range(num_classes)) - set(y.tolist()))
    if num_classes < 2 or missing:
        raise ValueError(
            f"a classic model needs every one of >= 2 classes in its training labels "
            f"(num_classes {num_classes}, missing class indexes {missing})"
        )
    vectorizer = make_vectorizer(settings)
    x = vectorizer.fit_transform([id_text(row, max_len) for row in ids])
    logger.info("classic %s: %d texts, %d n-gram features", model, x.shape[0], x.shape[1])
    if model == "nb_lr":
        classifiers, ratios = _fit_nb(x, y, num_classes, settings, seed)
        return ClassicFit(model, settings, max_len, num_classes, vectorizer, classifiers, ratios)
    classifier = _logistic(settings, seed).fit(x, y)
    return ClassicFit(model, settings, max_len, num_classes, vectorizer, (classifier,))
