"""The embedded instance's ``dagster.yaml``: what genoflow writes, and when it may rewrite it.

Invariant: genoflow writes a ``dagster.yaml`` only where there is none, or over one it wrote itself
(it starts with the generated header), so an instance from an earlier genoflow (another storage
module path, a folder since moved) is brought up to date on first open; a deployment's own file is
never touched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from genoflow.core.settings import Settings

_GENERATED = "# Written by genoflow for the embedded single-machine instance (SQLite storage).\n"


def dagster_storage_yaml(dagster_home: Path) -> str:
    """Dagster's SQLite storages in their usual folders under ``dagster_home``, through
    subclasses that open each database once and create it once across processes, and its
    local compute logs captured without four echo processes a run
    (genoflow/instance/storage.py)."""
    history = json.dumps(str(dagster_home / "history"))  # a JSON string is a YAML string
    runs = json.dumps(str(dagster_home / "history" / "runs"))
    schedules = json.dumps(str(dagster_home / "schedules"))
    compute_logs = json.dumps(str(dagster_home / "storage"))  # Dagster's default folder
    return (
        f"run_storage:\n  module: genoflow.instance.storage\n  class: RunStorage\n"
        f"  config:\n    base_dir: {history}\n"
        f"event_log_storage:\n  module: genoflow.instance.storage\n  class: EventLogStorage\n"
        f"  config:\n    base_dir: {runs}\n"
        f"schedule_storage:\n  module: genoflow.instance.storage\n  class: ScheduleStorage\n"
        f"  config:\n    base_dir: {schedules}\n"
        f"compute_logs:\n  module: genoflow.instance.storage\n  class: ComputeLogManager\n"
        f"  config:\n    base_dir: {compute_logs}\n"
    )


# How the daemon runs what it launches (genoflow/instance/launcher.py): each run in a worker
# forked from a pre-imported forkserver, not a new interpreter. The queue is Dagster's, polled
# about every 0.5 s rather than every 5 (launcher.DEQUEUE_SECONDS), with GENOFLOW_DAEMON_RUNS
# runs in flight (the cores,
# not Dagster's 10, which on a small machine only made ten start-ups compete). Run monitoring
# fails a run whose worker is gone (its launcher was killed); it polls every 5 s. A run may wait
# NOT_STARTED in `genoflow serve`'s own build queue for long, so the start timeout is a day.
_DAEMON = (
    "run_coordinator:\n  module: genoflow.instance.launcher\n  class: RunQueue\n"
    "run_launcher:\n  module: genoflow.instance.launcher\n  class: ForkRunLauncher\n"
    "run_monitoring:\n  enabled: true\n  poll_interval_seconds: 5\n"
    "  start_timeout_seconds: 86400\n  max_resume_run_attempts: 0\n"
)


def dagster_yaml(dagster_home: Path) -> str:
    """The ``dagster.yaml`` of the embedded instance in ``dagster_home``: genoflow's SQLite
    storages, run queue, run launcher and run monitoring."""
    return (
        _GENERATED + "telemetry:\n  enabled: false\n" + dagster_storage_yaml(dagster_home) + _DAEMON
    )


def foreign_dagster_yaml(dagster_home: Path) -> bool:
    """Whether ``dagster_home`` holds a ``dagster.yaml`` genoflow did not write (a deployment's
    own: PostgreSQL storages, a run launcher…), which only Dagster can validate."""
    config = dagster_home / "dagster.yaml"
    try:
        with open(config, "rb") as handle:
            return not handle.read(len(_GENERATED)).startswith(_GENERATED.encode())
    except OSError:
        return config.exists()  # there but unreadable: Dagster will say why


def ensure_dagster_home(settings: Settings) -> Path:
    """Create the Dagster instance folder with genoflow's ``dagster.yaml`` if it is new.

    A ``dagster.yaml`` genoflow wrote earlier (another version, or a folder since moved) is
    brought up to date (written whole, then renamed); one written by anybody else is left
    as it is.
    """
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    config = settings.dagster_home / "dagster.yaml"
    current = config.read_text() if config.exists() else _GENERATED
    wanted = dagster_yaml(settings.dagster_home)
    if current != wanted and current.startswith(_GENERATED):
        partial = config.with_name(f".dagster.yaml.{os.getpid()}")
        partial.write_text(wanted)
        partial.replace(config)
    return settings.dagster_home
