"""The register step: one MLflow run, the chosen ONNX variant as a pyfunc model version, the promotion gate.

Every new version gets the alias ``challenger``; it also gets ``staging`` when the gate passes: the variant's
accuracy trails the fp32 PyTorch model by at most ``register.max_drop``, its macro-F1 reaches
``register.min_f1``, and (once a version holds ``staging``) it scores within ``register.champion_tolerance``
of that champion, re-evaluated on today's test split. Aliases only: registry stages are deprecated.

Tracking goes to ``MLFLOW_TRACKING_URI`` when set (e.g. an ``mlflow server``), else to the embedded default
``sqlite:///<root>/mlflow.db`` with artifacts under ``<root>/mlartifacts/``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.entities import Metric
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from prefect import task

import quantflow.onnx_model
import serving.pyfunc
from quantflow.bundle import MANIFEST, TOKENIZER_FILES, Manifest
from quantflow.errors import QuantflowError
from quantflow.onnx_model import MODEL_FILE, OnnxClassifier
from quantflow.params import Params, RegisterParams
from serving.pyfunc import ARTIFACT_KEY, PROBA_PREFIX, TEXT_COLUMN, QuantflowModel, model_signature

logger = logging.getLogger(__name__)

CHALLENGER, STAGING = "challenger", "staging"
TRACKING_ENV = "MLFLOW_TRACKING_URI"
MODEL_NAME = "model"  # the LoggedModel's name inside the run
# pinned from the running environment: inferring requirements costs log_model 5-7 s
PINNED = ("mlflow", "onnxruntime", "numpy", "pandas", "spacy")
# which step writes each input, for error messages
PRODUCERS = {"metrics.json": "evaluate", "train_history.json": "train", "compression.json": "compress"}
_UNSAFE_METRIC_CHARS = re.compile(r"[^\w.\- /]")


class RegisterError(QuantflowError):
    """An input of the register step is missing or malformed: raised before anything is logged."""


@dataclass(frozen=True)
class RegisterResult:
    run_id: str
    model_name: str
    version: str
    promoted: bool
    gate: dict  # {"passed", "verdict", "checks": [{"name", "value", "threshold", "passed", "detail"}...]}
    tracking_uri: str


@dataclass(frozen=True)
class Check:
    """One gate check: ``passed`` compares ``value`` with ``threshold``; ``detail`` says why in words."""

    name: str
    value: float | None
    threshold: float | None
    passed: bool
    detail: str


@dataclass(frozen=True)
class Inputs:
    """Everything register reads, loaded and checked before anything is logged."""

    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    compression: dict[str, Any]
    reports_dir: Path
    variant: str
    variant_dir: Path
    texts: list[str]
    labels: list[str]


# --- inputs -------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    if not path.is_file():
        step = PRODUCERS.get(path.name, "earlier")
        raise RegisterError(f"{path}: report not found; run the {step} step first (e.g. `dvc repro`)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RegisterError(f"{path}: not valid JSON ({exc}); rerun the step that writes it") from None


def _lookup(data: Any, keys: tuple[str, ...], path: Path) -> Any:
    """``data[k1][k2]...``, or a RegisterError naming the file and the dotted key that is missing."""
    node = data
    for i, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            dotted = ".".join(keys[: i + 1])
            raise RegisterError(f"{path}: missing key {dotted!r}; rerun the step that writes it")
        node = node[key]
    return node


def _check_variant_dir(folder: Path) -> None:
    required = (MODEL_FILE, MANIFEST, *TOKENIZER_FILES)
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        raise RegisterError(
            f"{folder}: variant folder lacks {', '.join(missing)}; run the compress step first "
            "(e.g. `dvc repro`)"
        )


def _read_test_split(path: Path) -> tuple[list[str], list[str]]:
    if not path.is_file():
        raise RegisterError(f"{path}: test split not found; run the split step first (e.g. `dvc repro`)")
    frame = pd.read_parquet(path)
    missing = {"text", "label"} - set(frame.columns)
    if missing or frame.empty:
        raise RegisterError(
            f"{path}: need a non-empty split with columns text and label "
            f"(got {len(frame)} rows, columns {list(frame.columns)})"
        )
    return frame["text"].astype(str).tolist(), frame["label"].astype(str).tolist()


def load_inputs(params: Params, root: Path) -> Inputs:
    """Read and check the reports, the chosen variant folder and the test split: fail before logging."""
    reports = root / params.paths.reports_dir
    metrics = _read_json(reports / "metrics.json")
    history = _read_json(reports / "train_history.json")
    if not isinstance(history, list) or not all(isinstance(row, dict) and "epoch" in row for row in history):
        raise RegisterError(
            f"{reports / 'train_history.json'}: expected a list of {{'epoch': ...}} rows; "
            "rerun the train step"
        )
    compression = _read_json(reports / "compression.json")
    _lookup(metrics, ("fp32", "accuracy"), reports / "metrics.json")
    variant = str(_lookup(compression, ("chosen",), reports / "compression.json"))
    for key in ("accuracy", "macro_f1"):
        _lookup(compression, ("variants", variant, key), reports / "compression.json")
    variant_dir = root / params.paths.variants_dir / variant
    _check_variant_dir(variant_dir)
    texts, labels = _read_test_split(root / params.paths.split_dir / "test.parquet")
    return Inputs(metrics, history, compression, reports, variant, variant_dir, texts, labels)


# --- tracking set-up ----------------------------------------------------------------------------------------


def resolve_tracking_uri(root: Path) -> tuple[str, Path | None]:
    """``MLFLOW_TRACKING_URI`` if set (the server picks artifact locations), else the embedded sqlite default
    and the local artifact folder to create the experiment with."""
    env = os.environ.get(TRACKING_ENV)
    if env:
        return env, None
    root = root.resolve()
    return f"sqlite:///{root / 'mlflow.db'}", root / "mlartifacts"


@contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (runs, log_model, models:/ URIs) at ``uri`` for the block.

    ``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` into os.environ, so it is undone
    afterwards; when that variable is already set it is the URI in use and nothing is touched.
    """
    if os.environ.get(TRACKING_ENV):
        yield
        return
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)


@contextmanager
def restoring_sys_path() -> Iterator[None]:
    """pyfunc prepends a model's code folder (often a temp dir) to sys.path on every load, including the
    input-example check inside log_model: take those entries off again so a long-lived worker does not collect
    them."""
    saved = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = saved


def ensure_experiment(client: mlflow.MlflowClient, name: str, artifact_dir: Path | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = artifact_dir.as_uri() if artifact_dir is not None else None
        logger.info("register: creating experiment %r (artifacts: %s)", name, location or "server default")
        return client.create_experiment(name, artifact_location=location)
    if experiment.lifecycle_stage == "deleted":
        raise RegisterError(
            f"MLflow experiment {name!r} (id {experiment.experiment_id}) is deleted; restore it with "
            f"`mlflow experiments restore --experiment-id {experiment.experiment_id}`, "
            "or set register.experiment"
        )
    return experiment.experiment_id


# --- the gate -----------------------------------------------------------------------------------------------


def absolute_checks(inputs: Inputs, rp: RegisterParams) -> list[Check]:
    """Accuracy drop versus the fp32 PyTorch model, and the variant's own macro-F1."""
    fp32 = float(inputs.metrics["fp32"]["accuracy"])
    scores = inputs.compression["variants"][inputs.variant]
    drop = round(fp32 - float(scores["accuracy"]), 6)
    f1 = float(scores["macro_f1"])
    return [
        Check(
            "max_drop",
            drop,
            rp.max_drop,
            drop <= rp.max_drop,
            f"{inputs.variant} accuracy {float(scores['accuracy']):.4f} vs fp32 PyTorch {fp32:.4f}",
        ),
        Check("min_f1", f1, rp.min_f1, f1 >= rp.min_f1, f"{inputs.variant} macro-F1 on the test split"),
    ]


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
    return model.aliases.get(STAGING)


def champion_predictions(name: str, texts: list[str]) -> pd.DataFrame:
    """Load ``models:/<name>@staging`` with pyfunc and predict ``texts``."""
    model = mlflow.pyfunc.load_model(f"models:/{name}@{STAGING}")
    return model.predict(pd.DataFrame({TEXT_COLUMN: texts}))


def champion_check(
    name: str,
    version: str,
    inputs: Inputs,
    candidate_labels: list[str],
    candidate_acc: float,
    tolerance: float,
) -> Check:
    out = champion_predictions(name, inputs.texts)
    champion_labels = sorted(c[len(PROBA_PREFIX) :] for c in out.columns if c.startswith(PROBA_PREFIX))
    if champion_labels != sorted(candidate_labels):
        return Check(
            "champion",
            round(candidate_acc, 6),
            None,
            False,
            f"champion v{version} predicts labels {champion_labels}, the candidate "
            f"{sorted(candidate_labels)}: not comparable; move @{STAGING} by hand if that is "
            "intended",
        )
    champion_acc = accuracy(out["label"].astype(str).tolist(), inputs.labels)
    threshold = round(champion_acc - tolerance, 6)
    return Check(
        "champion",
        round(candidate_acc, 6),
        threshold,
        candidate_acc >= threshold,
        f"champion v{version} scores {champion_acc:.4f} on today's {len(inputs.texts)} test texts",
    )


def run_gate(client: mlflow.MlflowClient, name: str, inputs: Inputs, rp: RegisterParams) -> dict[str, Any]:
    """Every check, then the verdict. Runs before anything is logged, against the current champion."""
    checks = absolute_checks(inputs, rp)
    candidate = OnnxClassifier(inputs.variant_dir, threads=1)
    candidate_acc = accuracy(candidate.predict(inputs.texts), inputs.labels)
    version = staging_version(client, name)
    if version is None:
        checks.append(
            Check(
                "champion",
                round(candidate_acc, 6),
                None,
                True,
                f"no version behind @{STAGING} yet: promoted if the other checks pass",
            )
        )
    else:
        checks.append(
            champion_check(name, version, inputs, candidate.labels, candidate_acc, rp.champion_tolerance)
        )
    passed = all(c.passed for c in checks)
    verdict = (
        f"promoted to @{STAGING}"
        if passed
        else f"held at @{CHALLENGER}: " + ", ".join(c.name for c in checks if not c.passed) + " failed"
    )
    return {
        "passed": passed,
        "verdict": verdict,
        "checks": [asdict(c) for c in checks],
        "candidate_test_accuracy": round(candidate_acc, 6),
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def gate_tags(gate: dict[str, Any]) -> dict[str, str]:
    """``gate.<check>.{value,threshold,passed,detail}`` plus ``gate.passed`` and ``gate.verdict``."""
    tags = {"gate.passed": str(gate["passed"]).lower(), "gate.verdict": gate["verdict"]}
    for check in gate["checks"]:
        prefix = f"gate.{check['name']}"
        tags[f"{prefix}.value"] = _fmt(check["value"])
        tags[f"{prefix}.threshold"] = _fmt(check["threshold"])
        tags[f"{prefix}.passed"] = str(check["passed"]).lower()
        tags[f"{prefix}.detail"] = check["detail"]
    return tags


def gate_markdown(gate: dict[str, Any], variant: str, digest: str) -> str:
    rows = [
        f"| {c['name']} | {_fmt(c['value'])} | {_fmt(c['threshold'])} | "
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


# --- the run ------------------------------------------------------------------------------------------------


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict → ``{"train.lr": 0.002, ...}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        flat.update(flatten(value, dotted) if isinstance(value, dict) else {dotted: value})
    return flat


def numeric_leaves(data: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested numbers → ``{"<prefix>_<k1>_<k2>": x}``, keys made safe for MLflow metric names."""
    out: dict[str, float] = {}
    for key, value in flatten(data, prefix).items():
        if isinstance(value, int | float):
            out[_UNSAFE_METRIC_CHARS.sub("_", key.replace(".", "_"))] = float(value)
    return out


def final_metrics(inputs: Inputs, gate: dict[str, Any]) -> dict[str, float]:
    """fp32_* and baseline_* (metrics.json), onnx_<variant>_* (accuracy, size...), compress_*, gate_*."""
    metrics = numeric_leaves(inputs.metrics)
    metrics |= numeric_leaves(inputs.compression["variants"], "onnx")
    metrics |= numeric_leaves({k: v for k, v in inputs.compression.items() if k != "variants"}, "compress")
    metrics["gate_candidate_test_accuracy"] = gate["candidate_test_accuracy"]
    for check in gate["checks"]:
        if check["value"] is not None:
            metrics[f"gate_{check['name']}_value"] = float(check["value"])
    return metrics


def history_metrics(history: list[dict[str, Any]]) -> list[Metric]:
    """One Metric per (epoch, key), ``step=epoch``: the learning curves in the MLflow UI."""
    now = int(time.time() * 1000)
    return [
        Metric(key=key, value=float(value), timestamp=now, step=int(row["epoch"]))
        for row in history
        for key, value in row.items()
        if key != "epoch" and isinstance(value, int | float)
    ]


def pip_requirements(variant_dir: Path) -> list[str]:
    """Exact pins of what the pyfunc model imports; jieba too when the tokenizer segments with it."""
    names = list(PINNED)
    tokenizer = json.loads((variant_dir / "tokenizer.json").read_text(encoding="utf-8"))
    if tokenizer.get("segmenter") == "jieba":
        names.append("jieba")
    return [f"{name}=={metadata.version(name)}" for name in names]


def log_pyfunc(inputs: Inputs, labels: list[str]) -> ModelInfo:
    """The variant folder as a pyfunc LoggedModel that carries its own code (quantflow + serving)."""
    return mlflow.pyfunc.log_model(
        name=MODEL_NAME,
        python_model=QuantflowModel(),
        artifacts={ARTIFACT_KEY: str(inputs.variant_dir)},
        code_paths=[str(Path(module.__file__).parent) for module in (quantflow.onnx_model, serving.pyfunc)],
        signature=model_signature(labels),
        input_example=pd.DataFrame({TEXT_COLUMN: inputs.texts[:2]}),
        pip_requirements=pip_requirements(inputs.variant_dir),
    )


def log_run(
    client: mlflow.MlflowClient,
    experiment_id: str,
    params: Params,
    inputs: Inputs,
    gate: dict[str, Any],
    run_tags: dict[str, str],
) -> tuple[str, ModelInfo]:
    """One run: flattened params, learning curves, final metrics, reports, gate and the pyfunc model."""
    labels = Manifest.load(inputs.variant_dir).labels
    run_name = f"register-{inputs.variant}-{params.digest()[:8]}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=run_tags) as run:
        run_id = run.info.run_id
        mlflow.log_params(flatten(params.model_dump(mode="json", by_alias=True)))
        client.log_batch(run_id, metrics=history_metrics(inputs.history))
        mlflow.log_metrics(final_metrics(inputs, gate))
        mlflow.log_artifacts(str(inputs.reports_dir), artifact_path="reports")
        mlflow.log_dict(gate, "gate.json")
        info = log_pyfunc(inputs, labels)
    return run_id, info


# --- registry -----------------------------------------------------------------------------------------------


def register_version(
    client: mlflow.MlflowClient,
    name: str,
    info: ModelInfo,
    version_tags: dict[str, str],
    description: str,
    passed: bool,
) -> ModelVersion:
    """A new version with tags and description; alias ``challenger`` always, ``staging`` only if it passed."""
    version = mlflow.register_model(info.model_uri, name, tags=version_tags)
    client.update_model_version(name, version.version, description=description)
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    if passed:
        client.set_registered_model_alias(name, STAGING, version.version)
    return version


def register(params: Params, root: Path, tags: dict[str, str] | None = None) -> RegisterResult:
    """Log the run, register the chosen variant as a new version of ``params.model_name`` and apply the gate.

    ``tags`` (git commit, dvc.lock digest, flow-run id...) go on the run and the version, beside
    ``params_digest``.
    Raises RegisterError, naming the file, when a report, the variant folder or the test split is missing.
    """
    started = time.perf_counter()
    inputs = load_inputs(params, root)
    uri, artifact_dir = resolve_tracking_uri(root)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = params.model_name
    base_tags = {**(tags or {}), "params_digest": params.digest(), "quantflow.variant": inputs.variant}
    with using_tracking_uri(uri), restoring_sys_path():
        experiment_id = ensure_experiment(client, params.register.experiment, artifact_dir)
        gate = run_gate(client, name, inputs, params.register)
        all_tags = {**base_tags, **gate_tags(gate)}
        run_id, info = log_run(client, experiment_id, params, inputs, gate, all_tags)
        version = register_version(
            client, name, info, all_tags, gate_markdown(gate, inputs.variant, params.digest()), gate["passed"]
        )
    logger.info(
        "register: %s v%s (run %s): %s, in %.1f s on %s",
        name,
        version.version,
        run_id,
        gate["verdict"],
        time.perf_counter() - started,
        uri,
    )
    return RegisterResult(
        run_id=run_id,
        model_name=name,
        version=str(version.version),
        promoted=bool(gate["passed"]),
        gate=gate,
        tracking_uri=uri,
    )


def _retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient failures (a server blip), not a missing report: that needs an earlier step first."""
    return not isinstance(state.result(raise_on_failure=False), QuantflowError)


@task(name="register", retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_unless_user_error)
def register_task(params: Params, root: Path, tags: dict[str, str] | None = None) -> RegisterResult:
    return register(params, root, tags)
