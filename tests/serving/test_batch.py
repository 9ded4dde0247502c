"""``quantflow predict`` as a user runs it: a light start-up with a progress bar, and the Dask path."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantflow.core.onnx_model import OnnxClassifier

HEAVY = ["torch", "mlflow", "prefect", "pandas", "fastapi", "spacy"]


def run_predict(args: list[str], importtime: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "quantflow.cli", "predict"]
    done = subprocess.run(cmd + args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_predict_start_up_imports_nothing_heavy_and_shows_a_progress_bar(
    variant: Path, texts: pd.DataFrame, tmp_path: Path
) -> None:
    """Parquet in and out: no torch, MLflow, Prefect, pandas, FastAPI or spaCy is imported (python -X
    importtime lists every module), and stderr carries tqdm's bar counting the texts."""
    src, dst = tmp_path / "in.parquet", tmp_path / "out.parquet"
    texts[["text"]].to_parquet(src, index=False)
    done = run_predict(
        ["--input", str(src), "--output", str(dst), "--model-dir", str(variant)], importtime=True
    )
    imported = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", done.stderr, flags=re.MULTILINE))
    assert "onnxruntime" in imported  # the list is real
    assert sorted(m for m in HEAVY if m in imported) == []
    assert re.search(rf"100%\|[^|]*\| {len(texts)}/{len(texts)} .*text/s", done.stderr), done.stderr[-1000:]
    out = pd.read_parquet(dst)
    assert out["label"].tolist() == OnnxClassifier(variant).predict(texts["text"].tolist())


@pytest.mark.slow
def test_dask_path_gives_the_single_process_labels(
    variant: Path, texts: pd.DataFrame, tmp_path: Path
) -> None:
    """A Parquet dataset of 3 parts (2,000 texts, shuffled), scored on a 2-worker LocalCluster, gives a
    partitioned output with the labels and probabilities of the single-process path, row for row."""
    frame = pd.concat([texts[["text"]]] * 10, ignore_index=True).sample(frac=1.0, random_state=0)
    frame["id"] = np.arange(len(frame))
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(frame)), 3)):
        frame.iloc[part].to_parquet(dataset / f"part-{i}.parquet", index=False)
    single, scored = tmp_path / "single.parquet", tmp_path / "scored"
    run_predict(["--input", str(dataset), "--output", str(single), "--model-dir", str(variant)])
    done = run_predict(
        ["--input", str(dataset), "--output", str(scored), "--model-dir", str(variant), "--workers", "2"]
    )
    assert f"{len(frame)} predictions on 2 Dask workers (3 partitions)" in done.stdout
    assert len(list(scored.glob("*.parquet"))) == 3
    expected = pd.read_parquet(single).sort_values("id", ignore_index=True)
    got = pd.read_parquet(scored).sort_values("id", ignore_index=True)
    assert got["id"].tolist() == list(range(len(frame)))
    assert got["label"].tolist() == expected["label"].tolist()
    labels = OnnxClassifier(variant).labels
    for label in labels:
        np.testing.assert_allclose(got[f"proba_{label}"], expected[f"proba_{label}"], atol=1e-6)
    assert list(got.columns) == list(expected.columns)
