"""Where every step reads and writes, derived once from ``params.paths`` and the project folder."""

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


@dataclass(frozen=True)
class Layout:
    """Absolute paths of one project folder; ``dvc.yaml`` templates the same paths from params.yaml."""

    root: Path
    raw: Path
    split_dir: Path
    features_dir: Path
    tokenizer_dir: Path
    model_dir: Path
    variants_dir: Path
    reports_dir: Path
    expectations_dir: Path
    accepted_dir: Path

    @classmethod
    def of(cls, params: Params, root: Path) -> Layout:
        root = root.resolve()
        paths = params.paths
        return cls(
            root=root,
            raw=params.raw_path(root),
            split_dir=root / paths.split_dir,
            features_dir=root / paths.features_dir,
            tokenizer_dir=root / paths.tokenizer_dir,
            model_dir=root / paths.model_dir,
            variants_dir=root / paths.variants_dir,
            reports_dir=root / paths.reports_dir,
            expectations_dir=root / "expectations",
            accepted_dir=root / paths.accepted_dir,
        )

    @property
    def validation_dir(self) -> Path:
        return self.reports_dir / "validation"

    @property
    def split_stats(self) -> Path:
        return self.reports_dir / "split.json"

    @property
    def train_history(self) -> Path:
        return self.reports_dir / "train_history.json"

    @property
    def compression_report(self) -> Path:
        return self.reports_dir / "compression.json"
