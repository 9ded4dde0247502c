"""Two runs at once in one project, DVC cache objects gone (with and without bad data that needs a restore), and
`quantflow reproduce` of a version that a recovered night registered."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from quantflow.core.journal import read_journal
from tests.faults.sandbox import (
    QUANTFLOW,
    Project,
    assert_consistent,
    batch,
    git_head,
    load_yaml,
    wait_for_file,
)

pytestmark = pytest.mark.faults

RAW = "data/raw/news_vs_comment.parquet"


def test_a_second_run_stops_at_once_naming_the_first(project: Project) -> None:
    project.drop_batch()
    gate = project.root.parent / "go-concurrent"
    first = project.start(failpoints=f"night:after-taken=wait:{gate}")
    wait_for_file(gate.with_name(gate.name + ".waiting"), first)
    second = project.run()
    assert second.returncode == 3, second.output
    assert f"pid {first.pid} on " in second.stderr and "(quantflow run)" in second.stderr
    assert second.seconds < 30 and "Traceback" not in second.output
    gate.touch()
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stdout + stderr
    assert_consistent(project)
    assert len(project.versions()) == 2  # one model for tonight: the second run registered nothing


def cache_object(root: Path, path: str) -> Path:
    """The DVC cache file of ``path`` as dvc.lock records it."""
    lock = load_yaml(root / "dvc.lock")
    md5 = next(o["md5"] for s in lock["stages"].values() for o in s.get("outs", []) if o["path"] == path)
    return root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def remove(path: Path) -> None:
    path.chmod(0o644)  # DVC makes cache files read-only
    path.unlink()


def test_a_missing_cache_object_is_put_back_by_the_night(project: Project) -> None:
    obj = cache_object(project.root, RAW)
    remove(obj)
    project.drop_batch()
    run = project.run()
    assert run.returncode == 0, run.output
    assert_consistent(project)
    assert cache_object(project.root, RAW).is_file()  # dvc commit cached tonight's raw file


def bad_user_file(project: Project) -> list[str]:
    """A user file with a label outside the set: the validate step fails after ingest wrote the raw file."""
    frame = batch(0, 30).assign(label=lambda f: f["label"].where(f.index != 5, "sports"))
    frame.to_csv(project.root / "data" / "external" / "bad.csv", index=False)
    settings = {"path": "data/external/bad.csv", "text_column": "text", "label_column": "label"}
    overrides = [f"ingest.{key}={value}" for key, value in settings.items()]
    return [arg for pair in [*overrides, "validate.labels=[news, comment]"] for arg in ("--set", pair)]


@pytest.mark.parametrize("lost", ["cache", "cache and remote"])
def test_bad_data_with_a_missing_cache_object_keeps_the_validation_error(project: Project, lost: str) -> None:
    raw = project.root / RAW
    before, head = raw.read_bytes(), git_head(project.root)
    remove(cache_object(project.root, RAW))
    if lost == "cache and remote":
        remote = (
            project.root
            / "dvc-remote"
            / cache_object(project.root, RAW).relative_to(project.root / ".dvc" / "cache")
        )
        remove(remote)
    failed = project.run(*bad_user_file(project))
    assert failed.returncode == 2, failed.output
    assert "label" in failed.stderr and "sports" in failed.stderr, failed.stderr  # the validation error first
    assert "Traceback" not in failed.output
    assert read_journal(project.root) is None and git_head(project.root) == head
    if lost == "cache":
        assert raw.read_bytes() == before  # pulled back from the DVC remote
    else:
        assert "Also: the restore failed" in failed.stderr and "from the remote" in failed.stderr
        assert not raw.exists()  # no bad data left behind: the next run rebuilds it
    (project.root / "data" / "external" / "bad.csv").unlink()

    after = project.run()
    assert after.returncode == 0, after.output
    assert_consistent(project)
    assert raw.read_bytes() == before  # the raw file rebuilt is the one dvc.lock recorded


def test_a_recovered_nights_model_is_reproduced(project: Project) -> None:
    project.drop_batch()
    killed = project.run(failpoints="register:after-version=kill")
    assert killed.returncode != 0
    assert project.run().returncode == 0
    latest = max(int(v.version) for v in project.versions())
    done = subprocess.run(
        [str(QUANTFLOW), "reproduce", "--version", str(latest)],
        cwd=project.root,
        env=project.env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "REPRODUCED" in done.stdout


def test_a_blocked_night_prints_no_traceback_and_set_does_not_retrain_it(project: Project) -> None:
    """Issue item 10 on the terminal: a batch with a new label is blocked (whatever its share), a directory and a
    dangling link in incoming/ are reported, `--set` does not retrain a night whose batches were all blocked."""
    new_label = batch().assign(label=lambda f: f["label"].where(f.index > 1, "sports"))  # 2 rows of 80
    project.drop_batch("newlabel", new_label)
    incoming = project.root / "data" / "incoming"
    (incoming / "a-folder").mkdir()
    (incoming / "gone.csv").symlink_to(project.root / "nowhere.csv")
    before = (git_head(project.root), (project.root / "dvc.lock").read_bytes(), len(project.versions()))
    run = project.run("--set", "train.epochs=2")
    assert run.returncode == 2, run.output
    assert "| newlabel | blocked |" in run.stdout and "labels outside the label set" in run.stdout
    assert "'sports' (2 rows)" in run.stderr and "Traceback" not in run.output
    assert "a-folder: a directory, not a batch file" in run.stdout and "gone.csv: a link to" in run.stdout
    assert "**Not retrained**: every incoming batch was blocked" in run.stdout
    after = (git_head(project.root), (project.root / "dvc.lock").read_bytes(), len(project.versions()))
    assert after == before
    assert_consistent(project)
