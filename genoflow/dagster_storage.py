"""Compatibility: the storage classes' old module path, for a ``dagster.yaml`` written before the
layout change (``module: genoflow.dagster_storage``). They live in :mod:`genoflow.instance.storage`;
a ``dagster.yaml`` genoflow wrote itself is rewritten with the new path the next time genoflow
opens the instance.
"""

from genoflow.instance.storage import EventLogStorage, RunStorage, ScheduleStorage

__all__ = ["EventLogStorage", "RunStorage", "ScheduleStorage"]
