"""The label-noise audit: injected flips come first in its ranking; the report, the batch count and the drop."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest

from quantflow.core.label_audit import (
    ISSUE_COLUMNS,
    audit_labels,
    count_flagged,
    drop_flagged,
    inject_label_noise,
    read_label_issues,
    write_label_issues,
)
from quantflow.core.text import text_key
from quantflow.registry.runlog import label_audit_metrics
from tests.params_helpers import shipped_params

OWN = {"news": "政府经济发展国家会议人民改革建设", "comment": "很好不错喜欢满意质量服务价格房间"}
SHARED = "的了是在我有和就"


def corpus(per_class: int = 150, seed: int = 0, classes: dict[str, str] = OWN) -> pd.DataFrame:
    """Texts of 8-14 chars: mostly their class's own chars, a third shared by every class."""
    rng = random.Random(seed)
    rows = []
    for label, own in classes.items():
        for _ in range(per_class):
            chars = [
                rng.choice(own) if rng.random() < 0.67 else rng.choice(SHARED)
                for _ in range(rng.randint(8, 14))
            ]
            rows.append(("".join(chars), label))
    return pd.DataFrame(rows, columns=["text", "label"]).drop_duplicates("text").reset_index(drop=True)


@pytest.fixture(scope="module")
def flipped() -> tuple[pd.DataFrame, pd.Series, pd.DataFrame]:
    """The corpus with 5 % of its labels flipped, the flip mask, and the audit of it."""
    noisy, mask = inject_label_noise(corpus(), 0.05, seed=1)
    return noisy, pd.Series(mask), audit_labels(noisy, shipped_params().split.label_audit, seed=0)


def test_flipped_rows_are_ranked_first(flipped: tuple[pd.DataFrame, pd.Series, pd.DataFrame]) -> None:
    noisy, mask, issues = flipped
    k = int(mask.sum())
    assert k == round(0.05 * len(noisy))
    top = issues["row"].head(k)  # precision@k: of the k most suspicious rows, how many were flipped
    assert len(top) >= 0.8 * k and mask[top].mean() >= 0.9, f"precision@{k}: {mask[top].mean():.2f}"
    assert mask[issues["row"]].sum() / k >= 0.8, "recall: flipped rows among the flagged ones"
    assert issues["score"].is_monotonic_increasing  # self-confidence: lowest (most suspicious) first


def test_three_classes_are_audited_too() -> None:
    """User data may have more than two labels (liblinear fits two only: the audit must still run)."""
    classes = OWN | {"sports": "比赛球队冠军进球联赛教练队员"}
    noisy, mask = inject_label_noise(corpus(classes=classes), 0.05, seed=1)
    issues = audit_labels(noisy, shipped_params().split.label_audit, seed=0)
    k = int(mask.sum())
    assert set(issues["given_label"]) <= set(classes) and mask[issues["row"].head(k)].mean() >= 0.9


def test_issues_name_the_given_and_the_suggested_label(
    flipped: tuple[pd.DataFrame, pd.Series, pd.DataFrame],
) -> None:
    noisy, mask, issues = flipped
    assert list(issues.columns) == ISSUE_COLUMNS
    first = issues.iloc[0]
    assert first["given_label"] == noisy.loc[first["row"], "label"]
    assert first["suggested_label"] != first["given_label"]
    assert first["text"] == noisy.loc[first["row"], "text"] and first["key"] == text_key(first["text"])


def test_report_round_trips_and_counts_a_batch_by_text_key(
    flipped: tuple[pd.DataFrame, pd.Series, pd.DataFrame], tmp_path: Path
) -> None:
    noisy, _, issues = flipped
    path = write_label_issues(issues, tmp_path / "reports" / "label_issues.csv")
    again = read_label_issues(path)
    assert (
        again["row"].tolist() == issues["row"].tolist() and again["text"].tolist() == issues["text"].tolist()
    )
    batch = pd.DataFrame(
        {"text": [" " + issues["text"].iloc[0].upper(), issues["text"].iloc[1], "没见过的文字"]}
    )
    assert count_flagged(batch, again) == 2  # the key is the normalized text: spacing and case do not matter
    kept = drop_flagged(noisy, again)
    assert len(kept) == len(noisy) - len(issues)
    assert not set(kept["text"]) & set(issues["text"])


def test_too_few_rows_for_the_folds_names_the_label() -> None:
    frame = pd.DataFrame(
        {"text": ["政府会议", "经济发展", "很好", "不错", "喜欢"], "label": ["news"] * 2 + ["comment"] * 3}
    )
    with pytest.raises(ValueError, match=r"'news': 2.*folds=3"):
        audit_labels(frame, shipped_params().split.label_audit, seed=0)


def test_noise_injection_is_seeded_and_changes_exactly_the_masked_rows() -> None:
    frame = corpus(per_class=50)
    first, mask = inject_label_noise(frame, 0.1, seed=7)
    second, _ = inject_label_noise(frame, 0.1, seed=7)
    assert first["label"].tolist() == second["label"].tolist()
    assert ((first["label"] != frame["label"]).to_numpy() == mask).all()


def test_the_run_logs_the_audit_counts_from_split_json(tmp_path: Path) -> None:
    stats = tmp_path / "split.json"
    stats.write_text(
        json.dumps({"label_audit": {"action": "drop", "flagged": 7, "dropped": 6, "seconds": 1.5}})
    )
    assert label_audit_metrics(stats) == {"label_issues_flagged": 7.0, "label_issues_dropped": 6.0}
    assert label_audit_metrics(tmp_path / "none.json") == {}


def test_the_summary_counts_flagged_rows_per_batch_and_says_what_was_dropped(tmp_path: Path) -> None:
    from flows.nightly import RunSummary, render_summary
    from quantflow.intake.incoming import BatchOutcome, Intake
    from tasks.split import SplitResult

    audit = {"action": "drop", "flagged": 12, "dropped": 9, "seconds": 3.25}
    summary = RunSummary(dataset="news_vs_comment", retrain="1 batch(es) accepted")
    summary.intake = Intake([BatchOutcome("b1", "b1.csv", "accepted", 3, 3)])
    summary.results["split"] = SplitResult(paths={}, stats={"label_audit": audit})
    summary.flagged = {"b1": 2}
    text = render_summary(summary)
    assert "| b1 | accepted | 3 | 3 | 0 | not measured | 2 |" in text
    assert "Label audit (drop): 12 training rows flagged, 9 dropped from it (3.2 s)" in text
