"""``genoflow status --table FILE``: one row per (md5, asset), the same facts as ``status --json``,
written whole or not at all, with pandas imported only on that path."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from genoflow.cli.table import COLUMNS, write_status_table
from genoflow_tests.support.checksums import md5_file
from genoflow_tests.support.unavailable import unavailable

from .conftest import DATA, run_cli

SEPARATORS = {"csv": ",", "tsv": "\t"}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home that built genes.gtf (registered under two names) and samples.csv."""
    folder = tmp_path_factory.mktemp("status-table")
    for name in ("genes.gtf", "samples.csv"):
        shutil.copy(DATA / "manifests" / "demo" / name, folder / name)
    genes, samples = md5_file(folder / "genes.gtf"), md5_file(folder / "samples.csv")
    (folder / "m.tsv").write_text(
        "name\turi\tmd5\n"
        f"genes.gtf\tgenes.gtf\t{genes}\n"
        f"genes_copy.gtf\tgenes.gtf\t{genes}\n"
        f"samples.csv\tsamples.csv\t{samples}\n"
    )
    result = run_cli(folder / "home", "run", str(folder / "m.tsv"))
    assert result.returncode == 0, result.stderr
    return folder / "home"


def _expected_rows(records: list[dict]) -> dict[tuple[str, str], dict[str, str]]:
    """What the table must say for each (md5, asset), read straight off ``status --json``."""
    expected: dict[tuple[str, str], dict[str, str]] = {}
    for record in records:
        for asset, artifact in record["assets"].items():
            row = expected.setdefault(
                (record["md5"], asset),
                {"names": "", "family": record["family"], "format": record["format"]},
            )
            row["names"] = ";".join(filter(None, [row["names"], record["name"]]))
            row |= {
                "valid": str(artifact["valid"]),
                "version": artifact["version"],
                "failed_checks": ";".join(artifact["failed_checks"]),
                "passed_checks": ";".join(n for n, ok in artifact["checks"].items() if ok),
                "replicas": str(len(artifact["replicas"])),
                "replica_uris": ";".join(r["uri"] for r in artifact["replicas"]),
                "path": artifact["path"],
                "files": ";".join(artifact["files"]),
            }
    return expected


def _by_key(rows: list[dict[str, str]]) -> dict[tuple[str, str], dict[str, str]]:
    keyed = {(row["md5"], row["asset"]): row for row in rows}
    assert len(keyed) == len(rows), "one row per (md5, asset)"
    return keyed


@pytest.mark.parametrize("kind", ["csv", "tsv"])
def test_the_table_holds_one_row_per_md5_and_asset_with_what_status_json_says(
    home: Path, tmp_path: Path, kind: str
) -> None:
    dest = tmp_path / f"status.{kind}"
    result = run_cli(home, "status", "--json", "--table", str(dest))
    assert result.returncode == 0, result.stderr
    expected = _expected_rows(json.loads(result.stdout))
    assert len(expected) == 4  # genes.gtf: source, sorted, index; samples.csv: source
    framed = pd.read_csv(dest, sep=SEPARATORS[kind], dtype=str, keep_default_na=False)
    assert list(framed.columns) == list(COLUMNS)
    with open(dest, newline="") as handle:
        read = list(csv.DictReader(handle, delimiter=SEPARATORS[kind]))
    assert framed.to_dict("records") == read
    rows = _by_key(read)
    assert set(rows) == set(expected)
    for key, want in expected.items():
        got = rows[key]
        assert {column: got[column] for column in want} == want, key
        assert got["state"] == "here" and got["invalid_replicas"] == "0"
    assert {row["names"] for row in read} == {"genes.gtf;genes_copy.gtf", "samples.csv"}
    assert f"wrote 4 rows to {dest}" in result.stderr


def test_without_json_the_table_replaces_the_printed_one(home: Path, tmp_path: Path) -> None:
    dest = tmp_path / "status.csv"
    result = run_cli(home, "status", "--table", str(dest), "samples.csv")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    (row,) = list(csv.DictReader(dest.read_text().splitlines()))
    assert (row["names"], row["family"], row["asset"]) == ("samples.csv", "passthrough", "source")


def test_an_empty_registry_gives_a_table_with_only_its_header(tmp_path: Path) -> None:
    dest = tmp_path / "status.tsv"
    result = run_cli(tmp_path / "home", "status", "--table", str(dest))
    assert result.returncode == 0, result.stderr
    assert dest.read_text() == "\t".join(COLUMNS) + "\n"


def test_status_without_a_table_never_imports_pandas(home: Path) -> None:
    env = {**os.environ, "GENOFLOW_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    command = [sys.executable, "-X", "importtime", "-m", "genoflow.cli", "status", "--json"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "genoflow.cli.report" in imported
    assert not {name for name in imported if name.split(".")[0] == "pandas"}


def _without_parquet_engines(folder: Path) -> dict[str, str]:
    """An environment in which neither Parquet engine imports, whatever this venv holds."""
    for engine in ("pyarrow", "fastparquet"):
        (folder / f"{engine}.py").write_text(f"raise ImportError('no {engine} in this test')\n")
    return {"PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}


def test_a_parquet_table_without_pyarrow_is_refused_in_one_line_before_any_work(
    home: Path, tmp_path: Path
) -> None:
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    dest = tmp_path / "status.parquet"
    result = run_cli(home, "status", "--table", str(dest), env=_without_parquet_engines(blocked))
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("genoflow: [status --table]") and "pip install pyarrow" in line
    assert sorted(path.name for path in tmp_path.iterdir()) == ["blocked"]


def test_a_suffix_that_names_no_format_is_refused(home: Path, tmp_path: Path) -> None:
    result = run_cli(home, "status", "--table", str(tmp_path / "status.xlsx"))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "'.xlsx'" in line and ".csv, .tsv or .parquet" in line
    assert list(tmp_path.iterdir()) == []


def _destination(tmp_path: Path, where: str) -> Path:
    if where == "missing-folder":
        return tmp_path / "no-such-folder" / "status.csv"
    if where == "under-a-file":
        (tmp_path / "a-file").write_text("")
        return tmp_path / "a-file" / "status.csv"
    (tmp_path / "status.csv").mkdir()  # the rename fails only after the table was written
    return tmp_path / "status.csv"


@pytest.mark.parametrize("where", ["missing-folder", "under-a-file", "a-folder"])
def test_an_unwritable_destination_is_one_line_and_leaves_no_partial_file(
    home: Path, tmp_path: Path, where: str
) -> None:
    dest = _destination(tmp_path, where)
    before = sorted(tmp_path.rglob("*"))
    result = run_cli(home, "status", "--table", str(dest))
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"genoflow: [status --table] {dest}: cannot write the table")
    assert sorted(tmp_path.rglob("*")) == before  # no temp file left beside it


def test_a_table_in_a_read_only_folder_leaves_the_old_file_untouched(
    home: Path, tmp_path: Path
) -> None:
    prefix: list[str] = []
    if os.geteuid() == 0:  # root ignores permission bits unless it drops CAP_DAC_OVERRIDE
        setpriv = shutil.which("setpriv") or unavailable("root without setpriv ignores 0o555")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "status.csv").write_text("yesterday's table\n")
    locked.chmod(0o555)
    env = {**os.environ, "GENOFLOW_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    command = [*prefix, sys.executable, "-m", "genoflow.cli", "status"]
    try:
        result = subprocess.run(
            [*command, "--table", str(locked / "status.csv")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        locked.chmod(0o755)
    assert result.returncode == 2, result.stderr
    assert "Permission denied" in result.stderr and "Traceback" not in result.stderr
    assert [path.name for path in locked.iterdir()] == ["status.csv"]
    assert (locked / "status.csv").read_text() == "yesterday's table\n"


def _artifact(**fields: object) -> dict[str, object]:
    uri = "https://user:pw@store.example/b/x?X-Goog-Signature=SECRET"
    replica = {"uri": uri, "type": "PRIMARY", "deployment": "far"}
    return {
        "path": None,
        "files": [],
        "version": "2",
        "valid": False,
        "replicas": [replica],
        "checks": {},
        "failed_checks": [],
        **fields,
    }


def test_states_and_uris_in_the_table_follow_the_status_records(tmp_path: Path) -> None:
    invalid = [{"uri": "/cache/x", "type": "INVALID", "deployment": "local"}]
    records = [
        {
            "name": "a.bed",
            "md5": "a" * 32,
            "family": "intervals",
            "format": "bed",
            "assets": {
                "source": _artifact(),
                "sorted": _artifact(replicas=invalid),
                "index": None,
            },
        },
        {
            "name": "b.bed",
            "md5": "b" * 32,
            "family": "intervals",
            "format": "bed",
            "assets": {
                "source": _artifact(valid=True, checks={"ok": True, "later": None}),
                "sorted": _artifact(checks={"order": False}, failed_checks=["order"]),
                "index": None,
            },
        },
    ]
    dest = tmp_path / "status.csv"
    assert write_status_table(records, dest) == 6
    text = dest.read_text()
    assert "SECRET" not in text and "pw@" not in text
    rows = list(csv.DictReader(text.splitlines()))
    assert [row["state"] for row in rows] == [
        "elsewhere",
        "invalid",
        "missing",
        "here",
        "failed_check",
        "missing",
    ]
    assert rows[0]["replica_uris"] == "https://store.example/b/x?…"
    assert (rows[1]["invalid_replicas"], rows[2]["valid"], rows[2]["replicas"]) == ("1", "", "0")
    assert (rows[3]["passed_checks"], rows[3]["unrun_checks"]) == ("ok", "later")
    assert rows[4]["failed_checks"] == "order"
