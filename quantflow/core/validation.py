"""The validate step's report, built from Great Expectations results: one JSON entry per expectation (parameters
resolved, failing rows with their numbers and values) and the failure message's lines, which name the
expectation, the column and example rows, e.g. ``row 17: label='neutral'``.

Beside quantflow/core/suites.py (the suites and the GX context); the step (tasks/validate.py) runs the suites
and writes the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from great_expectations.core import ExpectationSuite
from great_expectations.core.expectation_validation_result import ExpectationValidationResult

REPORT_TEXT_CHARS = 200  # a text value longer than this is clipped in the report
MESSAGE_TEXT_CHARS = 40  # ... and in the failure message


@dataclass(frozen=True)
class Target:
    """One suite and the frame it runs on.

    ``key_column`` names an example by its value (``label='news'``) where a row number means nothing, as
    in the derived class-count frame; ``unit`` is what one row of the frame counts; ``asset`` names the frame
    in GX (the Data Docs' asset name; the suite's name when None).
    """

    suite: ExpectationSuite
    frame: pd.DataFrame
    key_column: str | None = None
    unit: str = "rows"
    asset: str | None = None


def in_suite_order(
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


def entry(result: ExpectationValidationResult, target: Target) -> dict[str, Any]:
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


def failure_line(entry: dict[str, Any], target: Target) -> str:
    """``  - expect_x(column): what went wrong, e.g. row 17: label='neutral'``."""
    name = f"{entry['type']}({entry['column']})" if entry["column"] else entry["type"]
    return f"  - {name}: {_failure_detail(entry, target)}"


def _failure_detail(entry: dict[str, Any], target: Target) -> str:
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


def _describe_row(target: Target, index: int, column: str) -> str:
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


def failure_message(
    raw_path: Path, report_path: Path, statistics: dict[str, int], lines: list[str], skipped: dict[str, str]
) -> str:
    """First line: how many failed and where the report is; then one line per failed expectation."""
    failed, evaluated = statistics["unsuccessful_expectations"], statistics["evaluated_expectations"]
    head = f"{raw_path}: {failed} of {evaluated} expectations failed (report: {report_path})"
    notes = [f"  - suite {name} skipped: {reason}" for name, reason in skipped.items()]
    return "\n".join([head, *lines, *notes])
