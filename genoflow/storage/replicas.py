"""Replica rows: which copy of which artifact lives at which location, and in what state.

Invariants kept by these queries (each runs inside the caller's transaction):
- one row per (location, path): every write is an ``ON CONFLICT`` upsert, so racing writers on
  SQLite or PostgreSQL converge on one row instead of failing;
- a row is *pending* while its owner (``host:pid``) copies data, and only an *available* row that
  is not ``INVALID`` is ever handed to a reader;
- invalidating a replica invalidates every ``SYMBOLIC_LINK`` replica that points at it, however
  long the chain.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import os
import re
import socket
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from genoflow.core.errors import StorageError
from genoflow.storage.atomic import process_alive
from genoflow.storage.locations import DataType, Location
from genoflow.storage.marker import Marker
from genoflow.storage.registry import artifacts, dialect_insert, locations, replicas

# What reading from a kind of location costs, cheapest first (others come after these).
COST = {"local": 0, "gcs": 1, "https": 2}
_LAYOUT = re.compile(
    r"(?P<family>[^/]+)/[0-9a-f]{2}/(?P<md5>[0-9a-f]{32})/(?P<asset>[^/]+)/v(?P<version>[^/]+)"
)


class ReplicaState(enum.StrEnum):
    """Whether a replica's data is still being written or may be read."""

    PENDING = "pending"
    AVAILABLE = "available"


@dataclass(frozen=True)
class Replica:
    """One registered copy of an artifact.

    Attributes:
        id: the row id (a SYMBOLIC_LINK's ``link_target`` names another replica's id).
        relpath: the logical path, i.e. the artifact's cache key relpath.
        location: the location's name.
        path: the artifact folder's path within that location.
        data_type: PRIMARY, SYMBOLIC_LINK or INVALID.
        deployment: the location's deployment.
        kind: the location's kind (``local``, ``gcs``, ``https``…).
        is_local: whether the location is node-local storage.
        root: the location's root URI.
        state: pending or available.
        link_target: for a SYMBOLIC_LINK, the id of the replica it points at.
        owner: ``host:pid`` of the writer while pending.
        generation: the identity of the marker object when it was registered.
        verified_at: when its content was last verified, if ever.
    """

    id: int
    relpath: str
    location: str
    path: str
    data_type: DataType
    deployment: str
    kind: str
    is_local: bool
    root: str
    state: ReplicaState
    link_target: int | None = None
    owner: str | None = None
    generation: str | None = None
    verified_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None

    @property
    def uri(self) -> str:
        """Where the artifact folder is, for people to read."""
        return f"{self.root.rstrip('/')}/{self.path}"


def owner_id() -> str:
    """This process's ``host:pid``, recorded on the replicas it is writing."""
    return f"{socket.gethostname()}:{os.getpid()}"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_utc(value: dt.datetime) -> dt.datetime:
    """SQLite hands timestamps back without a zone; every stored timestamp is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def ensure_location(connection: Connection, location: Location) -> int:
    """Register ``location`` (once) and return its id.

    Raises:
        StorageError: the name is already registered for another root, kind or deployment.
    """
    values = {
        "name": location.name,
        "kind": location.kind,
        "root": location.root,
        "is_local": location.is_local,
        "deployment": location.deployment,
    }
    insert = dialect_insert(connection.dialect.name, locations).values(values)
    connection.execute(insert.on_conflict_do_nothing(index_elements=["name"]))
    row = connection.execute(sa.select(locations).where(locations.c.name == location.name)).one()
    known = {key: row._mapping[key] for key in ("kind", "root", "deployment")}
    wanted = {key: values[key] for key in known}
    if known != wanted:
        raise StorageError(
            f"location name {location.name!r} is already registered as {known}, not {wanted}",
            file=location.root,
            stage="register",
            hint="give each location a name unique across every node sharing the registry",
        )
    return row.id


def ensure_artifact(connection: Connection, relpath: str, marker: Marker | None) -> int:
    """Register the artifact whose cache key is ``relpath`` and return its id.

    Its processor, size, checksum and marker are filled in from ``marker`` the first time one
    is known.
    """
    layout = _LAYOUT.fullmatch(relpath)
    values: dict[str, Any] = {"key": relpath, "created_at": now()}
    if layout:
        asset = f"{layout['family']}/{layout['asset']}"
        values |= {"source_md5": layout["md5"], "asset": asset, "version": layout["version"]}
    insert = dialect_insert(connection.dialect.name, artifacts).values(values)
    connection.execute(insert.on_conflict_do_nothing(index_elements=["key"]))
    row = connection.execute(sa.select(artifacts).where(artifacts.c.key == relpath)).one()
    if marker is not None and row.checksum is None:
        connection.execute(
            artifacts.update()
            .where(artifacts.c.id == row.id)
            .values(
                processor=marker.processor,
                size=marker.size,
                checksum=marker.checksum,
                marker=json.dumps(marker.to_json(), sort_keys=True),
            )
        )
    return row.id


def artifact_facts(connection: Connection, relpath: str) -> tuple[str | None, Marker | None]:
    """The registered checksum and marker of ``relpath`` (None when not yet known)."""
    query = sa.select(artifacts.c.checksum, artifacts.c.marker).where(artifacts.c.key == relpath)
    row = connection.execute(query).one_or_none()
    if row is None:
        return None, None
    if not row.marker:
        return row.checksum, None
    return row.checksum, Marker.from_json(json.loads(row.marker), source=relpath)


def upsert(
    connection: Connection,
    *,
    artifact_id: int,
    location_id: int,
    path: str,
    data_type: DataType,
    state: ReplicaState,
    generation: str | None = None,
    verified: bool = False,
) -> None:
    """Record the replica at (location, path), replacing whatever row was there."""
    stamp = now()
    values = {
        "artifact_id": artifact_id,
        "location_id": location_id,
        "path": path,
        "data_type": str(data_type),
        "link_target": None,
        "state": str(state),
        "owner": owner_id() if state is ReplicaState.PENDING else None,
        "generation": generation,
        "verified_at": stamp if verified else None,
        "updated_at": stamp,
    }
    insert = dialect_insert(connection.dialect.name, replicas).values(values)
    changes = {key: insert.excluded[key] for key in values if key not in ("location_id", "path")}
    changes["verified_at"] = sa.func.coalesce(insert.excluded.verified_at, replicas.c.verified_at)
    connection.execute(
        insert.on_conflict_do_update(index_elements=["location_id", "path"], set_=changes)
    )


def begin_pending(connection: Connection, *, artifact_id: int, location_id: int, path: str) -> None:
    """Claim (location, path) for a copy: insert a pending row, or take over a pending/INVALID one.

    An available, valid row is left alone: the copy that follows will find its marker and adopt
    it. Taking over a pending row makes this process its owner, so a reclaim never deletes the
    data of a copy still in progress.
    """
    stamp = now()
    values = {
        "artifact_id": artifact_id,
        "location_id": location_id,
        "path": path,
        "data_type": str(DataType.PRIMARY),
        "state": str(ReplicaState.PENDING),
        "owner": owner_id(),
        "updated_at": stamp,
    }
    insert = dialect_insert(connection.dialect.name, replicas).values(values)
    replaceable = sa.or_(
        replicas.c.state == str(ReplicaState.PENDING),
        replicas.c.data_type == str(DataType.INVALID),
    )
    changes = {key: insert.excluded[key] for key in ("artifact_id", "data_type", "state", "owner")}
    changes |= {"updated_at": insert.excluded.updated_at, "link_target": None}
    connection.execute(
        insert.on_conflict_do_update(
            index_elements=["location_id", "path"], set_=changes, where=replaceable
        )
    )


def drop_pending(connection: Connection, location: str, path: str, owner: str) -> bool:
    """Delete the pending row at (location, path) if ``owner`` still owns it; return whether."""
    location_id = sa.select(locations.c.id).where(locations.c.name == location).scalar_subquery()
    deleted = connection.execute(
        replicas.delete().where(
            replicas.c.location_id == location_id,
            replicas.c.path == path,
            replicas.c.state == str(ReplicaState.PENDING),
            replicas.c.owner == owner,
        )
    )
    return deleted.rowcount > 0


def local_owner_gone(owner: str, since: float | None = None) -> bool | None:
    """Whether the process ``host:pid`` (see :func:`owner_id`) has ended, by the one rule of
    :func:`genoflow.storage.atomic.process_alive`: None when it belongs to another host, whose
    processes cannot be probed from here (never presumed dead). ``since`` (epoch seconds) is
    when the owner last wrote its row: a process with that pid started later is not the owner."""
    host, _, pid = owner.rpartition(":")
    alive = process_alive(host, pid, since=since)
    return None if alive is None else not alive


def writer_gone(replica: Replica, max_age: float) -> bool:
    """Whether the owner of a pending replica is gone: a dead pid on this host, or, for another
    host (whose processes cannot be probed), a row older than ``max_age`` seconds."""
    assert replica.updated_at is not None  # every row has one
    gone = local_owner_gone(replica.owner or "", since=as_utc(replica.updated_at).timestamp())
    if gone is not None:
        return gone
    return (now() - replica.updated_at).total_seconds() > max_age


def rank_sources(
    found: list[Replica], dst_deployment: str, *, reachable: set[str], local: set[str]
) -> list[Replica]:
    """Order readable replicas as sources for ``dst_deployment``, best first.

    A PRIMARY on ``dst_deployment``; else a replica at a location local to this node (``local``
    names them); else any PRIMARY, cheapest kind first (:data:`COST`). SYMBOLIC_LINKs elsewhere
    are no source. Replicas at locations not in ``reachable`` come after all the others.
    """
    ranked = []
    for replica in found:
        primary = replica.data_type is DataType.PRIMARY
        if primary and replica.deployment == dst_deployment:
            rank = 0
        elif replica.location in local:
            rank = 1
        elif primary:
            rank = 2
        else:
            continue
        cost = COST.get(replica.kind, len(COST))
        key = (replica.location not in reachable, rank, not primary, cost, replica.id)
        ranked.append((key, replica))
    return [replica for _, replica in sorted(ranked, key=lambda item: item[0])]


def claim(connection: Connection, replica_id: int, owner: str | None) -> bool:
    """Make this process the owner of a pending row still owned by ``owner``; return success."""
    claimed = connection.execute(
        replicas.update()
        .where(
            replicas.c.id == replica_id,
            replicas.c.state == str(ReplicaState.PENDING),
            replicas.c.owner.is_(None) if owner is None else replicas.c.owner == owner,
        )
        .values(owner=owner_id(), updated_at=now())
    )
    return claimed.rowcount > 0


def relate(connection: Connection, src: Replica, dst: Replica) -> None:
    """Put ``dst`` in ``src``'s relation set; a SYMBOLIC_LINK also records ``src`` as its target."""
    changes: dict[str, Any] = {
        "artifact_id": sa.select(replicas.c.artifact_id)
        .where(replicas.c.id == src.id)
        .scalar_subquery()
    }
    if dst.data_type is DataType.SYMBOLIC_LINK:
        changes["link_target"] = src.id
    connection.execute(replicas.update().where(replicas.c.id == dst.id).values(changes))


def invalidate(connection: Connection, replica_id: int) -> list[int]:
    """Mark a replica INVALID with every SYMBOLIC_LINK pointing at it, transitively."""
    done: set[int] = set()
    frontier = {replica_id}
    while frontier:
        done |= frontier
        links = sa.select(replicas.c.id).where(
            replicas.c.link_target.in_(frontier),
            replicas.c.data_type == str(DataType.SYMBOLIC_LINK),
        )
        frontier = set(connection.execute(links).scalars()) - done
    connection.execute(
        replicas.update()
        .where(replicas.c.id.in_(done))
        .values(data_type=str(DataType.INVALID), updated_at=now())
    )
    return sorted(done)


def mark_verified(connection: Connection, replica_id: int, generation: str | None) -> None:
    connection.execute(
        replicas.update()
        .where(replicas.c.id == replica_id)
        .values(verified_at=now(), generation=generation)
    )


def select(
    connection: Connection,
    *,
    relpath: str | None = None,
    location: str | None = None,
    path: str | None = None,
    deployment: str | None = None,
    kind: str | None = None,
    readable: bool = True,
    state: ReplicaState | None = None,
) -> list[Replica]:
    """Replicas matching every filter given, oldest first.

    Args:
        readable: only available replicas that are not INVALID (what a reader may use).
        state: only replicas in this state.
    """
    query = _joined()
    filters = [
        (relpath, artifacts.c.key),
        (location, locations.c.name),
        (path, replicas.c.path),
        (deployment, locations.c.deployment),
        (kind, locations.c.kind),
        (str(state) if state else None, replicas.c.state),
    ]
    query = query.where(*(column == value for value, column in filters if value is not None))
    if readable:
        query = query.where(
            replicas.c.state == str(ReplicaState.AVAILABLE),
            replicas.c.data_type != str(DataType.INVALID),
        )
    return [_to_replica(row) for row in connection.execute(query).mappings()]


def leftovers(connection: Connection) -> list[Replica]:
    """Every pending replica and every INVALID one, oldest first, in one scan (for reclaim)."""
    query = _joined().where(
        sa.or_(
            replicas.c.state == str(ReplicaState.PENDING),
            replicas.c.data_type == str(DataType.INVALID),
        )
    )
    return [_to_replica(row) for row in connection.execute(query).mappings()]


def _joined() -> sa.Select:
    return (
        sa.select(
            replicas,
            artifacts.c.key,
            locations.c.name,
            locations.c.kind,
            locations.c.root,
            locations.c.is_local,
            locations.c.deployment,
        )
        .join(artifacts, replicas.c.artifact_id == artifacts.c.id)
        .join(locations, replicas.c.location_id == locations.c.id)
        .order_by(replicas.c.id)
    )


def _to_replica(row: Any) -> Replica:
    verified = row["verified_at"]
    return Replica(
        id=row["id"],
        relpath=row["key"],
        location=row["name"],
        path=row["path"],
        data_type=DataType(row["data_type"]),
        deployment=row["deployment"],
        kind=row["kind"],
        is_local=bool(row["is_local"]),
        root=row["root"],
        state=ReplicaState(row["state"]),
        link_target=row["link_target"],
        owner=row["owner"],
        generation=row["generation"],
        verified_at=as_utc(verified) if verified else None,
        updated_at=as_utc(row["updated_at"]),
    )
