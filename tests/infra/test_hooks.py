"""The nightly flow's on_failure hook on a real failing run (Prefect test harness): the failure summary file,
the Prefect artifact and the notification through a saved Custom Webhook block, received by a local HTTP
server."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.testing.utilities import prefect_test_harness

from flows.hooks import FAILURE_ARTIFACT_KEY
from flows.nightly import nightly_retrain
from quantflow.core.errors import DataError
from quantflow.core.params import load_params

REPO = Path(__file__).resolve().parents[2]
BLOCK = "custom-webhook/quantflow-test-alerts"


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:
    """A local HTTP endpoint that records the JSON bodies posted to it."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length", 0))
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/alerts", received
    server.shutdown()
    server.server_close()


def dvc_project(root: Path) -> Path:
    """Enough of a project for the flow to start (dvc.yaml, .dvc/, params.yaml); ingest is set up to fail."""
    (root / ".dvc").mkdir()
    shutil.copy2(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copy2(REPO / "params.yaml", root / "params.yaml")
    return root


def test_failed_run_writes_summary_artifact_and_notifies(
    harness: None, webhook: tuple[str, list[dict]], tmp_path: Path
) -> None:
    url, received = webhook
    CustomWebhookNotificationBlock(
        name="quantflow-test", url=url, json_data={"subject": "{{subject}}", "text": "{{body}}"}
    ).save(BLOCK.split("/")[1], overwrite=True)
    root = dvc_project(tmp_path)
    overrides = {
        "ingest.path": "data/external/missing.csv",
        "validate.labels": ["news", "comment"],
        "schedule.notify_block": BLOCK,
    }
    with pytest.raises(DataError, match="missing.csv"):
        nightly_retrain(root=str(root), overrides=overrides)

    digest = load_params(root / "params.yaml", overrides).digest()
    [summary_file] = (root / "reports" / "failures").glob("*.md")
    summary = summary_file.read_text()
    assert "failed task: `ingest`" in summary
    assert "DataError" in summary and "missing.csv: file not found" in summary
    assert f"params digest: `{digest}`" in summary
    assert "Reporting problems" not in summary

    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[FAILURE_ARTIFACT_KEY]))
        )
        flow_run = client.read_flow_run(artifact.flow_run_id)
    assert flow_run.state.is_failed() and flow_run.name in summary_file.name
    assert artifact.data == summary.rstrip("\n")

    [message] = received
    assert message["subject"].startswith("nightly_retrain failed: DataError")
    assert "failed task: `ingest`" in message["text"] and digest in message["text"]


def test_missing_notification_block_is_reported_not_raised(harness: None, tmp_path: Path) -> None:
    root = dvc_project(tmp_path)
    overrides = {
        "ingest.path": "data/external/missing.csv",
        "validate.labels": ["news", "comment"],
        "schedule.notify_block": "custom-webhook/no-such-block",
    }
    with pytest.raises(DataError):  # the run's own error, not the hook's
        nightly_retrain(root=str(root), overrides=overrides)
    [summary_file] = (root / "reports" / "failures").glob("*.md")
    summary = summary_file.read_text()
    assert "notification block custom-webhook/no-such-block failed" in summary
    assert "failed task: `ingest`" in summary
