"""The "where did this come from, where do I look" part of a nightly run's markdown summary.

Data version (git commit and the md5 of every output ``dvc.lock`` records), the MLflow run as a link (or how
to open it when tracking is the embedded SQLite store), and the validation report / Great Expectations Data
Docs when the run produced them. Kept apart from flows/nightly.py so the flow only appends these lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quantflow.core.layout import BatchReports

# where a GX file context writes Data Docs, relative to the project root
DATA_DOCS_INDEX = Path("gx/uncommitted/data_docs/local_site/index.html")
MD5_SHOWN = 12


def mlflow_run_link(tracking_uri: str, experiment_id: str | None, run_id: str) -> str:
    """A clickable MLflow UI link for an http(s) tracking server; else the command that opens the UI."""
    fragment = f"#/experiments/{experiment_id}/runs/{run_id}" if experiment_id else f"#/runs/{run_id}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"[run {run_id}]({tracking_uri.rstrip('/')}/{fragment})"
    return f"run `{run_id}` in `{tracking_uri}`: `quantflow ui`, then http://127.0.0.1:5000/{fragment}"


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


def docs_lines(root: Path | None, validation: Any) -> list[str]:
    lines = []
    report = getattr(validation, "report_path", None)
    if report is not None:
        lines.append(f"- validation report: `{report}`")
    docs = getattr(validation, "data_docs", None) or (root / DATA_DOCS_INDEX if root is not None else None)
    if docs is not None and Path(docs).is_file():
        lines.append(f"- Data Docs: {Path(docs).resolve().as_uri()}")
    return lines


def run_links(summary: Any, root: Path | None = None) -> list[str]:
    """Markdown lines for the run summary: data version, MLflow run, validation report and Data Docs."""
    reg = summary.registered
    lines = ["", "### Lineage and links"]
    lines += data_version_lines(summary.results.get("lineage"))
    if reg is not None:
        experiment = experiment_of(reg.tracking_uri, reg.run_id)
        lines.append(f"- MLflow: {mlflow_run_link(reg.tracking_uri, experiment, reg.run_id)}")
        lines.append(f"- model: `models:/{reg.model_name}/{reg.version}`")
    lines += docs_lines(root, summary.results.get("validate"))
    lines += batch_docs_lines(getattr(summary, "intake", None))
    return lines


def batch_docs_lines(intake: Any) -> list[str]:
    """One Data Docs link per incoming batch the contract judged (reports/nightly/<batch>/data_docs.html)."""
    lines = []
    for batch in getattr(intake, "batches", None) or []:
        docs = BatchReports(batch.report_dir).data_docs if batch.report_dir is not None else None
        if docs is not None and docs.is_file():
            lines.append(f"- Data Docs of batch {batch.name} ({batch.status}): {docs.resolve().as_uri()}")
    return lines
