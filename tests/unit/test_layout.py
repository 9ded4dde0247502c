"""dvc.yaml and Layout name the same files: DVC renders dvc.yaml's ``${...}`` templates from params.yaml, and
every output a stage declares must be the Layout path its step writes (tasks/stages.py passes Layout paths)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from dvc.dependency.param import ParamsDependency
from dvc.repo import Repo

from quantflow.core.layout import SPLITS, Layout
from quantflow.core.params import load_params

# stage -> the Layout attributes of its outs, metrics and plots
STAGE_OUTPUTS = {
    "ingest": ("raw",),
    "validate": ("validation_dir",),
    "split": ("split_dir", "split_stats", "split_headline", "label_issues"),
    "preprocess": ("features_dir", "tokenizer_dir"),
    "train": ("candidates_dir", "model_dir", "selection", "train_history"),
    "evaluate": ("metrics", "predictions", "confusion_plot", "evaluate_headline", "baseline_headline"),
    "compress": (
        "variants_dir",
        "compression_table",
        "compression_report",
        "compression_plot",
        "compress_headline",
        "calibration_report",
        "calibration_reliability",
        "calibration_plot",
    ),
}
# the metrics DVC shows and compares: the headline files only, cached (an experiment's commit holds them)
METRICS = ("split_headline", "evaluate_headline", "baseline_headline", "compress_headline")
# non-default folders: an output that matches only because dvc.yaml spells the shipped path fails here
MOVED = {
    "paths": {
        "raw_dir": "d/raw",
        "split_dir": "d/split",
        "reports_dir": "out/rep",
        "variants_dir": "v",
        "candidates_dir": "c/all",
    },
    "ingest": {"dataset": "review_sentiment"},
    "scale": {"reports_dir": "out/scale"},
}


def rendered_project(project_root: Path, folder: Path, changes: dict[str, dict[str, str]]) -> Repo:
    """dvc.yaml and params.yaml (with ``changes`` per section) in a fresh DVC project (no git)."""
    params = yaml.safe_load((project_root / "params.yaml").read_text(encoding="utf-8"))
    for section, values in changes.items():
        params[section].update(values)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    shutil.copy(project_root / "dvc.yaml", folder / "dvc.yaml")
    return Repo.init(str(folder), no_scm=True)


def layout_paths(layout: Layout) -> set[Path]:
    """Every path Layout names (folders, files, per-split files), relative to the project."""
    names = [name for name in dir(layout) if not name.startswith("_")]
    values = [getattr(layout, name) for name in names]
    paths = [v for v in values if isinstance(v, Path)] + [
        p for v in values if isinstance(v, tuple) for p in v
    ]
    paths += [layout.split_file(s) for s in SPLITS]
    return {layout.relative(p) for p in paths}


@pytest.mark.parametrize("changes", [{}, MOVED], ids=["shipped", "moved"])
def test_every_declared_output_is_the_layout_path_its_step_writes(
    project_root: Path, tmp_path: Path, changes: dict
) -> None:
    repo = rendered_project(project_root, tmp_path, changes)
    layout = Layout.of(load_params(tmp_path / "params.yaml"), tmp_path)
    stages = {stage.name: stage for stage in repo.index.stages}
    assert set(stages) == set(STAGE_OUTPUTS)
    known = layout_paths(layout)
    for name, attributes in STAGE_OUTPUTS.items():
        declared = sorted(Path(out.def_path) for out in stages[name].outs)
        assert declared == sorted(layout.relative(getattr(layout, a)) for a in attributes), name
        files = [d for d in stages[name].deps if not isinstance(d, ParamsDependency)]
        data_deps = [Path(d.def_path) for d in files if not d.def_path.endswith(".py")]
        strays = [d for d in data_deps if d not in known and d != Path("data/external")]
        assert not strays, f"{name} depends on paths Layout does not name: {strays}"


@pytest.mark.parametrize("changes", [{}, MOVED], ids=["shipped", "moved"])
def test_the_metrics_are_the_cached_headline_files(project_root: Path, tmp_path: Path, changes: dict) -> None:
    """Only the small headline files are metrics, and DVC caches them: `dvc exp run` commits them (through
    dvc.lock) and `dvc exp show` reads them back; the detailed reports are plain, uncached outputs."""
    repo = rendered_project(project_root, tmp_path, changes)
    layout = Layout.of(load_params(tmp_path / "params.yaml"), tmp_path)
    outs = [out for stage in repo.index.stages for out in stage.outs]
    metrics = {Path(out.def_path): out for out in outs if out.metric}
    assert set(metrics) == {layout.relative(getattr(layout, name)) for name in METRICS}
    assert all(out.use_cache for out in metrics.values())
    for name in ("split_stats", "metrics", "compression_report"):
        [out] = [o for o in outs if Path(o.def_path) == layout.relative(getattr(layout, name))]
        assert not out.metric and not out.use_cache, name


@pytest.mark.parametrize("changes", [{}, MOVED], ids=["shipped", "moved"])
def test_the_top_level_plots_are_the_tables_the_steps_write(
    project_root: Path, tmp_path: Path, changes: dict
) -> None:
    repo = rendered_project(project_root, tmp_path, changes)
    layout = Layout.of(load_params(tmp_path / "params.yaml"), tmp_path)
    sources = {Path(p) for p in repo.index._plot_sources}  # DVC's own resolution of the top-level plots
    assert sources == {layout.relative(layout.scale_table), layout.relative(layout.calibration_reliability)}


def test_the_committed_scale_table_holds_every_plotted_column(project_root: Path) -> None:
    """Until `quantflow scale` runs, reports/scale/scale.csv is the committed header: `dvc plots show` reads
    it (empty axes) instead of warning that it failed to load the study's plots."""
    layout = Layout.of(load_params(project_root / "params.yaml"), project_root)
    header = layout.scale_table.read_text(encoding="utf-8").splitlines()[0].split(",")
    plots = yaml.safe_load((project_root / "dvc.yaml").read_text(encoding="utf-8"))["plots"]
    plotted = {
        column
        for plot in plots
        for props in plot.values()
        if any("scale.csv" in table for table in props["y"])
        for column in [props["x"], *(c for cols in props["y"].values() for c in cols)]
    }
    assert plotted <= set(header), plotted - set(header)
