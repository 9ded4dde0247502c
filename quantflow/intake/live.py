"""Live drift: what the service answered since the last night, against what the served model was trained and
tested on. Runs every night, retrained or not: it reads traffic, not batches.

The window is the prediction log (quantflow/core/prediction_log.py, ``serve.log_dir``) from the cursor
(``.quantflow/live_cursor.json``: where the last *completed* night stopped reading) to the night's start minus
``nightly.live_drift.settle_s``. The night records its window end and its verdict in its journal; the cursor
moves there only when the night completes (flows/night.py), so a night killed or rolled back leaves its lines
for the next one, which reads them again.

Figures, each with a warn and an optional block bound (``nightly.live_drift``; batch drift's functions,
quantflow/intake/drift.py):

- text length KS, served (the ``length`` of each line: there even without the text) vs the train split;
- OOV rate rise and the top new tokens, served texts vs the val split, against the tokenizer's vocabulary;
- predicted-label mix (TVD) and mean confidence drop, served answers vs **the reference**: the workspace's
  shipped variant (``compression.json``'s choice, the model the last night registered) predicting the test
  split now. The model, its test split and its data are the same ones the served version was built from
  when @staging holds the last night's version; after a night held at @challenger the service answers from an
  older version (the report lists the versions that answered);
- shadow disagreement: the share of shadow lines whose ``@challenger`` label differs from the served one.

Below ``min_texts`` served lines there is no verdict ("not enough traffic"); OOV and disagreement need that many
texts or shadow lines of their own. Before the first night there is no training data: nothing is measured.
A figure past its block bound fails the register gate's ``live_drift`` check: tonight's model is registered
but not promoted. The served texts also feed the review queue (quantflow/intake/review.py).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task

from quantflow.core.layout import Layout, LiveReports
from quantflow.core.onnx_model import MODEL_FILE, OnnxClassifier
from quantflow.core.params import LiveDriftParams, Params
from quantflow.core.prediction_log import log_files, read_log, timestamp
from quantflow.core.text import Tokenizer
from quantflow.core.workspace import state_dir
from quantflow.intake.drift import (
    LEVELS,
    DriftReport,
    describe_mix,
    figure_row,
    ks_statistic,
    label_mix,
    oov,
    render_table,
    total_variation,
)
from quantflow.intake.review import ReviewQueue, review_queue

logger = logging.getLogger(__name__)

CURSOR_FILE = "live_cursor.json"  # under .quantflow/: the end of the window the last completed night read
CHECK = "live_drift"  # the register gate's check
# figure → (its bounds' prefix in nightly.live_drift, its MLflow metric)
FIGURES = {
    "text length (KS)": ("length_ks", "live_length_ks"),
    "OOV rate increase": ("oov_increase", "live_oov_increase"),
    "predicted label mix (TVD)": ("label_tvd", "live_label_tvd"),
    "mean confidence drop": ("confidence_drop", "live_confidence_drop"),
    "shadow disagreement": ("disagreement", "live_disagreement"),
}


@dataclass
class Reference:
    """What served traffic is compared with: the train split's lengths, the val split's OOV rate, and the served
    model's answers on the test split."""

    train_lengths: np.ndarray
    tokenizer: Tokenizer | None = None
    val_oov: float = 0.0
    predicted_mix: dict[str, float] | None = None  # the model's predicted labels on the test split
    confidences: np.ndarray | None = None  # (N,) its top probability per test text
    model: str = "no model yet: label mix and confidence not measured"

    @property
    def confidence(self) -> float | None:
        return (
            None if self.confidences is None or not len(self.confidences) else float(self.confidences.mean())
        )


@dataclass
class LiveDrift:
    """One night's reading of the prediction log: the window, the traffic, the figures, the review queue."""

    since: str | None  # exclusive (None: the log's beginning)
    until: str  # inclusive
    min_texts: int
    # no log | no traffic | not enough traffic | no training data | measured
    status: str = "no log"
    log_dir: str = ""
    served: int = 0
    with_text: int = 0  # served lines carrying their text
    shadow: int = 0
    versions: dict[str, int] = field(default_factory=dict)  # "<model> v<version> (<variant>)" → served lines
    reference: str = ""
    drift: DriftReport = field(default_factory=DriftReport)
    review: ReviewQueue | None = None
    review_shown: str = ""  # the review file as the report names it

    @property
    def verdict(self) -> str:
        """ok, warn or block once measured; else the status (no log, not enough traffic...)."""
        return self.drift.verdict if self.status == "measured" else self.status

    @property
    def window(self) -> str:
        return f"{self.since or 'the start of the log'} → {self.until}"

    def headline(self) -> str:
        """The night's live drift in one line."""
        if self.status == "no log":
            return (
                f"Live drift: no prediction log in `{self.log_dir}` (the service writes it): nothing to read."
            )
        if self.status == "no traffic":
            return f"Live drift: no served text in the log between {self.window}."
        if self.status == "not enough traffic":
            return (
                f"Live drift: {self.served} served texts ({self.window}), fewer than "
                f"nightly.live_drift.min_texts={self.min_texts}: not enough traffic, no verdict."
            )
        if self.status == "no training data":
            return f"Live drift: {self.served} served texts, but no training data yet: not measured."
        return f"Live drift: **{self.verdict}** on {self.served} served texts ({self.window})."

    def check(self) -> dict[str, Any]:
        """The register gate's ``live_drift`` check (quantflow/registry/gate.py ``Check`` fields): failed when a
        figure is past its block bound, naming each such figure and its value."""
        blocking = (
            [r for r in self.drift.rows if r["verdict"] == "block"] if self.status == "measured" else []
        )
        if not blocking:
            detail = self.headline().removeprefix("Live drift: ").replace("**", "")
            return {"name": CHECK, "value": None, "threshold": None, "passed": True, "detail": detail}
        first = blocking[0]
        named = "; ".join(
            f"{r['metric']} = {r['value']:.3f} over its block bound {r['block']}" for r in blocking
        )
        detail = f"{named} on {self.served} served texts ({self.window})"
        return {
            "name": CHECK,
            "value": first["value"],
            "threshold": first["block"],
            "passed": False,
            "detail": detail,
        }

    def metrics(self) -> dict[str, float]:
        """``live_*`` metrics for the night's MLflow run (none without a log)."""
        if self.status == "no log":
            return {}
        out = {"live_served_texts": float(self.served)}
        if self.status == "measured":
            out |= {FIGURES[r["metric"]][1]: r["value"] for r in self.drift.rows}
        if self.review is not None:
            out["live_review_texts"] = float(self.review.rows)
        return out


# --- the cursor ---------------------------------------------------------------------------------------------


def cursor_path(root: Path) -> Path:
    return state_dir(root) / CURSOR_FILE


def read_cursor(root: Path) -> datetime | None:
    """Where the last completed night stopped reading the log (None: no night read it yet)."""
    path = cursor_path(root)
    if not path.is_file():
        return None
    return datetime.fromisoformat(
        json.loads(path.read_text(encoding="utf-8"))["until"].replace("Z", "+00:00")
    )


def advance_cursor(root: Path, until: str, night_id: str) -> None:
    """Move the cursor to ``until`` (a completed night's window end), atomically."""
    path = cursor_path(root)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"until": until, "night": night_id}) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def window(root: Path, settle_s: float, now: datetime | None = None) -> tuple[datetime | None, datetime]:
    """(since, until): from the cursor to now minus ``settle_s`` (lines the service may still be appending)."""
    until = (now or datetime.now(UTC)) - timedelta(seconds=settle_s)
    since = read_cursor(root)
    return since, max(until, since) if since is not None else until


# --- the reference ------------------------------------------------------------------------------------------


def served_variant(layout: Layout) -> Path | None:
    """The workspace's shipped variant folder (``compression.json``'s choice), or None before compress ran."""
    if not layout.compression_report.is_file():
        return None
    chosen = json.loads(layout.compression_report.read_text(encoding="utf-8")).get("chosen")
    folder = layout.variant_dir(str(chosen)) if chosen else None
    return folder if folder is not None and (folder / MODEL_FILE).is_file() else None


def live_reference(layout: Layout) -> Reference | None:
    """The reference from the workspace as the last night left it; None before any training data."""
    train = layout.split_file("train")
    if not train.is_file():
        return None
    ref = Reference(pd.read_parquet(train, columns=["text"])["text"].str.len().to_numpy())
    if (layout.tokenizer_dir / "vocab.json").is_file():
        ref.tokenizer = Tokenizer.load(layout.tokenizer_dir)
        val = layout.split_file("val")
        if val.is_file():
            ref.val_oov = oov(ref.tokenizer, pd.read_parquet(val, columns=["text"])["text"].tolist())[0]
    folder, test = served_variant(layout), layout.split_file("test")
    if folder is not None and test.is_file():
        model = OnnxClassifier(folder, threads=1)
        texts = pd.read_parquet(test, columns=["text"])["text"].tolist()
        proba = model.predict_proba(texts)  # (N, C), calibrated as the service answers
        ref.predicted_mix = label_mix(pd.Series([model.labels[i] for i in proba.argmax(axis=1)]))
        ref.confidences = proba.max(axis=1)
        ref.model = (
            f"`{layout.relative(folder)}` (the workspace's shipped variant) on the {len(texts)} test texts"
        )
    return ref


# --- the figures --------------------------------------------------------------------------------------------


def _row(metric: str, value: float, lp: LiveDriftParams, detail: str) -> dict:
    prefix = FIGURES[metric][0]
    return figure_row(metric, value, getattr(lp, f"{prefix}_warn"), getattr(lp, f"{prefix}_block"), detail)


def answer_rows(served: pd.DataFrame, ref: Reference, lp: LiveDriftParams) -> list[dict]:
    """Length KS vs train; label mix and confidence vs the served model on the test split."""
    lengths = pd.to_numeric(served["length"]).to_numpy()
    rows = [
        _row(
            "text length (KS)",
            ks_statistic(lengths, ref.train_lengths),
            lp,
            f"median {np.median(lengths):.0f} served vs {np.median(ref.train_lengths):.0f} train chars",
        )
    ]
    if ref.predicted_mix is None or ref.confidence is None:
        return rows
    mix = label_mix(served["label"])
    rows.append(
        _row(
            "predicted label mix (TVD)",
            total_variation(mix, ref.predicted_mix),
            lp,
            f"served {describe_mix(mix)} vs test {describe_mix(ref.predicted_mix)}",
        )
    )
    mean = float(pd.to_numeric(served["confidence"]).mean())
    rows.append(
        _row(
            "mean confidence drop",
            ref.confidence - mean,
            lp,
            f"served {mean:.3f} vs test {ref.confidence:.3f}",
        )
    )
    return rows


def text_rows(texts: list[str], ref: Reference, lp: LiveDriftParams, report: DriftReport) -> list[dict]:
    """OOV rise vs the val split, with the top new tokens; a note instead when too few texts were logged."""
    if ref.tokenizer is None:
        report.note = "no vocabulary yet: OOV rate not measured"
        return []
    if len(texts) < lp.min_texts:
        report.note = (
            f"OOV rate not measured: {len(texts)} served texts carry their text (serve.log_text: false drops it), "
            f"fewer than min_texts={lp.min_texts}"
        )
        return []
    rate, unknown = oov(ref.tokenizer, texts)
    report.new_tokens = unknown.most_common(lp.top_new_tokens)
    detail = f"served {rate:.3f} vs val {ref.val_oov:.3f}"
    return [_row("OOV rate increase", rate - ref.val_oov, lp, detail)]


def shadow_rows(shadow: pd.DataFrame, lp: LiveDriftParams) -> list[dict]:
    """The share of shadow lines whose label differs from the served one (none measured below min_texts)."""
    agree = shadow["agree"].dropna().astype(bool)
    if len(agree) < lp.min_texts:
        return []
    versions = ", ".join(sorted({f"v{v}" for v in shadow["version"].dropna()}))
    detail = (
        f"@challenger {versions} agreed with the served label on {agree.mean():.1%} of {len(agree)} texts"
    )
    return [_row("shadow disagreement", 1.0 - float(agree.mean()), lp, detail)]


def measure(log: pd.DataFrame, ref: Reference, lp: LiveDriftParams) -> DriftReport:
    """Every figure the window's lines allow; the verdict is the worst row's."""
    served = log[log["kind"] == "served"]
    report = DriftReport()
    texts = served["text"].dropna().tolist()
    report.rows = answer_rows(served, ref, lp) + text_rows(texts, ref, lp, report)
    report.rows += shadow_rows(log[log["kind"] == "shadow"], lp)
    report.verdict = max((r["verdict"] for r in report.rows), key=LEVELS.index)
    return report


# --- the night's step ---------------------------------------------------------------------------------------


def versions_of(served: pd.DataFrame) -> dict[str, int]:
    keys = (
        served["model"].astype(str)
        + " v"
        + served["version"].astype(str)
        + " ("
        + served["variant"].astype(str)
        + ")"
    )
    return {str(k): int(n) for k, n in keys.value_counts().items()}


def read_window(live: LiveDrift, log_dir: Path, since: datetime | None, until: datetime) -> pd.DataFrame:
    """The window's lines, with the traffic counted into ``live``."""
    log = read_log(log_dir, since, until)
    served = log[log["kind"] == "served"]
    live.served, live.with_text = len(served), int(served["text"].notna().sum())
    live.shadow, live.versions = int((log["kind"] == "shadow").sum()), versions_of(served)
    return log


def judge_window(live: LiveDrift, log: pd.DataFrame, layout: Layout, lp: LiveDriftParams) -> None:
    """The status, and the figures when there is enough traffic and training data."""
    if live.served == 0:
        live.status = "no traffic"
        return
    if live.served < lp.min_texts:
        live.status = "not enough traffic"
        return
    ref = live_reference(layout)
    if ref is None:
        live.status = "no training data"
        return
    live.status, live.reference = "measured", ref.model
    live.drift = measure(log, ref, lp)
    write_plot(log[log["kind"] == "served"], ref, layout.live_reports.plot)


def live_drift(params: Params, layout: Layout, since: datetime | None, until: datetime) -> LiveDrift:
    """Read the window, judge it, queue texts for review, write ``reports/nightly/live/``."""
    lp = params.nightly.live_drift
    live = LiveDrift(timestamp(since) if since else None, timestamp(until), lp.min_texts)
    live.log_dir = str(layout.relative(layout.served_log_dir))
    layout.live_reports.plot.unlink(missing_ok=True)  # last night's plot must not pass for tonight's
    if log_files(layout.served_log_dir):
        log = read_window(live, layout.served_log_dir, since, until)
        judge_window(live, log, layout, lp)
        if params.nightly.review_size and live.served:
            day = until.astimezone(UTC).strftime("%Y-%m-%d")
            live.review = review_queue(log, layout, params.nightly.review_size, day)
            live.review_shown = str(layout.relative(live.review.path)) if live.review.path else ""
    write_reports(live, layout.live_reports)
    logger.info("%s", live.headline().replace("**", ""))
    return live


live_drift_task = task(live_drift, name="live-drift")


# --- the report ---------------------------------------------------------------------------------------------


def render_live(live: LiveDrift) -> str:
    """The night's live drift as markdown: one line when nothing was measured; the table when it was."""
    lines = [live.headline()]
    if live.versions:
        lines += ["", "Served by " + ", ".join(f"{k}: {n}" for k, n in live.versions.items()) + "."]
    if live.status == "measured":
        lines += [f"Compared with the train and val splits and {live.reference}.", ""]
        lines += [render_table(live.drift, "live drift verdict").rstrip("\n")]
        if 0 < live.shadow < live.min_texts:
            lines += ["", f"{live.shadow} shadow lines: agreement not measured (fewer than min_texts)."]
    if live.review is not None:
        lines += ["", live.review.describe(live.review_shown)]
    return "\n".join(lines) + "\n"


def write_reports(live: LiveDrift, reports: LiveReports) -> None:
    """``live_drift.json`` and ``live_drift.md`` (the plot is written when measured)."""
    reports.folder.mkdir(parents=True, exist_ok=True)
    data = asdict(live)
    reports.json.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", "utf-8")
    reports.table.write_text(render_live(live), encoding="utf-8")


def write_plot(served: pd.DataFrame, ref: Reference, path: Path) -> None:
    """Text lengths (served vs train), predicted-label mix and confidence (served vs the model on test)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (lengths, mix, confidence) = plt.subplots(1, 3, figsize=(14, 3.5))
    top = float(np.percentile(ref.train_lengths, 99)) if len(ref.train_lengths) else 200.0
    bins = np.linspace(0, max(top, 1.0), 40)
    served_lengths = pd.to_numeric(served["length"]).to_numpy()
    for values, name in ((ref.train_lengths, "train"), (served_lengths, "served")):
        lengths.hist(np.clip(values, 0, top), bins=bins, density=True, alpha=0.5, label=name)
    lengths.set(title="text length (chars)", xlabel="chars", ylabel="density")
    lengths.legend()
    served_mix = label_mix(served["label"])
    reference_mix = ref.predicted_mix or {}
    labels = sorted(set(served_mix) | set(reference_mix))
    x = np.arange(len(labels))
    for offset, (shares, name) in zip(
        (-0.2, 0.2), ((reference_mix, "test"), (served_mix, "served")), strict=True
    ):
        mix.bar(x + offset, [shares.get(k, 0.0) for k in labels], width=0.4, label=name)
    mix.set(title="predicted label mix", xticks=x, xticklabels=labels, ylabel="share")
    mix.legend()
    edges = np.linspace(0, 1, 21)
    if ref.confidences is not None:
        confidence.hist(ref.confidences, bins=edges, density=True, alpha=0.5, label="test")
    confidence.hist(pd.to_numeric(served["confidence"]), bins=edges, density=True, alpha=0.5, label="served")
    confidence.set(title="confidence (top probability)", xlabel="probability", ylabel="density")
    confidence.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
