"""The registry: which manifest rows name which source md5, and where artifacts have replicas.

SQL through SQLAlchemy Core: a SQLite file under ``GENOFLOW_HOME`` by default (WAL, a busy
timeout, and ``BEGIN IMMEDIATE`` for every transaction, reads included, so concurrent writers
queue instead of failing on lock upgrades), or PostgreSQL with the same schema when several
machines share it. A registry call waits out another process's lock (up to ``busy_timeout``
seconds) and never fails on contention; past that, its error says the database is busy, naming
SQLite's own error, never that it is unreachable.
Registering the same row twice is a no-op, so a manifest read again never duplicates rows. The
``location``/``artifact``/``replica`` tables belong to :mod:`genoflow.storage.replicas`; every
write there is an ``ON CONFLICT`` upsert, so racing writers converge on one row.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import random
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from genoflow.core.errors import StorageError, redact

metadata = sa.MetaData()
_DDL_LOCK = 0x67656E6F  # "geno": the advisory lock key taken while creating tables
# Seconds to wait for a PostgreSQL server to answer (libpq's connect_timeout) unless the URL
# sets one: without it, a host that accepts connections but never answers hangs every run.
CONNECT_TIMEOUT = 10
# Seconds a registry call waits for another process's lock on the SQLite file before failing.
BUSY_TIMEOUT = 60.0
# SQLite's primary result codes for a lock held elsewhere; extended codes keep them in the low byte.
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6

source_rows = sa.Table(
    "source_row",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("md5", sa.String(32), nullable=False, index=True),
    sa.Column("name", sa.Text, nullable=False, index=True),
    sa.Column("uri", sa.Text, nullable=False),
    sa.Column("format", sa.String(16), nullable=False),
    sa.Column("family", sa.String(16), nullable=False),
    sa.Column("size", sa.BigInteger),
    sa.Column("manifest", sa.Text, nullable=False),
    sa.Column("line", sa.Integer, nullable=False),
    sa.Column("extra", sa.Text, nullable=False, default="{}"),
    sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("md5", "name", "uri", "manifest", name="uq_source_row"),
)

locations = sa.Table(
    "location",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("root", sa.Text, nullable=False),
    sa.Column("is_local", sa.Boolean, nullable=False),
    sa.Column("deployment", sa.Text, nullable=False, index=True),
)

artifacts = sa.Table(
    "artifact",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.Text, nullable=False, unique=True),  # the cache relpath
    sa.Column("source_md5", sa.String(32), index=True),
    sa.Column("asset", sa.String(64)),
    sa.Column("version", sa.String(32)),
    sa.Column("processor", sa.Text),
    sa.Column("size", sa.BigInteger),
    sa.Column("checksum", sa.String(32)),
    sa.Column("marker", sa.Text),  # the genoflow.json text, once a replica was read
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

replicas = sa.Table(
    "replica",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("artifact_id", sa.ForeignKey("artifact.id"), nullable=False, index=True),
    sa.Column("location_id", sa.ForeignKey("location.id"), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("data_type", sa.String(16), nullable=False),
    sa.Column("link_target", sa.ForeignKey("replica.id", ondelete="SET NULL"), index=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("owner", sa.Text),  # host:pid while pending
    sa.Column("generation", sa.Text),  # the marker object's identity when registered
    sa.Column("verified_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("location_id", "path", name="uq_replica_location_path"),
)


@dataclass(frozen=True)
class SourceRow:
    """One manifest row as registered: where one copy of a source md5 can be read."""

    md5: str
    name: str
    uri: str
    format: str
    family: str
    size: int | None
    manifest: str
    line: int
    extra: dict[str, Any]


def is_busy(error: BaseException | None) -> bool:
    """Whether ``error`` is SQLite saying another connection holds the lock (SQLITE_BUSY or
    SQLITE_LOCKED, with any extended code), as opposed to a database that cannot be used.

    Args:
        error: a DBAPI exception (a SQLAlchemy error's ``orig``), or None.
    """
    code = getattr(error, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)


def _switch_to_wal(dbapi_connection: sqlite3.Connection, timeout: float) -> None:
    """``PRAGMA journal_mode=WAL``, retried with backoff while the database is busy.

    Switching a rollback-journal file to WAL needs its exclusive lock, and while another
    connection holds a write lock SQLite answers SQLITE_BUSY at once, without calling the busy
    handler (a wait could deadlock). Processes opening a new registry file at the same moment
    are each other's writers: without the retry, all but one failed with "database is locked"
    in a millisecond despite the 60 s busy timeout. Once the file is WAL the pragma is a no-op.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            dbapi_connection.execute("PRAGMA journal_mode=WAL").fetchall()
            return
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, 0.25)


def _sqlite_engine(url: str, busy_timeout: float) -> Engine:
    engine = sa.create_engine(url, connect_args={"timeout": busy_timeout})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook below issue BEGIN
        dbapi_connection.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        _switch_to_wal(dbapi_connection, busy_timeout)
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        # Every transaction, reads included, takes the write lock when it starts (waiting on
        # the busy handler): a deferred transaction upgraded to a write in WAL mode fails with
        # SQLITE_BUSY_SNAPSHOT at once, without waiting.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _server_engine(url: str) -> Engine:
    parsed = sa.engine.make_url(url)
    timeout = {}
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        timeout = {"connect_timeout": CONNECT_TIMEOUT}
    # A registry stays open for a whole Dagster run (genoflow/defs/resources.py): a connection the
    # server dropped meanwhile (a restart, an idle timeout) is replaced on checkout, as a fresh
    # engine per step would have done.
    return sa.create_engine(parsed, connect_args=timeout, pool_pre_ping=True)


class Registry:
    """Source rows by md5, in SQLite by default.

    A context manager: ``with Registry(url) as registry:`` disposes its engine (every pooled
    connection, so a SQLite file is no longer held open) on leaving the block, errors included.
    Closing twice is harmless.

    Args:
        url: a SQLAlchemy URL, or a filesystem path to a SQLite file.
        busy_timeout: seconds a call waits for another process's lock on a SQLite file.
    """

    def __init__(self, url: str | Path, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        url = str(url)
        if "://" not in url:
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{Path(url).resolve()}"
        self.url = url
        self.busy_timeout = busy_timeout
        if url.startswith("sqlite"):
            self.engine = _sqlite_engine(url, busy_timeout)
        else:
            self.engine = _server_engine(url)
        try:
            self._create_tables()
        except BaseException:
            self.engine.dispose()  # a registry that failed to open holds no connection
            raise

    def _create_tables(self) -> None:
        with self.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Concurrent CREATE TABLE on PostgreSQL races on its catalogue: serialize it.
                connection.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _DDL_LOCK}
                )
            metadata.create_all(connection)

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction; a server that cannot be reached becomes a StorageError (stage
        ``registry``) naming the registry without its password."""
        with self._reachable(), self.engine.begin() as connection:
            yield connection

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection for reading, with the same error as :meth:`begin`."""
        with self._reachable(), self.engine.connect() as connection:
            yield connection

    @contextlib.contextmanager
    def _reachable(self) -> Iterator[None]:
        try:
            yield
        except sa.exc.OperationalError as exc:
            raise self._error(exc) from exc

    def _error(self, exc: sa.exc.OperationalError) -> StorageError:
        """The StorageError for a database-side failure, keeping the driver's own words.

        OperationalError is the database's side (busy, down, unreachable, full); the statement's
        parameters are never shown, only the driver's first line, SQLite's error name and the
        statement's first words.
        """
        orig = exc.orig
        reason = str(orig).strip().splitlines()[0] if orig else type(exc).__name__
        name = getattr(orig, "sqlite_errorname", None)
        statement = " ".join((exc.statement or "").split()[:3]) or "opening a connection"
        detail = f"{reason} ({name + ', ' if name else ''}during {statement})"
        where = self.engine.url.render_as_string(hide_password=True)
        if is_busy(orig):
            return StorageError(
                f"the registry database is busy: another process kept it locked for more than "
                f"{self.busy_timeout:g} s: {detail}",
                file=where,
                stage="registry",
                hint="wait for the other genoflow process using this registry to finish (or "
                "stop it), then run again",
            )
        return StorageError(
            f"the registry cannot be used: {detail}",
            file=where,
            stage="registry",
            hint="check GENOFLOW_REGISTRY_URL and that its database server is running and "
            "reachable, then run again",
        )

    def register(self, rows: Iterable[Any]) -> int:
        """Record manifest rows (objects with the ManifestRow fields); return how many were new."""
        now = dt.datetime.now(dt.UTC)
        values = [
            {
                "md5": row.md5,
                "name": row.name,
                # A signed URL's token is never stored: staging re-reads it from the manifest.
                "uri": redact(row.uri),
                "format": row.format,
                "family": row.family,
                "size": row.size,
                "manifest": str(row.manifest),
                "line": row.line,
                "extra": json.dumps(dict(row.extra), sort_keys=True),
                "registered_at": now,
            }
            for row in rows
        ]
        if not values:
            return 0
        unique = ("md5", "name", "uri", "manifest")
        with self.begin() as connection:
            # A manifest read again after a small edit repeats most of its rows: reading the
            # rows already there is several times cheaper than inserting them all again.
            manifests = sorted({value["manifest"] for value in values})
            columns = [source_rows.c[name] for name in (*unique, "extra")]
            known = {
                tuple(row[:-1]): row[-1]
                for start in range(0, len(manifests), 500)
                for row in connection.execute(
                    sa.select(*columns).where(
                        source_rows.c.manifest.in_(manifests[start : start + 500])
                    )
                )
            }
            fresh = [value for value in values if tuple(value[n] for n in unique) not in known]
            _refresh_extra(connection, values, known)
            if not fresh:
                return 0
            before = connection.execute(sa.select(sa.func.count()).select_from(source_rows))
            count = before.scalar_one()
            # One executemany: a multi-VALUES statement per chunk costs SQLAlchemy far more to
            # compile than the database takes to run (100,000 rows: ~20 s against ~4 s).
            connection.execute(_insert_ignore(self.engine), fresh)
            after = connection.execute(sa.select(sa.func.count()).select_from(source_rows))
            return after.scalar_one() - count

    def rows(self, md5: str | None = None) -> list[SourceRow]:
        """Every registered row, or the rows of one md5, in registration order."""
        query = sa.select(source_rows).order_by(source_rows.c.id)
        if md5 is not None:
            query = query.where(source_rows.c.md5 == md5)
        with self.connect() as connection:
            return [_to_row(r) for r in connection.execute(query).mappings()]

    def rows_named(self, name: str) -> list[SourceRow]:
        """The rows with one manifest name, in registration order (an indexed lookup)."""
        query = sa.select(source_rows).where(source_rows.c.name == name).order_by(source_rows.c.id)
        with self.connect() as connection:
            return [_to_row(r) for r in connection.execute(query).mappings()]

    def rows_of(self, md5s: Iterable[str]) -> list[SourceRow]:
        """The rows of several md5s, in registration order (one query per 500 md5s)."""
        wanted = sorted(set(md5s))
        found: list[Any] = []
        with self.connect() as connection:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                query = sa.select(source_rows).where(source_rows.c.md5.in_(chunk))
                found += connection.execute(query).mappings().all()
        return [_to_row(r) for r in sorted(found, key=lambda r: r["id"])]

    def md5s(self, family: str | None = None) -> list[str]:
        """Distinct registered md5s, optionally of one family."""
        query = sa.select(source_rows.c.md5).distinct().order_by(source_rows.c.md5)
        if family is not None:
            query = query.where(source_rows.c.family == family)
        with self.connect() as connection:
            return list(connection.execute(query).scalars())

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Dispose the engine: its pooled connections are closed. Closing again does nothing."""
        self.engine.dispose()


def dialect_insert(dialect: str, table: sa.Table) -> Any:
    """An INSERT for ``table`` that supports ``on_conflict_do_*`` on SQLite and PostgreSQL.

    Args:
        dialect: the connection's ``dialect.name``.
        table: the table to insert into.
    """
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def _refresh_extra(
    connection: Connection, values: list[dict[str, Any]], known: dict[tuple, str]
) -> None:
    """Give rows already registered the extra columns their manifest line now declares.

    A line edited in place keeps its key (md5, name, uri, manifest), so without this a
    corrected ``sha256`` column (which staging verifies) would never reach the build.
    """
    changed = [
        {**{f"k_{n}": value[n] for n in ("md5", "name", "uri", "manifest")}, "v": value["extra"]}
        for value in values
        if known.get((value["md5"], value["name"], value["uri"], value["manifest"]))
        not in (None, value["extra"])
    ]
    if changed:
        where = [source_rows.c[n] == sa.bindparam(f"k_{n}") for n in ("md5", "name", "uri")]
        where.append(source_rows.c.manifest == sa.bindparam("k_manifest"))
        update = source_rows.update().where(*where).values(extra=sa.bindparam("v"))
        connection.execute(update, changed)


def _insert_ignore(engine: Engine) -> sa.Insert:
    return dialect_insert(engine.dialect.name, source_rows).on_conflict_do_nothing()


def _to_row(record: Any) -> SourceRow:
    return SourceRow(
        md5=record["md5"],
        name=record["name"],
        uri=record["uri"],
        format=record["format"],
        family=record["family"],
        size=record["size"],
        manifest=record["manifest"],
        line=record["line"],
        extra=json.loads(record["extra"]),
    )
