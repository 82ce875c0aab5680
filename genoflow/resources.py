"""The Dagster resource that hands assets their settings, cache and registry."""

from __future__ import annotations

import contextlib

from dagster import ConfigurableResource
from pydantic import Field

from genoflow.config import Settings
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

    def settings(self) -> Settings:
        """The effective settings: this resource's config over the environment."""
        return Settings.from_env().with_overrides(
            home=self.home, sort_memory=self.sort_memory, threads=self.threads
        )

    def cache(self) -> Cache:
        return Cache(self.settings().cache_root)

    def node(self) -> contextlib.AbstractContextManager[Node]:
        """This node's cache, replica locations and DataManager (closed on exit)."""
        return open_node(self.settings())

    def registry(self) -> Registry:
        return Registry(self.settings().registry_target)
