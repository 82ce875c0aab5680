"""The code location's one assembler: every asset, check, job, sensor, schedule and resource of
genoflow.

The sensor interval and the backfill cron are read from the environment here, once per load of
the code location, because Dagster fixes them when it loads the definitions.
"""

from __future__ import annotations

from dagster import Definitions

from genoflow.build.steps import CHAINS
from genoflow.defs.assets import family_assets, family_checks
from genoflow.defs.automation import AutomationSettings, automation_sensor
from genoflow.defs.executors import executor_from_env
from genoflow.defs.io_manager import ArtifactIOManager
from genoflow.defs.jobs import family_job
from genoflow.defs.resources import GenoflowResource
from genoflow.defs.schedules import backfill_schedule
from genoflow.defs.sensors import manifest_sensor

genoflow_resource = GenoflowResource()
automation = AutomationSettings.from_env()
jobs = {family: family_job(family) for family in CHAINS}

defs = Definitions(
    assets=[asset for family in CHAINS for asset in family_assets(family)],
    asset_checks=[check for family in CHAINS for check in family_checks(family)],
    jobs=list(jobs.values()),
    sensors=[
        manifest_sensor(list(jobs.values()), minimum_interval_seconds=automation.sensor_interval),
        automation_sensor(minimum_interval_seconds=automation.sensor_interval),
    ],
    schedules=[
        backfill_schedule(family, job, cron=automation.backfill_cron)
        for family, job in jobs.items()
    ],
    resources={
        "genoflow": genoflow_resource,
        "artifact_io_manager": ArtifactIOManager(genoflow=genoflow_resource),
    },
    executor=executor_from_env(),  # GENOFLOW_EXECUTOR: in_process (default), multiprocess, celery
)
