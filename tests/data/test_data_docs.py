"""The project's one Data Docs site (reports/gx/): validate, the dataset contract and each nightly batch add their
results with a run name and time; GX's site builder writes the pages and an index whose links stay inside the
site; a batch accepted with quarantined rows reads "Succeeded" and still lists those rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from quantflow.core.errors import ValidationFailed
from quantflow.core.layout import BatchReports, DataDocsPaths
from quantflow.intake.contracts import check_batch, check_dataset, dataset_keys
from tasks.split import split
from tasks.validate import validate
from tests.conftest import two_vocabulary_frame
from tests.data.test_validate import EXPECTATIONS, good_frame, write
from tests.params_helpers import params_with, shipped_params

HREF = re.compile(r"""(?:href|src)=["']([^"']+)["']""")
ROW_LINK = re.compile(r"""'_table_row_link_path': '([^']+)'""")  # the index's rows (a bootstrap-table's data)


def page_text(path: Path) -> str:
    """What a reader sees: the page without scripts, styles and tags, whitespace collapsed."""
    html = re.sub(r"<(script|style).*?</\1>", " ", path.read_text(encoding="utf-8"), flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def result_pages(docs: DataDocsPaths) -> list[Path]:
    return sorted((docs.site / "validations").rglob("*.html"))


def stored_results(docs: DataDocsPaths) -> list[dict]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(docs.validations.rglob("*.json"))]


def assert_links_stay_inside(site: Path) -> None:
    """Every relative link of every page resolves inside the site; every linked page exists."""
    pages = list(site.rglob("*.html"))
    assert pages
    for page in pages:
        html = page.read_text(encoding="utf-8")
        for link in HREF.findall(html) + ROW_LINK.findall(html):
            if link.startswith(("http://", "https://", "#", "mailto:", "javascript:")):
                continue
            target = (page.parent / link.split("#")[0]).resolve()
            assert target.is_relative_to(site.resolve()), f"{page}: {link} leaves the site"
            if target.suffix == ".html":
                assert target.is_file(), f"{page}: {link} is not a page of the site"


def test_validate_records_both_suites_with_run_name_and_time(tmp_path: Path) -> None:
    params = params_with({"validate.min_rows_per_class": 10})
    raw = write(good_frame(), tmp_path)
    docs = DataDocsPaths(tmp_path / "reports" / "gx")
    for _ in range(2):  # two runs: the site keeps the first run's pages and indexes both
        validate(
            params.validate_, raw, tmp_path / "v.json", EXPECTATIONS, params.labels, "news_vs_comment", docs
        )
    pages = result_pages(docs)
    assert [p.relative_to(docs.site / "validations").parts[:2] for p in pages] == [
        ("raw_class_counts", "stage-validate"),
        ("raw_class_counts", "stage-validate"),
        ("raw_dataset", "stage-validate"),
        ("raw_dataset", "stage-validate"),
    ]
    for record in stored_results(docs):
        assert record["meta"]["run_id"]["run_name"] == "stage-validate"
        assert record["meta"]["run_id"]["run_time"].startswith(str(pd.Timestamp.now(tz="UTC").year))
    index = docs.index.read_text(encoding="utf-8")
    listed = sorted(link for link in ROW_LINK.findall(index) if link.startswith("validations/"))
    assert listed == [p.relative_to(docs.site).as_posix() for p in pages]
    shown = page_text(pages[-1])
    assert "__none__" not in shown and "Run Name stage-validate" in shown
    assert "Data asset: news_vs_comment" in shown and "Status: Succeeded" in shown
    assert_links_stay_inside(docs.site)


def test_a_failed_validation_is_recorded_before_it_stops_the_run(tmp_path: Path) -> None:
    params = params_with({"validate.min_rows_per_class": 10})
    bad = good_frame()
    bad.loc[7, "label"] = "sports"
    raw = write(bad, tmp_path)
    docs = DataDocsPaths(tmp_path / "gx")
    with pytest.raises(ValidationFailed):
        validate(
            params.validate_, raw, tmp_path / "v.json", EXPECTATIONS, params.labels, "news_vs_comment", docs
        )
    [raw_page] = [p for p in result_pages(docs) if "raw_dataset" in p.parts]
    assert "Status: Failed" in page_text(raw_page) and "sports" in page_text(raw_page)


def judge(frame: pd.DataFrame, tmp_path: Path, docs: DataDocsPaths):  # noqa: ANN201
    reports = BatchReports(tmp_path / "nightly" / "b", docs)
    known = dataset_keys(tmp_path / "no-split")
    return check_batch(frame, shipped_params(), known, EXPECTATIONS, reports, "b.csv"), reports


def blank(frame: pd.DataFrame, rows: int) -> pd.DataFrame:
    """``rows`` texts made blank (a row-level check: quarantined while their share stays in budget)."""
    out = frame.copy()
    out.loc[: rows - 1, "text"] = " "
    return out


def blank_and_unknown(frame: pd.DataFrame) -> pd.DataFrame:
    """20 blank texts and 20 unknown labels: each check under the 10 % budget, together 40 of 300 over it."""
    out = blank(frame, 20)
    out.loc[100:119, "label"] = "sports"
    return out


@pytest.mark.parametrize(
    ("change", "accepted"),
    [
        (lambda f: f, True),
        (lambda f: blank(f, 3), True),  # a few bad rows: quarantined, the batch accepted
        (lambda f: blank(f, 30), True),  # 30 of 300: exactly nightly.max_bad_row_share (10 %)
        (lambda f: blank(f, 31), False),  # one row over it: blocked
        (blank_and_unknown, False),  # over it only together: blocked
        (lambda f: f.assign(text="<p>" + f["text"] + "</p>"), False),  # a batch-level check fails
    ],
    ids=["clean", "3-quarantined", "at-budget", "over-budget", "over-budget-together", "markup"],
)
def test_the_recorded_batch_contract_says_what_the_contract_decided(
    tmp_path: Path,
    change,
    accepted: bool,  # noqa: ANN001
) -> None:
    docs = DataDocsPaths(tmp_path / "gx")
    verdict, reports = judge(change(two_vocabulary_frame(150)), tmp_path, docs)
    assert (not verdict.failures) is accepted, verdict.failures
    contract = json.loads(reports.contract.read_text(encoding="utf-8"))
    assert contract["success"] is accepted
    assert verdict.data_docs is not None and verdict.data_docs.is_relative_to(docs.site)
    shown = page_text(verdict.data_docs)
    assert ("Status: Succeeded" if accepted else "Status: Failed") in shown
    assert "Run Name batch-contract" in shown and "Data asset: b.csv" in shown


def test_quarantined_rows_are_listed_by_a_successful_record(tmp_path: Path) -> None:
    frame = two_vocabulary_frame(150)
    frame.loc[4, "text"] = "  "
    frame.loc[9, "text"] = "<div><br/></div>"  # empty once cleaned (a new label would block the batch)
    docs = DataDocsPaths(tmp_path / "gx")
    verdict, reports = judge(frame, tmp_path, docs)
    assert verdict.quarantined["row"].tolist() == [4, 9] and not verdict.failures
    results = json.loads(reports.contract.read_text(encoding="utf-8"))["results"]
    listed = {
        (r["expectation_config"]["type"], r["expectation_config"]["kwargs"].get("column")): r for r in results
    }
    blank_text = listed["expect_column_values_to_match_regex", "text"]
    cleaned_empty = listed["expect_column_values_to_be_in_set", "cleaned_empty"]
    budget = listed["expect_column_values_to_be_in_set", "quarantined"]
    assert blank_text["success"] and blank_text["result"]["unexpected_index_list"] == [4]
    assert cleaned_empty["success"] and cleaned_empty["result"]["unexpected_index_list"] == [9]
    assert budget["success"] and budget["result"]["unexpected_index_list"] == [4, 9]
    assert blank_text["expectation_config"]["kwargs"]["mostly"] == pytest.approx(0.9)
    shown = page_text(verdict.data_docs)
    assert "cleaned_empty Status" in shown and "df.filter(items=[9], axis=0)" in shown  # the set-aside row
    assert_links_stay_inside(docs.site)


def test_the_dataset_contract_records_one_page_per_frame(tiny_frame: pd.DataFrame, tmp_path: Path) -> None:
    tiny_frame.to_parquet(tmp_path / "raw.parquet")
    params = params_with({"nightly.min_rows_per_class_split": 1})
    split(params.split, tmp_path / "raw.parquet", tmp_path / "split", tmp_path / "split.json", seed=0)
    docs = DataDocsPaths(tmp_path / "gx")
    check_dataset(params, tmp_path / "split", EXPECTATIONS, tmp_path / "dataset_contract.json", docs)
    suites = [p.relative_to(docs.site / "validations").parts[:3] for p in result_pages(docs)]
    # GX files a dotted suite name (dataset.cells) as nested folders
    assert suites == [("dataset", frame, "dataset-contract") for frame in ("cells", "classes", "texts")]
    assert_links_stay_inside(docs.site)
