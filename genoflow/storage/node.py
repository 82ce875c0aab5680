"""This node's view of storage: its local cache, the replica locations, and the DataManager.

A :class:`Node` stands in for the :class:`Cache` wherever artifacts are built, adding two rules:
- before building, an artifact that any registered replica holds is transferred (verified),
  never recomputed;
- after publishing, the artifact is registered as a PRIMARY replica of this deployment's cache
  and copied to every configured replica location (data first, marker last).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from genoflow.config import Settings
from genoflow.errors import StorageError
from genoflow.storage.cache import Artifact, Cache, Draft
from genoflow.storage.datamanager import DataManager, RepairOutcome
from genoflow.storage.layout import ArtifactKey
from genoflow.storage.locations import DataType, LocalLocation, Location
from genoflow.storage.replicas import Replica, ReplicaState


def install_readers() -> None:
    """Let staging read ``https://`` and ``gs://`` sources (idempotent, no network)."""
    from genoflow.storage import gcs, https

    https.register_readers()
    gcs.register_readers()


def replica_locations(settings: Settings) -> list[Location]:
    """The GCS locations named by ``GENOFLOW_REPLICAS`` (shared by every deployment)."""
    from genoflow.storage.gcs import GcsLocation

    return [GcsLocation(uri.rstrip("/"), uri, deployment="gcs") for uri in settings.replicas]


class Node:
    """The local cache plus replica tracking, for one deployment.

    Args:
        settings: where the cache and registry are, this deployment's name, replica URIs.
        replicas: replica locations (default: from ``settings.replicas``).
    """

    def __init__(self, settings: Settings, *, replicas: list[Location] | None = None) -> None:
        self.settings = settings
        self.cache = Cache(settings.cache_root)
        self.local = LocalLocation(
            f"{settings.deployment}:cache", settings.cache_root, deployment=settings.deployment
        )
        self.replicas = replica_locations(settings) if replicas is None else replicas
        self.dm = DataManager(
            settings.registry_target,
            workdir=settings.home / "work",
            locations=[self.local, *self.replicas],
        )
        self.transferred: set[ArtifactKey] = set()
        install_readers()

    def close(self) -> None:
        self.dm.close()

    # The Cache interface that pipeline.py builds through.
    def lookup(self, key: ArtifactKey) -> Artifact | None:
        return self.cache.lookup(key)

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
        found = self.cache.lookup(key)
        relpath = key.relstr
        if found is not None:
            return found
        if not self.dm.get_data_locations(relpath):
            return None
        try:
            self.dm.fetch(relpath, self.local, writable=True)
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
        mine = self.dm.get_data_locations(relpath, location=self.local.name)
        if not mine:
            self.dm.register_path(self.local, relpath, relpath, DataType.PRIMARY)
        for location in self.replicas:
            if not self.dm.get_data_locations(relpath, location=location.name):
                self.dm.transfer_data(self.local, relpath, [location], relpath)

    def replicas_of(self, key: ArtifactKey) -> list[Replica]:
        return self.dm.get_data_locations(key.relstr)

    def verify_all(self, *, repair: bool, full: bool = True) -> list[RepairOutcome]:
        """Verify every registered replica reachable from here; invalidate bad ones.

        With ``repair``, a bad replica is restored from a valid one; a replica that cannot be
        restored is reported with the reason and stays INVALID.
        """
        outcomes = []
        for replica in self.dm.all_replicas(readable=False):
            if replica.state is ReplicaState.PENDING or self.dm.location(replica.location) is None:
                continue  # being written, or another node's disk: that node verifies it
            if replica.data_type is DataType.INVALID and not repair:
                problem = "invalidated earlier; run `genoflow verify --repair` to restore it"
                outcomes.append(RepairOutcome(replica, [problem]))
                continue
            try:
                outcomes.append(self.dm.repair(replica, full=full, restore=repair))
            except StorageError as exc:
                outcomes.append(RepairOutcome(replica, [exc.message]))
        return outcomes


@contextlib.contextmanager
def open_node(settings: Settings) -> Iterator[Node]:
    node = Node(settings)
    try:
        yield node
    finally:
        node.close()
