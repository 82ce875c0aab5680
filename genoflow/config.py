"""Settings from the environment, with the defaults of a single machine.

Read only when a command or a run starts — never at import time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from genoflow.processors.base import parse_memory

DEFAULT_HOME = ".genoflow"
DEFAULT_SORT_MEMORY = "768M"

_GENERATED = "# Written by genoflow for the embedded single-machine instance (SQLite storage).\n"


def dagster_storage_yaml(dagster_home: Path) -> str:
    """Dagster's SQLite storages in their usual folders under ``dagster_home``, through
    subclasses that open each database once (genoflow/dagster_storage.py)."""
    history = json.dumps(str(dagster_home / "history"))  # a JSON string is a YAML string
    runs = json.dumps(str(dagster_home / "history" / "runs"))
    return (
        f"run_storage:\n  module: genoflow.dagster_storage\n  class: RunStorage\n"
        f"  config:\n    base_dir: {history}\n"
        f"event_log_storage:\n  module: genoflow.dagster_storage\n  class: EventLogStorage\n"
        f"  config:\n    base_dir: {runs}\n"
    )


def dagster_yaml(dagster_home: Path) -> str:
    """The ``dagster.yaml`` of the embedded instance in ``dagster_home``."""
    return _GENERATED + "telemetry:\n  enabled: false\n" + dagster_storage_yaml(dagster_home)


@dataclass(frozen=True)
class Settings:
    """Where genoflow keeps things and how much of the machine a build may use.

    Attributes:
        home: holds ``cache/``, ``work/``, ``registry.db`` and, unless DAGSTER_HOME is set,
            the Dagster instance (``dagster/``).
        sort_memory: the total memory cap of one sort, in bytes, across all its threads.
        threads: threads one build may use.
        dagster_home: the Dagster instance folder.
        deployment: the name of the machines sharing this node's cache (``local``).
        replicas: URIs (``gs://bucket/prefix``) every published artifact is copied to.
        registry_url: a SQLAlchemy URL for a shared registry; None means the SQLite file.
        allowed_roots: folders local sources may be read from; empty means each manifest's
            own folder and below.
    """

    home: Path
    sort_memory: int
    threads: int
    dagster_home: Path
    deployment: str = "local"
    replicas: tuple[str, ...] = ()
    registry_url: str | None = None
    allowed_roots: tuple[Path, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``GENOFLOW_*`` variables (see the README's configuration table).

        Raises:
            ValueError: a variable holds an unusable value.
        """
        env = os.environ if environ is None else environ
        home = Path(env.get("GENOFLOW_HOME") or DEFAULT_HOME).expanduser().resolve()
        threads = int(env.get("GENOFLOW_THREADS") or os.cpu_count() or 1)
        if threads < 1:
            raise ValueError(f"GENOFLOW_THREADS must be at least 1, got {threads}")
        memory = parse_memory(env.get("GENOFLOW_SORT_MEMORY") or DEFAULT_SORT_MEMORY)
        dagster_home = Path(env.get("DAGSTER_HOME") or home / "dagster").expanduser().resolve()
        replicas = tuple(
            u.strip() for u in env.get("GENOFLOW_REPLICAS", "").split(",") if u.strip()
        )
        for uri in replicas:
            if not uri.startswith("gs://") or len(uri) <= len("gs://"):
                raise ValueError(
                    f"GENOFLOW_REPLICAS entries must be gs://bucket[/prefix], got {uri}"
                )
        return cls(
            home=home,
            sort_memory=memory,
            threads=threads,
            dagster_home=dagster_home,
            deployment=env.get("GENOFLOW_DEPLOYMENT") or "local",
            replicas=replicas,
            registry_url=env.get("GENOFLOW_REGISTRY_URL") or None,
            allowed_roots=_roots(env.get("GENOFLOW_ALLOWED_ROOTS", "")),
        )

    def roots_for(self, manifest: str | Path) -> tuple[Path, ...]:
        """Where a local source listed in ``manifest`` may be read from."""
        return self.allowed_roots or (Path(manifest).resolve().parent,)

    def with_overrides(
        self, *, home: str | None, sort_memory: str | None, threads: int | None
    ) -> Settings:
        """Settings with any non-None value replaced (a resource's config wins over the env)."""
        changed = self
        if home:
            changed = replace(changed, home=Path(home).expanduser().resolve())
        if sort_memory:
            changed = replace(changed, sort_memory=parse_memory(sort_memory))
        if threads:
            changed = replace(changed, threads=threads)
        return changed

    @property
    def cache_root(self) -> Path:
        return self.home / "cache"

    @property
    def registry_path(self) -> Path:
        return self.home / "registry.db"

    @property
    def registry_target(self) -> str:
        """Where the registry lives: ``GENOFLOW_REGISTRY_URL``, else the SQLite file."""
        return self.registry_url or str(self.registry_path)

    def ensure_dagster_home(self) -> Path:
        """Create the Dagster instance folder with genoflow's ``dagster.yaml`` if it is new.

        A ``dagster.yaml`` genoflow wrote earlier (another version, or a folder since moved) is
        brought up to date (written whole, then renamed); one written by anybody else is left
        as it is.
        """
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        config = self.dagster_home / "dagster.yaml"
        current = config.read_text() if config.exists() else _GENERATED
        wanted = dagster_yaml(self.dagster_home)
        if current != wanted and current.startswith(_GENERATED):
            partial = config.with_name(f".dagster.yaml.{os.getpid()}")
            partial.write_text(wanted)
            partial.replace(config)
        return self.dagster_home


def _roots(value: str) -> tuple[Path, ...]:
    parts = [part.strip() for chunk in value.split(",") for part in chunk.split(os.pathsep)]
    roots = tuple(Path(part).expanduser().resolve() for part in parts if part)
    for root in roots:
        if not root.is_dir():
            raise ValueError(f"GENOFLOW_ALLOWED_ROOTS names {root}, which is not a folder")
    return roots
