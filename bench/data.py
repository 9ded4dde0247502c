"""Throughput of the nightly batch contract and the drift check on the full built-in corpus, and what they add
to a nightly run of the default size.

Run ``make bench-data`` (or ``python bench/data.py``). Throughput: the whole corpus judged as one batch, side by
side in one process with the raw-dataset validate step (tasks/validate.py) on the same rows. Nightly overhead:
a default-size dataset (params.yaml's ingest cap, 10% of the corpus held back) is ingested, split and
preprocessed in a temp folder; then one batch of held-back rows goes through what the flow adds per night:
the batch contract + Data Docs, drift + its table and plot, and the dataset contract after split.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from quantflow.core.corpora import held_back, load_builtin
from quantflow.core.layout import BatchReports, Layout
from quantflow.core.params import Params, load_params
from quantflow.intake.contracts import check_batch, dataset_keys, derive
from quantflow.intake.drift import measure_drift
from tasks.validate import validate


def timed(call: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--batch-rows-per-class", type=int, default=150)
    args = parser.parse_args()
    params = load_params(args.root / "params.yaml")
    frame = load_builtin(params.ingest.dataset)
    project = Layout.of(params, args.root)
    split_dir, tokenizer_dir = project.split_dir, project.tokenizer_dir
    known = dataset_keys(split_dir)
    rows = len(frame)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        raw = out / "raw.parquet"
        frame.to_parquet(raw, index=False)
        results = {
            "derived columns (normalize, script, markup, known)": timed(
                lambda: derive(frame, known, params.preprocess.language),
                args.rounds,
            ),
            "batch contract (derive + GX batch.json + Data Docs)": timed(
                lambda: check_batch(
                    frame, params, known, project.expectations_dir, BatchReports(out / "b"), "corpus"
                ),
                args.rounds,
            ),
            "validate step (GX raw_dataset + class counts)": timed(
                lambda: _validate_quietly(params, raw, out, project.expectations_dir), args.rounds
            ),
        }
        clean = frame.dropna()
        if project.split_file("train").is_file():
            results["drift (KS, label mix, OOV vs val)"] = timed(
                lambda: measure_drift(clean, split_dir, tokenizer_dir, params.nightly.drift), args.rounds
            )
    print(
        f"{rows} rows ({params.ingest.dataset}, the whole built-in corpus), median of {args.rounds} rounds\n"
    )
    print("| check | seconds | rows/s |")
    print("|---|---|---|")
    for name, seconds in results.items():
        print(f"| {name} | {seconds:.2f} | {rows / seconds:,.0f} |")
    print()
    nightly_overhead(params, args.root, args.batch_rows_per_class, args.rounds)


def nightly_overhead(params: Params, root: Path, per_class: int, rounds: int) -> None:
    """Seconds the nightly checks add for one batch against a default-size dataset (split + vocabulary)."""
    from quantflow.intake.contracts import check_dataset
    from quantflow.intake.drift import write_drift_report
    from tasks.ingest import ingest
    from tasks.preprocess import preprocess
    from tasks.split import split

    held_params = params.with_overrides({"ingest.holdout_fraction": 0.1})
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        scratch = Layout.of(held_params, out)
        raw = ingest(held_params.ingest, scratch.raw, params.seed).path
        split(params.split, raw, scratch.split_dir, scratch.split_stats, params.seed)
        preprocess(
            params.preprocess, scratch.split_dir, scratch.features_dir, scratch.tokenizer_dir, params.labels
        )
        corpus = load_builtin(params.ingest.dataset)
        held = corpus[held_back(corpus, 0.1)]
        batch = held.groupby("label").head(per_class).reset_index(drop=True)
        known = dataset_keys(scratch.split_dir)
        reports = scratch.batch_reports("batch")

        def intake() -> None:
            verdict = check_batch(batch, params, known, root / "expectations", reports, "batch")
            drift = measure_drift(
                verdict.clean, scratch.split_dir, scratch.tokenizer_dir, params.nightly.drift
            )
            write_drift_report(drift, verdict.clean, scratch.split_dir, reports)

        times = {
            f"batch contract + drift (+ Data Docs, table, plot), one batch of {len(batch)} rows": timed(
                intake, rounds
            ),
            f"dataset contract on the merged split ({len(known)} rows)": timed(
                lambda: check_dataset(
                    held_params, scratch.split_dir, root / "expectations", scratch.dataset_contract
                ),
                rounds,
            ),
        }
    print(f"nightly overhead against a default-size dataset, median of {rounds} rounds\n")
    print("| step | seconds |")
    print("|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.2f} |")
    print(f"| **added per night** | **{sum(times.values()):.2f}** |")


def _validate_quietly(params: Params, raw: Path, out: Path, expectations: Path) -> None:
    """The raw suite reports the corpus's real blanks and duplicates as failures: only its time counts."""
    from quantflow.core.errors import ValidationFailed

    with contextlib.suppress(ValidationFailed):
        validate(
            params.validate_,
            raw,
            Layout.of(params, out).validation_report,
            expectations,
            params.labels,
            params.ingest.dataset,
        )


if __name__ == "__main__":
    main()
