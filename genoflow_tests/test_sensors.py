"""The manifest sensor: new content runs once, nothing else re-triggers, bad rows are named."""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, build_sensor_context

from genoflow.build.steps import chain_version
from genoflow.defs.partitions import PARTITIONS
from genoflow.defs.resources import GenoflowResource
from genoflow.defs.sensors import evaluate, run_key
from genoflow.manifests.diff import HandledLines, SidecarStore, read_changed
from genoflow.manifests.reading import read_manifest
from genoflow.manifests.watch import LocalManifests, ManifestCursor, scan
from genoflow.storage.registry import Registry
from genoflow_tests.support.sensors import HEADER, tick


@pytest.fixture
def watched(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "manifests"
    folder.mkdir()
    monkeypatch.setenv("GENOFLOW_MANIFESTS", str(folder))
    return folder


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


def _file(folder: Path, name: str, content: bytes) -> tuple[str, str, int]:
    """Write a small input file; return (name, md5, size)."""
    (folder / name).write_bytes(content)
    return name, hashlib.md5(content).hexdigest(), len(content)


def _manifest(
    folder: Path, name: str, rows: list[tuple[str, str, int]], *, extra: str = ""
) -> Path:
    """Write a TSV manifest that settled a minute ago (so the sensor reads it now)."""
    lines = [f"{row_name}\t{row_name}\t{md5}\t\t{size}\n" for row_name, md5, size in rows]
    path = folder / name
    path.write_text(HEADER + "".join(lines) + extra)
    past = time.time() - 60
    os.utime(path, (past, past))
    return path


def _inputs(folder: Path) -> dict[str, tuple[str, str, int]]:
    return {
        "reads": _file(folder, "reads.sam", b"@HD\tVN:1.6\n"),
        "peaks": _file(folder, "peaks.bed", b"chr1\t10\t20\n"),
        "table": _file(folder, "table.csv", b"a,b\n1,2\n"),
    }


def _requested(result) -> list[tuple[str | None, str | None]]:
    return sorted((r.job_name, r.partition_key) for r in (result.run_requests or []))


def test_new_manifest_adds_partitions_and_requests_one_chain_run_per_md5(
    instance, watched, home
) -> None:
    inputs = _inputs(watched)
    _manifest(watched, "batch.tsv", [*inputs.values(), ("copy.bed", inputs["peaks"][1], 11)])
    result = tick(instance, home, None)
    assert _requested(result) == sorted(
        [
            ("alignments_chain", inputs["reads"][1]),
            ("intervals_chain", inputs["peaks"][1]),
            ("passthrough_chain", inputs["table"][1]),
        ]
    )
    added = {
        r.partitions_def_name: list(r.partition_keys) for r in result.dynamic_partitions_requests
    }
    assert added == {
        "alignments_md5": [inputs["reads"][1]],
        "intervals_md5": [inputs["peaks"][1]],
        "passthrough_md5": [inputs["table"][1]],
    }


def test_registers_every_valid_row_in_the_same_tick(instance, watched, home) -> None:
    inputs = _inputs(watched)
    _manifest(watched, "batch.tsv", [*inputs.values(), ("copy.bed", inputs["peaks"][1], 11)])
    tick(instance, home, None)
    names = sorted(row.name for row in Registry(home / "registry.db").rows())
    assert names == ["copy.bed", "peaks.bed", "reads.sam", "table.csv"]


def test_run_keys_name_family_md5_and_code_version(instance, watched, home) -> None:
    name, md5, size = _file(watched, "peaks.bed", b"chr1\t10\t20\n")
    _manifest(watched, "one.tsv", [(name, md5, size)])
    (request,) = tick(instance, home, None).run_requests
    assert request.run_key == f"intervals:{md5}:{chain_version('intervals')}"
    assert request.run_key == run_key("intervals", md5)
    assert request.tags["genoflow/format"] == "bed"
    assert request.tags["genoflow/manifest"] == "one.tsv:2"


def test_identical_rewrite_requests_nothing(instance, watched, home) -> None:
    _manifest(watched, "batch.tsv", list(_inputs(watched).values()))
    first = tick(instance, home, None)
    _manifest(watched, "batch.tsv", list(_inputs(watched).values()))
    second = tick(instance, home, first.cursor)
    assert not second.run_requests and not second.dynamic_partitions_requests
    assert "1 unchanged" in second.skip_reason.skip_message


def test_renamed_manifest_requests_nothing(instance, watched, home) -> None:
    path = _manifest(watched, "batch.tsv", list(_inputs(watched).values()))
    first = tick(instance, home, None)
    path.rename(watched / "renamed.tsv")
    second = tick(instance, home, first.cursor)
    assert not second.run_requests and not second.dynamic_partitions_requests
    assert "1 renamed or copied" in second.skip_reason.skip_message
    assert list(ManifestCursor.parse(second.cursor).hashes) == ["renamed.tsv"]


def test_deleted_manifest_requests_nothing_and_deletes_nothing(instance, watched, home) -> None:
    inputs = _inputs(watched)
    path = _manifest(watched, "batch.tsv", list(inputs.values()))
    first = tick(instance, home, None)
    path.unlink()
    second = tick(instance, home, first.cursor)
    assert not second.run_requests and not second.dynamic_partitions_requests
    assert ManifestCursor.parse(second.cursor).hashes == {}
    assert instance.get_dynamic_partitions("intervals_md5") == [inputs["peaks"][1]]
    assert len(Registry(home / "registry.db").rows()) == 3


def test_changed_md5_gets_a_new_partition_and_run_while_the_old_stays(
    instance, watched, home
) -> None:
    old = _file(watched, "peaks.bed", b"chr1\t10\t20\n")
    _manifest(watched, "batch.tsv", [old])
    first = tick(instance, home, None)
    new = _file(watched, "peaks.bed", b"chr1\t10\t20\nchr2\t5\t9\n")
    _manifest(watched, "batch.tsv", [new])
    second = tick(instance, home, first.cursor)
    assert _requested(second) == [("intervals_chain", new[1])]
    assert instance.get_dynamic_partitions("intervals_md5") == [old[1], new[1]]


def test_second_manifest_sharing_an_md5_requests_only_the_new_one(instance, watched, home) -> None:
    inputs = _inputs(watched)
    _manifest(watched, "first.tsv", [inputs["reads"], inputs["peaks"]])
    first = tick(instance, home, None)
    other = _file(watched, "other.bed", b"chr3\t1\t2\n")
    _manifest(watched, "second.tsv", [inputs["peaks"], other])
    second = tick(instance, home, first.cursor)
    assert _requested(second) == [("intervals_chain", other[1])]


def test_invalid_rows_are_logged_with_file_and_line_while_valid_rows_flow(
    instance, watched, home, capfd
) -> None:
    good = _file(watched, "peaks.bed", b"chr1\t10\t20\n")
    path = _manifest(watched, "mixed.tsv", [good], extra="broken.bed\tbroken.bed\tnot-an-md5\t\t\n")
    result = tick(instance, home, None)
    assert _requested(result) == [("intervals_chain", good[1])]
    assert f"{path}:3: malformed md5 'not-an-md5'" in capfd.readouterr().err


def test_an_unreadable_manifest_is_logged_and_the_others_still_flow(
    instance, watched, home, capfd
) -> None:
    good = _file(watched, "peaks.bed", b"chr1\t10\t20\n")
    _manifest(watched, "good.tsv", [good])
    bad = watched / "bad.json"
    bad.write_text('{"not": "a list"}')
    os.utime(bad, (time.time() - 60, time.time() - 60))
    result = tick(instance, home, None)
    assert _requested(result) == [("intervals_chain", good[1])]
    assert "bad.json: a JSON manifest must be a list of objects" in capfd.readouterr().err


def test_a_manifest_still_being_written_waits_for_a_later_tick(instance, watched, home) -> None:
    path = _manifest(watched, "batch.tsv", list(_inputs(watched).values()))
    os.utime(path)  # touched just now: maybe a copy in progress
    first = tick(instance, home, None)
    assert not first.run_requests
    assert "still being written" in first.skip_reason.skip_message
    os.utime(path, (time.time() - 60, time.time() - 60))
    assert len(tick(instance, home, first.cursor).run_requests) == 3


def test_the_cursor_holds_one_short_hash_per_manifest_not_its_rows(instance, watched, home) -> None:
    rows = [(f"f{i}.bed", hashlib.md5(str(i).encode()).hexdigest(), 10) for i in range(2000)]
    _manifest(watched, "big.tsv", rows)
    result = tick(instance, home, None)
    assert len(result.run_requests) == 2000
    assert list(json.loads(result.cursor)["hashes"]) == ["big.tsv"]
    assert len(result.cursor) < 100


def test_a_missing_folder_is_a_skip_that_says_what_to_do(instance, tmp_path, home, monkeypatch):
    monkeypatch.setenv("GENOFLOW_MANIFESTS", str(tmp_path / "nowhere"))
    result = tick(instance, home, None)
    assert "does not exist" in result.skip_message
    assert "GENOFLOW_MANIFESTS" in result.skip_message


def test_an_md5_partitioned_before_the_sensor_saw_it_is_not_requested_again(
    instance, watched, home
) -> None:
    inputs = _inputs(watched)
    instance.add_dynamic_partitions(PARTITIONS["intervals"].name, [inputs["peaks"][1]])
    _manifest(watched, "batch.tsv", [inputs["peaks"]])
    result = tick(instance, home, None)
    assert not result.run_requests
    assert "no md5 new to its family" in result.skip_reason.skip_message


def _tick_limited(instance: DagsterInstance, home: Path, folder: Path, cursor, limit: int):
    context = build_sensor_context(instance=instance, cursor=cursor)
    settings = GenoflowResource(home=str(home)).settings()
    result = evaluate(context, settings, LocalManifests(folder), limit=limit)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
    return result


def test_a_manifest_bigger_than_one_tick_is_worked_through_over_several(
    instance, watched, home
) -> None:
    rows = [_file(watched, f"f{i}.bed", f"chr1\t{i}\t{i + 1}\n".encode()) for i in range(5)]
    _manifest(watched, "big.tsv", rows)
    requested, cursor = [], None
    for _ in range(3):
        result = _tick_limited(instance, home, watched, cursor, limit=2)
        requested.append(sorted(r.partition_key for r in result.run_requests))
        cursor = result.cursor
    assert [len(batch) for batch in requested] == [2, 2, 1]
    assert sorted(md5 for batch in requested for md5 in batch) == sorted(r[1] for r in rows)
    last = _tick_limited(instance, home, watched, cursor, limit=2)
    assert not last.run_requests and "1 unchanged" in last.skip_reason.skip_message


def test_rows_of_a_later_tick_are_registered_with_their_md5s_run(instance, watched, home) -> None:
    rows = [_file(watched, f"f{i}.bed", f"chr1\t{i}\t{i + 1}\n".encode()) for i in range(3)]
    _manifest(watched, "big.tsv", rows)
    first = _tick_limited(instance, home, watched, None, limit=2)
    registry = Registry(home / "registry.db")
    assert len(registry.rows()) == 2
    _tick_limited(instance, home, watched, first.cursor, limit=2)
    assert sorted(row.name for row in registry.rows()) == ["f0.bed", "f1.bed", "f2.bed"]


def test_hidden_files_other_suffixes_and_subfolders_are_not_manifests(watched) -> None:
    inputs = _inputs(watched)
    _manifest(watched, ".batch.tsv.partial", list(inputs.values()))
    _manifest(watched, ".hidden.tsv", list(inputs.values()))
    (watched / "older").mkdir()
    _manifest(watched / "older", "batch.tsv", list(inputs.values()))
    _manifest(watched, "batch.tsv", list(inputs.values()))
    assert list(LocalManifests(watched).listing().hashes) == ["batch.tsv"]


def test_two_new_copies_of_one_manifest_are_read_once(watched) -> None:
    inputs = list(_inputs(watched).values())
    _manifest(watched, "a.tsv", inputs)
    _manifest(watched, "b.tsv", inputs)
    result = scan(ManifestCursor(), LocalManifests(watched).listing())
    assert (result.changed, result.moved) == (["a.tsv"], ["b.tsv"])


def _sidecars(home: Path) -> list[Path]:
    return sorted((home / "state" / "manifest-lines").iterdir())


def _no_full_read(monkeypatch) -> None:
    def full_read(*args, **kwargs):
        raise AssertionError("the manifest was read whole")

    monkeypatch.setattr("genoflow.manifests.diff.read_manifest", full_read)


def test_a_small_edit_to_a_manifest_reads_only_its_new_lines(
    instance, watched, home, monkeypatch
) -> None:
    inputs = _inputs(watched)
    _manifest(watched, "batch.tsv", list(inputs.values()))
    first = tick(instance, home, None)
    other = _file(watched, "other.bed", b"chr3\t1\t2\n")
    _manifest(watched, "batch.tsv", [other, inputs["reads"], inputs["peaks"]])
    _no_full_read(monkeypatch)
    second = tick(instance, home, first.cursor)
    (request,) = second.run_requests
    assert (request.partition_key, request.tags["genoflow/manifest"]) == (other[1], "batch.tsv:2")
    names = sorted(row.name for row in Registry(home / "registry.db").rows())
    assert names == ["other.bed", "peaks.bed", "reads.sam", "table.csv"]


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_a_corrupt_or_missing_sidecar_falls_back_to_the_full_read(
    instance, watched, home, damage
) -> None:
    inputs = _inputs(watched)
    _manifest(watched, "batch.tsv", [inputs["reads"], inputs["peaks"]])
    first = tick(instance, home, None)
    (sidecar,) = _sidecars(home)
    if damage == "corrupt":
        sidecar.write_text(sidecar.read_text()[:40])
    else:
        sidecar.unlink()
    _manifest(watched, "batch.tsv", list(inputs.values()))
    second = tick(instance, home, first.cursor)
    assert _requested(second) == [("passthrough_chain", inputs["table"][1])]
    (digest,) = ManifestCursor.parse(second.cursor).hashes.values()
    assert SidecarStore(home / "state" / "manifest-lines").load(digest).rows


def test_invalid_rows_are_logged_again_after_a_small_edit(
    instance, watched, home, capfd, monkeypatch
) -> None:
    inputs = _inputs(watched)
    broken = "broken.bed\tbroken.bed\tnot-an-md5\t\t\n"
    _manifest(watched, "mixed.tsv", [inputs["peaks"]], extra=broken)
    first = tick(instance, home, None)
    capfd.readouterr()
    path = _manifest(
        watched,
        "mixed.tsv",
        [inputs["peaks"]],
        extra=broken + f"table.csv\ttable.csv\t{inputs['table'][1]}\t\t\n",
    )
    _no_full_read(monkeypatch)
    second = tick(instance, home, first.cursor)
    assert _requested(second) == [("passthrough_chain", inputs["table"][1])]
    assert f"{path}:3: malformed md5 'not-an-md5'" in capfd.readouterr().err


def test_an_added_row_conflicting_with_an_unchanged_one_drops_both_as_a_full_read_does(
    instance, watched, home, capfd
) -> None:
    peaks = _file(watched, "peaks.bed", b"chr1\t10\t20\n")
    _manifest(watched, "batch.tsv", [peaks])
    first = tick(instance, home, None)
    _manifest(watched, "batch.tsv", [peaks, ("peaks.bed", hashlib.md5(b"x").hexdigest(), 1)])
    second = tick(instance, home, first.cursor)
    assert not second.run_requests
    assert "batch.tsv:3: name 'peaks.bed' has conflicting md5s" in capfd.readouterr().err


def test_a_row_freed_from_a_conflict_by_an_edit_is_requested(instance, watched, home) -> None:
    peaks = _file(watched, "peaks.bed", b"chr1\t10\t20\n")
    other = ("peaks.bed", hashlib.md5(b"x").hexdigest(), 1)
    _manifest(watched, "batch.tsv", [peaks, other])
    first = tick(instance, home, None)
    assert not first.run_requests
    _manifest(watched, "batch.tsv", [peaks])
    assert _requested(tick(instance, home, first.cursor)) == [("intervals_chain", peaks[1])]


def test_a_tick_whose_cursor_was_not_committed_is_repeated_whole(instance, watched, home) -> None:
    inputs = _inputs(watched)
    _manifest(watched, "batch.tsv", [inputs["reads"]])
    first = tick(instance, home, None)
    _manifest(watched, "batch.tsv", [inputs["reads"], inputs["peaks"]])
    context = build_sensor_context(instance=instance, cursor=first.cursor)
    settings = GenoflowResource(home=str(home)).settings()
    lost = evaluate(context, settings, LocalManifests(watched), limit=10)  # never committed
    assert _requested(lost) == [("intervals_chain", inputs["peaks"][1])]
    again = tick(instance, home, first.cursor)
    assert _requested(again) == [("intervals_chain", inputs["peaks"][1])]


def test_sidecars_are_written_whole_and_only_for_contents_the_cursor_names(
    instance, watched, home
) -> None:
    inputs = _inputs(watched)
    _manifest(watched, "batch.tsv", [inputs["reads"]])
    first = tick(instance, home, None)
    _manifest(watched, "batch.tsv", [inputs["reads"], inputs["peaks"]])
    second = tick(instance, home, first.cursor)
    _manifest(watched, "batch.tsv", list(inputs.values()))
    third = tick(instance, home, second.cursor)
    digests = {*ManifestCursor.parse(second.cursor).hashes.values()}
    digests |= {*ManifestCursor.parse(third.cursor).hashes.values()}
    assert [p.name for p in _sidecars(home)] == sorted(f"{d}.json" for d in digests)


def test_a_sidecar_of_the_wrong_shape_is_not_trusted(tmp_path) -> None:
    store = SidecarStore(tmp_path)
    row = {"0123456789abcdef": ["a.bed", "0" * 32, "bed", 12]}  # name, md5, format, size
    store.save("abc", HandledLines("h", "/data", row))
    assert store.load("abc").rows == {"0123456789abcdef": ["a.bed", "0" * 32, "bed", 12]}
    for rows in ('{"0123456789abcdef": 7}', '{"0123456789abcdef": ["a.bed"]}', "[]"):
        (tmp_path / "abc.json").write_text(
            f'{{"v": 1, "digest": "abc", "header": "h", "base": "/data", "rows": {rows}}}'
        )
        assert store.load("abc") is None
    assert [p.name for p in tmp_path.iterdir()] == ["abc.json"]  # no temp file left behind


def _random_line(rng: random.Random) -> str:
    name = f"f{rng.randrange(20)}.{rng.choice(['bed', 'sam', 'csv'])}"
    md5 = hashlib.md5(str(rng.randrange(15)).encode()).hexdigest()
    return rng.choice(
        [
            f"{name}\t{name}\t{md5}\t\t{rng.randrange(99)}\n",
            f"{name}\t{name}\t{md5}\tbed\t\n",
            f"{name}\t{name}\tnot-an-md5\t\t\n",
            f"{name}\t{name}\n",
            "# a comment\n",
            "\n",
        ]
    )


@pytest.mark.parametrize("seed", range(4))
def test_reading_new_lines_finds_what_a_full_read_finds_less_the_rows_handled_before(
    tmp_path, seed
) -> None:
    rng = random.Random(seed)
    path = tmp_path / "m.tsv"
    for _ in range(50):
        lines = [_random_line(rng) for _ in range(rng.randrange(1, 12))]
        path.write_text(HEADER + "".join(lines))
        handled = read_changed(path, None).handled()
        before = {(r.name, r.md5, r.format, r.size) for r in read_manifest(path).rows}
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(lines) + 1)
            lines[at : at + rng.randrange(2)] = [_random_line(rng)] * rng.randrange(2)
        path.write_text(HEADER + "".join(lines))
        full, read = read_manifest(path), read_changed(path, handled)
        assert [str(e) for e in read.manifest.errors] == [str(e) for e in full.errors]
        assert set(read.manifest.rows) <= set(full.rows)
        left_out = set(full.rows) - set(read.manifest.rows)
        assert {(r.name, r.md5, r.format, r.size) for r in left_out} <= before
