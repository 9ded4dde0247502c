"""The night writes its ``--set`` overrides into params.yaml the way ``dvc exp run -S`` does: the file then
parses to the overridden params, and its comments, key order and other values stay."""

from __future__ import annotations

import shutil
from pathlib import Path

from quantflow.core.layout import Layout
from quantflow.core.params import load_params
from quantflow.intake.incoming import batches_of_no_dataset
from quantflow.intake.versioning import write_params

OVERRIDES = {
    "train.epochs": 1,
    "ingest.dataset": "review_sentiment",
    "validate.labels": ["positive", "negative"],
}


def test_overrides_written_into_the_file_give_the_overridden_params(
    project_root: Path, tmp_path: Path
) -> None:
    path = tmp_path / "params.yaml"
    shutil.copy(project_root / "params.yaml", path)
    original = path.read_text(encoding="utf-8")
    write_params(path, OVERRIDES)
    assert load_params(path).digest() == load_params(project_root / "params.yaml", OVERRIDES).digest()
    written = path.read_text(encoding="utf-8").splitlines()
    comments = [line for line in original.splitlines() if line.lstrip().startswith("#")]
    assert [line for line in written if line.lstrip().startswith("#")] == comments
    changed = [a for a, b in zip(original.splitlines(), written, strict=True) if a != b]
    assert len(changed) == len(OVERRIDES), changed  # one line per override, nothing else rewritten


def test_accepted_batches_are_kept_per_dataset(project_root: Path, tmp_path: Path) -> None:
    news = Layout.of(load_params(project_root / "params.yaml"), tmp_path)
    review = Layout.of(
        load_params(project_root / "params.yaml", {"ingest.dataset": "review_sentiment"}), tmp_path
    )
    assert news.accepted_file("b1").parent.name == "news_vs_comment"
    assert review.accepted_dir != news.accepted_dir and review.accepted_dir.parent == news.accepted_dir.parent
    flat = news.accepted_dir.parent / "old.parquet"  # stored before batches were kept per dataset
    flat.parent.mkdir(parents=True)
    flat.write_bytes(b"")
    [note] = batches_of_no_dataset(news)
    assert (
        str(flat) in note and "dvc move data/accepted/old.parquet data/accepted/<dataset>/old.parquet" in note
    )
