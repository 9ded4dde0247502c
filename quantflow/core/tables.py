"""The one reader and writer of tables users bring: ``.csv``, ``.parquet`` or ``.jsonl``.

Ingest's user file, a nightly batch and batch predict's input all go through :func:`read_table`, so every way a
file can be unusable (unknown suffix, missing, empty, binary, a wrong delimiter, unparseable, a missing column,
a header and no rows) is one :class:`~quantflow.core.errors.DataError` whose message names the file, the line where there is one,
and the fix. :func:`labelled_texts` adds what a table of texts and labels must hold.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import pandas as pd

from quantflow.core.errors import DataError

KINDS = {".csv": "CSV", ".parquet": "Parquet", ".jsonl": "JSONL"}
SNIFF_BYTES = 8192  # a NUL byte in the first SNIFF_BYTES marks a binary file
DELIMITERS = (";", "\t", "|")  # what a header without commas is usually separated by


def table_kind(path: Path, shown: str | None = None) -> str:
    """``CSV``, ``Parquet`` or ``JSONL`` by the file's suffix; any other suffix is a DataError."""
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"{shown or path}: unsupported file type {path.suffix or '(none)'!r}; use one of {', '.join(KINDS)}"
        )
    return kind


def read_table(
    path: Path,
    columns: Mapping[str, str] | None = None,
    *,
    setting: str | None = None,
    shown: str | None = None,
    undecodable: Literal["error", "replace"] = "error",
) -> pd.DataFrame:
    """The table at ``path``, CSV cells as strings (an empty cell is missing).

    ``columns`` maps each required column to the setting that names it (e.g. ``{"content":
    "ingest.text_column"}``), ``setting`` is what named the file (e.g. ``ingest.path``), ``shown`` how messages
    name the file (default: the path). ``undecodable="replace"`` reads bytes that are not UTF-8 as U+FFFD (the
    nightly contract quarantines those rows and names them) instead of failing on them.
    """
    name = shown or str(path)
    kind = table_kind(path, name)
    if not path.is_file():
        raise DataError(f"{name}: file not found" + (f" ({setting})" if setting else ""))
    if path.stat().st_size == 0:
        raise DataError(f"{name}: the file is empty (0 bytes); give it a header and rows")
    frame = _parquet(path, name) if kind == "Parquet" else _text_table(path, kind, name, undecodable)
    required = dict(columns or {})
    missing = [c for c in required if c not in frame.columns]
    if missing:
        wanted = ", ".join(f"{c!r} ({required[c]})" if required[c] else repr(c) for c in missing)
        raise DataError(f"{name}: missing column {wanted}; {_columns_hint(frame)}")
    if frame.empty:
        raise DataError(f"{name}: the file has a header but no rows")
    return frame


def labelled_texts(frame: pd.DataFrame, text_column: str, label_column: str, shown: str) -> pd.DataFrame:
    """The two columns as ``text`` and ``label``: texts must be strings (or missing), labels become names.

    Labels are names: 1 and "1" must not become two classes, so every present label is turned into a string.
    """
    out = frame[[text_column, label_column]].rename(columns={text_column: "text", label_column: "label"})
    texts = out["text"].dropna()
    not_text = texts[~texts.map(lambda v: isinstance(v, str))]
    if len(not_text):
        raise DataError(
            f"{shown}: column {text_column!r} must hold strings, found {type(not_text.iloc[0]).__name__} "
            f"values (e.g. row {not_text.index[0]}: {not_text.iloc[0]!r})"
        )
    return out.assign(label=out["label"].map(lambda v: v if pd.isna(v) else str(v))).reset_index(drop=True)


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """``frame`` as the file type ``path``'s suffix names (JSONL: one UTF-8 object a line)."""
    kind = table_kind(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "CSV":
        frame.to_csv(path, index=False)
    elif kind == "Parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True, force_ascii=False)


def _parquet(path: Path, name: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (ValueError, OSError) as exc:
        raise DataError(f"{name}: cannot read it as Parquet: {exc}") from None


def _text_table(path: Path, kind: str, name: str, undecodable: str) -> pd.DataFrame:
    """CSV or JSONL: binary files and wrong delimiters named before parsing; decoding per ``undecodable``."""
    raw = path.read_bytes()
    if b"\x00" in raw[:SNIFF_BYTES]:
        raise DataError(
            f"{name}: a binary file (NUL bytes in the first {SNIFF_BYTES} bytes), not {kind} text; "
            "export it as UTF-8 text"
        )
    text = _decode(raw, name, undecodable)
    if kind == "JSONL":
        return _jsonl(text, name)
    header = text.split("\n", 1)[0]
    if "," not in header:
        for sep in DELIMITERS:
            if sep in header:
                raise DataError(
                    f"{name}: wrong delimiter {sep!r}? the header is {header.strip()!r}; "
                    "CSV files must be comma-separated"
                )
    try:
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""])
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{name}: cannot read it as CSV: {exc}") from None


def _decode(raw: bytes, name: str, undecodable: str) -> str:
    if undecodable == "replace":
        return raw.decode("utf-8", errors="replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{name}: line {line} is not UTF-8 (byte {raw[exc.start]:#04x}); save the file as UTF-8"
        ) from None


def _jsonl(text: str, name: str) -> pd.DataFrame:
    """One JSON object a line (blank lines skipped); a bad line is named by its number."""
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{name}: cannot read it as JSONL: line {number}, column {exc.colno}: {exc.msg}"
            ) from None
        if not isinstance(record, dict):
            raise DataError(
                f"{name}: cannot read it as JSONL: line {number} holds a {type(record).__name__}, "
                "not an object; write one {...} per line"
            )
        records.append(record)
    return pd.DataFrame.from_records(records)


def _columns_hint(frame: pd.DataFrame) -> str:
    """The columns found, and the likely cause when one column name holds several (a wrong delimiter)."""
    found = [str(c) for c in frame.columns]
    hint = f"the file has columns {found}"
    for sep in DELIMITERS:
        if len(found) == 1 and sep in found[0]:
            return f"{hint}: wrong delimiter {sep!r}? CSV files must be comma-separated"
    return hint
