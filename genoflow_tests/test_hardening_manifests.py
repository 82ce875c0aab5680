"""Manifest rows that disagree, names that display as others, fields too long to read.

The rule for rows of one md5 that disagree on ``size`` or ``format``: the value the files show
without being opened (a local replica's ``stat`` size; the format the rows' file names say)
wins, else the value most rows declare; each row declaring another value is dropped with its
own ``file:line``; a tie nothing settles drops every row declaring a value.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from genoflow.manifests.diff import SidecarStore, read_changed
from genoflow.manifests.reading import read_manifest, read_manifests
from genoflow.manifests.records import FIELD_LIMIT

from .conftest import run_cli

BED = b"chr1\t10\t20\nchr1\t5\t8\n"
MD5 = hashlib.md5(BED).hexdigest()
SIZE = len(BED)
OTHER_MD5 = "0123456789abcdef0123456789abcdef"


def _tsv(folder: Path, header: str, *rows: str, name: str = "m.tsv") -> Path:
    (folder / "a.bed").write_bytes(BED)
    (folder / "b.bed").write_bytes(BED)
    path = folder / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.mark.parametrize("wrong_first", [True, False], ids=["wrong-row-first", "wrong-row-last"])
def test_a_wrong_size_drops_only_its_own_row_and_names_its_line(
    tmp_path: Path, wrong_first: bool
) -> None:
    wrong = f"a.bed\ta.bed\t{MD5}\t999"
    right = f"b.bed\tb.bed\t{MD5}\t{SIZE}"
    rows = [wrong, right] if wrong_first else [right, wrong]
    path = _tsv(tmp_path, "name\turi\tmd5\tsize", *rows)
    manifest = read_manifest(path)
    assert [(row.name, row.size) for row in manifest.rows] == [("b.bed", SIZE)]
    [error] = manifest.errors
    assert error.line == (2 if wrong_first else 3)
    assert str(error).startswith(f"{path}:{error.line}: md5 {MD5} has size 999 here")
    assert f"the file {tmp_path / 'a.bed'} has {SIZE} bytes" in error.reason


def test_a_file_outside_the_allowed_roots_is_never_looked_at_to_settle_a_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its size would tell a reader of the error something about a file they may not read."""
    monkeypatch.delenv("GENOFLOW_ALLOWED_ROOTS", raising=False)
    outside = tmp_path / "private"
    outside.mkdir()
    secret = outside / "secret.bed"
    secret.write_bytes(BED * 3)
    folder = tmp_path / "manifests"
    folder.mkdir()
    rows = [f"a.bed\t{secret}\t{MD5}\t{SIZE}", f"b.bed\thttps://h.org/b.bed\t{MD5}\t{3 * SIZE}"]
    path = _tsv(folder, "name\turi\tmd5\tsize", *rows)

    manifest = read_manifest(path)

    assert manifest.rows == []  # a tie nothing may settle: both rows dropped
    assert all("the file" not in error.reason for error in manifest.errors)
    assert all(str(secret) not in error.reason for error in manifest.errors)
    monkeypatch.setenv("GENOFLOW_ALLOWED_ROOTS", str(outside))
    [row] = read_manifest(path).rows  # inside the allowed roots, the file settles it
    assert (row.name, row.size) == ("b.bed", 3 * SIZE)


@pytest.mark.parametrize("wrong_first", [True, False], ids=["wrong-row-first", "wrong-row-last"])
def test_a_conflicting_format_drops_only_its_own_row_by_the_same_rule(
    tmp_path: Path, wrong_first: bool
) -> None:
    wrong = f"a.bed\ta.bed\t{MD5}\tvcf"
    right = f"b.bed\tb.bed\t{MD5}\tbed"
    rows = [wrong, right] if wrong_first else [right, wrong]
    path = _tsv(tmp_path, "name\turi\tmd5\tformat", *rows)
    manifest = read_manifest(path)
    assert [(row.name, row.format) for row in manifest.rows] == [("b.bed", "bed")]
    [error] = manifest.errors
    assert error.line == (2 if wrong_first else 3)
    assert f"md5 {MD5} has format vcf here, but the file name 'a.bed' says bed" in error.reason


@pytest.mark.parametrize("order", [0, 1, 2])
def test_the_size_most_rows_declare_wins_when_no_local_file_shows_one(
    tmp_path: Path, order: int
) -> None:
    rows = [f"{name}\thttps://h.org/{name}\t{MD5}\t{size}" for name, size in
            [("a.bed", SIZE), ("b.bed", SIZE), ("c.bed", 999)]]  # fmt: skip
    rows.insert(order, rows.pop())
    path = _tsv(tmp_path, "name\turi\tmd5\tsize", *rows)
    manifest = read_manifest(path)
    assert sorted(row.name for row in manifest.rows) == ["a.bed", "b.bed"]
    [error] = manifest.errors
    assert error.line == order + 2
    assert f"has size 999 here, but 2 of the 3 rows declare {SIZE} bytes at {path}:" in str(error)


@pytest.mark.parametrize("first", ["vcf", "gff3"])
def test_a_tie_nothing_settles_drops_every_row_declaring_a_value_each_with_its_line(
    tmp_path: Path, first: str
) -> None:
    second = "gff3" if first == "vcf" else "vcf"
    path = _tsv(
        tmp_path,
        "name\turi\tmd5\tformat",
        f"x\thttps://h.org/x\t{MD5}\t{first}",
        f"y\thttps://h.org/y\t{MD5}\t{second}",
        f"c.bed\tc.bed\t{OTHER_MD5}\tbed",
    )
    manifest = read_manifest(path)
    assert [row.name for row in manifest.rows] == ["c.bed"]
    assert [error.line for error in manifest.errors] == [2, 3]
    for error, mine, theirs in zip(manifest.errors, (first, second), (3, 2), strict=True):
        assert f"format {mine} here, but other rows say" in error.reason
        assert f"{path}:{theirs}" in error.reason
        assert "cannot be told" in error.reason


def test_rows_that_declare_no_size_never_conflict(tmp_path: Path) -> None:
    path = _tsv(
        tmp_path, "name\turi\tmd5\tsize", f"a.bed\ta.bed\t{MD5}\t", f"b.bed\tb.bed\t{MD5}\t{SIZE}"
    )
    manifest = read_manifest(path)
    assert [row.name for row in manifest.rows] == ["a.bed", "b.bed"]
    assert manifest.errors == []


def test_a_size_conflict_across_two_manifests_names_each_row_in_its_own_manifest(
    tmp_path: Path,
) -> None:
    first = _tsv(tmp_path, "name\turi\tmd5\tsize", f"a.bed\ta.bed\t{MD5}\t5", name="one.tsv")
    second = _tsv(tmp_path, "name\turi\tmd5\tsize", f"b.bed\tb.bed\t{MD5}\t{SIZE}", name="two.tsv")
    manifest = read_manifests([first, second])
    assert [row.name for row in manifest.rows] == ["b.bed"]
    [error] = manifest.errors
    assert (error.manifest, error.line) == (first, 2)


def test_an_incremental_read_leaves_a_new_size_conflict_to_the_full_read(tmp_path: Path) -> None:
    """A line added with another size for a handled md5 is settled as a full read settles it."""
    path = _tsv(tmp_path, "name\turi\tmd5\tsize", f"b.bed\tb.bed\t{MD5}\t{SIZE}")
    first = read_changed(path, None)
    store = SidecarStore(tmp_path / "sidecars")
    handled = first.handled()
    assert handled is not None
    store.save("one", handled)
    path.write_text(path.read_text() + f"a.bed\ta.bed\t{MD5}\t999\n")
    changed = read_changed(path, store.load("one"))
    assert not changed.incremental
    assert [row.name for row in changed.manifest.rows] == ["b.bed"]
    assert [error.line for error in changed.manifest.errors] == [3]


@pytest.mark.parametrize(
    ("char", "code"),
    [
        ("\u202e", "U+202E"),
        ("\u202a", "U+202A"),
        ("\u2066", "U+2066"),
        ("\u2069", "U+2069"),
        ("\u200e", "U+200E"),
        ("\u200f", "U+200F"),
        ("\u061c", "U+061C"),
        ("\u200b", "U+200B"),
        ("\u200c", "U+200C"),
        ("\u200d", "U+200D"),
        ("\u2060", "U+2060"),
        ("\ufeff", "U+FEFF"),
        ("\u0085", "U+0085"),
        ("\u2028", "U+2028"),
        ("\u00ad", "U+00AD"),
    ],
)
def test_a_name_with_a_character_that_changes_how_it_displays_is_refused_by_code_point(
    tmp_path: Path, char: str, code: str
) -> None:
    spoof = f"evil{char}deb.bed"
    path = _tsv(
        tmp_path,
        "name\turi\tmd5",
        f"{spoof}\ta.bed\t{MD5}",
        f"b.bed\tb.bed\t{OTHER_MD5}",
    )
    manifest = read_manifest(path)
    assert [row.name for row in manifest.rows] == ["b.bed"]
    [error] = manifest.errors
    assert error.line == 2
    assert code in error.reason
    assert char not in str(error)  # the name is shown escaped, never raw


def test_a_uri_with_a_right_to_left_override_is_refused_by_code_point(tmp_path: Path) -> None:
    path = _tsv(tmp_path, "name\turi\tmd5", f"a.bed\tdata/a\u202edeb.bed\t{MD5}")
    [error] = read_manifest(path).errors
    assert "U+202E (RIGHT-TO-LEFT OVERRIDE)" in error.reason


def test_a_json_manifest_refuses_a_zero_width_name_too(tmp_path: Path) -> None:
    (tmp_path / "a.bed").write_bytes(BED)
    path = tmp_path / "m.json"
    path.write_text(json.dumps([{"name": "a\u200b.bed", "uri": "a.bed", "md5": MD5}]))
    [error] = read_manifest(path).errors
    assert "U+200B (ZERO WIDTH SPACE)" in error.reason


@pytest.mark.parametrize("quote", ["", '"'], ids=["long-field", "quote-left-open"])
def test_a_field_longer_than_the_limit_says_what_to_do_and_other_rows_flow(
    tmp_path: Path, quote: str
) -> None:
    path = _tsv(
        tmp_path,
        "name\turi\tmd5\tnote",
        f"a.bed\ta.bed\t{MD5}\t{quote}" + "x" * 1_000_000,
        f"b.bed\tb.bed\t{OTHER_MD5}\tshort",
    )
    manifest = read_manifest(path)
    assert [row.name for row in manifest.rows] == ["b.bed"]
    [error] = manifest.errors
    assert error.line == 2
    assert f"a field is longer than {FIELD_LIMIT} characters — shorten it" in error.reason
    assert "field larger than field limit" not in error.reason


def test_a_json_field_longer_than_the_limit_is_refused_the_same_way(tmp_path: Path) -> None:
    (tmp_path / "a.bed").write_bytes(BED)
    path = tmp_path / "m.json"
    rows = [
        {"name": "a.bed", "uri": "a.bed", "md5": MD5, "note": "x" * (FIELD_LIMIT + 1)},
        {"name": "b.bed", "uri": "a.bed", "md5": OTHER_MD5},
    ]
    path.write_text(json.dumps(rows))
    manifest = read_manifest(path)
    assert [row.name for row in manifest.rows] == ["b.bed"]
    assert f"longer than {FIELD_LIMIT} characters" in manifest.errors[0].reason


def test_a_wrong_size_row_beside_a_right_one_still_builds_through_the_cli(tmp_path: Path) -> None:
    path = _tsv(
        tmp_path,
        "name\turi\tmd5\tsize",
        f"a.bed\ta.bed\t{MD5}\t999",
        f"b.bed\tb.bed\t{MD5}\t{SIZE}",
    )
    done = run_cli(tmp_path / "home", "run", str(path))
    assert "1 of 1 sources ok" in done.stdout, done.stdout + done.stderr
    problems = [line for line in done.stderr.splitlines() if line.startswith("genoflow:")]
    assert problems == [
        f"genoflow: [manifest] invalid row {path}:2: md5 {MD5} has size 999 here, but the file "
        f"{tmp_path / 'a.bed'} has {SIZE} bytes (the rows that agree are kept)"
    ]
    assert done.returncode == 1  # an invalid row is still a problem to fix
