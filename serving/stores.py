"""The registry as the service reads it, without MLflow: a tracking server's REST API, or the sqlite store.

A store answers two questions: which version holds an alias (one GET, or one read-only SELECT), and where a
version's files are (an :class:`ArtifactSource` to list and download them from). Two kinds of tracking URI:

- ``http(s)://``: ``model-versions/get-download-uri`` gives the version's storage location. Proxied artifacts
  (``mlflow-artifacts:/...``, what ``mlflow server`` does by default) are read through
  ``/api/2.0/mlflow-artifacts/artifacts``; any other location (``s3://`` with ``--no-serve-artifacts``...) through
  the logged model's artifact endpoints, where the server reads its own store.
- ``sqlite:///``: the version's ``storage_location`` (or its logged model's ``artifact_location``) is read from
  the database, and the files are copied from that local folder.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from quantflow.core.errors import QuantflowError
from quantflow.core.layout import TRACKING_ENV

HTTP_TIMEOUT_S = 30.0
SUPPORTED = "an http(s):// tracking server (`mlflow server`) or the embedded sqlite:/// store"
LOGGED_MODEL = "models:/m-"  # a version's source when it was registered from a LoggedModel (MLflow 3)


class RegistryError(QuantflowError):
    """The registry has no such model or alias, a version's files cannot be read, or the store is unsupported."""


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the model's root, "/"-separated
    is_dir: bool


class ArtifactSource(Protocol):
    """A registered model's files: ``list`` a folder, ``download`` one file (paths relative to the model)."""

    def list(self, path: str) -> list[Entry]: ...

    def download(self, path: str, dst: Path) -> None: ...


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def http_get(url: str, dst: Path | None = None) -> bytes:
    """GET ``url``: the body, or streamed into ``dst``. Failures become a RegistryError naming the URL."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as answer:
            if dst is None:
                return answer.read()
            with dst.open("wb") as out:
                shutil.copyfileobj(answer, out)
            return b""
    except urllib.error.HTTPError as exc:
        raise RegistryError(f"GET {url} answered {exc.code}: {exc.read()[:300]!r}") from None
    except urllib.error.URLError as exc:
        raise RegistryError(f"GET {url} failed ({exc.reason}): is the tracking server up?") from None


def http_json(url: str, **query: str) -> dict[str, Any]:
    return json.loads(http_get(f"{url}?{urllib.parse.urlencode(query)}" if query else url))


@dataclass(frozen=True)
class LocalArtifacts:
    """A model folder on this machine (the sqlite store's local artifact root)."""

    root: Path

    def list(self, path: str) -> list[Entry]:
        return [Entry(_join(path, p.name), p.is_dir()) for p in sorted((self.root / path).iterdir())]

    def download(self, path: str, dst: Path) -> None:
        shutil.copyfile(self.root / path, dst)


@dataclass(frozen=True)
class ProxiedArtifacts:
    """Artifacts the tracking server proxies (``mlflow-artifacts:/<root>``): ``/api/2.0/mlflow-artifacts``."""

    server: str
    root: str  # the path after mlflow-artifacts:/

    def list(self, path: str) -> list[Entry]:
        url = f"{self.server}/api/2.0/mlflow-artifacts/artifacts"
        files = http_json(url, path=_join(self.root, path)).get("files", [])
        return [Entry(_join(path, f["path"]), bool(f.get("is_dir"))) for f in files]  # answers base names

    def download(self, path: str, dst: Path) -> None:
        quoted = urllib.parse.quote(_join(self.root, path))
        http_get(f"{self.server}/api/2.0/mlflow-artifacts/artifacts/{quoted}", dst)


@dataclass(frozen=True)
class LoggedModelArtifacts:
    """A LoggedModel's files through the server, wherever it stores them (the server holds the credentials)."""

    server: str
    model_id: str

    def list(self, path: str) -> list[Entry]:
        url = f"{self.server}/api/2.0/mlflow/logged-models/{self.model_id}/artifacts/directories"
        query = {"artifact_directory_path": path} if path else {}
        files = http_json(url, **query).get("files", [])
        return [Entry(f["path"], bool(f.get("is_dir"))) for f in files]  # answers paths from the model root

    def download(self, path: str, dst: Path) -> None:
        # MLflow 3.17 serves a logged model's file only under /ajax-api/ (the route its UI downloads with;
        # /api/2.0/... answers 404), listing under /api/2.0/ (server/handlers.py, server/__init__.py)
        url = f"{self.server}/ajax-api/2.0/mlflow/logged-models/{self.model_id}/artifacts/files"
        http_get(f"{url}?{urllib.parse.urlencode({'artifact_file_path': path})}", dst)


def copy_folder(source: ArtifactSource, path: str, dst: Path) -> None:
    """Download the folder ``path`` of ``source`` (recursively) into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for entry in source.list(path):
        target = dst / entry.path.rsplit("/", 1)[-1]
        if entry.is_dir:
            copy_folder(source, entry.path, target)
        else:
            source.download(entry.path, target)


class RestStore:
    """An ``http(s)://`` tracking server, through its REST API."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")

    def alias_version(self, name: str, alias: str) -> str | None:
        """One GET; None when the model or the alias does not exist."""
        query = urllib.parse.urlencode({"name": name, "alias": alias})
        url = f"{self.uri}/api/2.0/mlflow/registered-models/alias?{query}"
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                return str(json.loads(answer.read())["model_version"]["version"])
        except urllib.error.HTTPError as exc:
            if exc.code in (400, 404):  # RESOURCE_DOES_NOT_EXIST / INVALID_PARAMETER_VALUE
                return None
            raise

    def artifacts(self, name: str, version: str) -> ArtifactSource:
        """Where ``name`` v``version`` keeps its files: proxied artifacts, else its logged model's endpoints."""
        api = f"{self.uri}/api/2.0/mlflow/model-versions"
        location = http_json(f"{api}/get-download-uri", name=name, version=version)["artifact_uri"]
        parsed = urllib.parse.urlparse(location)
        if parsed.scheme == "mlflow-artifacts":
            server = (
                f"{urllib.parse.urlparse(self.uri).scheme}://{parsed.netloc}" if parsed.netloc else self.uri
            )
            return ProxiedArtifacts(server, parsed.path)
        source = http_json(f"{api}/get", name=name, version=version)["model_version"]["source"]
        if source.startswith(LOGGED_MODEL):
            return LoggedModelArtifacts(self.uri, source.removeprefix("models:/"))
        raise RegistryError(
            f"{name} v{version} on {self.uri} lives at {location} (source {source}): neither proxied by the "
            "server (mlflow-artifacts:) nor a logged model; re-register it with `quantflow run`"
        )


class SqliteStore:
    """The embedded ``sqlite:///`` store: read-only SELECTs on MLflow's tables (schema of MLflow 3)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _row(self, sql: str, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if not Path(self.path).is_file():
            raise RegistryError(
                f"{self.path}: no MLflow store here; run `quantflow run` first or set {TRACKING_ENV}"
            )
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)) as db:
                return db.execute(sql, args).fetchone()
        except sqlite3.OperationalError as exc:
            raise RegistryError(
                f"reading {self.path} failed ({exc}): not an MLflow 3 store? Serve it through "
                f"`mlflow server --backend-store-uri sqlite:///{self.path}` and set {TRACKING_ENV} to its URL"
            ) from None

    def alias_version(self, name: str, alias: str) -> str | None:
        """One SELECT on ``registered_model_aliases``; None when the model or the alias does not exist."""
        row = self._row(
            "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?", (name, alias)
        )
        return None if row is None else str(row[0])

    def artifacts(self, name: str, version: str) -> ArtifactSource:
        """The version's folder: its ``storage_location``, or its logged model's ``artifact_location``."""
        row = self._row(
            "SELECT COALESCE(storage_location, source) FROM model_versions WHERE name = ? AND version = ?",
            (name, int(version)),
        )
        if row is None:
            raise RegistryError(f"{self.path}: no version {version} of {name!r}")
        location = str(row[0])
        if location.startswith(LOGGED_MODEL):
            model_id = location.removeprefix("models:/")
            found = self._row("SELECT artifact_location FROM logged_models WHERE model_id = ?", (model_id,))
            location = str(found[0]) if found else location
        return LocalArtifacts(local_folder(location, f"{name} v{version}"))


def local_folder(location: str, what: str) -> Path:
    """A ``file://`` URI or a plain path → an existing local folder; anything else (``s3://``) is refused."""
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme not in ("", "file"):
        raise RegistryError(
            f"{what} is stored at {location}, which the service reads only through a tracking server: run "
            f"`mlflow server` on this store and set {TRACKING_ENV} to its http:// URL"
        )
    folder = Path(urllib.parse.unquote(parsed.path)) if parsed.scheme else Path(location)
    if not folder.is_dir():
        raise RegistryError(f"{what}: its artifact folder {folder} does not exist (moved or deleted?)")
    return folder


Store = RestStore | SqliteStore


def open_store(uri: str) -> Store:
    """The reader of tracking URI ``uri``; any other kind of store is a RegistryError that says what works."""
    if uri.startswith(("http://", "https://")):
        return RestStore(uri)
    if uri.startswith("sqlite:///"):
        return SqliteStore(uri.removeprefix("sqlite:///"))
    raise RegistryError(
        f"the service cannot read the registry at {uri!r}: it reads {SUPPORTED}, without MLflow. Run "
        f"`mlflow server --backend-store-uri {uri}` and set {TRACKING_ENV} to its http:// URL, or serve a "
        "folder with --model-dir"
    )
