"""genoflow's run launcher (genoflow/instance/launcher.py): runs launched through a real Dagster
instance execute in forked workers and publish; a SIGKILLed worker fails its run; termination
cancels; run monitoring fails the run of a launcher that died (a real ``dagster-daemon``); an
existing home with the earlier ``dagster.yaml`` still loads; GENOFLOW_DAEMON_RUNS."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus

from genoflow.core.settings import ConfigError, Settings, daemon_runs
from genoflow.defs.tags import WORKER
from genoflow.instance.home import _GENERATED, dagster_storage_yaml, ensure_dagster_home
from genoflow.manifests.reading import read_manifests
from genoflow.storage.registry import Registry

REPO = Path(__file__).resolve().parent.parent
BED = REPO / "data" / "manifests" / "demo" / "enhancers.bed"
# The embedded dagster.yaml as genoflow wrote it before it named a run launcher.
OLD_HEADER = "telemetry:\n  enabled: false\n"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("GENOFLOW_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.setenv("GENOFLOW_THREADS", "1")
    monkeypatch.delenv("GENOFLOW_DAEMON_RUNS", raising=False)
    return home


def _settings(home: Path) -> Settings:
    return Settings.from_env({"GENOFLOW_HOME": str(home), "GENOFLOW_THREADS": "1"})


def _register(home: Path, name: str, *, uri: str | None = None) -> str:
    """Register a small BED file in ``home`` (or, with ``uri``, a source read from there);
    returns its md5."""
    path = home / name
    if uri is None:
        shutil.copy(BED, path)
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
    else:
        md5 = hashlib.md5(name.encode()).hexdigest()
    manifest = home / f"{name}.tsv"
    manifest.write_text(f"name\turi\tmd5\tformat\n{name}\t{uri or path}\t{md5}\tbed\n")
    with Registry(_settings(home).registry_target) as registry:
        registry.register(read_manifests([manifest]).rows)
    return md5


@pytest.fixture
def endless() -> Iterator[str]:
    """The URL of a server that answers a large body one byte a second, for as long as the
    test lasts: a run staging it stays in its first step."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle(connection: socket.socket) -> None:
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
            while not stop.wait(1.0):
                try:
                    connection.sendall(b"x")
                except OSError:
                    return

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=trickle, args=(connection,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/stuck.bed"
    stop.set()
    server.close()


@pytest.fixture
def instance(home: Path) -> Iterator[DagsterInstance]:
    with DagsterInstance.from_config(str(ensure_dagster_home(_settings(home)))) as instance:
        yield instance


def _create(instance: DagsterInstance, md5: str) -> str:
    from genoflow.instance.launch import create_run

    run_id = str(uuid.uuid4())
    create_run(instance, md5, "intervals", run_id, owner="test")
    return run_id


def _until(
    what: Callable[[], object], timeout: float = 120.0, every: float = 0.1, why: str = ""
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"not within {timeout} s: {why}")


def _ended(instance: DagsterInstance, run_id: str, timeout: float = 120.0):
    return _until(
        lambda: (run := instance.get_run_by_id(run_id)) and run.is_finished and run,
        timeout,
        why=f"run {run_id} ended",
    )


def _worker(instance: DagsterInstance, run_id: str) -> int:
    """The pid of the run's worker, once the run started and the worker recorded itself."""
    run = _until(
        lambda: (
            (r := instance.get_run_by_id(run_id)).status == DagsterRunStatus.STARTED
            and WORKER in r.tags
            and r
        ),
        why="the run started in its worker",
    )
    return int(run.tags[WORKER].rpartition(":")[2])


def _published(home: Path, md5: str) -> list[str]:
    return sorted(p.parent.parent.name for p in home.glob(f"cache/*/*/{md5}/*/*/genoflow.json"))


def test_a_launched_run_is_executed_by_a_forked_worker_and_publishes_its_artifacts(
    home: Path, instance: DagsterInstance
) -> None:
    from genoflow.instance.launcher import ForkRunLauncher

    assert isinstance(instance.run_launcher, ForkRunLauncher)
    md5 = _register(home, "enhancers.bed")
    run_id = _create(instance, md5)
    instance.launch_run(run_id, workspace=None)  # type: ignore[arg-type]
    run = _ended(instance, run_id)
    assert run.status == DagsterRunStatus.SUCCESS
    pid = run.tags[WORKER].rpartition(":")[2]
    assert pid.isdigit() and int(pid) != os.getpid()  # not in this process: in a worker
    assert _published(home, md5) == ["index", "sorted", "source"]
    messages = [e.message for e in instance.all_logs(run_id) if e.message]
    assert f"Started process for run (pid: {pid})." in messages


def test_a_run_whose_worker_is_sigkilled_ends_failed_saying_so(
    home: Path, instance: DagsterInstance, endless: str
) -> None:
    from genoflow.instance.launch import run_error

    run_id = _create(instance, _register(home, "stuck.bed", uri=endless))
    instance.launch_run(run_id, workspace=None)  # type: ignore[arg-type]
    os.kill(_worker(instance, run_id), signal.SIGKILL)
    run = _ended(instance, run_id, timeout=30)
    assert run.status == DagsterRunStatus.FAILURE
    assert "was killed by SIGKILL before its run finished" in run_error(instance, run_id)


def test_terminate_ends_a_running_run_canceled_and_its_worker_with_it(
    home: Path, instance: DagsterInstance, endless: str
) -> None:
    run_id = _create(instance, _register(home, "stuck.bed", uri=endless))
    instance.launch_run(run_id, workspace=None)  # type: ignore[arg-type]
    pid = _worker(instance, run_id)
    assert instance.run_launcher.terminate(run_id)
    run = _ended(instance, run_id, timeout=60)
    assert run.status == DagsterRunStatus.CANCELED
    _until(lambda: not Path(f"/proc/{pid}").exists(), 30, why="the worker is gone")
    assert not instance.run_launcher.terminate(run_id)  # an ended run: nothing to stop


def test_worker_health_is_running_while_the_worker_lives_and_failed_once_it_is_gone(
    home: Path, instance: DagsterInstance, endless: str
) -> None:
    from dagster._core.launcher import WorkerStatus

    run_id = _create(instance, _register(home, "stuck.bed", uri=endless))
    instance.launch_run(run_id, workspace=None)  # type: ignore[arg-type]
    pid = _worker(instance, run_id)
    # Another process's view (a restarted daemon): a launcher that forked nothing itself.
    with DagsterInstance.from_config(instance.root_directory) as other:
        run = other.get_run_by_id(run_id)
        assert other.run_launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
        os.kill(pid, signal.SIGKILL)
        _until(lambda: not Path(f"/proc/{pid}").exists(), 30, why="the worker is reaped")
        health = other.run_launcher.check_run_worker_health(run)
    assert health.status == WorkerStatus.FAILED
    assert f"{run.tags[WORKER]} is gone" in (health.msg or "")
    assert _ended(instance, run_id, timeout=30).status == DagsterRunStatus.FAILURE


def _daemon(home: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-m",
             "genoflow.definitions"],
            env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _stop(daemon: subprocess.Popen, how: signal.Signals = signal.SIGTERM) -> None:
    try:
        os.killpg(daemon.pid, how)
        daemon.wait(timeout=60)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait(timeout=10)


@pytest.mark.system
def test_the_daemon_launches_queued_runs_and_a_restarted_daemon_fails_the_run_of_the_dead_one(
    home: Path,
    instance: DagsterInstance,
    endless: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GENOFLOW_MANIFESTS", str(tmp_path / "watched"))
    (tmp_path / "watched").mkdir()
    good = _create(instance, _register(home, "enhancers.bed"))
    stuck = _create(instance, _register(home, "stuck.bed", uri=endless))
    for run_id in (good, stuck):
        instance.submit_run(run_id, workspace=None)  # type: ignore[arg-type]
        assert instance.get_run_by_id(run_id).status == DagsterRunStatus.QUEUED
    log = tmp_path / "daemon.log"
    daemon = _daemon(home, log)
    try:
        assert _ended(instance, good, timeout=180).status == DagsterRunStatus.SUCCESS
        pid = _worker(instance, stuck)
        _stop(daemon, signal.SIGKILL)  # the launcher dies at once: its worker follows it
        _until(lambda: not Path(f"/proc/{pid}").exists(), 30, why="the worker died with it")
        assert instance.get_run_by_id(stuck).status == DagsterRunStatus.STARTED
        daemon = _daemon(home, log)
        run = _ended(instance, stuck, timeout=180)
    finally:
        _stop(daemon)
    assert run.status == DagsterRunStatus.FAILURE
    failure = [e.message for e in instance.all_logs(stuck) if e.message and "is gone" in e.message]
    assert failure, log.read_text()[-3000:]


def test_a_home_with_the_earlier_dagster_yaml_loads_its_runs_with_the_launcher_after_update(
    home: Path,
) -> None:
    from dagster._core.launcher import DefaultRunLauncher

    from genoflow.instance.launcher import ForkRunLauncher, RunQueue

    dagster_home = home / "dagster"
    dagster_home.mkdir()
    config = dagster_home / "dagster.yaml"
    config.write_text(_GENERATED + OLD_HEADER + dagster_storage_yaml(dagster_home))
    with DagsterInstance.from_config(str(dagster_home)) as old:
        assert isinstance(old.run_launcher, DefaultRunLauncher)  # the old file loads as it was
        run_id = _create(old, _register(home, "enhancers.bed"))
    ensure_dagster_home(_settings(home))
    assert "ForkRunLauncher" in config.read_text()
    with DagsterInstance.from_config(str(dagster_home)) as updated:
        assert isinstance(updated.run_launcher, ForkRunLauncher)
        assert isinstance(updated.run_coordinator, RunQueue)
        assert updated.get_run_by_id(run_id).status == DagsterRunStatus.NOT_STARTED


def test_a_deployments_own_dagster_yaml_keeps_its_launcher(home: Path) -> None:
    from dagster._core.launcher import DefaultRunLauncher

    dagster_home = home / "dagster"
    dagster_home.mkdir()
    own = OLD_HEADER + dagster_storage_yaml(dagster_home)
    (dagster_home / "dagster.yaml").write_text(own)
    ensure_dagster_home(_settings(home))
    assert (dagster_home / "dagster.yaml").read_text() == own
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        assert isinstance(instance.run_launcher, DefaultRunLauncher)


def test_the_run_queue_keeps_genoflow_daemon_runs_in_flight(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENOFLOW_DAEMON_RUNS", "3")
    with DagsterInstance.from_config(str(ensure_dagster_home(_settings(home)))) as instance:
        assert instance.run_coordinator.get_run_queue_config().max_concurrent_runs == 3
        from genoflow.instance.launcher import DEQUEUE_SECONDS

        assert instance.run_coordinator.dequeue_interval_seconds == DEQUEUE_SECONDS < 1
        assert instance.run_monitoring_enabled
    assert daemon_runs({}) == (os.cpu_count() or 1)
    with pytest.raises(ConfigError, match="GENOFLOW_DAEMON_RUNS=0"):
        daemon_runs({"GENOFLOW_DAEMON_RUNS": "0"})
