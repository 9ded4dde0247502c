"""The validate step: check ``data/raw/<dataset>.parquet`` against the GX suites kept in ``expectations/``.

The suites are hand-written JSON in Great Expectations 1.x's own serialized format, reviewed like code.
Values that belong to ``params.yaml`` (the label set, text length bounds, rows per class) appear in them as
suite parameters (``{"$PARAMETER": "labels"}``) and are supplied at run time, so one file serves every
dataset. A run writes one JSON report, on success and on failure, and never touches the raw file.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import great_expectations as gx
import pandas as pd
from great_expectations.core import ExpectationSuite
from great_expectations.core.expectation_validation_result import ExpectationValidationResult
from great_expectations.datasource.fluent import PandasDatasource
from prefect import task

from quantflow.core.errors import DataError, ValidationFailed
from quantflow.core.params import Params, ParamsError
from quantflow.core.suites import gx_context, load_suite

logger = logging.getLogger(__name__)

REPORT_TEXT_CHARS = 200  # a text value longer than this is clipped in the report
MESSAGE_TEXT_CHARS = 40  # ... and in the failure message


@dataclass(frozen=True)
class ValidationResult:
    """Outcome of a passing validation: where the report is and what was checked."""

    success: bool
    report_path: Path
    statistics: dict  # evaluated / successful / unsuccessful expectation counts, rows checked


@dataclass(frozen=True)
class _Target:
    """One suite and the frame it runs on.

    ``key_column`` names an example by its value (``label='news'``) where a row number means nothing, as
    in the derived class-count frame; ``unit`` is what one row of the frame counts.
    """

    suite: ExpectationSuite
    frame: pd.DataFrame
    key_column: str | None = None
    unit: str = "rows"


def validate(params: Params, raw_path: Path, report_dir: Path, expectations_dir: Path) -> ValidationResult:
    """Validate the raw dataset with both suites; write ``report_dir/<dataset>.json``; raise on failure.

    Raises :class:`ValidationFailed` (with the report) when any expectation fails, so a bad dataset
    stops the pipeline before split; the report is written either way for review.
    """
    started = time.perf_counter()
    supplied = suite_parameters(params)
    settings = params.validate_
    raw_suite = load_suite(expectations_dir / f"{settings.suite}.json", supplied)
    class_suite = load_suite(expectations_dir / f"{settings.class_suite}.json", supplied)
    frame = _read_raw(raw_path)
    targets, skipped = _targets(frame, raw_suite, class_suite, supplied["labels"])
    entries, lines, statistics = _run(targets, supplied, settings.example_rows)
    statistics["rows"] = len(frame)
    report = _report(params, raw_path, supplied, statistics, entries, skipped)
    report_path = _write_report(report, report_dir / f"{params.ingest.dataset}.json")
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
        raise ValidationFailed(_failure_message(raw_path, report_path, statistics, lines, skipped), report)
    return ValidationResult(success=True, report_path=report_path, statistics=statistics)


def suite_parameters(params: Params) -> dict[str, Any]:
    """The values the suites refer to as ``{"$PARAMETER": name}``, taken from ``params.yaml``."""
    if params.labels is None:
        raise ParamsError(
            "validate.labels must list the allowed labels for user data "
            f"(ingest.path: {params.ingest.path}); add e.g. `labels: [positive, negative]` under validate"
        )
    settings = params.validate_
    return {
        "labels": list(params.labels),
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


def _targets(
    frame: pd.DataFrame, raw_suite: ExpectationSuite, class_suite: ExpectationSuite, labels: list[str]
) -> tuple[list[_Target], dict[str, str]]:
    """What to validate: the raw frame, and the class counts when there is a label column to count."""
    targets = [_Target(raw_suite, frame)]
    skipped: dict[str, str] = {}
    if "label" in frame.columns:
        targets.append(_Target(class_suite, class_counts(frame, labels), key_column="label", unit="classes"))
    else:
        skipped[class_suite.name] = "the raw data has no 'label' column to count"
        logger.warning("skipping suite %s: %s", class_suite.name, skipped[class_suite.name])
    return targets, skipped


def _run(
    targets: list[_Target], supplied: dict[str, Any], example_rows: int
) -> tuple[list[dict[str, Any]], list[str], dict[str, int]]:
    """Validate every target; return report entries, message lines for failures, and counts."""
    source = gx_context().data_sources.add_pandas("quantflow")
    result_format = {
        "result_format": "SUMMARY",  # counts + the first ``example_rows`` unexpected values and indices
        "partial_unexpected_count": example_rows,
        "return_unexpected_index_query": False,
    }
    entries: list[dict[str, Any]] = []
    lines: list[str] = []
    statistics = {"evaluated_expectations": 0, "successful_expectations": 0, "unsuccessful_expectations": 0}
    for target in targets:
        batch = _batch(source, target)
        outcome = batch.validate(target.suite, result_format=result_format, expectation_parameters=supplied)
        for key in statistics:
            statistics[key] += int(outcome.statistics[key])
        for result in _in_suite_order(outcome.results, target.suite):
            entries.append(_entry(result, target))
            if not result.success:
                lines.append(_failure_line(entries[-1], target))
    return entries, lines, statistics


def _batch(source: PandasDatasource, target: _Target) -> Any:
    """A GX batch over the target's whole frame (a dataframe asset with one batch definition)."""
    asset = source.add_dataframe_asset(target.suite.name)
    definition = asset.add_batch_definition_whole_dataframe(target.suite.name)
    return definition.get_batch(batch_parameters={"dataframe": target.frame})


def _in_suite_order(
    results: list[ExpectationValidationResult], suite: ExpectationSuite
) -> list[ExpectationValidationResult]:
    """GX returns results grouped by column; put them back in the order the suite file lists them."""
    order = {
        (config.type, config.kwargs.get("column")): position
        for position, config in enumerate(suite.expectation_configurations)
    }

    def position(result: ExpectationValidationResult) -> int:
        config = result.expectation_config
        return order.get((config.type, config.kwargs.get("column")), len(order))

    return sorted(results, key=position)


def _entry(result: ExpectationValidationResult, target: _Target) -> dict[str, Any]:
    """One expectation's outcome as the report holds it (parameters resolved, examples with row numbers)."""
    data = result.to_json_dict()
    config, outcome = data["expectation_config"], data.get("result") or {}
    kwargs = {key: value for key, value in config["kwargs"].items() if key != "batch_id"}
    indices = outcome.get("partial_unexpected_index_list") or []
    return {
        "suite": target.suite.name,
        "type": config["type"],
        "column": kwargs.get("column"),
        "kwargs": kwargs,
        "success": bool(data["success"]),
        "observed_value": outcome.get("observed_value"),
        "unexpected_count": outcome.get("unexpected_count"),
        "unexpected_percent": outcome.get("unexpected_percent"),
        "details": _details(outcome),
        "error": _error(data.get("exception_info") or {}),
        "examples": [_example(target.frame, index) for index in indices],
    }


def _details(outcome: dict[str, Any]) -> dict[str, Any] | None:
    """What a table- or set-level expectation found missing (these carry no unexpected rows).

    GX 1.24's distinct-values-contain-set always reports ``observed_value: None``; the values it did not
    find are in ``partial_missing_list``.
    """
    if "partial_missing_list" in outcome:
        return {"missing": outcome["partial_missing_list"]}
    return outcome.get("details")


def _error(info: dict[str, Any]) -> str | None:
    """The first exception GX caught while evaluating (e.g. a missing column), if any.

    GX 1.x gives either one ``{"raised_exception": ...}`` record or a mapping of metric id to such records.
    """
    records = [info] if "raised_exception" in info else list(info.values())
    messages = [
        r.get("exception_message") for r in records if isinstance(r, dict) and r.get("raised_exception")
    ]
    return str(messages[0]).strip().splitlines()[0] if messages else None


def _example(frame: pd.DataFrame, index: int) -> dict[str, Any]:
    """A failing row: its number in the file and its values, long texts clipped."""
    return {"row": int(index), **{str(column): _plain(value) for column, value in frame.loc[index].items()}}


def _plain(value: Any) -> Any:
    """A JSON-ready scalar: missing becomes None, numpy numbers become Python ones, long text is clipped."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    if isinstance(value, str):
        return value if len(value) <= REPORT_TEXT_CHARS else value[:REPORT_TEXT_CHARS] + "…"
    return value.item() if hasattr(value, "item") else value


def _failure_line(entry: dict[str, Any], target: _Target) -> str:
    """``  - expect_x(column): what went wrong, e.g. row 17: label='neutral'``."""
    name = f"{entry['type']}({entry['column']})" if entry["column"] else entry["type"]
    return f"  - {name}: {_failure_detail(entry, target)}"


def _failure_detail(entry: dict[str, Any], target: _Target) -> str:
    """The human-readable middle of a failure line, by the kind of result GX gave."""
    if entry["error"]:
        return f"could not be evaluated: {entry['error']}"
    if entry["unexpected_count"]:
        column = entry["column"]
        examples = "; ".join(_describe_row(target, ex["row"], column) for ex in entry["examples"])
        count = (
            f"{entry['unexpected_count']} {target.unit} ({_percent(entry['unexpected_percent'])}) unexpected"
        )
        return f"{count}, e.g. {examples}" if examples else count
    if entry["type"] == "expect_column_to_exist":
        return f"column not found (columns: {list(map(str, target.frame.columns))})"
    if entry["details"]:
        observed = entry["observed_value"]
        return _flat(entry["details"]) + (f" (observed: {observed})" if observed is not None else "")
    return f"observed {entry['observed_value']!r}"


def _describe_row(target: _Target, index: int, column: str) -> str:
    """``row 17: label='neutral'``, or ``label='news': rows=3`` for a frame keyed by value."""
    value = _short(target.frame.at[index, column])
    if target.key_column:
        return f"{target.key_column}={target.frame.at[index, target.key_column]!r}: {column}={value}"
    return f"row {index}: {column}={value}"


def _short(value: Any) -> str:
    """A value for the message: repr, long texts clipped with their length shown."""
    if isinstance(value, str) and len(value) > MESSAGE_TEXT_CHARS:
        return f"{value[:MESSAGE_TEXT_CHARS] + '…'!r} ({len(value)} chars)"
    return repr(_plain(value))


def _percent(value: float | None) -> str:
    """0.1% style: two significant digits below 1%, one decimal above."""
    value = value or 0.0
    return f"{value:.2g}%" if value < 1 else f"{value:.1f}%"


def _flat(details: dict[str, Any]) -> str:
    """``missing: ['label']`` from GX's nested ``{"mismatched": {"missing": [...]}}`` details."""
    inner = details.get("mismatched", details)
    return ", ".join(f"{key}: {value}" for key, value in inner.items())


def _report(
    params: Params,
    raw_path: Path,
    supplied: dict[str, Any],
    statistics: dict[str, int],
    entries: list[dict[str, Any]],
    skipped: dict[str, str],
) -> dict[str, Any]:
    """The report's JSON content; deterministic for the same data, params and suites (no timestamps)."""
    return {
        "success": not skipped and all(entry["success"] for entry in entries),
        "raw_path": str(raw_path),
        "dataset": params.ingest.dataset,
        "suites": [params.validate_.suite, params.validate_.class_suite],
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


def _failure_message(
    raw_path: Path, report_path: Path, statistics: dict[str, int], lines: list[str], skipped: dict[str, str]
) -> str:
    """First line: how many failed and where the report is; then one line per failed expectation."""
    failed, evaluated = statistics["unsuccessful_expectations"], statistics["evaluated_expectations"]
    head = f"{raw_path}: {failed} of {evaluated} expectations failed (report: {report_path})"
    notes = [f"  - suite {name} skipped: {reason}" for name, reason in skipped.items()]
    return "\n".join([head, *lines, *notes])


# The Prefect task is the plain function itself, named for the flow's UI; tests call validate() directly.
validate_task = task(validate, name="validate")
