"""Staging: verified copies of a source's replicas, and URIs that never leak their secrets."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pytest

from genoflow.core.errors import ChecksumError, SourceError, redact
from genoflow.storage import staging

# Latin-1 bytes in a record, as real files carry them.
DATA = b"chr1\t10\t20\tpeak_caf\xe9\nchr2\t5\t9\t\xff\xfe\n" * 50
MD5 = hashlib.md5(DATA).hexdigest()
SIGNED = "https://h/p?token=secret"
Readers = dict[str, staging.Opener]


def source(folder: Path, name: str = "upload.bed", data: bytes = DATA) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def serving(data: bytes, *, fail_after: int | None = None) -> staging.Opener:
    """A reader for a remote scheme that serves ``data`` (or breaks after ``fail_after`` bytes)."""

    class Broken(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            if self.tell() >= (fail_after or 0):
                raise SourceError("connection reset", file="remote")
            return super().read(fail_after)

    @contextmanager
    def open_remote(uri: str) -> Iterator[BinaryIO]:
        yield io.BytesIO(data) if fail_after is None else Broken(data)

    return open_remote


@pytest.fixture
def readers(monkeypatch: pytest.MonkeyPatch) -> Readers:
    """The reader table, restored after the test; a test plugs an https reader into it."""
    monkeypatch.setattr(staging, "READERS", dict(staging.READERS))
    return staging.READERS


def test_stage_copies_a_local_file_and_returns_its_uri(tmp_path: Path) -> None:
    src = source(tmp_path / "in")

    staged, uri = staging.stage([str(src)], tmp_path / "staged", md5=MD5, size=len(DATA), name="p")

    assert (staged, uri) == (tmp_path / "staged", str(src))
    assert staged.read_bytes() == DATA


def test_stage_accepts_a_source_of_unknown_size(tmp_path: Path) -> None:
    src = source(tmp_path / "in")

    staged, _ = staging.stage([str(src)], tmp_path / "staged", md5=MD5, size=None, name="p")

    assert staged.read_bytes() == DATA


def test_wrong_md5_raises_a_checksum_error_naming_the_source(tmp_path: Path) -> None:
    src = source(tmp_path / "in")

    with pytest.raises(ChecksumError, match="md5") as error:
        staging.stage([str(src)], tmp_path / "staged", md5="0" * 32, size=None, name="sample_7")

    assert "sample_7" in str(error.value)
    assert str(src) in str(error.value)


def test_wrong_md5_leaves_no_partial_copy(tmp_path: Path) -> None:
    src = source(tmp_path / "in")

    with pytest.raises(ChecksumError):
        staging.stage([str(src)], tmp_path / "staged", md5="0" * 32, size=None, name="p")

    assert not (tmp_path / "staged").exists()


def test_size_mismatch_raises_a_checksum_error_naming_the_source(tmp_path: Path) -> None:
    src = source(tmp_path / "in")

    with pytest.raises(ChecksumError, match="size") as error:
        staging.stage([str(src)], tmp_path / "staged", md5=MD5, size=len(DATA) + 1, name="sample_7")

    assert "sample_7" in str(error.value)


def test_size_mismatch_leaves_no_partial_copy(tmp_path: Path) -> None:
    src = source(tmp_path / "in")

    with pytest.raises(ChecksumError):
        staging.stage([str(src)], tmp_path / "staged", md5=MD5, size=len(DATA) - 1, name="p")

    assert not (tmp_path / "staged").exists()


def test_missing_file_raises_a_source_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "in" / "gone.bed"

    with pytest.raises(SourceError, match="not found") as error:
        staging.stage([str(missing)], tmp_path / "staged", md5=MD5, size=None, name="p")

    assert str(missing) in str(error.value)
    assert not (tmp_path / "staged").exists()


def test_a_folder_given_as_a_source_raises_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="folder"):
        staging.stage([str(tmp_path)], tmp_path / "staged", md5=MD5, size=None, name="p")


def test_the_second_replica_is_used_when_the_first_is_corrupt(tmp_path: Path) -> None:
    corrupt = source(tmp_path / "a", data=DATA[:-1] + b"X")
    good = source(tmp_path / "b")

    staged, uri = staging.stage(
        [str(corrupt), str(good)], tmp_path / "staged", md5=MD5, size=len(DATA), name="p"
    )

    assert uri == str(good)
    assert staged.read_bytes() == DATA


def test_the_second_replica_is_used_when_the_first_is_missing(tmp_path: Path) -> None:
    good = source(tmp_path / "b")

    _, uri = staging.stage(
        [str(tmp_path / "a" / "gone.bed"), str(good)], tmp_path / "s", md5=MD5, size=None, name="p"
    )

    assert uri == str(good)


def test_every_replica_corrupt_raises_a_checksum_error_naming_each(tmp_path: Path) -> None:
    first = source(tmp_path / "a", data=b"x")
    second = source(tmp_path / "b", data=b"y")

    with pytest.raises(ChecksumError, match="no replica verified") as error:
        staging.stage([str(first), str(second)], tmp_path / "s", md5=MD5, size=None, name="p")

    assert str(first) in str(error.value)
    assert str(second) in str(error.value)
    assert not (tmp_path / "s").exists()


def test_a_missing_and_a_corrupt_replica_raise_a_source_error(tmp_path: Path) -> None:
    corrupt = source(tmp_path / "b", data=b"y")

    with pytest.raises(SourceError, match="no replica verified"):
        staging.stage(
            [str(tmp_path / "gone.bed"), str(corrupt)], tmp_path / "s", md5=MD5, size=None, name="p"
        )


def test_a_source_without_replicas_raises_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no replica"):
        staging.stage([], tmp_path / "s", md5=MD5, size=None, name="p")


def test_file_uris_are_read(tmp_path: Path) -> None:
    src = source(tmp_path / "in dir", name="peaks #1.bed")

    staged, uri = staging.stage([src.as_uri()], tmp_path / "s", md5=MD5, size=None, name="p")

    assert uri == src.as_uri()
    assert staged.read_bytes() == DATA


def test_an_unknown_scheme_raises_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="s3://"):
        staging.stage(["s3://bucket/peaks.bed"], tmp_path / "s", md5=MD5, size=None, name="p")


def test_a_reader_failing_mid_copy_leaves_no_partial_copy(tmp_path: Path, readers: Readers) -> None:
    readers["https"] = serving(DATA, fail_after=10)

    with pytest.raises(SourceError, match="connection reset"):
        staging.stage(["https://h/peaks.bed"], tmp_path / "s", md5=MD5, size=None, name="p")

    assert not (tmp_path / "s").exists()


def test_a_registered_reader_serves_its_scheme(tmp_path: Path, readers: Readers) -> None:
    readers["https"] = serving(DATA)

    staged, _ = staging.stage([SIGNED], tmp_path / "s", md5=MD5, size=len(DATA), name="p")

    assert staged.read_bytes() == DATA


def test_unreadable_signed_url_error_never_shows_its_query(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as error:
        staging.stage([SIGNED], tmp_path / "s", md5=MD5, size=None, name="p")

    assert "secret" not in str(error.value)
    assert "https://h/p" in str(error.value)


def test_corrupt_signed_url_error_never_shows_its_query(tmp_path: Path, readers: Readers) -> None:
    readers["https"] = serving(b"not the source")

    with pytest.raises(ChecksumError) as error:
        staging.stage([SIGNED], tmp_path / "s", md5=MD5, size=None, name="p")

    assert "secret" not in str(error.value)


def test_corrupt_signed_url_error_names_the_source_and_the_redacted_uri(
    tmp_path: Path, readers: Readers
) -> None:
    readers["https"] = serving(b"not the source")

    with pytest.raises(ChecksumError) as error:
        staging.stage([SIGNED], tmp_path / "s", md5=MD5, size=None, name="sample_7")

    text = str(error.value)
    assert "sample_7" in text
    assert "https://h/p?…" in text
    assert text.count("(") == text.count(")")


def test_error_after_every_signed_replica_failed_never_shows_a_query(
    tmp_path: Path, readers: Readers
) -> None:
    readers["https"] = serving(b"not the source")
    uris = [SIGNED, "https://user:hunter2@h/q?X-Goog-Signature=secret", "gs://b/o?token=secret"]

    with pytest.raises(SourceError) as error:
        staging.stage(uris, tmp_path / "s", md5=MD5, size=None, name="p")

    assert "secret" not in str(error.value)
    assert "hunter2" not in str(error.value)


def test_redact_drops_the_query_and_the_credentials() -> None:
    assert redact("https://user:pw@h:8443/p/x.bam?token=secret#part") == "https://h:8443/p/x.bam?…"


def test_redact_leaves_a_local_path_alone() -> None:
    assert redact("/data/peaks?.bed") == "/data/peaks?.bed"
