"""Declarative automation: each chain follows its source by itself, on real changes only.

Invariant: ``sorted`` and ``index`` are requested only when an upstream artifact's *data
version* (its content checksum) changed — a re-staged source with identical bytes cascades
nothing — and never for an upstream update made by a run that also built them (a whole-chain
run from the manifest sensor is not followed by a second one). The automation sensor that
evaluates these conditions is RUNNING by default: Dagster's implicit one starts STOPPED.

The tick settings (cron, intervals) are fixed when Dagster loads the definitions, so
:meth:`AutomationSettings.from_env` is called by the assembler, once per code location load.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from dagster import (
    AssetSelection,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
)
from dagster._utils.schedules import is_valid_cron_schedule

DEFAULT_BACKFILL_CRON = "0 2 * * *"
DEFAULT_SENSOR_INTERVAL = 30
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
        env = os.environ if environ is None else environ
        cron = (env.get("GENOFLOW_BACKFILL_CRON") or DEFAULT_BACKFILL_CRON).strip()
        if not is_valid_cron_schedule(cron):
            raise ValueError(f"GENOFLOW_BACKFILL_CRON is not a cron schedule: {cron!r}")
        interval = env.get("GENOFLOW_SENSOR_INTERVAL") or str(DEFAULT_SENSOR_INTERVAL)
        if not interval.isdigit() or int(interval) < 1:
            raise ValueError(
                f"GENOFLOW_SENSOR_INTERVAL must be whole seconds ≥ 1, got {interval!r}"
            )
        return cls(backfill_cron=cron, sensor_interval=int(interval))


def chain_condition() -> AutomationCondition:
    """``eager()``, reacting to an upstream data-version change instead of any update."""
    changed = (
        AutomationCondition.data_version_changed()
        & ~AutomationCondition.executed_with_root_target()
    ).with_label("data_version_changed_without_root")
    return AutomationCondition.eager().replace(
        "any_deps_updated",
        AutomationCondition.any_deps_match(
            changed | AutomationCondition.will_be_requested()
        ).with_label("any_deps_data_changed"),
    )


def automation_sensor(*, minimum_interval_seconds: int) -> AutomationConditionSensorDefinition:
    """The sensor that evaluates every asset's automation condition; RUNNING by default."""
    return AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR_NAME,
        target=AssetSelection.all(),
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=minimum_interval_seconds,
        description="Rebuilds sorted and index artifacts when their upstream content changed.",
    )
