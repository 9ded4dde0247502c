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

from quantflow.params import Params, load_params
from tasks.contracts import check_batch, dataset_keys, derive
from tasks.drift import measure_drift
from tasks.ingest import load_builtin
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
    split_dir, tokenizer_dir = args.root / params.paths.split_dir, args.root / params.paths.tokenizer_dir
    known = dataset_keys(split_dir)
    rows = len(frame)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        raw = out / "raw.parquet"
        frame.to_parquet(raw, index=False)
        results = {
            "derived columns (normalize, script, markup, known)": timed(
                lambda: derive(frame, known, params.preprocess.language, params.preprocess.lowercase),
                args.rounds,
            ),
            "batch contract (derive + GX batch.json + Data Docs)": timed(
                lambda: check_batch(frame, params, known, args.root / "expectations", out / "b", "corpus"),
                args.rounds,
            ),
            "validate step (GX raw_dataset + class counts)": timed(
                lambda: _validate_quietly(params, raw, out, args.root / "expectations"), args.rounds
            ),
        }
        clean = frame.dropna()
        if (split_dir / "train.parquet").is_file():
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


def _validate_quietly(params: Params, raw: Path, out: Path, expectations: Path) -> None:
    """The raw suite reports the corpus's real blanks and duplicates as failures: only its time counts."""
    from quantflow.errors import ValidationFailed

    with contextlib.suppress(ValidationFailed):
        validate(params, raw, out / "v", expectations)


if __name__ == "__main__":
    main()
