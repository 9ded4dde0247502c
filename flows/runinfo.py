"""The "where did this come from, where do I look" part of a nightly run's markdown summary.

Data version (git commit and the md5 of every output ``dvc.lock`` records), the MLflow run as a link (or how
to open it when tracking is the embedded SQLite store), the validation report and the project's Great
Expectations Data Docs site (its index, each batch's page). Kept apart from flows/nightly.py so the flow only
appends these lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quantflow.core.layout import Layout
from quantflow.core.ports import MLFLOW_UI

MD5_SHOWN = 12
REPORTS_ARTIFACTS = "reports"  # where the register run logs the reports folder (quantflow/registry/runlog.py)


def mlflow_run_link(tracking_uri: str, experiment_id: str | None, run_id: str) -> str:
    """A clickable MLflow UI link for an http(s) tracking server; else the command that opens the UI."""
    fragment = f"#/experiments/{experiment_id}/runs/{run_id}" if experiment_id else f"#/runs/{run_id}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"[run {run_id}]({tracking_uri.rstrip('/')}/{fragment})"
    return f"run `{run_id}` in `{tracking_uri}`: `quantflow ui`, then http://127.0.0.1:{MLFLOW_UI}/{fragment}"


def experiment_of(tracking_uri: str, run_id: str) -> str | None:
    """The run's experiment id (one tracking call; None when the store does not answer: the link degrades)."""
    import mlflow

    try:
        return mlflow.MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info.experiment_id
    except Exception:  # noqa: BLE001 - a summary line must not fail a finished run
        return None


def data_version_lines(lineage: Any) -> list[str]:
    if lineage is None:
        return []
    dirty = " (uncommitted changes)" if lineage.git_dirty else ""
    lines = [
        f"- code: git `{lineage.git_commit[:12]}`{dirty}; `dvc.lock` sha256 `{lineage.dvc_lock_sha256[:12]}`",
        "- data (dvc.lock md5): "
        + ", ".join(f"`{path}` {md5[:MD5_SHOWN]}" for path, md5 in sorted(lineage.data_md5.items())),
    ]
    return lines


def docs_lines(layout: Layout | None, validation: Any, logged: bool = False) -> list[str]:
    """The validation report and the Data Docs index (when built); ``logged``: the register run holds the site
    among its artifacts (it logs the reports folder)."""
    lines = []
    report = getattr(validation, "report_path", None)
    if report is not None:
        lines.append(f"- validation report: `{report}`")
    index = layout.data_docs.index if layout is not None else None
    if index is not None and index.is_file():
        where = ""
        if logged:
            artifact = Path(REPORTS_ARTIFACTS) / layout.data_docs.site.relative_to(layout.reports_dir)
            where = f" (also in the MLflow run's artifacts, `{artifact.as_posix()}/`)"
        lines.append(
            f"- Data Docs (validate, dataset contract, every batch): {index.resolve().as_uri()}{where}"
        )
    return lines


def run_links(summary: Any) -> list[str]:
    """Markdown lines for the run summary: data version, MLflow run, validation report and Data Docs."""
    reg = summary.registered
    lines = ["", "### Lineage and links"]
    lines += data_version_lines(summary.results.get("lineage"))
    if reg is not None:
        experiment = experiment_of(reg.tracking_uri, reg.run_id)
        lines.append(f"- MLflow: {mlflow_run_link(reg.tracking_uri, experiment, reg.run_id)}")
        lines.append(f"- model: `models:/{reg.model_name}/{reg.version}`")
    layout = getattr(summary, "layout", None)
    lines += docs_lines(layout, summary.results.get("validate"), logged=reg is not None)
    lines += batch_docs_lines(getattr(summary, "intake", None))
    return lines


def batch_docs_lines(intake: Any) -> list[str]:
    """One Data Docs link per incoming batch the contract judged: its page in the project's site."""
    lines = []
    for batch in getattr(intake, "batches", None) or []:
        docs = getattr(batch, "data_docs", None)
        if docs is not None and Path(docs).is_file():
            lines.append(
                f"- Data Docs of batch {batch.name} ({batch.status}): {Path(docs).resolve().as_uri()}"
            )
    return lines
