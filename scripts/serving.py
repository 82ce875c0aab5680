"""``genoflow serve`` started for a script (``make drs-compliance``, ``make drs-demo``): on a
loopback port, until it answers, and always stopped — SIGINT, then SIGKILL after 30 s — also when
the script is interrupted or terminated."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

READY_PATH = "/ga4gh/drs/v1/service-info"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serving(
    home: Path, log: Path, env: dict[str, str] | None = None, port: int | None = None
) -> Iterator[str]:
    """``genoflow serve`` on ``home`` at 127.0.0.1:``port`` (a free one by default); yields its
    base URL."""
    port = port or free_port()
    full = {**os.environ, "GENOFLOW_HOME": str(home), **(env or {})}
    full.pop("DAGSTER_HOME", None)
    command = [sys.executable, "-m", "genoflow.cli", "serve", "--port", str(port)]
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with log.open("w") as output:
        server = subprocess.Popen(command, env=full, stdout=output, stderr=output)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(base, server, log)
            yield base
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            signal.signal(signal.SIGTERM, previous)


def wait_ready(base: str, server: subprocess.Popen, log: Path) -> None:
    """Return once the server answers (any HTTP status: 401 with tokens on); exit if it died or
    stayed silent for 60 s."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"genoflow serve exited:\n{log.read_text()}")
        try:
            urllib.request.urlopen(base + READY_PATH, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"genoflow serve did not answer within 60 s:\n{log.read_text()}")
