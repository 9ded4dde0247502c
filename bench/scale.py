"""`make bench-scale`: the scaling study on the default dataset with 1 and then 2 Dask workers, same grid, one run.

Runs ``quantflow scale``'s own function (flows/scale.py) twice back to back, prints the table of the 2-worker
sweep and both wall times, optionally times DDP training with 1 vs 2 processes on the sweep's prepared data,
and writes everything with the command line and the load (``uptime``) into BENCHMARKS.md.

    python bench/scale.py [--set ingest.max_rows_per_class=3000 --set train.epochs=3] [--ddp] [--no-write]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import yaml

from flows.scale import ScaleResult, run_scale, scale_layout
from quantflow.core.benchmarks import uptime, write_section
from quantflow.core.candidates import train_neural
from quantflow.core.layout import Layout
from quantflow.core.params import load_params
from quantflow.core.training import TrainResult

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench-scale:start -->", "<!-- bench-scale:end -->"


def table(result: ScaleResult) -> str:
    lines = [
        "| size | params | accuracy fp32 | accuracy int8 | macro-F1 fp32 | p50 ms fp32 | p50 ms int8 | MB fp32 | MB int8 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(result.rows, key=lambda row: row["params"]):
        lines.append(
            f"| {r['size']} | {r['params']:,} | {r['accuracy_fp32']:.4f} | {r['accuracy_int8']:.4f} "
            f"| {r['macro_f1_fp32']:.4f} | {r['latency_p50_ms_fp32']:.3f} | {r['latency_p50_ms_int8']:.3f} "
            f"| {r['size_bytes_fp32'] / 1e6:.2f} | {r['size_bytes_int8'] / 1e6:.2f} |"
        )
    return "\n".join(lines)


def time_ddp(overrides: dict, processes: int) -> tuple[float, TrainResult]:
    """Wall time of the train step with ``processes`` DDP processes on the sweep's prepared features."""
    params = load_params(ROOT / "params.yaml", overrides)
    layout = scale_layout(params, ROOT)
    p = params.train.model_copy(update={"workers": processes, "device": "cpu"})
    out = Layout.of(params, ROOT).scale_dir / f"ddp-{processes}"
    started = time.perf_counter()
    result = train_neural(
        p, layout.features_dir, layout.tokenizer_dir, out / "model", out / "history.json", params.seed
    )
    seconds = time.perf_counter() - started
    logging.info(
        "bench: DDP %d process(es): %.1f s, best val macro-F1 %.4f",
        processes,
        seconds,
        result.best_val_macro_f1,
    )
    return seconds, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--ddp", action="store_true", help="also time DDP training, 1 vs 2 processes")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {k: yaml.safe_load(v) for k, _, v in (pair.partition("=") for pair in args.overrides)}
    load_before = uptime()
    results = {w: run_scale(ROOT, overrides=overrides, workers=w) for w in (1, 2)}
    ddp = {n: time_ddp(overrides, n) for n in (1, 2)} if args.ddp else {}
    load_after = uptime()
    one, two = results[1], results[2]
    command = " ".join(
        ["python bench/scale.py", *(f"--set {o}" for o in args.overrides), *(["--ddp"] if args.ddp else [])]
    )
    lines = [
        START,
        f"Command: `{command}` (grid and variants from params.yaml `scale:`; {os.cpu_count()} cores).",
        f"Load: `{load_before}` before, `{load_after}` after.",
        "",
        table(two),
        "",
        "| Dask workers | sweep wall time, s | of which data preparation, s | speed-up of the sizes phase |",
        "|---|---|---|---|",
        f"| 1 | {one.seconds:.1f} | {one.prepare_seconds:.1f} | 1.00 |",
        f"| 2 | {two.seconds:.1f} | {two.prepare_seconds:.1f} | "
        f"{(one.seconds - one.prepare_seconds) / (two.seconds - two.prepare_seconds):.2f} |",
    ]
    if ddp:
        (t1, r1), (t2, r2) = ddp[1], ddp[2]
        lines += [
            "",
            "| DDP processes | train wall time, s | epochs run | best val macro-F1 |",
            "|---|---|---|---|",
            f"| 1 | {t1:.1f} | {len(r1.history)} | {r1.best_val_macro_f1:.4f} |",
            f"| 2 | {t2:.1f} | {len(r2.history)} | {r2.best_val_macro_f1:.4f} |",
        ]
    lines.append(END)
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        heading = "## Scaling study (issue: scaling study on Dask)"
        write_section(text, ROOT / "BENCHMARKS.md", START, END, heading)


if __name__ == "__main__":
    sys.exit(main())
