"""Replica upkeep: genoflow's own work on top of the DataManager's StreamFlow API.

:class:`~genoflow.storage.datamanager.DataManager` keeps StreamFlow's public methods and nothing
else, so a reader who knows StreamFlow knows its whole surface. What genoflow adds — fetching an
artifact from the best source that works, verifying and repairing replicas, reclaiming copies
left half-written by killed writers, moving damaged local folders aside — is here, in
:class:`ReplicaUpkeep`, built only on the manager's public methods and its shared
:class:`~genoflow.storage.context.StorageContext`. Words mean what that module says: ``path`` is
where data is within a location, ``relpath`` the artifact's logical path.

Invariants:
- a source that proves bad is invalidated, with every SYMBOLIC_LINK pointing at it, and the next
  source is tried; one that cannot be reached is only skipped;
- a replica is reported intact only after every file was checked (sizes, then checksums when
  ``full``) and its content is the registered one;
- a pending replica is reclaimed only once its writer is gone, and a copy whose marker is there
  (complete) is never deleted;
- an INVALID folder at a local location leaves in one rename, so no reader sees it half-deleted.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from genoflow.core.errors import GenoflowError, StorageError, redact
from genoflow.storage import replicas, transfer
from genoflow.storage.datamanager import DataManager
from genoflow.storage.locations import DataType, LocalLocation, Location
from genoflow.storage.replicas import Replica, ReplicaState
from genoflow.storage.transfer import BadReplica

# A pending replica of another host cannot be probed for liveness; after this long it is debris.
FOREIGN_PENDING_MAX_AGE = 24 * 3600.0


@dataclass(frozen=True)
class RepairOutcome:
    """What :meth:`ReplicaUpkeep.repair` did to one replica.

    Attributes:
        replica: the replica as it was checked.
        problems: what was wrong with it (empty when intact).
        restored: the fresh copy that replaced it, when it was bad and restoring was asked for.
        rebuild: no valid replica could restore it, so it must be built again from its input (a
            derived artifact) or staged again from its manifest's URIs (a source);
            ``restored`` is then the rebuilt copy, once there is one.
    """

    replica: Replica
    problems: list[str]
    restored: Replica | None = None
    rebuild: bool = False


class NoValidReplica(StorageError):
    """A damaged replica has no valid copy left to be restored from: only a rebuild can fix it."""

    default_stage = "verify"
    default_hint = "run `genoflow verify --repair`, which rebuilds it from its input"


class ReplicaUpkeep:
    """Fetch, verify, repair and clean up replicas through a :class:`DataManager`.

    Args:
        manager: the DataManager whose registry, scratch area and locations are used.
    """

    def __init__(self, manager: DataManager) -> None:
        self._manager = manager
        self._context = manager.context

    def replica_at(self, location_name: str, path: str) -> Replica | None:
        """The replica registered at ``path`` within the named location, in any state and of
        any data type (INVALID too), or None."""
        return self._context.find(location_name, path, readable=False)

    def all_replicas(
        self, *, location_name: str | None = None, readable: bool = True
    ) -> list[Replica]:
        """Every replica (at one location), for verification sweeps; INVALID too unless
        ``readable``."""
        with self._context.begin() as connection:
            return replicas.select(connection, location=location_name, readable=readable)

    def sources(self, relpath: str, dst_deployment: str) -> list[Replica]:
        """Every candidate source of ``relpath`` for ``dst_deployment``, best first.

        The order of :meth:`DataManager.get_source_location`, which picks the first of these.
        """
        found = self._manager.get_data_locations(relpath)
        return self._context.rank(found, dst_deployment)

    def fetch(
        self,
        relpath: str,
        dst_location: Location,
        *,
        dst_path: str | None = None,
        writable: bool = False,
    ) -> Replica:
        """Make ``relpath`` available at ``dst_location``, trying sources best first until one
        works.

        A source that proves bad is invalidated (with its links); one that cannot be reached is
        skipped. A replica already registered at the destination is returned when its files
        are all there with their sizes; otherwise it is invalidated and copied afresh.

        Args:
            relpath: the artifact's logical path.
            dst_location: where the copy should be.
            dst_path: its folder there (default: ``relpath``).
            writable: the caller will write into the copy, so it must not be a link.

        Raises:
            StorageError: no source could be copied; the message lists each source's failure.
        """
        dst_path = dst_path or relpath
        self._context.add_location(dst_location)
        present = self._context.find(dst_location.name, dst_path)
        if present is not None and present.relpath == relpath:
            with self._context.scratch() as scratch:
                if not transfer.inspect(dst_location, dst_path, scratch, full=False).problems:
                    return present
            self._manager.invalidate_location(dst_location, dst_path)
        failures = []
        for source in self.sources(relpath, dst_location.deployment):
            copied = self._copy_from(source, dst_location, dst_path, writable=writable)
            if isinstance(copied, Replica):
                return copied
            failures.append(copied)
        reasons = "; ".join(failures) or "no valid replica is registered"
        raise StorageError(
            f"no replica could be copied to {dst_location.name} ({reasons})",
            file=relpath,
            stage="transfer",
            hint="rebuild the artifact, or register a valid replica of it",
        )

    def _copy_from(
        self, source: Replica, dst_location: Location, dst_path: str, *, writable: bool
    ) -> Replica | str:
        """One attempt of :meth:`fetch`: the copy, or why it failed (a bad source is
        invalidated)."""
        location = self._context.location(source.location)
        if location is None:
            return f"{redact(source.uri)}: its location is not reachable from here"
        try:
            return self._manager.transfer_data(
                location, source.path, [dst_location], dst_path, writable=writable
            )[0]
        except BadReplica as exc:
            self._manager.invalidate_location(location, source.path)
            return f"{redact(source.uri)}: {exc.message} (invalidated)"
        except GenoflowError as exc:
            return f"{redact(source.uri)}: {exc.message}"

    def verify(self, replica: Replica, full: bool = True) -> list[str]:
        """Check a replica: every file's size, then (``full``) its checksum.

        Returns:
            The problems found; empty when intact (its ``verified_at`` is then updated).

        Raises:
            StorageError: its location is not reachable from this node.
        """
        location = self._reachable(replica)
        with self._context.scratch() as scratch:
            found = transfer.inspect(location, replica.path, scratch, full=full)
        with self._context.begin() as connection:
            expected, _ = replicas.artifact_facts(connection, replica.relpath)
            problems = list(found.problems)
            if found.marker is not None and expected not in (None, found.marker.checksum):
                checksum = found.marker.checksum
                problems.append(f"holds content {checksum}, the registry expects {expected}")
            if not problems and full:
                replicas.mark_verified(connection, replica.id, found.generation)
        return problems

    def repair(self, replica: Replica, *, full: bool = True, restore: bool = True) -> RepairOutcome:
        """Verify a replica; invalidate it when bad and, with ``restore``, copy it afresh.

        A replica invalidated earlier counts as bad even when its files now verify, unless a
        full check proves it whole and the registered content: then it is registered valid again
        (with ``restore``) instead of being copied over.

        Raises:
            NoValidReplica: restoring found no source, or none could be copied (the replica
                stays INVALID; rebuilding the artifact is what is left).
        """
        problems = self.verify(replica, full=full)
        location = self._reachable(replica)
        if replica.data_type is DataType.INVALID:
            if not problems and full and restore:
                revalidated = self._manager.register_path(
                    location, replica.path, replica.relpath, DataType.PRIMARY
                )
                return RepairOutcome(replica, ["invalidated earlier"], revalidated)
            problems = ["invalidated earlier", *problems]
        if not problems:
            return RepairOutcome(replica, problems)
        self._manager.invalidate_location(location, replica.path)
        if not restore:
            return RepairOutcome(replica, problems)
        return RepairOutcome(replica, problems, self._restore(replica, location, problems))

    def _restore(self, replica: Replica, location: Location, problems: list[str]) -> Replica:
        damage = "; ".join(problems)
        if not self.sources(replica.relpath, location.deployment):
            raise NoValidReplica(
                f"{damage}; no valid replica is left to restore it from (invalidated)",
                file=redact(replica.uri),
            )
        with self._context.scratch() as scratch:
            transfer.remove(location, replica.path, scratch, names=[])
        try:
            return self.fetch(replica.relpath, location, dst_path=replica.path)
        except StorageError as exc:
            raise NoValidReplica(
                f"{damage}; no replica could restore it ({exc.message})",
                file=redact(replica.uri),
            ) from exc

    def reclaim_pending(self, *, max_age: float = FOREIGN_PENDING_MAX_AGE) -> list[Replica]:
        """Delete the pending replicas whose writer is gone, and their partial data.

        A writer on this host is gone when its pid no longer exists; one on another host when
        its row is older than ``max_age`` seconds. Partial data is deleted at locations this
        node reaches; a copy whose marker is there is complete and is never deleted. The folder
        of an INVALID replica still in place at a local location (a process killed between
        invalidating and moving it aside, or an older genoflow) is set aside too.

        Returns:
            The pending replicas reclaimed.
        """
        with self._context.begin() as connection:
            found = replicas.leftovers(connection)
        for replica in found:
            if replica.data_type is DataType.INVALID:
                self.set_aside(replica)
        pending = [replica for replica in found if replica.state is ReplicaState.PENDING]
        return [replica for replica in pending if self._reclaim(replica, max_age)]

    def _reclaim(self, replica: Replica, max_age: float) -> bool:
        if not replicas.writer_gone(replica, max_age) or not self._claim(replica):
            return False
        location = self._context.location(replica.location)
        if location is not None:
            with self._context.begin() as connection:
                _, marker = replicas.artifact_facts(connection, replica.relpath)
            names = [entry.name for entry in marker.files] if marker else []
            transfer.remove_partial(location, replica.path, names=names)
        with self._context.begin() as connection:
            replicas.drop_pending(connection, replica.location, replica.path, replicas.owner_id())
        return True

    def _claim(self, replica: Replica) -> bool:
        with self._context.begin() as connection:
            return replicas.claim(connection, replica.id, replica.owner)

    def set_aside(self, replica: Replica) -> None:
        """Move the folder of an INVALID replica at a local location this node reaches aside and
        delete it (one rename, so no reader sees it half-deleted).

        The rule that lets a rebuild replace a damaged artifact without ever overwriting a
        published folder: once the damaged folder is gone, the plain cache lookup sees nothing
        and the rebuild publishes a fresh folder under the same name. Object stores keep an
        INVALID copy until it is restored (no reader is handed it).
        """
        location = self._context.location(replica.location)
        if replica.data_type is not DataType.INVALID or not isinstance(location, LocalLocation):
            return
        folder = location.path(replica.path)
        with contextlib.suppress(FileNotFoundError):  # another process set it aside first
            if folder.is_dir():
                transfer.remove_folder(folder)

    def _reachable(self, replica: Replica) -> Location:
        location = self._context.location(replica.location)
        if location is None:
            raise StorageError(
                f"its location {replica.location!r} is not reachable from this node",
                file=redact(replica.uri),
                stage="verify",
                hint="run this on a node configured with that location",
            )
        return location
