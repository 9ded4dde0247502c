"""The whole nightly flow, shrunk: a temp git + DVC project, a real `mlflow server`, Prefect's test harness.

One good run is shared by the tests of this module; the bad-input runs follow it and must leave its registry,
its `staging` alias and its DVC data as they were.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness

from flows.nightly import RunSummary, nightly_retrain, render_summary
from quantflow.core.errors import DataError, ValidationFailed
from quantflow.core.label_audit import read_label_issues
from quantflow.core.params import ParamsError
from quantflow.intake.versioning import tool_env
from tests.mlflow_server import mlflow_server, mlflow_server_process  # noqa: F401

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PROJECT_FILES = (
    "dvc.yaml",
    "expectations",
    "quantflow",
    "tasks",
    "data/external/.gitkeep",
    "data/accepted/news_vs_comment/.gitkeep",
    "data/accepted/review_sentiment/.gitkeep",
    "reports/scale/scale.csv",
)
TINY = {
    "ingest": {"dataset": "news_vs_comment", "max_rows_per_class": 200},
    "validate": {"min_rows_per_class": 20},
    "preprocess": {"max_len": 48, "max_vocab": 1500},
    "train": {
        # both families through the real flow (params.yaml ships nb_lr alone)
        "candidates": ["nb_lr", "neural"],
        "embed_dim": 16,
        "num_filters": 16,
        "kernel_sizes": [2, 3],
        "epochs": 2,
        "batch_size": 32,
        "lr": 0.01,
        "threads": 1,
    },
    "evaluate": {"baseline_max_features": 5000},
    "register": {"min_f1": 0.5},
}


def sh(args: list[str], cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, env=tool_env(), capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def dvc(args: list[str], cwd: Path) -> str:
    return sh([sys.executable, "-m", "dvc", *args], cwd)


def make_project(root: Path) -> Path:
    """A git + DVC repository holding the project's pipeline files and a tiny params.yaml."""
    for name in PROJECT_FILES:
        src, dst = REPO / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False))
    (root / ".gitignore").write_text("/mlflow.db\n/mlartifacts/\n/reports/\n/dvc-remote/\n")
    sh(["git", "init", "-q"], root)
    dvc(["init", "-q"], root)
    dvc(["remote", "add", "-d", "local", str(root / "dvc-remote")], root)
    sh(["git", "add", "-A"], root)
    sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "project"], root)
    return root


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="module")
def tracking(mlflow_server: str) -> Iterator[str]:  # noqa: F811
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server
    yield mlflow_server
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("project"))


@pytest.fixture(scope="module")
def good_run(project: Path, tracking: str, harness: None) -> RunSummary:
    return nightly_retrain(root=str(project))


@pytest.fixture
def client(tracking: str) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)


def registry_state(client: mlflow.MlflowClient, name: str) -> dict[str, Any]:
    versions = client.search_model_versions(f"name = '{name}'")
    return {
        "versions": sorted(v.version for v in versions),
        "aliases": dict(client.get_registered_model(name).aliases),
    }


def test_registers_version_with_both_aliases(good_run: RunSummary, client: mlflow.MlflowClient) -> None:
    reg = good_run.registered
    assert reg.model_name == "quantflow-news_vs_comment" and reg.version == "1" and reg.promoted
    assert registry_state(client, reg.model_name)["aliases"] == {"challenger": "1", "staging": "1"}
    version = client.get_model_version(reg.model_name, "1")
    assert version.tags["gate.passed"] == "true"
    run = client.get_run(reg.run_id)
    assert (
        run.data.tags["git_commit"] == sh(["git", "rev-parse", "HEAD"], Path(good_run_root(good_run))).strip()
    )
    assert run.data.tags["prefect_flow_run_id"] not in ("", "none")
    assert len(run.data.tags["dvc_lock_sha256"]) == 64


def test_the_label_audit_is_reported_logged_and_summarized(
    good_run: RunSummary, client: mlflow.MlflowClient
) -> None:
    """The split step's audit: reports/label_issues.csv (a DVC output), its count in the run and the summary."""
    issues = read_label_issues(good_run.layout.label_issues)
    audit = good_run.results["split"].stats["label_audit"]
    assert audit["action"] == "report" and audit["flagged"] == len(issues) and audit["dropped"] == 0
    run = client.get_run(good_run.registered.run_id)
    assert run.data.metrics["label_issues_flagged"] == len(issues)
    assert "reports/label_issues.csv" in {a.path for a in client.list_artifacts(run.info.run_id, "reports")}
    assert f"Label audit (report): {len(issues)} training rows flagged, all kept" in render_summary(good_run)


def good_run_root(summary: RunSummary) -> Path:
    return summary.results["ingest"].path.parents[2]


def test_summary_says_which_family_won(good_run: RunSummary) -> None:
    """The run summary names the shipped candidate and its family, and lists every candidate's scores."""
    summary = render_summary(good_run)
    model = good_run.results["evaluate"].metrics["model"]
    assert f"Shipped: **{model['candidate']}** ({model['family']} family" in summary
    assert f"| **{model['candidate']}** (shipped) |" in summary
    others = set(TINY["train"]["candidates"]) - {model["candidate"]}
    assert all(f"| {name} |" in summary for name in others)
    assert "McNemar" in summary


def test_the_shipped_folder_is_calibrated_and_the_summary_says_how_much(
    good_run: RunSummary, project: Path
) -> None:
    """The variant registered carries the calibration compress fitted; the summary has its ECE before → after."""
    calibration = json.loads((project / "reports" / "calibration.json").read_text())
    chosen = good_run.results["compress"].chosen
    folder = json.loads((project / "artifacts" / "variants" / chosen / "model.json").read_text())
    assert calibration["variant"] == chosen and folder["calibration"] == calibration["calibration"]
    shipped = calibration["models"][chosen]
    line = f"test ECE {shipped['before']['ece']:.4f} → {shipped['after']['ece']:.4f}"
    assert f"Calibration: {chosen} serves " in render_summary(good_run) and line in render_summary(good_run)
    assert (project / "reports" / "calibration_reliability.json").is_file()


def test_staging_model_answers_raw_text(good_run: RunSummary, tracking: str) -> None:
    model = mlflow.pyfunc.load_model(f"models:/{good_run.registered.model_name}@staging")
    texts = ["国务院召开全国经济工作会议", "这本书质量不错，推荐购买"]
    out = model.predict(texts)
    assert len(out) == 2 and {p.label for p in out} <= {"news", "comment"}
    assert all(abs(sum(p.probabilities.values()) - 1) < 1e-5 for p in out)
    # a DataFrame with a text column gives the same answers
    assert [p.label for p in model.predict(pd.DataFrame({"text": texts}))] == [p.label for p in out]


def test_metrics_reports_and_clean_dvc_status(good_run: RunSummary, project: Path) -> None:
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    compression = json.loads((project / "reports" / "compression.json").read_text())
    assert {"fp32", "baseline", "versus_baseline"} <= set(metrics)
    assert set(metrics["candidates"]) == set(TINY["train"]["candidates"])
    winner = metrics["model"]["candidate"]
    assert metrics["candidates"][winner]["winner"] and metrics["selection"]["winner"] == winner
    # the winner's variants: either family builds fp32 and int8-static (a linear model: fixed-scale MatMulInteger)
    built = {"fp32", "int8-static"}
    assert built <= set(compression["variants"])
    assert (project / "reports" / "plots" / "confusion_matrix.png").is_file()
    assert json.loads(dvc(["status", "--json"], project)) == {}
    assert "up to date" in dvc(["repro"], project).lower()
    assert any((project / "dvc-remote").rglob("*")), "the flow pushes the data to the DVC remote"


def flow_run_logs(flow_run_id: str) -> list[str]:
    """Every log line the Prefect API holds for the flow run (its tasks' included), oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # the run's last lines may still be queued in this process
    wanted = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    lines: list[str] = []
    with get_client(sync_client=True) as client:
        while page := client.read_logs(wanted, limit=200, offset=len(lines), sort=LogSort.TIMESTAMP_ASC):
            lines += [log.message for log in page]
    return lines


def test_step_lines_reach_the_flow_run_logs_once(
    good_run: RunSummary, client: mlflow.MlflowClient, harness: None
) -> None:
    """quantflow's own lines (not only Prefect's state changes) are in the flow run's logs, each once."""
    tags = client.get_run(good_run.registered.run_id).data.tags
    lines = flow_run_logs(tags["prefect_flow_run_id"])
    epochs = TINY["train"]["epochs"]
    expected = [
        r"ingest: \d+ rows from news_vs_comment",
        r"validated .*news_vs_comment.parquet: \d+ rows",
        r"split: \d+ rows in",
        r"preprocess: tokenized \d+ train texts in",
        *(rf"train: epoch {e} loss [\d.]+ val acc [\d.]+ val macro-F1 [\d.]+" for e in range(1, epochs + 1)),
        r"train: ships ",
        r"compress( \[1/\d\] building fp32: done in|: classic parity ok)",  # whichever family won
        r"compress: chose ",
        r"gate: pass min_f1: ",
        r"register: quantflow-news_vs_comment v1 ",
    ]
    for pattern in expected:
        found = [line for line in lines if re.match(pattern, line)]
        assert len(found) == 1, f"{pattern!r}: {len(found)} lines in the flow run's logs:\n" + "\n".join(
            lines
        )


CLI_FLOW = """
import logging
from quantflow.cli import _setup
_setup()  # what every `quantflow` command does first
from prefect import flow, task

@task
def step():
    logging.getLogger("tasks.demo").info("demo: one step line")

@flow(name="demo-step-logs")
def demo():
    step()

print(demo(return_state=True).state_details.flow_run_id)
"""


def test_a_cli_process_prints_each_step_line_once_and_sends_it(harness: None) -> None:
    """A process set up as the CLI does (no logging settings inherited): the step's line is on the terminal once
    and in the flow run's logs once."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in tool_env().items() if not k.startswith("PREFECT_LOGGING")}
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    done = subprocess.run(
        [sys.executable, "-c", CLI_FLOW], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr
    terminal = done.stdout + done.stderr
    assert terminal.count("demo: one step line") == 1, terminal
    assert flow_run_logs(done.stdout.strip().splitlines()[-1]).count("demo: one step line") == 1


def test_data_docs_index_after_the_run(
    good_run: RunSummary, project: Path, client: mlflow.MlflowClient
) -> None:
    """The run left one Data Docs site: validate's suites and the dataset contract under the flow run's name,
    linked from the summary and logged with the MLflow run."""
    from flows.nightly import render_summary
    from tests.data.test_data_docs import assert_links_stay_inside, page_text

    site = project / "reports" / "gx" / "data_docs"
    assert (site / "index.html").is_file()
    tags = client.get_run(good_run.registered.run_id).data.tags
    run_name = f"nightly_retrain-{tags['prefect_flow_run_name']}"
    pages = sorted(p.relative_to(site / "validations") for p in (site / "validations").rglob("*.html"))
    suites = {page.parts[: page.parts.index(run_name)] for page in pages}
    frames = {("dataset", frame) for frame in ("classes", "texts", "cells")}  # GX nests dotted suite names
    assert suites == {("raw_dataset",), ("raw_class_counts",), *frames}
    assert all("Status: Succeeded" in page_text(site / "validations" / page) for page in pages)
    assert_links_stay_inside(site)
    assert f"{(site / 'index.html').resolve().as_uri()}" in render_summary(good_run)
    logged = {a.path for a in client.list_artifacts(good_run.registered.run_id, "reports/gx/data_docs")}
    assert "reports/gx/data_docs/index.html" in logged


def test_the_run_names_its_data_version_as_dataset_inputs(
    good_run: RunSummary, project: Path, client: mlflow.MlflowClient
) -> None:
    """The raw dataset and the split are the run's MLflow dataset inputs, digests from dvc.lock."""
    from quantflow.intake.versioning import lock_md5s

    lock = lock_md5s(project / "dvc.lock")
    inputs = client.get_run(good_run.registered.run_id).inputs.dataset_inputs
    found = {
        next(t.value for t in i.tags if t.key == "mlflow.data.context"): (i.dataset.name, i.dataset.digest)
        for i in inputs
    }
    raw, split = "data/raw/news_vs_comment.parquet", "data/split"
    assert found == {
        "raw": (f"news_vs_comment:{raw}", lock[raw][:8]),
        "split": (f"news_vs_comment:{split}", lock[split].removesuffix(".dir")[:8]),
    }


def test_one_mlflow_run_spans_the_flow_and_draws_the_curves_live(
    good_run: RunSummary, client: mlflow.MlflowClient
) -> None:
    """The run opens when the night starts and ends with the flow; every candidate's curve is drawn while it
    trains, long before the register step logs the final metrics."""
    reg = good_run.registered
    run = client.get_run(reg.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["quantflow.outcome"] == f"registered {reg.model_name} v{reg.version}: {reg.outcome}"
    steps = sum(seconds for name, seconds in good_run.timings.items() if name != "tracking store")
    assert (run.info.end_time - run.info.start_time) / 1000 >= steps  # every step inside the run
    assert "run_summary.md" in {a.path for a in client.list_artifacts(reg.run_id)}
    registered_at = client.get_metric_history(reg.run_id, "test_accuracy")[0].timestamp
    after_training = good_run.timings["evaluate"] + good_run.timings["compress"]
    for candidate, epochs in (("nb_lr", [1]), ("neural", [1, 2])):
        curve = sorted(
            client.get_metric_history(reg.run_id, f"{candidate}/val_macro_f1"), key=lambda m: m.step
        )
        assert [m.step for m in curve] == epochs, candidate
        # logged as each epoch ended: at least evaluate and compress before register logged its metrics
        assert registered_at - curve[-1].timestamp >= 1000 * after_training - 50, (candidate, curve)
    # a short named list (tables live in reports/): at most 36 names, plus at most 4 curves per candidate
    curves = [name for name in run.data.metrics if "/" in name]
    assert len(run.data.metrics) - len(curves) <= 36, sorted(run.data.metrics)
    assert len(curves) <= 4 * 2, sorted(curves)


def test_dvc_metrics_fit_120_columns_and_plots_load(good_run: RunSummary, project: Path) -> None:
    table = dvc(["metrics", "show"], project).rstrip("\n").splitlines()
    assert [line.split()[0] for line in table[1:]] == [
        f"reports/headline/{name}.json" for name in ("split", "evaluate", "baseline", "compress")
    ]
    assert max(map(len, table)) <= 120, "\n".join(table)
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "plots", "show"],
        cwd=project,
        env=tool_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and "failed to load" not in done.stdout + done.stderr, done.stderr


def test_repro_after_changing_epochs_reruns_train_onwards(good_run: RunSummary, project: Path) -> None:
    params_path = project / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["train"]["epochs"] = 3
    params_path.write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False))
    output = dvc(["repro"], project)
    ran = {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}
    # compress reruns only when the shipped model changed: a linear winner's model folder is the same bytes
    shipped = json.loads((project / "reports" / "metrics.json").read_text())["model"]["family"]
    assert ran == {"train", "evaluate"} | ({"compress"} if shipped == "neural" else set()), output
    assert json.loads(dvc(["status", "--json"], project)) == {}
    neural = project / "artifacts" / "candidates" / "neural" / "history.json"  # the shipped one may be linear
    assert len(json.loads(neural.read_text())) >= 2


def write_user_file(project: Path, frame: pd.DataFrame, name: str) -> str:
    path = project / "data" / "external" / name
    frame.to_csv(path, index=False)
    return str(path.relative_to(project))


@pytest.mark.parametrize(
    "case",
    ["label outside the set", "missing text column", "empty file", "unreadable file", "unknown dataset"],
)
def test_bad_input_stops_the_run_and_changes_nothing(
    good_run: RunSummary, project: Path, case: str, client: mlflow.MlflowClient, tiny_frame: pd.DataFrame
) -> None:
    name = good_run.registered.model_name
    before = (
        registry_state(client, name),
        (project / "dvc.lock").read_text(),
        (project / "data" / "raw" / "news_vs_comment.parquet").read_bytes(),
    )
    user = {"dataset": "news_vs_comment", "text_column": "text", "label_column": "label"}
    if case == "label outside the set":
        bad = tiny_frame.copy()
        bad.loc[5, "label"] = "sports"
        overrides, expected = {"ingest.path": write_user_file(project, bad, "bad.csv")}, ValidationFailed
        message = ["label", "sports", "row 5"]
    elif case == "missing text column":
        path = write_user_file(project, tiny_frame[["label"]], "nolabel.csv")
        overrides, expected, message = {"ingest.path": path}, DataError, ["nolabel.csv", "'text'"]
    elif case == "empty file":
        (project / "data" / "external" / "empty.csv").write_text("")
        overrides, expected, message = (
            {"ingest.path": "data/external/empty.csv"},
            DataError,
            ["empty.csv", "empty"],
        )
    elif case == "unreadable file":
        (project / "data" / "external" / "junk.parquet").write_bytes(b"\x00not parquet\xff")
        overrides, expected = {"ingest.path": "data/external/junk.parquet"}, DataError
        message = ["junk.parquet", "cannot read"]
    else:
        overrides, expected, message = {"ingest.dataset": "tweets"}, ParamsError, ["ingest", "tweets"]
    if "ingest.path" in overrides:
        overrides.update(
            {f"ingest.{k}": v for k, v in user.items()}, **{"validate.labels": ["news", "comment"]}
        )
    with pytest.raises(expected) as err:
        nightly_retrain(root=str(project), overrides=overrides)
    for fragment in message:
        assert fragment in str(err.value)
    if expected is not ParamsError:  # bad params fail before the night (and its MLflow run) opens
        experiment = client.get_experiment_by_name("quantflow")
        (last,) = client.search_runs([experiment.experiment_id], order_by=["start_time DESC"], max_results=1)
        assert last.info.status == "FAILED", last.info
        assert last.data.tags["quantflow.outcome"].startswith(expected.__name__), last.data.tags
    after = (
        registry_state(client, name),
        (project / "dvc.lock").read_text(),
        (project / "data" / "raw" / "news_vs_comment.parquet").read_bytes(),
    )
    assert after == before
    for leftover in (project / "data" / "external").glob("*.*"):
        leftover.unlink()


def test_an_experiment_records_its_metrics_beside_its_params(good_run: RunSummary, project: Path) -> None:
    """`dvc exp run -S` then `dvc exp show`: the committed run and the experiment, each with its params and
    its headline figures (read back from DVC's cache through each commit's dvc.lock)."""
    sh(["git", "add", "-A"], project)
    sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "the run"], project)
    baseline_epochs = yaml.safe_load((project / "params.yaml").read_text())["train"]["epochs"]
    dvc(["exp", "run", "-S", "train.epochs=1"], project)
    rows = experiment_rows(json.loads(dvc(["exp", "show", "--json"], project)))
    epochs = {row["params"]["params.yaml"]["data"]["train"]["epochs"] for row in rows}
    assert epochs == {baseline_epochs, 1}
    for row in rows:
        metrics = row["metrics"]
        for name in ("evaluate", "baseline", "compress"):
            figures = metrics[f"reports/headline/{name}.json"]["data"]
            assert isinstance(figures["accuracy"], float) and isinstance(figures["macro_f1"], float), row
        assert isinstance(metrics["reports/headline/split.json"]["data"]["rows"], int)


def experiment_rows(shown: list[dict]) -> list[dict]:
    """The data of the baseline commit and of each experiment of ``dvc exp show --json`` (not the workspace)."""
    rows = []
    for baseline in shown:
        if baseline.get("rev") == "workspace":
            continue
        rows.append(baseline["data"])
        rows += [rev["data"] for exp in baseline.get("experiments") or [] for rev in exp["revs"]]
    return rows
