"""Faults end to end through ``genoflow run`` (issue 5 §3): a bucket that goes away mid-upload,
a source server that drops connections or sends short bodies, a full disk, a registry that is
down. Each fails clearly (stage, file, what to do), publishes nothing it should not, and a later
run with the fault gone finishes the job.

Two things here are simulated rather than waited for. gcsfs retries every request 6 times with
backoffs of about 1, 2, 4, 8 and 16 s, and genoflow repeats a failed operation twice on top, so
a bucket that stays down takes minutes to give up on (measured: 205 s for one artifact); the
child running genoflow therefore divides gcsfs's backoff by 50 (the number of tries is
unchanged). A full disk is ``RLIMIT_FSIZE`` in the child, with ``SIGXFSZ`` ignored so that a
write past the limit fails with EFBIG as it does with ENOSPC on a full filesystem.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from genoflow.storage.cache import MARKER

from .support import gcs_emulator as emulator
from .support.checksums import md5_hex
from .support.crashes import bucket_partials, bucket_problems
from .support.deployments import (
    REPO,
    artifacts,
    cli_env,
    content_problems,
    debris,
    finish,
    launch,
    registry_problems,
    replica_rows,
)
from .support.gcs_emulator import GcsEmulator, gcs_emulator  # noqa: F401
from .support.postgres import (
    free_port,
    postgres_binary,
    run_as_postgres,
    server_folder,
    wait_until_ready,
)
from .support.signed_url_server import SignedUrlServer, signed_url_server  # noqa: F401

pytestmark = pytest.mark.system  # starts a server (see pyproject markers)

# ruff: noqa: F811 - pytest fixtures imported from their modules

GCSFS_TIME_SCALE = 50


def write_source(folder: Path, name: str, data: bytes) -> Path:
    """Write ``data`` as ``folder/name`` and a manifest listing it; return the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    manifest = folder / f"{name}.tsv"
    manifest.write_text(f"name\turi\tmd5\n{name}\t{name}\t{md5_hex(data)}\n")
    return manifest


def summary(out: str) -> dict[str, Any]:
    (record,) = json.loads(out)
    return record


# --- a bucket that goes away in the middle of an upload ---------------------------------------


def run_with_fast_gcs_backoff(argv: list[str]) -> int:
    """Child entry: gcsfs's retry backoff divided by :data:`GCSFS_TIME_SCALE`, its retries
    logged on stderr, then ``genoflow ARGV``."""
    import asyncio

    import gcsfs.retry

    class _Clock:
        def __getattr__(self, name: str) -> Any:
            return getattr(asyncio, name)

        @staticmethod
        def sleep(seconds: float) -> Any:
            return asyncio.sleep(seconds / GCSFS_TIME_SCALE)

    gcsfs.retry.asyncio = _Clock()  # only gcsfs's retry loop reads the clock through this name
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("gcsfs-log: %(message)s"))
    logging.getLogger("gcsfs").addHandler(handler)
    logging.getLogger("gcsfs").setLevel(logging.DEBUG)
    from genoflow.cli import main

    return main(argv)


def launch_fast_gcs(home: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    code = (
        "import sys; from genoflow_tests.test_reliability_faults import "
        "run_with_fast_gcs_backoff as run; sys.exit(run(sys.argv[1:]))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class CuttingProxy:
    """A TCP relay to the emulator that runs ``cut()`` once ``after`` request bytes went through
    (the middle of an upload), then refuses new connections: the store went away."""

    def __init__(self, upstream: int, *, after: int, cut: Callable[[], None]) -> None:
        self.upstream, self.after, self._cut = upstream, after, cut
        self.sent, self.cut_done = 0, False
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.cut_done:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()
        self._listener.close()

    def _pump(self, source: socket.socket, sink: socket.socket, upload: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                sink.sendall(data)
                if upload:
                    self._count(len(data))
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def _count(self, size: int) -> None:
        with self._lock:
            self.sent += size
            if self.sent >= self.after and not self.cut_done:
                self._cut()
                self.cut_done = True


@dataclass
class Outage:
    """A bucket stopped mid-upload: the failed run, the disk after it, and the run after that."""

    status: int
    out: str
    err: str
    stopped_mid_upload: bool
    markers_after: list[Path]
    gcs_rows_after: list[tuple[str, ...]]
    later_status: int
    later_out: str
    later_err: str
    home: Path
    objects: Path


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    """Replicate a 12 MB artifact to a private emulator, stop the emulator once a third of the
    upload went through, then start it again (same objects folder) and run once more."""
    folder = tmp_path_factory.mktemp("outage")
    objects, log = folder / "objects", folder / "server.log"
    objects.mkdir()
    rng = random.Random(5)
    data = "".join(f"s{i},{rng.random():.12f}\n" for i in range(500_000)).encode()
    manifest = write_source(folder / "inputs", "big.csv", data)
    home = folder / "home"
    server, endpoint, _ = emulator.start(objects, log)
    try:
        emulator.GcsEmulator(endpoint, objects, server.pid, 0).create_bucket("outage")
        whole_objects: list[Path] = []

        def stop_the_store() -> None:
            emulator.stop(server)
            whole_objects.extend(objects.rglob("source.csv"))

        proxy = CuttingProxy(int(endpoint.rsplit(":", 1)[1]), after=len(data) // 3,
                             cut=stop_the_store)  # fmt: skip
        env = cli_env(home, GENOFLOW_REPLICAS="gs://outage/genoflow", STORAGE_EMULATOR_HOST=
                      proxy.endpoint, GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")  # fmt: skip
        status, out, err = finish(launch_fast_gcs(home, "run", str(manifest), "--json", env=env))
        stopped = proxy.cut_done and not whole_objects
        markers = [p for p in objects.rglob(MARKER)]
        gcs_rows = [row for row in replica_rows(home / "registry.db") if row[3].startswith("gs:")]
    finally:
        emulator.stop(server)
    server, endpoint, _ = emulator.start(objects, log)
    try:
        env |= {"STORAGE_EMULATOR_HOST": endpoint}
        later = finish(launch_fast_gcs(home, "run", str(manifest), "--json", env=env))
        yield Outage(status, out, err, stopped, markers, gcs_rows, *later, home, objects)
    finally:
        emulator.stop(server)


def test_a_bucket_stopped_mid_upload_fails_the_run_after_bounded_retries(outage: Outage) -> None:
    assert outage.stopped_mid_upload
    assert outage.status == 1
    retries = outage.err.count("gcsfs-log: ") - outage.err.count("out of retries")
    assert retries >= 1  # it did retry; and it ended, which is the bound


def test_a_bucket_stopped_mid_upload_is_reported_as_the_failed_upload(outage: Outage) -> None:
    error = summary(outage.out)["error"]

    assert error.startswith("[transfer] gs://outage/genoflow/passthrough/"), error
    assert "upload failed" in error and "unreachable" in error, error


def test_a_bucket_stopped_mid_upload_holds_no_marker_and_no_registered_copy(
    outage: Outage,
) -> None:
    assert outage.markers_after == []
    assert outage.gcs_rows_after == []  # its pending row went with the failed copy


def test_a_later_run_with_the_bucket_back_finishes_the_replication(outage: Outage) -> None:
    assert outage.later_status == 0, outage.later_err
    assert registry_problems(outage.home, objects=outage.objects) == []
    gcs = [row for row in replica_rows(outage.home / "registry.db") if row[3].startswith("gs:")]
    assert [(row[5], row[6]) for row in gcs] == [("PRIMARY", "available")]
    assert bucket_problems(outage.objects) == [] and bucket_partials(outage.objects) == []


# --- a source server that drops the connection or sends short bodies ------------------------------


def _served_manifest(folder: Path, server: SignedUrlServer, name: str, **fault: Any) -> bytes:
    data = b"".join(b"chr1\t%d\t%d\tx%d\n" % (i, i + 3, i) for i in range(40_000))
    server.put(name, data)
    server.fault(name, **fault)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "m.tsv").write_text(f"name\turi\tmd5\n{name}\t{server.url(name)}\t{md5_hex(data)}\n")
    return data


def test_a_download_reset_twice_resumes_and_builds_from_the_whole_body(
    tmp_path: Path, signed_url_server: SignedUrlServer
) -> None:
    data = _served_manifest(tmp_path / "in", signed_url_server, "reset.bed", drops=2)
    home = tmp_path / "home"

    status, out, err = finish(launch(home, "run", str(tmp_path / "in" / "m.tsv"), "--json"))

    assert status == 0, err
    assert set(summary(out)["assets"].values()) == {"built"}
    (source,) = (home / "cache").glob(f"*/*/{md5_hex(data)}/source/v*/source.bed")
    assert source.read_bytes() == data
    assert len(signed_url_server.requests_for("reset.bed")) == 3


def test_a_body_shorter_than_declared_fails_the_source_and_leaves_no_partial_file(
    tmp_path: Path, signed_url_server: SignedUrlServer
) -> None:
    data = _served_manifest(tmp_path / "in", signed_url_server, "short.bed", short=True)
    home = tmp_path / "home"

    status, out, _ = finish(launch(home, "run", str(tmp_path / "in" / "m.tsv"), "--json"))

    record = summary(out)
    assert status == 1
    assert record["assets"]["source"] == "failed"
    assert record["error"].startswith("[stage] ") and "fewer bytes" in record["error"]
    assert not list((home / "cache").glob(f"*/*/{md5_hex(data)}/*/*"))  # not even a temp folder
    assert debris(home) == []
    assert signed_url_server.secret not in out


# --- a full disk ----------------------------------------------------------------------------------


BED_LINES = b"".join(b"chr1\t%d\t%d\n" % (i, i + 5) for i in range(250_000))  # 4.5 MB
REPEATED = b"chr1\t100\t105\n" * 300_000  # 4.2 MB, 12 kB of gzip
LIMIT = 3 << 20


def _limit_file_size(limit: int) -> None:
    """In the child before exec: files may not grow past ``limit`` bytes; writes fail instead."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def run_on_a_small_disk(home: Path, manifest: Path, limit: int) -> tuple[int, str, str]:
    command = [sys.executable, "-m", "genoflow.cli", "run", str(manifest), "--json"]
    done = subprocess.run(
        command, env=cli_env(home), cwd=REPO, capture_output=True, text=True, timeout=600,
        preexec_fn=lambda: _limit_file_size(limit),
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize(
    ("stage", "make"),
    [
        ("stage", lambda folder: write_source(folder, "big.bed", BED_LINES)),
        # A small gzip that the sort decompresses into its scratch folder, past the limit.
        pytest.param(
            "sort",
            lambda folder: write_source(folder, "big.bed.gz", gzip.compress(REPEATED)),
        ),
    ],
    ids=["while-staging", "while-sorting"],
)
def test_a_full_disk_fails_at_the_stage_that_wrote_and_publishes_nothing(
    tmp_path: Path, stage: str, make: Any
) -> None:
    manifest = make(tmp_path / "in")
    home = tmp_path / "home"
    status, out, err = run_on_a_small_disk(home, manifest, LIMIT)

    record = summary(out)
    assert status == 1, err
    asset = "source" if stage == "stage" else "sorted"
    assert record["assets"][asset] == "failed", record
    assert record["error"].startswith(f"[{stage}] "), record["error"]
    assert "space" in record["error"] or "too large" in record["error"], record["error"]
    assert " — " in record["error"]
    assert content_problems(home) == [] and debris(home) == []
    published = {path.split("/")[3] for path in artifacts(home)}
    assert asset not in published
    status, _, err = finish(launch(home, "run", str(manifest)))
    assert status == 0, err


# --- a registry that is down ----------------------------------------------------------------------


class Postgres:
    """A PostgreSQL server in a private folder that a test can stop and start again."""

    def __init__(self, folder: Path, user: dict[str, Any]) -> None:
        self.folder, self.user, self.port = folder, user, free_port()
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def init(self) -> None:
        initdb = postgres_binary("initdb")
        init = [initdb, "-D", "data", "-U", "postgres", "-A", "trust", "--no-sync", "--locale=C"]
        made = subprocess.run(init, cwd=self.folder, capture_output=True, **self.user)
        assert made.returncode == 0, made.stderr.decode(errors="replace")

    def start(self) -> None:
        command = [postgres_binary("postgres"), "-D", "data", "-h", "127.0.0.1",
                   "-p", str(self.port), "-k", str(self.folder), "-c", "fsync=off"]  # fmt: skip
        log = self.folder / "server.log"
        with open(log, "ab") as output:
            self.process = subprocess.Popen(
                command, cwd=self.folder, stdout=output, stderr=subprocess.STDOUT, **self.user
            )
        wait_until_ready(self.url, self.process, log)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=60)

    def create_database(self, name: str) -> str:
        admin = sa.create_engine(f"{self.url}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return f"{self.url}/{name}"


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install -e '.[dev]')")
    user = run_as_postgres()
    with server_folder(user) as folder:
        server = Postgres(folder, user)
        server.init()
        server.start()
        try:
            yield server
        finally:
            server.stop()


def run_stopping_the_registry(argv: list[str]) -> int:
    """Child entry: the first registration of a published artifact first stops the registry's
    server (``GENOFLOW_TEST_POSTGRES_PID``) and waits until it refuses connections."""
    from genoflow.storage.node import Node

    real = Node.register

    def register(self: Node, artifact: Any) -> None:
        pid = int(os.environ.pop("GENOFLOW_TEST_POSTGRES_PID", "0"))
        if pid:
            os.kill(pid, signal.SIGINT)
            _wait_refused(int(os.environ["GENOFLOW_TEST_POSTGRES_PORT"]))
        real(self, artifact)

    Node.register = register
    from genoflow.cli import main

    return main(argv)


def _wait_refused(port: int) -> None:
    import socket

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return
        time.sleep(0.05)
    raise AssertionError("the registry server did not stop")


def test_a_registry_down_before_the_run_fails_it_in_one_clear_line(
    tmp_path: Path, postgres: Postgres
) -> None:
    url = postgres.create_database("down_before")
    manifest = write_source(tmp_path / "in", "peaks.bed", b"chr1\t5\t9\n")
    home = tmp_path / "home"
    postgres.stop()
    try:
        status, _out, err = finish(launch(home, "run", str(manifest),
                                         env=cli_env(home, GENOFLOW_REGISTRY_URL=url)))  # fmt: skip
    finally:
        postgres.start()

    assert status == 1
    assert "Traceback" not in err, err
    (line,) = [text for text in err.splitlines() if text.startswith("genoflow: ")]
    assert line.startswith("genoflow: [registry] ") and "127.0.0.1" in line, line
    assert " — " in line
    assert artifacts(home) == {}


@dataclass
class RegistryLoss:
    """A run whose registry stopped between a publish and its registration, and the run after."""

    status: int
    out: str
    err: str
    published: dict[str, dict[str, str]]
    replica_keys: list[str]
    bucket_markers: list[Path]
    later: tuple[int, str, str]
    home: Path
    url: str


@pytest.fixture(scope="module")
def registry_loss(
    tmp_path_factory: pytest.TempPathFactory, postgres: Postgres, gcs_emulator: GcsEmulator
) -> RegistryLoss:
    folder = tmp_path_factory.mktemp("registry-loss")
    url = postgres.create_database("lost_mid_run")
    manifest = write_source(folder / "in", "peaks.bed", b"chr2\t50\t90\nchr1\t5\t9\n")
    home = folder / "home"
    gcs_emulator.create_bucket("registry-loss")
    env = cli_env(home, GENOFLOW_REGISTRY_URL=url, GENOFLOW_REPLICAS="gs://registry-loss/g",
                  STORAGE_EMULATOR_HOST=gcs_emulator.endpoint,
                  GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")  # fmt: skip
    assert postgres.process is not None
    armed = env | {"GENOFLOW_TEST_POSTGRES_PID": str(postgres.process.pid),
                   "GENOFLOW_TEST_POSTGRES_PORT": str(postgres.port)}  # fmt: skip
    code = (
        "import sys; from genoflow_tests.test_reliability_faults import "
        "run_stopping_the_registry as run; sys.exit(run(sys.argv[1:]))"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, "run", str(manifest), "--json"], env=armed, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    status, out, err = finish(child)
    postgres.process.wait(timeout=60)
    published = artifacts(home)
    bucket = gcs_emulator.root / "registry-loss"
    markers = list(bucket.rglob(MARKER))
    postgres.start()
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        keys = list(connection.execute(sa.text("SELECT a.key FROM replica r JOIN artifact a ON "
                                                "a.id = r.artifact_id")).scalars())  # fmt: skip
    engine.dispose()
    later = finish(launch(home, "run", str(manifest), "--json", env=env))
    return RegistryLoss(status, out, err, published, keys, markers, later, home, url)


def test_a_registry_lost_mid_run_fails_the_run_naming_the_registry(
    registry_loss: RegistryLoss,
) -> None:
    record = summary(registry_loss.out)

    assert registry_loss.status == 1
    assert record["assets"]["source"] == "failed", record
    assert record["error"].startswith("[registry] "), record["error"]
    assert " — " in record["error"]


def test_an_artifact_published_before_the_registry_was_lost_is_never_shared_unregistered(
    registry_loss: RegistryLoss,
) -> None:
    # The rule: a local artifact can outlive a failed registration (it is whole, marker and
    # all), but nothing is copied to a shared location until it is registered.
    assert len(registry_loss.published) == 1
    assert registry_loss.replica_keys == []
    assert registry_loss.bucket_markers == []


def test_the_run_after_the_registry_is_back_registers_and_replicates_it(
    registry_loss: RegistryLoss,
) -> None:
    status, out, err = registry_loss.later

    assert status == 0, err
    assert set(summary(out)["assets"].values()) <= {"built", "cached"}
    assert debris(registry_loss.home) == []
    engine = sa.create_engine(registry_loss.url)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT a.key, l.kind, r.data_type, r.state FROM replica r JOIN artifact a ON "
                "a.id = r.artifact_id JOIN location l ON l.id = r.location_id"
            )
        ).all()
    engine.dispose()
    (key,) = registry_loss.published
    assert sorted(tuple(row) for row in rows if row[0] == key) == [
        (key, "gcs", "PRIMARY", "available"),
        (key, "local", "PRIMARY", "available"),
    ]


def test_a_registry_that_never_answers_fails_within_the_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install -e '.[dev]')")
    from genoflow.core.errors import StorageError
    from genoflow.storage import registry

    # The kernel completes the handshake of a listening socket nobody accepts from: a host that
    # is up but whose database hangs. Without a connect timeout libpq waits for ever.
    monkeypatch.setattr(registry, "CONNECT_TIMEOUT", 1)
    with socket.create_server(("127.0.0.1", 0), backlog=8) as silent:
        url = f"postgresql+psycopg2://genoflow@127.0.0.1:{silent.getsockname()[1]}/genoflow"
        with pytest.raises(StorageError, match=r"\[registry\].*timeout"):
            registry.Registry(url)
