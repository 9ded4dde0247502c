"""The validate step: check ``data/raw/<dataset>.parquet`` against the GX suites kept in ``expectations/``.

The suites are hand-written JSON in Great Expectations 1.x's own serialized format, reviewed like code.
Values that belong to ``params.yaml`` (the label set, text length bounds, rows per class) appear in them as
suite parameters (``{"$PARAMETER": "labels"}``) and are supplied at run time, so one file serves every
dataset. A run writes one JSON report (the DVC output), on success and on failure, and never touches the raw
file; given the project's Data Docs folder it also adds both suites' results to the site (run name: the Prefect
flow run, or ``stage-validate`` under DVC).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import great_expectations as gx
import pandas as pd
from great_expectations.core import ExpectationSuite
from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.datasource.fluent import PandasDatasource
from prefect import task

from quantflow.core.datadocs import record, run_identifier
from quantflow.core.errors import DataError, ValidationFailed
from quantflow.core.layout import DataDocsPaths, shown_path
from quantflow.core.params import ParamsError, ValidateParams
from quantflow.core.suites import gx_context, load_suite
from quantflow.core.validation import Target, entry, failure_line, failure_message, in_suite_order

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationResult:
    """Outcome of a passing validation: where the report is and what was checked."""

    success: bool
    report_path: Path
    statistics: dict  # evaluated / successful / unsuccessful expectation counts, rows checked


def validate(
    settings: ValidateParams,
    raw_path: Path,
    report_path: Path,
    expectations_dir: Path,
    labels: Sequence[str] | None,
    dataset: str,
    data_docs: DataDocsPaths | None = None,
) -> ValidationResult:
    """Validate the raw dataset with both suites; write the report to ``report_path``; raise on failure.

    ``labels`` is the allowed label set (``validate.labels``, or the built-in dataset's own). Raises
    :class:`ValidationFailed` (with the report) when any expectation fails, so a bad dataset stops the
    pipeline before split; the report, and the Data Docs pages when ``data_docs`` is given, are written either
    way for review.
    """
    started = time.perf_counter()
    supplied = suite_parameters(settings, labels, dataset)
    raw_suite = load_suite(expectations_dir / f"{settings.suite}.json", supplied)
    class_suite = load_suite(expectations_dir / f"{settings.class_suite}.json", supplied)
    frame = _read_raw(raw_path)
    targets, skipped = _targets(frame, raw_suite, class_suite, supplied["labels"], dataset)
    entries, lines, statistics, outcomes = _run(targets, supplied, settings.example_rows)
    statistics["rows"] = len(frame)
    report = _report(settings, dataset, raw_path, supplied, statistics, entries, skipped)
    report_path = _write_report(report, report_path)
    if data_docs is not None:
        record(data_docs, outcomes, _run_id())
    logger.info(
        "validated %s: %d rows, %d of %d expectations passed in %.2f s (report: %s)",
        raw_path,
        len(frame),
        statistics["successful_expectations"],
        statistics["evaluated_expectations"],
        time.perf_counter() - started,
        report_path,
    )
    if not report["success"]:
        raise ValidationFailed(failure_message(raw_path, report_path, statistics, lines, skipped), report)
    return ValidationResult(success=True, report_path=report_path, statistics=statistics)


def suite_parameters(settings: ValidateParams, labels: Sequence[str] | None, dataset: str) -> dict[str, Any]:
    """The values the suites refer to as ``{"$PARAMETER": name}``, taken from ``params.yaml``."""
    if labels is None:
        raise ParamsError(
            f"validate.labels must list the allowed labels for user data (dataset {dataset!r} is not "
            "built in); add e.g. `labels: [positive, negative]` under validate"
        )
    return {
        "labels": list(labels),
        "min_text_length": settings.min_text_length,
        "max_text_length": settings.max_text_length,
        "min_rows_per_class": settings.min_rows_per_class,
    }


def _read_raw(raw_path: Path) -> pd.DataFrame:
    """The raw dataset, indexed by row position in the file (the row numbers reports refer to)."""
    try:
        frame = pd.read_parquet(raw_path)
    except FileNotFoundError:
        raise DataError(f"{raw_path}: raw dataset not found; run the ingest step first") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{raw_path}: not a readable Parquet file ({exc}); re-run the ingest step") from None
    return frame.reset_index(drop=True)


def class_counts(frame: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """One row per allowed label present: ``label``, ``rows``, in the order of the allowed set.

    Labels outside the set are left out: raw_dataset's value-set check reports them already.
    """
    counts = frame["label"].value_counts()  # nulls dropped; raw_dataset reports them
    present = [label for label in labels if label in counts.index]
    return pd.DataFrame(
        {
            "label": pd.Series(present, dtype="str"),
            "rows": pd.Series([counts[x] for x in present], dtype="int64"),
        }
    )


def _run_id() -> RunIdentifier:
    """The Data Docs run id: the Prefect flow run validate runs in, or ``stage-validate`` (DVC, a direct call)."""
    from prefect.runtime import flow_run

    return run_identifier("stage-validate", flow_run.flow_name, flow_run.name)


def _targets(
    frame: pd.DataFrame,
    raw_suite: ExpectationSuite,
    class_suite: ExpectationSuite,
    labels: list[str],
    dataset: str,
) -> tuple[list[Target], dict[str, str]]:
    """What to validate: the raw frame, and the class counts when there is a label column to count."""
    targets = [Target(raw_suite, frame, asset=dataset)]
    skipped: dict[str, str] = {}
    if "label" in frame.columns:
        counts = class_counts(frame, labels)
        targets.append(
            Target(class_suite, counts, key_column="label", unit="classes", asset=f"{dataset}.class_counts")
        )
    else:
        skipped[class_suite.name] = "the raw data has no 'label' column to count"
        logger.warning("skipping suite %s: %s", class_suite.name, skipped[class_suite.name])
    return targets, skipped


def _run(
    targets: list[Target], supplied: dict[str, Any], example_rows: int
) -> tuple[
    list[dict[str, Any]],
    list[str],
    dict[str, int],
    list[tuple[ExpectationSuite, ExpectationSuiteValidationResult]],
]:
    """Validate every target; return report entries, message lines for failures, counts and GX's results."""
    source = gx_context().data_sources.add_pandas("raw")
    result_format = {
        "result_format": "SUMMARY",  # counts + the first ``example_rows`` unexpected values and indices
        "partial_unexpected_count": example_rows,
        "return_unexpected_index_query": False,
    }
    entries: list[dict[str, Any]] = []
    lines: list[str] = []
    statistics = {"evaluated_expectations": 0, "successful_expectations": 0, "unsuccessful_expectations": 0}
    outcomes = []
    for target in targets:
        batch = _batch(source, target)
        outcome = batch.validate(target.suite, result_format=result_format, expectation_parameters=supplied)
        outcomes.append((target.suite, outcome))
        for key in statistics:
            statistics[key] += int(outcome.statistics[key])
        for result in in_suite_order(outcome.results, target.suite):
            entries.append(entry(result, target))
            if not result.success:
                lines.append(failure_line(entries[-1], target))
    return entries, lines, statistics, outcomes


def _batch(source: PandasDatasource, target: Target) -> Any:
    """A GX batch over the target's whole frame (a dataframe asset with one batch definition)."""
    asset = source.add_dataframe_asset(target.asset or target.suite.name)
    definition = asset.add_batch_definition_whole_dataframe(target.suite.name)
    return definition.get_batch(batch_parameters={"dataframe": target.frame})


def _report(
    settings: ValidateParams,
    dataset: str,
    raw_path: Path,
    supplied: dict[str, Any],
    statistics: dict[str, int],
    entries: list[dict[str, Any]],
    skipped: dict[str, str],
) -> dict[str, Any]:
    """The report's JSON content; deterministic for the same data, params and suites (no timestamps)."""
    return {
        "success": not skipped and all(entry["success"] for entry in entries),
        "raw_path": shown_path(raw_path),  # relative to the project: the report reads the same in every clone
        "dataset": dataset,
        "suites": [settings.suite, settings.class_suite],
        "suite_parameters": supplied,
        "statistics": statistics,
        "skipped_suites": skipped,
        "great_expectations_version": gx.__version__,
        "expectations": entries,
    }


def _write_report(report: dict[str, Any], path: Path) -> Path:
    """Write the report as UTF-8 JSON (texts stay readable), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


# The Prefect task is the plain function itself, named for the flow's UI; tests call validate() directly.
validate_task = task(validate, name="validate")
