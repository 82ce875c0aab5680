"""What a DataManager and its replica upkeep share: the registry, scratch space, locations.

StreamFlow's DataManager is built on a ``StreamFlowContext`` that holds what every manager shares;
:class:`StorageContext` plays that part here, so :class:`~genoflow.storage.datamanager.DataManager`
can keep StreamFlow's public methods and nothing else, and
:class:`~genoflow.storage.upkeep.ReplicaUpkeep` can work on the same state without reaching into
the manager's private names.

Vocabulary (one meaning per word, everywhere in ``genoflow.storage``):
- ``path``: where data is within a location, a POSIX ``str`` relative to the location's root
  (for a replica, its artifact folder), as StreamFlow's ``DataLocation.path``;
- ``relpath``: the artifact's logical path, its cache key relpath, shared by all its replicas;
- ``location``: a :class:`Location` object; ``location_name``: the name of one.

Invariants:
- a scratch folder is a fresh sibling temp folder under ``workdir/transfer``, removed on exit
  even when the work in it failed;
- the registry is closed by :meth:`StorageContext.close` only when this context opened it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from sqlalchemy.engine import Connection

from genoflow.storage import atomic, replicas
from genoflow.storage.locations import Location
from genoflow.storage.registry import Registry
from genoflow.storage.replicas import Replica


class StorageContext:
    """The registry, a scratch area and the locations this node can reach.

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

    def add_location(self, location: Location) -> None:
        """Make ``location`` reachable from this node (its row is written on first use)."""
        self._locations[location.name] = location

    def location(self, location_name: str) -> Location | None:
        """The location of that name, when this node can reach it."""
        return self._locations.get(location_name)

    def rank(self, found: list[Replica], dst_deployment: str) -> list[Replica]:
        """``found`` ordered as sources for ``dst_deployment``: best first, unreachable last."""
        local = {name for name, location in self._locations.items() if location.is_local}
        return replicas.rank_sources(
            found, dst_deployment, reachable=set(self._locations), local=local
        )

    def find(self, location_name: str, path: str, *, readable: bool = True) -> Replica | None:
        """The replica at ``path`` within the named location; only a readable one (available,
        not INVALID) unless ``readable`` is False; None when there is none."""
        with self.begin() as connection:
            found = replicas.select(
                connection, location=location_name, path=path, readable=readable
            )
        return found[0] if found else None

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        """A registry transaction, committed on exit."""
        with self.registry.begin() as connection:
            yield connection

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A fresh scratch folder under ``workdir``, removed on exit."""
        folder = atomic.temp_sibling(self.workdir / "transfer")
        try:
            yield folder
        finally:
            atomic.remove_tree(folder)

    def close(self) -> None:
        """Release the registry when this context opened it."""
        if self._owns_registry:
            self.registry.close()
