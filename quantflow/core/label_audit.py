"""Label-noise audit: which training rows carry a label their own text contradicts (confident learning).

A fast candidate (char n-gram TF-IDF + logistic regression, the evaluate step's baseline family) is fitted on
k-1 folds of the training split and predicts the held-out fold, so every row gets class probabilities from a
model that never saw its label. The TF-IDF is fitted once on all the training texts: it reads no label, and
fitting it per fold took most of the audit's time for no better flags. cleanlab's ``find_label_issues`` then
flags the rows whose given label is unlikely under those probabilities, ranked by self-confidence (the
out-of-fold probability of the given label; lowest first). The split step writes the ranking to
``reports/label_issues.csv`` and, with ``split.label_issues: drop``, removes the flagged rows from the training
split only (validation and test keep their labels: editing them would grade a model on the audit's own opinion).

Pure ML on a DataFrame (scikit-learn, cleanlab, pandas), no step and no orchestration: it lives in the core so
the split step, the nightly summary and the benchmark share it.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from quantflow.core.params import FilterBy, LabelAuditParams, SplitParams
from quantflow.core.text import text_key

logger = logging.getLogger(__name__)

ISSUE_COLUMNS = ["text", "given_label", "suggested_label", "score", "row", "key"]


def _check_frame(frame: pd.DataFrame, folds: int) -> list[str]:
    """The sorted label set; every label needs ``folds`` rows so each fold's model sees every class."""
    missing = [c for c in ("text", "label") if c not in frame.columns]
    if missing:
        raise ValueError(f"label audit: the frame lacks columns {missing} (has: {list(frame.columns)})")
    counts = frame["label"].astype(str).value_counts()
    if len(counts) < 2:
        raise ValueError(f"label audit: needs two or more labels (got {counts.to_dict()})")
    small = counts[counts < folds]
    if len(small):
        raise ValueError(
            f"label audit: labels {small.to_dict()} have fewer rows than split.label_audit.folds={folds}; "
            "lower the folds or turn the audit off (split.label_issues: off)"
        )
    return sorted(counts.index.tolist())


def out_of_fold_proba(texts: list[str], y: np.ndarray, params: LabelAuditParams, seed: int) -> np.ndarray:
    """(N, C) probabilities, each row from the fold model that did not train on its label (stratified, seeded)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    features = TfidfVectorizer(
        analyzer="char",
        ngram_range=(1, params.ngram_max),
        max_features=params.max_features,
        sublinear_tf=True,
        preprocessor=text_key,
    ).fit_transform(texts)  # (N, F) sparse
    # liblinear is the fastest here but fits two classes only; three or more take lbfgs's multinomial fit
    solver = "liblinear" if len(np.unique(y)) == 2 else "lbfgs"
    candidate = LogisticRegression(
        solver=solver, C=params.inverse_regularization, max_iter=1000, random_state=seed
    )
    folds = StratifiedKFold(n_splits=params.folds, shuffle=True, random_state=seed)
    return cross_val_predict(candidate, features, y, cv=folds, method="predict_proba")


def encode_labels(frame: pd.DataFrame, folds: int) -> tuple[list[str], list[str], np.ndarray]:
    """The frame's texts, its sorted label set, and the (N,) label indices; checked for the audit."""
    labels = _check_frame(frame, folds)
    index = {label: i for i, label in enumerate(labels)}
    y = frame["label"].astype(str).map(index).to_numpy(dtype=np.int64)
    return frame["text"].astype(str).tolist(), labels, y


def issues_from_proba(
    texts: list[str], labels: list[str], y: np.ndarray, proba: np.ndarray, filter_by: FilterBy
) -> pd.DataFrame:
    """cleanlab's flagged rows of out-of-fold ``proba`` (N, C), ranked by self-confidence, as the issue table."""
    from cleanlab.filter import find_label_issues

    ranked = find_label_issues(
        labels=y,
        pred_probs=proba,
        filter_by=filter_by,
        return_indices_ranked_by="self_confidence",
        n_jobs=1,  # a shared 2-core machine; results do not depend on it
    )
    ranked = np.asarray(ranked, dtype=np.int64)
    return pd.DataFrame(
        {
            "text": [texts[i] for i in ranked],
            "given_label": [labels[y[i]] for i in ranked],
            "suggested_label": [labels[j] for j in proba[ranked].argmax(axis=1)],
            "score": np.round(proba[ranked, y[ranked]], 6),
            "row": ranked,
            "key": [text_key(texts[i]) for i in ranked],
        },
        columns=ISSUE_COLUMNS,
    )


def audit_labels(frame: pd.DataFrame, params: LabelAuditParams, seed: int) -> pd.DataFrame:
    """Flagged rows of ``frame`` (columns text, label), most suspicious first: DataFrame[text, given_label,
    suggested_label, score, row, key]. ``score`` is the out-of-fold probability of the given label, ``row`` the
    row's position in ``frame``, ``key`` its normalized text (the split step's key)."""
    texts, labels, y = encode_labels(frame, params.folds)
    proba = out_of_fold_proba(texts, y, params, seed)  # (N, C)
    issues = issues_from_proba(texts, labels, y, proba, params.filter_by)
    logger.info(
        "label audit: %d of %d rows flagged (%.1f %%)",
        len(issues),
        len(frame),
        100 * len(issues) / len(frame),
    )
    return issues


def audit_training_split(
    train: pd.DataFrame, params: SplitParams, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float | int | str]]:
    """What ``split.label_issues`` makes of the training split: the rows kept, the flagged rows (none when
    ``off``) and the figures for split.json (action, flagged, dropped, seconds). ``report`` keeps every row,
    ``drop`` removes the flagged ones."""
    started = time.perf_counter()
    if params.label_issues == "off":
        issues = pd.DataFrame(columns=ISSUE_COLUMNS)
    else:
        issues = audit_labels(train, params.label_audit, seed)
    kept = drop_flagged(train, issues) if params.label_issues == "drop" else train
    figures = {
        "action": params.label_issues,
        "flagged": len(issues),
        "dropped": len(train) - len(kept),
        "seconds": round(time.perf_counter() - started, 2),
    }
    return kept, issues, figures


def write_label_issues(issues: pd.DataFrame, path: Path) -> Path:
    """The ranked issues as UTF-8 CSV (e.g. ``reports/label_issues.csv``), written whole or not at all."""
    missing = [c for c in ISSUE_COLUMNS if c not in issues.columns]
    if missing:
        raise ValueError(f"{path}: label issues lack columns {missing}; pass the frame audit_labels returned")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    issues[ISSUE_COLUMNS].to_csv(tmp, index=False, encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_label_issues(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no label issues report; run the split step with split.label_issues on"
        )
    return pd.read_csv(path, dtype={"text": str, "given_label": str, "suggested_label": str, "key": str})


def _keys(frame: pd.DataFrame) -> pd.Series:
    """The split step's text key: the ``key`` column when there is one, else the normalized text."""
    return frame["key"].astype(str) if "key" in frame.columns else frame["text"].astype(str).map(text_key)


def flagged_rows(batch: pd.DataFrame, issues: pd.DataFrame) -> pd.Series:
    """True for each row of ``batch`` whose text key the audit flagged."""
    return _keys(batch).isin(set(issues["key"].astype(str)))


def count_flagged(batch: pd.DataFrame, issues: pd.DataFrame) -> int:
    """How many rows of ``batch`` (columns text or key) carry a flagged text key: e.g. how much of a nightly
    batch the audit of the merged training split doubts."""
    return int(flagged_rows(batch, issues).sum())


def drop_flagged(frame: pd.DataFrame, issues: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without the flagged rows (``split.label_issues: drop``, on the training split only)."""
    return frame[~flagged_rows(frame, issues)].reset_index(drop=True)


def inject_label_noise(frame: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """A copy of ``frame`` with ``round(fraction * N)`` labels, drawn uniformly (seeded), changed to another
    label drawn uniformly; and the (N,) mask of the changed rows. For tests and the benchmark."""
    if not 0 <= fraction < 1:
        raise ValueError(f"noise fraction must be in [0, 1) (got: {fraction})")
    labels = sorted(frame["label"].astype(str).unique().tolist())
    if len(labels) < 2:
        raise ValueError(f"flipping labels needs two or more labels (got {labels})")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(frame), size=round(fraction * len(frame)), replace=False)
    given = frame["label"].astype(str).to_numpy(dtype=object).copy()
    for i in chosen:
        others = [label for label in labels if label != given[i]]
        given[i] = others[int(rng.integers(len(others)))]
    mask = np.zeros(len(frame), dtype=bool)
    mask[chosen] = True
    return frame.assign(label=pd.Series(given, index=frame.index, dtype="str")), mask
