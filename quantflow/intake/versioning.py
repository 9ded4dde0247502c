"""Data versions and lineage: record the steps' outputs in ``dvc.lock``, push them, and describe the commit.

The flow runs the step functions in process; ``dvc commit`` then writes the same ``dvc.lock`` that
``dvc repro`` would, so ``dvc status`` is clean afterwards and a later ``dvc repro`` is a no-op.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prefect import task

from quantflow.core.bundle import library_versions
from quantflow.core.errors import QuantflowError

logger = logging.getLogger(__name__)


class VersioningError(QuantflowError):
    """git or DVC refused: the message carries the command and its output."""


# libraries whose versions can change a result: recorded on every run as ``lib.<name>``
TRACKED_LIBRARIES = (
    "torch",
    "onnx",
    "onnxruntime",
    "numpy",
    "pandas",
    "scikit-learn",
    "spacy",
    "jieba",
    "snownlp",
    "mlflow",
    "prefect",
    "dvc",
    "great-expectations",
)


@dataclass(frozen=True)
class Lineage:
    """Where a run came from: enough to rebuild it with ``git checkout <commit> && dvc pull && dvc repro``."""

    git_commit: str
    git_dirty: bool
    dvc_lock_sha256: str
    data_md5: dict[str, str] = field(default_factory=dict)  # dvc.lock out path -> md5 (".dir" for folders)
    libraries: dict[str, str] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        return {
            "git_commit": self.git_commit,
            "git_dirty": str(self.git_dirty).lower(),
            "dvc_lock_sha256": self.dvc_lock_sha256,
            **{f"data_md5.{path}": md5 for path, md5 in self.data_md5.items()},
            **{f"lib.{name}": version for name, version in self.libraries.items()},
        }


def lock_md5s(lock_path: Path) -> dict[str, str]:
    """Every stage output recorded in ``dvc.lock`` with its md5: the data version, path by path."""
    if not lock_path.is_file():
        return {}
    lock = yaml.safe_load(lock_path.read_text(encoding="utf-8")) or {}
    return {
        out["path"]: out["md5"]
        for stage in (lock.get("stages") or {}).values()
        for out in stage.get("outs") or []
        if "md5" in out
    }


def tool_env() -> dict[str, str]:
    """The environment for DVC and the stage commands it runs: this interpreter's scripts first on PATH."""
    scripts = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
    }


def run_tool(args: list[str], root: Path) -> str:
    """Run a command in ``root``; a non-zero exit becomes a VersioningError with the command's output."""
    done = subprocess.run(args, cwd=root, env=tool_env(), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise VersioningError(
            f"`{' '.join(args)}` failed in {root} (exit {done.returncode}):\n"
            f"{(done.stderr or done.stdout).strip()}"
        )
    return done.stdout


def dvc(args: list[str], root: Path) -> str:
    return run_tool([sys.executable, "-m", "dvc", *args], root)


def require_dvc_repo(root: Path) -> None:
    if not (root / ".dvc").is_dir() or not (root / "dvc.yaml").is_file():
        raise VersioningError(
            f"{root}: not a DVC project (need .dvc/ and dvc.yaml); run `dvc init` there first"
        )


def commit_outputs(root: Path) -> str:
    """Write ``dvc.lock`` for every stage from the outputs on disk and put them in the DVC cache."""
    dvc(["commit", "--force", "--quiet"], root)
    return file_sha256(root / "dvc.lock")


def push_data(root: Path) -> None:
    """Copy the cached outputs to the default DVC remote (a local folder by default, S3 when configured)."""
    dvc(["push", "--quiet"], root)


def restore_outputs(root: Path, targets: list[Path]) -> None:
    """Put tracked outputs (every one when ``targets`` is empty) back to what ``dvc.lock`` records, after bad
    data was written over them; a cache object that is missing is pulled from the DVC remote.

    When neither works, the targets that could not be restored are removed (no bad data is left for a later
    step or run to pick up: the next run sees them missing and rebuilds them) and a VersioningError says what
    failed, for the caller to report beside the error that asked for the restore.
    """
    if not (root / "dvc.lock").is_file():
        for target in targets:
            _remove(target)
        return
    names = [str(t.relative_to(root)) for t in targets]
    try:
        dvc(["checkout", "--force", *names], root)  # not --quiet: on failure its message names the outputs
    except VersioningError as checkout:
        logger.warning("restore from the DVC cache failed, pulling from the remote: %s", checkout)
        try:
            dvc(["pull", "--force", *names], root)
        except VersioningError as pull:
            for target in targets:
                _remove(target)
            removed = f"; removed {', '.join(names)}: the next run rebuilds them" if names else ""
            raise VersioningError(
                f"restoring {', '.join(names) or 'the outputs'} to dvc.lock failed: from the cache ({checkout}) "
                f"and from the remote ({pull}){removed}"
            ) from None


def _remove(target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "none"


def lineage(root: Path) -> Lineage:
    """The git commit the run used (and whether tracked files differed from it), the dvc.lock digest and the
    md5 of every output it records, and the library versions of this interpreter."""
    try:
        commit = run_tool(["git", "rev-parse", "HEAD"], root).strip()
        # dvc.lock and params.yaml count: a night commits both before it registers, so a difference means
        # the commit does not describe the model (a night that made no commit, or a hand edit)
        status = ["git", "status", "--porcelain", "--untracked-files=no", "--", "."]
        dirty = bool(run_tool(status, root).strip())
    except VersioningError:
        commit, dirty = "none", True
    lock = root / "dvc.lock"
    return Lineage(commit, dirty, file_sha256(lock), lock_md5s(lock), library_versions(TRACKED_LIBRARIES))


def write_params(path: Path, overrides: dict[str, Any]) -> None:
    """Set dotted keys (``{"train.epochs": 1}``) in a params file in place, as ``dvc exp run -S`` does, but
    changing only those lines: round-trip YAML keeps comments, key order, quotes and ``null``; a new list is
    written in flow style (``[a, b]``). Replaced atomically: a kill leaves the old file or the new one."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedSeq

    rt = YAML(typ="rt")
    rt.preserve_quotes = True
    rt.width = 4096  # never wrap a long line the file did not wrap
    rt.indent(mapping=2, sequence=4, offset=2)
    rt.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    data = rt.load(path.read_text(encoding="utf-8"))
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        if isinstance(value, list):
            value = CommentedSeq(value)
            value.fa.set_flow_style()
        node[leaf] = value
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as handle:
        rt.dump(data, handle)
    os.replace(tmp, path)


@task(name="dvc-commit")
def commit_outputs_task(root: Path) -> str:
    return commit_outputs(root)


# a remote (S3/MinIO) may blip: backoff with jitter, so replicas retrying together do not collide again
@task(name="dvc-push", retries=3, retry_delay_seconds=[2, 10, 30], retry_jitter_factor=0.5)
def push_data_task(root: Path) -> None:
    push_data(root)
