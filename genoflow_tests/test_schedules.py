"""The nightly backfill and ``genoflow backfill``: missing or stale partitions, never twice."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterInstance,
    DagsterRunStatus,
    build_schedule_context,
)
from dagster._core.definitions.data_version import CODE_VERSION_TAG
from dagster._core.storage.tags import PARTITION_NAME_TAG
from dagster._core.test_utils import create_run_for_test

from genoflow.build.steps import CHAINS, version_of
from genoflow.definitions import defs
from genoflow.defs.backfill import plan

MD5 = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"
NIGHT = dt.datetime(2026, 11, 23, 2, 0, tzinfo=dt.UTC)


@pytest.fixture
def instance(instance: DagsterInstance) -> DagsterInstance:
    """The shared test instance, with the two md5 partitions these schedules evaluate."""
    instance.add_dynamic_partitions("intervals_md5", [MD5, OTHER])
    return instance


def _built(instance: DagsterInstance, asset: str, md5: str, *, version: str | None = None) -> None:
    """Record a materialization of ``intervals/{asset}`` at its current (or another) version."""
    instance.report_runless_asset_event(
        AssetMaterialization(
            asset_key=AssetKey(["intervals", asset]),
            partition=md5,
            tags={CODE_VERSION_TAG: version or version_of("intervals", asset)},
        )
    )


def _up_to_date(instance: DagsterInstance, md5: str) -> None:
    for asset in CHAINS["intervals"]:
        _built(instance, asset, md5)


def _tick(instance: DagsterInstance, when: dt.datetime = NIGHT):
    context = build_schedule_context(
        instance=instance, scheduled_execution_time=when, repository_def=defs.get_repository_def()
    )
    schedule = defs.get_repository_def().get_schedule_def("intervals_backfill")
    return schedule.evaluate_tick(context)


def _selected(request) -> list[str]:
    return ["/".join(key.path) for key in request.asset_selection]


def test_missing_partitions_are_requested_with_their_whole_chain(instance) -> None:
    _up_to_date(instance, OTHER)
    (request,) = _tick(instance).run_requests
    assert request.partition_key == MD5
    assert _selected(request) == ["intervals/source", "intervals/sorted", "intervals/index"]


def test_up_to_date_partitions_are_a_skip(instance) -> None:
    _up_to_date(instance, MD5)
    _up_to_date(instance, OTHER)
    result = _tick(instance)
    assert not result.run_requests
    assert "up to date" in result.skip_message


def test_stale_after_a_code_version_bump_reruns_from_that_asset_down(instance) -> None:
    _up_to_date(instance, OTHER)
    _built(instance, "source", MD5)
    _built(instance, "sorted", MD5, version="0")
    _built(instance, "index", MD5)
    (request,) = _tick(instance).run_requests
    assert _selected(request) == ["intervals/sorted", "intervals/index"]
    assert "stale (code version 0 → " in request.tags["genoflow/reason"]


def test_a_partition_with_a_run_in_progress_is_not_requested_again(instance) -> None:
    _up_to_date(instance, OTHER)
    create_run_for_test(
        instance,
        job_name="intervals_chain",
        status=DagsterRunStatus.STARTED,
        tags={PARTITION_NAME_TAG: MD5},
    )
    result = _tick(instance)
    assert not result.run_requests


def test_an_automation_run_in_progress_also_counts(instance) -> None:
    _up_to_date(instance, OTHER)
    create_run_for_test(
        instance,
        job_name="__ASSET_JOB",
        status=DagsterRunStatus.STARTING,
        tags={PARTITION_NAME_TAG: MD5},
        asset_selection=frozenset({AssetKey(["intervals", "sorted"])}),
    )
    assert not _tick(instance).run_requests


def test_a_finished_run_does_not_hide_a_partition_still_missing(instance) -> None:
    _up_to_date(instance, OTHER)
    create_run_for_test(
        instance,
        job_name="intervals_chain",
        status=DagsterRunStatus.FAILURE,
        tags={PARTITION_NAME_TAG: MD5},
    )
    assert [r.partition_key for r in _tick(instance).run_requests] == [MD5]


def test_run_keys_repeat_within_a_day_and_change_the_next_day(instance) -> None:
    first = [r.run_key for r in _tick(instance).run_requests]
    again = [r.run_key for r in _tick(instance, NIGHT + dt.timedelta(hours=5)).run_requests]
    tomorrow = [r.run_key for r in _tick(instance, NIGHT + dt.timedelta(days=1)).run_requests]
    assert first == again
    assert len(first) == 2 and first[0].startswith(f"backfill:2026-11-23:intervals:{MD5}:")
    assert not set(first) & set(tomorrow)


def test_plan_rejects_an_unknown_family(instance) -> None:
    with pytest.raises(ValueError, match="unknown family genomes"):
        plan(instance, ["genomes"])


def _genoflow(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GENOFLOW_HOME": str(home), "GENOFLOW_THREADS": "1"}
    env.pop("DAGSTER_HOME", None)
    return subprocess.run(
        [sys.executable, "-m", "genoflow.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _register_table(tmp_path: Path, home: Path) -> str:
    """Register one small CSV source and its partition, without building anything."""
    from genoflow.core.settings import Settings
    from genoflow.instance.home import ensure_dagster_home
    from genoflow.manifests.reading import read_manifest
    from genoflow.storage.registry import Registry

    content = b"sample,reads\nNA12878,1000\n"
    (tmp_path / "table.csv").write_bytes(content)
    md5 = hashlib.md5(content).hexdigest()
    manifest = tmp_path / "one.tsv"
    manifest.write_text(f"name\turi\tmd5\ntable.csv\ttable.csv\t{md5}\n")
    settings = Settings.from_env({"GENOFLOW_HOME": str(home)})
    Registry(settings.registry_target).register(read_manifest(manifest).rows)
    with DagsterInstance.from_config(str(ensure_dagster_home(settings))) as instance:
        instance.add_dynamic_partitions("passthrough_md5", [md5])
    return md5


def test_cli_backfill_dry_run_prints_the_plan_then_a_backfill_builds_it(tmp_path) -> None:
    home = tmp_path / "home"
    md5 = _register_table(tmp_path, home)
    dry = _genoflow(home, "backfill", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"passthrough  {md5}  source  source missing" in dry.stdout
    assert "1 partitions would be built (dry run" in dry.stdout
    built = _genoflow(home, "backfill", "--family", "passthrough")
    assert built.returncode == 0, built.stdout + built.stderr
    assert "source=built" in built.stdout
    after = _genoflow(home, "backfill", "--dry-run")
    assert "nothing to backfill" in after.stdout


def test_a_backlog_larger_than_a_tick_is_worked_through_over_several(instance) -> None:
    from genoflow.defs.partitions import PARTITIONS
    from genoflow.defs.schedules import requests

    md5s = [f"{i:032x}" for i in range(5)]
    instance.add_dynamic_partitions(PARTITIONS["intervals"].name, md5s)
    context = build_schedule_context(
        instance=instance, scheduled_execution_time=dt.datetime(2026, 11, 23, 2, tzinfo=dt.UTC)
    )
    backlog = {item.md5 for item in plan(instance, ["intervals"])}
    assert set(md5s) <= backlog and len(backlog) == 7  # with the fixture's two
    first = requests(context, "intervals", limit=4)
    assert len(first) == 4
    for request in first:  # the daemon launches them: they are in progress on the next tick
        create_run_for_test(
            instance,
            job_name="intervals_chain",
            status=DagsterRunStatus.STARTED,
            tags={PARTITION_NAME_TAG: request.partition_key},
        )
    second = requests(context, "intervals", limit=4)
    requested = [r.partition_key for r in [*first, *second]]
    assert sorted(requested) == sorted(backlog)
