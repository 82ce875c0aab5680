"""genoflow on a real local cluster: Celery workers, a PostgreSQL instance, a shared GCS bucket.

One cluster serves the module (the services of ``make cluster-demo``: Redis, PostgreSQL as the
``postgres`` user, fake-gcs-server, dagster-daemon, dagster-webserver and two Celery workers with
their own deployments and caches), and is stopped by PID when the module ends. Runs come from
the manifest sensor, or from the webserver's GraphQL API as a person would launch them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterRunStatus,
    in_process_executor,
    multiprocess_executor,
)
from dagster._core.storage.dagster_run import RunsFilter

from genoflow.build.steps import key_for
from genoflow.core.checksums import md5_file
from genoflow.defs.executors import executor_from_env
from genoflow.storage.datamanager import DataManager
from genoflow.storage.registry import Registry
from genoflow_tests.support.gcs_emulator import binary as gcs_binary
from genoflow_tests.support.unavailable import unavailable
from scripts.cluster import drop_manifest
from scripts.cluster_report import (
    Outcome,
    Step,
    expected_artifacts,
    partitions_of,
    steps_of,
    wait_for_runs,
)
from scripts.cluster_services import postgres_binary
from scripts.local_cluster import BUCKET, LocalCluster

pytestmark = [pytest.mark.system, pytest.mark.timeout(420)]
RUN_TIMEOUT = 150.0


def _require_services() -> None:
    missing = [name for name in ("redis-server",) if shutil.which(name) is None]
    for name in ("initdb", "postgres"):
        try:
            postgres_binary(name)
        except RuntimeError:
            missing.append(name)
    gcs_binary()  # skips, or fails under GENOFLOW_REQUIRE_TOOLS=1, saying why
    if missing:
        message = f"{', '.join(missing)} not installed: apt-get install redis-server postgresql"
        unavailable(message)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    _require_services()
    with LocalCluster(tmp_path_factory.mktemp("cluster"), workers=2, sensor_interval=1) as running:
        yield running


def test_executor_defaults_to_in_process() -> None:
    assert executor_from_env({}) is in_process_executor


def test_executor_multiprocess_is_chosen_by_name() -> None:
    assert executor_from_env({"GENOFLOW_EXECUTOR": "multiprocess"}) is multiprocess_executor


def test_rejects_an_unknown_executor_name() -> None:
    with pytest.raises(ValueError, match="GENOFLOW_EXECUTOR must be one of"):
        executor_from_env({"GENOFLOW_EXECUTOR": "dask"})


def test_celery_executor_reads_broker_and_backend_when_a_run_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    executor = executor_from_env({"GENOFLOW_EXECUTOR": "celery"})
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6399/0")
    monkeypatch.setenv("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6399/1")
    config = executor.config_schema.resolve_config({}).value["config"]
    assert executor.name == "celery"
    assert (config["broker"], config["backend"]) == (
        "redis://127.0.0.1:6399/0",
        "redis://127.0.0.1:6399/1",
    )


# Inputs: small, unsorted, one md5 each.


def sam(seed: int) -> bytes:
    rng = random.Random(seed)
    lines = ["@HD\tVN:1.6\tSO:unsorted", "@SQ\tSN:chr1\tLN:50000", "@SQ\tSN:chr2\tLN:40000"]
    for number in range(300):
        contig = rng.choice(["chr1", "chr2"])
        seq = "".join(rng.choice("ACGT") for _ in range(30))
        where = f"{contig}\t{rng.randint(1, 39000)}"
        lines.append(f"r{seed}_{number}\t0\t{where}\t60\t30M\t*\t0\t0\t{seq}\t{'I' * 30}")
    return ("\n".join(lines) + "\n").encode()


def bed(seed: int, records: int = 400) -> bytes:
    rng = random.Random(seed)
    lines = []
    for number in range(records):
        start = rng.randint(0, 900_000)
        lines.append(f"chr{rng.randint(1, 3)}\t{start}\t{start + 150}\tpeak{seed}_{number}")
    return ("\n".join(lines) + "\n").encode()


def vcf(seed: int) -> bytes:
    rng = random.Random(seed)
    lines = ["##fileformat=VCFv4.2", "##contig=<ID=chr1,length=1000000>",
             "##contig=<ID=chr2,length=1000000>",
             "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]  # fmt: skip
    for _ in range(300):
        lines.append(f"chr{rng.randint(1, 2)}\t{rng.randint(1, 999_999)}\t.\tA\tG\t50\tPASS\t.")
    return ("\n".join(lines) + "\n").encode()


SOURCES = {
    "tumour.sam": lambda: sam(1),
    "normal.sam": lambda: sam(2),
    "peaks.bed": lambda: bed(3),
    "enhancers.bed": lambda: bed(4),
    "calls.vcf": lambda: vcf(5),
    "counts.tsv": lambda: b"gene\tcount\nBRCA1\t12\nTP53\t40\n",
}


def write_manifest(folder: Path, name: str, files: dict[str, bytes]) -> Path:
    """``folder/name.tsv`` listing ``files``, which are written to ``folder/name/``."""
    sources = folder / name
    sources.mkdir(parents=True)
    lines = ["name\turi\tmd5\tsize"]
    for file_name, data in files.items():
        (sources / file_name).write_bytes(data)
        md5 = md5_file(sources / file_name)
        lines.append(f"{file_name}\t{name}/{file_name}\t{md5}\t{len(data)}")
    manifest = folder / f"{name}.tsv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@dataclass(frozen=True)
class Build:
    partitions: dict[str, str]
    outcome: Outcome


@pytest.fixture(scope="module")
def first_build(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Build:
    """The six sources, dropped into the watched folder, after every run they caused ended."""
    files = {name: make() for name, make in SOURCES.items()}
    manifest = write_manifest(tmp_path_factory.mktemp("first"), "first", files)
    partitions = partitions_of(manifest)
    dropped = drop_manifest(manifest, cluster.manifests)
    assert partitions_of(dropped) == partitions
    with cluster.instance() as instance:
        return Build(partitions, wait_for_runs(instance, partitions, timeout=RUN_TIMEOUT))


def asset_steps(steps: list[Step]) -> list[Step]:
    return [step for step in steps if step.passed is None and step.asset]


def test_the_first_manifest_runs_succeed_and_every_check_passes(first_build: Build) -> None:
    assert [run.run_id for run in first_build.outcome.failed] == []
    checks = [step for step in first_build.outcome.steps if step.passed is not None]
    assert checks and all(step.passed for step in checks)


def test_steps_of_the_runs_spread_over_both_workers(first_build: Build) -> None:
    workers = {step.worker.split("@")[0] for step in first_build.outcome.steps}
    assert workers == {"worker-1", "worker-2"}


def test_each_artifact_is_built_exactly_once_across_the_cluster(first_build: Build) -> None:
    built = first_build.outcome.built()
    assert set(built) == expected_artifacts(first_build.partitions)
    assert {key: len(steps) for key, steps in built.items() if len(steps) != 1} == {}


def test_every_replica_verifies_on_every_worker(cluster: LocalCluster, first_build: Build) -> None:
    for deployment in cluster.deployments():
        checked = cluster.genoflow(deployment, "verify")
        assert checked.returncode == 0, checked.stdout + checked.stderr
    status = json.loads(cluster.genoflow("worker-1", "status", "--json").stdout)
    for source in (s for s in status if s["md5"] in first_build.partitions):
        for asset, detail in source["assets"].items():
            kinds = {replica["deployment"] for replica in detail["replicas"]}
            assert "gcs" in kinds, f"{source['name']} {asset} has no replica in the bucket"


class StallingServer:
    """Serves one file over HTTP; the first request gets half the body, then nothing more.

    The first download thus stays in the middle of its step until the test has killed the
    process running it; every later request gets the whole file.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.requested = threading.Event()
        self.release = threading.Event()
        self._first = True
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.serve(self)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/{name}"

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        first, self._first = self._first, False
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(self.data)))
        handler.end_headers()
        try:
            if first:
                handler.wfile.write(self.data[: len(self.data) // 2])
                handler.wfile.flush()
                self.requested.set()
                self.release.wait(timeout=120)
                handler.close_connection = True
                return
            handler.wfile.write(self.data)
        except (BrokenPipeError, ConnectionResetError):
            return  # the reader was killed: exactly what the test does

    def stop(self) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


@dataclass(frozen=True)
class Kill:
    """What the cluster looked like right after a pool process was killed in a step."""

    md5: str
    run_status: DagsterRunStatus
    killed_worker: str
    published_in_caches: list[str]
    objects_in_bucket: list[str]
    registered_replicas: int
    materializations: int
    server: StallingServer


def _parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _started_step(cluster: LocalCluster, md5: str, server: StallingServer) -> Step:
    """The ``source`` step of ``md5``'s run, once its download is under way."""
    deadline = time.monotonic() + RUN_TIMEOUT
    with cluster.instance() as instance:
        while time.monotonic() < deadline:
            if server.requested.is_set():
                runs = instance.get_runs(RunsFilter(tags={"dagster/partition": md5}))
                started = [s for s in steps_of(instance, runs) if s.pid is not None]
                if started:
                    return started[0]
            time.sleep(0.2)
    raise AssertionError(f"no step of {md5} started downloading within {RUN_TIMEOUT} s")


@pytest.fixture(scope="module")
def killed(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kill]:
    """A source whose download stalls; the pool process running its step is killed mid-step."""
    data = bed(99, records=3000)
    server = StallingServer(data)
    folder = tmp_path_factory.mktemp("stalled")
    md5 = md5_file(_write(folder / "slow.bed", data))
    manifest = folder / "stalled.tsv"
    manifest.write_text(f"name\turi\tmd5\tsize\nslow.bed\t{server.url('slow.bed')}\t{md5}\t"
                        f"{len(data)}\n")  # fmt: skip
    try:
        drop_manifest(manifest, cluster.manifests)
        step = _started_step(cluster, md5, server)
        workers = {cluster.worker(name).pid: name for name in cluster.deployments()}
        parent = _parent_of(step.pid)
        assert parent in workers, f"step pid {step.pid} is not a pool process of a worker"
        os.kill(step.pid, signal.SIGKILL)
        with cluster.instance() as instance:
            outcome = wait_for_runs(instance, {md5: "intervals"}, timeout=RUN_TIMEOUT)
            materializations = instance.fetch_materializations(
                AssetRecordsFilter(AssetKey(["intervals", "source"]), asset_partitions=[md5]),
                limit=10,
            ).records
        relpath = str(key_for("intervals", md5, "source").relpath)
        manager = DataManager(cluster.env()["GENOFLOW_REGISTRY_URL"], workdir=folder, locations=[])
        try:
            replicas = manager.get_data_locations(relpath)
        finally:
            manager.close()
        yield Kill(
            md5=md5,
            run_status=outcome.runs[0].status,
            killed_worker=workers[parent],
            published_in_caches=[
                str(path)
                for name in cluster.deployments()
                for path in (cluster.root / name / "cache" / relpath).parent.glob("[!.]*")
            ],
            objects_in_bucket=[
                str(path) for path in (cluster.gcs_root / BUCKET).rglob("*") if md5 in str(path)
            ],
            registered_replicas=len(replicas),
            materializations=len(materializations),
            server=server,
        )
    finally:
        server.stop()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_worker_killed_mid_step_fails_its_run(killed: Kill) -> None:
    assert killed.run_status == DagsterRunStatus.FAILURE


def test_a_worker_killed_mid_step_publishes_nothing(killed: Kill) -> None:
    assert killed.published_in_caches == []
    assert killed.objects_in_bucket == []
    assert killed.registered_replicas == 0
    assert killed.materializations == 0


def test_the_worker_of_a_killed_pool_process_stays_up(cluster: LocalCluster, killed: Kill) -> None:
    assert cluster.worker(killed.killed_worker).alive()


def test_a_rerun_after_a_killed_step_completes(cluster: LocalCluster, killed: Kill) -> None:
    killed.server.release.set()
    run_id = cluster.launch_chain("intervals", killed.md5)
    with cluster.instance() as instance:
        outcome = wait_for_runs(instance, {killed.md5: "intervals"}, timeout=RUN_TIMEOUT)
        rerun = next(run for run in outcome.runs if run.run_id == run_id)
        steps = steps_of(instance, [rerun])
    assert rerun.status == DagsterRunStatus.SUCCESS
    built = sorted(step.asset for step in asset_steps(steps) if step.cache == "miss")
    assert built == ["intervals/index", "intervals/sorted", "intervals/source"]
    assert all(step.passed for step in steps if step.passed is not None)


def test_a_second_manifest_reuses_every_artifact_wherever_it_was_built(
    cluster: LocalCluster, first_build: Build, tmp_path_factory: pytest.TempPathFactory
) -> None:
    files = {f"copy-of-{name}": make() for name, make in SOURCES.items()}
    manifest = write_manifest(tmp_path_factory.mktemp("second"), "second", files)
    assert partitions_of(manifest) == first_build.partitions
    drop_manifest(manifest, cluster.manifests)
    _wait_until_registered(cluster, first_build.partitions, "second.tsv")
    launched = [cluster.launch_chain(family, md5) for md5, family in first_build.partitions.items()]
    with cluster.instance() as instance:
        outcome = wait_for_runs(instance, first_build.partitions, timeout=RUN_TIMEOUT)
        from_sensor = [
            run
            for run in outcome.runs
            if run.tags.get("genoflow/manifest", "").startswith("second")
        ]
        steps = steps_of(instance, [run for run in outcome.runs if run.run_id in launched])
    assert from_sensor == []
    built_or_reused = {(step.asset, step.partition) for step in asset_steps(steps)}
    assert built_or_reused == expected_artifacts(first_build.partitions)
    assert {step.cache for step in asset_steps(steps)} <= {"hit", "transferred"}
    assert all(step.passed for step in steps if step.passed is not None)


def _wait_until_registered(cluster: LocalCluster, md5s: dict[str, str], manifest: str) -> None:
    """Until the sensor has registered a row of ``manifest`` for every md5 (bounded)."""
    registry = Registry(cluster.env()["GENOFLOW_REGISTRY_URL"])
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        while time.monotonic() < deadline:
            rows = registry.rows()
            seen = {row.md5 for row in rows if Path(row.manifest).name == manifest}
            if seen >= set(md5s):
                return
            time.sleep(0.5)
    finally:
        registry.close()
    raise AssertionError(f"the sensor did not register {manifest} within {RUN_TIMEOUT} s")
