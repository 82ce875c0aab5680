"""Build claims: which job builds which source md5 on demand, one at a time across processes.

One row per md5 in the registry's database (``build_claim``), so every server worker process
and every machine sharing the registry sees the same claim. Invariants:

- taking a claim is a compare-and-swap: an ``INSERT … ON CONFLICT DO NOTHING`` for an md5 with
  no row, else an ``UPDATE`` whose ``WHERE`` names the (job id, status) the taker read, so of N
  racing takers exactly one changes the row and the others read the winner's job id;
- every later write (queued → running → succeeded/failed, a heartbeat, a release) is fenced
  the same way on the claim's (job id, status): a builder whose claim was reclaimed and
  replaced (a *late finisher*) changes nothing, whatever it reports;
- a claim is live while its owner beats (``heartbeat_at``); whether it went stale is the
  caller's rule (:mod:`genoflow.serve.builds`), this module only stores the times.

Times are epoch seconds (``time.time()``) in float columns, the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from genoflow.storage.registry import Registry, dialect_insert

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
ACTIVE = (QUEUED, RUNNING)
_DDL_LOCK = 0x636C6169  # "clai": the advisory lock key taken while creating the table

claims_metadata = sa.MetaData()
build_claims = sa.Table(
    "build_claim",
    claims_metadata,
    sa.Column("md5", sa.String(32), primary_key=True),
    sa.Column("job_id", sa.String(64), nullable=False, index=True),
    sa.Column("family", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("claimed_at", sa.Float, nullable=False),
    sa.Column("heartbeat_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.Column("retry_at", sa.Float),
)


@dataclass(frozen=True)
class Claim:
    """One md5's current build claim.

    Attributes:
        md5: the source md5 being built.
        job_id: the job (Dagster run id) holding the claim.
        family: the source's family.
        status: ``queued``, ``running``, ``succeeded`` or ``failed``.
        owner: who runs it: ``host:pid`` of a server process, or a queue's name.
        error: the (already redacted) error of a failed build.
        claimed_at: when the job took the claim.
        heartbeat_at: when its owner last said it is alive.
        finished_at: when it ended, if it did.
        retry_at: after a failure, when a new attempt may take the claim.
    """

    md5: str
    job_id: str
    family: str
    status: str
    owner: str
    error: str | None = None
    claimed_at: float = 0.0
    heartbeat_at: float = 0.0
    finished_at: float | None = None
    retry_at: float | None = None

    @property
    def active(self) -> bool:
        """Whether the job is still queued or running."""
        return self.status in ACTIVE


class Claims:
    """The ``build_claim`` table of a registry (created on first use).

    Args:
        registry: the registry whose database holds the claims.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        with registry.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _DDL_LOCK}
                )
            claims_metadata.create_all(connection)

    def get(self, md5: str) -> Claim | None:
        """The claim on ``md5``, or None when nothing was ever built for it on demand."""
        return self._one(build_claims.c.md5 == md5)

    def by_job(self, job_id: str) -> Claim | None:
        """The claim ``job_id`` holds now, or None (never held, or replaced since)."""
        return self._one(build_claims.c.job_id == job_id)

    def of(self, md5s: Iterable[str]) -> list[Claim]:
        """The claims of those md5s that have one, in one query (a page of sources)."""
        wanted = sorted(set(md5s))
        if not wanted:
            return []
        with self.registry.connect() as connection:
            rows = connection.execute(
                sa.select(build_claims).where(build_claims.c.md5.in_(wanted))
            ).mappings()
            return [Claim(**row) for row in rows]

    def _one(self, where: Any) -> Claim | None:
        with self.registry.connect() as connection:
            row = connection.execute(sa.select(build_claims).where(where)).mappings().first()
        return Claim(**row) if row else None

    def take(
        self, md5: str, family: str, job_id: str, owner: str, *, replacing: Claim | None
    ) -> Claim:
        """Claim ``md5`` for ``job_id`` (status queued), fenced on what the caller read.

        Args:
            md5: the source md5.
            family: its family.
            job_id: the new job's id.
            owner: who will run it.
            replacing: the claim the caller read and judged replaceable (stale, failed past its
                back-off, succeeded with its artifact gone), or None when it read no claim.

        Returns:
            The claim as it is after the attempt: ``job_id``'s when it won, else the winner's.
        """
        now = time.time()
        values = {
            "md5": md5,
            "job_id": job_id,
            "family": family,
            "status": QUEUED,
            "owner": owner,
            "error": None,
            "claimed_at": now,
            "heartbeat_at": now,
            "finished_at": None,
            "retry_at": None,
        }
        with self.registry.begin() as connection:
            if replacing is None:
                insert = dialect_insert(connection.dialect.name, build_claims)
                connection.execute(insert.values(**values).on_conflict_do_nothing())
            else:
                connection.execute(
                    sa.update(build_claims).where(_fence(replacing)).values(**values)
                )
            row = connection.execute(sa.select(build_claims).where(build_claims.c.md5 == md5))
            return Claim(**row.mappings().one())

    def advance(
        self,
        claim: Claim,
        status: str,
        *,
        error: str | None = None,
        retry_backoff: float = 0.0,
    ) -> Claim | None:
        """Move ``claim`` to ``status``, only if it still holds (same job id and status).

        Args:
            claim: the claim as the writer last saw it.
            status: ``running``, ``succeeded`` or ``failed``.
            error: a failed build's redacted error.
            retry_backoff: for ``failed``, seconds before a new attempt may take the claim.

        Returns:
            The claim after the write, or None when the fence refused it (a late finisher).
        """
        now = time.time()
        values: dict[str, Any] = {"status": status, "heartbeat_at": now, "error": error}
        if status not in ACTIVE:
            values["finished_at"] = now
            values["retry_at"] = now + retry_backoff if status == FAILED else None
        with self.registry.begin() as connection:
            done = connection.execute(sa.update(build_claims).where(_fence(claim)).values(values))
        if done.rowcount != 1:
            return None
        fields = {**claim.__dict__, **values}
        return Claim(**fields)

    def release(self, claim: Claim) -> bool:
        """Delete ``claim`` if it still holds, so the next request starts afresh."""
        with self.registry.begin() as connection:
            return connection.execute(sa.delete(build_claims).where(_fence(claim))).rowcount == 1

    def heartbeat(self, claims: Iterable[Claim]) -> int:
        """Say the owner of ``claims`` is alive: each still-held active claim's heartbeat is
        set to now; return how many still held."""
        now, beaten = time.time(), 0
        with self.registry.begin() as connection:
            for claim in claims:
                update = sa.update(build_claims).where(
                    build_claims.c.md5 == claim.md5,
                    build_claims.c.job_id == claim.job_id,
                    build_claims.c.status.in_(ACTIVE),
                )
                beaten += connection.execute(update.values(heartbeat_at=now)).rowcount
        return beaten


def _fence(claim: Claim) -> Any:
    return sa.and_(
        build_claims.c.md5 == claim.md5,
        build_claims.c.job_id == claim.job_id,
        build_claims.c.status == claim.status,
    )
