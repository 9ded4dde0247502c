"""A nightly batch's contract result as the record shows it: contract.json and its Data Docs page.

quantflow/intake/contracts.py judges a batch on the strict suite: every failing row of a row-level check is
quarantined, and the batch is blocked when their share passes ``nightly.max_bad_row_share``. GX would mark that
strict result "Failed" even for a batch accepted with a few rows set aside; the result recorded here is the same
suite as the contract applies it, so its status is the contract's verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import great_expectations as gx
import pandas as pd
from great_expectations.core import ExpectationSuite
from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.expectations.expectation import Expectation

from quantflow.core.datadocs import run_identifier
from quantflow.core.params import Params
from quantflow.core.suites import COMPLETE, validate_frame

QUARANTINED = "quarantined"  # the derived column of rows a row-level check set aside


def judged_result(
    suite: ExpectationSuite,
    data: pd.DataFrame,
    quarantined: Sequence[int],
    params: Params,
    supplied: dict[str, Any],
    name: str,
) -> tuple[ExpectationSuite, ExpectationSuiteValidationResult]:
    """The batch's result as the contract judged it (contract.json, the Data Docs page), and its suite.

    Row-level checks get ``mostly = 1 - nightly.max_bad_row_share`` and a check on the derived column
    ``quarantined`` (the verdict's set-aside rows) holds the same bound on their union: the result succeeds
    exactly when the contract accepts the batch (drift aside), and each row-level check lists its rows.
    ``quarantined``: the row numbers the contract set aside (``BatchVerdict.quarantined["row"]``).
    """
    mostly = round(1.0 - params.nightly.max_bad_row_share, 12)  # 1 - 0.7 is 0.30000000000000004
    shown = ExpectationSuite(
        name=suite.name,
        expectations=[*(_tolerant(e, mostly) for e in suite.expectations), _quarantine_check(mostly)],
        meta=suite.meta,
        notes=suite.notes,
    )
    marked = data.assign(**{QUARANTINED: data.index.isin(list(quarantined))})
    return shown, validate_frame(shown, marked, supplied, "incoming", name, COMPLETE)


def _tolerant(expectation: Expectation, mostly: float) -> Expectation:
    """A row-level check that tolerates ``1 - mostly`` of failing values; any other check as it is."""
    if (expectation.meta or {}).get("level") != "row" or "mostly" not in type(expectation).__fields__:
        return expectation
    return expectation.copy(update={"mostly": mostly})


def _quarantine_check(mostly: float) -> Expectation:
    return gx.expectations.ExpectColumnValuesToBeInSet(
        column=QUARANTINED,
        value_set=[False],
        mostly=mostly,
        meta={"level": "batch", "reason": "quarantined rows over nightly.max_bad_row_share"},
        notes="Rows failing any row-level check (derived by quantflow/intake/contracts.py); over "
        "nightly.max_bad_row_share the whole batch is blocked, under it they are quarantined.",
    )


def run_id(fallback: str) -> RunIdentifier:
    """The Data Docs run id: the Prefect flow run the contract runs in, else ``fallback``."""
    from prefect.runtime import flow_run

    return run_identifier(fallback, flow_run.flow_name, flow_run.name)
