"""The fault suite's project: a tiny git + DVC project where real `quantflow run` processes are killed, starved
of their tracking server or run twice at once, and the checks every case ends with.

One template project is trained once per session (night 1, the embedded sqlite store) and kept as a snapshot;
each case restores it *at the same path* (the DVC remote, the DVC cache and the store's artifact locations are
absolute paths inside it), drops the same held-back batch in data/incoming/ and runs its fault.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import yaml

from quantflow.core.corpora import held_back, load_builtin
from quantflow.core.journal import ARCHIVE_DIR, journal_path
from quantflow.core.workspace import STATE_DIR
from quantflow.intake.versioning import tool_env
from quantflow.registry.promotion import LOCK_SUFFIX, STAGING, STATE_TAG, read_history
from quantflow.registry.registration import NIGHT_TAG

REPO = Path(__file__).resolve().parents[2]
QUANTFLOW = Path(sys.executable).parent / "quantflow"
HOLDOUT = 0.3
MODEL = "quantflow-news_vs_comment"
RUN_TIMEOUT_S = 600
CASES = itertools.count()
# tiny data, a tiny model, one epoch, two compression variants; a gate that always passes (so every alias
# failpoint is reached); registry retries short, so an outage fails in seconds
TINY = {
    "ingest.max_rows_per_class": 200,
    "ingest.holdout_fraction": HOLDOUT,
    "validate.min_rows_per_class": 20,
    "preprocess.max_len": 48,
    "preprocess.max_vocab": 1500,
    "train.model": "textcnn",
    "train.embed_dim": 16,
    "train.num_filters": 16,
    "train.kernel_sizes": [2, 3],
    "train.epochs": 1,
    "train.batch_size": 32,
    "train.threads": 1,
    "evaluate.baseline_max_features": 5000,
    "compress.variants": ["fp32", "int8-static"],
    "compress.calibration_samples": 64,
    "compress.latency_texts": 20,
    "compress.throughput_texts": 64,
    "register.min_f1": 0.0,
    "compress.max_drop_pp": 100.0,
    "register.champion_tolerance": 1.0,
    "register.bootstrap_samples": 200,
    "register.retries": 1,
    "register.retry_backoff_s": 0.2,
    "register.task_retry_delays_s": [1],
    "register.lock_timeout_s": 120,
}
PROJECT_FILES = ("dvc.yaml", "expectations", "quantflow", "tasks", "data/external/.gitkeep")


def sh(args: list[str], cwd: Path, check: bool = True) -> str:
    done = subprocess.run(args, cwd=cwd, env=tool_env(), capture_output=True, text=True, check=False)
    if check:
        assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def dvc(args: list[str], cwd: Path) -> str:
    return sh([sys.executable, "-m", "dvc", *args], cwd)


def make_template(root: Path) -> Path:
    """A git + DVC project with the pipeline files, TINY params, its DVC cache and remote inside it."""
    from tests.params_helpers import write_params

    for name in PROJECT_FILES:
        src, dst = REPO / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    (root / "data" / "accepted" / "news_vs_comment").mkdir(parents=True)
    (root / "data" / "accepted" / "news_vs_comment" / ".gitkeep").touch()
    write_params(root / "params.yaml", TINY)
    ignored = ["mlflow.db", "mlartifacts", "reports", "dvc-remote", STATE_DIR, "data/incoming"]
    ignored += ["data/processed", "data/rejected", "data/quarantine"]
    (root / ".gitignore").write_text("".join(f"/{name}/\n" for name in ignored))
    for args in (
        ["git", "init", "-q"],
        [sys.executable, "-m", "dvc", "init", "-q"],
        [sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(root / "dvc-remote")],
        [sys.executable, "-m", "dvc", "config", "cache.dir", str(root / ".dvc" / "cache")],
        ["git", "config", "user.name", "fault suite"],
        ["git", "config", "user.email", "faults@quantflow.local"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "fault suite project"],
    ):
        sh(args, root)
    return root


def held_rows() -> pd.DataFrame:
    frame = load_builtin("news_vs_comment")
    return frame[held_back(frame, HOLDOUT)].sample(frac=1.0, random_state=1).reset_index(drop=True)


def batch(start: int = 0, per_class: int = 40) -> pd.DataFrame:
    """A good batch: held-back rows (never in the base data), balanced."""
    held = held_rows()
    parts = [held[held["label"] == label].iloc[start : start + per_class] for label in ("news", "comment")]
    return pd.concat(parts).sample(frac=1.0, random_state=2).reset_index(drop=True)


@dataclass
class Run:
    """One finished `quantflow run` process."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass
class Project:
    """The case's project folder and how to run and inspect it."""

    root: Path
    env: dict[str, str]  # Prefect API, quiet settings; MLFLOW_TRACKING_URI for the server cases
    baseline: set[str] = field(default_factory=set)  # nights of the template (before the case)
    case: int = field(default_factory=lambda: next(CASES))

    def drop_batch(self, name: str = "b1", frame: pd.DataFrame | None = None) -> Path:
        path = self.root / "data" / "incoming" / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        (batch() if frame is None else frame).to_csv(path, index=False)
        return path

    def start(self, *args: str, failpoints: str | None = None) -> subprocess.Popen[str]:
        env = dict(self.env)
        if failpoints:
            env["QUANTFLOW_FAILPOINTS"] = failpoints
        return subprocess.Popen(
            [str(QUANTFLOW), "run", *args],
            cwd=self.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def run(self, *args: str, failpoints: str | None = None) -> Run:
        started = time.monotonic()
        proc = self.start(*args, failpoints=failpoints)
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
        return Run(proc.returncode, stdout, stderr, time.monotonic() - started)

    @property
    def tracking(self) -> str:
        """The case's store. A sqlite URI made unique per case (an unused ``timeout`` argument): MLflow caches
        one store (engine, connections) per URI in this process, and every case restores ``mlflow.db`` at the
        same path, so a cached store would read the previous case's (deleted) file."""
        if self.env.get("MLFLOW_TRACKING_URI"):
            return self.env["MLFLOW_TRACKING_URI"]
        return f"sqlite:///{self.root / 'mlflow.db'}?timeout={30 + self.case}"

    def client(self) -> mlflow.MlflowClient:
        return mlflow.MlflowClient(tracking_uri=self.tracking, registry_uri=self.tracking)

    def nights(self) -> list[dict[str, Any]]:
        """The archived journals of the nights this case ran (the template's left out)."""
        folder = self.root / STATE_DIR / ARCHIVE_DIR
        records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
        return [r for r in records if r["night_id"] not in self.baseline]

    def versions(self) -> list[Any]:
        return self.client().search_model_versions(f"name = '{MODEL}'")


def reached(night: dict[str, Any], phase: str) -> bool:
    return any(event.split(" ", 2)[1].rstrip(":") == phase for event in night["events"])


def assert_consistent(project: Project) -> None:
    """What every case must end with after the next normal run (issue #20's "done when")."""
    root = project.root
    assert not journal_path(root).exists(), journal_path(root).read_text()
    assert json.loads(dvc(["status", "--json"], root) or "{}") == {}
    assert sh(["git", "status", "--porcelain", "--untracked-files=no"], root) == ""
    assert_registry(project)
    assert_runs(project)
    assert_accepted_rows(project)
    assert_folders(project)


def assert_registry(project: Project) -> None:
    """Every trained night registered exactly once (one complete version), no alias on a non-complete version,
    no pending version, no promotion lock left, the staging history's last move is the alias."""
    client, versions = project.client(), project.versions()
    states = {str(v.version): v.tags.get(STATE_TAG) for v in versions}
    for night in project.nights():
        if reached(night, "trained"):
            mine = [v for v in versions if v.tags.get(NIGHT_TAG) == night["night_id"]]
            complete = [str(v.version) for v in mine if v.tags.get(STATE_TAG) == "complete"]
            assert len(complete) == 1, (night["night_id"], night["outcome"], states)
            assert reached(night, "registered") and night["version"] == complete[0], night
    assert "pending" not in states.values(), states
    model = client.get_registered_model(MODEL)
    for alias, version in model.aliases.items():
        assert states[str(version)] == "complete", (alias, version, states)
    history = read_history(client, MODEL)
    assert history and history[-1]["version"] == str(model.aliases[STAGING]), history
    assert not client.search_registered_models(f"name = '{MODEL}{LOCK_SUFFIX}'")


def assert_runs(project: Project) -> None:
    """No MLflow run left RUNNING; the run of every night of the case (named in its journal) ended: FINISHED when
    its model was registered (by it or by the run that finished it), KILLED when a later run rolled it back."""
    client = project.client()
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = {r.info.run_id: r for r in client.search_runs(experiments, max_results=1000)}
    running = {k: r.data.tags.get("mlflow.runName") for k, r in runs.items() if r.info.status == "RUNNING"}
    assert not running, running
    for night in project.nights():
        if not night.get("run_id") or night["run_id"] not in runs:
            continue
        status = runs[night["run_id"]].info.status
        if reached(night, "registered"):
            assert status == "FINISHED", (night["night_id"], night["outcome"], status)
        elif night["outcome"].startswith("rolled back"):
            assert status in ("KILLED", "FAILED"), (night["night_id"], night["outcome"], status)


def assert_accepted_rows(project: Project) -> None:
    """Every accepted batch is tracked by a committed .dvc file, and its rows are in the raw dataset."""
    root = project.root
    accepted = sorted((root / "data" / "accepted" / "news_vs_comment").glob("*.parquet"))
    committed = set(sh(["git", "ls-files", "data/accepted"], root).split())
    raw = pd.read_parquet(root / "data" / "raw" / "news_vs_comment.parquet")
    in_raw = set(zip(raw["text"], raw["label"], strict=True))
    for path in accepted:
        assert f"data/accepted/news_vs_comment/{path.name}.dvc" in committed, (path, committed)
        rows = pd.read_parquet(path, columns=["text", "label"])
        missing = [r for r in zip(rows["text"], rows["label"], strict=True) if r not in in_raw]
        assert not missing, (path.name, missing[:3])


def assert_folders(project: Project) -> None:
    """incoming/ and processed/ agree with the journals: a registered night's batches were moved, nothing else."""
    incoming = {p.name for p in (project.root / "data" / "incoming").glob("*")}
    processed = {p.name for p in (project.root / "data" / "processed").glob("*")}
    done = {b["source"] for n in project.nights() if reached(n, "registered") for b in n["accepted"]}
    assert processed == done, (processed, done)
    assert not incoming & done, incoming & done


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def git_head(root: Path) -> str:
    return sh(["git", "rev-parse", "HEAD"], root).strip()


def wait_for_file(path: Path, proc: subprocess.Popen[str], timeout: float = 300) -> None:
    """Until ``path`` exists (a failpoint's ``.waiting`` marker); fails when the run ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended (code {proc.returncode}) before {path.name}:\n{out}\n{err}")
        assert time.monotonic() < deadline, f"{path} not written in {timeout:.0f} s"
        time.sleep(0.2)


def environment(prefect_api: str, prefect_home: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in tool_env().items()
        if not key.startswith(("MLFLOW_TRACKING", "QUANTFLOW"))
    }
    env.update(
        {
            "PREFECT_API_URL": prefect_api,
            "PREFECT_HOME": str(prefect_home),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env
