"""The scale-out tracking path for real: ``mlflow server`` on a PostgreSQL backend store, and the register
step (tasks/register.py) against it. The version and its aliases are then read back from Postgres itself."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from quantflow.registry.promotion import CHALLENGER, STAGING
from tasks.register import RegisterResult, register
from tests.infra.postgres import Postgres, postgres  # noqa: F401
from tests.integration.test_register import build_variant, synthetic_split, write_reports
from tests.mlflow_server import spawn, stop, wait_until_healthy
from tests.params_helpers import params_with

pytestmark = [pytest.mark.infra, pytest.mark.slow]

MODEL = "quantflow-test-postgres"


@pytest.fixture(scope="module")
def mlflow_on_postgres(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # noqa: F811
    """``mlflow server --backend-store-uri postgresql+psycopg2://...`` (artifacts proxied to a local folder)."""
    postgres.create_database("mlflow")
    server = spawn(tmp_path_factory.mktemp("mlflow_pg"), postgres.url("mlflow"))
    try:
        wait_until_healthy(server.proc, server.uri, server.log_path)
        yield server.uri
    finally:
        stop(server.proc)


@pytest.fixture(scope="module")
def registered(mlflow_on_postgres: str, tmp_path_factory: pytest.TempPathFactory) -> RegisterResult:
    root = tmp_path_factory.mktemp("project")
    split = synthetic_split()
    build_variant(root / "artifacts" / "variants" / "int8", split)
    write_reports(root / "reports", int8_accuracy=0.988)  # within compress.max_drop_pp
    (root / "data" / "split").mkdir(parents=True)
    split.to_parquet(root / "data" / "split" / "test.parquet")
    params = params_with({"register.model_name": MODEL, "register.experiment": MODEL})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_on_postgres)
        return register(params, root, tags={"git_commit": "0123abc"})


def test_version_and_staging_alias_are_rows_in_postgres(
    registered: RegisterResult,
    postgres: Postgres,  # noqa: F811
) -> None:
    assert registered.tracking_uri.startswith("http://127.0.0.1:") and registered.promoted
    conn = postgres.connect("mlflow")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT version, run_id FROM model_versions WHERE name = %s", (MODEL,))
            versions = cur.fetchall()
            cur.execute("SELECT alias, version FROM registered_model_aliases WHERE name = %s", (MODEL,))
            aliases = dict(cur.fetchall())
            cur.execute(
                "SELECT value FROM model_version_tags WHERE name = %s AND version = %s AND key = 'git_commit'",
                (MODEL, int(registered.version)),
            )
            [(commit,)] = cur.fetchall()
    finally:
        conn.close()
    assert versions == [(int(registered.version), registered.run_id)]
    assert aliases == {STAGING: int(registered.version), CHALLENGER: int(registered.version)}
    assert commit == "0123abc"
