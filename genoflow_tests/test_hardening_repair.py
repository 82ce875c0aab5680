"""Issue 12, failure 5: a corrupted artifact is found, moved aside, and rebuilt with its bytes.

One home holds one source of each family (a BED, a SAM, a CSV). Each case flips one byte of one
artifact file (size kept), and proves that ``verify`` finds it, that ``verify --repair``
rebuilds it through a Dagster run (the corrupted copy has no valid replica to be restored
from), that every file's md5 is the original build's and the run's checks passed, and that
``verify`` is then clean and ``run`` reports everything cached. The cases share the home and
each leaves it as it found it (each first asserts that it is clean).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from genoflow.build.steps import key_for
from genoflow.cli.report import status_records
from genoflow.core.settings import Settings
from genoflow.storage.cache import Cache
from genoflow.storage.locations import DataType
from genoflow.storage.node import Node
from genoflow.storage.registry import SourceRow

from .conftest import DATA, run_cli
from .support.gcs_emulator import GcsEmulator, gcs_bucket, gcs_emulator  # noqa: F401

# ruff: noqa: F811 - pytest fixtures imported from the emulator module

DEMO = DATA / "manifests" / "demo"
ROWS = {  # family → (name, md5)
    "intervals": ("enhancers.bed", "c32ab45bb03db2009d546949af1d515c"),
    "alignments": ("sample1.sam", "5e8e867693727fa167010d4f2a4e80bf"),
    "passthrough": ("samples.csv", "ef6ea422fdf64f5481abd462e605805a"),
}
# (family, asset, the suffix of the file whose byte is flipped)
KINDS = [
    ("alignments", "source", ".sam"),
    ("alignments", "sorted", ".bam"),
    ("alignments", "index", ".bai"),
    ("intervals", "source", ".bed"),
    ("intervals", "sorted", ".bed.gz"),
    ("intervals", "index", ".tbi"),
    ("passthrough", "source", ".csv"),
]


def _cli(home: Path, *args: str, roots: Path = DEMO) -> subprocess.CompletedProcess[str]:
    return run_cli(home, *args, env={"GENOFLOW_ALLOWED_ROOTS": str(roots), "GENOFLOW_THREADS": "1"})


def _manifest(folder: Path, rows: dict[str, tuple[str, str]], source_dir: Path) -> Path:
    manifest = folder / "m.tsv"
    lines = [f"{name}\t{source_dir / name}\t{md5}" for name, md5 in rows.values()]
    manifest.write_text("name\turi\tmd5\n" + "\n".join(lines) + "\n")
    return manifest


def _md5s(cache: Path) -> dict[str, str]:
    """The md5 of every artifact file under the cache (markers aside: they carry a timestamp)."""
    return {
        str(path.relative_to(cache)): hashlib.md5(path.read_bytes()).hexdigest()
        for path in sorted(cache.rglob("*"))
        if path.is_file() and path.name != "genoflow.json"
    }


def _flip(path: Path) -> None:
    """Flip one byte in the middle of a file, keeping its size."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _target(home: Path, family: str, asset: str, suffix: str) -> tuple[Path, Path]:
    folder = home / "cache" / key_for(family, ROWS[family][1], asset).relpath
    return folder, next(p for p in folder.iterdir() if p.name.endswith(suffix))


def _run_json(home: Path, manifest: Path) -> list[dict]:
    ran = _cli(home, "run", "--json", str(manifest))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return json.loads(ran.stdout)


def _checks_of_run(home: Path, run_id: str) -> list[bool]:
    """Whether each asset check evaluated in that Dagster run passed."""
    from dagster import DagsterEventType, DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home / "dagster"))) as instance:
        events = instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
    return [event.dagster_event.event_specific_data.passed for event in events]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("repair")
    manifest = _manifest(folder, ROWS, DEMO)
    home = folder / "home"
    records = _run_json(home, manifest)
    assert {status for r in records for status in r["assets"].values() if status} == {"built"}
    runs = {r["family"]: r["run_id"] for r in records}
    return {"home": home, "manifest": manifest, "md5s": _md5s(home / "cache"), "runs": runs}


@pytest.mark.parametrize(
    ("family", "asset", "suffix"), KINDS, ids=[f"{f}-{a}" for f, a, _ in KINDS]
)
def test_a_flipped_byte_is_found_by_verify_and_rebuilt_by_repair_with_the_original_bytes(
    built: dict, family: str, asset: str, suffix: str
) -> None:
    home = built["home"]
    assert _cli(home, "verify").returncode == 0  # the previous case left the home clean
    folder, victim = _target(home, family, asset, suffix)
    _flip(victim)

    found = _cli(home, "verify")
    assert found.returncode == 1
    assert f"INVALID   {folder}:" in found.stdout, found.stdout
    repaired = _cli(home, "verify", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert f"rebuilt   {folder}:" in repaired.stdout, repaired.stdout
    assert "no valid replica is left" in repaired.stdout

    assert _md5s(home / "cache") == built["md5s"]
    clean = _cli(home, "verify")
    assert clean.returncode == 0 and " 0 bad" in clean.stdout, clean.stdout
    record = next(r for r in _run_json(home, built["manifest"]) if r["family"] == family)
    assert {status for status in record["assets"].values() if status} == {"cached"}
    # The rebuild was a Dagster run of the chain (recorded, so `run` now cites it), and its
    # asset checks all passed.
    assert record["run_id"] != built["runs"][family]
    checks = _checks_of_run(home, record["run_id"])
    assert checks and all(checks)


def test_after_verify_finds_a_flipped_byte_status_says_invalid_and_run_rebuilds_it(
    built: dict, tabix: str
) -> None:
    home = built["home"]
    assert _cli(home, "verify").returncode == 0
    folder, victim = _target(home, "intervals", "index", ".bed.gz")
    _flip(victim)
    assert _cli(home, "verify").returncode == 1

    status = json.loads(_cli(home, "status", "--json", "enhancers.bed").stdout)[0]
    index = status["assets"]["index"]
    assert index["valid"] is False and index["path"] is None
    assert [r["type"] for r in index["replicas"]] == ["INVALID"]
    assert not folder.exists()  # moved aside: nothing reads the damaged bytes any more
    again = _cli(home, "verify")
    assert again.returncode == 1 and "--repair" in again.stdout

    record = next(r for r in _run_json(home, built["manifest"]) if r["family"] == "intervals")
    assert record["assets"]["index"] == "built" and record["error"] is None
    assert all(record["checks"].values()) and record["checks"]
    assert _md5s(home / "cache") == built["md5s"]
    contigs = subprocess.run([tabix, "-l", str(victim)], capture_output=True, text=True, check=True)
    first = contigs.stdout.split()[0]
    query = subprocess.run([tabix, str(victim), first], capture_output=True, text=True, check=True)
    assert query.stdout.startswith(first)
    status = json.loads(_cli(home, "status", "--json", "enhancers.bed").stdout)[0]
    assert status["assets"]["index"]["valid"] is True
    assert _cli(home, "verify").returncode == 0


def test_a_damaged_folder_left_in_place_after_its_invalidation_is_rebuilt_by_run(
    built: dict,
) -> None:
    """A process killed between invalidating a replica and moving its folder aside (or an older
    genoflow) leaves the folder whole by its sizes: run must still rebuild it."""
    home = built["home"]
    assert _cli(home, "verify").returncode == 0
    folder, victim = _target(home, "passthrough", "source", ".csv")
    _flip(victim)
    node = Node(Settings.from_env({"GENOFLOW_HOME": str(home)}), replicas=[])
    try:
        node.dm.invalidate_location(node.local, str(folder.relative_to(home / "cache")))
    finally:
        node.close()
    assert victim.exists()

    record = next(r for r in _run_json(home, built["manifest"]) if r["family"] == "passthrough")
    assert record["assets"]["source"] == "built" and record["error"] is None
    assert _md5s(home / "cache") == built["md5s"]
    assert _cli(home, "verify").returncode == 0


def test_a_source_is_staged_again_from_its_manifest_uri_and_a_missing_uri_is_reported(
    tmp_path: Path,
) -> None:
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    shutil.copy(DEMO / "samples.csv", upstream / "samples.csv")
    rows = {"passthrough": ROWS["passthrough"]}
    manifest = _manifest(tmp_path, rows, upstream)
    home = tmp_path / "home"
    assert _cli(home, "run", str(manifest), roots=upstream).returncode == 0
    original = _md5s(home / "cache")
    folder, victim = _target(home, "passthrough", "source", ".csv")
    _flip(victim)
    (upstream / "samples.csv").rename(upstream / "gone.csv")

    failed = _cli(home, "verify", "--repair", roots=upstream)
    assert failed.returncode == 1
    assert f"INVALID   {folder}:" in failed.stdout and "rebuilding it failed" in failed.stdout
    assert "samples.csv" in failed.stdout and "Traceback" not in failed.stdout + failed.stderr

    (upstream / "gone.csv").rename(upstream / "samples.csv")
    repaired = _cli(home, "verify", "--repair", roots=upstream)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "1 rebuilt" in repaired.stdout
    assert _md5s(home / "cache") == original


def test_a_cache_folder_registered_invalid_is_absent_to_the_node_and_moved_aside(
    tmp_path: Path,
) -> None:
    """The state an older genoflow left: the replica INVALID, its folder still in place."""
    settings = Settings.from_env({"GENOFLOW_HOME": str(tmp_path / "home")})
    key = key_for("passthrough", ROWS["passthrough"][1], "source")
    cache = Cache(settings.cache_root)
    draft = cache.begin(key)
    shutil.copy(DEMO / "samples.csv", draft.dir / "source.csv")
    artifact = cache.publish(draft, processor="test", details={"format": "csv"})
    node = Node(settings, replicas=[])
    try:
        node.register(artifact)
        node.dm.invalidate_location(node.local, key.relstr)
        assert cache.lookup(key) is not None  # whole by its sizes: only the registry knows

        row = SourceRow(
            key.md5, "samples.csv", "samples.csv", "csv", "passthrough", None, "m", 2, {}
        )
        record = status_records([row], node, [])[0]["assets"]["source"]
        assert record["valid"] is False and record["replicas"][0]["type"] == "INVALID"

        assert node.lookup(key) is None
        assert not artifact.path.exists() and cache.lookup(key) is None
        replica = node.upkeep.replica_at(node.local.name, key.relstr)
        assert replica is not None and replica.data_type is DataType.INVALID
    finally:
        node.close()


@pytest.mark.system
def test_when_the_local_and_the_gcs_copy_are_both_damaged_repair_rebuilds_and_republishes_both(
    tmp_path: Path, gcs_bucket: str, gcs_emulator: GcsEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from genoflow.storage.gcs import make_filesystem

    monkeypatch.setenv("GENOFLOW_REPLICAS", f"gs://{gcs_bucket}/genoflow")
    manifest = _manifest(tmp_path, {"intervals": ROWS["intervals"]}, DEMO)
    home = tmp_path / "home"
    assert _cli(home, "run", str(manifest)).returncode == 0
    folder, local = _target(home, "intervals", "sorted", ".bed.gz")
    key = key_for("intervals", ROWS["intervals"][1], "sorted")
    name = f"genoflow/{key.relpath}/{local.name}"
    good = local.read_bytes()
    _flip(local)
    make_filesystem(token="anon").pipe_file(f"{gcs_bucket}/{name}", local.read_bytes())

    repaired = _cli(home, "verify", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert f"rebuilt   {folder}:" in repaired.stdout
    assert f"rebuilt   gs://{gcs_bucket}/genoflow/{key.relpath}:" in repaired.stdout
    assert local.read_bytes() == good
    assert gcs_emulator.object_file(gcs_bucket, name).read_bytes() == good
    assert _cli(home, "verify").returncode == 0
