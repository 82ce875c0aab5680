"""The ``genoflow`` command end to end, on the demo manifest and on a manifest with bad rows."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from genoflow.manifests.reading import read_manifest
from genoflow_tests.support.checksums import md5_file

from .conftest import DATA, require_tool, run_cli

DEMO = DATA / "manifests" / "demo.tsv"


def genoflow(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(home, *args)


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    home = tmp_path_factory.mktemp("home")
    return home, genoflow(home, "run", str(DEMO), "--json", "--jobs", "2")


def test_run_on_the_demo_manifest_builds_every_row(demo_home) -> None:
    _home, result = demo_home
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    names = {row.name for row in read_manifest(DEMO).rows}
    assert {record["name"] for record in records} == names
    for record in records:
        assert record["error"] is None
        assert set(record["assets"].values()) == {"built"}, record


def test_run_records_the_runs_in_the_dagster_instance_under_genoflow_home(demo_home) -> None:
    home, result = demo_home
    run_ids = {record["run_id"] for record in json.loads(result.stdout)}
    runs_db = home / "dagster" / "history" / "runs.db"
    assert runs_db.exists()
    assert all(run_ids)


def test_status_json_has_the_documented_shape(demo_home) -> None:
    home, _ = demo_home
    result = genoflow(home, "status", "--json")
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert len(records) == len(read_manifest(DEMO).rows)
    for record in records:
        assert set(record) == {"name", "md5", "family", "format", "assets"}
        for asset, artifact in record["assets"].items():
            assert asset in ("source", "sorted", "index")
            assert set(artifact) == {
                "path",
                "files",
                "version",
                "valid",
                "replicas",
                "checks",
                "failed_checks",
            }
            assert all(artifact["checks"].values()) and artifact["failed_checks"] == []
            assert artifact["replicas"][0]["type"] == "PRIMARY"
            assert artifact["valid"] is True
            assert all(Path(path).is_file() for path in artifact["files"])


def test_status_selects_by_name_or_md5_and_fails_on_unknown(demo_home) -> None:
    home, _ = demo_home
    by_name = json.loads(genoflow(home, "status", "--json", "trio.vcf").stdout)
    assert [record["name"] for record in by_name] == ["trio.vcf"]
    by_md5 = json.loads(genoflow(home, "status", "--json", by_name[0]["md5"]).stdout)
    assert [record["name"] for record in by_md5] == ["trio.vcf"]
    assert genoflow(home, "status", "no-such-file.bam").returncode == 1


def test_demo_outputs_pass_the_reference_tools(demo_home) -> None:
    samtools, tabix = require_tool("samtools"), require_tool("tabix")
    home, _ = demo_home
    records = json.loads(genoflow(home, "status", "--json").stdout)
    for record in records:
        if record["family"] == "passthrough":
            continue
        data, _index = record["assets"]["index"]["files"]
        if record["family"] == "alignments":
            subprocess.run([samtools, "quickcheck", data], check=True)
            header = subprocess.run([samtools, "view", "-H", data], capture_output=True, text=True)
            assert "SO:coordinate" in header.stdout
        contigs_cmd = [samtools, "idxstats", data] if data.endswith(".bam") else [tabix, "-l", data]
        listed = subprocess.run(contigs_cmd, capture_output=True, text=True, check=True)
        assert listed.stdout.strip(), f"{record['name']}: the index lists no contigs"


def test_the_long_contig_gets_a_csi_index(demo_home) -> None:
    home, _ = demo_home
    (record,) = json.loads(genoflow(home, "status", "--json", "barley_regions.bed").stdout)
    assert record["assets"]["index"]["files"][1].endswith(".csi")


def _run_count(home: Path) -> int:
    connection = sqlite3.connect(home / "dagster" / "history" / "runs.db")
    try:
        return connection.execute("SELECT count(*) FROM runs").fetchone()[0]
    finally:
        connection.close()


def test_a_second_run_is_all_cache_hits_and_launches_no_run(demo_home) -> None:
    home, first = demo_home
    before = _run_count(home)
    result = genoflow(home, "run", str(DEMO), "--json")
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    for record in records:
        assert set(record["assets"].values()) == {"cached"}, record
    # Up to date: the first run's successful chain is named, and nothing new was launched.
    first_ids = {r["name"]: r["run_id"] for r in json.loads(first.stdout)}
    assert {r["name"]: r["run_id"] for r in records} == first_ids
    assert _run_count(home) == before


def test_a_chain_missing_an_artifact_locally_runs_again(demo_home, tmp_path) -> None:
    home, _ = demo_home
    manifest = tmp_path / "one.tsv"
    row = next(r for r in read_manifest(DEMO).rows if r.name.endswith(".bed"))
    manifest.write_text(f"name\turi\tmd5\n{row.name}\t{row.uri}\t{row.md5}\n")
    index = next((home / "cache" / "intervals").glob(f"*/{row.md5}/index"))
    shutil.rmtree(index)
    before = _run_count(home)
    env = {"GENOFLOW_ALLOWED_ROOTS": str(Path(row.uri).parent)}
    result = run_cli(home, "run", str(manifest), "--json", env=env)
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(result.stdout)
    assert record["assets"] == {"source": "cached", "sorted": "cached", "index": "built"}
    assert _run_count(home) == before + 1


def test_bad_rows_and_bad_files_are_reported_while_good_ones_are_built(tmp_path) -> None:
    shutil.copy(DATA / "manifests" / "demo" / "genes.gtf", tmp_path / "genes.gtf")
    (tmp_path / "broken.vcf").write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\nchr1\tnot-a-number\n")
    broken_md5 = md5_file(tmp_path / "broken.vcf")
    good_md5 = md5_file(tmp_path / "genes.gtf")
    (tmp_path / "m.tsv").write_text(
        "name\turi\tmd5\n"
        f"genes.gtf\tgenes.gtf\t{good_md5}\n"
        f"broken.vcf\tbroken.vcf\t{broken_md5}\n"
        "bad-md5.bed\tx.bed\tnot-an-md5\n"
        f"wrong.vcf\tbroken.vcf\t{'0' * 32}\n"
    )
    result = genoflow(tmp_path / "home", "run", str(tmp_path / "m.tsv"), "--json")
    assert result.returncode == 1
    assert "m.tsv:4" in result.stderr and "md5" in result.stderr
    records = {record["name"]: record for record in json.loads(result.stdout)}
    assert set(records["genes.gtf"]["assets"].values()) == {"built"}
    assert records["broken.vcf"]["assets"]["sorted"] == "failed"
    assert "broken.vcf" in records["broken.vcf"]["error"]
    assert records["wrong.vcf"]["assets"]["source"] == "failed"
    assert "md5" in records["wrong.vcf"]["error"]
    assert not list((tmp_path / "home" / "cache").rglob("*.tmp.*"))


def test_concurrent_runs_on_one_home_all_succeed_and_leave_one_artifact_each(tmp_path) -> None:
    manifest = tmp_path / "m.tsv"
    rows = [row for row in read_manifest(DEMO).rows if row.name in ("genes.gtf", "samples.csv")]
    manifest.write_text("name\turi\tmd5\n" + "".join(f"{r.name}\t{r.uri}\t{r.md5}\n" for r in rows))
    home = tmp_path / "home"
    env = {**os.environ, "GENOFLOW_HOME": str(home), "GENOFLOW_THREADS": "1"}
    env["GENOFLOW_ALLOWED_ROOTS"] = str(DATA)  # the manifest lists files of the demo folder
    env.pop("DAGSTER_HOME", None)
    command = [sys.executable, "-m", "genoflow.cli", "run", str(manifest)]
    runs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    outcomes = [(run.wait(timeout=600), run.stderr.read().decode()) for run in runs]
    for run in runs:
        run.stdout.close()
        run.stderr.close()
    assert [code for code, _ in outcomes] == [0, 0, 0, 0], outcomes
    markers = list((home / "cache").rglob("genoflow.json"))
    assert len(markers) == 4  # genes.gtf: source, sorted, index; samples.csv: source
    debris = [p for p in (home / "cache").rglob("*") if ".tmp." in p.name or p.suffix == ".lock"]
    assert debris == []


def test_local_sources_outside_the_manifest_folder_are_refused(tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.bed"
    secret.write_text("chr1\t1\t2\n")
    inside = tmp_path / "manifests"
    inside.mkdir()
    (inside / "escape.bed").symlink_to(secret)
    md5 = md5_file(secret)
    (inside / "m.tsv").write_text(
        f"name\turi\tmd5\nabsolute.bed\t{secret}\t{md5}\nrelative.bed\t../outside/secret.bed\t{md5}\n"
        f"link.bed\tescape.bed\t{md5}\n"
    )
    result = genoflow(tmp_path / "home", "run", str(inside / "m.tsv"), "--json")
    assert result.returncode == 1
    (record, *_) = json.loads(result.stdout)
    assert record["assets"]["source"] == "failed"
    assert "outside the allowed roots" in record["error"]
    assert not list((tmp_path / "home" / "cache").rglob("genoflow.json"))


def test_dev_passes_every_option_to_dagster_dev_on_genoflows_instance(
    tmp_path, monkeypatch
) -> None:
    from genoflow.cli import commands as cli

    calls = []
    monkeypatch.setenv("GENOFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setattr(cli.os, "execvpe", lambda *args: calls.append(args))

    cli.main(["dev", "-p", "3001", "-h", "127.0.0.1"])

    ((_program, command, env),) = calls
    assert command[1:] == ["dev", "-m", "genoflow.definitions", "-p", "3001", "-h", "127.0.0.1"]
    assert env["DAGSTER_HOME"] == str(tmp_path / "dagster")
    assert (tmp_path / "dagster" / "dagster.yaml").is_file()


def test_run_closes_the_registry_it_opened(tmp_path, capsys) -> None:
    from genoflow.cli.commands import cmd_run
    from genoflow.core.settings import Settings

    home = tmp_path / "home"
    manifest = tmp_path / "empty.tsv"
    manifest.write_text(DEMO.read_text().splitlines()[0] + "\n")  # the header, no rows
    settings = Settings.from_env({"GENOFLOW_HOME": str(home)})
    assert cmd_run([manifest], settings, jobs=1, as_json=True) == 1  # "lists no rows"
    assert (home / "registry.db").exists()
    prefix = str((home / "registry.db").resolve())
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            held += [os.readlink(f"/proc/self/fd/{fd}")]
    assert [path for path in held if path.startswith(prefix)] == []
