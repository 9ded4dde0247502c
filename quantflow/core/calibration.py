"""Calibrated class probabilities: fit a map from a model's logits to probabilities on validation data, measure
how far confidence is from accuracy, and apply the map at prediction time.

A model trained with cross-entropy and early stopping is usually over-confident, and int8 quantization moves its
logits again, so a served 0.9 need not mean "right nine times in ten". The fix kept here is outside the ONNX
graph: ``model.json`` carries a ``calibration`` entry (e.g. ``{"method": "temperature", "temperature": 1.7}``)
and :meth:`Calibration.apply` turns logits into probabilities. ONNX files stay byte-identical, so their parity
checks, sizes and latencies hold, a variant can be re-calibrated without re-exporting, and an old folder with no
entry loads as uncalibrated (plain softmax).

Methods: ``temperature`` (one scalar, keeps every argmax; the default), ``platt`` (binary: a slope and an
offset on the logit difference), ``vector`` (per-class scale and offset), ``isotonic`` (binary: a monotone
step map of the positive class's probability). The alternatives replace temperature scaling only when their
*cross-fitted* validation ECE is lower by ``min_gain``: each method is fitted on k-1 validation folds and scored
on the held-out fold, so the choice is never made on the rows a method was fitted on (ECE must drop by more
than ``min_gain`` and the NLL must not rise); the chosen method is then refitted on the whole validation split.
Temperature scaling never changes a predicted label; the alternatives may (they move the decision boundary). Numpy only at prediction time; scipy and scikit-learn load when fitting.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from quantflow.core.params import CalibrationParams

logger = logging.getLogger(__name__)

METHODS = ("none", "temperature", "platt", "vector", "isotonic")
BINARY_ONLY = ("platt", "isotonic")
TEMPERATURE_BOUNDS = (
    0.05,
    20.0,
)  # a fitted T at a bound is logged: the logits are degenerate or the data tiny
_EPS = 1e-12


# ---------------------------------------------------------------------------------------------- applying


def softmax(logits: np.ndarray) -> np.ndarray:
    """(N, C) logits → (N, C) probabilities, in the logits' dtype."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Calibration:
    """A fitted logits → probabilities map; ``values`` holds the method's numbers as stored in model.json."""

    method: str = "none"
    values: dict[str, Any] = field(default_factory=dict)

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """(N, C) logits → (N, C) calibrated probabilities; ``none`` is exactly the plain softmax."""
        if self.method == "none":
            return softmax(logits)
        z = np.asarray(logits, dtype=np.float64)
        if self.method == "temperature":
            proba = softmax(z / self.values["temperature"])
        elif self.method == "vector":
            proba = softmax(z * np.asarray(self.values["weights"]) + np.asarray(self.values["biases"]))
        elif self.method == "platt":
            score = self.values["slope"] * (z[:, 1] - z[:, 0]) + self.values["offset"]
            proba = _binary(_sigmoid(score))
        else:  # isotonic
            positive = np.interp(softmax(z)[:, 1], self.values["x"], self.values["y"])
            proba = _binary(positive)
        dtype = logits.dtype if logits.dtype.kind == "f" else np.float32
        return proba.astype(dtype)  # the served dtype does not depend on the method

    def to_dict(self) -> dict[str, Any]:
        """What model.json's ``calibration`` field holds."""
        return {"method": self.method, **self.values}

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any] | None, num_classes: int, source: str = "model.json"
    ) -> Calibration:
        """Read and check a ``calibration`` entry; None (an old folder) is uncalibrated."""
        if data is None:
            return cls()
        method = data.get("method")
        if method not in METHODS:
            raise ValueError(f"{source}: calibration.method must be one of {METHODS} (got: {method!r})")
        values = {k: v for k, v in data.items() if k != "method"}
        _check_values(method, values, num_classes, source)
        return cls(method, values)


def _sigmoid(score: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * score))  # overflow-free logistic


def _binary(positive: np.ndarray) -> np.ndarray:
    """(N,) probability of class 1 → (N, 2)."""
    return np.stack([1.0 - positive, positive], axis=1)


_REQUIRED = {
    "temperature": ("temperature",),
    "platt": ("slope", "offset"),
    "vector": ("weights", "biases"),
    "isotonic": ("x", "y"),
}


def _check_values(method: str, values: dict[str, Any], num_classes: int, source: str) -> None:
    missing = [k for k in _REQUIRED.get(method, ()) if k not in values]
    if missing:
        raise ValueError(
            f"{source}: calibration method {method!r} needs {missing} (got keys: {sorted(values)})"
        )
    if method in BINARY_ONLY and num_classes != 2:
        raise ValueError(
            f"{source}: calibration method {method!r} is for 2 classes (the model has {num_classes})"
        )
    if method == "temperature" and not (
        isinstance(values["temperature"], int | float)
        and math.isfinite(values["temperature"])
        and values["temperature"] > 0
    ):
        raise ValueError(
            f"{source}: calibration.temperature must be a finite number > 0 (got: {values['temperature']!r})"
        )
    if method == "vector" and not (len(values["weights"]) == len(values["biases"]) == num_classes):
        raise ValueError(f"{source}: calibration weights and biases need {num_classes} values each")
    if method == "isotonic" and (len(values["x"]) != len(values["y"]) or not values["x"]):
        raise ValueError(f"{source}: calibration x and y must be non-empty and of one length")


# ---------------------------------------------------------------------------------------------- metrics


def _check(proba: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    proba, y = np.asarray(proba, dtype=np.float64), np.asarray(y, dtype=np.int64)
    if proba.ndim != 2 or len(proba) != len(y) or len(y) == 0:
        raise ValueError(f"need (N, C) probabilities and N labels, N > 0 (got {proba.shape} and {y.shape})")
    if y.min() < 0 or y.max() >= proba.shape[1]:
        raise ValueError(f"labels must be class indices in [0, {proba.shape[1]}) (got {y.min()}..{y.max()})")
    return proba, y


def bin_index(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Bin b holds confidences in (b/bins, (b+1)/bins]; 0 falls in the first bin."""
    return np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)


def reliability(proba: np.ndarray, y: np.ndarray, bins: int = 15) -> list[dict[str, float]]:
    """Per equal-width bin of the max probability: its edges, row count, mean confidence and accuracy
    (the two are NaN in an empty bin)."""
    proba, y = _check(proba, y)
    confidence, right = proba.max(axis=1), proba.argmax(axis=1) == y
    index = bin_index(confidence, bins)
    rows = []
    for b in range(bins):
        member = index == b
        count = int(member.sum())
        rows.append(
            {
                "lower": b / bins,
                "upper": (b + 1) / bins,
                "count": count,
                "confidence": float(confidence[member].mean()) if count else float("nan"),
                "accuracy": float(right[member].mean()) if count else float("nan"),
            }
        )
    return rows


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE: the row-weighted mean over bins of |accuracy - mean confidence| (Guo et al. 2017)."""
    table = reliability(proba, y, bins)
    n = sum(r["count"] for r in table)
    return float(sum(r["count"] / n * abs(r["accuracy"] - r["confidence"]) for r in table if r["count"]))


def brier_score(proba: np.ndarray, y: np.ndarray) -> float:
    """Multi-class Brier score: mean over rows of sum over classes of (p_c - [c == y])^2, in [0, 2]."""
    proba, y = _check(proba, y)
    onehot = np.eye(proba.shape[1])[y]
    return float(((proba - onehot) ** 2).sum(axis=1).mean())


def negative_log_likelihood(proba: np.ndarray, y: np.ndarray) -> float:
    proba, y = _check(proba, y)
    return float(-np.log(np.clip(proba[np.arange(len(y)), y], _EPS, 1.0)).mean())


def calibration_metrics(proba: np.ndarray, y: np.ndarray, bins: int = 15) -> dict[str, float]:
    """ECE, Brier, NLL and accuracy of one set of probabilities."""
    proba, y = _check(proba, y)
    return {
        "ece": round(expected_calibration_error(proba, y, bins), 6),
        "brier": round(brier_score(proba, y), 6),
        "nll": round(negative_log_likelihood(proba, y), 6),
        "accuracy": round(float((proba.argmax(axis=1) == y).mean()), 6),
    }


def plot_reliability(curves: Mapping[str, list[dict[str, float]]], out: Path, title: str) -> Path:
    """A reliability diagram as a PNG: above, accuracy vs mean confidence per bin, one line per curve (the
    diagonal is perfect calibration); below, the rows per bin (log scale: most rows sit near 1.0).
    ``curves`` maps a legend name to :func:`reliability` rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6.5), height_ratios=[3, 1], sharex=True)
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    for name, table in curves.items():
        used = [r for r in table if r["count"]]
        top.plot([r["confidence"] for r in used], [r["accuracy"] for r in used], marker="o", label=name)
        centers = [(r["lower"] + r["upper"]) / 2 for r in table]
        bottom.step(centers, [r["count"] or float("nan") for r in table], where="mid", label=name)
    top.set(ylabel="accuracy", title=title, xlim=(0, 1), ylim=(0, 1))
    top.legend(loc="upper left")
    bottom.set(xlabel="mean confidence (max probability)", ylabel="rows", yscale="log")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------------------------- fitting


def _logits_labels(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(y, dtype=np.int64)
    if z.ndim != 2 or z.shape[1] < 2 or len(z) != len(y) or len(y) == 0:
        raise ValueError(f"need (N, C >= 2) logits and N labels, N > 0 (got {z.shape} and {y.shape})")
    if not np.isfinite(z).all():
        raise ValueError(
            f"logits hold {int((~np.isfinite(z)).sum())} non-finite values: check the model export"
        )
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"labels must be class indices in [0, {z.shape[1]}) (got {y.min()}..{y.max()})")
    return z, y


def _nll_and_grad(z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean NLL of softmax(z) and its gradient with respect to z, (N, C)."""
    shifted = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    rows = np.arange(len(y))
    loss = float((log_norm - shifted[rows, y]).mean())
    grad = np.exp(shifted - log_norm[:, None])
    grad[rows, y] -= 1.0
    return loss, grad / len(y)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> Calibration:
    """The T minimizing the NLL of softmax(logits / T). The NLL is convex in 1/T, hence unimodal in log T: a
    bounded 1-D search (Brent) on log T converges without a starting guess or gradients."""
    from scipy.optimize import minimize_scalar

    z, y = _logits_labels(logits, y)
    low, high = (math.log(b) for b in TEMPERATURE_BOUNDS)
    found = minimize_scalar(
        lambda log_t: _nll_and_grad(z / math.exp(log_t), y)[0],
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-6},
    )
    temperature = math.exp(float(found.x))
    if min(abs(found.x - low), abs(found.x - high)) < 1e-3:
        logger.warning(
            "calibration: temperature %.3g sits at the search bound %s (%d rows): the logits separate the "
            "validation rows perfectly or carry no signal; more validation rows would help",
            temperature,
            TEMPERATURE_BOUNDS,
            len(y),
        )
    return Calibration("temperature", {"temperature": round(temperature, 6)})


def _minimize(loss_and_grad: Any, start: np.ndarray) -> np.ndarray:
    from scipy.optimize import minimize

    found = minimize(loss_and_grad, start, jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return found.x


_RIDGE = 1e-4  # pulls scales toward 1 and offsets toward 0: finite answers on separable validation data


def fit_vector(logits: np.ndarray, y: np.ndarray) -> Calibration:
    """Per-class scale w and offset b of softmax(z * w + b), NLL-fitted (Guo et al.'s vector scaling)."""
    z, y = _logits_labels(logits, y)
    c = z.shape[1]

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:c], theta[c:]
        loss, g = _nll_and_grad(z * w + b, y)  # g: (N, C)
        grad = np.concatenate([(g * z).sum(axis=0) + _RIDGE * (w - 1), g.sum(axis=0) + _RIDGE * b])
        return loss + _RIDGE / 2 * float(((w - 1) ** 2).sum() + (b**2).sum()), grad

    theta = _minimize(loss_and_grad, np.concatenate([np.ones(c), np.zeros(c)]))
    values = {
        "weights": [round(float(v), 6) for v in theta[:c]],
        "biases": [round(float(v), 6) for v in theta[c:]],
    }
    return Calibration("vector", values)


def fit_platt(logits: np.ndarray, y: np.ndarray) -> Calibration:
    """Binary: P(class 1) = sigmoid(slope * (z1 - z0) + offset), NLL-fitted (Platt scaling on the logit gap)."""
    z, y = _logits_labels(logits, y)
    if z.shape[1] != 2:
        raise ValueError(f"Platt scaling is for 2 classes (got {z.shape[1]}); use vector or temperature")
    gap, positive = z[:, 1] - z[:, 0], (y == 1).astype(np.float64)

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        slope, offset = theta
        score = slope * gap + offset
        loss = float((np.logaddexp(0.0, score) - positive * score).mean())  # logistic NLL
        g = (_sigmoid(score) - positive) / len(y)
        grad = np.array([(g * gap).sum() + _RIDGE * (slope - 1), g.sum() + _RIDGE * offset])
        return loss + _RIDGE / 2 * ((slope - 1) ** 2 + offset**2), grad

    slope, offset = _minimize(loss_and_grad, np.array([1.0, 0.0]))
    return Calibration("platt", {"slope": round(float(slope), 6), "offset": round(float(offset), 6)})


def fit_isotonic(logits: np.ndarray, y: np.ndarray) -> Calibration:
    """Binary: a monotone step map of softmax's P(class 1) (scikit-learn's isotonic regression), stored as its
    breakpoints and applied with linear interpolation. Outputs are kept within [0.5/n, 1 - 0.5/n] so that no
    served probability is a flat 0 or 1 on the strength of n validation rows."""
    from sklearn.isotonic import IsotonicRegression

    z, y = _logits_labels(logits, y)
    if z.shape[1] != 2:
        raise ValueError(
            f"isotonic calibration is for 2 classes (got {z.shape[1]}); use vector or temperature"
        )
    margin = 0.5 / len(y)
    fitted = IsotonicRegression(y_min=margin, y_max=1 - margin, out_of_bounds="clip")
    fitted.fit(softmax(z)[:, 1], (y == 1).astype(np.float64))
    values = {
        "x": [float(v) for v in fitted.X_thresholds_],
        "y": [round(float(v), 8) for v in fitted.y_thresholds_],
    }
    return Calibration("isotonic", values)


FITTERS = {"temperature": fit_temperature, "vector": fit_vector, "platt": fit_platt, "isotonic": fit_isotonic}


def candidate_methods(num_classes: int) -> list[str]:
    """Temperature first (the default), then the alternatives that fit this many classes."""
    return ["temperature", "platt", "isotonic"] if num_classes == 2 else ["temperature", "vector"]


@dataclass(frozen=True)
class CalibrationFit:
    """The fitted map and how it was chosen: per method, metrics of its cross-fitted validation probabilities."""

    calibration: Calibration
    report: dict[str, Any]


def validation_folds(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, seeded folds of the validation rows; fewer folds when a class has fewer rows than ``folds``
    (none when a class has fewer than 2: no cross-fitting is possible)."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    k = min(folds, int(counts[counts > 0].min()))
    if k < 2:
        return []
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def cross_fitted(
    logits: np.ndarray, y: np.ndarray, method: str, folds: list[tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """(N, C) probabilities where each row comes from ``method`` fitted on the other folds only."""
    if method == "none":
        return softmax(np.asarray(logits, dtype=np.float64))
    out = np.empty(logits.shape, dtype=np.float64)
    for fit_rows, held_out in folds:
        out[held_out] = FITTERS[method](logits[fit_rows], y[fit_rows]).apply(
            logits[held_out].astype(np.float64)
        )
    return out


def fit_calibration(
    logits: np.ndarray, y: np.ndarray, params: CalibrationParams, seed: int
) -> CalibrationFit:
    """Fit ``params.method`` on all of (logits, y); ``auto`` first picks the method by cross-fitted ECE."""
    z, y = _logits_labels(logits, y)
    if params.method == "none":
        return CalibrationFit(Calibration(), {"chosen": "none", "reason": "calibrate.method: none"})
    if params.method != "auto":
        if params.method in BINARY_ONLY and z.shape[1] != 2:
            raise ValueError(
                f"calibrate.method {params.method!r} is for 2 classes (the model has {z.shape[1]})"
            )
        report = {"chosen": params.method, "reason": f"calibrate.method: {params.method}", "rows": len(y)}
        return CalibrationFit(FITTERS[params.method](z, y), report)
    folds = validation_folds(y, params.folds, seed)
    if not folds:
        reason = "a class has fewer than 2 validation rows: temperature without cross-fitted comparison"
        return CalibrationFit(
            fit_temperature(z, y), {"chosen": "temperature", "reason": reason, "rows": len(y)}
        )
    methods = ["none", *candidate_methods(z.shape[1])]
    scores = {m: calibration_metrics(cross_fitted(z, y, m, folds), y, params.bins) for m in methods}
    chosen, reason = choose_method(scores, params.min_gain)
    report = {"chosen": chosen, "reason": reason, "rows": len(y), "folds": len(folds), "cross_fitted": scores}
    logger.info("calibration: %s (%s)", chosen, reason)
    return CalibrationFit(FITTERS[chosen](z, y), report)


def choose_method(scores: Mapping[str, Mapping[str, float]], min_gain: float) -> tuple[str, str]:
    """Temperature, unless an alternative measures better out of fold on both counts: ECE lower by more than
    ``min_gain`` *and* NLL (a proper scoring rule) no higher. ECE alone is a noisy binned estimate: on data that
    is exactly temperature-calibrated, vector scaling's cross-fitted ECE still came out 0.009 lower by chance
    (4,000 rows, 3 classes), with a higher NLL."""
    base = scores["temperature"]
    better = [
        m
        for m in scores
        if m not in ("none", "temperature")
        and scores[m]["ece"] < base["ece"] - min_gain
        and scores[m]["nll"] <= base["nll"]
    ]
    if better:
        best = min(better, key=lambda m: scores[m]["ece"])
        return best, (
            f"cross-fitted ECE {scores[best]['ece']:.4f} < temperature's {base['ece']:.4f} - {min_gain}, "
            f"NLL {scores[best]['nll']:.4f} <= {base['nll']:.4f}"
        )
    return (
        "temperature",
        f"no alternative beat temperature's cross-fitted ECE {base['ece']:.4f} by {min_gain} without a higher NLL",
    )
