"""`quantflow simulate-nights --traffic N --shift-night K`, as a user runs it: a sandbox project, its own
`quantflow serve` answering held-back texts between nights (texts of the other built-in corpus before night K),
and each night's live-drift verdict on that traffic in the printed table.

Marked ``sim`` (a minute of three small nights): `make test-sim`, which `.ci/run` calls.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.sim]


def table_rows(output: str) -> dict[int, dict[str, str]]:
    """The printed table's rows by night number, cells by column name."""
    lines = [line for line in output.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [
        dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]
    ]
    return {int(row["night"]): row for row in rows}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, str]]:
    workdir = tmp_path_factory.mktemp("sim") / "sandbox"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the sandbox's own store
    args = [sys.executable, "-m", "quantflow.cli", "simulate-nights", "--workdir", str(workdir)]
    args += ["--nights", "3", "--bad-night", "0", "--traffic", "120", "--shift-night", "3"]
    args += ["--rows-per-class", "300", "--batch-rows-per-class", "40"]
    args += ["--set", "nightly.live_drift.settle_s=1"]
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return table_rows(done.stdout)


def test_traffic_is_served_before_each_night_after_the_first(simulated: dict[int, dict[str, str]]) -> None:
    assert simulated[1]["traffic"] == "-" and simulated[1]["live drift"] == "no log"
    assert simulated[2]["traffic"] == "120"
    assert simulated[3]["traffic"] == "120 shifted"


def test_the_shifted_night_is_flagged_and_the_ordinary_one_is_not(
    simulated: dict[int, dict[str, str]],
) -> None:
    assert simulated[2]["live drift"] == "ok", simulated[2]
    assert simulated[3]["live drift"].split(":")[0] in ("warn", "block"), simulated[3]
