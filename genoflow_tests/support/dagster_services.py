"""Start Dagster's webserver and daemon for one test, on loopback, and stop them by PID.

Each service runs in a session of its own, so stopping it (SIGTERM to its process group, SIGKILL
after a grace period) also stops the code servers it spawned; nothing outlives the test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from genoflow.instance.home import dagster_storage_yaml

BIN = Path(sys.executable).parent
# With the embedded instance's storages (as genoflow writes them), a run queue, as a daemon runs.
DAGSTER_YAML = """\
telemetry:
  enabled: false
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 4
    dequeue_interval_seconds: 1
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment(root: Path, **extra: str) -> dict[str, str]:
    """Variables for a private Dagster instance and genoflow home under ``root``."""
    dagster_home = root / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text(DAGSTER_YAML + dagster_storage_yaml(dagster_home))
    env = {key: value for key, value in os.environ.items() if not key.startswith("GENOFLOW_")}
    return {
        **env,
        "DAGSTER_HOME": str(dagster_home),
        "GENOFLOW_HOME": str(root / "home"),
        "GENOFLOW_THREADS": "1",
        "GENOFLOW_SORT_MEMORY": "64M",
        **extra,
    }


def start(name: str, args: list[str], env: dict[str, str], logs: Path) -> subprocess.Popen:
    """Start ``BIN/name args`` in its own session, its output in ``logs/name.log``."""
    with open(logs / f"{name}.log", "wb") as log:
        return subprocess.Popen(
            [str(BIN / name), *args],
            env=env,
            cwd=logs,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen, *, grace: float = 30.0) -> None:
    """SIGTERM the process group of ``process``; SIGKILL what is left after ``grace`` seconds."""
    _signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _group_alive(process.pid) and time.monotonic() < deadline:
        process.poll()  # reap the leader, or its zombie keeps the group alive
        time.sleep(0.2)
    if _group_alive(process.pid):
        _signal_group(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group ended meanwhile
        os.killpg(pgid, signum)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def log_tail(logs: Path, name: str, lines: int = 40) -> str:
    path = logs / f"{name}.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    return f"--- {name} ---\n" + "\n".join(text.splitlines()[-lines:])


def wait_for_webserver(url: str, process: subprocess.Popen, logs: Path, *, timeout: float) -> None:
    """Return once the webserver answers and its code location has loaded."""
    deadline = time.monotonic() + timeout
    query = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name } } } }"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dagster-webserver exited\n{log_tail(logs, 'dagster-webserver')}")
        try:
            nodes = graphql(url, query)["repositoriesOrError"].get("nodes")
            if nodes:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no webserver at {url}\n{log_tail(logs, 'dagster-webserver')}")


def graphql(url: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one GraphQL query against the webserver; GraphQL errors raise."""
    response = requests.post(
        f"{url}/graphql", json={"query": query, "variables": variables or {}}, timeout=30
    )
    response.raise_for_status()
    body = response.json()
    if body.get("errors"):
        raise RuntimeError(f"GraphQL errors: {body['errors']}")
    return body["data"]
