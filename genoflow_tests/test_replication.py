"""Two deployments sharing a registry and a GCS bucket: the second transfers, never rebuilds."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from dagster import DagsterInstance, instance_for_test, materialize

from genoflow.build.steps import key_for
from genoflow.defs.assets import family_assets, family_checks
from genoflow.defs.io_manager import ArtifactIOManager
from genoflow.defs.partitions import PARTITIONS
from genoflow.defs.resources import GenoflowResource
from genoflow.manifests.reading import read_manifest
from genoflow.processors import intervals
from genoflow.storage import staging
from genoflow.storage.gcs import make_filesystem
from genoflow.storage.registry import Registry

from .conftest import DATA, run_cli
from .support.gcs_emulator import GcsEmulator, gcs_bucket, gcs_emulator  # noqa: F401

pytestmark = pytest.mark.system  # starts a server (see pyproject markers)

# ruff: noqa: F811 - pytest fixtures imported from the emulator module

DEMO = DATA / "manifests" / "demo.tsv"


@pytest.fixture
def shared(tmp_path: Path, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch) -> dict:
    registry = tmp_path / "shared-registry.db"
    monkeypatch.setenv("GENOFLOW_REGISTRY_URL", f"sqlite:///{registry}")
    monkeypatch.setenv("GENOFLOW_REPLICAS", f"gs://{gcs_bucket}/genoflow")
    rows = [row for row in read_manifest(DEMO).rows if row.name == "enhancers.bed"]
    Registry(registry).register(rows)
    return {"md5": rows[0].md5, "bucket": gcs_bucket, "registry": registry}


def _run(home: Path, deployment: str, md5: str, instance: DagsterInstance, monkeypatch):
    monkeypatch.setenv("GENOFLOW_DEPLOYMENT", deployment)
    genoflow = GenoflowResource(home=str(home), sort_memory="64M", threads=1)
    return materialize(
        [*family_assets("intervals"), *family_checks("intervals")],
        partition_key=md5,
        resources={
            "genoflow": genoflow,
            "artifact_io_manager": ArtifactIOManager(genoflow=genoflow),
        },
        instance=instance,
    )


def _cache_status(result, asset: str) -> str:
    return result.asset_materializations_for_node(f"intervals__{asset}")[0].metadata["cache"].value


def _forbid(*_args, **_kwargs):
    raise AssertionError("a processor ran on the second deployment")


def test_a_second_deployment_gets_every_artifact_by_transfer(tmp_path, shared, monkeypatch) -> None:
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(PARTITIONS["intervals"].name, [shared["md5"]])
        first = _run(tmp_path / "a", "site-a", shared["md5"], instance, monkeypatch)
        # Node B may only transfer: staging, sorting and indexing all fail if called.
        monkeypatch.setattr(staging, "stage", _forbid)
        monkeypatch.setattr(intervals, "sort_intervals", _forbid)
        monkeypatch.setattr(intervals, "index_intervals", _forbid)
        second = _run(tmp_path / "b", "site-b", shared["md5"], instance, monkeypatch)
    assert first.success and second.success
    assert {_cache_status(first, a) for a in ("source", "sorted", "index")} == {"miss"}
    assert {_cache_status(second, a) for a in ("source", "sorted", "index")} == {"transferred"}
    checks = second.get_asset_check_evaluations()
    assert checks and all(check.passed for check in checks)
    replicas = second.asset_materializations_for_node("intervals__index")[0].metadata["replicas"]
    uris = {replica["uri"] for replica in replicas.value}
    assert any(uri.startswith(f"gs://{shared['bucket']}/genoflow/intervals/") for uri in uris)
    assert any(uri.startswith(str(tmp_path / "a")) for uri in uris)
    assert any(uri.startswith(str(tmp_path / "b")) for uri in uris)


def test_a_corrupt_replica_is_never_used_and_is_repaired_by_the_rebuild(
    tmp_path, shared, monkeypatch, gcs_emulator: GcsEmulator
) -> None:
    key = key_for("intervals", shared["md5"], "sorted")
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(PARTITIONS["intervals"].name, [shared["md5"]])
        assert _run(tmp_path / "a", "site-a", shared["md5"], instance, monkeypatch).success
        built = tmp_path / "a" / "cache" / key.relpath
        data = next(p for p in built.iterdir() if p.name.endswith(".gz"))
        remote = gcs_emulator.object_file(shared["bucket"], f"genoflow/{key.relpath}/{data.name}")
        flipped = bytearray(remote.read_bytes())
        flipped[100] ^= 0xFF
        # Another writer replaces the object with same-size, different bytes.
        fs = make_filesystem(token="anon")
        fs.pipe_file(f"{shared['bucket']}/genoflow/{key.relpath}/{data.name}", bytes(flipped))
        second = _run(tmp_path / "b", "site-b", shared["md5"], instance, monkeypatch)
    assert second.success
    assert _cache_status(second, "source") == "transferred"
    assert _cache_status(second, "sorted") == "miss"
    rebuilt = tmp_path / "b" / "cache" / key.relpath / data.name
    assert rebuilt.read_bytes() == data.read_bytes()
    dm_rows = (
        Registry(shared["registry"])
        .engine.connect()
        .exec_driver_sql(
            "SELECT r.data_type FROM replica r JOIN location l ON l.id = r.location_id "
            "JOIN artifact a ON a.id = r.artifact_id WHERE l.kind = 'gcs' AND a.key = ?",
            (str(key.relpath),),
        )
    )
    assert {row[0] for row in dm_rows} == {"PRIMARY"}
    assert remote.read_bytes() == data.read_bytes()  # the rebuild re-published the good bytes


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Manifests written under tmp_path list the demo files, outside their own folder.
    return run_cli(home, *args, env={"GENOFLOW_ALLOWED_ROOTS": str(DATA), "GENOFLOW_THREADS": "1"})


def test_verify_finds_a_damaged_local_copy_and_repair_restores_it(tmp_path, shared) -> None:
    manifest = tmp_path / "m.tsv"
    row = next(r for r in read_manifest(DEMO).rows if r.name == "enhancers.bed")
    manifest.write_text(f"name\turi\tmd5\nenhancers.bed\t{row.uri}\t{row.md5}\n")
    home = tmp_path / "home"
    assert _cli(home, "run", str(manifest)).returncode == 0
    assert _cli(home, "verify").returncode == 0
    key = key_for("intervals", row.md5, "sorted")
    data = next((home / "cache" / key.relpath).glob("*.gz"))
    good = data.read_bytes()
    flipped = bytearray(good)
    flipped[100] ^= 0xFF
    data.write_bytes(bytes(flipped))

    found = _cli(home, "verify")
    assert found.returncode == 1
    assert "INVALID" in found.stdout and str(key.relpath) in found.stdout
    repaired = _cli(home, "verify", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert data.read_bytes() == good
    assert _cli(home, "verify").returncode == 0


def _flip(data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[100] ^= 0xFF
    return bytes(flipped)


def _verify_finds_and_repairs(home: Path, prefix: str) -> None:
    found = _cli(home, "verify")
    assert found.returncode == 1
    bad = [line.split()[1] for line in found.stdout.splitlines() if line.startswith("INVALID")]
    assert bad and all(uri.startswith(prefix) for uri in bad), found.stdout
    repaired = _cli(home, "verify", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert _cli(home, "verify").returncode == 0


def test_verify_detects_a_damaged_gcs_copy_then_a_local_one_and_repair_restores_each(
    tmp_path, shared, gcs_emulator: GcsEmulator
) -> None:
    manifest = tmp_path / "m.tsv"
    row = next(r for r in read_manifest(DEMO).rows if r.name == "enhancers.bed")
    manifest.write_text(f"name\turi\tmd5\nenhancers.bed\t{row.uri}\t{row.md5}\n")
    home = tmp_path / "home"
    assert _cli(home, "run", str(manifest)).returncode == 0
    key = key_for("intervals", row.md5, "sorted")
    local = next((home / "cache" / key.relpath).glob("*.gz"))
    object_name = f"genoflow/{key.relpath}/{local.name}"
    remote = gcs_emulator.object_file(shared["bucket"], object_name)
    good = local.read_bytes()

    # Rewritten through the API (GCS recomputes md5Hash, as for any writer): size unchanged.
    make_filesystem(token="anon").pipe_file(f"{shared['bucket']}/{object_name}", _flip(good))
    _verify_finds_and_repairs(home, "gs://")
    assert remote.read_bytes() == good

    local.write_bytes(_flip(good))  # rot in place (the index folder shares this inode)
    _verify_finds_and_repairs(home, str(home))
    assert local.read_bytes() == good
