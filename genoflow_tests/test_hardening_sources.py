"""Hostile sources at staging: pipes, devices, sparse giants, full disks, names that do not resolve.

Issue 12's staging cases, end to end through ``genoflow run`` (each bad row beside a valid one,
which must still be built) and as units of the staging, atomic and gcs functions on ``tmp_path``.
Every test that could hang on a regression carries its own timeout, and every CLI run a
subprocess timeout, so a regression fails instead of hanging.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from genoflow.build.steps import key_for
from genoflow.core.checksums import NotRegularFileError, open_regular
from genoflow.core.errors import ChecksumError, ManifestError, SourceError, StorageError
from genoflow.manifests.records import load_records
from genoflow.manifests.watch import LocalManifests
from genoflow.storage import atomic, gcs, staging
from genoflow.storage.cache import Cache, Draft
from genoflow.storage.layout import ArtifactKey
from genoflow.storage.locations import LocalLocation

from .conftest import run_cli
from .support.signed_url_server import SignedUrlServer, signed_url_server  # noqa: F401

# ruff: noqa: F811 - pytest fixtures imported from their modules

BED = b"chr1\t10\t20\tpeak1\nchr1\t5\t9\tpeak0\nchr2\t1\t2\tpeak2\n"
BED_MD5 = hashlib.md5(BED).hexdigest()
UNRESOLVABLE = "http://no-such-host.invalid:4443"  # .invalid never resolves (RFC 6761)
SPARSE_SIZE = 4 << 30
CHAIN = ("source", "sorted", "index")


def md5_of(tag: str) -> str:
    return hashlib.md5(tag.encode()).hexdigest()


def fifo(folder: Path, name: str) -> Path:
    path = folder / name
    os.mkfifo(path)
    return path


def sparse(folder: Path, name: str, size: int) -> Path:
    path = folder / name
    with open(path, "wb") as handle:
        handle.truncate(size)  # a hole: no block is written, however large
    return path


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


class Endless(io.RawIOBase):
    """A remote body that never ends (``/dev/zero`` over a wire); counts the bytes handed out."""

    def __init__(self) -> None:
        super().__init__()
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        buffer[:] = b"\0" * len(buffer)
        self.served += len(buffer)
        return len(buffer)


@pytest.fixture
def readers(monkeypatch: pytest.MonkeyPatch) -> dict[str, staging.Opener]:
    """The reader table, restored after the test."""
    monkeypatch.setattr(staging, "READERS", dict(staging.READERS))
    return staging.READERS


# --- regular files only ----------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_a_fifo_source_is_refused_at_once_and_names_the_file(tmp_path: Path) -> None:
    pipe = fifo(tmp_path, "fifo.bed")

    with pytest.raises(SourceError) as caught:
        staging.stage([str(pipe)], tmp_path / "s", md5=md5_of("x"), size=10, name="fifo")

    text = str(caught.value)
    assert text.startswith(f"[stage] {pipe}: is a FIFO (named pipe), not a regular file")
    assert "point the manifest's uri at a regular file" in text
    assert not (tmp_path / "s").exists()


@pytest.mark.timeout(20)
def test_a_fifo_inside_the_allowed_roots_is_refused_through_the_confined_opener(
    tmp_path: Path,
) -> None:
    pipe = fifo(tmp_path, "fifo.bed")

    with pytest.raises(SourceError, match="FIFO"):
        staging.stage(
            [str(pipe)], tmp_path / "s", md5=md5_of("x"), size=10, name="fifo",
            roots={str(pipe): (tmp_path,)},
        )  # fmt: skip


@pytest.mark.timeout(20)
def test_a_character_device_is_refused_even_when_its_folder_is_an_allowed_root(
    tmp_path: Path,
) -> None:
    with pytest.raises(SourceError) as caught:
        staging.stage(
            ["/dev/zero"], tmp_path / "s", md5=md5_of("z"), size=1000, name="zero",
            roots={"/dev/zero": (Path("/dev"), tmp_path)},
        )  # fmt: skip

    assert "/dev/zero: is a character device, not a regular file" in str(caught.value)
    assert not (tmp_path / "s").exists()


@pytest.mark.timeout(20)
def test_a_device_outside_the_allowed_roots_is_refused_for_being_outside(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="outside the allowed roots"):
        staging.stage(
            ["/dev/zero"], tmp_path / "s", md5=md5_of("z"), size=None, name="zero",
            roots={"/dev/zero": (tmp_path,)},
        )  # fmt: skip


def test_a_folder_is_refused_as_not_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="is a folder, not a regular file"):
        staging.stage([str(tmp_path)], tmp_path / "s", md5=md5_of("d"), size=None, name="d")


@pytest.mark.timeout(20)
def test_open_regular_judges_the_descriptor_and_never_blocks_on_a_fifo(tmp_path: Path) -> None:
    with pytest.raises(NotRegularFileError) as caught:
        open_regular(fifo(tmp_path, "p"))

    assert caught.value.kind == "a FIFO (named pipe)"


def test_open_regular_reads_a_regular_file_through_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real.bed").write_bytes(BED)
    (tmp_path / "link.bed").symlink_to(tmp_path / "real.bed")

    with open_regular(tmp_path / "link.bed") as handle:
        assert handle.read() == BED


@pytest.mark.timeout(20)
def test_a_fifo_planted_as_a_local_replica_is_refused_not_waited_on(tmp_path: Path) -> None:
    location = LocalLocation("cache", tmp_path / "root", deployment="here")
    (tmp_path / "root").mkdir()
    fifo(tmp_path / "root", "x.bed")

    with pytest.raises(StorageError, match="replica is a FIFO"):
        location.get("x.bed", tmp_path / "copy")

    assert not (tmp_path / "copy").exists()


# --- sizes before bytes ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_sparse_giant_with_a_small_declared_size_fails_before_a_byte_is_read(
    tmp_path: Path,
) -> None:
    giant = sparse(tmp_path, "giant.bed", SPARSE_SIZE)
    started = time.monotonic()

    with pytest.raises(ChecksumError) as caught:
        staging.stage([str(giant)], tmp_path / "s", md5=md5_of("g"), size=10, name="giant")

    # Reading and hashing 4 GiB takes many seconds even from a hole; a stat takes none.
    assert time.monotonic() - started < 2.0
    assert f"size is {SPARSE_SIZE} bytes, the manifest says 10" in str(caught.value)
    assert "nothing was copied" in str(caught.value)
    assert not (tmp_path / "s").exists()


@pytest.mark.timeout(60)
def test_a_source_bigger_than_the_free_space_without_a_declared_size_fails_before_copying(
    tmp_path: Path,
) -> None:
    giant = sparse(tmp_path, "giant.bed", free_bytes(tmp_path) + (1 << 40))
    started = time.monotonic()

    with pytest.raises(StorageError) as caught:
        staging.stage([str(giant)], tmp_path / "s", md5=md5_of("g"), size=None, name="giant")

    assert time.monotonic() - started < 2.0
    text = str(caught.value)
    assert text.startswith("[stage] giant: staging needs ")
    assert "nothing was copied — free space under GENOFLOW_HOME" in text
    assert not (tmp_path / "s").exists()


@pytest.mark.timeout(60)
def test_a_declared_size_bigger_than_the_free_space_fails_before_copying(tmp_path: Path) -> None:
    size = free_bytes(tmp_path) + (1 << 40)
    giant = sparse(tmp_path, "giant.bed", size)

    with pytest.raises(StorageError, match="free space under GENOFLOW_HOME"):
        staging.stage([str(giant)], tmp_path / "s", md5=md5_of("g"), size=size, name="giant")

    assert not (tmp_path / "s").exists()


@pytest.mark.timeout(30)
def test_an_endless_stream_is_read_no_further_than_one_byte_past_the_declared_size(
    tmp_path: Path, readers: dict[str, staging.Opener]
) -> None:
    body = Endless()

    @contextmanager
    def open_endless(uri: str) -> Iterator[BinaryIO]:
        yield io.BufferedReader(body)

    readers["https"] = open_endless

    with pytest.raises(ChecksumError, match="grew past 1000 bytes"):
        staging.stage(["https://h/zero"], tmp_path / "s", md5=md5_of("z"), size=1000, name="z")

    assert body.served <= 1000 + io.DEFAULT_BUFFER_SIZE  # the copy stopped, the buffer aside
    assert not (tmp_path / "s").exists()


@pytest.mark.timeout(60)
@pytest.mark.system
def test_an_https_body_whose_length_differs_from_the_manifest_fails_before_download(
    tmp_path: Path, signed_url_server: SignedUrlServer
) -> None:
    from genoflow.storage import https

    signed_url_server.put("big.bed", BED * 1000)
    url = signed_url_server.url("big.bed")
    saved = dict(staging.READERS)
    https.register_readers()
    try:
        with pytest.raises(ChecksumError) as caught:
            staging.stage([url], tmp_path / "s", md5=md5_of("b"), size=len(BED), name="big")
    finally:
        staging.READERS.clear()
        staging.READERS.update(saved)

    text = str(caught.value)
    assert f"size is {len(BED) * 1000} bytes, the manifest says {len(BED)}" in text
    assert "nothing was copied" in text and "token=" not in text


def test_a_local_source_of_the_declared_size_still_stages(tmp_path: Path) -> None:
    (tmp_path / "ok.bed").write_bytes(BED)

    staged, _ = staging.stage(
        [str(tmp_path / "ok.bed")], tmp_path / "s", md5=BED_MD5, size=len(BED), name="ok"
    )

    assert staged.read_bytes() == BED


# --- no empty folder after a failure ---------------------------------------------------------


KEY = ArtifactKey("intervals", md5_of("k"), "sorted", "2")


def test_a_discarded_draft_leaves_no_folder_of_its_asset_md5_or_family(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    draft = cache.begin(KEY)
    assert isinstance(draft, Draft)

    cache.discard(draft)

    assert list((tmp_path / "cache").iterdir()) == []


def test_a_discarded_draft_keeps_the_folders_that_hold_another_artifact(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    source = cache.begin(key_for("intervals", KEY.md5, "source"))
    assert isinstance(source, Draft)
    (source.dir / "source.bed").write_bytes(BED)
    kept = cache.publish(source, processor="test")

    draft = cache.begin(KEY)
    assert isinstance(draft, Draft)
    cache.discard(draft)

    assert not cache.folder(KEY).parent.exists()
    assert kept.path.is_dir() and cache.lookup(kept.key) is not None


def test_prune_empty_stops_at_the_first_folder_that_holds_something(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (tmp_path / "a" / "other").write_text("another builder's lock")

    atomic.prune_empty(deep, stop=tmp_path)

    assert not (tmp_path / "a" / "b").exists()
    assert (tmp_path / "a" / "other").exists()


def test_prune_empty_never_removes_the_stop_folder_or_anything_outside_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()

    atomic.prune_empty(root, stop=root)
    atomic.prune_empty(tmp_path, stop=root)

    assert root.is_dir()


def test_within_parents_makes_the_folder_again_when_a_concurrent_prune_removed_it(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "x" / "y"
    calls = 0

    def create() -> Path:
        nonlocal calls
        calls += 1
        if calls == 1:
            atomic.prune_empty(folder, stop=tmp_path)  # another builder's failure, just now
        (folder / "lock").write_text("")
        return folder / "lock"

    assert atomic.within_parents(folder, create).exists()
    assert calls == 2


@pytest.mark.timeout(120)
def test_builders_failing_and_starting_under_one_md5_at_once_never_lose_a_folder(
    tmp_path: Path,
) -> None:
    cache = Cache(tmp_path / "cache", lock_timeout=60)
    # Four keys under one md5[:2] folder: three assets of one md5, and another md5.
    other = KEY.md5[:2] + "f" * 30
    keys = [key_for("intervals", md5, asset) for md5 in (KEY.md5, other) for asset in CHAIN]
    errors: list[BaseException] = []

    def churn(key: ArtifactKey) -> None:
        try:
            for _ in range(60):
                draft = cache.begin(key)
                assert isinstance(draft, Draft)
                (draft.dir / "f").write_bytes(b"x")
                cache.discard(draft)
        except BaseException as exc:  # collected: the test asserts there were none
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(key,)) for key in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert list((tmp_path / "cache").iterdir()) == []


# --- manifests that are pipes ----------------------------------------------------------------


@pytest.mark.timeout(20)
def test_a_manifest_that_is_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="FIFO"):
        load_records(fifo(tmp_path, "m.tsv"))


@pytest.mark.timeout(20)
def test_a_fifo_in_a_watched_folder_is_reported_and_the_other_manifests_still_listed(
    tmp_path: Path,
) -> None:
    fifo(tmp_path, "pipe.tsv")
    (tmp_path / "good.tsv").write_text("name\turi\tmd5\n")

    listing = LocalManifests(tmp_path, settle=0).listing(now=time.time() + 10)

    assert list(listing.hashes) == ["good.tsv"]
    assert len(listing.problems) == 1
    assert (
        "pipe.tsv: cannot read it (is a FIFO (named pipe), not a regular file)"
        in (listing.problems[0])
    )


# --- gs:// hosts that do not resolve ---------------------------------------------------------


def test_a_name_resolution_failure_is_not_transient() -> None:
    import aiohttp
    from aiohttp.client_reqrep import ConnectionKey

    conn = ConnectionKey("no-such-host.invalid", 4443, False, True, None, None, None, None)
    dns = aiohttp.ClientConnectorDNSError(conn, OSError(socket.EAI_NONAME, "Name not known"))

    assert not gcs.is_transient(dns)
    assert not gcs.is_transient(socket.gaierror(socket.EAI_AGAIN, "Temporary failure"))
    assert gcs.unresolved_host(dns) == "no-such-host.invalid"
    assert gcs.is_transient(ConnectionResetError(errno.ECONNRESET, "reset"))


@pytest.mark.timeout(30)
def test_a_gs_source_on_a_host_that_does_not_resolve_fails_in_seconds_with_one_message(
    tmp_path: Path, readers: dict[str, staging.Opener], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", UNRESOLVABLE)
    gcs.register_readers()
    started = time.monotonic()

    with pytest.raises(SourceError) as caught:
        staging.stage(["gs://lab/x.bed"], tmp_path / "s", md5=md5_of("g"), size=10, name="g")

    assert time.monotonic() - started < 5.0
    assert str(caught.value) == (
        "[stage] gs://lab/x.bed: cannot open: cannot resolve host no-such-host.invalid — check "
        "the store's endpoint (STORAGE_EMULATOR_HOST, when set) and this machine's DNS and network"
    )


@pytest.mark.timeout(30)
def test_a_gcs_location_on_a_host_that_does_not_resolve_fails_in_seconds() -> None:
    location = gcs.GcsLocation("r", "gs://lab", deployment="cloud", endpoint_url=UNRESOLVABLE)
    started = time.monotonic()

    with pytest.raises(StorageError, match="stat failed: cannot resolve host no-such-host"):
        location.stat("a/x.bed")

    assert time.monotonic() - started < 5.0


# --- end to end: each bad row beside a valid one ---------------------------------------------


@dataclass(frozen=True)
class HostileRun:
    """What one ``genoflow run --json`` over the hostile manifest gave."""

    done: subprocess.CompletedProcess[str]
    records: dict[str, dict[str, Any]]
    home: Path
    seconds: float


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory: pytest.TempPathFactory) -> HostileRun:
    """One ``genoflow run`` over a manifest holding every hostile source beside a valid BED."""
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "ok.bed").write_bytes(BED)
    fifo(folder, "fifo.bed")
    sparse(folder, "sparse.bed", SPARSE_SIZE)
    (folder / "empty.bed").write_bytes(b"")
    bad = b"chr1\t1e3\t2000\n"
    (folder / "bad.bed").write_bytes(bad)
    rows = [  # name, uri, md5, size
        ("fifo", "fifo.bed", md5_of("fifo"), "10"),
        ("zero", "/dev/zero", md5_of("zero"), "1000"),
        ("sparse", "sparse.bed", md5_of("sparse"), "10"),
        ("nodns", "gs://lab-bucket/a.bed", md5_of("nodns"), "10"),
        ("empty", "empty.bed", hashlib.md5(b"").hexdigest(), "0"),
        ("bad", "bad.bed", hashlib.md5(bad).hexdigest(), str(len(bad))),
        ("ok", "ok.bed", BED_MD5, str(len(BED))),
    ]
    lines = ["name\turi\tmd5\tsize\tformat"] + ["\t".join((*row, "bed")) for row in rows]
    (folder / "m.tsv").write_text("\n".join(lines) + "\n")
    home = folder / "home"
    env = {
        "GENOFLOW_ALLOWED_ROOTS": f"/dev:{folder}",
        "STORAGE_EMULATOR_HOST": UNRESOLVABLE,
    }
    started = time.monotonic()
    done = run_cli(home, "run", "--json", str(folder / "m.tsv"), env=env, timeout=240)
    seconds = time.monotonic() - started
    records = {record["name"]: record for record in json.loads(done.stdout)}
    return HostileRun(done, records, home, seconds)


@pytest.mark.timeout(300)
def test_the_valid_row_beside_every_hostile_source_is_built(hostile_run: HostileRun) -> None:
    ok = hostile_run.records["ok"]

    assert ok["assets"] == {"source": "built", "sorted": "built", "index": "built"}
    assert hostile_run.done.returncode == 1


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("fifo", "fifo.bed: is a FIFO (named pipe), not a regular file"),
        ("zero", "/dev/zero: is a character device, not a regular file"),
        ("sparse", f"size is {SPARSE_SIZE} bytes, the manifest says 10"),
        ("nodns", "gs://lab-bucket/a.bed: cannot open: cannot resolve host no-such-host.invalid"),
    ],
)
def test_each_hostile_source_fails_at_stage_with_its_own_message(
    hostile_run: HostileRun, name: str, needle: str
) -> None:
    record = hostile_run.records[name]

    assert record["assets"]["source"] == "failed"
    assert record["error"].startswith("[stage] ") and needle in record["error"]


@pytest.mark.timeout(300)
def test_no_hostile_source_makes_the_run_hang_or_dawdle(hostile_run: HostileRun) -> None:
    # Before: the FIFO hung forever, /dev/zero read forever, the DNS failure took 149 s.
    assert hostile_run.seconds < 120


@pytest.mark.timeout(300)
def test_the_unresolvable_bucket_prints_one_line_and_no_traceback(hostile_run: HostileRun) -> None:
    stderr = hostile_run.done.stderr

    output = hostile_run.done.stdout + stderr

    assert "Traceback" not in stderr and "gcsfs" not in stderr
    assert output.count("no-such-host") == 1  # the row's error in --json, and nothing else


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("name", "asset"),
    [
        ("fifo", "source"),
        ("zero", "source"),
        ("sparse", "source"),
        ("nodns", "source"),
        ("empty", "source"),
        ("bad", "sorted"),
    ],
)
def test_a_failed_stage_detect_or_parse_step_leaves_no_folder(
    hostile_run: HostileRun, name: str, asset: str
) -> None:
    record = hostile_run.records[name]
    md5 = record["md5"]
    family_dir = hostile_run.home / "cache" / "intervals"
    md5_dir = family_dir / md5[:2] / md5

    assert record["assets"][asset] == "failed"
    if asset == "source":
        assert not md5_dir.exists()
        # The md5[:2] folder goes too, unless another md5 lives in it.
        assert not md5_dir.parent.exists() or any(md5_dir.parent.iterdir())
    else:
        assert sorted(p.name for p in md5_dir.iterdir()) == ["source"]
