"""Calibration: the metrics against hand-computed values, temperature scaling on synthetic logits, the
cross-fitted choice of method, and the checks on a stored calibration entry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from quantflow.core.bundle import MANIFEST, Manifest, set_calibration
from quantflow.core.calibration import (
    Calibration,
    brier_score,
    cross_fitted,
    expected_calibration_error,
    fit_calibration,
    fit_isotonic,
    fit_temperature,
    plot_reliability,
    reliability,
    softmax,
    validation_folds,
)
from tests.params_helpers import shipped_params

# max probabilities 0.95 (right) and 0.97 (wrong) share bin 14 of 15; 0.72 (right) sits in bin 10, 0.55 (wrong) in 8
HAND_PROBA = np.array([[0.95, 0.05], [0.03, 0.97], [0.72, 0.28], [0.45, 0.55]])
HAND_Y = np.array([0, 0, 0, 0])


def sampled(n: int, classes: int, scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true label distribution, and labels drawn from it."""
    rng = np.random.default_rng(seed)
    true = rng.normal(size=(n, classes)) * scale
    cumulative = softmax(true).cumsum(axis=1)  # (N, C)
    y = np.minimum((rng.random(n)[:, None] > cumulative).sum(axis=1), classes - 1)
    return true, y


def test_ece_matches_the_hand_computed_value() -> None:
    # bin 14: 2/4 * |0.5 - 0.96|; bin 10: 1/4 * |1 - 0.72|; bin 8: 1/4 * |0 - 0.55|
    expected = 0.5 * 0.46 + 0.25 * 0.28 + 0.25 * 0.55
    assert expected_calibration_error(HAND_PROBA, HAND_Y, bins=15) == pytest.approx(expected)


def test_brier_matches_the_hand_computed_value() -> None:
    rows = [0.05**2 * 2, 0.97**2 * 2, 0.28**2 * 2, 0.55**2 * 2]  # per row: sum over both classes
    assert brier_score(HAND_PROBA, HAND_Y) == pytest.approx(sum(rows) / 4)


def test_reliability_rows_count_every_text_once() -> None:
    table = reliability(HAND_PROBA, HAND_Y, bins=15)
    assert len(table) == 15 and sum(r["count"] for r in table) == 4
    assert table[14]["count"] == 2 and table[14]["accuracy"] == 0.5
    assert table[14]["confidence"] == pytest.approx(0.96)


@pytest.mark.parametrize("temperature", [2.5, 0.6])
def test_temperature_scaling_recovers_a_known_temperature(temperature: float) -> None:
    """Logits are the true ones times T (over-confident for T > 1, under- for T < 1): the fit finds T within
    3 % and the ECE falls."""
    true, y = sampled(20_000, 3, scale=3.0, seed=1)
    logits = true * temperature
    fitted = fit_temperature(logits, y)
    assert fitted.values["temperature"] == pytest.approx(temperature, rel=0.03)
    before = expected_calibration_error(softmax(logits), y)
    after = expected_calibration_error(fitted.apply(logits), y)
    assert after < before / 2
    assert (fitted.apply(logits).argmax(axis=1) == logits.argmax(axis=1)).all()


def test_an_alternative_is_chosen_only_when_it_measures_better_out_of_fold() -> None:
    """Binary logits shifted by a constant (a miscalibration temperature cannot fix) → Platt or isotonic;
    logits that only need a temperature → temperature, although isotonic scores better on the rows it was
    fitted on."""
    true, y = sampled(3000, 2, scale=2.0, seed=2)
    shifted = fit_calibration(true + np.array([0.0, 1.5]), y, shipped_params().calibrate, seed=0)
    assert shifted.calibration.method in ("platt", "isotonic")
    plain = fit_calibration(true * 2.0, y, shipped_params().calibrate, seed=0)
    assert plain.calibration.method == "temperature"
    isotonic = fit_isotonic(true * 2.0, y)
    in_sample = expected_calibration_error(isotonic.apply(true * 2.0), y)
    assert in_sample < plain.report["cross_fitted"]["temperature"]["ece"]


def test_cross_fitted_rows_come_from_models_that_never_saw_them() -> None:
    """Flipping one held-out row's label does not move that row's cross-fitted probability."""
    true, y = sampled(400, 2, scale=2.0, seed=3)
    folds = validation_folds(y, 5, seed=0)
    held_out = folds[0][1][0]
    changed = y.copy()
    changed[held_out] = 1 - changed[held_out]
    first = cross_fitted(true, y, "isotonic", folds)
    second = cross_fitted(true, changed, "isotonic", folds)
    assert first[held_out] == pytest.approx(second[held_out])


def test_a_stored_entry_round_trips_and_none_is_plain_softmax() -> None:
    logits = np.array([[1.0, -1.0], [0.2, 0.4]], dtype=np.float32)
    entry = Calibration("temperature", {"temperature": 2.0}).to_dict()
    assert entry == {"method": "temperature", "temperature": 2.0}
    loaded = Calibration.from_dict(entry, num_classes=2)
    assert np.allclose(loaded.apply(logits), softmax(logits / 2.0), atol=1e-6)
    assert loaded.apply(logits).dtype == np.float32
    assert np.array_equal(Calibration.from_dict(None, num_classes=2).apply(logits), softmax(logits))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"method": "magic"}, "calibration.method must be one of"),
        ({"method": "temperature", "temperature": 0}, "finite number > 0"),
        ({"method": "temperature"}, "needs ['temperature']"),
        ({"method": "platt", "slope": 1.0, "offset": 0.0}, "is for 2 classes"),
    ],
)
def test_a_bad_entry_names_the_file_and_the_field(entry: dict, message: str) -> None:
    with pytest.raises(ValueError, match="m/model.json") as info:
        Calibration.from_dict(entry, num_classes=3, source="m/model.json")
    assert message in str(info.value)


def test_reliability_plot_is_a_png(tmp_path: Path) -> None:
    true, y = sampled(500, 2, scale=2.0, seed=4)
    curves = {"raw": reliability(softmax(true * 3), y), "calibrated": reliability(softmax(true), y)}
    out = plot_reliability(curves, tmp_path / "reliability.png", "test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_set_calibration_writes_and_removes_only_its_field(tmp_path: Path) -> None:
    Manifest(labels=["a", "b"], config={"arch": "textcnn"}, variant="onnx-int8").save(tmp_path)
    before = json.loads((tmp_path / MANIFEST).read_text())
    assert "calibration" not in before  # an uncalibrated folder's model.json keeps its old shape
    set_calibration(tmp_path, {"method": "temperature", "temperature": 1.5})
    assert Manifest.load(tmp_path).calibration == {"method": "temperature", "temperature": 1.5}
    assert {
        k: v for k, v in json.loads((tmp_path / MANIFEST).read_text()).items() if k != "calibration"
    } == before
    set_calibration(tmp_path, None)
    assert json.loads((tmp_path / MANIFEST).read_text()) == before
