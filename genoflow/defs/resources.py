"""The Dagster resource that hands assets their settings, cache and registry.

Invariant: one :class:`Registry` (one engine, ``create_all`` run once) per resource instance per
process, opened on first use, never at construction (Dagster builds resources when it loads the
code location, where nothing may touch the disk or the network), and closed when Dagster tears
the resource down after a run, or by :meth:`GenoflowResource.close` / a ``with`` block outside
Dagster.
"""

from __future__ import annotations

import contextlib
import os

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr

from genoflow.core.settings import Settings
from genoflow.storage.cache import Cache
from genoflow.storage.node import Node, open_node
from genoflow.storage.registry import Registry


class GenoflowResource(ConfigurableResource):
    """Settings for builds; every field left empty falls back to its GENOFLOW_* variable."""

    home: str | None = Field(
        default=None,
        description="Folder holding cache/, work/ and registry.db (default $GENOFLOW_HOME, "
        "else ./.genoflow).",
    )
    sort_memory: str | None = Field(
        default=None,
        description="Total memory cap of one sort across its threads, e.g. 768M or 2G "
        "(default $GENOFLOW_SORT_MEMORY, else 768M).",
    )
    threads: int | None = Field(
        default=None,
        description="Threads one build may use (default $GENOFLOW_THREADS, else all cores).",
    )
    _registry: Registry | None = PrivateAttr(default=None)
    _registry_pid: int | None = PrivateAttr(default=None)

    def settings(self) -> Settings:
        """The effective settings: this resource's config over the environment."""
        return Settings.from_env().with_overrides(
            home=self.home, sort_memory=self.sort_memory, threads=self.threads
        )

    def cache(self) -> Cache:
        return Cache(self.settings().cache_root)

    def node(self) -> contextlib.AbstractContextManager[Node]:
        """This node's cache, replica locations and DataManager (closed on exit), on this
        resource's registry (left open for the next step, closed at teardown)."""
        return open_node(self.settings(), registry=self.registry())

    def registry(self) -> Registry:
        """This resource's registry, opened on the first call in this process and reused after.

        A process forked after the first call opens its own: a pooled connection is never
        shared across processes.
        """
        if self._registry is None or self._registry_pid != os.getpid():
            self._registry = Registry(self.settings().registry_target)
            self._registry_pid = os.getpid()
        return self._registry

    def close(self) -> None:
        """Close the registry opened by :meth:`registry`, if any; closing twice is harmless."""
        registry, self._registry = self._registry, None
        if registry is not None and self._registry_pid == os.getpid():
            registry.close()

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        """Dagster's teardown, once per run and process, failed runs included: close."""
        self.close()

    def __enter__(self) -> GenoflowResource:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
