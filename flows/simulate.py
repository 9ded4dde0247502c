"""``quantflow simulate-nights``: nightly batches from the built-in corpus, one nightly flow run per night.

A sandbox project (git + DVC + its own MLflow store) is built from this project's pipeline files with
``ingest.holdout_fraction`` set, so part of the corpus never enters the base dataset. Each night releases
a class-balanced slice of those held-back rows as ``<nightly.incoming_dir>/night-NN.csv``; one night's batch is made
bad on purpose (its labels come from another dataset) and must be blocked.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from flows.traffic import replay, serving, shifted_texts, traffic_texts, used_texts, wait_for_version
from quantflow.core.corpora import held_back, load_builtin
from quantflow.core.errors import QuantflowError
from quantflow.core.layout import Layout, tracking_uri
from quantflow.core.params import load_params
from quantflow.core.workspace import LOCK_FILE, STATE_DIR, workspace_lock
from quantflow.intake.versioning import tool_env

logger = logging.getLogger(__name__)

MARKER = ".quantflow-simulation"
PROJECT_FILES = ("dvc.yaml", "expectations", "quantflow", "tasks", "data/external/.gitkeep")
# a few minutes for three nights on a laptop: fewer rows, fewer epochs, two compression variants
QUICK = {
    "train.epochs": 3,
    "compress.variants": ["fp32", "int8-static"],
    "compress.calibration_samples": 128,
    "compress.latency_texts": 50,
    "compress.throughput_texts": 128,
}


class SimulationError(QuantflowError):
    """The sandbox cannot be made or the held-back rows do not cover the nights asked for."""


@dataclass(frozen=True)
class NightRow:
    night: int
    batch: str
    verdict: str
    rows: int
    appended: int
    quarantined: int
    drift: str
    retrained: bool
    version: str
    staging: str
    seconds: float
    checks_seconds: float  # batch contract + drift + dataset contract: what nightly data adds to the run
    reason: str
    traffic: str = "-"  # texts the service answered since the previous night ("shifted": another corpus)
    live: str = "-"  # tonight's live-drift verdict on that traffic


def make_sandbox(source: Path, workdir: Path, overrides: dict[str, Any]) -> Path:
    """A fresh git + DVC project in ``workdir`` holding ``source``'s pipeline files and params + overrides.

    Only a folder this command made (it holds a marker file) is ever emptied; its workspace lock (held by the
    caller) stays.
    """
    check_workdir(workdir)
    if workdir.exists():
        empty_sandbox(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by quantflow simulate-nights; deleted by its next run\n")
    for name in PROJECT_FILES:
        src, dst = source / name, workdir / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.is_file():
            shutil.copy2(src, dst)
        else:
            raise SimulationError(f"{src}: not found; run simulate-nights from the quantflow project folder")
    params = load_params(source / "params.yaml", overrides)
    layout = Layout.of(params, workdir)
    layout.accepted_dir.mkdir(parents=True, exist_ok=True)
    (layout.accepted_dir / ".gitkeep").touch()
    dumped = params.model_dump(mode="json", by_alias=True)
    (workdir / "params.yaml").write_text(yaml.safe_dump(dumped, allow_unicode=True, sort_keys=False))
    (workdir / ".gitignore").write_text("".join(f"/{name}/\n" for name in ignored_paths(layout)))
    for args in (
        ["git", "init", "-q"],
        [sys.executable, "-m", "dvc", "init", "-q"],
        [sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(workdir / "dvc-remote")],
        [sys.executable, "-m", "dvc", "config", "cache.dir", str(workdir / ".dvc" / "cache")],
        ["git", "config", "user.name", "quantflow simulate-nights"],
        ["git", "config", "user.email", "simulate@quantflow.local"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "simulation project"],
    ):
        done = subprocess.run(args, cwd=workdir, env=tool_env(), capture_output=True, text=True, check=False)
        if done.returncode:
            raise SimulationError(
                f"`{' '.join(args)}` failed in {workdir}: {(done.stderr or done.stdout).strip()}"
            )
    return workdir


def check_workdir(workdir: Path) -> None:
    """A folder this command did not make (no marker file) is never touched: an error says so."""
    if (
        workdir.exists()
        and not (workdir / MARKER).is_file()
        and any(p.name != STATE_DIR for p in workdir.iterdir())
    ):
        raise SimulationError(
            f"{workdir}: exists and was not made by simulate-nights; pass another --workdir"
        )


def empty_sandbox(workdir: Path) -> None:
    """Everything of an earlier simulation goes, except the workspace lock file (its holder is this run)."""
    doomed = [p for p in workdir.iterdir() if p.name != STATE_DIR]
    doomed += [p for p in (workdir / STATE_DIR).glob("*") if p.name != LOCK_FILE]
    for path in doomed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def ignored_paths(layout: Layout) -> list[str]:
    """What git leaves to DVC, the stores and the night: every output folder of the sandbox's Layout."""
    folders = [
        layout.raw_dir,
        layout.split_dir,
        layout.features_dir,
        layout.tokenizer_dir,
        layout.model_dir,
        layout.candidates_dir,
        layout.variants_dir,
        layout.reports_dir,
        layout.failure_dir,
        layout.scale_dir,
        layout.incoming_dir,
        layout.processed_dir,
        layout.rejected_dir,
        layout.quarantine_dir,
        layout.served_log_dir,
        layout.review_dir,
    ]
    inside = [layout.relative(f).as_posix() for f in folders if f.is_relative_to(layout.root)]
    return ["mlflow.db", "mlartifacts", "dvc-remote", "dvc_plots", STATE_DIR, *dict.fromkeys(inside)]


def night_batches(
    dataset: str, holdout: float, nights: int, per_class: int, bad_night: int
) -> list[pd.DataFrame]:
    """``nights`` class-balanced batches of held-back rows, in a seeded order; night ``bad_night`` is bad."""
    corpus = load_builtin(dataset)
    held = corpus[held_back(corpus, holdout)].sample(frac=1.0, random_state=0)
    labels = sorted(held["label"].unique())
    batches = []
    for night in range(nights):
        parts = [
            held[held["label"] == label].iloc[night * per_class : (night + 1) * per_class] for label in labels
        ]
        if min(len(p) for p in parts) < per_class:
            raise SimulationError(
                f"the held-back rows cover {night} nights of {per_class} rows per class; "
                "use fewer --nights, a smaller --batch-rows-per-class or a larger --holdout"
            )
        batch = pd.concat(parts).sample(frac=1.0, random_state=night).reset_index(drop=True)
        batches.append(spoil(batch) if night + 1 == bad_night else batch)
    return batches


def spoil(batch: pd.DataFrame) -> pd.DataFrame:
    """The deliberately bad night: labels of another dataset (an unknown label set) and a few blank texts."""
    other = {
        label: name
        for label, name in zip(sorted(batch["label"].unique()), ("positive", "negative"), strict=False)
    }
    bad = batch.assign(label=batch["label"].map(other))
    bad.loc[bad.index[:3], "text"] = " "
    return bad


def staging_version(root: Path, model_name: str) -> str:
    """The version behind ``@staging`` in the sandbox's registry, or '-' when there is none."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri(root), registry_uri=tracking_uri(root))
    try:
        return str(client.get_model_version_by_alias(model_name, "staging").version)
    except mlflow.exceptions.MlflowException:
        return "-"


def run_night(root: Path, night: int, batch: pd.DataFrame) -> NightRow:
    """Drop the batch into data/incoming and run the nightly flow once."""
    from flows.nightly import BatchesBlocked, nightly_retrain

    name = f"night-{night:02d}"
    params = load_params(root / "params.yaml")
    incoming = Layout.of(params, root).incoming_dir
    incoming.mkdir(parents=True, exist_ok=True)
    batch.to_csv(incoming / f"{name}.csv", index=False)
    started = time.perf_counter()
    try:
        summary = nightly_retrain(root=str(root))
    except BatchesBlocked as exc:
        summary = exc.summary
    (outcome,) = summary.intake.batches
    reg = summary.registered
    return NightRow(
        night=night,
        batch=outcome.name,
        verdict=outcome.status,
        rows=outcome.rows,
        appended=outcome.accepted_rows,
        quarantined=outcome.quarantined_rows,
        drift=outcome.drift,
        retrained=reg is not None,
        version=f"v{reg.version}" if reg else "-",
        staging=staging_version(root, params.model_name),
        seconds=time.perf_counter() - started,
        checks_seconds=summary.timings["incoming batches"] + summary.timings.get("dataset contract", 0.0),
        reason=outcome.reasons[0].splitlines()[0] if outcome.reasons else "",
        live=live_cell(summary.live),
    )


def live_cell(live: Any) -> str:
    """The live-drift verdict and the figures that crossed a bound, e.g. ``block: label_tvd 0.48``."""
    if live is None:
        return "-"
    flagged = (
        [r for r in live.drift.rows if r["verdict"] in ("warn", "block")] if live.status == "measured" else []
    )
    shown = ", ".join(f"{r['metric']} {r['value']:.2f}" for r in flagged)
    return f"{live.verdict}: {shown}" if shown else live.verdict


@dataclass(frozen=True)
class Traffic:
    """Texts sent through the sandbox's service before each night after the first (0: no service at all);
    before night ``shift_night`` they come from another corpus (0: never)."""

    texts: int = 0
    shift_night: int = 0


def simulate(
    source: Path,
    workdir: Path,
    nights: int,
    per_class: int,
    rows_per_class: int,
    bad_night: int,
    holdout: float,
    overrides: dict[str, Any],
    traffic: Traffic = Traffic(),
) -> list[NightRow]:
    """Build the sandbox, then run one nightly flow per night, holding the sandbox's workspace lock throughout;
    the per-night rows for the table."""
    settings = {
        **QUICK,
        "ingest.max_rows_per_class": rows_per_class,
        "ingest.holdout_fraction": holdout,
        **overrides,
    }
    check_workdir(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with workspace_lock(workdir.resolve(), "quantflow simulate-nights"):
        root = make_sandbox(source, workdir.resolve(), settings)
        params = load_params(root / "params.yaml")
        if params.ingest.path is not None:
            raise SimulationError(
                "simulate-nights uses a built-in dataset; unset ingest.path (--set ingest.path=null)"
            )
        batches = night_batches(params.ingest.dataset, holdout, nights, per_class, bad_night)
        if not traffic.texts:
            return [run_night(root, night, batch) for night, batch in enumerate(batches, start=1)]
        return nights_with_traffic(root, batches, holdout, traffic)


def nights_with_traffic(
    root: Path, batches: list[pd.DataFrame], holdout: float, traffic: Traffic
) -> list[NightRow]:
    """Night 1 registers the first model; the sandbox's service then answers ``traffic.texts`` texts before each
    later night (held-back texts no batch releases; another corpus before the shift night), and that night's
    flow reads what the service logged."""
    params = load_params(root / "params.yaml")
    dataset, used = params.ingest.dataset, used_texts(batches)
    rows = [run_night(root, 1, batches[0])]
    with serving(root) as service:
        for night, batch in enumerate(batches[1:], start=2):
            shifted = night == traffic.shift_night
            texts = (
                shifted_texts(dataset, traffic.texts, seed=night)
                if shifted
                else traffic_texts(dataset, holdout, used, traffic.texts, seed=night)
            )
            used |= set(texts)
            version = staging_version(root, params.model_name)
            if version == "-":
                raise SimulationError("no version behind @staging after the first night: nothing to serve")
            wait_for_version(service, version)
            answered = replay(service, texts)
            time.sleep(params.nightly.live_drift.settle_s)  # the night reads lines older than this
            row = run_night(root, night, batch)
            rows.append(replace(row, traffic=f"{answered}{' shifted' if shifted else ''}"))
            logger.info("night %d: %s", night, rows[-1])
    return rows


def render_table(rows: list[NightRow]) -> str:
    lines = [
        "| night | batch | verdict | rows | appended | bad rows | drift | retrained | model | staging "
        "| seconds | checks s | traffic | live drift |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.night} | {r.batch} | {r.verdict} | {r.rows} | {r.appended} | {r.quarantined} | {r.drift} "
        f"| {'yes' if r.retrained else 'no'} | {r.version} | {r.staging} | {r.seconds:.0f} | {r.checks_seconds:.1f} "
        f"| {r.traffic} | {r.live} |"
        for r in rows
    ]
    blocked = [r for r in rows if r.verdict == "blocked"]
    lines += ["", *[f"night {r.night} blocked: {r.reason}" for r in blocked]]
    return "\n".join(lines)
