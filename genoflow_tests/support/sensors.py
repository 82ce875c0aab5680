"""One tick of the manifest sensor against a test instance, and the manifest header it reads."""

from __future__ import annotations

from pathlib import Path

from dagster import DagsterInstance, SensorResult, build_sensor_context

from genoflow.build.steps import CHAINS
from genoflow.defs.jobs import family_job
from genoflow.defs.resources import GenoflowResource
from genoflow.defs.sensors import manifest_sensor

HEADER = "name\turi\tmd5\tformat\tsize\n"


def tick(instance: DagsterInstance, home: Path, cursor: str | None):
    sensor = manifest_sensor([family_job(f) for f in CHAINS], minimum_interval_seconds=30)
    # GenoflowResource closes its registry at teardown, which makes Dagster treat it as a
    # generator resource: its context must be entered, as the daemon does for each tick.
    with build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"genoflow": GenoflowResource(home=str(home))},
    ) as context:
        result = sensor(context)
    if isinstance(result, SensorResult):
        for request in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
    return result
