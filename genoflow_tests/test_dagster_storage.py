"""The embedded instance's storages: Dagster's SQLite files, opened once a process, created
once across processes."""

from __future__ import annotations

import os
import sqlite3
import sys
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    Definitions,
    MaterializeResult,
    asset,
    define_asset_job,
)
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage

from genoflow.core.settings import Settings
from genoflow.instance.home import dagster_yaml, ensure_dagster_home
from genoflow.instance.storage import (
    MAX_SHARD_ENGINES,
    ComputeLogManager,
    EventLogStorage,
    RunStorage,
    ScheduleStorage,
)
from genoflow_tests.support.processes import race


@asset
def tiny() -> MaterializeResult:
    return MaterializeResult(metadata={"rows": 3})


@asset
def talkative() -> None:
    """Writes to both streams at the descriptor level, as a native tool would, and records
    which processes this one has started meanwhile."""
    os.write(1, b"to stdout from the step\n")
    os.write(2, b"to stderr from the step\n")
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    if children.exists():
        pids = children.read_text().split()
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in pids]
        echoes = [c for c in commands if c.startswith(b"tail\0") or b"watch_orphans" in c]
        os.write(2, f"echo processes: {len(echoes)}\n".encode())


JOB = Definitions(assets=[tiny], jobs=[define_asset_job("tiny_job")]).resolve_job_def("tiny_job")
TALK = Definitions(assets=[talkative], jobs=[define_asset_job("talk")]).resolve_job_def("talk")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    settings = Settings.from_env({"GENOFLOW_HOME": str(tmp_path / "home")})
    dagster_home = ensure_dagster_home(settings)
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    return dagster_home


def _schema(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        tables = db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
        stamp = db.execute("SELECT version_num FROM alembic_version").fetchall()
    return [*tables, *stamp]


def test_genoflows_instance_uses_its_storages(home: Path) -> None:
    instance = DagsterInstance.get()
    assert type(instance.run_storage) is RunStorage
    assert type(instance.event_log_storage) is EventLogStorage
    assert type(instance.schedule_storage) is ScheduleStorage
    result = JOB.execute_in_process(instance=instance)
    assert result.success
    assert (home / "history" / "runs.db").is_file()
    assert (home / "history" / "runs" / f"{result.run_id}.db").is_file()
    assert (home / "history" / "runs" / "index.db").is_file()


def test_a_runs_output_is_captured_for_the_ui_and_echoed_without_echo_processes(
    home: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """stdout and stderr of a run land in the compute-log files the UI reads and still reach
    the process's own streams, with no ``tail`` or watcher process started to echo them (four
    a run with Dagster's own manager)."""
    # The process's own streams, as a run has them (pytest puts objects without a descriptor).
    monkeypatch.setattr(sys, "stdout", sys.__stdout__)
    monkeypatch.setattr(sys, "stderr", sys.__stderr__)
    instance = DagsterInstance.get()
    assert type(instance.compute_log_manager) is ComputeLogManager
    result = TALK.execute_in_process(instance=instance)
    assert result.success
    logs = home / "storage" / result.run_id / "compute_logs"
    assert b"to stdout from the step" in b"".join(p.read_bytes() for p in logs.glob("*.out"))
    err = b"".join(p.read_bytes() for p in logs.glob("*.err"))
    assert b"to stderr from the step" in err
    if Path("/proc/self/task").exists():
        assert b"echo processes: 0" in err, err
    assert list(logs.glob("*.complete"))  # the UI stops waiting for more
    echoed = capfd.readouterr()  # what reached the descriptors 1 and 2 themselves
    assert "to stdout from the step" in echoed.out
    assert "to stderr from the step" in echoed.err


def test_runs_read_back_with_dagsters_own_storages_and_the_other_way(home: Path) -> None:
    ours = DagsterInstance.get()
    first = JOB.execute_in_process(instance=ours)
    ours.dispose()

    config = home / "dagster.yaml"
    config.write_text("telemetry:\n  enabled: false\n")  # Dagster's default storages
    plain = DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    assert type(plain.event_log_storage) is SqliteEventLogStorage
    assert type(plain.run_storage) is SqliteRunStorage
    assert plain.get_run_by_id(first.run_id).is_success
    event = plain.get_latest_materialization_event(AssetKey("tiny"))
    assert event is not None and event.run_id == first.run_id
    assert event.asset_materialization.metadata["rows"].value == 3
    second = JOB.execute_in_process(instance=plain)
    plain.dispose()

    config.write_text(dagster_yaml(home))
    again = DagsterInstance.get()
    assert again.get_run_by_id(second.run_id).is_success
    assert again.get_latest_materialization_event(AssetKey("tiny")).run_id == second.run_id
    assert {r.run_id for r in again.get_runs()} == {first.run_id, second.run_id}


def test_a_new_run_database_is_exactly_dagsters(home: Path, tmp_path: Path) -> None:
    instance = DagsterInstance.get()
    ours = JOB.execute_in_process(instance=instance).run_id
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    plain = DagsterInstance.from_ref(InstanceRef.from_dir(str(plain_dir)))
    theirs = JOB.execute_in_process(instance=plain).run_id
    assert _schema(home / "history" / "runs" / f"{ours}.db") == _schema(
        plain_dir / "history" / "runs" / f"{theirs}.db"
    )
    with sqlite3.connect(home / "history" / "runs" / f"{ours}.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("SELECT count(*) FROM event_logs").fetchone()[0] > 0


def test_a_run_database_made_elsewhere_is_not_replaced(home: Path) -> None:
    storage = DagsterInstance.get().event_log_storage
    assert isinstance(storage, EventLogStorage)
    path = Path(storage.path_for_shard("someone-else"))
    path.write_bytes(b"")
    assert storage._create_shard("someone-else") is False
    assert path.read_bytes() == b""
    assert storage._create_shard("fresh") is True
    assert storage._create_shard("fresh") is False
    assert not list(path.parent.glob("*.partial"))


def test_engines_of_old_runs_are_closed(home: Path) -> None:
    instance = DagsterInstance.get()
    storage = instance.event_log_storage
    assert isinstance(storage, EventLogStorage)
    runs = [JOB.execute_in_process(instance=instance).run_id for _ in range(3)]
    for run_id in runs:
        assert len(instance.all_logs(run_id)) > 0
    for index in range(MAX_SHARD_ENGINES + 5):
        storage._shard_engine(f"run-{index}")
    assert len(storage._engines) == MAX_SHARD_ENGINES + 1  # and the index's
    assert "index" in storage._engines
    instance.dispose()
    assert not storage._engines


def test_wipe_closes_connections_before_deleting_databases(home: Path) -> None:
    instance = DagsterInstance.get()
    run_id = JOB.execute_in_process(instance=instance).run_id
    instance.wipe()
    assert not (home / "history" / "runs" / f"{run_id}.db").exists()
    assert instance.get_runs() == []
    assert JOB.execute_in_process(instance=instance).success


def test_an_earlier_genoflow_dagster_yaml_is_brought_up_to_date(tmp_path: Path) -> None:
    settings = Settings.from_env({"GENOFLOW_HOME": str(tmp_path)})
    settings.dagster_home.mkdir(parents=True)
    config = settings.dagster_home / "dagster.yaml"
    config.write_text(
        "# Written by genoflow for the embedded single-machine instance (SQLite storage).\n"
        "telemetry:\n  enabled: false\n"
    )
    ensure_dagster_home(settings)
    assert config.read_text() == dagster_yaml(settings.dagster_home)
    assert not list(settings.dagster_home.glob(".dagster.yaml.*"))


def test_a_users_own_dagster_yaml_is_left_alone(tmp_path: Path) -> None:
    settings = Settings.from_env({"GENOFLOW_HOME": str(tmp_path)})
    settings.dagster_home.mkdir(parents=True)
    config = settings.dagster_home / "dagster.yaml"
    config.write_text("telemetry:\n  enabled: false\n")
    ensure_dagster_home(settings)
    assert config.read_text() == "telemetry:\n  enabled: false\n"


def _open_new_instances_together(homes: list[str], barrier: Barrier, results: Queue) -> None:
    """For each home, open its new instance's storages at the same moment as every rival."""
    outcomes = []
    for home in homes:
        try:
            barrier.wait(timeout=120)
            instance = DagsterInstance.from_ref(InstanceRef.from_dir(home))
            instance.get_runs(limit=1)
            instance.get_latest_materialization_events([AssetKey("tiny")])
            assert instance.schedule_storage is not None
            instance.schedule_storage.all_instigator_state()
            instance.dispose()
            outcomes.append("ok")
        except Exception as exc:  # sent to the parent, which fails the test with it
            outcomes.append(repr(exc))
    results.put(outcomes)


def test_processes_opening_a_new_instance_at_the_same_moment_all_succeed(tmp_path: Path) -> None:
    # The webserver, the daemon and a run creating a new instance's storages at once: before
    # the creation lock, one of four processes usually failed ("table runs already exists",
    # "UNIQUE constraint failed: alembic_version", two alembic heads).
    rounds, processes = 3, 4
    homes = [
        ensure_dagster_home(Settings.from_env({"GENOFLOW_HOME": str(tmp_path / f"round{n}")}))
        for n in range(rounds)
    ]
    arguments = [([str(h) for h in homes],)] * processes
    outcomes = race(_open_new_instances_together, arguments, timeout=280).outcomes

    failures = [o for outcome in outcomes for o in outcome if o != "ok"]
    assert failures == [], failures
    for home in homes:
        for database in ("history/runs.db", "history/runs/index.db", "schedules/schedules.db"):
            with sqlite3.connect(home / database) as db:
                assert db.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)


def test_a_new_database_is_created_unflushed_and_only_then(tmp_path: Path) -> None:
    """Creating a database that does not exist yet skips the flush per statement; any other
    connection, and one made after the creation, flushes as SQLite's default says."""
    from sqlalchemy import create_engine, text

    from genoflow.instance.storage import _engine, creating

    def synchronous(path: Path) -> int:
        engine = create_engine(f"sqlite:///{path}")
        with engine.connect() as conn:
            value = conn.execute(text("PRAGMA synchronous")).scalar()
        engine.dispose()
        return int(value)

    with creating(str(tmp_path), "new.db"):
        assert synchronous(tmp_path / "new.db") == 0  # OFF while it is created
        # ... but never on the pooled engines that serve the storages afterwards
        pooled = _engine(f"sqlite:///{tmp_path / 'new.db'}", timeout=5.0)
        with pooled.connect() as conn:
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
        pooled.dispose()
    assert (tmp_path / "new.db").is_file()
    assert synchronous(tmp_path / "new.db") == 2  # FULL, SQLite's default, after
    with creating(str(tmp_path), "new.db"):  # it exists now: opened as any other
        assert synchronous(tmp_path / "new.db") == 2


def test_a_status_written_by_another_process_is_read_at_once_on_a_fresh_home(
    home: Path,
) -> None:
    """Every pooled connection of a process sees what another process committed, from the
    first run of a new instance on (no connection keeps an old snapshot)."""
    import subprocess
    import sys

    from dagster import DagsterRunStatus
    from dagster._core.test_utils import create_run_for_test

    instance = DagsterInstance.get()
    run = create_run_for_test(instance, job_name="x")
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.NOT_STARTED
    child = (
        "from dagster import DagsterInstance\n"
        "i = DagsterInstance.get()\n"
        f"i.report_run_failed(i.get_run_by_id({run.run_id!r}), 'stopped')\n"
    )
    subprocess.run([sys.executable, "-c", child], check=True, timeout=120)
    for _ in range(4):  # both pooled connections, twice
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE


def test_the_migration_head_is_found_once_a_process_and_each_databases_revision_every_time(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening an instance asks for the migration head five times; the installed scripts are
    loaded for the first answer of the process only, while each database's own revision is
    read every time (an out-of-date database is still told apart)."""
    from alembic.script import ScriptDirectory
    from dagster._core.storage.runs.sqlite import sqlite_run_storage
    from dagster._core.storage.sql import get_alembic_config

    from genoflow.instance import storage as genoflow_storage

    loads = []
    real = ScriptDirectory.from_config
    monkeypatch.setattr(genoflow_storage, "_ALEMBIC_HEADS", {})
    monkeypatch.setattr(
        ScriptDirectory, "from_config", staticmethod(lambda c: loads.append(c) or real(c))
    )
    DagsterInstance.get().get_runs(limit=1)  # creates the databases (stamping loads scripts)
    loads.clear()
    instance = DagsterInstance.from_config(str(home))  # opens them again: five head checks
    instance.get_runs(limit=1)
    assert loads == []
    config = get_alembic_config(sqlite_run_storage.__file__)
    head = real(config).as_revision_number("head")
    with instance.run_storage.connect() as conn:
        assert sqlite_run_storage.check_alembic_revision(config, conn) == (head, head)
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'older'")
        assert sqlite_run_storage.check_alembic_revision(config, conn) == ("older", head)
        conn.rollback()
