"""The promotion gate: absolute checks on the candidate, a paired test against the champion, the verdict.

The candidate passes when its accuracy trails the exported fp32 model (ONNX, parity-checked against the trained
one) by at most ``compress.max_drop_pp`` points, the very rule compress chose it by
(quantflow.core.stats.accuracy_drop_pp), its
macro-F1 reaches ``register.min_f1``, its latency and size stay under the optional ceilings, and (once a version
holds ``staging``) a paired test on today's test split against that champion (quantflow/core/stats.py)
satisfies ``register.champion_rule``.

The champion is evaluated from its variant folder (the ``ARTIFACT_KEY`` artifact of its registered model) with
the core's ONNX classifier, not through its pyfunc: versions logged with a DataFrame pyfunc and versions logged
with the type-hinted one compare alike.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from quantflow.core.bundle import ARTIFACT_KEY, MLMODEL, logged_variant_path
from quantflow.core.errors import QuantflowError
from quantflow.core.onnx_model import OnnxClassifier
from quantflow.core.params import RegisterParams
from quantflow.core.stats import accuracy_drop_pp, compare_paired, judge
from quantflow.registry.candidate import Inputs, latency_ms
from quantflow.registry.promotion import CHALLENGER, STAGING

logger = logging.getLogger(__name__)


class ChampionError(QuantflowError):
    """The champion's registered model holds no quantflow variant folder to evaluate."""


@dataclass(frozen=True)
class Check:
    """One gate check: ``passed`` compares ``value`` with ``threshold``; ``detail`` says why in words."""

    name: str
    value: float | None
    threshold: float | None
    passed: bool
    detail: str


def _ceiling_check(name: str, ceiling: float, value: float | None, unit: str, variant: str) -> Check:
    if value is None:
        return Check(name, None, ceiling, True, f"compression.json reports no {unit}: skipped")
    return Check(name, value, ceiling, value <= ceiling, f"{variant}: {value:g} {unit}")


def absolute_checks(inputs: Inputs, rp: RegisterParams, max_drop_pp: float) -> list[Check]:
    """Accuracy drop versus the exported fp32 model (compression.json, the reference compress chose by) in points,
    the variant's macro-F1, optional ceilings."""
    fp32 = float(inputs.compression["variants"]["fp32"]["accuracy"])
    scores = inputs.scores
    drop = accuracy_drop_pp(fp32, float(scores["accuracy"]))
    f1 = float(scores["macro_f1"])
    checks = [
        Check(
            "max_drop_pp",
            drop,
            max_drop_pp,
            drop <= max_drop_pp + 1e-9,
            f"{inputs.variant} accuracy {float(scores['accuracy']):.4f} vs fp32 {fp32:.4f}: {drop:g} points",
        ),
        Check("min_f1", f1, rp.min_f1, f1 >= rp.min_f1, f"{inputs.variant} macro-F1 on the test split"),
    ]
    size = scores.get("size_bytes")
    for name, ceiling, value, unit in (
        ("max_latency_ms", rp.max_latency_ms, latency_ms(scores), "ms"),
        (
            "max_size_bytes",
            rp.max_size_bytes,
            float(size) if isinstance(size, int | float) else None,
            "bytes",
        ),
    ):
        if ceiling is not None:
            checks.append(_ceiling_check(name, ceiling, value, unit, inputs.variant))
    if rp.max_ece is not None:
        checks.append(ece_check(inputs, rp.max_ece))
    return checks


def ece_check(inputs: Inputs, ceiling: float) -> Check:
    """The chosen variant's expected calibration error on the test split with its stored calibration
    (calibration.json, written by compress) against ``register.max_ece``."""
    before, after = inputs.calibrated["before"]["ece"], inputs.calibrated["after"]["ece"]
    method = inputs.calibration["calibration"]["method"]
    detail = f"{inputs.variant} test ECE {after:.4f} with {method} calibration (uncalibrated {before:.4f})"
    return Check("max_ece", float(after), ceiling, after <= ceiling, detail)


def accuracy(predicted: list[str], expected: list[str]) -> float:
    return sum(p == e for p, e in zip(predicted, expected, strict=True)) / len(expected)


def staging_version(client: mlflow.MlflowClient, name: str) -> str | None:
    """The version behind ``@staging``, or None when the model or the alias does not exist yet."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    version = model.aliases.get(STAGING)
    return None if version is None else str(version)  # the sqlite store answers an int


def download_variant(client: mlflow.MlflowClient, name: str, version: str, dst: Path) -> Path:
    """The variant folder of ``name`` version ``version`` (by number, not alias: the alias may move meanwhile),
    downloaded into ``dst``: the model's MLmodel says where its ``ARTIFACT_KEY`` artifact sits."""
    root = client.get_model_version_download_uri(name, version).rstrip("/")
    mlmodel = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{root}/{MLMODEL}", dst_path=str(dst)))
    relative = logged_variant_path(mlmodel.read_text(encoding="utf-8"))
    if relative is None:
        raise ChampionError(
            f"{name} v{version} ({root}) has no {ARTIFACT_KEY!r} artifact: it was not logged by quantflow's "
            f"register step; move @{STAGING} to a quantflow version (`quantflow promote --version N`)"
        )
    folder = dst / "variant"
    folder.mkdir()
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{root}/{relative}", dst_path=str(folder)))


def champion_predictions(
    client: mlflow.MlflowClient, name: str, version: str, texts: list[str]
) -> tuple[list[str], list[str]]:
    """The champion's labels and its predicted label for each of ``texts``."""
    with tempfile.TemporaryDirectory(prefix="quantflow-champion-") as scratch:
        champion = OnnxClassifier(download_variant(client, name, version, Path(scratch)), threads=1)
        return list(champion.labels), champion.predict(texts)


def champion_check(
    client: mlflow.MlflowClient,
    name: str,
    version: str,
    inputs: Inputs,
    candidate: list[str],
    labels: list[str],
    rp: RegisterParams,
) -> tuple[Check, dict[str, Any] | None]:
    """The paired test against the champion on the same texts; the comparison's figures for the tags."""
    champion_labels, predicted = champion_predictions(client, name, version, inputs.texts)
    if sorted(champion_labels) != sorted(labels):
        detail = (
            f"champion v{version} predicts labels {sorted(champion_labels)}, the candidate {sorted(labels)}: "
            f"not comparable; move @{STAGING} by hand (`quantflow promote`) if that is intended"
        )
        return Check("champion", round(accuracy(candidate, inputs.labels), 6), None, False, detail), None
    cmp = compare_paired(
        candidate, predicted, inputs.labels, confidence=1 - rp.alpha, samples=rp.bootstrap_samples
    )
    passed, why = judge(cmp, rp.champion_rule, rp.alpha, rp.champion_tolerance)
    threshold = -rp.champion_tolerance if rp.champion_rule == "not_worse" else 0.0
    detail = (
        f"{rp.champion_rule} vs champion v{version} ({cmp.champion_accuracy:.4f}) on today's {cmp.n} "
        f"test texts: {why}"
    )
    return Check("champion", round(cmp.difference, 6), threshold, passed, detail), {
        "version": version,
        **asdict(cmp),
    }


def verdict(checks: list[Check]) -> str:
    if all(c.passed for c in checks):
        return f"promoted to @{STAGING}"
    return f"held at @{CHALLENGER}: " + ", ".join(c.name for c in checks if not c.passed) + " failed"


def run_gate(
    client: mlflow.MlflowClient,
    name: str,
    inputs: Inputs,
    rp: RegisterParams,
    max_drop_pp: float,
    extra: tuple[Check, ...] = (),
) -> dict[str, Any]:
    """Every check, then the verdict. Runs before anything is logged, against the current champion. ``extra``:
    checks the night made outside the registry (live drift, quantflow/intake/live.py), judged like the others."""
    checks = absolute_checks(inputs, rp, max_drop_pp)
    candidate = OnnxClassifier(inputs.variant_dir, threads=1)
    predicted = candidate.predict(inputs.texts)
    candidate_acc = accuracy(predicted, inputs.labels)
    version = staging_version(client, name)
    paired = None
    if version is None:
        detail = f"no version behind @{STAGING} yet: promoted if the other checks pass"
        checks.append(Check("champion", round(candidate_acc, 6), None, True, detail))
    else:
        check, paired = champion_check(client, name, version, inputs, predicted, list(candidate.labels), rp)
        checks.append(check)
    checks += extra
    for c in checks:
        logger.info("gate: %s %s: %s", "pass" if c.passed else "FAIL", c.name, c.detail)
    return {
        "passed": all(c.passed for c in checks),
        "verdict": verdict(checks),
        "checks": [asdict(c) for c in checks],
        "candidate_test_accuracy": round(candidate_acc, 6),
        "champion_version": version,
        "paired": paired,
    }


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def gate_tags(gate: dict[str, Any]) -> dict[str, str]:
    """``gate.<check>.{value,threshold,passed,detail}``, ``gate.passed``, ``gate.verdict``, ``gate.paired.*``."""
    tags = {"gate.passed": str(gate["passed"]).lower(), "gate.verdict": gate["verdict"]}
    for check in gate["checks"]:
        prefix = f"gate.{check['name']}"
        tags[f"{prefix}.value"] = fmt(check["value"])
        tags[f"{prefix}.threshold"] = fmt(check["threshold"])
        tags[f"{prefix}.passed"] = str(check["passed"]).lower()
        tags[f"{prefix}.detail"] = check["detail"]
    for key, value in (gate.get("paired") or {}).items():
        tags[f"gate.paired.{key}"] = value if isinstance(value, str) else fmt(value)
    return tags


def gate_markdown(gate: dict[str, Any], variant: str, digest: str) -> str:
    """The gate as the model card shows it: the verdict, then one table row per check."""
    rows = [
        f"| {c['name']} | {fmt(c['value'])} | {fmt(c['threshold'])} | "
        f"{'pass' if c['passed'] else '**fail**'} | {c['detail']} |"
        for c in gate["checks"]
    ]
    return "\n".join(
        [
            f"**Gate: {'passed' if gate['passed'] else 'failed'}** ({gate['verdict']}). "
            f"ONNX variant `{variant}`, params digest `{digest}`.",
            "",
            "| check | value | threshold | result | detail |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
