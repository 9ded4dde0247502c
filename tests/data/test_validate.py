"""The validate step against tiny Parquet fixtures: good data passes, each kind of bad data is named."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from quantflow.core.errors import ValidationFailed
from quantflow.core.params import Params, ParamsError
from quantflow.core.suites import SuiteError, load_suite
from tasks.validate import ValidationResult, suite_parameters, validate
from tests.params_helpers import params_with, shipped_params

EXPECTATIONS = Path(__file__).resolve().parents[2] / "expectations"
ROWS_PER_CLASS = 100


@pytest.fixture
def params() -> Params:
    return params_with({"validate.min_rows_per_class": 10, "validate.example_rows": 3})


def good_frame() -> pd.DataFrame:
    """200 rows, alternating news and comment, every text distinct and non-blank."""
    rows = [
        (f"新闻 第{i}条", "news") if i % 2 == 0 else (f"评论 很好 {i}", "comment")
        for i in range(2 * ROWS_PER_CLASS)
    ]
    return pd.DataFrame(rows, columns=["text", "label"])


def write(frame: pd.DataFrame, tmp_path: Path) -> Path:
    path = tmp_path / "raw" / "news_vs_comment.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path


def run_validate(params: Params, raw: Path, report_dir: Path) -> ValidationResult:
    """The step as tasks/stages.py wires it: the validate section, the label set, the dataset's name."""
    report = report_dir / f"{params.ingest.dataset}.json"
    return validate(params.validate_, raw, report, EXPECTATIONS, params.labels, params.ingest.dataset)


def supplied(params: Params) -> dict:
    return suite_parameters(params.validate_, params.labels, params.ingest.dataset)


def files_under(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file()}


def test_good_dataset_passes_and_writes_its_report(params: Params, tmp_path: Path) -> None:
    raw = write(good_frame(), tmp_path)
    before = raw.read_bytes()

    result = run_validate(params, raw, tmp_path / "reports")

    assert result.success
    assert result.report_path == tmp_path / "reports" / "news_vs_comment.json"
    assert result.statistics == {
        "evaluated_expectations": 10,
        "successful_expectations": 10,
        "unsuccessful_expectations": 0,
        "rows": 200,
    }
    report = json.loads(result.report_path.read_text(encoding="utf-8"))
    assert report["success"] and report["raw_path"] == str(raw)
    by_type = {(e["type"], e["column"]): e for e in report["expectations"]}
    assert by_type["expect_column_values_to_be_in_set", "label"]["kwargs"]["value_set"] == ["news", "comment"]
    assert by_type["expect_column_value_lengths_to_be_between", "text"]["kwargs"]["max_value"] == 5000
    assert by_type["expect_column_values_to_be_between", "rows"]["kwargs"]["min_value"] == 10
    assert raw.read_bytes() == before
    assert files_under(tmp_path) == {
        Path("raw/news_vs_comment.parquet"),
        Path("reports/news_vs_comment.json"),
    }


def _set(row: int, column: str, value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[row, column] = value
        return frame

    return change


BAD_DATA = {
    "label outside the set": (
        _set(17, "label", "neutral"),
        1,
        ["expect_column_values_to_be_in_set(label): 1 rows (0.5%) unexpected", "row 17: label='neutral'"],
    ),
    "blank text": (
        _set(23, "text", "  \t "),
        1,
        ["expect_column_values_to_match_regex(text): 1 rows", "row 23: text='  \\t '"],
    ),
    "null text": (
        _set(42, "text", None),
        1,
        ["expect_column_values_to_not_be_null(text): 1 rows", "row 42: text=None"],
    ),
    "null label": (
        _set(8, "label", None),
        1,
        ["expect_column_values_to_not_be_null(label): 1 rows", "row 8: label=None"],
    ),
    "too long text": (
        _set(99, "text", "长" * 5001),
        1,
        ["expect_column_value_lengths_to_be_between(text): 1 rows", "row 99: text='长长", "(5001 chars)"],
    ),
    "class with too few rows": (
        lambda frame: frame.drop(frame.index[(frame["label"] == "comment")][5:]),
        1,
        ["expect_column_values_to_be_between(rows): 1 classes (50.0%) unexpected", "label='comment': rows=5"],
    ),
    "missing label class": (
        lambda frame: frame[frame["label"] == "news"],
        1,
        ["expect_column_distinct_values_to_contain_set(label): missing: ['comment']"],
    ),
    "missing label column": (
        lambda frame: frame[["text"]],
        4,
        [
            "expect_table_columns_to_match_set: missing: ['label'] (observed: ['text'])",
            "expect_column_to_exist(label): column not found (columns: ['text'])",
            "expect_column_values_to_be_in_set(label): could not be evaluated",
            "suite raw_class_counts skipped",
        ],
    ),
}


@pytest.mark.parametrize("case", list(BAD_DATA), ids=list(BAD_DATA))
def test_bad_data_fails_naming_expectation_column_and_row(params: Params, tmp_path: Path, case: str) -> None:
    change, failed, expected = BAD_DATA[case]
    raw = write(change(good_frame()), tmp_path)
    before = raw.read_bytes()
    report_path = tmp_path / "reports" / "news_vs_comment.json"

    with pytest.raises(ValidationFailed) as caught:
        run_validate(params, raw, tmp_path / "reports")

    message = str(caught.value)
    evaluated = 8 if case == "missing label column" else 10
    assert (
        message.splitlines()[0]
        == f"{raw}: {failed} of {evaluated} expectations failed (report: {report_path})"
    )
    assert len([line for line in message.splitlines() if line.startswith("  - expect_")]) == failed
    for fragment in expected:
        assert fragment in message
    assert raw.read_bytes() == before
    written = json.loads(report_path.read_text(encoding="utf-8"))
    assert written == caught.value.report and written["success"] is False
    assert files_under(tmp_path) == {
        Path("raw/news_vs_comment.parquet"),
        Path("reports/news_vs_comment.json"),
    }


def test_report_holds_failing_rows_with_their_numbers_and_texts(params: Params, tmp_path: Path) -> None:
    frame = good_frame()
    for row in (3, 17, 31, 45, 59):
        frame.loc[row, "label"] = "neutral"
    raw = write(frame, tmp_path)

    with pytest.raises(ValidationFailed) as caught:
        run_validate(params, raw, tmp_path / "reports")

    (entry,) = [e for e in caught.value.report["expectations"] if not e["success"]]
    assert entry["type"] == "expect_column_values_to_be_in_set" and entry["column"] == "label"
    assert entry["unexpected_count"] == 5 and entry["unexpected_percent"] == pytest.approx(2.5)
    assert entry["examples"] == [  # example_rows = 3
        {"row": 3, "text": "评论 很好 3", "label": "neutral"},
        {"row": 17, "text": "评论 很好 17", "label": "neutral"},
        {"row": 31, "text": "评论 很好 31", "label": "neutral"},
    ]
    assert "e.g. row 3: label='neutral'; row 17: label='neutral'; row 31: label='neutral'" in str(
        caught.value
    )


def test_user_data_without_a_label_set_is_a_params_error(tmp_path: Path) -> None:
    # params.yaml parsing refuses this already; validate still guards a Params built without validation.
    shipped = shipped_params()
    user_data = shipped.ingest.model_copy(update={"dataset": "mine", "path": Path("data/external/mine.csv")})
    params = shipped.model_copy(update={"ingest": user_data})

    with pytest.raises(ParamsError, match="validate.labels must list the allowed labels"):
        run_validate(params, write(good_frame(), tmp_path), tmp_path / "reports")
    assert not (tmp_path / "reports").exists()


def test_a_suite_entry_gx_cannot_build_is_an_error_not_a_skipped_check(
    params: Params, tmp_path: Path
) -> None:
    suite = tmp_path / "broken.json"
    suite.write_text(
        json.dumps(
            {
                "name": "broken",
                "expectations": [
                    {"type": "expect_column_to_exist", "kwargs": {"column": "text"}},
                    {"type": "expect_column_values_to_be_bogus", "kwargs": {"column": "text"}},
                ],
            }
        )
    )

    with pytest.raises(
        SuiteError, match=r"broken.json: expectation #2 \('expect_column_values_to_be_bogus'\)"
    ):
        load_suite(suite, supplied(params))


def test_a_suite_parameter_validate_does_not_supply_is_named(params: Params, tmp_path: Path) -> None:
    suite = tmp_path / "odd.json"
    suite.write_text(
        json.dumps(
            {
                "name": "odd",
                "expectations": [
                    {
                        "type": "expect_column_value_lengths_to_be_between",
                        "kwargs": {"column": "text", "min_value": {"$PARAMETER": "min_chars"}},
                    },
                ],
            }
        )
    )

    with pytest.raises(SuiteError, match=r"odd.json: uses suite parameter\(s\) \['min_chars'\]"):
        load_suite(suite, supplied(params))
