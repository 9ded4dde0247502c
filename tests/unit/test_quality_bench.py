"""bench/quality.py's pure parts: the choice uses validation scores only, and the intervals are sane."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from sklearn.metrics import f1_score

from tests.params_helpers import shipped_params


@pytest.fixture(scope="module")
def quality() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "quality.py"
    spec = importlib.util.spec_from_file_location("bench_quality", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def row(name: str, val: float, test: float) -> dict:
    return {"name": name, "val_accuracy": val, "test_accuracy": test}


def test_choice_follows_validation_not_test(quality: ModuleType) -> None:
    results = [
        {"rows": [row("tfidf-lr", 0.99, 0.99), row("a", 0.80, 0.95), row("b", 0.82, 0.70)]},
        {"rows": [row("tfidf-lr", 0.99, 0.99), row("a", 0.90, 0.95), row("b", 0.91, 0.70)]},
    ]
    assert quality.choose(results) == "b"


def test_probes_are_reported_but_never_chosen(quality: ModuleType) -> None:
    probe = next(iter(quality.PROBES))
    results = [{"rows": [row("tfidf-lr", 0.99, 0.99), row(probe, 0.98, 0.98), row("a", 0.80, 0.8)]}]
    assert quality.choose(results) == "a"


def test_choice_needs_a_candidate_run_on_every_dataset(quality: ModuleType) -> None:
    results = [
        {"rows": [row("a", 0.80, 0.8), row("only-here", 0.99, 0.99)]},
        {"rows": [row("a", 0.90, 0.9)]},
    ]
    assert quality.choose(results) == "a"


def test_finalists_are_the_best_on_screening_validation_plus_the_reference(quality: ModuleType) -> None:
    y_val = np.array([0, 1] * 50)
    test = np.zeros(4, dtype=int)  # test predictions must play no part

    def scored(correct: int) -> tuple[None, object]:
        val = np.where(np.arange(100) < correct, y_val, 1 - y_val)
        return None, quality.Scored(val, test, 1.0)

    screened = {name: scored(c) for name, c in [("textcnn", 60), ("a", 90), ("b", 70), ("c", 95), ("d", 80)]}
    assert quality.finalists(screened, y_val) == ["textcnn", "a", "c", "d"]  # in screening order
    assert quality.FINALISTS == 3 and quality.REFERENCE == "textcnn"


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_more_texts(quality: ModuleType) -> None:
    rng = np.random.default_rng(0)
    widths = []
    for n in (200, 3200):
        y = rng.integers(0, 2, n)
        pred = np.where(rng.random(n) < 0.85, y, 1 - y)
        ci = quality.bootstrap_interval(y, pred, seed=0, samples=500)
        low, high = ci["accuracy"]
        assert low <= np.mean(y == pred) <= high
        assert ci["macro_f1"][0] <= f1_score(y, pred, average="macro") <= ci["macro_f1"][1]
        widths.append(high - low)
    assert widths[1] < widths[0] / 2


def test_a_candidate_means_the_same_model_whatever_params_yaml_says(quality: ModuleType) -> None:
    shipped = shipped_params()
    changed = shipped.with_overrides({"train.model": "fasttext", "train.lr": 0.1, "train.threads": 2})
    overrides = quality.CANDIDATES["textcnn"]
    a, b = quality.candidate_params(shipped, overrides), quality.candidate_params(changed, overrides)
    assert a.train == b.train
    assert quality.cache_key(a) == quality.cache_key(b)
    assert quality.cache_key(a) != quality.cache_key(quality.candidate_params(shipped, {"train.lr": 0.01}))
