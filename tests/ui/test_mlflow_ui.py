"""The MLflow UI, for real: a real ``mlflow server``, two registered versions, headless Chromium.

The registered-model page must show both aliases and the version page the model card. Screenshots are kept as
test artifacts in ``$QUANTFLOW_TEST_ARTIFACTS`` (default ``.cache/test-artifacts/``). Skipped when Debian's
``chromium`` is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import tests.integration.test_register as fake
from quantflow.registry.promotion import CHALLENGER, STAGING
from tasks.register import register
from tests.mlflow_server import mlflow_server, mlflow_server_process  # noqa: F401
from tests.params_helpers import params_with

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REPO = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.ui,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)"),
]
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1100",
    "--virtual-time-budget=20000",  # let the single-page app fetch and render before dumping
)


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("QUANTFLOW_TEST_ARTIFACTS", REPO / ".cache" / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def chromium(url: str, profile: Path, *action: str) -> str:
    """One headless Chromium run with a fresh profile; its stdout (the DOM for --dump-dom)."""
    done = subprocess.run(
        [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *action, url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def model_name(
    tmp_path_factory: pytest.TempPathFactory,
    mlflow_server: str,  # noqa: F811
) -> str:
    """v1, registered through the real server: the first version holds both aliases."""
    params = params_with(
        {"register.model_name": "quantflow-ui", "register.experiment": "ui", "compress.max_drop_pp": 1.0}
    )  # the fake int8 trails fp32 by 0.5 points
    template = tmp_path_factory.mktemp("ui-template") / "int8"
    fake.build_variant(template, fake.synthetic_split())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        root = tmp_path_factory.mktemp("ui-project")
        shutil.copytree(template, root / "artifacts" / "variants" / "int8")
        fake.write_reports(root / "reports", 0.985)
        (root / "data" / "split").mkdir(parents=True)
        fake.synthetic_split().to_parquet(root / "data" / "split" / "test.parquet")
        register(params, root)
    return params.model_name


def test_model_page_shows_aliases_and_model_card(
    model_name: str,
    mlflow_server: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    page = f"{mlflow_server}/#/models/{model_name}"
    dom = chromium(page, tmp_path / "profile-1", "--dump-dom")
    assert model_name in dom, dom[-2000:]
    assert STAGING in dom and CHALLENGER in dom
    version_page = f"{page}/versions/1"
    dom = chromium(version_page, tmp_path / "profile-2", "--dump-dom")
    for text in ("model card", "Gate: passed", "Metrics on the test split", "Compression"):
        assert text in dom, text
    shot = artifacts_dir() / "mlflow-ui-model-version.png"
    shot.unlink(missing_ok=True)
    chromium(version_page, tmp_path / "profile-3", f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 10_000
