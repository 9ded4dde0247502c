"""The project's one Great Expectations Data Docs site (``Layout.data_docs``: ``reports/gx/``).

Every validation the project runs (the validate step's suites, the dataset contract after split, each nightly
batch's contract) is stored in GX's validation results store with a run name and time, its suite in GX's
expectations store, and GX's own site builder (``build_data_docs``) renders their pages and the index. Each call
renders only the pages of the results it adds, then the index of all of them; the pages link each other and the
index by relative paths inside the site.

The run name says which run made a result: ``<flow>-<flow run>`` under Prefect (e.g.
``nightly_retrain-crimson-owl``, the name the Prefect UI shows), else the caller's fallback (``stage-validate``
under ``dvc repro``); the run time is when the result was recorded (UTC).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import great_expectations as gx
from great_expectations.core import ExpectationSuite
from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context import EphemeralDataContext
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)
from great_expectations.data_context.types.resource_identifiers import (
    ExpectationSuiteIdentifier,
    ValidationResultIdentifier,
)

from quantflow.core.layout import DataDocsPaths

SITE_NAME = "quantflow"
_UNSAFE = re.compile(r"[^\w.-]+")  # a run name or batch id is a folder / file name of the stores and the site


def safe_name(text: str) -> str:
    """``text`` with every run of characters outside letters, digits, ``.``, ``_`` and ``-`` as one ``_``."""
    return _UNSAFE.sub("_", text).strip("_") or "unnamed"


def run_identifier(
    fallback: str, flow_name: str | None = None, flow_run_name: str | None = None
) -> RunIdentifier:
    """GX's run id of a record: named after the Prefect flow run when there is one, else ``fallback``; now."""
    name = f"{flow_name}-{flow_run_name}" if flow_name and flow_run_name else fallback
    return RunIdentifier(run_name=safe_name(name), run_time=datetime.datetime.now(datetime.UTC))


def record(
    paths: DataDocsPaths,
    validations: Sequence[tuple[ExpectationSuite, ExpectationSuiteValidationResult]],
    run: RunIdentifier,
) -> list[Path]:
    """Store each (suite, result) under ``run``, render their pages and the index; the result pages' paths.

    The results are changed in place: the run id goes into their ``meta`` (the page shows it), numpy numbers
    become Python numbers (GX's renderer cannot parse their repr).
    """
    context = data_docs_context(paths)
    keys: list[Any] = []
    for suite, result in validations:
        keys += _store(context, suite, result, run)
    context.build_data_docs(site_names=[SITE_NAME], resource_identifiers=keys)
    return [_page(context, key) for key in keys if isinstance(key, ValidationResultIdentifier)]


def _store(
    context: EphemeralDataContext,
    suite: ExpectationSuite,
    result: ExpectationSuiteValidationResult,
    run: RunIdentifier,
) -> list[Any]:
    """The suite (as validated) and the result in the context's stores; their two keys."""
    context.suites.add_or_update(suite)
    definition = result.meta.get("active_batch_definition") or {}
    source, asset = definition.get("datasource_name", "data"), definition.get("data_asset_name", suite.name)
    result.meta["run_id"] = run
    result.meta["validation_time"] = run.run_time
    result.meta["batch_kwargs"] = {"data_asset_name": asset}  # the page's "Data asset" line
    for item in result.results:
        item.result = plain(item.result)
    suite_key = ExpectationSuiteIdentifier(name=suite.name)
    key = ValidationResultIdentifier(
        expectation_suite_identifier=suite_key, run_id=run, batch_identifier=safe_name(f"{source}-{asset}")
    )
    context.validation_results_store.store_validation_results(result, key, suite_key)
    return [suite_key, key]


def _page(context: EphemeralDataContext, key: ValidationResultIdentifier) -> Path:
    """The HTML file the site builder wrote for ``key``."""
    [site] = context.get_docs_sites_urls(resource_identifier=key, site_name=SITE_NAME)
    return Path(unquote(urlparse(site["site_url"]).path))


def data_docs_context(paths: DataDocsPaths) -> EphemeralDataContext:
    """A GX context whose expectations and validation results stores, and one Data Docs site, are the folders
    of ``paths``; nothing else is written (no great_expectations.yml, no analytics, no progress bars)."""
    defaults = InMemoryStoreBackendDefaults()
    stores = dict(defaults.stores)
    stores[defaults.expectations_store_name] = {
        "class_name": "ExpectationsStore",
        "store_backend": _folder(paths.expectations),
    }
    stores[defaults.validation_results_store_name] = {
        "class_name": "ValidationResultsStore",
        "store_backend": _folder(paths.validations),
    }
    site = {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "store_backend": _folder(paths.site),
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }
    config = DataContextConfig(
        store_backend_defaults=defaults,
        stores=stores,
        data_docs_sites={SITE_NAME: site},
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def _folder(path: Path) -> dict[str, str]:
    return {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(path.resolve())}


def plain(value: Any) -> Any:
    """numpy scalars inside nested dicts and lists → Python numbers."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value.item() if hasattr(value, "item") and not isinstance(value, str | bytes) else value
