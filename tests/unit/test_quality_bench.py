"""bench/quality.py's and flows/quality.py's pure parts: the folds, the per-dataset statistics, the choice of the
default (out-of-fold scores only; ties go to the smaller, then faster, then simpler model), and the cache key."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from flows.quality import FoldScored, fold_frames, fold_index
from quantflow.core.text import text_key
from tests.params_helpers import shipped_params


@pytest.fixture(scope="module")
def quality() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "quality.py"
    spec = importlib.util.spec_from_file_location("bench_quality", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_text_is_in_exactly_one_test_fold_and_never_also_in_its_training() -> None:
    params = shipped_params()
    texts = [f"第{i}条评论很好" for i in range(2000)]
    whole = pd.DataFrame({"text": texts, "label": "x", "key": [text_key(t) for t in texts]})
    k = 5
    frames = [fold_frames(whole, params, k, i) for i in range(k)]
    tested = pd.concat([f["test"] for f in frames])
    assert sorted(tested["key"]) == sorted(whole["key"])  # each text tested once
    for f in frames:
        assert set(f["test"]["key"]).isdisjoint(set(f["train"]["key"]) | set(f["val"]["key"]))
        assert len(f["train"]) + len(f["val"]) + len(f["test"]) == len(whole)
        share = len(f["val"]) / len(whole)
        assert share == pytest.approx(params.split.val_fraction, abs=0.03)
        assert len(f["test"]) / len(whole) == pytest.approx(1 / k, abs=0.03)
    assert fold_index(whole["key"][0], params.split.salt, k) == fold_index(
        whole["key"][0], params.split.salt, k
    )


def scored(correct: np.ndarray, y: np.ndarray, size: int = 1000, ms: float = 1.0) -> FoldScored:
    """Predictions that are right where ``correct`` is True."""
    return FoldScored(np.where(correct, y, 1 - y), 1.0, size, ms)


def dataset_rows(quality: ModuleType, accuracies: dict[str, float], n: int = 400, seed: int = 0) -> dict:
    """A dataset summary of 5 folds of ``n`` texts whose models are right on the given share of texts."""
    rng = np.random.default_rng(seed)
    labels = [rng.integers(0, 2, n) for _ in range(5)]
    results = {quality.BASELINE: [scored(rng.random(n) < 0.9, y, 0) for y in labels]}
    for name, acc in accuracies.items():
        results[name] = [scored(rng.random(n) < acc, y) for y in labels]

    class FakeFold:
        def __init__(self, y: np.ndarray) -> None:
            self.y = y

        def test_labels(self) -> np.ndarray:
            return self.y

    return quality.summarize_dataset("d", results, [FakeFold(y) for y in labels])


def test_a_clearly_worse_candidate_is_not_tied_and_a_close_one_is(quality: ModuleType) -> None:
    result = dataset_rows(quality, {"tfidf_lr": 0.90, "nb_lr": 0.895, "fasttext-cosine": 0.70})
    assert result["best"] in ("tfidf_lr", "nb_lr")  # half a point apart: either, by the draw
    rows = result["rows"]
    assert rows["tfidf_lr"]["tied"] and rows["nb_lr"]["tied"]
    assert not rows["fasttext-cosine"]["tied"]
    worse = rows["fasttext-cosine"]["vs_best"]
    assert worse["f1_high"] < 0 and worse["p_folds"] < 0.05 and worse["p_mcnemar"] < 0.05
    mean = rows["fasttext-cosine"]["accuracy"]
    assert mean["low"] <= mean["mean"] <= mean["high"]
    assert mean["high"] < rows[result["best"]]["accuracy"]["low"]
    assert len(rows["tfidf_lr"]["pooled"]) == 5 * 400  # every text once


def test_the_default_is_the_smallest_of_the_tied_then_the_simplest(quality: ModuleType) -> None:
    a = dataset_rows(quality, {"tfidf_lr": 0.90, "nb_lr": 0.90, "ngram-textcnn-cosine": 0.90}, seed=1)
    b = dataset_rows(quality, {"tfidf_lr": 0.90, "nb_lr": 0.90, "ngram-textcnn-cosine": 0.90}, seed=2)
    for result in (a, b):
        result["rows"]["ngram-textcnn-cosine"]["size_bytes"] = 13e6  # neural: 13 MB, the classic ones 1 KB
        result["rows"]["nb_lr"]["ms_per_text"] = 0.9  # within the speed tolerance of tfidf_lr's 1.0
    chosen, why = quality.choose_default([a, b])
    assert all(r["rows"][n]["tied"] for r in (a, b) for n in ("tfidf_lr", "nb_lr", "ngram-textcnn-cosine"))
    assert chosen == "tfidf_lr" and "smallest" in why  # the simpler of two equal graphs, not timing noise
    for result in (a, b):
        result["rows"]["nb_lr"]["ms_per_text"] = 0.5  # clearly faster
    assert quality.choose_default([a, b])[0] == "nb_lr"


def test_the_default_must_be_tied_on_every_dataset(quality: ModuleType) -> None:
    a = dataset_rows(quality, {"tfidf_lr": 0.95, "ngram-textcnn-cosine": 0.80}, seed=3)
    b = dataset_rows(quality, {"tfidf_lr": 0.80, "ngram-textcnn-cosine": 0.95}, seed=4)
    chosen, why = quality.choose_default([a, b])
    assert "no candidate is indistinguishable" in why
    mean = {
        n: np.mean([r["rows"][n]["macro_f1"]["mean"] for r in (a, b)])
        for n in ("tfidf_lr", "ngram-textcnn-cosine")
    }
    assert chosen == max(mean, key=mean.get)
    c = dataset_rows(quality, {"tfidf_lr": 0.95, "ngram-textcnn-cosine": 0.80}, seed=5)
    assert quality.choose_default([a, c])[0] == "tfidf_lr"  # the only one tied (here: best) on both


def test_the_baseline_is_reported_but_never_chosen(quality: ModuleType) -> None:
    result = dataset_rows(quality, {"tfidf_lr": 0.60})  # the baseline scores 0.9
    assert result["best"] == "tfidf_lr"
    assert quality.choose_default([result])[0] == "tfidf_lr"
    assert result["rows"]["tfidf_lr"]["vs_baseline"]["f1_diff"] < 0


def test_params_yaml_trains_candidates_of_the_study(quality: ModuleType) -> None:
    """The shipped train.candidates are studied: the neural default is one of the study's neural candidates."""
    names = quality.shipped_names(shipped_params())
    assert set(names) == set(shipped_params().train.candidates)
    assert all(name is not None for name in names.values()), names


def test_a_candidate_means_the_same_model_whatever_params_yaml_says(quality: ModuleType) -> None:
    shipped = shipped_params()
    changed = shipped.with_overrides({"train.model": "fasttext", "train.lr": 0.1, "train.threads": 2})
    _, overrides = quality.CANDIDATES["fasttext-cosine"]
    a, b = quality.candidate_params(shipped, overrides), quality.candidate_params(changed, overrides)
    assert a.train == b.train
    assert quality.cache_key(a) == quality.cache_key(b)
    assert quality.cache_key(a) != quality.cache_key(quality.candidate_params(shipped, {"train.lr": 0.01}))
