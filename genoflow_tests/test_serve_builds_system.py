"""On-demand builds against real servers: the claim table's races on a real PostgreSQL server
(threads and separate processes), and real ``genoflow serve`` processes: an htsget miss that
waits for its build and answers the ticket samtools follows; shutdown by SIGTERM (the build in
flight finishes whole or is left for reclaim, never half-published) and by SIGKILL (the claim's
owner is gone, a new server reclaims it and builds once); one run for ~16 concurrent misses
across two uvicorn worker processes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gzip
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pysam
import pytest
import sqlalchemy as sa

from genoflow.core.checksums import md5_file
from genoflow.storage import atomic
from genoflow.storage.claims import FAILED, QUEUED, RUNNING, SUCCEEDED, Claims
from genoflow.storage.registry import Registry
from genoflow_tests.conftest import run_cli
from genoflow_tests.support.postgres import free_port, running_server
from genoflow_tests.support.processes import race

pytestmark = pytest.mark.system  # starts PostgreSQL and genoflow serve
PROCESSES = 6
CONTIGS = [("chr1", 2_000_000), ("chr2", 1_500_000), ("chr3", 1_000_000)]


# -- the claim table on PostgreSQL -----------------------------------------------------------


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server for this module; yields its URL without a database name."""
    with running_server("max_connections=200") as url:
        yield url


@pytest.fixture
def pg_registry(postgres_server: str) -> str:
    """A database of its own for one test; yields the registry URL."""
    name = f"claims_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return f"{postgres_server}/{name}"


def _take_in_process(url: str, md5: str, job_id: str, replacing, barrier, results) -> None:
    """A racer: open the registry, wait at the barrier, take the claim (fenced on
    ``replacing``), and report the job id the claim names afterwards."""
    claims = Claims(Registry(url))
    barrier.wait()
    won = claims.take(md5, "intervals", job_id, f"racer:{job_id}", replacing=replacing)
    results.put((job_id, won.job_id))
    claims.registry.close()


def _advance_in_process(url: str, claim, status: str, barrier, results) -> None:
    """A racer moving the same claim it read: report whether its fenced write held."""
    claims = Claims(Registry(url))
    barrier.wait()
    moved = claims.advance(claim, status, error="racer" if status == FAILED else None)
    results.put((os.getpid(), moved is not None))
    claims.registry.close()


def test_on_postgresql_racing_threads_get_one_claim_and_all_read_its_job(pg_registry) -> None:
    claims = Claims(Registry(pg_registry))
    barrier, won = threading.Barrier(8), []

    def take(n: int) -> None:
        barrier.wait()
        won.append(claims.take("a" * 32, "intervals", f"job-{n}", "me", replacing=None).job_id)

    threads = [threading.Thread(target=take, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(won)) == 1
    assert claims.get("a" * 32).job_id == won[0] and claims.get("a" * 32).status == QUEUED


def test_on_postgresql_racing_processes_with_no_claim_start_exactly_one_job(pg_registry) -> None:
    Claims(Registry(pg_registry)).registry.close()  # the table exists before the race
    md5 = "b" * 32
    done = race(_take_in_process, [(pg_registry, md5, f"job-{n}", None) for n in range(PROCESSES)])
    assert done.exitcodes == [0] * PROCESSES
    winners = {answer for _, answer in done.outcomes}
    assert len(winners) == 1  # every racer reads the one winner's job id
    assert sum(mine == answer for mine, answer in done.outcomes) == 1
    assert Claims(Registry(pg_registry)).get(md5).job_id == winners.pop()


def test_on_postgresql_racing_reclaimers_of_a_stale_claim_replace_it_exactly_once(
    pg_registry,
) -> None:
    claims = Claims(Registry(pg_registry))
    md5 = "c" * 32
    stale = claims.advance(
        claims.take(md5, "intervals", "job-old", "gone:1", replacing=None), RUNNING
    )
    assert stale is not None
    racers = [(pg_registry, md5, f"job-new-{n}", stale) for n in range(PROCESSES)]
    done = race(_take_in_process, racers)
    assert done.exitcodes == [0] * PROCESSES
    assert len({answer for _, answer in done.outcomes}) == 1
    assert sum(mine == answer for mine, answer in done.outcomes) == 1  # the compare-and-swap
    now = claims.get(md5)
    assert now.job_id.startswith("job-new-") and now.status == QUEUED
    # The old builder finishes late: every fenced write it makes is refused.
    assert claims.advance(stale, SUCCEEDED) is None
    assert claims.heartbeat([stale]) == 0
    assert claims.release(stale) is False
    assert claims.get(md5) == now


def test_on_postgresql_racing_writers_of_one_claim_move_it_exactly_once(pg_registry) -> None:
    claims = Claims(Registry(pg_registry))
    md5 = "d" * 32
    running = claims.advance(
        claims.take(md5, "intervals", "job-1", "me:1", replacing=None), RUNNING
    )
    statuses = [SUCCEEDED, FAILED] * (PROCESSES // 2)
    done = race(_advance_in_process, [(pg_registry, running, s) for s in statuses])
    assert done.exitcodes == [0] * PROCESSES
    assert sum(held for _, held in done.outcomes) == 1
    assert claims.get(md5).status in (SUCCEEDED, FAILED)


# -- real servers ------------------------------------------------------------------------------


def _bam(path: Path, seed: int, reads: int = 2000) -> Path:
    rng = random.Random(seed)
    header = {"HD": {"VN": "1.6"}, "SQ": [{"SN": n, "LN": ln} for n, ln in CONTIGS]}
    with pysam.AlignmentFile(str(path), "wb", header=header) as out:
        for i in range(reads):
            read = pysam.AlignedSegment(out.header)
            read.query_name, read.query_sequence = f"r{i}", "ACGT" * 25
            read.query_qualities = pysam.qualitystring_to_array("I" * 100)
            read.reference_id = rng.randrange(len(CONTIGS))
            read.reference_start = rng.randrange(CONTIGS[read.reference_id][1] - 200)
            read.cigarstring, read.mapping_quality = "100M", 30
            out.write(read)
    return path


def _bed(path: Path, seed: int, lines: int = 150_000) -> Path:
    """An unsorted BED of a few MB: its build sorts, compresses and indexes it."""
    rng = random.Random(seed)
    with path.open("w") as out:
        for n in range(lines):
            name, length = CONTIGS[rng.randrange(len(CONTIGS))]
            start = rng.randrange(length - 1000)
            out.write(f"{name}\t{start}\t{start + rng.randrange(1, 1000)}\tfeature{n}\t0\t+\n")
    return path


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with sources registered and never built, one for each test of a server."""
    folder = tmp_path_factory.mktemp("serve-builds")
    sources = folder / "sources"
    sources.mkdir()
    files = [
        _bam(sources / "late.bam", 1),
        _bed(sources / "term.bed", 2),
        # Large enough that its build is still sorting when the test kills the server (a
        # few MB finish between two polls of the job on a fast machine).
        _bed(sources / "kill.bed", 3, lines=1_000_000),
        _bed(sources / "workers.bed", 4),
    ]
    manifest = folder / "registered.tsv"
    rows = ["name\turi\tmd5\tformat", *(f"{f.name}\t{f}\t{md5_file(f)}\t" for f in files)]
    manifest.write_text("\n".join(rows) + "\n")
    env = {"GENOFLOW_ALLOWED_ROOTS": str(sources)}
    done = run_cli(folder / "home", "register", str(manifest), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return folder / "home"


def _md5(home: Path, name: str) -> str:
    return md5_file(home.parent / "sources" / name)


@contextlib.contextmanager
def _server(home: Path, log: Path, *, workers: int = 1, env: dict | None = None):
    """``genoflow serve`` on a free loopback port: yields (process, base URL); after, it is
    stopped with SIGINT unless the test already ended it."""
    port = free_port()
    full = {
        **os.environ,
        "GENOFLOW_HOME": str(home),
        "GENOFLOW_ALLOWED_ROOTS": str(home.parent / "sources"),
        "GENOFLOW_THREADS": "2",
        **(env or {}),
    }
    full.pop("DAGSTER_HOME", None)
    command = [sys.executable, "-m", "genoflow.cli", "serve", "--port", str(port)]
    command += ["--workers", str(workers)]
    with log.open("a") as stderr:
        server = subprocess.Popen(command, env=full, stdout=stderr, stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, server, log)
        yield server, base
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=90)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _wait_ready(base: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"genoflow serve exited: {log.read_text()}")
        with contextlib.suppress(OSError):
            if _get(base, "/service-info")[0] == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"genoflow serve did not answer within 90 s: {log.read_text()}")


def _get(base: str, target: str, timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    parts = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request("GET", target)
        answer = connection.getresponse()
        headers = {key.lower(): value for key, value in answer.getheaders()}
        return answer.status, headers, answer.read()
    finally:
        connection.close()


def _job_id(status: int, headers: dict[str, str], body: bytes) -> str:
    """The job a miss's answer names: its Location, or the htsget 503 message's /jobs/ link."""
    if "location" in headers:
        return headers["location"].removeprefix("/jobs/")
    found = re.search(rb"/jobs/([0-9a-f-]{36})", body)
    assert found, (status, body)
    return found.group(1).decode()


def _wait_job(base: str, job_id: str, wanted: set[str], timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, _, body = _get(base, f"/jobs/{job_id}")
        assert status == 200, body
        job = json.loads(body)
        if job["status"] in wanted:
            return job
        assert job["status"] != "failed", job
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"
        time.sleep(0.2)


def _wait_served(base: str, md5: str, timeout: float = 300) -> bytes:
    deadline = time.monotonic() + timeout
    while (answer := _get(base, f"/data/{md5}"))[0] != 200:
        assert answer[0] == 202, answer[2]  # a failed build answers its error
        assert time.monotonic() < deadline, f"{md5} not served within {timeout:g} s"
        time.sleep(1)
    return answer[2]


def _serve_runs(home: Path, md5: str) -> list:
    from dagster import DagsterInstance, RunsFilter

    from genoflow.defs.tags import LAUNCHED_BY, LAUNCHED_BY_SERVE

    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        runs = instance.get_runs(RunsFilter(tags={LAUNCHED_BY: LAUNCHED_BY_SERVE}))
    return [run for run in runs if run.tags.get("dagster/partition") == md5]


def _assert_never_half_published(home: Path, md5: str) -> None:
    """Every artifact folder of ``md5`` is whole (a genoflow.json naming files all present at
    their sizes), and every draft left in the cache belongs to a dead process (swept)."""
    from genoflow.storage.cache import Cache

    for folder in (home / "cache").glob(f"*/{md5[:2]}/{md5}/*/*"):
        if folder.name.startswith(".") or not folder.is_dir():  # drafts and lock files
            continue
        marker = folder / "genoflow.json"
        assert marker.is_file(), f"{folder} has no genoflow.json"
        for entry in json.loads(marker.read_text())["files"]:
            assert (folder / entry["name"]).stat().st_size == entry["size"], entry
    Cache(home / "cache").sweep()  # removes only drafts whose owner process is gone
    for path in home.rglob("*.tmp.*"):  # any draft left must be reclaimable
        parts = path.relative_to(home).parts
        owners = [
            atomic.owner_alive(part, home.joinpath(*parts[: i + 1])) for i, part in enumerate(parts)
        ]
        assert False in owners, f"{path} is a draft of a live process (owners {owners})"


def _left_running(home: Path, within: float = 15) -> list[int]:
    """The processes still working on ``home`` (its GENOFLOW_HOME in their environment: a
    build process, a tool it started, the forkserver) once ``within`` seconds have passed."""
    wanted = b"GENOFLOW_HOME=" + str(home).encode() + b"\0"
    deadline = time.monotonic() + within
    while True:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if wanted in (entry / "environ").read_bytes():
                        found.append(int(entry.name))
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _sorted_lines(data: bytes) -> list[bytes]:
    return sorted(gzip.decompress(data).splitlines())


def test_an_htsget_miss_whose_build_ends_within_the_wait_answers_the_ticket_samtools_follows(
    home, samtools, tmp_path
) -> None:
    md5 = _md5(home, "late.bam")
    env = {"GENOFLOW_HTSGET_WAIT": "600"}
    with _server(home, tmp_path / "serve.log", env=env) as (_, base):
        region = "chr1:1-1000000"
        command = [samtools, "view", f"{base}/reads/{md5}?referenceName=chr1&start=0&end=1000000"]
        over_htsget = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert over_htsget.returncode == 0, over_htsget.stderr
        runs = _serve_runs(home, md5)
        assert len(runs) == 1  # the ticket request started the build and waited for it
        status, _, body = _get(base, f"/reads/{md5}")
        assert status == 200 and json.loads(body)["htsget"]["format"] == "BAM"
        built = tmp_path / "built.bam"
        built.write_bytes(_get(base, f"/data/{md5}")[2])
        pysam.index(str(built))
    local = subprocess.run(
        [samtools, "view", str(built), region], capture_output=True, text=True, check=True
    ).stdout
    wanted = set(local.splitlines())
    assert wanted and wanted <= set(over_htsget.stdout.splitlines())


def test_sigterm_mid_build_never_half_publishes_and_a_later_server_serves_the_file(
    home, tmp_path
) -> None:
    md5 = _md5(home, "term.bed")
    with _server(home, tmp_path / "serve.log") as (server, base):
        answer = _get(base, f"/data/{md5}")
        assert answer[0] == 202, answer
        job_id = _job_id(*answer)
        _wait_job(base, job_id, {"running", "succeeded"})
        server.send_signal(signal.SIGTERM)
        # uvicorn drains, then re-raises the signal it caught: a graceful end, bounded by the
        # 30 s grace of open requests plus the builds' 30 s drain.
        assert server.wait(timeout=120) in (0, -signal.SIGTERM)
    assert _left_running(home) == []  # the build finished or was ended with its tools
    assert "Application shutdown complete" in (tmp_path / "serve.log").read_text()
    _assert_never_half_published(home, md5)
    claim = Claims(Registry(home / "registry.db")).get(md5)
    assert claim is None or claim.status == SUCCEEDED  # published whole, or released
    with _server(home, tmp_path / "again.log") as (_, base):
        data = _wait_served(base, md5)
        _, _, page = _get(base, "/")
    assert _sorted_lines(data) == sorted(
        (home.parent / "sources" / "term.bed").read_bytes().splitlines()
    )
    assert re.search(rf"<code>{md5}</code></td><td>built</td>", page.decode())
    _assert_never_half_published(home, md5)


def test_sigkill_mid_build_leaves_a_claim_a_new_server_reclaims_and_builds_once(
    home, tmp_path
) -> None:
    from dagster import DagsterRunStatus

    md5 = _md5(home, "kill.bed")
    with _server(home, tmp_path / "serve.log") as (server, base):
        answer = _get(base, f"/data/{md5}")
        assert answer[0] == 202, answer
        first = _job_id(*answer)
        _wait_job(base, first, {"running"})
        server.kill()
        server.wait()
    # The build process notices its server is gone and ends itself and its tools: no orphan
    # can publish after the claim was reclaimed.
    assert _left_running(home) == []
    claim = Claims(Registry(home / "registry.db")).get(md5)
    assert claim is not None and claim.job_id == first and claim.status == RUNNING  # stale now
    _assert_never_half_published(home, md5)
    with _server(home, tmp_path / "again.log") as (_, base):
        answer = _get(base, f"/data/{md5}")
        if answer[0] == 202:
            second = _job_id(*answer)
            assert second != first  # the dead owner's claim was taken over at once
            again = _get(base, f"/index/{md5}")
            assert again[0] == 200 or _job_id(*again) == second  # joined, not another run
        data = _wait_served(base, md5)
    assert _sorted_lines(data) == sorted(
        (home.parent / "sources" / "kill.bed").read_bytes().splitlines()
    )
    runs = {run.run_id: run.status for run in _serve_runs(home, md5)}
    assert runs.pop(first) == DagsterRunStatus.FAILURE  # the reclaim failed the old run
    assert list(runs.values()) == [DagsterRunStatus.SUCCESS]  # built once more, once
    _assert_never_half_published(home, md5)


def test_concurrent_misses_across_two_worker_processes_start_one_run_with_one_job_id(
    home, tmp_path
) -> None:
    md5 = _md5(home, "workers.bed")
    targets = [f"/data/{md5}", f"/index/{md5}", f"/intervals/{md5}", f"/view/{md5}"] * 4
    env = {"GENOFLOW_HTSGET_WAIT": "1"}
    with _server(home, tmp_path / "serve.log", workers=2, env=env) as (_, base):
        barrier = threading.Barrier(len(targets))

        def ask(target: str) -> tuple[int, dict[str, str], bytes]:
            barrier.wait()
            return _get(base, target)

        with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
            answers = list(pool.map(ask, targets))
        statuses = {target: answer[0] for target, answer in zip(targets, answers, strict=True)}
        assert {statuses[f"/data/{md5}"], statuses[f"/index/{md5}"]} == {202}, answers
        assert statuses[f"/intervals/{md5}"] in (200, 503)
        ids = {_job_id(*answer) for answer in answers if answer[0] != 200}
        assert len(ids) == 1, ids
        job_id = ids.pop()
        _wait_job(base, job_id, {"succeeded"})
        _wait_served(base, md5)
    runs = _serve_runs(home, md5)
    assert [run.run_id for run in runs] == [job_id]
    started = re.findall(r"Started server process \[(\d+)\]", (tmp_path / "serve.log").read_text())
    assert len(set(started)) == 2  # two uvicorn worker processes answered
