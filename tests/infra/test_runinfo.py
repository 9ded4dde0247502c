"""The lineage-and-links lines of the run summary: data version, MLflow run link, validation report, Data Docs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from flows.runinfo import DATA_DOCS_INDEX, batch_docs_lines, data_version_lines, docs_lines, mlflow_run_link
from quantflow.intake.versioning import Lineage
from tasks.validate import ValidationResult


def test_http_tracking_gives_a_clickable_run_link() -> None:
    link = mlflow_run_link("http://mlflow:5000/", "3", "abc123")
    assert link == "[run abc123](http://mlflow:5000/#/experiments/3/runs/abc123)"


def test_embedded_store_says_how_to_open_the_run() -> None:
    link = mlflow_run_link("sqlite:////p/mlflow.db", "1", "abc123")
    assert (
        "`sqlite:////p/mlflow.db`" in link
        and "quantflow ui" in link
        and "#/experiments/1/runs/abc123" in link
    )


def test_data_version_names_commit_and_every_output_md5() -> None:
    lineage = Lineage(
        "f" * 40, True, "a" * 64, {"data/raw/x.parquet": "1" * 32, "artifacts/model": "2" * 32 + ".dir"}
    )
    lines = "\n".join(data_version_lines(lineage))
    assert "git `ffffffffffff` (uncommitted changes)" in lines
    assert "`artifacts/model` 222222222222" in lines and "`data/raw/x.parquet` 111111111111" in lines


def test_docs_lines_link_data_docs_only_when_built(tmp_path: Path) -> None:
    result = ValidationResult(True, tmp_path / "reports" / "validation" / "x.json", {})
    assert docs_lines(tmp_path, result) == [f"- validation report: `{result.report_path}`"]
    index = tmp_path / DATA_DOCS_INDEX
    index.parent.mkdir(parents=True)
    index.write_text("<html></html>")
    assert docs_lines(tmp_path, result)[-1] == f"- Data Docs: {index.resolve().as_uri()}"


def test_batch_data_docs_are_linked_when_written(tmp_path: Path) -> None:
    written, missing = tmp_path / "reports" / "nightly" / "b1", tmp_path / "reports" / "nightly" / "b2"
    written.mkdir(parents=True)
    (written / "data_docs.html").write_text("<html></html>")
    intake = SimpleNamespace(
        batches=[
            SimpleNamespace(name="b1", status="accepted", report_dir=written),
            SimpleNamespace(name="b2", status="blocked", report_dir=missing),
        ]
    )
    assert batch_docs_lines(intake) == [
        f"- Data Docs of batch b1 (accepted): {(written / 'data_docs.html').resolve().as_uri()}"
    ]
