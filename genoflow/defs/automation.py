"""Declarative automation: each chain follows its source by itself, on real changes only.

Invariant: ``sorted`` and ``index`` are requested only when an upstream artifact's *data
version* (its content checksum) changed — a re-staged source with identical bytes cascades
nothing — and never for an upstream update made by a run whose asset selection also held them
(a whole-chain run from the manifest sensor or the backfill is not followed by a second one).
The automation sensor that evaluates these conditions is RUNNING by default: Dagster's implicit
one starts STOPPED.

The tick settings (cron, intervals) are fixed when Dagster loads the definitions, so
:meth:`AutomationSettings.from_env` is called by the assembler, once per code location load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dagster import (
    AssetSelection,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
)
from dagster._utils.schedules import is_valid_cron_schedule

from genoflow.core.settings import (
    DEFAULT_BACKFILL_CRON,
    DEFAULT_SENSOR_INTERVAL,
    automation_variables,
)

AUTOMATION_SENSOR_NAME = "chain_automation"


@dataclass(frozen=True)
class AutomationSettings:
    """When the daemon looks.

    Attributes:
        backfill_cron: when the nightly backfill schedules run (UTC), ``GENOFLOW_BACKFILL_CRON``.
        sensor_interval: least seconds between two ticks of the manifest and automation
            sensors, ``GENOFLOW_SENSOR_INTERVAL``.
    """

    backfill_cron: str = DEFAULT_BACKFILL_CRON
    sensor_interval: int = DEFAULT_SENSOR_INTERVAL

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AutomationSettings:
        """Read ``GENOFLOW_BACKFILL_CRON`` and ``GENOFLOW_SENSOR_INTERVAL``.

        Raises:
            ValueError: the cron string or the interval is not usable.
        """
        cron, interval = automation_variables(environ)
        if not is_valid_cron_schedule(cron):
            raise ValueError(f"GENOFLOW_BACKFILL_CRON is not a cron schedule: {cron!r}")
        return cls(backfill_cron=cron, sensor_interval=interval)


def chain_condition() -> AutomationCondition:
    """Request an asset when an upstream partition's content changed, outside a run building it.

    This is ``eager()`` without its ``newly_missing`` branch, and with ``any_deps_updated``
    narrowed to a data-version change made by a run that did not also target this asset. A
    whole-chain run (manifest sensor, backfill) therefore never arms it, however its steps fall
    between ticks: eager's ``newly_missing`` stays armed from the moment a partition is added
    until the asset is built, so a tick that sees the source built while the run's own step is
    not yet visible would launch a second build. A partition that stays missing is the nightly
    backfill's to build.
    """
    changed = (
        AutomationCondition.data_version_changed()
        & ~AutomationCondition.executed_with_root_target()
    ).with_label("data_version_changed_elsewhere")
    trigger = AutomationCondition.any_deps_match(
        changed | AutomationCondition.will_be_requested()
    ).with_label("any_deps_data_changed")
    return (
        trigger.since_last_handled()
        & ~AutomationCondition.any_deps_missing()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    ).with_label("eager_on_data_change")


def automation_sensor(*, minimum_interval_seconds: int) -> AutomationConditionSensorDefinition:
    """The sensor that evaluates every asset's automation condition; RUNNING by default."""
    return AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR_NAME,
        target=AssetSelection.all(),
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=minimum_interval_seconds,
        description="Rebuilds sorted and index artifacts when their upstream content changed.",
    )
