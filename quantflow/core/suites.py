"""Great Expectations in one place: suites read from ``expectations/*.json`` and an in-memory context.

The suites are hand-written JSON in GX 1.x's own serialized format, reviewed like code; values that belong to
``params.yaml`` appear in them as suite parameters (``{"$PARAMETER": "labels"}``). The validate step and the
nightly contracts both build their suites and contexts here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import great_expectations as gx
from great_expectations import exceptions as gx_exceptions
from great_expectations.core import ExpectationSuite
from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult
from great_expectations.data_context import EphemeralDataContext
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)
from great_expectations.expectations.expectation import Expectation
from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

from quantflow.core.errors import QuantflowError


class SuiteError(QuantflowError):
    """An expectation suite file is missing, is not JSON, or holds an expectation GX cannot build."""


def load_suite(path: Path, supplied: Mapping[str, Any]) -> ExpectationSuite:
    """Build a GX suite from its JSON file, failing loudly on anything GX would skip or not resolve.

    ``ExpectationSuite(**data)`` logs and *drops* an expectation it cannot build; a dropped check must
    not pass silently, so each one is built here first.
    """
    data = _read_suite_json(path)
    expectations = [_build_expectation(path, i, item) for i, item in enumerate(data["expectations"])]
    unknown = sorted(set(_parameter_names(data["expectations"])) - set(supplied))
    if unknown:
        raise SuiteError(
            f"{path}: uses suite parameter(s) {unknown} that validate does not supply "
            f"(supplied: {sorted(supplied)})"
        )
    return ExpectationSuite(
        name=data.get("name") or path.stem,
        expectations=expectations,
        meta=data.get("meta"),
        notes=data.get("notes"),
    )


def _read_suite_json(path: Path) -> dict[str, Any]:
    """The suite file's JSON object, with an ``expectations`` list."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SuiteError(
            f"{path}: suite file not found (validate.suite and validate.class_suite name files in "
            f"{path.parent})"
        ) from None
    except json.JSONDecodeError as exc:
        raise SuiteError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("expectations"), list):
        raise SuiteError(f"{path}: expected a JSON object with an 'expectations' list (GX suite format)")
    return data


def _build_expectation(path: Path, position: int, item: Any) -> Expectation:
    """One expectation from its serialized form; the error names the file and the entry."""
    try:
        return ExpectationConfiguration(**item).to_domain_obj()
    except (TypeError, ValueError, gx_exceptions.GreatExpectationsError) as exc:
        kind = item.get("type") if isinstance(item, dict) else item
        raise SuiteError(f"{path}: expectation #{position + 1} ({kind!r}) is not valid: {exc}") from None


def _parameter_names(node: Any) -> Iterator[str]:
    """Every ``$PARAMETER`` name used anywhere in a JSON value."""
    if isinstance(node, dict):
        if "$PARAMETER" in node:
            yield node["$PARAMETER"]
        for value in node.values():
            yield from _parameter_names(value)
    elif isinstance(node, list):
        for value in node:
            yield from _parameter_names(value)


def gx_context() -> EphemeralDataContext:
    """An in-memory GX context: nothing written to disk, no progress bars, no analytics."""
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(project_config=config, mode="ephemeral")


COMPLETE = {"result_format": "COMPLETE"}  # every unexpected row's index and value


def validate_frame(
    suite: ExpectationSuite,
    frame: Any,
    supplied: Mapping[str, Any],
    source: str,
    asset: str,
    result_format: Mapping[str, Any],
) -> ExpectationSuiteValidationResult:
    """GX's result of ``suite`` on the whole ``frame`` (a pandas DataFrame), in a fresh in-memory context.

    ``source`` and ``asset`` name the data: the result's batch is ``<source>-<asset>`` (Data Docs shows both).
    """
    datasource = gx_context().data_sources.add_pandas(source)
    definition = datasource.add_dataframe_asset(asset).add_batch_definition_whole_dataframe(suite.name)
    batch = definition.get_batch(batch_parameters={"dataframe": frame})
    return batch.validate(suite, result_format=dict(result_format), expectation_parameters=dict(supplied))
