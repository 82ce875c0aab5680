"""This node's view of storage: its local cache, the replica locations, and the DataManager.

A :class:`Node` stands in for the :class:`Cache` wherever artifacts are built, adding two rules:
- before building, an artifact that any registered replica holds is transferred (verified),
  never recomputed;
- after publishing, the artifact is registered as a PRIMARY replica of this deployment's cache
  and copied to every configured replica location (data first, marker last);
- a cache folder whose replica is registered INVALID is never left in place: it is moved aside in
  one rename and deleted (:meth:`ReplicaUpkeep.set_aside`), so the plain cache lookup that
  ``genoflow run`` uses sees it absent and the rebuild publishes a fresh folder under the same
  name (a published folder is still never overwritten). The INVALID row stays until a rebuilt
  or restored copy is registered at that path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from genoflow.core.errors import StorageError
from genoflow.core.settings import PeerSettings, Settings
from genoflow.storage.cache import Artifact, Cache, Draft
from genoflow.storage.datamanager import DataManager
from genoflow.storage.layout import ArtifactKey
from genoflow.storage.locations import DataType, LocalLocation, Location
from genoflow.storage.peer import discover
from genoflow.storage.registry import Registry
from genoflow.storage.replicas import Replica, ReplicaState
from genoflow.storage.upkeep import NoValidReplica, RepairOutcome, ReplicaUpkeep


def install_readers() -> None:
    """Let staging read ``https://`` and ``gs://`` sources (idempotent, no network)."""
    from genoflow.storage import gcs, https

    https.register_readers()
    gcs.register_readers()


def replica_locations(settings: Settings) -> list[Location]:
    """The locations named by ``GENOFLOW_REPLICAS``: GCS prefixes (shared by every deployment)
    and peers' ``genoflow serve`` (each its own deployment), in the order listed."""
    from genoflow.storage.gcs import GcsLocation
    from genoflow.storage.peer import peer_locations

    token = PeerSettings.from_env().token
    return [
        GcsLocation(uri.rstrip("/"), uri, deployment="gcs")
        if uri.startswith("gs://")
        else peer_locations([uri], token=token)[0]
        for uri in settings.replicas
    ]


class Node:
    """The local cache plus replica tracking, for one deployment.

    Args:
        settings: where the cache and registry are, this deployment's name, replica URIs.
        replicas: replica locations (default: from ``settings.replicas``).
        registry: an open registry to use and leave open on :meth:`close` (default: the
            registry of ``settings``, opened here and closed by :meth:`close`).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        replicas: list[Location] | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.settings = settings
        self.cache = Cache(settings.cache_root)
        self.local = LocalLocation(
            f"{settings.deployment}:cache", settings.cache_root, deployment=settings.deployment
        )
        self.replicas = replica_locations(settings) if replicas is None else replicas
        self.transferred: set[ArtifactKey] = set()
        install_readers()
        # Opened last: nothing after it can fail and leave its registry open.
        self.dm = DataManager(
            settings.registry_target if registry is None else registry,
            workdir=settings.home / "work",
            locations=[self.local, *self.replicas],
        )
        self.upkeep = ReplicaUpkeep(self.dm)

    def close(self) -> None:
        self.dm.close()

    # The Cache interface that genoflow.build.steps builds through.
    def lookup(self, key: ArtifactKey) -> Artifact | None:
        """The artifact in this node's cache when whole by its sizes and not registered INVALID.

        A folder whose local replica is INVALID (left by an older genoflow, or by a crash between
        invalidating and moving it aside) is moved aside now, and None returned.
        """
        found = self.cache.lookup(key)
        if found is None:
            return None
        replica = self.upkeep.replica_at(self.local.name, key.relstr)
        if replica is not None and replica.data_type is DataType.INVALID:
            self.upkeep.set_aside(replica)
            return None
        return found

    def workdir(self, label: str) -> contextlib.AbstractContextManager[Path]:
        return self.cache.workdir(label)

    def discard(self, draft: Draft) -> None:
        self.cache.discard(draft)

    def begin(self, key: ArtifactKey) -> Artifact | Draft:
        """A local or transferred artifact when one exists anywhere, else a locked draft."""
        found = self.obtain(key)
        return found if found is not None else self.cache.begin(key)

    def publish(self, draft: Draft, **kwargs: Any) -> Artifact:
        """Publish locally, register this deployment's PRIMARY replica, copy to replicas."""
        artifact = self.cache.publish(draft, **kwargs)
        self.register(artifact)
        return artifact

    def obtain(self, key: ArtifactKey) -> Artifact | None:
        """The artifact in this node's cache, transferring it from a replica when needed."""
        found = self.lookup(key)
        relpath = key.relstr
        if found is not None:
            return found
        known = self.dm.get_data_locations(relpath)
        if not known and not discover(self.dm, self.replicas, relpath):  # peers keep their own
            return None
        try:
            self.upkeep.fetch(relpath, self.local, writable=True)
        except StorageError:
            # No replica could be copied (each bad one is now invalidated): build it here.
            return None
        self.transferred.add(key)
        found = self.cache.lookup(key)
        if found is None:
            raise StorageError("transferred but not readable", file=relpath, stage="transfer")
        return found

    def register(self, artifact: Artifact) -> None:
        """Record the local copy and make sure every replica location holds one too."""
        relpath = artifact.key.relstr
        mine = self.dm.get_data_locations(relpath, location_name=self.local.name)
        if not mine:
            self.dm.register_path(self.local, relpath, relpath, DataType.PRIMARY)
        for location in self.replicas:
            if not self.dm.get_data_locations(relpath, location_name=location.name):
                self.dm.transfer_data(self.local, relpath, [location], relpath)

    def replicas_of(self, key: ArtifactKey) -> list[Replica]:
        return self.dm.get_data_locations(key.relstr)

    def verify_all(self, *, repair: bool, full: bool = True) -> list[RepairOutcome]:
        """Verify every registered replica reachable from here; invalidate bad ones.

        With ``repair``, a bad replica is restored from a valid one; one that no replica can
        restore comes back with ``rebuild`` set (:meth:`chains_to_rebuild` names what to run).
        A bad copy in this node's cache is moved aside either way (see the module's rules).
        """
        outcomes = []
        for replica in self.upkeep.all_replicas(readable=False):
            reachable = self.dm.context.location(replica.location) is not None
            if replica.state is ReplicaState.PENDING or not reachable:
                continue  # being written, or another node's disk: that node verifies it
            outcome = self._verify(replica, repair=repair, full=full)
            if outcome.problems and outcome.restored is None:
                now = self.upkeep.replica_at(replica.location, replica.path)
                if now is not None and now.data_type is DataType.INVALID:
                    self.upkeep.set_aside(now)
            outcomes.append(outcome)
        return outcomes

    def _verify(self, replica: Replica, *, repair: bool, full: bool) -> RepairOutcome:
        if replica.data_type is DataType.INVALID and not repair:
            problem = "invalidated earlier; run `genoflow verify --repair` to restore or rebuild it"
            return RepairOutcome(replica, [problem])
        try:
            return self.upkeep.repair(replica, full=full, restore=repair)
        except NoValidReplica as exc:
            return RepairOutcome(replica, [exc.message], rebuild=True)
        except StorageError as exc:
            return RepairOutcome(replica, [exc.message])

    @staticmethod
    def chains_to_rebuild(outcomes: list[RepairOutcome]) -> list[tuple[str, str]]:
        """The ``(md5, family)`` chains to run so that every ``rebuild`` outcome is built again."""
        chains: dict[tuple[str, str], None] = {}
        for outcome in outcomes:
            key = ArtifactKey.parse(outcome.replica.relpath)
            if outcome.rebuild and outcome.restored is None and key is not None:
                chains[key.md5, key.family] = None
        return list(chains)

    def settle_rebuilds(
        self, outcomes: list[RepairOutcome], failures: dict[tuple[str, str], str]
    ) -> list[RepairOutcome]:
        """The outcomes after the chains ran: each rebuilt replica verified (full) and reported
        as ``restored``; one still missing or bad keeps its problems plus the reason.

        Args:
            outcomes: what :meth:`verify_all` returned.
            failures: ``(md5, family)`` → why that chain's run failed.
        """
        settled = []
        for outcome in outcomes:
            key = ArtifactKey.parse(outcome.replica.relpath)
            if not outcome.rebuild or outcome.restored is not None or key is None:
                settled.append(outcome)
                continue
            settled.append(self._settle(outcome, failures.get((key.md5, key.family))))
        return settled

    def _settle(self, outcome: RepairOutcome, failure: str | None) -> RepairOutcome:
        old = outcome.replica
        now = self.upkeep.replica_at(old.location, old.path)
        problems = list(outcome.problems)
        if failure is not None:
            problems.append(f"rebuilding it failed: {failure}")
        elif now is None or now.data_type is DataType.INVALID or now.state is ReplicaState.PENDING:
            problems.append("the rebuild did not register a new copy here")
        elif found := self.upkeep.verify(now, full=True):
            problems.append(f"the rebuilt copy is bad too: {'; '.join(found)}")
        else:
            return RepairOutcome(old, problems, restored=now, rebuild=True)
        return RepairOutcome(old, problems, rebuild=True)


@contextlib.contextmanager
def open_node(settings: Settings, *, registry: Registry | None = None) -> Iterator[Node]:
    """A :class:`Node` closed on exit; ``registry``, when given, is used and left open."""
    node = Node(settings, registry=registry)
    try:
        yield node
    finally:
        node.close()
