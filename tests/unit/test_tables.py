"""The one table reader: every unusable file is named, with the line where there is one, for every caller."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from quantflow.core.errors import DataError
from quantflow.core.tables import labelled_texts, read_table, write_table
from quantflow.intake.incoming import BatchError, read_batch
from tasks.ingest import read_user_file

ROWS = pd.DataFrame({"text": ["国务院会议", "质量不错", "值得推荐"], "label": ["news", "comment", "comment"]})


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_written_tables_read_back_with_string_cells(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"rows{suffix}"
    write_table(ROWS, path)
    assert read_table(path, {"text": "", "label": ""}).equals(ROWS)


def test_a_bad_jsonl_line_is_named_by_its_number(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a", "label": "news"}\n\n{"text": "b", "label": news}\n', encoding="utf-8")
    with pytest.raises(
        DataError, match=r"rows.jsonl: cannot read it as JSONL: line 3, column 24: Expecting value"
    ):
        read_table(path)
    path.write_text('{"text": "a", "label": "news"}\n["b", "news"]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2 holds a list, not an object"):
        read_table(path)


def test_bytes_that_are_not_utf8_fail_on_their_line_or_are_replaced(tmp_path: Path) -> None:
    path = tmp_path / "gbk.csv"
    path.write_bytes("text,label\n国务院会议,news\n".encode() + "质量不错,comment\n".encode("gbk"))
    with pytest.raises(DataError, match=r"gbk.csv: line 3 is not UTF-8 \(byte 0x"):
        read_table(path)
    texts = read_table(path, undecodable="replace")["text"].tolist()
    assert texts[0] == "国务院会议" and "\ufffd" in texts[1]


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("empty.csv", b"", "the file is empty (0 bytes)"),
        ("header.csv", b"text,label\n", "the file has a header but no rows"),
        ("blob.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00", "a binary file (NUL bytes"),
        ("semi.csv", "text;label\n国务院;news\n".encode(), "wrong delimiter ';'? the header is 'text;label'"),
        ("rows.xlsx", b"PK\x03\x04", "unsupported file type '.xlsx'; use one of .csv, .parquet, .jsonl"),
        ("junk.parquet", b"\x00not parquet", "cannot read it as Parquet"),
        (
            "body.csv",
            b"body,label\nx,news\n",
            "missing column 'text' (ingest.text_column); the file has columns",
        ),
    ],
)
def test_every_caller_gets_the_same_message(tmp_path: Path, name: str, content: bytes, fragment: str) -> None:
    """ingest's user file (DataError) and a nightly batch (BatchError, the file's name only) say the same."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as ingested:
        read_user_file(path, "text", "label")
    assert str(path) in str(ingested.value) and fragment in str(ingested.value)
    with pytest.raises(BatchError) as batch:
        read_batch(path)
    assert str(batch.value).startswith(f"{name}: ") and fragment.split(" (ingest")[0] in str(batch.value)


def test_texts_must_be_strings_and_labels_become_names(tmp_path: Path) -> None:
    frame = pd.DataFrame({"text": ["好", None, "差"], "label": pd.Series([1, 0, None], dtype=object)})
    out = labelled_texts(frame, "text", "label", "rows.csv")
    assert out["label"].tolist()[:2] == ["1", "0"] and pd.isna(out["label"].iloc[2])
    with pytest.raises(DataError, match=r"rows.csv: column 'text' must hold strings, found int"):
        labelled_texts(frame.assign(text=[1, 2, 3]), "text", "label", "rows.csv")


def test_a_missing_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"absent.csv: file not found \(--input\)"):
        read_table(tmp_path / "absent.csv", setting="--input")
