"""The batch contract and the drift figures on small frames, without the flow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantflow.core.layout import BatchReports
from quantflow.core.text import text_key
from quantflow.intake.contracts import check_batch, dataset_keys
from quantflow.intake.drift import ks_statistic, total_variation
from tasks.split import split
from tests.conftest import two_vocabulary_frame
from tests.params_helpers import params_with, shipped_params

EXPECTATIONS = Path(__file__).resolve().parents[2] / "expectations"


def judge(frame: pd.DataFrame, tmp_path: Path, known: pd.DataFrame | None = None):  # noqa: ANN201
    empty = dataset_keys(tmp_path / "no-split")
    reports = BatchReports(tmp_path)
    return check_batch(
        frame, shipped_params(), empty if known is None else known, EXPECTATIONS, reports, "b.csv"
    )


def test_a_few_bad_rows_are_quarantined_with_reasons_and_the_rest_kept(
    tiny_frame: pd.DataFrame, tmp_path: Path
) -> None:
    frame = tiny_frame.copy()
    frame.loc[4, "text"] = "  "
    frame.loc[9, "text"] = "<div><br/></div>"
    verdict = judge(frame, tmp_path)
    assert verdict.failures == []
    reasons = verdict.quarantined.set_index("row")["reason"].to_dict()
    assert reasons[4] == "blank text" and reasons[9].startswith("empty after cleaning") and len(reasons) == 2
    assert len(verdict.clean) == len(frame) - 2
    assert (
        "2 rows quarantined" in verdict.warnings[0]
        and "row 9: text='<div><br/></div>'" in verdict.warnings[0]
    )


def test_one_row_with_a_new_label_blocks_the_batch(tiny_frame: pd.DataFrame, tmp_path: Path) -> None:
    """A label outside the label set changes the label set: not a bad row to set aside, whatever its share."""
    frame = tiny_frame.copy()
    frame.loc[9, "label"] = "sports"
    verdict = judge(frame, tmp_path)
    assert len(verdict.failures) == 1 and "labels outside the label set" in verdict.failures[0]
    assert "'sports' (1 rows), e.g. row 9" in verdict.failures[0]


def test_texts_labelled_otherwise_in_the_dataset_are_quarantined(
    tiny_frame: pd.DataFrame, tmp_path: Path
) -> None:
    known = pd.DataFrame({"key": [text_key(tiny_frame.loc[0, "text"])], "label": ["comment"]})  # row 0: news
    verdict = judge(tiny_frame, tmp_path, known)
    assert verdict.quarantined["row"].tolist() == [0]
    assert verdict.quarantined["reason"].iloc[0].startswith("text already labelled otherwise")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda f: f.assign(text="hello world " + f["text"].str[:0]), "expected-script (CJK) characters"),
        (lambda f: f.assign(text="<p>" + f["text"] + "</p>"), "share of rows with HTML or URLs"),
        (lambda f: pd.concat([f.iloc[:30]] * 5, ignore_index=True), "duplicates within the batch"),
    ],
)
def test_batch_level_failures_block(tiny_frame: pd.DataFrame, tmp_path: Path, change, fragment: str) -> None:  # noqa: ANN001
    verdict = judge(change(tiny_frame), tmp_path)
    assert any(fragment in line for line in verdict.failures), verdict.failures


def test_drift_figures() -> None:
    a = np.arange(100.0)
    assert ks_statistic(a, a) == 0.0
    assert ks_statistic(a, a + 1000) == 1.0
    assert total_variation({"news": 0.5, "comment": 0.5}, {"news": 1.0}) == pytest.approx(0.5)


def cased_texts(frame: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """The same texts with a Latin prefix: the rows differ from ``frame``'s only in letter case."""
    return frame.assign(text=prefix + frame["text"])


def test_texts_in_the_dataset_in_another_case_are_known_whatever_preprocess_lowercase(
    tiny_frame: pd.DataFrame, tmp_path: Path, project_root: Path
) -> None:
    """The split keys texts case-blind; the batch contract must key them the same way, even when the
    tokenizer keeps case (preprocess.lowercase: false), or yesterday's texts pass as new."""
    cased = cased_texts(tiny_frame, "qf")
    cased.to_parquet(tmp_path / "raw.parquet")
    split(
        params_with({}).split, tmp_path / "raw.parquet", tmp_path / "split", tmp_path / "split.json", seed=0
    )
    known = dataset_keys(tmp_path / "split")
    params = params_with({"preprocess.lowercase": False})
    repeat = cased_texts(tiny_frame, "QF")
    verdict = check_batch(repeat, params, known, EXPECTATIONS, BatchReports(tmp_path / "r"), "r.csv")
    assert any("already in the dataset" in line for line in verdict.failures), verdict.failures
    flipped = repeat.iloc[:10].assign(label=lambda f: f["label"].map({"news": "comment", "comment": "news"}))
    fresh = cased_texts(two_vocabulary_frame(40, seed=11), "QF")
    batch = pd.concat([flipped, fresh], ignore_index=True)
    verdict = check_batch(batch, params, known, EXPECTATIONS, BatchReports(tmp_path / "f"), "f.csv")
    quarantined = verdict.quarantined.to_dict("records")
    conflicting = [r["row"] for r in quarantined if "labelled otherwise" in r["reason"]]
    assert conflicting == list(range(10)), quarantined
