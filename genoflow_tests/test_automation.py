"""Declarative automation: a source's new content flows down its chain; nothing else does."""

from __future__ import annotations

import pytest
from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetSelection,
    DagsterInstance,
    DefaultSensorStatus,
    evaluate_automation_conditions,
)
from dagster._core.definitions.data_version import CODE_VERSION_TAG, DATA_VERSION_TAG
from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
from dagster._core.storage.dagster_run import DagsterRunStatus
from dagster._core.storage.tags import PARTITION_NAME_TAG
from dagster._core.test_utils import create_run_for_test

from genoflow.build.steps import version_of
from genoflow.definitions import defs
from genoflow.defs.automation import AUTOMATION_SENSOR_NAME, AutomationSettings

MD5 = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"


def _built(instance: DagsterInstance, family: str, asset: str, md5: str, content: str) -> None:
    """Record a materialization of one artifact whose content checksum is ``content``."""
    instance.report_runless_asset_event(
        AssetMaterialization(
            asset_key=AssetKey([family, asset]),
            partition=md5,
            tags={DATA_VERSION_TAG: content, CODE_VERSION_TAG: version_of(family, asset)},
        )
    )


def _built_chain(instance: DagsterInstance, md5: str, content: str) -> None:
    for asset in ("source", "sorted", "index"):
        _built(instance, "intervals", asset, md5, f"{asset}-{content}")


class Ticks:
    """Successive automation evaluations over one instance, as the daemon would run them."""

    def __init__(self, instance: DagsterInstance) -> None:
        self.instance = instance
        self.cursor = None

    def __call__(self) -> dict[str, set[str | None]]:
        # Only the intervals chain is exercised here; evaluating it alone keeps each tick short.
        result = evaluate_automation_conditions(
            defs,
            self.instance,
            asset_selection=AssetSelection.groups("intervals"),
            cursor=self.cursor,
        )
        self.cursor = result.cursor
        return {
            "/".join(key.path): result.get_requested_partitions(key)
            for key in defs.resolve_all_asset_keys()
            if result.get_num_requested(key)
        }


@pytest.fixture
def ticks(instance) -> Ticks:
    instance.add_dynamic_partitions("intervals_md5", [MD5, OTHER])
    tick = Ticks(instance)
    assert tick() == {}
    return tick


def test_a_new_source_content_requests_its_sorted_and_index(instance, ticks) -> None:
    _built_chain(instance, MD5, "a")
    assert ticks() == {}
    _built(instance, "intervals", "source", MD5, "source-b")
    assert ticks() == {"intervals/sorted": {MD5}, "intervals/index": {MD5}}


def test_the_chain_follows_only_the_partition_that_changed(instance, ticks) -> None:
    _built_chain(instance, MD5, "a")
    _built_chain(instance, OTHER, "a")
    ticks()
    _built(instance, "intervals", "source", OTHER, "source-b")
    assert ticks() == {"intervals/sorted": {OTHER}, "intervals/index": {OTHER}}


def test_a_source_restaged_with_identical_content_cascades_nothing(instance, ticks) -> None:
    _built_chain(instance, MD5, "a")
    ticks()
    _built(instance, "intervals", "source", MD5, "source-a")
    assert ticks() == {}


def test_a_whole_chain_built_between_ticks_is_not_rebuilt(instance, ticks) -> None:
    _built_chain(instance, MD5, "a")
    assert ticks() == {}
    assert ticks() == {}


def _built_in_run(instance: DagsterInstance, selection: list[str], md5: str) -> None:
    """A run selecting ``selection`` of the intervals chain that built only its source."""
    run = create_run_for_test(
        instance,
        job_name="intervals_chain",
        status=DagsterRunStatus.FAILURE,
        tags={PARTITION_NAME_TAG: md5},
        asset_selection=frozenset(AssetKey(["intervals", asset]) for asset in selection),
    )
    materialization = AssetMaterialization(
        asset_key=AssetKey(["intervals", "source"]),
        partition=md5,
        tags={DATA_VERSION_TAG: "source-c", CODE_VERSION_TAG: version_of("intervals", "source")},
    )
    event = DagsterEvent(
        event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
        job_name="intervals_chain",
        event_specific_data=StepMaterializationData(materialization),
    )
    instance.report_dagster_event(event, run_id=run.run_id)


def test_a_chain_run_that_built_only_its_source_does_not_arm_automation(instance, ticks) -> None:
    _built_in_run(instance, ["source", "sorted", "index"], MD5)
    assert ticks() == {}
    assert ticks() == {}


def test_a_run_of_the_source_alone_is_followed_down_the_chain(instance, ticks) -> None:
    _built_in_run(instance, ["source"], MD5)
    assert ticks() == {"intervals/sorted": {MD5}, "intervals/index": {MD5}}


def test_a_new_partition_waits_for_its_source(instance, ticks) -> None:
    instance.add_dynamic_partitions("intervals_md5", ["00000000000000000000000000000001"])
    assert ticks() == {}


def test_a_request_is_made_once_not_on_every_tick(instance, ticks) -> None:
    _built_chain(instance, MD5, "a")
    ticks()
    _built(instance, "intervals", "source", MD5, "source-b")
    assert ticks()
    assert ticks() == {}


def test_only_downstream_assets_carry_the_condition() -> None:
    graph = defs.resolve_asset_graph()
    conditions = {
        "/".join(key.path): graph.get(key).automation_condition
        for key in defs.resolve_all_asset_keys()
    }
    assert {key for key, condition in conditions.items() if condition} == {
        "alignments/sorted",
        "alignments/index",
        "intervals/sorted",
        "intervals/index",
    }
    assert "data_version_changed" in str(conditions["intervals/index"])


def test_the_automation_sensor_is_running_by_default_over_every_asset() -> None:
    sensor = next(s for s in defs.sensors if s.name == AUTOMATION_SENSOR_NAME)
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    graph = defs.resolve_asset_graph()
    assert sensor.asset_selection.resolve(graph) == set(defs.resolve_all_asset_keys())


def test_the_manifest_sensor_and_backfill_schedules_are_on_by_default() -> None:
    manifest = next(s for s in defs.sensors if s.name == "manifest_sensor")
    assert manifest.default_status == DefaultSensorStatus.RUNNING
    assert sorted(s.name for s in defs.schedules) == [
        "alignments_backfill",
        "intervals_backfill",
        "passthrough_backfill",
    ]
    assert all(s.default_status.value == "RUNNING" for s in defs.schedules)


def test_settings_reject_a_cron_that_is_not_one() -> None:
    with pytest.raises(ValueError, match="GENOFLOW_BACKFILL_CRON"):
        AutomationSettings.from_env({"GENOFLOW_BACKFILL_CRON": "every night"})


def test_settings_read_the_cron_and_interval() -> None:
    settings = AutomationSettings.from_env(
        {"GENOFLOW_BACKFILL_CRON": "30 3 * * 1", "GENOFLOW_SENSOR_INTERVAL": "5"}
    )
    assert (settings.backfill_cron, settings.sensor_interval) == ("30 3 * * 1", 5)
