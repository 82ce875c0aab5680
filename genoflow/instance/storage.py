"""Dagster's SQLite run and event-log storages, without rebuilding a database per statement.

Dagster's embedded storages create a SQLAlchemy engine and open (then close, checkpointing the
WAL) a SQLite connection for every statement, and create each run's event database with one
DDL statement per table after loading every alembic migration script. A run of one small file
writes about fifty events, so that bookkeeping, not the work, dominated ``genoflow run`` on many
small files. These subclasses keep Dagster's files, tables and layout (an instance can switch
between them and Dagster's classes either way) and change only how they are opened:

- one engine per database for the process, whose connections are kept in a pool;
- ``synchronous=NORMAL`` in WAL mode: a commit is not flushed to disk on its own; a process
  killed at any moment loses nothing committed, a power cut may lose the last commits, never the
  database (https://www.sqlite.org/wal.html#performance_considerations);
- a new run's database is a copy of an empty one this process created through Dagster's own
  initialisation, so it has exactly Dagster's schema and migration stamp.

Creating an instance's databases is idempotent across processes. Dagster's SQLite storages check
whether their tables exist and then create them, so the webserver, the daemon and a run opening
a new instance at the same moment both saw none, and one failed with "table runs already
exists" (or stamped the migration version twice, which breaks the database for good). Every
process opening a database through these classes holds a lock file beside it
(``.runs.db.lock``, ``.index.db.lock``, ``.schedules.db.lock``) while it checks and creates,
and retries what a process not taking the lock (Dagster's own classes) can still cause.

``genoflow/core/settings.py`` names them, with Dagster's own folders for them (``history``,
``history/runs`` and ``schedules`` in the instance folder), in the ``dagster.yaml`` it writes
for the embedded instance.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from dagster import StringSource
from dagster._core.execution.compute_logs import redirect_to_file
from dagster._core.storage import sql as dagster_sql
from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
from dagster._core.storage.event_log.sqlite import sqlite_event_log as sqlite_event_module
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SQLITE_BUSY_TIMEOUT_SECONDS,
    SqliteEventLogStorage,
)
from dagster._core.storage.local_compute_log_manager import (
    IO_TYPE_EXTENSION,
    LocalComputeLogManager,
)
from dagster._core.storage.runs.sqlite import sqlite_run_storage as sqlite_run_module
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.schedules.sqlite import sqlite_schedule_storage as sqlite_schedule_module
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage
from dagster._core.storage.sqlite import create_db_conn_string
from dagster._serdes import ConfigurableClassData
from filelock import FileLock, Timeout
from sqlalchemy import create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from genoflow.core.errors import StorageError

# Run databases whose engines (and pooled connections) a process keeps, besides the index: a
# long-lived webserver reads many runs; the least recently used ones are closed.
MAX_SHARD_ENGINES = 16
# Seconds a process waits for another one to finish creating an instance's database.
CREATION_TIMEOUT = 120.0
# What a concurrent creation by a process that does not take the lock looks like.
_CONCURRENT_CREATION = re.compile(
    r"table \w+ already exists|database is locked|UNIQUE constraint failed: alembic_version"
)
_T = TypeVar("_T")


def _check_alembic_revision(alembic_config: Any, conn: Connection) -> tuple[Any, Any]:
    """Dagster's ``check_alembic_revision``, with the head revision found once per process.

    Dagster asks for it five times when an instance opens (runs, index and schedules share one
    migration folder), each time loading every migration script of the installed Dagster
    (~400 modules), about a third of a second in all. The installed scripts do not change while
    a process runs, so the head is remembered per script folder; the database's own revision is
    still read every time.
    """
    with dagster_sql._alembic_lock:
        db_revision = MigrationContext.configure(conn).get_current_revision()
        location = alembic_config.get_main_option("script_location")
        if location not in _ALEMBIC_HEADS:
            script = ScriptDirectory.from_config(alembic_config)
            _ALEMBIC_HEADS[location] = script.as_revision_number("head")
    return db_revision, _ALEMBIC_HEADS[location]


_ALEMBIC_HEADS: dict[str, Any] = {}
for _module in (sqlite_run_module, sqlite_event_module, sqlite_schedule_module):
    _module.check_alembic_revision = _check_alembic_revision  # type: ignore[attr-defined]


# Seconds between two copies of a run's captured output to the process's own streams.
ECHO_SECONDS = 0.5


@contextmanager
def _echoed(stream: Any, path: str) -> Iterator[None]:
    """Point ``stream``'s descriptor at ``path`` while an :class:`_Echo` copies what lands there
    to where the descriptor pointed before (a stream without a descriptor is left alone, as
    Dagster's ``redirect_to_file`` leaves it)."""
    try:
        original = os.dup(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no descriptor (a test's captured stream)
        with redirect_to_file(stream, path):
            yield
        return
    start = os.path.getsize(path) if os.path.exists(path) else 0
    echo = _Echo(path, original, start)
    try:
        echo.start()
        with redirect_to_file(stream, path):
            yield
    finally:
        echo.finish()  # after the descriptor points back: the file holds everything written
        os.close(original)


class _Echo(threading.Thread):
    """Copies a growing file's new bytes to a descriptor until :meth:`finish`."""

    def __init__(self, path: str, target: int, start: int) -> None:
        super().__init__(name="genoflow-echo", daemon=True)
        self.path, self.target, self.offset = path, target, start
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(ECHO_SECONDS):
            self._copy()
        self._copy()

    def finish(self) -> None:
        self.stopped.set()
        if self.is_alive():
            self.join()

    def _copy(self) -> None:
        try:
            with open(self.path, "rb") as source:
                source.seek(self.offset)
                while chunk := source.read(1 << 16):
                    self.offset += len(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(self.target, view) :]
        except OSError:  # the stream was closed (a broken pipe): stop echoing, keep the file
            self.stopped.set()


# Set while this thread creates a database that did not exist (see :func:`creating`).
_CREATING = threading.local()


@event.listens_for(Engine, "connect")
def _unflushed_while_creating(dbapi_connection: Any, _record: Any) -> None:
    """Dagster creates a database with one statement per table and index, each its own
    transaction flushed to disk: ~100 flushes, seconds on a busy disk, before a fresh home's
    first run. While a new database is created (:func:`creating`), its statements are not
    flushed one by one."""
    if getattr(_CREATING, "active", False) and isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.execute("PRAGMA synchronous=OFF")


@contextmanager
def creating(base_dir: str, database: str) -> Iterator[None]:
    """Hold ``{base_dir}/.{database}.lock`` while ``database`` there is checked and created.

    A database that does not exist yet is created by Dagster's own engines without a flush per
    statement (a crash during creation leaves an unusable file either way). Nothing here opens
    the file itself: closing any descriptor of a SQLite file drops every POSIX lock the process
    holds on it, which lets another process read a stale snapshot. The pooled engines that
    serve the storages afterwards set ``synchronous=NORMAL`` on every connection they make
    (:func:`_engine`, whose listener runs after this one), so no connection used after creation
    runs unflushed; SQLite's first checkpoint writes the new file to disk.

    Args:
        base_dir: the storage's folder (created if missing).
        database: the database's file name, e.g. ``runs.db``.

    Raises:
        StorageError: the folder cannot be written, or another process held the lock for longer
            than ``CREATION_TIMEOUT``.
    """
    lock_path = os.path.join(base_dir, f".{database}.lock")
    try:
        os.makedirs(base_dir, exist_ok=True)
        lock = FileLock(lock_path, timeout=CREATION_TIMEOUT)
        lock.acquire()
    except Timeout as exc:
        raise StorageError(
            f"another process has been creating {database} for more than {CREATION_TIMEOUT:g} s",
            file=lock_path,
            stage="instance",
            hint="wait for the other genoflow or Dagster process to finish (or stop it), then "
            "run again",
        ) from exc
    except OSError as exc:
        raise StorageError(
            f"the Dagster instance folder cannot be written: {exc.strerror or exc}",
            file=base_dir,
            stage="instance",
            hint="make GENOFLOW_HOME a writable folder, then run again",
        ) from exc
    path = os.path.join(base_dir, database)
    new = not os.path.exists(path)
    _CREATING.active = new
    try:
        yield
    finally:
        _CREATING.active = False
        lock.release()


def created(create: Callable[[], _T]) -> _T:
    """``create()``, retried with backoff while it fails the way a concurrent creation does.

    Args:
        create: opens (and if need be creates) one database.
    """
    deadline = time.monotonic() + CREATION_TIMEOUT
    delay = 0.05
    while True:
        try:
            return create()
        except (sa_exc.DatabaseError, sqlite3.DatabaseError) as exc:
            if not _CONCURRENT_CREATION.search(str(exc)) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def _engine(conn_string: str, timeout: float) -> Engine:
    """An engine whose connections are pooled and commit without flushing (WAL, NORMAL)."""
    engine = create_engine(conn_string, pool_size=2, connect_args={"timeout": timeout})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    return engine


class _InFolder:
    """Configured by ``base_dir``, as Dagster's SQLite storages are."""

    @classmethod
    def config_type(cls) -> Mapping[str, Any]:
        return {"base_dir": StringSource}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> Any:
        return cls.in_folder(config_value["base_dir"], inst_data)

    @classmethod
    def in_folder(cls, base_dir: str, inst_data: ConfigurableClassData | None) -> Any:
        raise NotImplementedError


class RunStorage(_InFolder, SqliteRunStorage):
    """Dagster's SQLite run storage (``history/runs.db``), one pooled engine a process."""

    def __init__(self, conn_string: str, inst_data: ConfigurableClassData | None = None):
        super().__init__(conn_string, inst_data)
        # sqlite3's own default busy timeout, as Dagster's run storage uses.
        self._engine = _engine(conn_string, timeout=5.0)

    @classmethod
    def in_folder(cls, base_dir: str, inst_data: ConfigurableClassData | None) -> RunStorage:
        with creating(base_dir, "runs.db"):
            return created(lambda: cls.from_local(base_dir, inst_data=inst_data))

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        with self._engine.connect() as conn, conn.begin():
            yield conn

    def dispose(self) -> None:
        self._engine.dispose()
        super().dispose()


class EventLogStorage(_InFolder, SqliteEventLogStorage):
    """Dagster's SQLite event log (``history/runs/<run id>.db`` and ``index.db``)."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._engines_lock = threading.Lock()
        self._template: str | None = None
        self._tables: set[str] = set()
        # Dagster creates index.db here when the file is missing (a second process seeing the
        # file another one is still creating skipped straight to using it).
        with creating(os.path.abspath(base_dir), f"{INDEX_SHARD_NAME}.db"):
            created(lambda: super(EventLogStorage, self).__init__(base_dir, inst_data))

    @classmethod
    def in_folder(cls, base_dir: str, inst_data: ConfigurableClassData | None) -> EventLogStorage:
        return cls(base_dir, inst_data)

    def _shard_engine(self, shard: str) -> Engine:
        with self._engines_lock:
            engine = self._engines.get(shard)
            if engine is not None:
                self._engines.move_to_end(shard)
                return engine
            engine = _engine(self.conn_string_for_shard(shard), SQLITE_BUSY_TIMEOUT_SECONDS)
            self._engines[shard] = engine
            runs = [name for name in self._engines if name != INDEX_SHARD_NAME]
            for name in runs[: max(0, len(runs) - MAX_SHARD_ENGINES)]:
                self._engines.pop(name).dispose()
            return engine

    def has_table(self, table_name: str) -> bool:
        """Whether the index database has ``table_name``, over the pooled engine.

        Dagster asks this before every dynamic-partition query (about 25 times per chain run),
        each time through a new engine and connection. A table found is remembered until
        :meth:`wipe`: nothing else drops one from an instance in use.
        """
        if table_name in self._tables:
            return True
        engine = self._shard_engine(INDEX_SHARD_NAME)
        with engine.connect() as conn:
            found = bool(engine.dialect.has_table(conn, table_name))
        if found:
            self._tables.add(table_name)
        return found

    def _empty_shard(self) -> str:
        """An empty run database made by Dagster's own initialisation, once a process."""
        if self._template is None:
            folder = tempfile.mkdtemp(prefix="genoflow-shard-")
            weakref.finalize(self, shutil.rmtree, folder, True)
            engine = create_engine(create_db_conn_string(folder, "empty"), poolclass=NullPool)
            _CREATING.active = True  # a template, copied into place: nothing to flush
            try:
                self._initdb(engine)
            finally:
                _CREATING.active = False
            engine.dispose()
            self._template = os.path.join(folder, "empty.db")
        return self._template

    def _create_shard(self, shard: str) -> bool:
        """Create a new run's database as a copy of the empty one; False if it exists."""
        path = self.path_for_shard(shard)
        if shard == INDEX_SHARD_NAME or os.path.exists(path):
            return False
        partial = f"{path}.{os.getpid()}.{threading.get_ident()}.partial"
        shutil.copyfile(self._empty_shard(), partial)
        try:
            os.link(partial, path)  # never over a database another process just created
        except FileExistsError:
            return False
        finally:
            os.unlink(partial)
        return True

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            engine = self._shard_engine(shard)
            if shard not in self._initialized_dbs:
                if not self._create_shard(shard):
                    self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def _dispose_engines(self) -> None:
        with self._engines_lock:
            while self._engines:
                self._engines.popitem()[1].dispose()

    def wipe(self) -> None:
        self._tables.clear()
        self._dispose_engines()  # no pooled connection to a database about to be deleted
        super().wipe()

    def dispose(self) -> None:
        self._dispose_engines()
        super().dispose()


class ScheduleStorage(_InFolder, SqliteScheduleStorage):
    """Dagster's SQLite schedule storage (``schedules/schedules.db``), created under the lock."""

    @classmethod
    def in_folder(cls, base_dir: str, inst_data: ConfigurableClassData | None) -> ScheduleStorage:
        with creating(base_dir, "schedules.db"):
            return created(lambda: cls.from_local(base_dir, inst_data=inst_data))


class ComputeLogManager(LocalComputeLogManager):
    """Dagster's local compute logs (a run's stdout and stderr, shown by the UI), echoed to the
    process's own streams by a thread instead of by four processes a run.

    Dagster's own manager points each stream's file descriptor at its log file and starts
    ``tail -F`` on the file, plus a Python watcher process per ``tail``, to echo it back to the
    original stream: four processes for every run, most of the per-run cost of a small file.
    Here the descriptors are pointed at the same files, and a thread copies what lands in each
    file to the stream's original destination every :data:`ECHO_SECONDS` and once more when the
    run ends. The UI sees exactly the files it saw before, and a terminal still sees the run's
    output (gcsfs retries, htslib warnings) as it comes. Writers never wait for the echo: they
    write to a file, not a pipe, so a thread that is slow to get the interpreter lock never
    blocks a tool or a C extension writing to the stream.
    """

    @contextmanager
    def capture_logs(self, log_key: Sequence[str]) -> Generator[CapturedLogContext, None, None]:
        outpath = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDOUT])
        errpath = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDERR])
        for path in (outpath, errpath):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with _echoed(sys.stdout, outpath), _echoed(sys.stderr, errpath):
            yield CapturedLogContext(log_key)
        # Dagster's marker that the capture is complete (the UI stops polling).
        with open(self.complete_artifact_path(log_key), "a"):
            pass

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> ComputeLogManager:
        return cls(inst_data=inst_data, **config_value)
