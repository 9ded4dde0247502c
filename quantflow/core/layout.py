"""Where every step reads and writes, derived once from ``params.yaml`` and the project folder.

The folders come from ``params.paths`` (and ``params.nightly``, ``params.schedule``, ``params.scale``); the file
names inside them are written here and nowhere else. ``dvc.yaml`` templates the same folders from params.yaml
(``${paths.*}``) and spells the file names again: ``tests/unit/test_layout.py`` renders it and checks that
every output it declares is the Layout path the step writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from quantflow.core.params import Params

TRACKING_ENV = "MLFLOW_TRACKING_URI"
SPLITS = ("train", "val", "test")  # data/split/<name>.parquet, data/features/<name>.npz


def tracking_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the embedded store ``sqlite:///<root>/mlflow.db``."""
    return os.environ.get(TRACKING_ENV) or f"sqlite:///{root.resolve() / 'mlflow.db'}"


def artifact_root(root: Path) -> Path:
    """Where the embedded store keeps artifacts (a tracking server chooses its own)."""
    return root.resolve() / "mlartifacts"


def shown_path(path: Path) -> str:
    """``path`` relative to the working folder (the project root under DVC and `quantflow run`), so a report
    that names it reads the same on every machine; as given when it lies elsewhere."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def split_file(split_dir: Path, name: str) -> Path:
    """``<split_dir>/<name>.parquet``: where split writes split ``name`` (one of SPLITS) and readers find it."""
    return split_dir / f"{name}.parquet"


def features_file(features_dir: Path, name: str) -> Path:
    """``<features_dir>/<name>.npz``: the encoded ids and labels of split ``name``."""
    return features_dir / f"{name}.npz"


def accepted_files(accepted_dir: Path) -> list[Path]:
    """The accepted nightly batches (``<accepted_dir>/<batch>.parquet``) in name order."""
    return sorted(accepted_dir.glob("*.parquet")) if accepted_dir.is_dir() else []


def headline_file(reports_dir: Path, name: str) -> Path:
    """``<reports_dir>/headline/<name>.json``: a step's few headline figures, flat keys (DVC's ``metrics:``).

    Every headline file shares its keys with the others where it can (``accuracy``, ``macro_f1``), so
    ``dvc metrics show`` prints one narrow table, a row per file; the detailed reports stay plain outputs.
    """
    return reports_dir / "headline" / f"{name}.json"


@dataclass(frozen=True)
class EvaluationReports:
    """What evaluate writes: metrics (model and baseline), predictions (DVC's confusion plot), the matrix PNG,
    and the headline figures of the model and of the baseline."""

    metrics: Path
    predictions: Path
    confusion_plot: Path
    headline: Path
    baseline_headline: Path

    @classmethod
    def under(cls, reports_dir: Path) -> EvaluationReports:
        return cls(
            reports_dir / "metrics.json",
            reports_dir / "predictions.csv",
            reports_dir / "plots" / "confusion_matrix.png",
            headline_file(reports_dir, "evaluate"),
            headline_file(reports_dir, "baseline"),
        )


@dataclass(frozen=True)
class TrainOutputs:
    """What train writes: every candidate's folder, the shipped copy of the winner, the choice, its history."""

    model_dir: Path
    candidates_dir: Path
    selection: Path
    history: Path

    def candidate_dir(self, name: str) -> Path:
        """``<candidates_dir>/<name>/``: one candidate's model folder (and its history.json)."""
        return self.candidates_dir / name


@dataclass(frozen=True)
class CompressionReports:
    """What compress writes: every variant's figures and the choice (JSON), the table (markdown), the plot, the
    chosen variant's headline figures, and its calibration (JSON, reliability rows for DVC, the diagram)."""

    report: Path
    table: Path
    plot: Path
    headline: Path
    calibration: Path
    reliability: Path
    reliability_plot: Path

    @classmethod
    def under(cls, reports_dir: Path) -> CompressionReports:
        return cls(
            reports_dir / "compression.json",
            reports_dir / "compression.md",
            reports_dir / "plots" / "compression_pareto.png",
            headline_file(reports_dir, "compress"),
            reports_dir / "calibration.json",
            reports_dir / "calibration_reliability.json",
            reports_dir / "plots" / "calibration_reliability.png",
        )


@dataclass(frozen=True)
class DataDocsPaths:
    """``reports/gx/``: the project's one Great Expectations Data Docs site and the two GX stores it is built
    from. Not a DVC output: validate, the dataset contract and every nightly batch add to it, run after run."""

    folder: Path

    @property
    def expectations(self) -> Path:
        """GX's expectations store: each suite as it was last validated (generated; expectations/ is the source)."""
        return self.folder / "expectations"

    @property
    def validations(self) -> Path:
        """GX's validation results store: one JSON per suite, run name, run time and batch."""
        return self.folder / "validations"

    @property
    def site(self) -> Path:
        """The Data Docs site GX's site builder writes (its links are relative, inside this folder)."""
        return self.folder / "data_docs"

    @property
    def index(self) -> Path:
        return self.site / "index.html"


@dataclass(frozen=True)
class BatchReports:
    """``reports/nightly/<batch>/``: what the batch contract and the drift check write for one nightly batch."""

    folder: Path
    data_docs: DataDocsPaths | None = None  # the site the contract's result joins (None: not recorded)

    @property
    def contract(self) -> Path:
        """The GX validation result of expectations/<nightly.batch_suite>.json (its page is in the Data Docs)."""
        return self.folder / "contract.json"

    @property
    def drift(self) -> Path:
        return self.folder / "drift.json"

    @property
    def drift_table(self) -> Path:
        return self.folder / "drift.md"

    @property
    def drift_plot(self) -> Path:
        return self.folder / "drift.png"


@dataclass(frozen=True)
class LiveReports:
    """``reports/nightly/live/``: the night's live-drift report (the service's traffic against the training data),
    rewritten every night; the MLflow run of each night keeps its own copy."""

    folder: Path

    @property
    def json(self) -> Path:
        return self.folder / "live_drift.json"

    @property
    def table(self) -> Path:
        return self.folder / "live_drift.md"

    @property
    def plot(self) -> Path:
        return self.folder / "live_drift.png"


@dataclass(frozen=True)
class Layout:
    """Absolute paths of one project folder. A relative folder in params.yaml is under ``root``; an absolute
    one (e.g. ``nightly.incoming_dir: /mnt/drop``) is used as it is."""

    root: Path
    dataset: str
    raw_dir: Path
    split_dir: Path
    features_dir: Path
    tokenizer_dir: Path
    model_dir: Path
    candidates_dir: Path
    variants_dir: Path
    reports_dir: Path
    expectations_dir: Path
    accepted_dir: Path
    incoming_dir: Path
    processed_dir: Path
    rejected_dir: Path
    quarantine_dir: Path
    review_dir: Path
    served_log_dir: Path
    failure_dir: Path
    scale_dir: Path
    scale_reports_dir: Path

    @classmethod
    def of(cls, params: Params, root: Path) -> Layout:
        root = root.resolve()
        paths, nightly = params.paths, params.nightly
        return cls(
            root=root,
            dataset=params.ingest.dataset,
            raw_dir=root / paths.raw_dir,
            split_dir=root / paths.split_dir,
            features_dir=root / paths.features_dir,
            tokenizer_dir=root / paths.tokenizer_dir,
            model_dir=root / paths.model_dir,
            candidates_dir=root / paths.candidates_dir,
            variants_dir=root / paths.variants_dir,
            reports_dir=root / paths.reports_dir,
            expectations_dir=root / "expectations",
            # <paths.accepted_dir>/<dataset>: the batches a dataset's nights accepted, read by its ingest only
            accepted_dir=root / paths.accepted_dir / params.ingest.dataset,
            incoming_dir=root / nightly.incoming_dir,
            processed_dir=root / nightly.processed_dir,
            rejected_dir=root / nightly.rejected_dir,
            quarantine_dir=root / nightly.quarantine_dir,
            review_dir=root / nightly.review_dir,
            served_log_dir=root / params.serve.log_dir,  # the service writes it, the nightly flow reads it
            failure_dir=root / params.schedule.failure_dir,
            scale_dir=root / params.scale.work_dir,
            scale_reports_dir=root / params.scale.reports_dir,
        )

    def relative(self, path: Path) -> Path:
        """``path`` relative to the project folder (as dvc.yaml and git name it); absolute when outside it."""
        return path.relative_to(self.root) if path.is_relative_to(self.root) else path

    # --- the pipeline's data ----------------------------------------------------------------------------

    @property
    def raw(self) -> Path:
        """The ingest step's output: ``<raw_dir>/<dataset>.parquet``."""
        return self.raw_dir / f"{self.dataset}.parquet"

    def split_file(self, name: str) -> Path:
        return split_file(self.split_dir, name)

    def features_file(self, name: str) -> Path:
        return features_file(self.features_dir, name)

    def variant_dir(self, variant: str) -> Path:
        """One compressed model folder: ``<variants_dir>/<variant>/`` (model.onnx + model.json)."""
        return self.variants_dir / variant

    # --- reports the steps write ------------------------------------------------------------------------

    @property
    def validation_dir(self) -> Path:
        return self.reports_dir / "validation"

    @property
    def validation_report(self) -> Path:
        """validate: the suites' results on the raw dataset."""
        return self.validation_dir / f"{self.dataset}.json"

    @property
    def data_docs(self) -> DataDocsPaths:
        """reports/gx/: the Data Docs site of every validation (validate, dataset contract, nightly batches)."""
        return DataDocsPaths(self.reports_dir / "gx")

    @property
    def split_stats(self) -> Path:
        """split: rows in, dropped (duplicates, conflicts, blanks) and per split and class."""
        return self.reports_dir / "split.json"

    @property
    def split_headline(self) -> Path:
        """split's headline figures: rows kept and dropped (DVC metrics)."""
        return headline_file(self.reports_dir, "split")

    @property
    def label_issues(self) -> Path:
        """split: the label audit's flagged training rows, most suspicious first (quantflow/core/label_audit.py)."""
        return self.reports_dir / "label_issues.csv"

    @property
    def train_history(self) -> Path:
        """The shipped model's per-epoch history (one row for a classic model: its one fit)."""
        return self.reports_dir / "train_history.json"

    @property
    def selection(self) -> Path:
        """train: every candidate's validation scores, size and speed, and which one won and why."""
        return self.reports_dir / "candidates.json"

    @property
    def training(self) -> TrainOutputs:
        """train: the candidates' folders, the shipped model's folder, the selection and the history."""
        return TrainOutputs(self.model_dir, self.candidates_dir, self.selection, self.train_history)

    @property
    def evaluation(self) -> EvaluationReports:
        """evaluate: fp32 and baseline accuracy and macro-F1, predictions, the confusion matrix."""
        return EvaluationReports.under(self.reports_dir)

    @property
    def metrics(self) -> Path:
        return self.evaluation.metrics

    @property
    def predictions(self) -> Path:
        return self.evaluation.predictions

    @property
    def confusion_plot(self) -> Path:
        return self.evaluation.confusion_plot

    @property
    def evaluate_headline(self) -> Path:
        """evaluate's headline figures for the trained model (DVC metrics)."""
        return self.evaluation.headline

    @property
    def baseline_headline(self) -> Path:
        """evaluate's headline figures for the TF-IDF baseline (DVC metrics)."""
        return self.evaluation.baseline_headline

    @property
    def compression(self) -> CompressionReports:
        """compress: every variant's size, accuracy, latency, and the chosen one."""
        return CompressionReports.under(self.reports_dir)

    @property
    def compression_report(self) -> Path:
        return self.compression.report

    @property
    def compression_table(self) -> Path:
        return self.compression.table

    @property
    def compression_plot(self) -> Path:
        return self.compression.plot

    @property
    def compress_headline(self) -> Path:
        """compress's headline figures for the chosen variant (DVC metrics)."""
        return self.compression.headline

    @property
    def calibration_report(self) -> Path:
        """compress: the shipped variant's calibration, ECE/Brier of fp32 and of it before and after."""
        return self.compression.calibration

    @property
    def calibration_reliability(self) -> Path:
        """compress: the reliability diagram's rows, one per bin (DVC plots)."""
        return self.compression.reliability

    @property
    def calibration_plot(self) -> Path:
        return self.compression.reliability_plot

    # --- the nightly intake -----------------------------------------------------------------------------

    @property
    def nightly_reports(self) -> Path:
        """reports/nightly/: the night's dataset contract and one folder per batch (not a DVC output)."""
        return self.reports_dir / "nightly"

    def batch_reports(self, batch: str) -> BatchReports:
        """reports/nightly/<batch>/: contract.json, drift.json/.md/.png; the contract's page joins the Data Docs."""
        return BatchReports(self.nightly_reports / batch, self.data_docs)

    @property
    def dataset_contract(self) -> Path:
        """The merged dataset's contract after split (expectations/<nightly.dataset_suite>.json)."""
        return self.nightly_reports / "dataset_contract.json"

    def accepted_file(self, batch: str) -> Path:
        """An accepted batch, normalized (text, label, key, batch), DVC-tracked: ``<accepted_dir>/<batch>.parquet``,
        where ``accepted_dir`` is ``<paths.accepted_dir>/<ingest.dataset>``: a batch belongs to the dataset whose
        night accepted it, and the ingest step of another dataset never reads it."""
        return self.accepted_dir / f"{batch}.parquet"

    def quarantine_file(self, batch: str) -> Path:
        """The rows of an accepted batch set aside, with their reasons: ``<quarantine_dir>/<batch>.csv``."""
        return self.quarantine_dir / f"{batch}.csv"

    def rejected_batch(self, batch: str) -> Path:
        """A blocked batch's file and its report: ``<rejected_dir>/<batch>/``."""
        return self.rejected_dir / batch

    @property
    def live_reports(self) -> LiveReports:
        """reports/nightly/live/: the night's live-drift table, figures and plot."""
        return LiveReports(self.nightly_reports / "live")

    def review_file(self, day: str, n: int = 1) -> Path:
        """The night's review queue: ``<review_dir>/<YYYY-MM-DD>.csv`` (``-<n>`` for the n-th of one day)."""
        return self.review_dir / (f"{day}.csv" if n == 1 else f"{day}-{n}.csv")

    # --- the scaling study ------------------------------------------------------------------------------

    @property
    def scale_table(self) -> Path:
        """scale.csv: one row per size (dvc.yaml's top-level plots read it)."""
        return self.scale_reports_dir / "scale.csv"

    @property
    def scale_plots(self) -> tuple[Path, Path]:
        """Accuracy and latency against parameter count."""
        return (
            self.scale_reports_dir / "accuracy_vs_params.png",
            self.scale_reports_dir / "latency_vs_params.png",
        )
