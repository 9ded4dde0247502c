from pathlib import Path

import pandas as pd
import pytest

from quantflow.core.label_audit import ISSUE_COLUMNS, inject_label_noise, read_label_issues
from quantflow.core.layout import SPLITS
from quantflow.core.text import text_key
from tasks.split import SplitResult, assign_split, deduplicate, split
from tests.conftest import two_vocabulary_frame
from tests.params_helpers import split_with


def test_duplicates_conflicts_and_blanks_are_dropped_before_splitting() -> None:
    frame = pd.DataFrame(
        {
            "text": ["好书！", "好书!", "  好书! ", "一般", "一般", "新闻稿", "   "],
            "label": ["positive", "positive", "positive", "positive", "negative", "news", "news"],
        }
    )
    kept, counts = deduplicate(frame)
    # full-width "！" and spaces normalize away: the three 好书 rows are one text
    assert kept["key"].tolist() == ["好书!", "新闻稿"]
    assert counts["duplicates_dropped"] == 2
    assert counts["conflict_texts_dropped"] == 1 and counts["conflict_rows_dropped"] == 2
    assert counts["blank_dropped"] == 1


def test_assignment_is_stable_and_roughly_proportional() -> None:
    params = split_with(val_fraction=0.1, test_fraction=0.2)
    keys = [f"text {i}" for i in range(5000)]
    first = [assign_split(k, params) for k in keys]
    assert first == [assign_split(k, params) for k in keys]
    share = {name: first.count(name) / len(keys) for name in SPLITS}
    assert abs(share["test"] - 0.2) < 0.03 and abs(share["val"] - 0.1) < 0.03


def test_a_text_keeps_its_split_when_the_data_grows(tmp_path: Path, tiny_frame: pd.DataFrame) -> None:
    params = split_with()
    small, grown = tiny_frame.iloc[:200], tiny_frame
    small.to_parquet(tmp_path / "small.parquet")
    grown.to_parquet(tmp_path / "grown.parquet")
    a = split(params, tmp_path / "small.parquet", tmp_path / "a", tmp_path / "a.json", seed=0)
    b = split(params, tmp_path / "grown.parquet", tmp_path / "b", tmp_path / "b.json", seed=0)
    for name in SPLITS:
        before = set(pd.read_parquet(a.paths[name])["key"])
        after = set(pd.read_parquet(b.paths[name])["key"])
        assert before <= after


def test_no_normalized_text_in_two_splits(tmp_path: Path, tiny_frame: pd.DataFrame) -> None:
    doubled = pd.concat([tiny_frame, tiny_frame.assign(text=tiny_frame["text"] + "  ")])
    doubled.to_parquet(tmp_path / "raw.parquet")
    result = split(split_with(), tmp_path / "raw.parquet", tmp_path / "out", tmp_path / "stats.json", seed=0)
    keys = {name: set(pd.read_parquet(path)["key"]) for name, path in result.paths.items()}
    assert (
        not keys["train"] & keys["val"]
        and not keys["train"] & keys["test"]
        and not keys["val"] & keys["test"]
    )
    total = sum(s["rows"] for s in result.stats["splits"].values())
    assert total == result.stats["rows_out"] == tiny_frame["text"].map(str.strip).nunique()


@pytest.fixture(scope="module")
def flipped_raw(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """A raw file of 600 texts from two vocabularies, 5 % of their labels flipped; the flipped texts' keys."""
    noisy, mask = inject_label_noise(two_vocabulary_frame(300), 0.05, seed=3)
    path = tmp_path_factory.mktemp("flipped") / "raw.parquet"
    noisy.to_parquet(path)
    return path, set(noisy.loc[mask, "text"].map(text_key))


def split_auditing(raw: Path, out: Path, action: str) -> SplitResult:
    return split(
        split_with(label_issues=action),
        raw,
        out / "split",
        out / "split.json",
        seed=0,
        issues_path=out / "label_issues.csv",
    )


def test_report_ranks_the_flipped_training_rows_first_and_keeps_every_row(
    flipped_raw: tuple[Path, set[str]], tmp_path: Path
) -> None:
    raw, flipped = flipped_raw
    result = split_auditing(raw, tmp_path, "report")
    issues = read_label_issues(tmp_path / "label_issues.csv")
    train = pd.read_parquet(result.paths["train"])
    in_train = flipped & set(train["key"])  # only the training split is audited
    assert len(in_train) >= 15
    top = issues["key"].head(len(in_train))  # the most suspicious rows: flips, and most of the flips
    assert top.isin(in_train).mean() >= 0.9 and top.isin(in_train).sum() >= 0.7 * len(in_train)
    assert issues["score"].is_monotonic_increasing  # most suspicious (lowest given-label probability) first
    assert set(issues["key"]) <= set(train["key"])  # flagged: training rows, and every one of them kept
    assert result.stats["label_audit"] | {"seconds": 0} == {
        "action": "report",
        "flagged": len(issues),
        "dropped": 0,
        "seconds": 0,
    }


def test_drop_removes_the_flagged_training_rows_and_leaves_val_and_test_alone(
    flipped_raw: tuple[Path, set[str]], tmp_path: Path
) -> None:
    raw, _ = flipped_raw
    report = split_auditing(raw, tmp_path / "report", "report")
    drop = split_auditing(raw, tmp_path / "drop", "drop")
    flagged = set(read_label_issues(tmp_path / "drop" / "label_issues.csv")["key"])
    assert flagged and flagged == set(read_label_issues(tmp_path / "report" / "label_issues.csv")["key"])
    kept, everything = (pd.read_parquet(r.paths["train"]) for r in (drop, report))
    assert set(kept["key"]) == set(everything["key"]) - flagged
    assert drop.stats["label_audit"]["dropped"] == len(everything) - len(kept) == len(flagged)
    for name in ("val", "test"):
        pd.testing.assert_frame_equal(pd.read_parquet(drop.paths[name]), pd.read_parquet(report.paths[name]))


def test_off_audits_nothing_and_leaves_a_report_of_no_rows(
    flipped_raw: tuple[Path, set[str]], tmp_path: Path
) -> None:
    raw, _ = flipped_raw
    result = split_auditing(raw, tmp_path, "off")
    issues = read_label_issues(tmp_path / "label_issues.csv")
    assert list(issues.columns) == ISSUE_COLUMNS and issues.empty
    assert result.stats["label_audit"]["flagged"] == result.stats["label_audit"]["dropped"] == 0


def test_a_bare_off_is_off_though_yaml_reads_it_as_false(tmp_path: Path) -> None:
    from quantflow.core.params import load_params

    text = (Path(__file__).resolve().parents[2] / "params.yaml").read_text(encoding="utf-8")
    path = tmp_path / "params.yaml"
    path.write_text(text.replace("label_issues: report", "label_issues: off"), encoding="utf-8")
    assert load_params(path).split.label_issues == "off"
    assert load_params(path, {"split.label_issues": False}).split.label_issues == "off"
    assert split_with(label_issues="drop").label_issues == "drop"
