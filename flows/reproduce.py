"""Rebuild a registered model from its lineage and compare: ``quantflow reproduce --version N``.

The version's run records the git commit, the ``dvc.lock`` digest and the lock itself (run artifact
``lineage/dvc.lock``). The commit is checked out in a temporary ``git worktree``; the recorded lock is put in
it (the nightly flow writes dvc.lock after the commit it records, so the commit need not hold it; the digest
proves the file is the one the run used); ``dvc pull`` fetches that run's data from the DVC remote and
``dvc repro --force`` rebuilds every stage with the commit's own code (``PYTHONPATH`` points at the worktree).
The rebuilt accuracy and macro-F1 figures must match the registered run's within
``register.reproduce_tolerance``; outputs that came out bit-identical are reported too (training is seeded and
uses deterministic torch algorithms, so on the same machine kind they should all match).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from quantflow.core.errors import QuantflowError
from quantflow.core.layout import Layout
from quantflow.core.params import Params, ParamsError, load_params
from quantflow.intake.versioning import dvc, file_sha256, lock_md5s, run_tool, tool_env
from quantflow.registry.runlog import LINEAGE_DIR, headline_metrics, numeric_leaves
from quantflow.registry.tracking import resolve_tracking_uri

logger = logging.getLogger(__name__)

COMPARED_SUFFIXES = ("_accuracy", "_macro_f1")


class ReproduceError(QuantflowError):
    """The version cannot be rebuilt (no commit recorded, lock missing, DVC failed...): the message says why."""


@dataclass(frozen=True)
class MetricCheck:
    name: str
    recorded: float
    rebuilt: float
    ok: bool


@dataclass
class Reproduction:
    model_name: str
    version: str
    commit: str
    tolerance: float
    checks: list[MetricCheck] = field(default_factory=list)
    identical_outputs: list[str] = field(default_factory=list)
    different_outputs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def render(self) -> str:
        lines = [
            f"{self.model_name} v{self.version} rebuilt from commit {self.commit[:12]}: "
            f"{'REPRODUCED' if self.passed else 'NOT reproduced'} (tolerance {self.tolerance})",
            "",
            "| metric | registered | rebuilt | ok |",
            "|---|---|---|---|",
            *[
                f"| {c.name} | {c.recorded:.6f} | {c.rebuilt:.6f} | {'yes' if c.ok else 'NO'} |"
                for c in self.checks
            ],
            "",
            f"bit-identical outputs: {len(self.identical_outputs)}/"
            f"{len(self.identical_outputs) + len(self.different_outputs)}"
            + (f" (differ: {', '.join(self.different_outputs)})" if self.different_outputs else ""),
        ]
        return "\n".join(lines + [f"warning: {w}" for w in self.warnings])


def _tag(tags: dict[str, str], key: str, what: str) -> str:
    value = tags.get(key)
    if not value or value == "none":
        raise ReproduceError(
            f"the run records no {key} ({what}); only versions registered by `quantflow run` from a git + DVC "
            "project can be rebuilt"
        )
    return value


def recorded_lock(client: mlflow.MlflowClient, run_id: str, digest: str, folder: Path) -> Path:
    """Download the run's ``lineage/dvc.lock`` and check it against the recorded sha256."""
    try:
        path = Path(client.download_artifacts(run_id, f"{LINEAGE_DIR}/dvc.lock", str(folder)))
    except (MlflowException, OSError) as exc:
        raise ReproduceError(f"run {run_id} holds no {LINEAGE_DIR}/dvc.lock artifact ({exc})") from None
    if file_sha256(path) != digest:
        raise ReproduceError(
            f"{LINEAGE_DIR}/dvc.lock of run {run_id} has sha256 {file_sha256(path)}, the run recorded {digest}"
        )
    return path


@contextmanager
def worktree(repo: Path, commit: str, keep: bool) -> Iterator[Path]:
    """A detached ``git worktree`` of ``commit`` in a temporary folder, removed afterwards unless ``keep``."""
    parent = Path(tempfile.mkdtemp(prefix="quantflow-reproduce-"))
    folder = parent / "worktree"
    run_tool(["git", "worktree", "add", "--detach", "--force", str(folder), commit], repo)
    try:
        yield folder
    finally:
        if keep:
            logger.info("reproduce: worktree kept at %s", folder)
        else:
            run_tool(["git", "worktree", "remove", "--force", str(folder)], repo)
            shutil.rmtree(parent, ignore_errors=True)


def dvc_in(folder: Path, args: list[str]) -> str:
    """``dvc`` in the worktree with the worktree's own code first on the import path."""
    env = {
        **tool_env(),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=folder, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise ReproduceError(
            f"`dvc {' '.join(args)}` failed in {folder}:\n{(done.stderr or done.stdout)[-3000:]}"
        )
    return done.stdout


def pin_remote(root: Path, folder: Path) -> None:
    """Point the worktree's default DVC remote where the project's points: a relative url (the default
    ``../.dvc-storage``) would otherwise resolve inside the temporary worktree, where no data was pushed."""
    name = dvc(["remote", "default"], root).strip()
    if not name:
        return
    url = dvc(["config", f"remote.{name}.url"], root).strip()  # dvc prints a local path resolved already
    if "://" not in url and not Path(url).is_absolute():
        url = str((root / ".dvc" / url).resolve())
    dvc_in(folder, ["remote", "modify", "--local", name, "url", url])


def rebuilt_metrics(rebuilt: Layout) -> dict[str, float]:
    """The metric names the register step logs (runlog.headline_metrics: test_*, shipped_*...), and the names
    runs registered before them used (fp32_*, baseline_*, onnx_<variant>_*), so older versions compare too."""
    metrics = json.loads(rebuilt.metrics.read_text(encoding="utf-8"))
    compression = json.loads(rebuilt.compression_report.read_text(encoding="utf-8"))
    earlier = numeric_leaves(metrics) | numeric_leaves(compression["variants"], "onnx")
    return earlier | headline_metrics(metrics, compression)


def compare(recorded: dict[str, float], rebuilt: dict[str, float], tolerance: float) -> list[MetricCheck]:
    names = sorted(k for k in recorded if k.endswith(COMPARED_SUFFIXES) and k in rebuilt)
    return [
        MetricCheck(k, recorded[k], rebuilt[k], abs(recorded[k] - rebuilt[k]) <= tolerance + 1e-12)
        for k in names
    ]


def committed_params(folder: Path, digest: str | None, result: Reproduction) -> Params | None:
    """params.yaml at the commit (None, with a warning, when this version's schema cannot read it); a warning
    too when it is not the configuration the run recorded."""
    try:
        committed = load_params(folder / "params.yaml")
    except ParamsError as exc:
        result.warnings.append(f"params.yaml at the commit does not parse with this version's schema: {exc}")
        return None
    if committed.digest() != digest:
        result.warnings.append(
            "params.yaml at the commit differs from the run's params (run with --set overrides?): the "
            "rebuild uses the committed file"
        )
    return committed


def reproduce(params: Params, root: Path, version: str, keep: bool = False) -> Reproduction:
    """Rebuild ``params.model_name`` version ``version`` from its recorded commit and data; compare metrics."""
    uri, _ = resolve_tracking_uri(root)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = params.model_name
    try:
        run = client.get_run(client.get_model_version(name, version).run_id)
    except MlflowException as exc:
        raise ReproduceError(f"{name} v{version} not found on {uri}: {exc}") from None
    tags = run.data.tags
    commit = _tag(tags, "git_commit", "the git commit")
    digest = _tag(tags, "dvc_lock_sha256", "the dvc.lock digest")
    result = Reproduction(name, version, commit, params.register.reproduce_tolerance)
    if tags.get("git_dirty") == "true":
        result.warnings.append("the run's working tree differed from its commit: the rebuild may differ")
    with tempfile.TemporaryDirectory() as scratch, worktree(root, commit, keep) as folder:
        lock = recorded_lock(client, run.info.run_id, digest, Path(scratch))
        shutil.copyfile(lock, folder / "dvc.lock")
        committed = committed_params(folder, tags.get("params_digest"), result)
        pin_remote(root, folder)
        # the ingest stage's dependency: empty (no batch yet) it is in no commit
        Layout.of(committed or params, folder).accepted_dir.mkdir(parents=True, exist_ok=True)
        logger.info("reproduce: %s v%s at %s in %s: dvc pull", name, version, commit[:12], folder)
        dvc_in(folder, ["pull"])
        logger.info("reproduce: dvc repro --force (every stage, the commit's code)")
        dvc_in(folder, ["repro", "--force", "--quiet"])
        rebuilt = Layout.of(committed or params, folder)
        result.checks = compare(run.data.metrics, rebuilt_metrics(rebuilt), result.tolerance)
        before, after = lock_md5s(lock), lock_md5s(folder / "dvc.lock")
        for path, md5 in sorted(before.items()):
            (result.identical_outputs if after.get(path) == md5 else result.different_outputs).append(path)
    if not result.checks:
        result.warnings.append("no accuracy or macro-F1 metric in common between the run and the rebuild")
    logger.info("reproduce: %s", "reproduced" if result.passed else "NOT reproduced")
    return result
