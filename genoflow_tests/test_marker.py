"""The typed artifact marker: every genoflow.json already written still loads, byte for byte."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from genoflow.core.errors import StorageError
from genoflow.storage.cache import MARKER, Artifact, Cache, Draft
from genoflow.storage.layout import ArtifactKey
from genoflow.storage.marker import FileEntry, Marker

# Written by a real `genoflow` build (intervals/index of a one-record BED file) before the
# marker was typed: the shape every cache and bucket holds today.
WRITTEN_BEFORE = """{
  "asset": "intervals/index",
  "checksum": "aac89803e8e9679d63b2b8ad83f99de8",
  "created_at": "2026-12-07T11:38:51+00:00",
  "created_by": {
    "host": "vm",
    "pid": 13893
  },
  "details": {
    "engine": "htslib-cli",
    "engine_versions": {
      "bgzip": "1.16",
      "tabix": "1.16"
    },
    "family": "intervals",
    "format": "bed",
    "index": "tbi",
    "index_built_by": "sort",
    "line_skip": 0,
    "names": [
      "ok"
    ],
    "preset": "bed",
    "records_in": 1,
    "records_out": 1
  },
  "files": [
    {
      "md5": "2f2fca254c196e6ab3d5567b8ceccf6a",
      "name": "sorted.bed.gz",
      "size": 69
    },
    {
      "md5": "a9fde248a36ec9a6ea5bd2b0baca4859",
      "name": "sorted.bed.gz.tbi",
      "size": 117
    }
  ],
  "format_version": 1,
  "inputs": [
    {
      "asset": "intervals/sorted",
      "checksum": "aac89803e8e9679d63b2b8ad83f99de8"
    }
  ],
  "processor": "genoflow.processors.intervals.index_intervals",
  "source_md5": "2de570b035cad79cc2c1dff34f012a93",
  "tools": {
    "htslib": "1.24",
    "pysam": "0.24.1",
    "samtools": "1.24"
  },
  "version": "2"
}
"""
KEY = ArtifactKey("intervals", "2de570b035cad79cc2c1dff34f012a93", "index", "2")


def on_disk(marker: dict[str, Any]) -> str:
    """The bytes the cache writes for ``marker`` (indented, sorted keys, final newline)."""
    return json.dumps(marker, indent=2, sort_keys=True) + "\n"


def test_a_marker_written_before_the_typed_marker_round_trips_to_the_same_dict_and_bytes() -> None:
    written = json.loads(WRITTEN_BEFORE)

    marker = Marker.from_json(copy.deepcopy(written))

    assert marker.to_json() == written
    assert on_disk(marker.to_json()) == WRITTEN_BEFORE


def test_a_marker_written_before_exposes_its_facts_as_attributes() -> None:
    marker = Marker.from_json(json.loads(WRITTEN_BEFORE))

    assert (marker.asset, marker.source_md5, marker.version) == (
        "intervals/index",
        KEY.md5,
        "2",
    )
    assert marker.files[0] == FileEntry("sorted.bed.gz", 69, "2f2fca254c196e6ab3d5567b8ceccf6a")
    assert (marker.size, marker.checksum) == (69 + 117, "aac89803e8e9679d63b2b8ad83f99de8")
    assert (marker.format, marker.names, marker.records_in, marker.records_out) == (
        "bed",
        ["ok"],
        1,
        1,
    )
    assert marker.inputs[0]["asset"] == "intervals/sorted"
    assert marker.tools["htslib"] == "1.24"


def test_the_cache_still_loads_an_artifact_whose_marker_was_written_before(
    tmp_path: Path,
) -> None:
    cache = Cache(tmp_path / "cache")
    folder = cache.folder(KEY)
    folder.mkdir(parents=True)
    (folder / MARKER).write_text(WRITTEN_BEFORE)
    (folder / "sorted.bed.gz").write_bytes(b"\0" * 69)
    (folder / "sorted.bed.gz.tbi").write_bytes(b"\0" * 117)

    found = cache.lookup(KEY)

    assert found is not None
    assert found.marker.to_json() == json.loads(WRITTEN_BEFORE)
    assert found.checksum == "aac89803e8e9679d63b2b8ad83f99de8"


def test_a_published_marker_on_disk_is_exactly_its_typed_marker_written_back(
    tmp_path: Path,
) -> None:
    cache = Cache(tmp_path / "cache")
    draft = cache.begin(KEY)
    assert isinstance(draft, Draft)
    (draft.dir / "sorted.bed.gz").write_bytes(b"data")
    (draft.dir / "sorted.bed.gz.tbi").write_bytes(b"index")

    artifact: Artifact = cache.publish(
        draft,
        processor="genoflow_tests.marker",
        inputs=[{"asset": "intervals/sorted", "checksum": "0" * 32}],
        details={"files": ["sorted.bed.gz", "sorted.bed.gz.tbi"], "format": "bed", "names": ["a"]},
        tools={"htslib": "1.24"},
    )

    text = (artifact.path / MARKER).read_text()
    assert on_disk(artifact.marker.to_json()) == text
    assert set(json.loads(text)) == set(json.loads(WRITTEN_BEFORE))


def test_keys_a_newer_writer_added_are_kept_when_the_marker_is_written_back() -> None:
    written = {**json.loads(WRITTEN_BEFORE), "signed_by": {"key": "k1"}}

    assert Marker.from_json(copy.deepcopy(written)).to_json() == written


def _without(key: str) -> dict[str, Any]:
    data = json.loads(WRITTEN_BEFORE)
    del data[key]
    return data


def _with(key: str, value: Any) -> dict[str, Any]:
    return {**json.loads(WRITTEN_BEFORE), key: value}


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ([1, 2], "not an object"),
        (_without("checksum"), "has no 'checksum'"),
        (_without("details"), "has no 'details'"),
        (_with("files", "sorted.bed.gz"), "'files' that is not a JSON list"),
        (_with("format_version", "1"), "'format_version' that is not a JSON int"),
        (_with("files", [{"name": 1, "size": 1, "md5": "0"}]), "'name' is not a JSON str"),
        (_with("files", [{"name": "a", "size": 1}]), "not {name, size, md5}"),
        (_with("inputs", ["intervals/sorted"]), "'inputs' item that is not an object"),
    ],
)
def test_a_malformed_marker_raises_a_storage_error_naming_what_is_wrong(
    data: Any, problem: str
) -> None:
    with pytest.raises(StorageError, match=problem) as raised:
        Marker.from_json(data, source="cache/intervals/2d/x/index/v2/genoflow.json")

    assert raised.value.file == "cache/intervals/2d/x/index/v2/genoflow.json"
    assert MARKER in raised.value.message
