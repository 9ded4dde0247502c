"""Drift of a nightly batch against the current training data, and its table and plot.

Three figures, each with a warn and a block bound in ``params.yaml`` (``nightly.drift``): the
Kolmogorov-Smirnov statistic of text lengths, the total variation distance of the label mix, and the rise
of the out-of-vocabulary rate over the validation split's (vocabulary: ``artifacts/tokenizer``). The most
frequent new tokens are listed. Before the first run there is no training data and drift is not measured.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from quantflow.core.layout import BatchReports, split_file
from quantflow.core.params import DriftParams
from quantflow.core.text import UNK, Tokenizer

logger = logging.getLogger(__name__)

LEVELS = ("ok", "warn", "block")


@dataclass
class DriftReport:
    """One row per figure (value, bounds, verdict), the new tokens, and the worst verdict."""

    verdict: str = "not measured"
    rows: list[dict] = field(default_factory=list)
    new_tokens: list[tuple[str, int]] = field(default_factory=list)
    note: str = ""

    @property
    def blocks(self) -> list[str]:
        return [self._line(r) for r in self.rows if r["verdict"] == "block"]

    @property
    def warns(self) -> list[str]:
        return [self._line(r) for r in self.rows if r["verdict"] == "warn"]

    @staticmethod
    def _line(row: dict) -> str:
        return (
            f"drift {row['verdict']}: {row['metric']} = {row['value']:.3f} "
            f"(warn at {row['warn']}, block at {bound(row['block'])}; {row['detail']})"
        )


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Largest gap between the two empirical CDFs (two-sample Kolmogorov-Smirnov statistic)."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    a, b = np.sort(a), np.sort(b)
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / len(a)
    cdf_b = np.searchsorted(b, points, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def label_mix(labels: pd.Series) -> dict[str, float]:
    counts = labels.value_counts(normalize=True)
    return {str(k): float(v) for k, v in counts.items()}


def total_variation(p: dict[str, float], q: dict[str, float]) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def oov(tokenizer: Tokenizer, texts: list[str]) -> tuple[float, Counter]:
    """Share of tokens outside the vocabulary, and how often each unknown token occurs."""
    total, unknown = 0, Counter()
    for tokens in tokenizer.iter_tokens(texts):
        total += len(tokens)
        unknown.update(t for t in tokens if t not in tokenizer.vocab or t == UNK)
    return (sum(unknown.values()) / total if total else 0.0), unknown


def level(value: float, warn: float, block: float | None) -> str:
    """ok, warn or block; a figure without a block bound (None) warns at most."""
    return "block" if block is not None and value > block else "warn" if value > warn else "ok"


def bound(block: float | None) -> str:
    return "never" if block is None else str(block)


def measure_drift(
    batch: pd.DataFrame, split_dir: Path, tokenizer_dir: Path, params: DriftParams
) -> DriftReport:
    """Compare the batch's accepted rows with the train split (and the val split for the OOV baseline)."""
    train_path = split_file(split_dir, "train")
    if not train_path.is_file():
        return DriftReport(note="no training data yet (first run): drift not measured")
    train = pd.read_parquet(train_path, columns=["text", "label"])
    ks = ks_statistic(batch["text"].str.len().to_numpy(), train["text"].str.len().to_numpy())
    batch_mix, train_mix = label_mix(batch["label"]), label_mix(train["label"])
    rows = [
        figure_row(
            "text length (KS)",
            ks,
            params.length_ks_warn,
            params.length_ks_block,
            f"median {batch['text'].str.len().median():.0f} vs {train['text'].str.len().median():.0f} chars",
        ),
        figure_row(
            "label mix (TVD)",
            total_variation(batch_mix, train_mix),
            params.label_tvd_warn,
            params.label_tvd_block,
            f"batch {describe_mix(batch_mix)} vs train {describe_mix(train_mix)}",
        ),
    ]
    report = DriftReport(rows=rows)
    if (tokenizer_dir / "vocab.json").is_file():
        tokenizer = Tokenizer.load(tokenizer_dir)
        rate, unknown = oov(tokenizer, batch["text"].tolist())
        val_path = split_file(split_dir, "val")
        base = (
            oov(tokenizer, pd.read_parquet(val_path, columns=["text"])["text"].tolist())[0]
            if val_path.is_file()
            else 0.0
        )
        rows.append(
            figure_row(
                "OOV rate increase",
                rate - base,
                params.oov_increase_warn,
                params.oov_increase_block,
                f"batch {rate:.3f} vs val {base:.3f}",
            )
        )
        report.new_tokens = unknown.most_common(params.top_new_tokens)
    else:
        report.note = "no vocabulary yet: OOV rate not measured"
    report.verdict = max((r["verdict"] for r in rows), key=LEVELS.index)
    return report


def figure_row(metric: str, value: float, warn: float, block: float | None, detail: str) -> dict:
    """One row of a drift table: the figure, its bounds and verdict, and what it compared in words."""
    return {
        "metric": metric,
        "value": float(value),
        "warn": warn,
        "block": block,
        "verdict": level(value, warn, block),
        "detail": detail,
    }


def describe_mix(mix: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0%}" for k, v in sorted(mix.items()))


def render_table(report: DriftReport, title: str = "drift verdict") -> str:
    """The drift table as markdown (logged with the run's reports)."""
    lines = [f"{title}: **{report.verdict}**", ""]
    if report.note:
        lines += [report.note, ""]
    if report.rows:
        lines += ["| figure | value | warn | block | verdict | detail |", "|---|---|---|---|---|---|"]
        lines += [
            f"| {r['metric']} | {r['value']:.3f} | {r['warn']} | {bound(r['block'])} | {r['verdict']} "
            f"| {r['detail']} |"
            for r in report.rows
        ]
    if report.new_tokens:
        lines += ["", "top new tokens: " + ", ".join(f"`{t}` ×{n}" for t, n in report.new_tokens)]
    return "\n".join(lines) + "\n"


def write_drift_report(
    report: DriftReport, batch: pd.DataFrame, split_dir: Path, reports: BatchReports
) -> None:
    """``drift.json``, ``drift.md`` and, when there is training data, ``drift.png`` in the batch's reports."""
    reports.folder.mkdir(parents=True, exist_ok=True)
    reports.drift.write_text(json.dumps(asdict(report), indent=2, ensure_ascii=False) + "\n", "utf-8")
    reports.drift_table.write_text(render_table(report), encoding="utf-8")
    if report.rows:
        train = pd.read_parquet(split_file(split_dir, "train"), columns=["text", "label"])
        _plot(batch, train, reports.drift_plot)


def _plot(batch: pd.DataFrame, train: pd.DataFrame, path: Path) -> None:
    """Text-length distributions and label mixes, batch beside train."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    top = float(np.percentile(train["text"].str.len(), 99)) if len(train) else 200.0
    bins = np.linspace(0, max(top, 1.0), 40)
    for frame, name in ((train, "train"), (batch, "batch")):
        left.hist(frame["text"].str.len().clip(upper=top), bins=bins, density=True, alpha=0.5, label=name)
    left.set(title="text length (chars)", xlabel="chars", ylabel="density")
    left.legend()
    labels = sorted(set(train["label"]) | set(batch["label"]))
    x = np.arange(len(labels))
    for offset, (frame, name) in zip((-0.2, 0.2), ((train, "train"), (batch, "batch")), strict=True):
        mix = label_mix(frame["label"])
        right.bar(x + offset, [mix.get(k, 0.0) for k in labels], width=0.4, label=name)
    right.set(title="label mix", xticks=x, xticklabels=labels, ylabel="share")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
