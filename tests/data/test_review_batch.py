"""A review file (quantflow/intake/review.py) once labelled is a nightly batch: the batch contract takes exactly
its column layout, and a row left without a label is set aside naming the row and its text."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from quantflow.core.layout import BatchReports, Layout
from quantflow.core.prediction_log import read_log
from quantflow.intake.contracts import check_batch, dataset_keys
from quantflow.intake.incoming import read_batch
from quantflow.intake.review import review_queue
from tests.conftest import two_vocabulary_frame
from tests.params_helpers import shipped_params
from tests.unit.test_live_drift import served, write_log

EXPECTATIONS = Path(__file__).resolve().parents[2] / "expectations"
START = datetime(2026, 12, 4, 8, 0, tzinfo=UTC)


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A review file exported from 60 served texts, and the label each text should get."""
    truth = two_vocabulary_frame(30, seed=21)
    rng = random.Random(1)
    lines = [
        served(text, label, rng.uniform(0.5, 0.99), START + timedelta(seconds=i))
        for i, (text, label) in enumerate(zip(truth["text"], truth["label"], strict=True))
    ]
    layout = Layout.of(shipped_params(), tmp_path)
    write_log(layout.served_log_dir, lines)
    queue = review_queue(read_log(layout.served_log_dir), layout, 200, "2026-12-04")
    return queue.path, dict(zip(truth["text"], truth["label"], strict=True))


def judge(path: Path, tmp_path: Path):  # noqa: ANN201
    frame = read_batch(path)
    reports = BatchReports(tmp_path / "reports")
    return check_batch(
        frame, shipped_params(), dataset_keys(tmp_path / "none"), EXPECTATIONS, reports, path.name
    )


def test_a_labelled_review_file_passes_the_batch_contract(
    exported: tuple[Path, dict], tmp_path: Path
) -> None:
    path, truth = exported
    review = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(review.columns) == ["text", "label"] and len(review) == len(truth)
    review.assign(label=review["text"].map(truth)).to_csv(path, index=False)  # what a reviewer saves
    verdict = judge(path, tmp_path)
    assert verdict.failures == [] and verdict.warnings == [] and verdict.quarantined.empty
    assert len(verdict.clean) == len(truth)


def test_an_unlabelled_row_is_quarantined_naming_the_row_and_its_text(
    exported: tuple[Path, dict], tmp_path: Path
) -> None:
    path, truth = exported
    review = pd.read_csv(path, dtype=str, keep_default_na=False)
    labels = review["text"].map(truth)
    labels[3] = ""  # the reviewer skipped this one
    review.assign(label=labels).to_csv(path, index=False)
    verdict = judge(path, tmp_path)
    assert verdict.failures == [] and verdict.quarantined["row"].tolist() == [3]
    assert verdict.quarantined["reason"].tolist() == ["missing label"]
    text = review.loc[3, "text"]
    assert f"missing label: 1 rows, e.g. row 3: no label, text={text!r}" in verdict.warnings[0]
    assert len(verdict.clean) == len(truth) - 1


def test_an_unlabelled_review_file_is_blocked_naming_its_rows(
    exported: tuple[Path, dict], tmp_path: Path
) -> None:
    path, _ = exported
    verdict = judge(path, tmp_path)  # dropped into incoming as exported: no label at all
    (failure,) = verdict.failures
    assert "fail row checks, over nightly.max_bad_row_share" in failure
    assert "missing label: 60 rows, e.g. row 0: no label, text=" in failure
