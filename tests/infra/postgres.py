"""A throwaway PostgreSQL server for tests: initdb into a temp folder, ``postgres`` on 127.0.0.1:<free port>.

The server binaries come from PATH (``initdb``, ``postgres``) or Debian's ``/usr/lib/postgresql/<v>/bin``
(.ci/run installs the ``postgresql`` package). initdb refuses to run as root, so as root both run as the
``postgres`` system user (else ``nobody``) in a folder that user owns. The server is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.mlflow_server import free_port

START_TIMEOUT_S = 60.0
SUPERUSER = "quantflow"


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str

    def url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{self.user}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres"):  # noqa: ANN201 - psycopg2 connection
        import psycopg2

        return psycopg2.connect(host=self.host, port=self.port, user=self.user, dbname=database)

    def create_database(self, name: str) -> None:
        conn = self.connect()
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()


def find_binaries() -> Path | None:
    """The folder holding initdb and postgres, or None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


def run_as() -> pwd.struct_passwd | None:
    """The unprivileged account to run PostgreSQL as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    pytest.skip("running as root and neither a 'postgres' nor a 'nobody' account exists for initdb")


def account_kwargs(account: pwd.struct_passwd | None) -> dict:
    if account is None:
        return {}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def wait_until_ready(proc: subprocess.Popen, server: Postgres, log: Path) -> None:
    import psycopg2

    started = time.monotonic()
    while time.monotonic() - started < START_TIMEOUT_S:
        if proc.poll() is not None:
            pytest.fail(
                f"postgres exited with code {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}"
            )
        try:
            server.connect().close()
            return
        except psycopg2.OperationalError:
            time.sleep(0.2)
    pytest.fail(
        f"postgres not accepting connections after {START_TIMEOUT_S:.0f} s:\n{log.read_text()[-3000:]}"
    )


def stop(proc: subprocess.Popen) -> None:
    """SIGINT is PostgreSQL's fast shutdown (rolls back open transactions, then exits)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    bin_dir = find_binaries()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL server not installed (initdb/postgres not on PATH nor in /usr/lib/postgresql): "
            "apt-get install postgresql, as .ci/run does"
        )
    account = run_as()
    folder = Path(tempfile.mkdtemp(prefix="quantflow-pg-"))  # not under pytest's root-only tmp dir
    if account is not None:
        os.chown(folder, account.pw_uid, account.pw_gid)
    data, log = folder / "data", folder / "postgres.log"
    init = subprocess.run(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
        ],
        capture_output=True,
        text=True,
        check=False,
        **account_kwargs(account),
    )
    if init.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"initdb failed (exit {init.returncode}):\n{init.stderr or init.stdout}")
    server = Postgres("127.0.0.1", free_port(), SUPERUSER)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(data),
                "-h",
                server.host,
                "-p",
                str(server.port),
                "-k",
                str(folder),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **account_kwargs(account),
        )
    try:
        wait_until_ready(proc, server, log)
        yield server
    finally:
        stop(proc)
        shutil.rmtree(folder, ignore_errors=True)
