"""The lineage-and-links lines of the run summary: data version, MLflow run link, validation report, Data Docs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from flows.runinfo import batch_docs_lines, data_version_lines, docs_lines, mlflow_run_link
from quantflow.core.layout import Layout
from quantflow.core.ports import MLFLOW_UI
from quantflow.intake.versioning import Lineage
from tasks.validate import ValidationResult
from tests.params_helpers import shipped_params


def test_http_tracking_gives_a_clickable_run_link() -> None:
    link = mlflow_run_link("http://mlflow:5000/", "3", "abc123")
    assert link == "[run abc123](http://mlflow:5000/#/experiments/3/runs/abc123)"


def test_embedded_store_says_how_to_open_the_run() -> None:
    link = mlflow_run_link("sqlite:////p/mlflow.db", "1", "abc123")
    assert (
        "`sqlite:////p/mlflow.db`" in link
        and "quantflow ui" in link
        and f"http://127.0.0.1:{MLFLOW_UI}/#/experiments/1/runs/abc123" in link
    )


def test_data_version_names_commit_and_every_output_md5() -> None:
    lineage = Lineage(
        "f" * 40, True, "a" * 64, {"data/raw/x.parquet": "1" * 32, "artifacts/model": "2" * 32 + ".dir"}
    )
    lines = "\n".join(data_version_lines(lineage))
    assert "git `ffffffffffff` (uncommitted changes)" in lines
    assert "`artifacts/model` 222222222222" in lines and "`data/raw/x.parquet` 111111111111" in lines


def test_docs_lines_link_the_data_docs_index_only_when_built(tmp_path: Path) -> None:
    layout = Layout.of(shipped_params(), tmp_path)
    result = ValidationResult(True, layout.validation_report, {})
    assert docs_lines(layout, result) == [f"- validation report: `{result.report_path}`"]
    index = layout.data_docs.index
    index.parent.mkdir(parents=True)
    index.write_text("<html></html>")
    assert docs_lines(layout, result)[-1].endswith(f": {index.resolve().as_uri()}")
    logged = docs_lines(layout, result, logged=True)[-1]
    assert logged.endswith("(also in the MLflow run's artifacts, `reports/gx/data_docs/`)"), logged


def test_batch_data_docs_are_linked_when_written(tmp_path: Path) -> None:
    written = tmp_path / "site" / "validations" / "b1.html"
    written.parent.mkdir(parents=True)
    written.write_text("<html></html>")
    intake = SimpleNamespace(
        batches=[
            SimpleNamespace(name="b1", status="accepted", data_docs=written),
            SimpleNamespace(name="b2", status="blocked", data_docs=tmp_path / "missing.html"),
            SimpleNamespace(name="b3", status="blocked", data_docs=None),  # unreadable: no contract ran
        ]
    )
    assert batch_docs_lines(intake) == [f"- Data Docs of batch b1 (accepted): {written.resolve().as_uri()}"]
