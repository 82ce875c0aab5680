"""The manifest sensor over a gs:// prefix, against a real GCS-API emulator started here."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest

from genoflow.build.steps import build_source
from genoflow.core.errors import ManifestError, SourceError
from genoflow.core.settings import Settings
from genoflow.manifests.watch import manifest_location
from genoflow.manifests.watch.gcs import GcsManifests
from genoflow.storage.cache import Cache
from genoflow.storage.gcs import make_filesystem
from genoflow.storage.registry import Registry

from .support.gcs_emulator import gcs_bucket, gcs_emulator  # noqa: F401
from .support.sensors import HEADER, tick

pytestmark = pytest.mark.system  # starts a server (see pyproject markers)

# ruff: noqa: F811 - pytest fixtures imported from other test modules

PEAKS = b"chr1\t10\t20\n"
TABLE = b"a,b\n1,2\n"


@pytest.fixture
def prefix(gcs_bucket: str, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"gs://{gcs_bucket}/manifests"
    monkeypatch.setenv("GENOFLOW_MANIFESTS", uri)
    return uri


def _put(uri: str, content: bytes) -> None:
    fs = make_filesystem()
    with fs.open(uri.removeprefix("gs://"), "wb") as handle:
        handle.write(content)


def _delete(uri: str) -> None:
    make_filesystem().rm_file(uri.removeprefix("gs://"))


def _row(name: str, uri: str, content: bytes) -> str:
    return f"{name}\t{uri}\t{hashlib.md5(content).hexdigest()}\t\t{len(content)}\n"


def test_a_gs_prefix_is_watched_and_relative_uris_name_objects_beside_the_manifest(
    instance, prefix, tmp_path
) -> None:
    bucket = prefix.removeprefix("gs://").split("/")[0]
    _put(f"gs://{bucket}/data/peaks.bed", PEAKS)
    _put(f"{prefix}/table.csv", TABLE)
    manifest = HEADER + _row("peaks.bed", "../data/peaks.bed", PEAKS)
    manifest += _row("table.csv", "table.csv", TABLE) + "bad\tx\tnot-an-md5\t\t\n"
    _put(f"{prefix}/batch.tsv", manifest.encode())
    _put(f"{prefix}/.hidden.tsv", manifest.encode())
    _put(f"{prefix}/older/batch.tsv", manifest.encode())

    home = tmp_path / "home"
    result = tick(instance, home, None)

    requested = sorted(r.partition_key for r in result.run_requests)
    assert requested == sorted(hashlib.md5(c).hexdigest() for c in (PEAKS, TABLE))
    uris = sorted(row.uri for row in Registry(home / "registry.db").rows())
    assert uris == [f"gs://{bucket}/data/peaks.bed", f"{prefix}/table.csv"]
    copy = home / "manifests" / "gs" / bucket / "manifests" / "batch.tsv"
    assert copy.read_text() == manifest
    assert oct(copy.stat().st_mode & 0o777) == "0o600"
    assert len(result.cursor) < 200


def test_rewrites_renames_and_deletions_in_the_bucket_request_nothing(
    instance, prefix, tmp_path
) -> None:
    _put(f"{prefix}/table.csv", TABLE)
    manifest = (HEADER + _row("table.csv", "table.csv", TABLE)).encode()
    _put(f"{prefix}/a.tsv", manifest)
    home = tmp_path / "home"
    first = tick(instance, home, None)
    assert len(first.run_requests) == 1

    _put(f"{prefix}/a.tsv", manifest)  # identical content, a new generation
    assert not tick(instance, home, first.cursor).run_requests
    _put(f"{prefix}/b.tsv", manifest)
    _delete(f"{prefix}/a.tsv")
    renamed = tick(instance, home, first.cursor)
    assert not renamed.run_requests
    assert "renamed or copied" in renamed.skip_reason.skip_message
    _delete(f"{prefix}/b.tsv")
    gone = tick(instance, home, renamed.cursor)
    assert not gone.run_requests and "deleted" in gone.skip_reason.skip_message


def test_a_changed_md5_in_a_bucket_manifest_gets_a_new_partition(instance, prefix, tmp_path):
    _put(f"{prefix}/table.csv", TABLE)
    _put(f"{prefix}/a.tsv", (HEADER + _row("table.csv", "table.csv", TABLE)).encode())
    home = tmp_path / "home"
    first = tick(instance, home, None)
    changed = b"a,b\n1,3\n"
    _put(f"{prefix}/table.csv", changed)
    _put(f"{prefix}/a.tsv", (HEADER + _row("table.csv", "table.csv", changed)).encode())
    second = tick(instance, home, first.cursor)
    assert [r.partition_key for r in second.run_requests] == [hashlib.md5(changed).hexdigest()]


class _FastClock:
    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    def sleep(seconds: float) -> Any:
        return asyncio.sleep(seconds / 100)


def test_an_unreachable_bucket_skips_the_tick_and_keeps_the_cursor(
    instance, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")  # nothing listens
    monkeypatch.setenv("GENOFLOW_MANIFESTS", "gs://some-bucket/manifests")
    monkeypatch.setattr("genoflow.storage.gcs.call_with_retry", lambda operation: operation())
    monkeypatch.setattr("gcsfs.retry.asyncio", _FastClock())  # gcsfs's own backoff, 100× faster
    result = tick(instance, tmp_path / "home", '{"v":1,"hashes":{"a.tsv":"md5:00"}}')
    assert "[watch] gs://some-bucket/manifests:" in result.skip_message
    assert "GENOFLOW_MANIFESTS" in result.skip_message


def test_other_uris_are_refused_with_what_to_do(tmp_path) -> None:
    with pytest.raises(ManifestError, match="local folder or a gs:// prefix"):
        manifest_location({"GENOFLOW_MANIFESTS": "s3://bucket/manifests"})
    with pytest.raises(ManifestError, match="gs://"):
        GcsManifests("gs://Not_A_Bucket/x", copies=tmp_path)


def test_a_bucket_manifest_cannot_make_genoflow_read_local_files(
    instance, prefix, tmp_path, monkeypatch
) -> None:
    monkeypatch.delenv("GENOFLOW_ALLOWED_ROOTS", raising=False)
    secret = Path("/etc/passwd").read_bytes()
    _put(f"{prefix}/a.tsv", (HEADER + _row("passwd.csv", "/etc/passwd", secret)).encode())
    home = tmp_path / "home"
    tick(instance, home, None)
    (row,) = Registry(home / "registry.db").rows()
    settings = Settings.from_env({"GENOFLOW_HOME": str(home)})

    with pytest.raises(SourceError, match="outside") as raised:
        build_source(Cache(settings.cache_root), [row], md5=row.md5, settings=settings)
    assert str(raised.value).startswith("[stage] /etc/passwd: resolves outside the allowed roots")
    assert not list((home / "cache").rglob("staged*"))
