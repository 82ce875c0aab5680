"""What genoflow opens it closes: a registry's ``with`` block disposes its engine, the Dagster
resource opens one registry lazily and reuses it, and a materialization leaves no registry open.

Open connections are observed through this process's open files (``/proc/self/fd``), the
engine's pool and SQLAlchemy's own DDL events, never through mocks.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance, materialize

from genoflow.defs.assets import family_assets, family_checks
from genoflow.defs.io_manager import ArtifactIOManager
from genoflow.defs.partitions import PARTITIONS
from genoflow.defs.resources import GenoflowResource
from genoflow.manifests.reading import read_manifest
from genoflow.storage import registry as registry_module
from genoflow.storage.registry import Registry

from .conftest import DATA

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")


def open_files(database: Path) -> list[str]:
    """This process's open files that are ``database`` or its ``-wal``/``-shm`` companions."""
    prefix = str(database.resolve())
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed while listing (the listing's own descriptor)
        if target.startswith(prefix):
            found.append(target)
    return found


@pytest.fixture
def create_all_calls() -> Iterator[list[object]]:
    """Every ``create_all`` on the registry's tables, counted by SQLAlchemy's DDL event."""
    calls: list[object] = []

    def count(_target: object, connection: object, **_kw: object) -> None:
        calls.append(connection)

    sa.event.listen(registry_module.metadata, "before_create", count)
    yield calls
    sa.event.remove(registry_module.metadata, "before_create", count)


def test_a_registry_closed_by_its_with_block_releases_its_sqlite_file(tmp_path: Path) -> None:
    database = tmp_path / "registry.db"
    with Registry(database) as registry:
        assert registry.rows() == []
        assert open_files(database), "the pool keeps the connection it used"
        assert registry.engine.pool.checkedin() == 1
    assert open_files(database) == []
    assert registry.engine.pool.checkedin() == 0
    registry.close()  # closing twice is harmless


def test_a_registry_left_by_an_error_still_releases_its_sqlite_file(tmp_path: Path) -> None:
    database = tmp_path / "registry.db"
    with pytest.raises(RuntimeError), Registry(database) as registry:
        registry.rows()
        raise RuntimeError("a failure inside the block")
    assert open_files(database) == []


def test_the_resource_opens_nothing_until_its_registry_is_used(tmp_path: Path) -> None:
    GenoflowResource(home=str(tmp_path))
    assert not (tmp_path / "registry.db").exists()


def test_the_resource_reuses_one_registry_and_creates_tables_once(
    tmp_path: Path, create_all_calls: list[object]
) -> None:
    with GenoflowResource(home=str(tmp_path)) as genoflow:
        first = genoflow.registry()
        first.rows()
        second = genoflow.registry()
        second.md5s()
        assert second is first
        assert len(create_all_calls) == 1
    assert open_files(tmp_path / "registry.db") == []


def test_the_resources_nodes_share_its_registry_and_leave_it_open(
    tmp_path: Path, create_all_calls: list[object]
) -> None:
    with GenoflowResource(home=str(tmp_path)) as genoflow:
        with genoflow.node() as node:
            assert node.dm.context.registry is genoflow.registry()
        with genoflow.node() as node:
            assert node.dm.context.registry.rows() == []
        assert len(create_all_calls) == 1
        assert open_files(tmp_path / "registry.db"), "open until the resource is closed"
    assert open_files(tmp_path / "registry.db") == []


def _materialize(home: Path, instance: DagsterInstance, md5: str | None = None) -> Any:
    """Register coverage.bw (under ``md5`` when given) and materialize its chain and checks."""
    rows = [row for row in read_manifest(DATA / "manifests" / "demo.tsv").rows]
    rows = [
        dataclasses.replace(row, md5=md5 or row.md5) for row in rows if row.name == "coverage.bw"
    ]
    with Registry(home / "registry.db") as registry:
        registry.register(rows)
    family, md5 = rows[0].family, rows[0].md5
    instance.add_dynamic_partitions(PARTITIONS[family].name, [md5])
    genoflow = GenoflowResource(home=str(home), sort_memory="64M", threads=1)
    return materialize(
        [*family_assets(family), *family_checks(family)],
        partition_key=md5,
        resources={
            "genoflow": genoflow,
            "artifact_io_manager": ArtifactIOManager(genoflow=genoflow),
        },
        instance=instance,
        raise_on_error=False,
    )


def test_a_materialization_opens_few_registries_and_leaves_none_open(
    tmp_path: Path, instance: DagsterInstance, create_all_calls: list[object]
) -> None:
    result = _materialize(tmp_path, instance)
    assert result.success
    # The registration above, one registry for the assets' resource and one for the IO
    # manager's: not one per call (six here when every call opened its own).
    assert len(create_all_calls) <= 3
    assert open_files(tmp_path / "registry.db") == []


def test_a_failed_materialization_leaves_no_registry_open(
    tmp_path: Path, instance: DagsterInstance
) -> None:
    result = _materialize(tmp_path, instance, md5="0" * 32)  # the staged bytes hash otherwise
    assert not result.success
    assert open_files(tmp_path / "registry.db") == []
