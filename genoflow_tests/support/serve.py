"""A genoflow home built by the real pipeline from a few demo files, and ``genoflow serve`` on
loopback, for the service's tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

DEMO = Path(__file__).resolve().parents[2] / "data" / "manifests"
# name, file under data/manifests/demo, format ("" = from the name)
BUILT = [
    ("sample3.bam", "sample3.bam", ""),
    ("trio.vcf", "trio.vcf", ""),
    ("enhancers.bed", "enhancers.bed", ""),
    ("samples.csv", "samples.csv", ""),
    ("twin", "samples.csv", "csv"),
]
# Registered only (never built); a second "twin" (another md5) makes that name ambiguous.
REGISTERED = [("cohort.vcf.gz", "cohort.vcf.gz", ""), ("twin", "expression_counts.txt", "tsv")]


def _manifest(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    from genoflow.core.checksums import md5_file

    lines = ["name\turi\tmd5\tformat"]
    for name, file, fmt in rows:
        source = DEMO / "demo" / file
        lines.append(f"{name}\t{source}\t{md5_file(source)}\t{fmt}")
    path.write_text("\n".join(lines) + "\n")
    return path


def build_home(folder: Path, run_cli) -> Path:
    """Run :data:`BUILT` through ``genoflow run`` and register :data:`REGISTERED` only.

    Returns:
        The ``GENOFLOW_HOME`` folder.
    """
    home = folder / "home"
    env = {"GENOFLOW_ALLOWED_ROOTS": str(DEMO)}
    built = run_cli(home, "run", str(_manifest(folder / "built.tsv", BUILT)), env=env)
    assert built.returncode == 0, built.stdout + built.stderr
    only = _manifest(folder / "registered.tsv", REGISTERED)
    registered = run_cli(home, "register", str(only), env=env)
    assert registered.returncode == 0, registered.stdout + registered.stderr
    return home


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serving(home: Path, log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """``genoflow serve`` on a free loopback port; yields its base URL, stops it after (SIGINT),
    its stderr in ``log``."""
    port = free_port()
    full = {**os.environ, "GENOFLOW_HOME": str(home), "GENOFLOW_ALLOWED_ROOTS": str(DEMO)}
    full.update(env or {})
    full.pop("DAGSTER_HOME", None)
    command = [sys.executable, "-m", "genoflow.cli", "serve", "--port", str(port)]
    with log.open("w") as stderr:
        server = subprocess.Popen(command, env=full, stdout=stderr, stderr=stderr)
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(base, server, log)
            yield base
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _wait_ready(base: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"genoflow serve exited: {log.read_text()}")
        try:
            urllib.request.urlopen(base + "/data/none", timeout=2)
        except urllib.error.HTTPError:
            return  # it answers (404 or 401)
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"genoflow serve did not answer within 60 s: {log.read_text()}")
