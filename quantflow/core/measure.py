"""Side-by-side measurement of the compress step's variants: latency, throughput, sizes; the table and plot.

Every model is timed in the same process and the same run, interleaved chunk by chunk, so a burst of load
from another process hits all of them alike: the ratios hold even on a shared, noisy machine. Latency is
single-text (batch 1, one intra-op thread) and includes tokenization, as a request to the service would.
"""

from __future__ import annotations

import gzip
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from quantflow.core.headline import write_headline
from quantflow.core.layout import CompressionReports
from quantflow.core.onnx_model import OnnxClassifier
from quantflow.core.text import Tokenizer

logger = logging.getLogger(__name__)

CHUNK = 50  # texts per model before moving on to the next model (interleaving)
THROUGHPUT_BATCH = 64


@dataclass(frozen=True)
class Runner:
    """One model behind the same interface: raw texts → ids (tokenizer) and ids → logits (the model)."""

    name: str
    encode: Callable[[Sequence[str]], np.ndarray]
    logits: Callable[[np.ndarray], np.ndarray]


def onnx_runner(name: str, folder: Path) -> Runner:
    """An ONNX variant folder on one intra-op thread (the service's single-text setting)."""
    classifier = OnnxClassifier(folder, threads=1)
    return Runner(name, classifier.tokenizer.encode, classifier.logits)


def torch_runner(name: str, model: nn.Module, tokenizer: Tokenizer) -> Runner:
    """The PyTorch model in eager mode: the reference every ratio is taken against."""
    model.eval()

    def logits(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(ids)).numpy()

    return Runner(name, tokenizer.encode, logits)


def _time_texts(runner: Runner, texts: Sequence[str]) -> tuple[list[float], list[float]]:
    """Per-text seconds: end to end (tokenize + run) and the model alone."""
    total, model_only = [], []
    for text in texts:
        start = time.perf_counter()
        ids = runner.encode([text])  # (1, T)
        encoded = time.perf_counter()
        runner.logits(ids)
        end = time.perf_counter()
        total.append(end - start)
        model_only.append(end - encoded)
    return total, model_only


def _time_batches(runner: Runner, batches: Sequence[Sequence[str]]) -> tuple[int, float]:
    start = time.perf_counter()
    for batch in batches:
        runner.logits(runner.encode(batch))
    return sum(len(b) for b in batches), time.perf_counter() - start


def measure(
    runners: Sequence[Runner], latency_texts: Sequence[str], throughput_texts: Sequence[str], rounds: int = 1
) -> dict[str, dict[str, float]]:
    """Latency p50/p99 (ms, with tokenization), model-only p50 (ms) and batch-64 texts/s of each runner.

    Runs on one torch thread (ORT sessions are built with one); the caller's setting is restored after.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for runner in runners:  # warm-up: first calls allocate and pick kernels, at batch 1 and at batch 64
            _time_texts(runner, latency_texts[:10])
            _time_batches(runner, [throughput_texts[:THROUGHPUT_BATCH]])
        seconds = {r.name: ([], []) for r in runners}
        for _ in range(rounds):
            for start in range(0, len(latency_texts), CHUNK):
                for runner in runners:
                    total, model_only = _time_texts(runner, latency_texts[start : start + CHUNK])
                    seconds[runner.name][0].extend(total)
                    seconds[runner.name][1].extend(model_only)
        batches = [throughput_texts[i : i + THROUGHPUT_BATCH] for i in range(0, len(throughput_texts), 64)]
        done = {r.name: [0, 0.0] for r in runners}
        for _ in range(rounds):
            for start in range(0, len(batches), 4):
                for runner in runners:
                    n, s = _time_batches(runner, batches[start : start + 4])
                    done[runner.name][0] += n
                    done[runner.name][1] += s
    finally:
        torch.set_num_threads(before)
    return {name: _summary(*seconds[name], *done[name]) for name in seconds}


def _summary(
    total: list[float], model_only: list[float], texts: int, batch_seconds: float
) -> dict[str, float]:
    ms = np.asarray(total) * 1e3
    return {
        "latency_p50_ms": round(float(np.percentile(ms, 50)), 4),
        "latency_p99_ms": round(float(np.percentile(ms, 99)), 4),
        "model_p50_ms": round(float(np.percentile(np.asarray(model_only) * 1e3, 50)), 4),
        "throughput_b64": round(texts / batch_seconds, 1) if batch_seconds else 0.0,
    }


def gzip_size(path: Path) -> int:
    """Bytes after gzip -9: what sparsity buys on disk and over the wire."""
    return len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))


# --- table and plot -----------------------------------------------------------------------------------------

COLUMNS = (
    ("variant", "{}"),
    ("accuracy", "{:.4f}"),
    ("Δ acc (pp)", "{:+.2f}"),
    ("macro-F1", "{:.4f}"),
    ("size (KB)", "{:.0f}"),
    ("gzip (KB)", "{:.0f}"),
    ("params", "{:,}"),
    ("p50 ms", "{:.3f}"),
    ("p99 ms", "{:.3f}"),
    ("model p50 ms", "{:.3f}"),
    ("texts/s @64", "{:,.0f}"),
)


def _row(name: str, v: dict) -> list[str]:
    values = [
        name,
        v.get("accuracy"),
        -v["accuracy_drop_pp"] if "accuracy_drop_pp" in v else None,
        v.get("macro_f1"),
        v["size_bytes"] / 1024,
        v["gzip_bytes"] / 1024,
        v["params"],
        v["latency_p50_ms"],
        v["latency_p99_ms"],
        v["model_p50_ms"],
        v["throughput_b64"],
    ]
    return ["" if x is None else fmt.format(x) for (_, fmt), x in zip(COLUMNS, values, strict=True)]


def markdown_table(variants: dict[str, dict], reference: dict[str, dict], chosen: str) -> str:
    """One row per variant (the chosen one in bold) and the PyTorch eager reference row(s)."""
    lines = ["| " + " | ".join(c for c, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for name, v in {**reference, **variants}.items():
        cells = _row(name, v)
        if name == chosen:
            cells[0] = f"**{name}** (chosen)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pareto_plot(variants: dict[str, dict], reference: dict[str, dict], chosen: str, path: Path) -> Path:
    """Accuracy vs single-text p50 latency, marker area proportional to file size; the chosen one ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = {**reference, **variants}
    biggest = max(v["size_bytes"] for v in points.values())
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, v) in enumerate(points.items()):
        xy = (v["latency_p50_ms"], 100 * v["accuracy"])
        area = 60 + 900 * v["size_bytes"] / biggest
        ax.scatter(*xy, s=area, alpha=0.6, label=f"{name} ({v['size_bytes'] / 1024:.0f} KB)")
        if name == chosen:
            ax.scatter(*xy, s=area * 1.6, facecolors="none", edgecolors="k")
        # alternate label offsets: variants of one model often sit on top of each other
        ax.annotate(name, xy, xytext=(8, 10 if i % 2 else -14), textcoords="offset points", fontsize=8)
    ax.set_xscale("log")
    ax.margins(0.2)
    ax.legend(fontsize=7, loc="best", markerscale=0.4)
    ax.set_xlabel("single-text latency p50 with tokenization (ms, 1 thread, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("compression variants (marker size = file bytes; ringed = chosen)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def write_report(reports: CompressionReports, report: dict) -> None:
    """compression.json, compression.md (table + decision), the Pareto plot and the chosen variant's headline."""
    table_path, plot_path = reports.table, reports.plot
    reports.report.parent.mkdir(parents=True, exist_ok=True)
    reports.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    variants, reference, chosen = report["variants"], report["reference"], report["chosen"]
    table = markdown_table(variants, reference, chosen)
    facts = ", ".join(f"{k} {v}" for k, v in report["ratios"].items())
    table_path.write_text(
        f"# Compression\n\n{table}\n\nDecision: {report['decision']['reason']}.\n\nRatios: {facts}.\n\n"
        f"Latency: batch 1, 1 thread, tokenization included, {report['measurement']['latency_texts']} test "
        f"texts; throughput: batch 64, 1 thread. Δ acc is vs ONNX fp32.\n",
        encoding="utf-8",
    )
    pareto_plot(variants, reference, chosen, plot_path)
    write_headline(reports.headline, headline(variants[chosen], chosen))


def headline(variant: dict, name: str) -> dict[str, float | str]:
    """The chosen variant's figures that experiments are compared by: accuracy, macro-F1, MB, p50 latency."""
    figures: dict[str, float | str] = {
        "variant": name,
        "accuracy": variant["accuracy"],
        "macro_f1": variant["macro_f1"],
        "size_mb": variant["size_bytes"] / 1e6,
    }
    if variant.get("latency_p50_ms") is not None:
        figures["p50_ms"] = variant["latency_p50_ms"]
    return figures
