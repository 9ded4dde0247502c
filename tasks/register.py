"""The register step: one MLflow run, the chosen ONNX variant as a pyfunc model version, the promotion gate.

Every new version gets the alias ``challenger``; it also gets ``staging`` when the gate passes: the variant's
accuracy trails the fp32 PyTorch model by at most ``register.max_drop``, its macro-F1 reaches
``register.min_f1``, its latency and size stay under the optional ceilings, and (once a version holds
``staging``) a paired test on today's test split against that champion (quantflow/core/stats.py) satisfies
``register.champion_rule``. Aliases only: registry stages are deprecated. Alias moves are serialized and
recorded by quantflow/registry/promotion.py; every registry call is retried with backoff.

A version is created ``pending`` and carries its gate tags from the start; the model card, the aliases and
finally ``quantflow.state=complete`` follow, so a run killed half-way leaves a version no alias points at,
which the next run marks ``abandoned``.

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
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from prefect import task

import quantflow
from quantflow.core.bundle import MANIFEST, TOKENIZER_FILES, Manifest
from quantflow.core.errors import QuantflowError
from quantflow.core.layout import TRACKING_ENV, artifact_root, tracking_uri
from quantflow.core.onnx_model import MODEL_FILE, OnnxClassifier
from quantflow.core.params import Params, RegisterParams
from quantflow.core.stats import compare_paired, judge
from quantflow.registry.promotion import (
    CHALLENGER,
    COMPLETE,
    OWNER_TAG,
    PENDING,
    STAGING,
    STATE_TAG,
    PromotionError,
    Retry,
    active_owner,
    move_challenger,
    move_staging,
    no_inner_http_retries,
    promote,
    repair,
    retrying,
    rollback,
)
from quantflow.registry.pyfunc import ARTIFACT_KEY, PROBA_PREFIX, TEXT_COLUMN, QuantflowModel, model_signature

logger = logging.getLogger(__name__)

LINEAGE_DIR = "lineage"  # run artifact folder: dvc.lock
MODEL_NAME = "model"  # the LoggedModel's name inside the run
# pinned from the running environment: inferring requirements costs log_model 5-7 s
PINNED = ("mlflow", "onnxruntime", "numpy", "pandas", "spacy")
# compression.json keys a variant's latency may be reported under (compress writes one of them)
LATENCY_KEYS = ("latency_ms", "latency_ms_p50", "latency_p50_ms", "p50_ms")
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
    outcome: str = ""  # the verdict, or why a passing candidate was still not promoted


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
    return tracking_uri(root), None if os.environ.get(TRACKING_ENV) else artifact_root(root)


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
    """Accuracy drop versus the fp32 PyTorch model (metrics.json), the variant's macro-F1, optional ceilings."""
    fp32 = float(inputs.metrics["fp32"]["accuracy"])
    scores = inputs.compression["variants"][inputs.variant]
    drop = round(fp32 - float(scores["accuracy"]), 6)
    f1 = float(scores["macro_f1"])
    checks = [
        Check(
            "max_drop",
            drop,
            rp.max_drop,
            drop <= rp.max_drop,
            f"{inputs.variant} accuracy {float(scores['accuracy']):.4f} vs fp32 PyTorch {fp32:.4f}",
        ),
        Check("min_f1", f1, rp.min_f1, f1 >= rp.min_f1, f"{inputs.variant} macro-F1 on the test split"),
    ]
    latency = next((float(scores[k]) for k in LATENCY_KEYS if isinstance(scores.get(k), int | float)), None)
    size = scores.get("size_bytes")
    for name, ceiling, value, unit in (
        ("max_latency_ms", rp.max_latency_ms, latency, "ms"),
        (
            "max_size_bytes",
            rp.max_size_bytes,
            float(size) if isinstance(size, int | float) else None,
            "bytes",
        ),
    ):
        if ceiling is None:
            continue
        if value is None:
            checks.append(Check(name, None, ceiling, True, f"compression.json reports no {unit}: skipped"))
        else:
            checks.append(
                Check(name, value, ceiling, value <= ceiling, f"{inputs.variant}: {value:g} {unit}")
            )
    return checks


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


def champion_predictions(name: str, version: str, texts: list[str]) -> pd.DataFrame:
    """Load the champion by version number (not by alias: it may move meanwhile) and predict ``texts``."""
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    return model.predict(pd.DataFrame({TEXT_COLUMN: texts}))


def champion_check(
    name: str, version: str, inputs: Inputs, candidate: list[str], labels: list[str], rp: RegisterParams
) -> tuple[Check, dict[str, Any] | None]:
    """The paired test against the champion on the same texts; the comparison's figures for the tags."""
    out = champion_predictions(name, version, inputs.texts)
    champion_labels = sorted(c[len(PROBA_PREFIX) :] for c in out.columns if c.startswith(PROBA_PREFIX))
    if champion_labels != sorted(labels):
        detail = (
            f"champion v{version} predicts labels {champion_labels}, the candidate {sorted(labels)}: "
            f"not comparable; move @{STAGING} by hand (`quantflow promote`) if that is intended"
        )
        return Check("champion", round(accuracy(candidate, inputs.labels), 6), None, False, detail), None
    cmp = compare_paired(
        candidate,
        out["label"].astype(str).tolist(),
        inputs.labels,
        confidence=1 - rp.alpha,
        samples=rp.bootstrap_samples,
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


def run_gate(client: mlflow.MlflowClient, name: str, inputs: Inputs, rp: RegisterParams) -> dict[str, Any]:
    """Every check, then the verdict. Runs before anything is logged, against the current champion."""
    checks = absolute_checks(inputs, rp)
    candidate = OnnxClassifier(inputs.variant_dir, threads=1)
    predicted = candidate.predict(inputs.texts)
    candidate_acc = accuracy(predicted, inputs.labels)
    version = staging_version(client, name)
    paired = None
    if version is None:
        detail = f"no version behind @{STAGING} yet: promoted if the other checks pass"
        checks.append(Check("champion", round(candidate_acc, 6), None, True, detail))
    else:
        check, paired = champion_check(name, version, inputs, predicted, list(candidate.labels), rp)
        checks.append(check)
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
        "champion_version": version,
        "paired": paired,
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def gate_tags(gate: dict[str, Any]) -> dict[str, str]:
    """``gate.<check>.{value,threshold,passed,detail}``, ``gate.passed``, ``gate.verdict``, ``gate.paired.*``."""
    tags = {"gate.passed": str(gate["passed"]).lower(), "gate.verdict": gate["verdict"]}
    for check in gate["checks"]:
        prefix = f"gate.{check['name']}"
        tags[f"{prefix}.value"] = _fmt(check["value"])
        tags[f"{prefix}.threshold"] = _fmt(check["threshold"])
        tags[f"{prefix}.passed"] = str(check["passed"]).lower()
        tags[f"{prefix}.detail"] = check["detail"]
    for key, value in (gate.get("paired") or {}).items():
        tags[f"gate.paired.{key}"] = value if isinstance(value, str) else _fmt(value)
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


def model_card(name: str, version: str, inputs: Inputs, gate: dict[str, Any], tags: dict[str, str]) -> str:
    """The version's description: lineage, metrics, compression table, gate, paired test, how to rebuild."""
    lineage_rows = [
        f"| {k} | `{v}` |" for k, v in sorted(tags.items()) if not k.startswith(("gate.", "quantflow."))
    ]
    metric_rows = [
        f"| {label} | {inputs.metrics[key]['accuracy']:.4f} | {inputs.metrics[key]['macro_f1']:.4f} |"
        for key, label in (("fp32", "PyTorch fp32"), ("baseline", "TF-IDF + LR baseline"))
        if key in inputs.metrics
    ]
    variant_rows = [
        f"| {'**' + v + '**' if v == inputs.variant else v} | {s.get('accuracy', float('nan')):.4f} | "
        f"{s.get('macro_f1', float('nan')):.4f} | {s.get('size_bytes', 0) / 1e6:.3f} MB | "
        f"{_fmt(next((s[k] for k in LATENCY_KEYS if k in s), None))} |"
        for v, s in inputs.compression["variants"].items()
    ]
    return "\n".join(
        [
            f"# {name} v{version}: model card",
            "",
            gate_markdown(gate, inputs.variant, tags.get("params_digest", "?")),
            "",
            f"## Metrics on the test split ({len(inputs.texts)} texts)",
            "| model | accuracy | macro-F1 |",
            "|---|---|---|",
            *metric_rows,
            "",
            "## Compression (chosen variant in bold)",
            "| variant | accuracy | macro-F1 | size | latency ms |",
            "|---|---|---|---|---|",
            *variant_rows,
            "",
            "## Data version and lineage",
            "| key | value |",
            "|---|---|",
            *lineage_rows,
            "",
            f"Rebuild it: `quantflow reproduce --version {version}`.",
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
    if tokenizer.get("segmenter") in ("jieba", "char+word"):
        names.append("jieba")
    return [f"{name}=={metadata.version(name)}" for name in names]


def log_pyfunc(inputs: Inputs, labels: list[str]) -> ModelInfo:
    """The variant folder as a pyfunc LoggedModel that carries its own code (quantflow + serving)."""
    return mlflow.pyfunc.log_model(
        name=MODEL_NAME,
        python_model=QuantflowModel(),
        artifacts={ARTIFACT_KEY: str(inputs.variant_dir)},
        code_paths=[str(Path(quantflow.__file__).parent)],
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
    root: Path,
) -> tuple[str, ModelInfo]:
    """One run: flattened params, learning curves, final metrics, reports, gate, dvc.lock and the pyfunc model.

    ``dvc.lock`` is logged as ``lineage/dvc.lock``: the recorded git commit need not hold it (the flow writes
    it after the commit), and ``quantflow reproduce`` needs it to pull the exact data of this run.
    """
    labels = Manifest.load(inputs.variant_dir).labels
    run_name = f"register-{inputs.variant}-{params.digest()[:8]}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=run_tags) as run:
        run_id = run.info.run_id
        mlflow.log_params(flatten(params.model_dump(mode="json", by_alias=True)))
        client.log_batch(run_id, metrics=history_metrics(inputs.history))
        mlflow.log_metrics(final_metrics(inputs, gate))
        mlflow.log_artifacts(str(inputs.reports_dir), artifact_path="reports")
        mlflow.log_dict(gate, "gate.json")
        if (root / "dvc.lock").is_file():
            mlflow.log_artifact(str(root / "dvc.lock"), artifact_path=LINEAGE_DIR)
        info = log_pyfunc(inputs, labels)
    return run_id, info


# --- registry -----------------------------------------------------------------------------------------------


def create_version(
    client: mlflow.MlflowClient,
    name: str,
    info: ModelInfo,
    run_id: str,
    version_tags: dict[str, str],
    owner: str,
) -> str:
    """A new ``pending`` version of the run's model, or the one an earlier attempt of this run created
    (its response may have been lost): a retry never makes a second version of the same run."""
    try:
        earlier = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        earlier = []
    if earlier:
        return str(earlier[0].version)
    tags = {**version_tags, STATE_TAG: PENDING, OWNER_TAG: owner}
    return str(mlflow.register_model(info.model_uri, name, tags=tags).version)


def apply_aliases(
    call: Any, client: mlflow.MlflowClient, name: str, version: str, gate: dict[str, Any], rp: RegisterParams
) -> tuple[bool, str]:
    """``challenger`` always (unless a newer run took it); ``staging`` by compare-and-set when the gate passed.

    Returns (promoted, outcome in words)."""
    if not call(f"move @{CHALLENGER}", lambda: move_challenger(client, name, version, rp.lock_timeout_s)):
        logger.warning("register: a newer version holds @%s; v%s does not take it", CHALLENGER, version)
    if not gate["passed"]:
        return False, gate["verdict"]
    try:
        call(
            f"move @{STAGING}",
            lambda: move_staging(client, name, version, gate["champion_version"], "gate", rp.lock_timeout_s),
        )
    except PromotionError as exc:
        return False, f"gate passed but not promoted: {exc}"
    return True, gate["verdict"]


def register(params: Params, root: Path, tags: dict[str, str] | None = None) -> RegisterResult:
    """Log the run, register the chosen variant as a new version of ``params.model_name`` and apply the gate.

    ``tags`` (git commit, dvc.lock digest, flow-run id...) go on the run and the version, beside
    ``params_digest``. Order matters for faults: the version is created ``pending`` with every tag, then the
    model card, the aliases (under the promotion lock) and ``complete``.
    Raises RegisterError, naming the file, when a report, the variant folder or the test split is missing, and
    RegistryUnavailable when the tracking server stays unreachable after ``register.retries``.
    """
    started = time.perf_counter()
    inputs = load_inputs(params, root)
    uri, artifact_dir = resolve_tracking_uri(root)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    name, rp = params.model_name, params.register
    retry = Retry(rp.retries + 1, rp.retry_backoff_s)

    def call(what: str, fn: Any) -> Any:
        return retrying(fn, what, retry, uri)

    base_tags = {**(tags or {}), "params_digest": params.digest(), "quantflow.variant": inputs.variant}
    with using_tracking_uri(uri), restoring_sys_path(), no_inner_http_retries(), active_owner() as owner:
        call("repair half-registered versions", lambda: repair(client, name, rp.lock_timeout_s))
        experiment_id = call("experiment", lambda: ensure_experiment(client, rp.experiment, artifact_dir))
        gate = call("champion evaluation", lambda: run_gate(client, name, inputs, rp))
        all_tags = {**base_tags, **gate_tags(gate)}
        run_id, info = call(
            "log run", lambda: log_run(client, experiment_id, params, inputs, gate, all_tags, root)
        )
        version = call("create version", lambda: create_version(client, name, info, run_id, all_tags, owner))
        card = model_card(name, version, inputs, gate, all_tags)
        call("model card", lambda: client.update_model_version(name, version, description=card))
        promoted, outcome = apply_aliases(call, client, name, version, gate, rp)
        finish = {STATE_TAG: COMPLETE, "promotion.outcome": outcome}
        for key, value in finish.items():
            call("finish", lambda k=key, v=value: client.set_model_version_tag(name, version, k, v))
    logger.info(
        "register: %s v%s (run %s): %s, in %.1f s on %s",
        name,
        version,
        run_id,
        outcome,
        time.perf_counter() - started,
        uri,
    )
    return RegisterResult(
        run_id=run_id,
        model_name=name,
        version=version,
        promoted=promoted,
        gate=gate,
        tracking_uri=uri,
        outcome=outcome,
    )


def _retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient failures (a server blip), not a missing report: that needs an earlier step first."""
    return not isinstance(state.result(raise_on_failure=False), QuantflowError)


@task(
    name="register",
    retries=2,
    retry_delay_seconds=[5, 30],  # on top of register.retries' per-call backoff inside register()
    retry_jitter_factor=0.5,
    retry_condition_fn=_retry_unless_user_error,
)
def register_task(params: Params, root: Path, tags: dict[str, str] | None = None) -> RegisterResult:
    return register(params, root, tags)


# --- manual moves (`quantflow promote`, `quantflow rollback`) -------------------------------------------------


def _client(root: Path) -> tuple[mlflow.MlflowClient, str]:
    uri, _ = resolve_tracking_uri(root)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def manual_move(params: Params, root: Path, version: str | None) -> dict[str, Any]:
    """``version`` given: promote it to ``staging``; None: roll ``staging`` back to the previous holder.
    Serialized and recorded exactly like the gate's moves; returns the history entry."""
    client, uri = _client(root)
    rp = params.register
    retry = Retry(rp.retries + 1, rp.retry_backoff_s)
    with no_inner_http_retries():
        if version is None:
            return retrying(
                lambda: rollback(client, params.model_name, rp.lock_timeout_s), "rollback", retry, uri
            )
        return retrying(
            lambda: promote(client, params.model_name, version, rp.lock_timeout_s), "promote", retry, uri
        )
