"""Batch scoring for ``quantflow predict``: a table in, the same table plus predictions out, fast to start.

Measured here (BENCHMARKS.md, Serving): the pandas path (the former ``serving.batch.predict_file``) spent 3.3-3.6 s before
its first text, mostly importing pandas, FastAPI and prometheus, and built a dict per row. This path imports
neither: Parquet is read and written with pyarrow, the model is loaded without the web app
(``serving.server.load_model``), and texts are scored in batches sorted by length, so that a batch pads to
texts of about its own length (the model masks padding: the probabilities equal one-text-at-a-time scoring).
CSV and JSONL go through the project's pandas table reader and writer, imported only for them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from serving.model import ServedModel

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)

BATCH_SIZE = 64


def score(
    model: ServedModel,
    texts: Sequence[str],
    batch_size: int = BATCH_SIZE,
    desc: str = "",
    progress: bool = True,
) -> np.ndarray:
    """(N, C) class probabilities in ``texts`` order, columns in ``model.labels`` order; a progress bar on
    stderr counts the texts. Batches hold texts of similar length (sorted by characters)."""
    from tqdm import tqdm

    order = np.argsort(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)), kind="stable")
    proba = np.empty((len(texts), len(model.labels)), dtype=np.float32)  # (N, C)
    with tqdm(total=len(texts), unit="text", desc=desc, mininterval=0.5, disable=not progress) as bar:
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            proba[rows] = model.classifier.predict_proba([texts[i] for i in rows], batch_size)
            bar.update(len(rows))
    return proba


def texts_of(table: pa.Table, text_column: str, shown: str) -> list[str]:
    """The text column as strings (a missing text scores as ""); names the columns when it is absent."""
    if text_column not in table.column_names:
        raise ValueError(
            f"{shown}: no {text_column!r} column (has: {table.column_names}); pass --text-column"
        )
    return ["" if t is None else str(t) for t in table.column(text_column).to_pylist()]


def with_predictions(table: pa.Table, proba: np.ndarray, model: ServedModel) -> pa.Table:
    """``table`` plus ``label``, ``proba_<label>`` per class, ``model_version`` and ``variant``."""
    n = table.num_rows
    table = table.append_column("label", string_column(model.labels, proba.argmax(axis=1)))
    for j, label in enumerate(model.labels):
        table = table.append_column(f"proba_{label}", float_column(proba[:, j]))
    table = table.append_column("model_version", string_column([model.version], np.zeros(n, np.int64)))
    return table.append_column("variant", string_column([model.variant], np.zeros(n, np.int64)))


# Arrow columns built from buffers: pa.array() checks every input for pandas types, which imports pandas
# (~0.2 s, more than scoring 2,000 texts); these two never do.
def float_column(values: np.ndarray) -> pa.Array:
    import pyarrow as pa

    data = np.ascontiguousarray(values, dtype=np.float64)
    return pa.Array.from_buffers(pa.float64(), len(data), [None, pa.py_buffer(data)])


def string_column(choices: Sequence[str], index: np.ndarray) -> pa.Array:
    """``choices[index[i]]`` for every i, as an Arrow string array."""
    import pyarrow as pa

    encoded = [c.encode("utf-8") for c in choices]
    lengths = np.array([len(e) for e in encoded], dtype=np.int64)
    offsets = np.zeros(len(index) + 1, dtype=np.int32)
    np.cumsum(lengths[index], out=offsets[1:])
    data = b"".join(encoded[i] for i in index.tolist())
    return pa.Array.from_buffers(pa.string(), len(index), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def read_input(src: Path) -> pa.Table:
    """A Parquet file or folder with pyarrow; CSV and JSONL with the project's table reader (pandas)."""
    if src.suffix.lower() == ".parquet" or src.is_dir():
        import pyarrow.parquet as pq

        if not src.exists():
            raise FileNotFoundError(f"{src}: file not found (--input)")
        # one file: ParquetFile, as pq.read_table goes through pyarrow.dataset, which imports pandas (~0.3 s)
        return pq.read_table(src) if src.is_dir() else pq.ParquetFile(src).read()
    import pyarrow as pa

    from quantflow.core.tables import read_table

    return pa.Table.from_pandas(read_table(src, setting="--input"), preserve_index=False)


def write_output(table: pa.Table, dst: Path) -> None:
    if dst.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        dst.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, dst)
        return
    from quantflow.core.tables import write_table

    write_table(table.to_pandas(), dst)


def check_output(dst: Path) -> None:
    """An unsupported ``--output`` suffix fails before any text is scored."""
    if dst.suffix.lower() not in {".parquet", ".csv", ".jsonl"}:
        raise ValueError(
            f"{dst}: unsupported file type {dst.suffix!r}; use .parquet, .csv or .jsonl (--output)"
        )


def predict_path(
    model: ServedModel, src: Path, dst: Path, text_column: str = "text", batch_size: int = BATCH_SIZE
) -> int:
    """Score every row of ``src`` into ``dst`` (input columns plus predictions); returns the row count."""
    check_output(dst)
    table = read_input(src)
    proba = score(model, texts_of(table, text_column, str(src)), batch_size, desc=src.name)
    write_output(with_predictions(table, proba, model), dst)
    logger.info("wrote %d predictions to %s", table.num_rows, dst)
    return table.num_rows
