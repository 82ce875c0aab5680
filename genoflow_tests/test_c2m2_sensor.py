"""The manifest sensor reads a changed C2M2 ``file.tsv`` by its new lines only, as it reads a
plain manifest: rows handled before are neither parsed nor validated again, a changed or removed
row is noticed, and exactly the new md5s become partitions."""

from __future__ import annotations

import csv
import hashlib
import os
import random
import time
from pathlib import Path

import pytest

from genoflow.manifests import c2m2, reading
from genoflow.manifests.diff import SidecarStore, read_changed
from genoflow.manifests.reading import read_manifest
from genoflow.manifests.watch import ManifestCursor
from genoflow.storage.registry import Registry
from genoflow_tests.support.sensors import tick

NS = "cfde_sensor"
LARGE = 5_000


@pytest.fixture
def watched(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "manifests"
    folder.mkdir()
    monkeypatch.setenv("GENOFLOW_MANIFESTS", str(folder))
    return folder


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def validated(monkeypatch) -> list[int]:
    """The line of every record validated from now on (the real validation still runs)."""
    lines: list[int] = []
    real = reading.validate_record

    def counting(fields, *, manifest, line, **kwargs):
        lines.append(line)
        return real(fields, manifest=manifest, line=line, **kwargs)

    monkeypatch.setattr(reading, "validate_record", counting)
    return lines


def _md5(number: int, salt: str = "") -> str:
    return hashlib.md5(f"source {number}{salt}".encode()).hexdigest()


def _row(number: int, *, md5: str | None = None) -> dict[str, str]:
    """One C2M2 file row for a BED source; its file need not exist (the term gives the format)."""
    return {
        "id_namespace": NS,
        "local_id": f"FILE{number:06d}",
        "project_id_namespace": NS,
        "project_local_id": "sensor_project",
        "filename": f"peaks_{number:06d}.bed",
        "md5": md5 or _md5(number),
        "size_in_bytes": str(1000 + number),
        "file_format": "format:3003",
        "data_type": "data:1255",
        "access_url": f"data/peaks_{number:06d}.bed",
    }


def _table(folder: Path, rows: list[dict[str, str]], name: str = "file.tsv") -> Path:
    """Write a C2M2 file table that settled a minute ago (so the sensor reads it now)."""
    path = folder / name
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, c2m2.C2M2_COLUMNS, delimiter="\t", restval="")
        writer.writeheader()
        writer.writerows(rows)
    past = time.time() - 60
    os.utime(path, (past, past))
    return path


def _added(result) -> dict[str, list[str]]:
    return {
        request.partitions_def_name: sorted(request.partition_keys)
        for request in result.dynamic_partitions_requests or []
    }


def _sidecar(home: Path, result) -> dict:
    (digest,) = ManifestCursor.parse(result.cursor).hashes.values()
    handled = SidecarStore(home / "state" / "manifest-lines").load(digest)
    assert handled is not None
    return handled.rows


def test_appending_one_row_to_a_large_c2m2_table_validates_that_row_only(
    instance, watched, home, validated
) -> None:
    rows = [_row(number) for number in range(LARGE)]
    _table(watched, rows)
    first = tick(instance, home, None)
    assert len(first.run_requests) == LARGE
    assert len(_sidecar(home, first)) == LARGE  # every line is known as handled
    validated.clear()
    _table(watched, [*rows, _row(LARGE)])
    second = tick(instance, home, first.cursor)
    assert validated == [LARGE + 2]  # the header is line 1
    (request,) = second.run_requests
    assert request.partition_key == _md5(LARGE)
    assert request.tags["genoflow/manifest"] == f"file.tsv:{LARGE + 2}"
    assert _added(second) == {"intervals_md5": [_md5(LARGE)]}
    assert len(_sidecar(home, second)) == LARGE + 1


def test_a_changed_md5_on_an_existing_c2m2_row_is_picked_up(
    instance, watched, home, validated
) -> None:
    rows = [_row(number) for number in range(200)]
    _table(watched, rows)
    first = tick(instance, home, None)
    validated.clear()
    rows[57] = _row(57, md5=_md5(57, " edited"))
    _table(watched, rows)
    second = tick(instance, home, first.cursor)
    assert validated == [59]
    assert [request.partition_key for request in second.run_requests] == [_md5(57, " edited")]
    assert _added(second) == {"intervals_md5": [_md5(57, " edited")]}
    named = {
        row.md5
        for row in Registry(home / "registry.db").rows()
        if row.name == f"{NS}:FILE000057 peaks_000057.bed"
    }
    assert _md5(57, " edited") in named


def test_a_removed_c2m2_row_is_noticed_and_read_again_when_it_returns(
    instance, watched, home, validated
) -> None:
    rows = [_row(number) for number in range(200)]
    _table(watched, rows)
    first = tick(instance, home, None)
    removed = rows.pop(120)
    validated.clear()
    _table(watched, rows)
    second = tick(instance, home, first.cursor)
    assert validated == []  # nothing left to read: every remaining line was handled
    assert not second.run_requests
    kept = _sidecar(home, second)
    assert len(kept) == 199
    assert f"{NS}:FILE000120 peaks_000120.bed" not in {key[0] for key in kept.values()}
    # Back under its id with other content: read again, and requested, with no conflict.
    _table(watched, [*rows, {**removed, "md5": _md5(120, " again")}])
    third = tick(instance, home, second.cursor)
    assert validated == [201]
    assert _added(third) == {"intervals_md5": [_md5(120, " again")]}


def test_a_c2m2_row_whose_id_now_has_two_md5s_drops_both_as_a_full_read_does(
    instance, watched, home, capfd
) -> None:
    rows = [_row(number) for number in range(20)]
    _table(watched, rows)
    first = tick(instance, home, None)
    capfd.readouterr()
    _table(watched, [*rows, _row(3, md5=_md5(3, " twin"))])
    second = tick(instance, home, first.cursor)
    assert not second.run_requests
    logged = capfd.readouterr().err
    for line in (5, 22):
        assert f"file.tsv:{line}: name '{NS}:FILE000003 peaks_000003.bed' has conflicting" in logged


def _random_row(rng: random.Random) -> dict[str, str]:
    number = rng.randrange(12)
    row = _row(number, md5=_md5(rng.randrange(8)))
    change = rng.randrange(6)
    if change == 0:
        row["md5"] = "not-an-md5"
    elif change == 1:
        row["access_url"] = row["persistent_id"] = ""  # nowhere to read it: a row error
    elif change == 2:
        row["file_format"] = "format:2572"  # BAM: the same md5 elsewhere as BED conflicts
    elif change == 3:
        row["filename"] = f"dir/peaks_{number}.bed"  # its name says %2F
    return row


@pytest.mark.parametrize("seed", range(4))
def test_reading_new_c2m2_lines_finds_what_a_full_read_finds_less_the_rows_handled_before(
    tmp_path, seed
) -> None:
    rng = random.Random(seed)
    incremental = 0
    for _ in range(40):
        rows = [_random_row(rng) for _ in range(rng.randrange(1, 12))]
        path = _table(tmp_path, rows)
        handled = read_changed(path, None).handled()
        before = {(r.name, r.md5, r.format, r.size) for r in read_manifest(path).rows}
        assert handled is not None
        assert {tuple(key) for key in handled.rows.values()} == before  # every valid row kept
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(rows) + 1)
            rows[at : at + rng.randrange(2)] = [_random_row(rng)] * rng.randrange(2)
        path = _table(tmp_path, rows)
        full, read = read_manifest(path), read_changed(path, handled)
        assert [str(e) for e in read.manifest.errors] == [str(e) for e in full.errors]
        assert set(read.manifest.rows) <= set(full.rows)
        left_out = set(full.rows) - set(read.manifest.rows)
        assert {(r.name, r.md5, r.format, r.size) for r in left_out} <= before
        incremental += read.incremental and bool(left_out)
    assert incremental  # the new-lines path was taken, and left rows out, at least once
