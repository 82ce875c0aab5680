"""The DataManager: where each artifact's replicas are, which one to read, and copying between them.

StreamFlow's semantics over the registry's replica tables. A logical path is an artifact's cache
key relpath; its replicas (its relation set) are copies of it at locations of deployments.

Invariants:
- a reader is only ever handed an available replica that is not INVALID;
- a replica is registered available only after each of its files was checked against the
  marker where it arrived (and while it is being written its row is pending, owned by
  ``host:pid``);
- a source that proves bad is invalidated, with every SYMBOLIC_LINK pointing at it, and the next
  source is tried.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Connection

from genoflow.core.errors import GenoflowError, StorageError, redact
from genoflow.storage import atomic, replicas, transfer
from genoflow.storage.locations import (
    AlreadyExists,
    DataType,
    LocalLocation,
    Location,
    safe_relpath,
)
from genoflow.storage.registry import Registry
from genoflow.storage.replicas import Replica, ReplicaState
from genoflow.storage.transfer import BadReplica, Inspection, Staged

# A pending replica of another host cannot be probed for liveness; after this long it is debris.
FOREIGN_PENDING_MAX_AGE = 24 * 3600.0


@dataclass(frozen=True)
class RepairOutcome:
    """What :meth:`DataManager.repair` did to one replica.

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


class DataManager:
    """Replica-aware access to artifacts across locations.

    Args:
        registry: an open :class:`Registry` (left open by :meth:`close`), or its URL or SQLite
            path (opened here and closed by :meth:`close`).
        workdir: a local folder for transfers' scratch files (the cache's ``work`` folder).
        locations: the locations this node can reach; others are added as they are used.
    """

    def __init__(
        self,
        registry: Registry | str | Path,
        *,
        workdir: str | Path,
        locations: Iterable[Location] = (),
    ) -> None:
        self._owns_registry = not isinstance(registry, Registry)
        self.registry = registry if isinstance(registry, Registry) else Registry(registry)
        self.workdir = Path(workdir)
        self._locations: dict[str, Location] = {}
        for location in locations:
            self.add_location(location)

    def __enter__(self) -> DataManager:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def add_location(self, location: Location) -> None:
        """Make ``location`` reachable from this node (its row is written on first use)."""
        self._locations[location.name] = location

    def location(self, name: str) -> Location | None:
        """The location of that name, when this node can reach it."""
        return self._locations.get(name)

    def register_path(
        self,
        location: Location,
        path: str,
        relpath: str,
        data_type: DataType = DataType.PRIMARY,
    ) -> Replica:
        """Record that the artifact ``relpath`` is stored at ``path`` within ``location``.

        Args:
            location: where it is.
            path: its artifact folder within the location.
            relpath: its logical path (the cache key relpath).
            data_type: PRIMARY, or SYMBOLIC_LINK (then relate it to its target).

        Returns:
            The replica, available.

        Raises:
            BadReplica: there is no readable ``genoflow.json`` at that path (so no artifact).
            StorageError: the artifact there is another build than the one registered.
        """
        safe_relpath(path)
        safe_relpath(relpath)
        self.add_location(location)
        marker, generation = None, None
        if data_type is not DataType.INVALID:
            with self._scratch() as scratch:
                marker, _, info = transfer.read_marker(location, path, scratch)
            generation = info.generation
        with self._begin() as connection:
            expected, _ = replicas.artifact_facts(connection, relpath)
            if marker is not None and expected not in (None, marker.checksum):
                raise StorageError(
                    f"holds content {marker.checksum}, the registry has {expected} for {relpath}",
                    file=location.uri(path),
                    stage="register",
                    hint="remove that copy, or rebuild it under a new processor version",
                )
            replicas.upsert(
                connection,
                artifact_id=replicas.ensure_artifact(connection, relpath, marker),
                location_id=replicas.ensure_location(connection, location),
                path=path,
                data_type=data_type,
                state=ReplicaState.AVAILABLE,
                generation=generation,
            )
            return self._at(connection, location.name, path, readable=False)

    def register_relation(self, src: Replica, dst: Replica) -> None:
        """Record that ``dst`` is a copy of ``src`` (for a SYMBOLIC_LINK, a link to it)."""
        with self._begin() as connection:
            replicas.relate(connection, src, dst)

    def invalidate_location(self, location: Location, path: str) -> None:
        """Mark the replica at ``path`` INVALID, and every SYMBOLIC_LINK pointing at it."""
        with self._begin() as connection:
            found = replicas.select(connection, location=location.name, path=path, readable=False)
            if found:
                replicas.invalidate(connection, found[0].id)

    def get_data_locations(
        self,
        path: str,
        deployment: str | None = None,
        location: str | None = None,
        location_type: str | None = None,
    ) -> list[Replica]:
        """The readable replicas of logical ``path`` (never INVALID, never pending), oldest first.

        Args:
            path: the logical path.
            deployment: only replicas on this deployment.
            location: only replicas at the location of this name.
            location_type: only replicas at locations of this kind (``local``, ``gcs``…).
        """
        with self._begin() as connection:
            return replicas.select(
                connection,
                relpath=path,
                deployment=deployment,
                location=location,
                kind=location_type,
            )

    def get_source_location(self, path: str, dst_deployment: str) -> Replica | None:
        """The replica to copy ``path`` from for ``dst_deployment``, or None.

        In order: a PRIMARY replica on ``dst_deployment``; else one at a location local to this
        node; else any PRIMARY, cheapest kind first (local < gcs < https).
        """
        ranked = self.sources(path, dst_deployment)
        return ranked[0] if ranked else None

    def sources(self, path: str, dst_deployment: str) -> list[Replica]:
        """Every candidate source of ``path`` for ``dst_deployment``, best first.

        The order of :meth:`get_source_location`, except that replicas at locations this node
        cannot reach come after all the others: transfers run here.
        """
        local = {name for name, location in self._locations.items() if location.is_local}
        found = self.get_data_locations(path)
        return replicas.rank_sources(
            found, dst_deployment, reachable=set(self._locations), local=local
        )

    def transfer_data(
        self,
        src_location: Location,
        src_path: str,
        dst_locations: list[Location],
        dst_path: str,
        writable: bool = False,
    ) -> list[Replica]:
        """Copy the artifact at ``src_path`` to ``dst_path`` at each destination, verified.

        The source is verified first (every file against its marker); each destination receives
        the data files, then the marker last, and each arrived file is checked. A destination on
        the same filesystem is hard-linked (a SYMBOLIC_LINK replica) unless ``writable``.

        Returns:
            The new replicas, one per destination.

        Raises:
            BadReplica: the source is missing, damaged or not the registered content; nothing
                was written anywhere.
            StorageError: the source is not a registered valid replica, or a destination failed
                (its partial copy removed; the other destinations' copies stay registered).
        """
        self.add_location(src_location)
        src = self._find(src_location.name, src_path)
        if src is None:
            raise StorageError(
                "is not a registered, valid replica",
                file=src_location.uri(src_path),
                stage="transfer",
                hint="register_path it first, or copy from another replica",
            )
        with self._begin() as connection:
            expected, _ = replicas.artifact_facts(connection, src.relpath)
        done, failures = [], []
        with self._scratch() as scratch:
            staged = transfer.stage(src_location, src_path, scratch, expected=expected)
            for dst in dst_locations:
                self.add_location(dst)
                try:
                    done.append(self._copy(src, staged, dst, dst_path, scratch, writable=writable))
                except GenoflowError as exc:
                    failures.append(exc)
        if len(failures) == 1:
            raise failures[0]
        if failures:
            reasons = "; ".join(str(failure) for failure in failures)
            raise StorageError(f"{len(failures)} copies failed: {reasons}", stage="transfer")
        return done

    def fetch(
        self,
        path: str,
        dst_location: Location,
        *,
        dst_path: str | None = None,
        writable: bool = False,
    ) -> Replica:
        """Make ``path`` available at ``dst_location``, trying sources best first until one works.

        A source that proves bad is invalidated (with its links); one that cannot be reached is
        skipped. A replica already registered at the destination is returned when its files
        are all there with their sizes; otherwise it is invalidated and copied afresh.

        Args:
            path: the logical path.
            dst_location: where the copy should be.
            dst_path: its folder there (default: ``path``).
            writable: the caller will write into the copy, so it must not be a link.

        Raises:
            StorageError: no source could be copied; the message lists each source's failure.
        """
        dst_path = dst_path or path
        self.add_location(dst_location)
        present = self._find(dst_location.name, dst_path)
        if present is not None and present.relpath == path:
            with self._scratch() as scratch:
                if not transfer.inspect(dst_location, dst_path, scratch, full=False).problems:
                    return present
            self.invalidate_location(dst_location, dst_path)
        failures = []
        for source in self.sources(path, dst_location.deployment):
            location = self._locations.get(source.location)
            if location is None:
                failures.append(f"{redact(source.uri)}: its location is not reachable from here")
                continue
            try:
                return self.transfer_data(
                    location, source.path, [dst_location], dst_path, writable=writable
                )[0]
            except BadReplica as exc:
                self.invalidate_location(location, source.path)
                failures.append(f"{redact(source.uri)}: {exc.message} (invalidated)")
            except GenoflowError as exc:
                failures.append(f"{redact(source.uri)}: {exc.message}")
        reasons = "; ".join(failures) or "no valid replica is registered"
        raise StorageError(
            f"no replica could be copied to {dst_location.name} ({reasons})",
            file=path,
            stage="transfer",
            hint="rebuild the artifact, or register a valid replica of it",
        )

    def verify(self, replica: Replica, full: bool = True) -> list[str]:
        """Check a replica: every file's size, then (``full``) its checksum.

        Returns:
            The problems found; empty when intact (its ``verified_at`` is then updated).

        Raises:
            StorageError: its location is not reachable from this node.
        """
        location = self._reachable(replica)
        with self._scratch() as scratch:
            found = transfer.inspect(location, replica.path, scratch, full=full)
        with self._begin() as connection:
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
                data_type = DataType.PRIMARY
                revalidated = self.register_path(location, replica.path, replica.relpath, data_type)
                return RepairOutcome(replica, ["invalidated earlier"], revalidated)
            problems = ["invalidated earlier", *problems]
        if not problems:
            return RepairOutcome(replica, problems)
        self.invalidate_location(location, replica.path)
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
        with self._scratch() as scratch:
            transfer.remove(location, replica.path, scratch, names=[])
        try:
            return self.fetch(replica.relpath, location, dst_path=replica.path)
        except StorageError as exc:
            raise NoValidReplica(
                f"{damage}; no replica could restore it ({exc.message})",
                file=redact(replica.uri),
            ) from exc

    def replica_at(self, location: str, path: str) -> Replica | None:
        """The replica registered at ``path`` within the location named ``location``, in any
        state and of any data type (INVALID too), or None."""
        with self._begin() as connection:
            found = replicas.select(connection, location=location, path=path, readable=False)
        return found[0] if found else None

    def all_replicas(self, *, location: str | None = None, readable: bool = True) -> list[Replica]:
        """Every replica (at one location), for verification sweeps; INVALID too unless
        ``readable``."""
        with self._begin() as connection:
            return replicas.select(connection, location=location, readable=readable)

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
        with self._begin() as connection:
            found = replicas.leftovers(connection)
        for replica in found:
            if replica.data_type is DataType.INVALID:
                self.set_aside(replica)
        pending = [replica for replica in found if replica.state is ReplicaState.PENDING]
        return [replica for replica in pending if self._reclaim(replica, max_age)]

    def _reclaim(self, replica: Replica, max_age: float) -> bool:
        if not replicas.writer_gone(replica, max_age) or not self._claim(replica):
            return False
        location = self._locations.get(replica.location)
        if location is not None:
            with self._begin() as connection:
                _, marker = replicas.artifact_facts(connection, replica.relpath)
            names = [entry.name for entry in marker.files] if marker else []
            transfer.remove_partial(location, replica.path, names=names)
        with self._begin() as connection:
            replicas.drop_pending(connection, replica.location, replica.path, replicas.owner_id())
        return True

    def set_aside(self, replica: Replica) -> None:
        """Move the folder of an INVALID replica at a local location this node reaches aside and
        delete it (one rename, so no reader sees it half-deleted).

        The rule that lets a rebuild replace a damaged artifact without ever overwriting a
        published folder: once the damaged folder is gone, the plain cache lookup sees nothing
        and the rebuild publishes a fresh folder under the same name. Object stores keep an
        INVALID copy until it is restored (no reader is handed it).
        """
        location = self._locations.get(replica.location)
        if replica.data_type is not DataType.INVALID or not isinstance(location, LocalLocation):
            return
        folder = location.path(replica.path)
        with contextlib.suppress(FileNotFoundError):  # another process set it aside first
            if folder.is_dir():
                transfer.remove_folder(folder)

    def close(self) -> None:
        """Release the registry when this manager opened it."""
        if self._owns_registry:
            self.registry.close()

    def _copy(
        self,
        src: Replica,
        staged: Staged,
        dst: Location,
        dst_path: str,
        scratch: Path,
        *,
        writable: bool,
    ) -> Replica:
        if dst.name == src.location and dst_path == src.path:
            return src
        adopted = self._adopt(src, staged, dst, dst_path, scratch, required=False)
        if adopted is not None:
            return adopted
        link = not writable and transfer.same_filesystem(self._locations[src.location], dst)
        with self._begin() as connection:
            replicas.begin_pending(
                connection,
                artifact_id=replicas.ensure_artifact(connection, src.relpath, staged.marker),
                location_id=replicas.ensure_location(connection, dst),
                path=dst_path,
            )
        owner = replicas.owner_id()
        try:
            try:
                info, linked = transfer.publish(dst, dst_path, staged, link=link)
            except AlreadyExists:
                adopted = self._adopt(src, staged, dst, dst_path, scratch, required=True)
                assert adopted is not None  # required=True raises instead
                return adopted
            data_type = DataType.SYMBOLIC_LINK if linked else DataType.PRIMARY
            return self._finish(src, staged, dst, dst_path, data_type, info.generation)
        except BaseException:
            with self._begin() as connection:
                replicas.drop_pending(connection, dst.name, dst_path, owner)
            raise

    def _adopt(
        self,
        src: Replica,
        staged: Staged,
        dst: Location,
        dst_path: str,
        scratch: Path,
        *,
        required: bool,
    ) -> Replica | None:
        """Register the artifact already at the destination when it is sound and the same build.

        A damaged one is removed (and None returned) unless ``required`` — another writer just
        published it — in which case that is an error.
        """
        info = dst.stat(transfer.marker_path(dst_path))
        known = self._find(dst.name, dst_path)
        generation = info.generation if info is not None else None
        if known is not None and generation is not None and known.generation == generation:
            return known  # registered, and its marker is the very object registered
        if info is not None or required:
            found = transfer.inspect(dst, dst_path, scratch, full=True)
            if not found.problems:
                return self._adopt_sound(src, staged, dst, dst_path, found)
            if required:
                problems = "; ".join(found.problems)
                raise StorageError(
                    f"another writer published a bad copy: {problems}",
                    file=dst.uri(dst_path),
                    stage="transfer",
                )
            transfer.remove(dst, dst_path, scratch, names=[e.name for e in staged.entries])
        if known is not None:  # registered, but not there as registered: never hand it out
            self.invalidate_location(dst, dst_path)
        return None

    def _adopt_sound(
        self, src: Replica, staged: Staged, dst: Location, dst_path: str, found: Inspection
    ) -> Replica:
        assert found.marker is not None  # a sound artifact has its marker
        if found.marker.checksum != staged.checksum:
            raise StorageError(
                f"already holds another build (content {found.marker.checksum}, the source's "
                f"is {staged.checksum})",
                file=dst.uri(dst_path),
                stage="transfer",
                hint="remove that copy, or rebuild under a new processor version",
            )
        return self._finish(src, staged, dst, dst_path, DataType.PRIMARY, found.generation)

    def _finish(
        self,
        src: Replica,
        staged: Staged,
        dst: Location,
        dst_path: str,
        data_type: DataType,
        generation: str | None,
    ) -> Replica:
        with self._begin() as connection:
            replicas.upsert(
                connection,
                artifact_id=replicas.ensure_artifact(connection, src.relpath, staged.marker),
                location_id=replicas.ensure_location(connection, dst),
                path=dst_path,
                data_type=data_type,
                state=ReplicaState.AVAILABLE,
                generation=generation,
                verified=True,
            )
            replicas.relate(connection, src, self._at(connection, dst.name, dst_path))
            return self._at(connection, dst.name, dst_path)

    def _claim(self, replica: Replica) -> bool:
        with self._begin() as connection:
            return replicas.claim(connection, replica.id, replica.owner)

    def _find(self, location: str, path: str) -> Replica | None:
        with self._begin() as connection:
            found = replicas.select(connection, location=location, path=path)
        return found[0] if found else None

    @staticmethod
    def _at(connection: Connection, location: str, path: str, *, readable: bool = True) -> Replica:
        return replicas.select(connection, location=location, path=path, readable=readable)[0]

    def _reachable(self, replica: Replica) -> Location:
        location = self._locations.get(replica.location)
        if location is None:
            raise StorageError(
                f"its location {replica.location!r} is not reachable from this node",
                file=redact(replica.uri),
                stage="verify",
                hint="run this on a node configured with that location",
            )
        return location

    @contextlib.contextmanager
    def _begin(self) -> Iterator[Connection]:
        with self.registry.begin() as connection:
            yield connection

    @contextlib.contextmanager
    def _scratch(self) -> Iterator[Path]:
        folder = atomic.temp_sibling(self.workdir / "transfer")
        try:
            yield folder
        finally:
            atomic.remove_tree(folder)
