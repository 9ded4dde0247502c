from pathlib import Path

import pandas as pd

from quantflow.core.layout import SPLITS
from tasks.split import assign_split, deduplicate, split
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
    a = split(params, tmp_path / "small.parquet", tmp_path / "a", tmp_path / "a.json")
    b = split(params, tmp_path / "grown.parquet", tmp_path / "b", tmp_path / "b.json")
    for name in SPLITS:
        before = set(pd.read_parquet(a.paths[name])["key"])
        after = set(pd.read_parquet(b.paths[name])["key"])
        assert before <= after


def test_no_normalized_text_in_two_splits(tmp_path: Path, tiny_frame: pd.DataFrame) -> None:
    doubled = pd.concat([tiny_frame, tiny_frame.assign(text=tiny_frame["text"] + "  ")])
    doubled.to_parquet(tmp_path / "raw.parquet")
    result = split(split_with(), tmp_path / "raw.parquet", tmp_path / "out", tmp_path / "stats.json")
    keys = {name: set(pd.read_parquet(path)["key"]) for name, path in result.paths.items()}
    assert (
        not keys["train"] & keys["val"]
        and not keys["train"] & keys["test"]
        and not keys["val"] & keys["test"]
    )
    total = sum(s["rows"] for s in result.stats["splits"].values())
    assert total == result.stats["rows_out"] == tiny_frame["text"].map(str.strip).nunique()
