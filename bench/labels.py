"""`make bench-labels`: does the label-noise audit find known flips, and does dropping what it flags help?

For each built-in dataset, built with the pipeline's own steps (ingest → split, params.yaml values) in a temp
folder: 5 % of the training labels are flipped (seeded) and the audit (quantflow.core.label_audit) runs on the
clean and on the flipped training split; precision and recall of its flags against the known flips. Then the
default model (params.yaml ``train``: the preprocess and train step functions, so every listed candidate is
trained and the one train ships is tested, whatever its family) is trained four times, on the
clean and the flipped training split, with every row (``report``) and without the flagged rows (``drop``);
validation and test stay as split. ``drop`` vs ``report`` is compared on the same test texts (exact McNemar and
a paired bootstrap interval, quantflow.core.stats). The tables go to BENCHMARKS.md with the command and the load.

    python bench/labels.py [--datasets news_vs_comment review_sentiment] [--flip 0.05] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd
import yaml

from quantflow.core.benchmarks import uptime, write_section
from quantflow.core.candidates import predict_scores
from quantflow.core.features import load_features, load_labels
from quantflow.core.label_audit import (
    drop_flagged,
    encode_labels,
    inject_label_noise,
    issues_from_proba,
    out_of_fold_proba,
)
from quantflow.core.layout import TrainOutputs
from quantflow.core.params import FilterBy, LabelAuditParams, Params, load_params
from quantflow.core.stats import PairedComparison, compare_paired
from tasks.ingest import ingest
from tasks.preprocess import preprocess
from tasks.split import split
from tasks.train import train

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench-labels:start -->", "<!-- bench-labels:end -->"
AUDIT_MARKERS = ("<!-- bench-labels-audit:start -->", "<!-- bench-labels-audit:end -->")  # --audit-only
DATASETS = ("news_vs_comment", "review_sentiment")
logger = logging.getLogger("bench.labels")


@dataclass(frozen=True)
class Audit:
    rows: int
    flipped: int
    flagged: int
    true_flags: int  # flagged rows that were flipped
    precision: float
    recall: float
    precision_at_k: float  # among the ``flipped`` most suspicious rows
    seconds: float


@dataclass(frozen=True)
class Trained:
    model: str  # the candidate train shipped
    accuracy: float
    train_rows: int
    epochs: int
    seconds: float


def prepare(params: Params, work: Path) -> Path:
    """ingest → split into ``work``; returns the split folder."""
    raw = ingest(params.ingest, work / "raw" / f"{params.ingest.dataset}.parquet", params.seed).path
    unaudited = params.split.model_copy(update={"label_issues": "off"})  # audited below, flips and all
    split(unaudited, raw, work / "split", work / "split.json", params.seed)
    return work / "split"


def score_audit(issues: pd.DataFrame, mask: np.ndarray, seconds: float) -> Audit:
    flagged = issues["row"].to_numpy(dtype=np.int64)
    k = int(mask.sum())
    true_flags = int(mask[flagged].sum())
    top = flagged[:k]
    return Audit(
        rows=len(mask),
        flipped=k,
        flagged=len(flagged),
        true_flags=true_flags,
        precision=true_flags / len(flagged) if len(flagged) else 0.0,
        recall=true_flags / k if k else float("nan"),
        precision_at_k=float(mask[top].mean()) if len(top) else 0.0,
        seconds=seconds,
    )


def audit_each_filter(
    frame: pd.DataFrame, mask: np.ndarray, params: Params, audit: LabelAuditParams
) -> tuple[pd.DataFrame, dict[str, Audit]]:
    """One set of out-of-fold probabilities, then cleanlab's flags under every ``filter_by`` rule, each scored
    against ``mask``; the issues of ``audit.filter_by`` (what ``drop`` removes) come back too."""
    started = time.perf_counter()
    texts, labels, y = encode_labels(frame, audit.folds)
    proba = out_of_fold_proba(texts, y, audit, params.seed)  # (N, C)
    seconds = time.perf_counter() - started
    issues = {rule: issues_from_proba(texts, labels, y, proba, rule) for rule in get_args(FilterBy)}
    return issues[audit.filter_by], {
        rule: score_audit(found, mask, seconds) for rule, found in issues.items()
    }


def train_and_test(
    params: Params, split_dir: Path, train_frame: pd.DataFrame, out: Path
) -> tuple[Trained, list[str]]:
    """The preprocess and train steps on ``train_frame`` with the split's val and test; test predictions."""
    run_split = out / "split"
    run_split.mkdir(parents=True)
    train_frame.to_parquet(run_split / "train.parquet", index=False)
    for name in ("val", "test"):
        shutil.copy2(split_dir / f"{name}.parquet", run_split / f"{name}.parquet")
    started = time.perf_counter()
    preprocess(params.preprocess, run_split, out / "features", out / "tokenizer", params.labels)
    outputs = TrainOutputs(out / "model", out / "candidates", out / "candidates.json", out / "history.json")
    selection = train(params.train, out / "features", out / "tokenizer", outputs, params.seed)
    seconds = time.perf_counter() - started
    labels = load_labels(out / "features")
    ids, _ = load_features(out / "features", "test")
    predicted = [labels[i] for i in predict_scores(out / "model", ids).argmax(axis=1)]
    truth = pd.read_parquet(run_split / "test.parquet")["label"].astype(str).tolist()
    accuracy = float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))
    logger.info(
        "%s: %s, test accuracy %.4f (%d train rows, %.0f s)",
        out.name,
        selection.winner.name,
        accuracy,
        len(train_frame),
        seconds,
    )
    trained = Trained(selection.winner.name, accuracy, len(train_frame), len(selection.history), seconds)
    return trained, predicted


def run_dataset(params: Params, work: Path, flip: float, audit: LabelAuditParams, audit_only: bool) -> dict:
    """Audit the clean and the flipped training split; unless ``audit_only``, train the four models and
    compare them pairwise."""
    split_dir = prepare(params, work)
    clean = pd.read_parquet(split_dir / "train.parquet")
    noisy, mask = inject_label_noise(clean, flip, params.seed)
    clean_issues, clean_audits = audit_each_filter(clean, np.zeros(len(clean), dtype=bool), params, audit)
    noisy_issues, noisy_audits = audit_each_filter(noisy, mask, params, audit)
    result = {"audits": {"clean": clean_audits, "flipped": noisy_audits}}
    if audit_only:
        return result
    frames = {
        ("clean", "report"): clean,
        ("clean", "drop"): drop_flagged(clean, clean_issues),
        ("flipped", "report"): noisy,
        ("flipped", "drop"): drop_flagged(noisy, noisy_issues),
    }
    return result | train_all(params, split_dir, frames, work)


def train_all(
    params: Params, split_dir: Path, frames: dict[tuple[str, str], pd.DataFrame], work: Path
) -> dict:
    """One model per (data, action) training frame; paired comparisons on the shared test split."""
    truth = pd.read_parquet(split_dir / "test.parquet")["label"].astype(str).tolist()
    trained, predictions = {}, {}
    for (data, action), frame in frames.items():
        trained[(data, action)], predictions[(data, action)] = train_and_test(
            params, split_dir, frame, work / f"{data}-{action}"
        )
    compare = {
        "clean: drop - report": paired(predictions, ("clean", "drop"), ("clean", "report"), truth, params),
        "flipped: drop - report": paired(
            predictions, ("flipped", "drop"), ("flipped", "report"), truth, params
        ),
        "report: flipped - clean": paired(
            predictions, ("flipped", "report"), ("clean", "report"), truth, params
        ),
    }
    return {"test_rows": len(truth), "trained": trained, "compare": compare}


def paired(
    predictions: dict, a: tuple[str, str], b: tuple[str, str], truth: list[str], params: Params
) -> PairedComparison:
    return compare_paired(
        predictions[a],
        predictions[b],
        truth,
        1 - params.register.alpha,
        params.register.bootstrap_samples,
        params.seed,
    )


def to_json(result: dict) -> str:
    """One dataset's figures as JSON (tuple keys joined: ``clean/report``)."""
    plain = dict(result)
    if "trained" in result:
        plain["trained"] = {"/".join(k): v for k, v in result["trained"].items()}
        plain["compare"] = {k: asdict(v) for k, v in result["compare"].items()}
    return json.dumps(plain, default=asdict, indent=2) + "\n"


def audit_table(results: dict[str, dict], default: str) -> list[str]:
    lines = [
        "| dataset | training split | cleanlab filter_by | train rows | flipped | flagged | flagged & flipped "
        "| precision | recall | precision@k | out-of-fold s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset, result in results.items():
        for data, per_rule in result["audits"].items():
            known = data == "flipped"
            for rule, a in per_rule.items():
                shown = f"**{rule}**" if rule == default else rule
                figures = (
                    f"{a.true_flags} | {a.precision:.3f} | {a.recall:.3f} | {a.precision_at_k:.3f}"
                    if known
                    else "– | – | – | –"
                )
                lines.append(
                    f"| {dataset} | {data} | {shown} | {a.rows:,} | {a.flipped} | {a.flagged} | {figures} "
                    f"| {a.seconds:.0f} |"
                )
    return lines


def accuracy_table(results: dict[str, dict]) -> list[str]:
    lines = [
        "| dataset | training split | action | model shipped | train rows | epochs | test accuracy | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dataset, result in results.items():
        for (data, action), t in result["trained"].items():
            lines.append(
                f"| {dataset} | {data} | {action} | {t.model} | {t.train_rows:,} | {t.epochs} | {t.accuracy:.4f} | {t.seconds:.0f} |"
            )
    return lines


def compare_table(results: dict[str, dict]) -> list[str]:
    lines = [
        "| dataset | comparison (same test texts) | difference | 95 % paired bootstrap CI | McNemar p | discordant won/lost |",
        "|---|---|---|---|---|---|",
    ]
    for dataset, result in results.items():
        for name, c in result["compare"].items():
            lines.append(
                f"| {dataset} | {name} | {c.difference * 100:+.2f} pp | [{c.ci_low * 100:+.2f}, {c.ci_high * 100:+.2f}] pp "
                f"| {c.p_value:.3g} | {c.only_candidate_right}/{c.only_champion_right} |"
            )
    return lines


def verdicts(results: dict[str, dict], margin: float, default: str) -> list[str]:
    """The goals, each judged per dataset: audit precision and recall >= 0.6 on the flips; drop not worse
    than report on clean data (CI low end above -margin: register.champion_tolerance) and better on flipped
    data (CI low end above 0)."""
    lines = []
    for dataset, r in results.items():
        a = r["audits"]["flipped"][default]
        line = (
            f"- {dataset}: audit precision {a.precision:.2f} / recall {a.recall:.2f} "
            f"({'meets' if min(a.precision, a.recall) >= 0.6 else 'misses'} >= 0.6)"
        )
        if "compare" in r:
            clean, noisy = r["compare"]["clean: drop - report"], r["compare"]["flipped: drop - report"]
            line += (
                f"; drop vs report on clean data {'not worse' if clean.ci_low > -margin else 'possibly worse'} "
                f"(CI low {clean.ci_low * 100:+.2f} pp vs -{margin * 100:.1f}); on flipped data "
                f"{'better' if noisy.ci_low > 0 else 'not shown better'} "
                f"(CI [{noisy.ci_low * 100:+.2f}, {noisy.ci_high * 100:+.2f}] pp)"
            )
        lines.append(line + ".")
    return lines


def section(
    results: dict[str, dict],
    command: str,
    load: tuple[str, str],
    audit: LabelAuditParams,
    margin: float,
    markers: tuple[str, str],
) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in audit.model_dump().items())
    trained = all("trained" in r for r in results.values())
    tables = [*accuracy_table(results), "", *compare_table(results), ""] if trained else []
    return "\n".join(
        [
            markers[0],
            f"Command: `{command}`. Datasets built with ingest → split (params.yaml); "
            + ("model: params.yaml `train` (the preprocess and train step functions); " if trained else "")
            + f"audit: {settings}, seed = params.yaml seed.",
            "Flags of the bold filter_by (split.label_audit.filter_by) are what `drop` removes; the other rules reuse the "
            "same out-of-fold probabilities. Precision and recall are against the flipped rows only: on the clean "
            "split every flag is a row the candidate doubts (natural noise or its own error).",
            f"Load: `{load[0]}` before, `{load[1]}` after (timings are noise on this shared machine).",
            "",
            *audit_table(results, audit.filter_by),
            "",
            *tables,
            *verdicts(results, margin, audit.filter_by),
            markers[1],
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--flip", type=float, default=0.05, help="share of training labels flipped")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="e.g. train.epochs=1")
    parser.add_argument("--work", type=Path, default=None, help="keep the runs here (default: a temp folder)")
    parser.add_argument("--audit-only", action="store_true", help="the audit tables only: no training")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {k: yaml.safe_load(v) for k, _, v in (pair.partition("=") for pair in args.overrides)}
    base = load_params(ROOT / "params.yaml", overrides)
    audit = base.split.label_audit
    load_before, results = uptime(), {}
    with tempfile.TemporaryDirectory(prefix="bench-labels-") as tmp:
        work = args.work or Path(tmp)
        for dataset in args.datasets:
            params = base.with_overrides({"ingest.dataset": dataset})
            results[dataset] = run_dataset(params, work / dataset, args.flip, audit, args.audit_only)
            (work / f"{dataset}.json").write_text(to_json(results[dataset]))
    flags = [f"--datasets {' '.join(args.datasets)}"] if list(args.datasets) != list(DATASETS) else []
    flags += [f"--flip {args.flip}"] if args.flip != 0.05 else []
    flags += [f"--set {o}" for o in args.overrides] + (["--audit-only"] if args.audit_only else [])
    command = " ".join(["python bench/labels.py", *flags])
    markers = AUDIT_MARKERS if args.audit_only else (START, END)
    margin = base.register.champion_tolerance
    text = section(results, command, (load_before, uptime()), audit, margin, markers)
    print(text)
    if not args.no_write:
        heading = "## Label noise (issue: scores users can trust)" + (
            ": the audit alone" if args.audit_only else ""
        )
        write_section(text, ROOT / "BENCHMARKS.md", *markers, heading)


if __name__ == "__main__":
    main()
