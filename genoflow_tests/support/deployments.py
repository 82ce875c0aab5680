"""Running ``genoflow`` in child processes and reading what a home must look like afterwards.

Shared by the reliability tests and ``scripts/stress_concurrency.py`` / ``scripts/stress_kills.py``:
launch and finish CLI children, race several on one home, and list every broken promise (artifacts
that differ, debris, registry rows that are duplicate, pending or dangling, failed Dagster runs).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

from genoflow.storage.cache import MARKER
from genoflow_tests.conftest import DATA
from genoflow_tests.support.checksums import md5_file as md5_of

REPO = Path(__file__).resolve().parents[2]
DEMO = DATA / "manifests" / "demo"
# An interval file and a passthrough one: 8 interpreters starting at once cost most of the time,
# so the test keeps the runs few; scripts/stress_concurrency.py adds an alignment file.
INPUTS = ("trio.vcf", "samples.csv")
PROCESSES = 8
CONTEXT = multiprocessing.get_context("spawn")


# --- running genoflow -------------------------------------------------------------------------


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``genoflow`` child on ``home`` (its Dagster instance inside)."""
    env = {**os.environ, "GENOFLOW_HOME": str(home), "GENOFLOW_THREADS": "1", **extra}
    env.pop("DAGSTER_HOME", None)
    return env


def launch(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``genoflow ARGS`` on ``home`` without waiting; output is piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "genoflow.cli", *args],
        env=env or cli_env(home),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 600) -> tuple[int, str, str]:
    """Wait for a launched child; return its exit status, stdout and stderr."""
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def write_manifest(folder: Path, names: tuple[str, ...] = INPUTS) -> Path:
    """Copy demo files into ``folder`` and list them in ``folder/m.tsv``."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["name\turi\tmd5"]
    for name in names:
        shutil.copy(DEMO / name, folder / name)
        lines.append(f"{name}\t{name}\t{hashlib.md5((folder / name).read_bytes()).hexdigest()}")
    manifest = folder / "m.tsv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


# --- what a home must look like afterwards ----------------------------------------------------


def artifacts(home: Path) -> dict[str, dict[str, str]]:
    """Every published artifact folder (relative path) → {file name: md5}, marker excluded."""
    found = {}
    for marker in (home / "cache").rglob(MARKER):
        folder = marker.parent
        found[str(folder.relative_to(home / "cache"))] = {
            entry["name"]: entry["md5"] for entry in json.loads(marker.read_text())["files"]
        }
    return found


def content_problems(home: Path) -> list[str]:
    """What a reader of the cache could trip on: files that differ from the md5 their marker
    lists, and artifact folders without a marker (temp folders, hidden, are no artifacts)."""
    problems = []
    for relpath, files in artifacts(home).items():
        for name, expected in files.items():
            path = home / "cache" / relpath / name
            if not path.is_file() or md5_of(path) != expected:
                problems.append(f"{relpath}/{name}: missing, or bytes differ from its marker")
    for folder in (home / "cache").glob("*/*/*/*/*"):
        if folder.is_dir() and not folder.name.startswith(".") and not (folder / MARKER).is_file():
            problems.append(f"{folder.relative_to(home)}: an artifact folder without its marker")
    return problems


def marker_problems(folder: Path, checksum: str | None = None) -> list[str]:
    """Problems of the artifact in ``folder`` (a cache folder, or an object prefix on the
    emulator's disk): no marker, another checksum than ``checksum``, or a file that differs."""
    marker = folder / MARKER
    if not marker.is_file():
        return [f"{folder}: no {MARKER}"]
    listed = json.loads(marker.read_text())
    problems = [f"{folder}: holds {listed['checksum']}, not {checksum}"] if checksum and (
        listed["checksum"] != checksum) else []  # fmt: skip
    for entry in listed["files"]:
        path = folder / entry["name"]
        if not path.is_file() or md5_of(path) != entry["md5"]:
            problems.append(f"{folder}/{entry['name']}: missing, or bytes differ from its marker")
    return problems


def debris(home: Path) -> list[str]:
    """Temp folders and lock files left in the cache and the work folder."""
    found = []
    for top in (home / "cache", home / "work"):
        for path in top.rglob("*") if top.exists() else []:
            if ".tmp." in path.name or path.name.endswith(".lock"):
                found.append(str(path.relative_to(home)))
    return sorted(found)


def replica_rows(registry: Path) -> list[tuple[str, ...]]:
    """(key, checksum, location, root, path, data type, state) of every replica row."""
    if not registry.exists():
        return []
    connection = sqlite3.connect(registry)
    try:
        return connection.execute(
            "SELECT a.key, a.checksum, l.name, l.root, r.path, r.data_type, r.state "
            "FROM replica r JOIN artifact a ON a.id = r.artifact_id "
            "JOIN location l ON l.id = r.location_id"
        ).fetchall()
    finally:
        connection.close()


def replica_folder(root: str, path: str, objects: Path | None) -> Path | None:
    """Where a replica's files are on this machine: its local folder, or, for ``gs://`` roots,
    the emulator's object folder ``objects`` (None when there is none to look at)."""
    if not root.startswith("gs://"):
        return Path(root, path)
    return None if objects is None else objects / root.removeprefix("gs://") / path


def readable_replica_problems(registry: Path, objects: Path | None = None) -> list[str]:
    """Replicas a reader would be handed (available, not INVALID) that do not hold the artifact."""
    problems = []
    for key, checksum, _, root, path, data_type, state in replica_rows(registry):
        folder = replica_folder(root, path, objects)
        if state == "available" and data_type != "INVALID" and folder is not None:
            problems += [f"{key}: {p}" for p in marker_problems(folder, checksum)]
    return problems


def registry_problems(
    home: Path, registry: Path | None = None, objects: Path | None = None
) -> list[str]:
    """Duplicate source rows; duplicate, pending, INVALID or dangling replica rows; artifacts of
    ``home``'s cache without a registered replica."""
    registry = registry or home / "registry.db"
    connection = sqlite3.connect(registry)
    try:
        sources = connection.execute(
            "SELECT md5, name, uri, manifest, count(*) FROM source_row "
            "GROUP BY md5, name, uri, manifest HAVING count(*) > 1"
        ).fetchall()
    finally:
        connection.close()
    rows = replica_rows(registry)
    problems = [f"source row registered {row[-1]} times: {row[:2]}" for row in sources]
    counts = Counter((location, path) for _, _, location, _, path, _, _ in rows)
    problems += [f"{where} has {n} replica rows" for where, n in counts.items() if n > 1]
    problems += [f"{row[0]}: replica {row[5]} {row[6]} at {row[3]}" for row in rows
                 if row[6] != "available" or row[5] == "INVALID"]  # fmt: skip
    problems += readable_replica_problems(registry, objects)
    registered = {key for key, *_ in rows}
    problems += [f"{key}: published but not registered" for key in artifacts(home) if
                 key not in registered]  # fmt: skip
    return problems


def dagster_problems(home: Path, outcomes: list[tuple[int, str, str]]) -> list[str]:
    """Runs of the Dagster instance under ``home`` that did not succeed, and sources a process
    reported without a successful run behind them.

    A process that starts after another built a source finds its chain up to date and launches
    no run (it names the run that built it), so there are between one and ``processes`` runs per
    source, every one a success.
    """
    connection = sqlite3.connect(home / "dagster" / "history" / "runs.db")
    try:
        status_of = dict(connection.execute("SELECT run_id, status FROM runs"))
    finally:
        connection.close()
    statuses = Counter(status_of.values())
    problems = [f"{n} runs {status}" for status, n in statuses.items() if status != "SUCCESS"]
    reported = [r["run_id"] for _, out, _ in outcomes for r in json.loads(out or "[]")]
    problems += [f"run {run_id} reported but not a success" for run_id in reported
                 if status_of.get(run_id) != "SUCCESS"]  # fmt: skip
    if set(status_of) - set(reported):
        problems.append(f"runs nobody reported: {sorted(set(status_of) - set(reported))}")
    return problems


def race(home: Path, manifest: Path, processes: int = PROCESSES) -> list[tuple[int, str, str]]:
    """Start ``processes`` ``genoflow run`` on one home at once; return each (status, out, err)."""
    children = [launch(home, "run", str(manifest), "--json") for _ in range(processes)]
    return [finish(child) for child in children]
