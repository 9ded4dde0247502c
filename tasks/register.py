"""The register step: load and check its inputs, then hand them to the registry (quantflow/registry/).

One MLflow run, the chosen ONNX variant as a pyfunc model version, the promotion gate: every new version gets
the alias ``challenger``, and ``staging`` when the gate passes (quantflow/registry/gate.py). The order of the
registry calls, and why it keeps faults harmless, is in quantflow/registry/registration.py.

Tracking goes to ``MLFLOW_TRACKING_URI`` when set (e.g. an ``mlflow server``), else to the embedded default
``sqlite:///<root>/mlflow.db`` with artifacts under ``<root>/mlartifacts/``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from prefect import task

from quantflow.core.bundle import MANIFEST, TOKENIZER_FILES
from quantflow.core.errors import QuantflowError
from quantflow.core.features import read_split
from quantflow.core.layout import Layout
from quantflow.core.onnx_model import MODEL_FILE
from quantflow.core.params import Params
from quantflow.registry.candidate import Inputs
from quantflow.registry.gate import Check
from quantflow.registry.promotion import RegistryUnavailable
from quantflow.registry.registration import RegisterResult, register_candidate

logger = logging.getLogger(__name__)


class RegisterError(QuantflowError):
    """An input of the register step is missing or malformed: raised before anything is logged."""


# --- inputs -------------------------------------------------------------------------------------------------


def _read_json(path: Path, step: str) -> Any:
    """A step's JSON report; missing or broken: a RegisterError naming the file and the step that writes it."""
    if not path.is_file():
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


def load_inputs(params: Params, root: Path) -> Inputs:
    """Read and check the reports, the chosen variant folder and the test split: fail before logging."""
    layout = Layout.of(params, root)
    metrics = _read_json(layout.metrics, "evaluate")
    history = _read_json(layout.train_history, "train")
    if not isinstance(history, list) or not all(isinstance(row, dict) and "epoch" in row for row in history):
        raise RegisterError(
            f"{layout.train_history}: expected a list of {{'epoch': ...}} rows; rerun the train step"
        )
    compression = _read_json(layout.compression_report, "compress")
    _lookup(metrics, ("fp32", "accuracy"), layout.metrics)
    variant = str(_lookup(compression, ("chosen",), layout.compression_report))
    for key in ("accuracy", "macro_f1"):
        _lookup(compression, ("variants", variant, key), layout.compression_report)
    _lookup(compression, ("variants", "fp32", "accuracy"), layout.compression_report)  # the drop's reference
    variant_dir = layout.variant_dir(variant)
    _check_variant_dir(variant_dir)
    texts, labels = read_split(
        layout.split_file("test"), "test", "compare the candidate with the champion on"
    )
    calibration = _read_json(layout.calibration_report, "compress")
    _lookup(calibration, ("models", variant, "after", "ece"), layout.calibration_report)
    return Inputs(
        metrics, history, compression, layout.reports_dir, variant, variant_dir, texts, labels, calibration
    )


# --- the step -----------------------------------------------------------------------------------------------


def register(
    params: Params,
    root: Path,
    tags: dict[str, str] | None = None,
    run_id: str | None = None,
    checks: tuple[Check, ...] = (),
) -> RegisterResult:
    """Log the run, register the chosen variant as a new version of ``params.model_name`` and apply the gate.

    ``tags`` (git commit, dvc.lock digest, flow-run id...) go on the run and the version, beside
    ``params_digest``; ``run_id`` is the pipeline's MLflow run when a flow opened one (else the step makes its
    own); ``checks`` join the gate's own (the nightly flow's live drift). Order matters for faults: the version
    is created ``pending`` with every tag, then the model card, the aliases (under the promotion lock) and
    ``complete``.
    Raises RegisterError, naming the file, when a report, the variant folder or the test split is missing, and
    RegistryUnavailable when the tracking server stays unreachable after ``register.retries``.
    """
    return register_candidate(params, root, load_inputs(params, root), tags, run_id, checks)


def _retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a registry outage (RegistryUnavailable) and unexpected failures; not a user error such as a
    missing report: that needs an earlier step first, and a retry would fail the same way."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, RegistryUnavailable) or not isinstance(error, QuantflowError)


@task(
    name="register",
    retries=2,  # the flow sets them from register.task_retry_delays_s (register_task_for)
    retry_delay_seconds=[5, 30],  # on top of register.retries' per-call backoff inside register()
    retry_jitter_factor=0.5,
    retry_condition_fn=_retry_unless_user_error,
)
def register_task(
    params: Params,
    root: Path,
    tags: dict[str, str] | None = None,
    run_id: str | None = None,
    checks: tuple[Check, ...] = (),
) -> RegisterResult:
    return register(params, root, tags, run_id, checks)


def register_task_for(params: Params) -> Any:
    """The register task with ``register.task_retry_delays_s``: one retry per entry, after that many seconds."""
    delays = list(params.register.task_retry_delays_s)
    return register_task.with_options(retries=len(delays), retry_delay_seconds=delays or 0)
