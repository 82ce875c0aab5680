"""Starting a throwaway PostgreSQL server for the tests: binaries, a private folder, readiness.

``initdb`` and ``postgres`` refuse to run as root, so under root they run as the ``postgres`` user
(created when missing) in a private folder that user owns.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from genoflow_tests.support.unavailable import unavailable
from scripts import cluster_services


def postgres_binary(name: str) -> str:
    """``initdb``/``postgres`` (see :func:`scripts.cluster_services.postgres_binary`); skip
    without, or fail under ``GENOFLOW_REQUIRE_TOOLS=1``."""
    try:
        return cluster_services.postgres_binary(name)
    except cluster_services.ServiceError:
        pass
    message = f"{name} is not installed: apt-get install postgresql to run the PostgreSQL tests"
    unavailable(message)


run_as_postgres = cluster_services.as_postgres_user


@contextlib.contextmanager
def server_folder(user: dict[str, Any]) -> Iterator[Path]:
    """A private folder for the server's files, owned by the user it runs as; removed after.

    It is made in the system temp folder, not under pytest's: pytest resets its base folder to
    0700 whenever a session starts, so a server running as another user there loses access to
    its own files as soon as a second test session starts on the machine.
    """
    folder = Path(tempfile.mkdtemp(prefix="genoflow-postgres-"))
    try:
        if user:
            entry = pwd.getpwnam(user["user"])
            os.chown(folder, entry.pw_uid, entry.pw_gid)
        yield folder
    finally:
        shutil.rmtree(folder)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_ready(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    engine = sa.create_engine(f"{url}/postgres")
    deadline = time.monotonic() + 60
    try:
        while True:
            if server.poll() is not None:
                pytest.fail(f"postgres exited with {server.returncode}: {log.read_text()}")
            try:
                with engine.connect():
                    return
            except sa.exc.OperationalError:
                if time.monotonic() > deadline:
                    pytest.fail(f"postgres did not accept connections: {log.read_text()}")
                time.sleep(0.1)
    finally:
        engine.dispose()


@contextlib.contextmanager
def running_server(*settings: str) -> Iterator[str]:
    """Run a throwaway PostgreSQL server (durability off, plus ``settings`` such as
    ``"max_connections=200"``) until the block ends; yields its URL without a database name."""
    pytest.importorskip(
        "psycopg2", reason="psycopg2 is not installed (pip install psycopg2-binary)"
    )
    initdb, postgres = postgres_binary("initdb"), postgres_binary("postgres")
    user = run_as_postgres()
    with server_folder(user) as folder:
        init = [initdb, "-D", "data", "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"]
        made = subprocess.run([*init, "--locale=C"], cwd=folder, capture_output=True, **user)
        if made.returncode != 0:
            pytest.fail(f"initdb failed: {made.stderr.decode(errors='replace')}")
        port, log = free_port(), folder / "server.log"
        options = [arg for setting in ("fsync=off", "synchronous_commit=off", *settings)
                   for arg in ("-c", setting)]  # fmt: skip
        command = [postgres, "-D", "data", "-h", "127.0.0.1", "-p", str(port), "-k", str(folder)]
        with open(log, "wb") as output:
            server = subprocess.Popen(
                [*command, *options], cwd=folder, stdout=output, stderr=subprocess.STDOUT, **user
            )
        try:
            url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}"
            wait_until_ready(url, server, log)
            yield url
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=60)
