"""The DataManager: where each artifact's replicas are, which one to read, and copying between them.

StreamFlow's semantics over the registry's replica tables, with StreamFlow's public methods and
no others (``register_path``, ``register_relation``, ``invalidate_location``,
``get_data_locations``, ``get_source_location``, ``transfer_data``, ``close``; its one attribute is
``context``, as StreamFlow's). genoflow's own replica upkeep (fetch with fallback, verify, repair,
reclaim, set aside) lives in :mod:`genoflow.storage.upkeep`, and what both share in
:mod:`genoflow.storage.context`, whose docstring fixes the vocabulary: ``path`` is where data is
within a location; ``relpath`` is the artifact's logical path (its cache key relpath), shared by
all its replicas (its relation set).

StreamFlow looks replicas up by a path on any location and follows relations; here every replica
of an artifact carries its relpath, which the registry indexes, so ``get_data_locations`` and
``get_source_location`` take the ``relpath``, named for what it is.

Invariants:
- a reader is only ever handed an available replica that is not INVALID;
- a replica is registered available only after each of its files was checked against the
  marker where it arrived (and while it is being written its row is pending, owned by
  ``host:pid``);
- a source that proves bad (missing, damaged, not the registered content) stops a transfer
  before anything is written anywhere (``BadReplica``); invalidating a replica invalidates every
  SYMBOLIC_LINK pointing at it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sqlalchemy.engine import Connection

from genoflow.core.errors import GenoflowError, StorageError
from genoflow.storage import replicas, transfer
from genoflow.storage.context import StorageContext
from genoflow.storage.locations import (
    AlreadyExists,
    DataType,
    Location,
    safe_relpath,
)
from genoflow.storage.registry import Registry
from genoflow.storage.replicas import Replica, ReplicaState
from genoflow.storage.transfer import Inspection, Staged


class DataManager:
    """Replica-aware access to artifacts across locations, with StreamFlow's public methods.

    Args:
        registry: an open :class:`Registry` (left open by :meth:`close`), or its URL or SQLite
            path (opened here and closed by :meth:`close`).
        workdir, locations: as for :class:`~genoflow.storage.context.StorageContext`.

    Attributes:
        context: the registry, scratch area and reachable locations, shared with
            :class:`~genoflow.storage.upkeep.ReplicaUpkeep`.
    """

    def __init__(
        self,
        registry: Registry | str | Path,
        *,
        workdir: str | Path,
        locations: Iterable[Location] = (),
    ) -> None:
        self.context = StorageContext(registry, workdir=workdir, locations=locations)

    def __enter__(self) -> DataManager:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

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
        self.context.add_location(location)
        marker, generation = None, None
        if data_type is not DataType.INVALID:
            with self.context.scratch() as scratch:
                marker, _, info = transfer.read_marker(location, path, scratch)
            generation = info.generation
        with self.context.begin() as connection:
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
        with self.context.begin() as connection:
            replicas.relate(connection, src, dst)

    def invalidate_location(self, location: Location, path: str) -> None:
        """Mark the replica at ``path`` INVALID, and every SYMBOLIC_LINK pointing at it."""
        with self.context.begin() as connection:
            found = replicas.select(connection, location=location.name, path=path, readable=False)
            if found:
                replicas.invalidate(connection, found[0].id)

    def get_data_locations(
        self,
        relpath: str,
        deployment: str | None = None,
        location_name: str | None = None,
        location_type: str | None = None,
    ) -> list[Replica]:
        """The readable replicas of ``relpath`` (never INVALID, never pending), oldest first.

        Args:
            relpath: the artifact's logical path (its cache key relpath).
            deployment: only replicas on this deployment.
            location_name: only replicas at the location of this name.
            location_type: only replicas at locations of this kind (``local``, ``gcs``…).
        """
        with self.context.begin() as connection:
            return replicas.select(
                connection,
                relpath=relpath,
                deployment=deployment,
                location=location_name,
                kind=location_type,
            )

    def get_source_location(self, relpath: str, dst_deployment: str) -> Replica | None:
        """The replica to copy ``relpath`` from for ``dst_deployment``, or None.

        In order: a PRIMARY replica on ``dst_deployment``; else one at a location local to this
        node; else any PRIMARY, cheapest kind first (local < gcs < https); replicas at locations
        this node cannot reach come after all the others (transfers run here).
        """
        ranked = self.context.rank(self.get_data_locations(relpath), dst_deployment)
        return ranked[0] if ranked else None

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
        self.context.add_location(src_location)
        src = self.context.find(src_location.name, src_path)
        if src is None:
            raise StorageError(
                "is not a registered, valid replica",
                file=src_location.uri(src_path),
                stage="transfer",
                hint="register_path it first, or copy from another replica",
            )
        with self.context.begin() as connection:
            expected, _ = replicas.artifact_facts(connection, src.relpath)
        done, failures = [], []
        with self.context.scratch() as scratch:
            staged = transfer.stage(src_location, src_path, scratch, expected=expected)
            for dst in dst_locations:
                self.context.add_location(dst)
                try:
                    copied = self._copy(
                        src, src_location, staged, dst, dst_path, scratch, writable=writable
                    )
                    done.append(copied)
                except GenoflowError as exc:
                    failures.append(exc)
        if len(failures) == 1:
            raise failures[0]
        if failures:
            reasons = "; ".join(str(failure) for failure in failures)
            raise StorageError(f"{len(failures)} copies failed: {reasons}", stage="transfer")
        return done

    def close(self) -> None:
        """Release the registry when this manager opened it."""
        self.context.close()

    def _copy(
        self,
        src: Replica,
        src_location: Location,
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
        link = not writable and transfer.same_filesystem(src_location, dst)
        with self.context.begin() as connection:
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
            with self.context.begin() as connection:
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
        known = self.context.find(dst.name, dst_path)
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
        with self.context.begin() as connection:
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

    @staticmethod
    def _at(
        connection: Connection, location_name: str, path: str, *, readable: bool = True
    ) -> Replica:
        return replicas.select(connection, location=location_name, path=path, readable=readable)[0]
