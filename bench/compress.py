"""`make bench-compress`: the compression variants measured carefully on the full default dataset.

Runs the compress step (the same function as the pipeline) on the neural candidate the train step left in
``artifacts/candidates/neural`` (or ``artifacts/model`` when that is neural; when ``train.candidates`` has no
neural model, the neural default is trained on ``data/features`` by the train step's function first) with
every test text for latency and several interleaved rounds, into a scratch folder (the pipeline's outputs and
``dvc.lock`` stay untouched), then compares dynamic int8 weight types side by side. Every classic candidate beside it
(``artifacts/candidates/tfidf_lr``, ``nb_lr``) is compressed too (fp32 + int8-static), and all the families'
ONNX variants are timed together, interleaved in one process, for the families table. Prints the tables and
writes them into the Compression section of BENCHMARKS.md.

    python bench/compress.py [--rounds 3] [--no-write] [--texts N] [--set compress.distill_epochs=2 ...]

``--texts`` and ``--set`` make a quick smoke run (fewer texts timed, cheaper variants); such a run prints its
tables and never writes BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

import pandas as pd
import yaml

from quantflow.core.benchmarks import write_section
from quantflow.core.candidates import NEURAL_FAMILY, folder_family, train_neural
from quantflow.core.layout import Layout
from quantflow.core.measure import measure, onnx_runner
from quantflow.core.params import NEURAL, Params, load_params
from quantflow.core.quantize import quantize_int8
from quantflow.core.variants import FP32
from tasks.compress import compress

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench-compress:start -->", "<!-- bench-compress:end -->"


def weight_type_table(variants_dir: Path, texts: list[str], rounds: int, scratch: Path) -> str:
    """Dynamic int8 with unsigned vs signed weights, with and without Conv, against ONNX fp32."""
    fp32 = variants_dir / FP32
    setups = {
        "uint8 weights, Gather+Gemm+Conv": (["Gather", "Gemm", "MatMul", "Conv"], "uint8"),
        "int8 weights, Gather+Gemm+Conv": (["Gather", "Gemm", "MatMul", "Conv"], "int8"),
        "uint8 weights, Gather+Gemm (Conv fp32)": (["Gather", "Gemm", "MatMul"], "uint8"),
    }
    runners = [onnx_runner("fp32", fp32)]
    for i, (name, (ops, weights)) in enumerate(setups.items()):
        folder = scratch / f"dyn{i}"
        shutil.copytree(fp32, folder)
        quantize_int8(fp32 / "model.onnx", folder / "model.onnx", ops, weights)
        runners.append(onnx_runner(name, folder))
    timings = measure(runners, texts, texts[:1280], rounds)
    lines = ["| dynamic int8 setting | p50 ms | model p50 ms | texts/s @64 |", "|---|---|---|---|"]
    for name, t in timings.items():
        lines.append(
            f"| {name} | {t['latency_p50_ms']:.3f} | {t['model_p50_ms']:.3f} | {t['throughput_b64']:,.0f} |"
        )
    return "\n".join(lines)


Goal = tuple[str, str, float, bool]  # what, target, measured, met


def chosen_goals(report: dict) -> list[Goal]:
    """The compression suite's goals for the chosen variant, and the throughput goals of issue #18."""
    r, v, chosen = report["ratios"], report["variants"], report["chosen"]
    size, lat = r["size_ratio"], r["chosen_latency_speedup_vs_torch"]
    b64, drop = r["chosen_throughput_ratio_vs_torch"], v[chosen]["accuracy_drop_pp"]
    return [
        ("chosen variant's size vs ONNX fp32", "≤ 0.26×", size, size <= 0.26),
        ("chosen single-text latency vs PyTorch eager (same tokenizer)", "≥ 4×", lat, lat >= 4),
        ("chosen batch-64 throughput vs PyTorch eager (same batches)", "≥ 3×", b64, b64 >= 3),
        ("chosen accuracy drop vs ONNX fp32 (pp)", "≤ 0.3", drop, drop <= 0.3),
    ]


def structure_goals(report: dict) -> list[Goal]:
    """Issue #18: slim-int8 against ONNX fp32, the distilled student against its teacher's int8."""
    r, v = report["ratios"], report["variants"]
    rows: list[Goal] = []
    if "slim-int8" in v:
        size, drop = r["slim_size_ratio_vs_fp32"], v["slim-int8"]["accuracy_drop_pp"]
        rows.append(("slim-int8 size vs ONNX fp32", "≤ 0.15×", size, size <= 0.15))
        rows.append(("slim-int8 accuracy drop vs ONNX fp32 (pp)", "≤ 0.5", drop, drop <= 0.5))
    if "distilled-int8" in v and "int8-static" in v:
        lat, model = (
            r["distilled_latency_speedup_vs_teacher_int8"],
            r["distilled_model_speedup_vs_teacher_int8"],
        )
        drop = v["distilled-int8"]["accuracy_drop_pp"]
        rows.append(
            ("distilled-int8 single-text latency vs the teacher's int8-static", "≥ 2×", lat, lat >= 2)
        )
        rows.append(("  the same, model alone (tokenizer left out)", "(≥ 2×)", model, model >= 2))
        rows.append(("distilled-int8 accuracy drop vs the teacher (ONNX fp32, pp)", "≤ 1", drop, drop <= 1))
    return rows


def goals_table(report: dict) -> str:
    """The goals, each as a ratio measured side by side in this run, and whether it was met."""
    lines = [f"| goal (chosen: {report['chosen']}) | target | measured | met |", "|---|---|---|---|"]
    for goal, target, measured, met in chosen_goals(report) + structure_goals(report):
        lines.append(f"| {goal} | {target} | {measured:g} | {'yes' if met else '**no**'} |")
    return "\n".join(lines)


def candidate_folders(layout: Layout) -> dict[str, Path]:
    """Every trained candidate (artifacts/candidates/<name>/), or the shipped model alone under its family's
    name when the train step left no candidates folder (a run from before candidates existed)."""
    found = {p.name: p for p in sorted(layout.candidates_dir.glob("*")) if (p / "model.json").is_file()}
    if not found and (layout.model_dir / "model.json").is_file():
        found = {folder_family(layout.model_dir): layout.model_dir}
    return found


def compress_candidate(params: Params, folder: Path, layout: Layout, out: Path) -> dict:
    """The compress step on one candidate into ``out``; its compression.json."""
    scratch = Layout.of(params, out)
    compress(
        params.compress,
        params.calibrate,
        folder,
        layout.split_dir,
        scratch.variants_dir,
        scratch.compression,
        params.seed,
    )
    return json.loads(scratch.compression_report.read_text(encoding="utf-8"))


def family_table(reports: dict[str, tuple[dict, Path]], texts: list[str], rounds: int) -> str:
    """Every candidate's ONNX variants timed together (interleaved, one process): size, latency, throughput."""
    runners, accuracy, size = [], {}, {}
    for name, (report, variants_dir) in reports.items():
        for variant, row in report["variants"].items():
            key = f"{name} {variant}"
            runners.append(onnx_runner(key, variants_dir / variant))
            accuracy[key], size[key] = row["accuracy"], row["size_bytes"]
    timings = measure(runners, texts, texts[:1280], rounds)
    lines = [
        "| candidate, variant | accuracy | size (KB) | p50 ms | model p50 ms | texts/s @64 |",
        "|---|---|---|---|---|---|",
    ]
    for key, t in timings.items():
        lines.append(
            f"| {key} | {accuracy[key]:.4f} | {size[key] / 1024:,.0f} | {t['latency_p50_ms']:.3f} "
            f"| {t['model_p50_ms']:.3f} | {t['throughput_b64']:,.0f} |"
        )
    return "\n".join(lines)


def section(
    report_md: str, weights_md: str, goals_md: str, families_md: str, rounds: int, seconds: float, texts: int
) -> str:
    load = os.getloadavg()[0]
    return f"""{START}
## Compression (issues: compression suite; #18, round two: slim-int8 for every family, distilled-int8)

Command: `make bench-compress` (that is `python bench/compress.py --rounds {rounds}`: the compress step on the
neural default of `params.yaml` (the train step's candidate, or trained by the benchmark on `make run`'s
features when `train.candidates` has none), every one of the {texts:,} test texts timed one by one
and in batches of 64, {rounds} rounds interleaved across the models in one process), run on
{date.today().isoformat()} on {platform.machine()} with 2 cores shared with other engineers (1-min load
average {load:.1f} at the end), {seconds:.0f} s. Latency is one text at a time on one thread and includes the
tokenizer; "model p50" is the model alone on the same ids; batch-64 throughput also includes the tokenizer,
and PyTorch eager and every variant run the very same batches. Δ acc is against ONNX fp32; the ratios are the
issues' goals.

{report_md.split(chr(10), 2)[2].strip()}

{goals_md}

Dynamic int8, weight type and Conv chosen by measurement (same run, same texts):

{weights_md}

Every family the train step trained (`train.candidates`), each compressed by the same step (a classic model:
fp32 and int8-static: fixed scales, batch-invariant), all variants timed together in one process (same texts,
interleaved):

{families_md}
{END}
"""


def with_neural(params: Params, layout: Layout, folders: dict[str, Path], tmp: Path) -> dict[str, Path]:
    """``folders``, plus the neural default (``train.model`` with params.yaml's ``train.*``) trained by the train
    step's function into the scratch folder when ``train.candidates`` has no neural model (the compression goals
    are about it)."""
    if any(folder_family(f) == NEURAL_FAMILY for f in folders.values()):
        return folders
    if not (layout.features_dir / "train.npz").is_file():
        raise SystemExit(f"no features under {layout.features_dir}: run `make run` first")
    print(f"train.candidates {params.train.candidates} has no neural model: training the neural default")
    folder = tmp / "neural-model"
    train_neural(
        params.train,
        layout.features_dir,
        layout.tokenizer_dir,
        folder,
        tmp / "neural-history.json",
        params.seed,
    )
    return {**folders, NEURAL: folder}


def measure_all(params: Params, layout: Layout, texts: list[str], rounds: int, tmp: Path) -> tuple[str, ...]:
    """The neural candidate's compression table, goals and weight-type table, and the families table."""
    folders = with_neural(params, layout, candidate_folders(layout), tmp)
    neural = next(n for n, f in folders.items() if folder_family(f) == NEURAL_FAMILY)
    reports = {}
    for name, folder in folders.items():  # the neural one into tmp itself (its tables), the others beside it
        out = tmp if name == neural else tmp / f"candidate-{name}"
        reports[name] = (compress_candidate(params, folder, layout, out), Layout.of(params, out).variants_dir)
    scratch = Layout.of(params, tmp)
    report_md = scratch.compression_table.read_text(encoding="utf-8")
    goals_md = goals_table(reports[neural][0])
    weights_md = weight_type_table(scratch.variants_dir, texts, rounds, tmp)
    return report_md, weights_md, goals_md, family_table(reports, texts, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--texts", type=int, help="smoke run: time only the first N test texts")
    parser.add_argument("--set", nargs="*", default=[], help="smoke run: params overrides, key=value (YAML)")
    args = parser.parse_args()
    smoke = args.texts is not None or bool(args.set)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    params = load_params(ROOT / "params.yaml")
    layout = Layout.of(params, ROOT)
    test_path = layout.split_file("test")
    if not test_path.is_file():
        raise SystemExit(f"no {test_path}: run `make run` first")
    texts = pd.read_parquet(test_path)["text"].astype(str).tolist()[: args.texts]
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    params = params.with_overrides(
        {
            "compress.latency_texts": len(texts),
            "compress.throughput_texts": max(64, len(texts)),
            "compress.rounds": args.rounds,
            **overrides,
        }
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tables = measure_all(params, layout, texts, args.rounds, Path(tmp))
        if not smoke:  # a smoke run leaves the committed plot alone too
            shutil.copy(
                Layout.of(params, Path(tmp)).compression_plot, ROOT / "bench" / "compression_pareto.png"
            )
    text = section(*tables, args.rounds, time.perf_counter() - start, len(texts))
    print(text)
    if smoke:
        print(f"smoke run ({args.texts} texts, overrides {overrides}): BENCHMARKS.md left alone")
    elif not args.no_write:
        write_section(text, ROOT / "BENCHMARKS.md", START, END)
        print("written to BENCHMARKS.md; plot in bench/compression_pareto.png")


if __name__ == "__main__":
    main()
