"""infra/docker-compose.yml without a container engine: it parses, every variable it uses is in .env.example,
and its services reach each other by the names, ports and variables that the README and prefect.yaml use."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
SERVICES = {
    "postgres",
    "minio",
    "minio-init",
    "mlflow",
    "prefect-server",
    "prefect-deploy",
    "prefect-worker",
    "quantflow",
}
VARIABLE = re.compile(r"\$\{(\w+)\}")


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    lines = (INFRA / ".env.example").read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {key: value for key, value in pairs}


@pytest.fixture(scope="module")
def compose(env: dict[str, str]) -> dict[str, Any]:
    """The compose file with ${VAR} substituted from .env.example, as `docker compose --env-file` would."""
    text = (INFRA / "docker-compose.yml").read_text()
    missing = sorted(set(VARIABLE.findall(text)) - set(env))
    assert not missing, f"docker-compose.yml uses {missing}, not defined in infra/.env.example"
    return yaml.safe_load(VARIABLE.sub(lambda m: env[m.group(1)], text))


def published(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port"""
    return {int(p.split(":")[1]): int(p.split(":")[0]) for p in service.get("ports", [])}


def flag(command: list[str], name: str) -> str:
    [value] = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"{name}=")]
    return value


def env_of(service: dict[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in service.get("environment", {}).items()}


def test_services_and_dependencies_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
    for name in ("mlflow", "prefect-worker", "prefect-deploy", "quantflow"):
        assert services[name]["build"]["dockerfile"] == "infra/Dockerfile"
        context = (INFRA / services[name]["build"]["context"]).resolve()  # relative to the compose file
        assert context == REPO and (context / services[name]["build"]["dockerfile"]).is_file()


def test_mlflow_runs_on_postgres_and_the_minio_bucket(compose: dict[str, Any], env: dict[str, str]) -> None:
    services = compose["services"]
    command = services["mlflow"]["command"]
    backend = urlparse(flag(command, "--backend-store-uri"))
    assert backend.scheme == "postgresql+psycopg2" and backend.hostname == "postgres"
    assert backend.port in published(services["postgres"])
    assert (backend.username, backend.password) == (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"])
    assert backend.path.lstrip("/") == services["postgres"]["environment"]["POSTGRES_DB"]
    artifacts = urlparse(flag(command, "--artifacts-destination"))
    assert (artifacts.scheme, artifacts.netloc) == ("s3", env["S3_BUCKET"])
    endpoint = urlparse(env_of(services["mlflow"])["MLFLOW_S3_ENDPOINT_URL"])
    assert endpoint.hostname == "minio" and endpoint.port in published(services["minio"])
    # the bucket is created at start with MinIO's root credentials, which are the S3 keys of mlflow
    assert (
        "mc mb" in services["minio-init"]["command"][0]
        and "$$S3_BUCKET" in services["minio-init"]["command"][0]
    )
    assert env_of(services["minio-init"])["S3_BUCKET"] == env["S3_BUCKET"]
    minio = env_of(services["minio"])
    assert (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"]) == (
        env_of(services["mlflow"])["AWS_ACCESS_KEY_ID"],
        env_of(services["mlflow"])["AWS_SECRET_ACCESS_KEY"],
    )


def test_prefect_server_on_postgres_database_created_at_init(compose: dict[str, Any]) -> None:
    services = compose["services"]
    url = urlparse(env_of(services["prefect-server"])["PREFECT_API_DATABASE_CONNECTION_URL"])
    assert url.hostname == "postgres" and url.scheme == "postgresql+asyncpg"
    init_sql = (INFRA / "postgres-init.sql").read_text()
    assert f"CREATE DATABASE {url.path.lstrip('/')};" in init_sql
    assert any(
        v.startswith("./postgres-init.sql:/docker-entrypoint-initdb.d/")
        for v in services["postgres"]["volumes"]
    )


def test_clients_point_at_the_servers_by_name_and_port(compose: dict[str, Any]) -> None:
    services = compose["services"]
    mlflow_port = int(flag(services["mlflow"]["command"], "--port"))
    prefect_port = int(services["prefect-server"]["command"][-1])
    assert mlflow_port in published(services["mlflow"]) and prefect_port in published(
        services["prefect-server"]
    )
    for name in ("prefect-worker", "quantflow"):
        assert env_of(services[name])["MLFLOW_TRACKING_URI"] == f"http://mlflow:{mlflow_port}"
    for name in ("prefect-worker", "prefect-deploy"):
        assert env_of(services[name])["PREFECT_API_URL"] == f"http://prefect-server:{prefect_port}/api"
    assert 8000 in published(services["quantflow"]) and "8000" in services["quantflow"]["command"]


def test_worker_pool_and_project_path_match_prefect_yaml(compose: dict[str, Any]) -> None:
    services = compose["services"]
    deployment = yaml.safe_load((INFRA / "prefect.yaml").read_text())
    pool = deployment["deployments"][0]["work_pool"]["name"]
    worker = services["prefect-worker"]["command"]
    assert worker[worker.index("--pool") + 1] == pool and worker[worker.index("--type") + 1] == "process"
    assert f"work-pool create {pool} --type process" in services["prefect-deploy"]["command"][0]
    assert "--prefect-file infra/prefect.yaml" in services["prefect-deploy"]["command"][0]
    [pull] = deployment["pull"]
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == "{{ $QUANTFLOW_ROOT }}"
    root = env_of(services["prefect-deploy"])["QUANTFLOW_ROOT"]
    assert f"..:{root}" in services["prefect-worker"]["volumes"]


def test_readme_uses_the_published_ports_and_names(compose: dict[str, Any], env: dict[str, str]) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Beyond one machine", 1)[1]
    services = compose["services"]
    assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:{published(services['mlflow'])[5000]}" in section
    assert f"PREFECT_API_URL=http://127.0.0.1:{published(services['prefect-server'])[4200]}/api" in section
    assert f"endpointurl http://127.0.0.1:{published(services['minio'])[9000]}" in section
    assert f"s3://{env['S3_BUCKET']}/dvc" in section
    assert f"access_key_id {env['AWS_ACCESS_KEY_ID']}" in section
    assert "DASK_SCHEDULER_ADDRESS" in env_of(services["prefect-worker"]) and "--dask-address" in section
