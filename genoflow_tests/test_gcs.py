"""GCS locations and gs:// sources against the real fake-gcs-server, plus the retry predicate."""

# The emulator fixtures are imported by name, so pytest finds them; their parameters shadow them.
# ruff: noqa: F811

from __future__ import annotations

import hashlib
import os
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import requests
from gcsfs.retry import HttpError
from google.oauth2.credentials import Credentials

from genoflow.core.errors import SourceError, StorageError
from genoflow.storage import gcs, http_policy, staging
from genoflow.storage.gcs import GcsLocation, call_with_retry, gs_md5, is_transient, open_gs
from genoflow.storage.locations import AlreadyExists, ObjectInfo

from .support.gcs_emulator import GcsEmulator, gcs_bucket, gcs_emulator  # noqa: F401

pytestmark = pytest.mark.system  # starts a server (see pyproject markers)

# Latin-1 bytes in a record, as real files carry them.
DATA = b"chr1\t10\t20\tpeak_caf\xe9\nchr2\t5\t9\t\xff\xfe\n" * 100
MD5 = hashlib.md5(DATA).hexdigest()
SECRET = "ya29.not-a-real-token-but-a-secret-one"


def location(bucket: str, **options: object) -> GcsLocation:
    return GcsLocation("replicas", f"gs://{bucket}/cache", deployment="cloud", **options)


def local_file(folder: Path, data: bytes = DATA, name: str = "upload.bin") -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


# --- stat ----------------------------------------------------------------------------------


def test_stat_reports_size_md5_crc32c_and_generation(gcs_bucket: str, tmp_path: Path) -> None:
    loc = location(gcs_bucket)
    loc.put(local_file(tmp_path), "a/x.bed")
    info = loc.stat("a/x.bed")
    assert info is not None
    assert (info.size, info.md5) == (len(DATA), MD5)
    assert info.crc32c and info.generation


def test_stat_does_not_take_an_index_sibling_for_the_data_object(
    gcs_bucket: str, tmp_path: Path
) -> None:
    loc = location(gcs_bucket)
    loc.put(local_file(tmp_path), "a/x.vcf.gz.tbi")
    assert loc.stat("a/x.vcf.gz") is None


def test_stat_does_not_take_a_folder_prefix_for_an_object(gcs_bucket: str, tmp_path: Path) -> None:
    loc = location(gcs_bucket)
    loc.put(local_file(tmp_path), "a/x/genoflow.json")
    assert loc.stat("a/x") is None


def test_stat_of_a_missing_object_is_none(gcs_bucket: str) -> None:
    assert location(gcs_bucket).stat("nothing/here.bam") is None


# --- put / get -----------------------------------------------------------------------------


def test_get_returns_the_uploaded_bytes_verified(gcs_bucket: str, tmp_path: Path) -> None:
    loc = location(gcs_bucket)
    put = loc.put(local_file(tmp_path), "a/x.bed")
    got = loc.get("a/x.bed", tmp_path / "copy.bed")
    assert (tmp_path / "copy.bed").read_bytes() == DATA
    assert got == ObjectInfo(size=len(DATA), md5=MD5, crc32c=put.crc32c, generation=put.generation)


def test_get_verifies_an_object_larger_than_one_ranged_read(
    gcs_bucket: str, tmp_path: Path
) -> None:
    data = os.urandom(gcs.READ_SIZE + 12345)  # a resumable upload, then two ranged reads
    loc = location(gcs_bucket)
    loc.put(local_file(tmp_path, data), "a/large.bam")
    got = loc.get("a/large.bam", tmp_path / "copy.bam")
    assert got.md5 == hashlib.md5(data).hexdigest()
    assert (tmp_path / "copy.bam").read_bytes() == data


def test_get_deletes_the_copy_when_stored_bytes_disagree_with_md5hash(
    gcs_bucket: str, gcs_emulator: GcsEmulator, tmp_path: Path
) -> None:
    loc = location(gcs_bucket)
    loc.put(local_file(tmp_path), "a/x.bed")
    with open(gcs_emulator.object_file(gcs_bucket, "cache/a/x.bed"), "r+b") as stored:
        stored.write(b"CHR9")  # same size, other bytes: the recorded md5Hash no longer holds
    dest = tmp_path / "copy.bed"
    with pytest.raises(StorageError, match="md5Hash") as caught:
        loc.get("a/x.bed", dest)
    assert caught.value.stage == "transfer"
    assert caught.value.file == f"gs://{gcs_bucket}/cache/a/x.bed"
    assert not dest.exists()


def test_get_deletes_the_copy_of_a_truncated_object(
    gcs_bucket: str, gcs_emulator: GcsEmulator, tmp_path: Path
) -> None:
    loc = location(gcs_bucket)
    loc.put(local_file(tmp_path), "a/x.bed")
    os.truncate(gcs_emulator.object_file(gcs_bucket, "cache/a/x.bed"), len(DATA) // 2)
    dest = tmp_path / "copy.bed"
    with pytest.raises(StorageError, match="does not match"):
        loc.get("a/x.bed", dest)
    assert not dest.exists()


def test_mismatch_reports_a_download_cut_short() -> None:
    stored = ObjectInfo(size=100, md5=MD5)
    assert "40 bytes arrived" in (gcs.mismatch(stored, ObjectInfo(size=40, md5=MD5)) or "")


def test_mismatch_checks_crc32c_when_the_object_has_no_md5() -> None:
    composite = ObjectInfo(size=3, md5=None, crc32c="AAAAAA==")
    assert gcs.mismatch(composite, ObjectInfo(size=3, md5=MD5, crc32c="yZRlqg=="))
    assert gcs.mismatch(composite, ObjectInfo(size=3, md5=MD5, crc32c="AAAAAA==")) is None


def test_get_of_a_missing_object_leaves_no_copy(gcs_bucket: str, tmp_path: Path) -> None:
    dest = tmp_path / "copy.bed"
    with pytest.raises(StorageError, match="replica is missing") as caught:
        location(gcs_bucket).get("a/none.bed", dest)
    assert caught.value.stage == "transfer"
    assert not dest.exists()


def test_put_replaces_an_object_without_if_absent(gcs_bucket: str, tmp_path: Path) -> None:
    loc = location(gcs_bucket)
    loc.put(local_file(tmp_path, b"old"), "a/x.bed")
    info = loc.put(local_file(tmp_path, b"new"), "a/x.bed")
    assert info.md5 == hashlib.md5(b"new").hexdigest()


def test_put_if_absent_refuses_to_replace_an_existing_object(
    gcs_bucket: str, tmp_path: Path
) -> None:
    loc = location(gcs_bucket)
    first = loc.put(local_file(tmp_path, b"first"), "a/genoflow.json", if_absent=True)
    with pytest.raises(AlreadyExists):
        loc.put(local_file(tmp_path, b"second"), "a/genoflow.json", if_absent=True)
    assert loc.stat("a/genoflow.json") == first


def test_put_if_absent_lets_exactly_one_of_concurrent_writers_win(
    gcs_bucket: str, tmp_path: Path
) -> None:
    writers = 4
    for round_ in range(5):
        path = f"race/{round_}/genoflow.json"
        barrier = threading.Barrier(writers)
        outcomes: dict[int, ObjectInfo | BaseException] = {}

        def write(
            n: int,
            path: str = path,
            barrier: threading.Barrier = barrier,
            outcomes: dict[int, ObjectInfo | BaseException] = outcomes,
        ) -> None:
            src = local_file(tmp_path, f"writer {n}".encode(), f"w{n}")
            loc = location(gcs_bucket)  # one client per writer, as on separate machines
            barrier.wait()
            try:
                outcomes[n] = loc.put(src, path, if_absent=True)
            except AlreadyExists as exc:
                outcomes[n] = exc

        threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        winners = [n for n, o in outcomes.items() if isinstance(o, ObjectInfo)]
        losers = [o for o in outcomes.values() if isinstance(o, AlreadyExists)]
        assert len(winners) == 1 and len(losers) == writers - 1, outcomes
        stored = location(gcs_bucket).stat(path)
        assert stored is not None
        assert stored.md5 == hashlib.md5(f"writer {winners[0]}".encode()).hexdigest()


def test_put_if_absent_accepts_its_own_write_whose_response_was_lost(
    gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loc = location(gcs_bucket)
    fs = loc.filesystem()
    upload, calls = fs.put_file, []

    def lossy(*args: object, **kwargs: object) -> None:
        calls.append(kwargs.get("mode"))
        upload(*args, **kwargs)
        if len(calls) == 1:
            raise aiohttp.ServerDisconnectedError()  # the write landed, its answer did not

    monkeypatch.setattr(fs, "put_file", lossy)
    info = loc.put(local_file(tmp_path), "a/genoflow.json", if_absent=True)
    assert calls == ["create", "create"]
    assert info.md5 == MD5


def test_put_if_absent_still_refuses_another_writers_object_on_a_repeat(
    gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loc = location(gcs_bucket)
    loc.put(local_file(tmp_path, b"other writer"), "a/genoflow.json")
    fs = loc.filesystem()
    upload, calls = fs.put_file, []

    def flaky_upload(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise aiohttp.ServerDisconnectedError()
        upload(*args, **kwargs)

    monkeypatch.setattr(fs, "put_file", flaky_upload)
    with pytest.raises(AlreadyExists):
        loc.put(local_file(tmp_path), "a/genoflow.json", if_absent=True)
    assert len(calls) == 2


def test_put_removes_an_upload_whose_stored_md5_disagrees(
    gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loc = location(gcs_bucket)
    monkeypatch.setattr(gcs, "md5_file", lambda path: "0" * 32)  # as if bytes changed in flight
    with pytest.raises(StorageError, match="does not match the uploaded file"):
        loc.put(local_file(tmp_path), "a/x.bed", if_absent=True)
    assert loc.stat("a/x.bed") is None


def test_put_into_a_missing_bucket_names_the_object(tmp_path: Path, gcs_bucket: str) -> None:
    loc = location(f"{gcs_bucket}-absent")
    with pytest.raises(StorageError) as caught:
        loc.put(local_file(tmp_path), "a/x.bed")
    assert caught.value.file == f"gs://{gcs_bucket}-absent/cache/a/x.bed"
    assert caught.value.stage == "transfer"


# --- delete, naming, construction ----------------------------------------------------------


def test_delete_removes_only_the_named_object(gcs_bucket: str, tmp_path: Path) -> None:
    loc = location(gcs_bucket)
    loc.put(local_file(tmp_path), "a/x.vcf.gz")
    loc.put(local_file(tmp_path), "a/x.vcf.gz.tbi")
    loc.delete("a/x.vcf.gz")
    assert loc.stat("a/x.vcf.gz") is None
    assert loc.stat("a/x.vcf.gz.tbi") is not None


def test_delete_of_a_missing_object_is_not_an_error(gcs_bucket: str) -> None:
    location(gcs_bucket).delete("a/never-written.bed")


def test_uri_names_bucket_prefix_and_path() -> None:
    loc = GcsLocation("r", "gs://lab-bucket/some/prefix/", deployment="cloud")
    assert loc.root == "gs://lab-bucket/some/prefix"
    assert loc.uri("intervals/ab/x.bed.gz") == "gs://lab-bucket/some/prefix/intervals/ab/x.bed.gz"


def test_rejects_a_path_that_could_escape_the_root() -> None:
    with pytest.raises(StorageError, match="escape"):
        GcsLocation("r", "gs://lab-bucket/p", deployment="cloud").uri("../other/x")


@pytest.mark.parametrize("root", ["s3://lab-bucket/p", "gs://UPPER/p", "gs://b/../p", "/data"])
def test_rejects_a_root_that_is_not_a_gcs_prefix(root: str) -> None:
    with pytest.raises(StorageError):
        GcsLocation("r", root, deployment="cloud")


def test_constructor_makes_no_client(monkeypatch: pytest.MonkeyPatch) -> None:
    # gcsfs rejects this token as soon as a file system is built; the constructor must not build.
    loc = GcsLocation("r", "gs://lab-bucket", deployment="cloud", token=object())
    with pytest.raises(ValueError, match="Token format"):
        loc.filesystem()


# --- gs:// sources ---------------------------------------------------------------------------


@pytest.fixture
def readers(monkeypatch: pytest.MonkeyPatch) -> dict[str, staging.Opener]:
    monkeypatch.setattr(staging, "READERS", dict(staging.READERS))
    gcs.register_readers()
    return staging.READERS


def test_register_readers_serves_gs_uris(readers: dict[str, staging.Opener]) -> None:
    assert readers["gs"] is open_gs


def test_staging_copies_a_gs_source_verified(
    gcs_bucket: str, tmp_path: Path, readers: dict[str, staging.Opener]
) -> None:
    location(gcs_bucket).put(local_file(tmp_path), "in/peaks.bed")
    uri = f"gs://{gcs_bucket}/cache/in/peaks.bed"
    staged, used = staging.stage([uri], tmp_path / "staged", md5=MD5, size=len(DATA), name="p")
    assert (used, staged.read_bytes()) == (uri, DATA)


def test_staging_moves_past_a_missing_gs_replica(
    gcs_bucket: str, tmp_path: Path, readers: dict[str, staging.Opener]
) -> None:
    good = local_file(tmp_path, name="local.bed")
    missing = f"gs://{gcs_bucket}/in/none.bed"
    _, used = staging.stage([missing, str(good)], tmp_path / "staged", md5=MD5, size=None, name="p")
    assert used == str(good)


def test_open_gs_of_a_missing_object_raises_source_error(gcs_bucket: str) -> None:
    uri = f"gs://{gcs_bucket}/in/none.bed"
    with pytest.raises(SourceError, match="object not found") as caught, open_gs(uri):
        pass
    assert caught.value.file == uri


def test_open_gs_turns_a_failed_read_into_source_error(
    gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    location(gcs_bucket).put(local_file(tmp_path), "in/peaks.bed")
    opened = gcs.open_object

    def timed_out(size: int = -1) -> bytes:
        raise TimeoutError

    def cut_off(fs: object, key: str) -> object:
        handle = opened(fs, key)
        monkeypatch.setattr(handle, "read", timed_out)
        return handle

    monkeypatch.setattr(gcs, "open_object", cut_off)
    uri = f"gs://{gcs_bucket}/cache/in/peaks.bed"
    with pytest.raises(SourceError, match="read failed") as caught, open_gs(uri) as reader:
        reader.read()
    assert caught.value.file == uri


def test_gs_md5_returns_the_objects_md5hash_in_hex(gcs_bucket: str, tmp_path: Path) -> None:
    location(gcs_bucket).put(local_file(tmp_path), "in/peaks.bed")
    assert gs_md5(f"gs://{gcs_bucket}/cache/in/peaks.bed") == MD5


def test_gs_md5_of_a_missing_object_raises_source_error(gcs_bucket: str) -> None:
    with pytest.raises(SourceError, match="object not found"):
        gs_md5(f"gs://{gcs_bucket}/in/none.bed")


@pytest.mark.parametrize("uri", ["gs://", "gs://lab-bucket", "gs://lab-bucket/folder/"])
def test_gs_md5_rejects_a_uri_that_names_no_object(uri: str) -> None:
    with pytest.raises(SourceError):
        gs_md5(uri)


# --- errors never carry credentials ----------------------------------------------------------


def test_errors_never_carry_the_credential(
    gcs_bucket: str, gcs_emulator: GcsEmulator, tmp_path: Path
) -> None:
    options = {"token": Credentials(token=SECRET), "endpoint_url": gcs_emulator.endpoint}
    good = location(gcs_bucket, **options)
    good.put(local_file(tmp_path), "a/x.bed")
    with open(gcs_emulator.object_file(gcs_bucket, "cache/a/x.bed"), "r+b") as stored:
        stored.write(b"XXXX")
    errors: list[BaseException] = []
    for attempt in (
        lambda: location(f"{gcs_bucket}-absent", **options).put(local_file(tmp_path), "a/x"),
        lambda: good.get("a/missing.bed", tmp_path / "m"),
        lambda: good.get("a/x.bed", tmp_path / "x"),
        lambda: good.put(local_file(tmp_path), "a/x.bed", if_absent=True),
    ):
        with pytest.raises(StorageError) as caught:
            attempt()
        errors.append(caught.value)
    assert len(errors) == 4
    for error in errors:
        assert str(error).count("gs://") >= 1
        for text in (str(error), repr(error), str(error.__cause__)):
            assert SECRET not in text and "ya29" not in text


def test_describe_removes_bearer_tokens_and_query_strings() -> None:
    exc = OSError(f"Authorization: Bearer {SECRET} at https://h/o?X-Goog-Signature=abc")
    text = gcs.describe(exc)
    assert SECRET not in text and "abc" not in text and "https://h/o" in text


def test_an_error_showing_a_token_is_not_chained_to_ours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What requests raises when gcsfs validates a raw token offline: the URL carries the token.
    leak = requests.ConnectionError(
        f"Max retries exceeded with url: /tokeninfo?access_token={SECRET}"
    )

    def fail(*_: object) -> None:
        raise leak

    monkeypatch.setattr(gcs, "stat_object", fail)
    # An endpoint that resolves offline: the file system checks its host name when built.
    local = "http://127.0.0.1:9"
    loc = GcsLocation(
        "r", "gs://lab-bucket", deployment="cloud", token="anon", retries=0, endpoint_url=local
    )
    with pytest.raises(StorageError) as caught:
        loc.stat("a/x.bed")
    printed = "".join(traceback.format_exception(caught.value))
    assert SECRET not in printed and "access_token=…" in printed


# --- retries -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        HttpError({"code": 503, "message": "backend unavailable"}),
        HttpError({"code": 500, "message": "internal"}),
        HttpError({"code": 429, "message": "slow down"}),
        HttpError({"code": 408, "message": "request timeout"}),
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientPayloadError("response payload is not completed"),
        requests.ConnectionError("reset"),
        requests.exceptions.ProxyError("502 mapped by gcsfs"),
        TimeoutError(),
        ConnectionResetError(),
    ],
)
def test_is_transient_accepts_what_a_retry_can_fix(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        FileNotFoundError("b/bucket/o/x"),
        FileExistsError("precondition failed (412)"),
        PermissionError("forbidden"),
        HttpError({"code": 404, "message": "no such object"}),
        HttpError({"code": 403, "message": "forbidden"}),
        HttpError({"code": 400, "message": "bad request"}),
        ValueError("Bad Request"),
        StorageError("download does not match"),
        AlreadyExists("already published"),
    ],
)
def test_is_transient_refuses_what_a_retry_cannot_fix(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_gcs_retries_exactly_the_http_statuses_every_http_read_retries() -> None:
    retried = {code for code in range(400, 600) if is_transient(HttpError({"code": code}))}

    assert retried == {code for code in range(400, 600) if http_policy.is_transient(code)}
    assert {507, 599} <= retried and not {501, 505} & retried


def flaky(failures: list[BaseException]) -> tuple[Callable[[], str], list[int]]:
    calls: list[int] = []

    def operation() -> str:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return "done"

    return operation, calls


def test_call_with_retry_repeats_a_transient_error_then_succeeds() -> None:
    operation, calls = flaky([HttpError({"code": 503, "message": "x"}), TimeoutError()])
    sleeps: list[float] = []
    assert call_with_retry(operation, retries=2, sleep=sleeps.append) == "done"
    assert len(calls) == 3 and len(sleeps) == 2 and sleeps[1] > sleeps[0] / 2


def test_call_with_retry_gives_up_after_its_bound() -> None:
    operation, calls = flaky([TimeoutError(), TimeoutError(), TimeoutError()])
    with pytest.raises(TimeoutError):
        call_with_retry(operation, retries=1, sleep=lambda _: None)
    assert len(calls) == 2


def test_call_with_retry_does_not_repeat_a_permanent_error() -> None:
    operation, calls = flaky([FileNotFoundError("gone")])
    with pytest.raises(FileNotFoundError):
        call_with_retry(operation, retries=5, sleep=lambda _: None)
    assert len(calls) == 1
