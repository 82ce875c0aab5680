"""Staging from signed URLs: verified downloads, bounded retries, and tokens that never leak."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import requests
import urllib3

from genoflow.core.errors import ChecksumError, SourceError, redact
from genoflow.storage import https, staging
from genoflow_tests.support.signed_url_server import SignedUrlServer, signed_url_server

pytestmark = pytest.mark.system  # starts a server (see pyproject markers)

__all__ = ["signed_url_server"]  # the fixture, re-exported so pytest finds it here

# ~300 KB with every byte value, so halves and resumes fall mid-stream and bytes stay raw.
DATA = bytes(range(256)) * 1200
MD5 = hashlib.md5(DATA).hexdigest()
FAST = https.HttpPolicy(
    attempts=4, max_seconds=10, backoff=0.01, max_backoff=0.05, connect_timeout=2, read_timeout=2
)


@pytest.fixture(autouse=True)
def https_readers(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Staging reads http(s) with short backoffs; the reader table is restored afterwards."""
    monkeypatch.setattr(staging, "READERS", dict(staging.READERS))
    https.register_readers(policy=FAST)
    caplog.set_level(logging.DEBUG)


@pytest.fixture
def server(signed_url_server: SignedUrlServer) -> SignedUrlServer:
    signed_url_server.put("reads.bed", DATA)
    return signed_url_server


def stage(tmp_path: Path, *uris: str, md5: str = MD5) -> tuple[Path, str]:
    return staging.stage(list(uris), tmp_path / "staged", md5=md5, size=len(DATA), name="reads.bed")


def stage_fails(tmp_path: Path, *uris: str, kind: type[Exception] = SourceError) -> Exception:
    """Stage, expect ``kind``, and check that nothing but the served folder is left behind."""
    with pytest.raises(kind) as info:
        stage(tmp_path, *uris)
    assert [p.name for p in tmp_path.iterdir()] == ["served"]
    return info.value


def exception_texts(exc: BaseException) -> list[str]:
    texts = ["".join(traceback.format_exception(exc))]
    link: BaseException | None = exc
    while link is not None:
        texts += [str(link), repr(link), repr(link.args)]
        link = link.__cause__ or link.__context__
    return texts


def assert_hidden(server: SignedUrlServer, *texts: str) -> None:
    for text in texts:
        assert server.secret not in text
        assert server.expired_secret not in text


def assert_no_token(server: SignedUrlServer, caplog: pytest.LogCaptureFixture) -> None:
    assert_hidden(server, caplog.text, *(r.getMessage() for r in caplog.records))


def assert_failure_hides_token(
    server: SignedUrlServer, caplog: pytest.LogCaptureFixture, exc: BaseException
) -> None:
    assert_hidden(server, *exception_texts(exc))
    assert_no_token(server, caplog)


def test_downloads_and_verifies_a_file_with_a_valid_token(
    server: SignedUrlServer, tmp_path: Path
) -> None:
    url = server.url("reads.bed")

    staged, used = stage(tmp_path, url)

    assert staged.read_bytes() == DATA
    assert used == url
    assert len(server.requests_for("reads.bed")) == 1


def test_library_debug_logs_show_requests_without_their_token(
    server: SignedUrlServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stage(tmp_path, server.url("reads.bed"))

    lines = [r.getMessage() for r in caplog.records if r.name.startswith("urllib3")]
    assert any("/reads.bed?…" in line for line in lines)
    assert_no_token(server, caplog)


def test_expired_token_fails_at_once_with_http_403(
    server: SignedUrlServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    exc = stage_fails(tmp_path, server.url("reads.bed", expired=True))

    assert "signed URL expired or forbidden (HTTP 403)" in str(exc)
    assert len(server.requests_for("reads.bed")) == 1
    assert_failure_hides_token(server, caplog, exc)


def test_unauthorized_fails_at_once_with_http_401(
    server: SignedUrlServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.fault("reads.bed", status=401, errors=99)

    exc = stage_fails(tmp_path, server.url("reads.bed"))

    assert "expired or forbidden (HTTP 401)" in str(exc)
    assert len(server.requests_for("reads.bed")) == 1
    assert_failure_hides_token(server, caplog, exc)


def test_missing_file_fails_at_once_with_http_404(
    server: SignedUrlServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    exc = stage_fails(tmp_path, server.url("absent.bed"))

    assert "not found (HTTP 404)" in str(exc)
    assert len(server.requests_for("absent.bed")) == 1
    assert_failure_hides_token(server, caplog, exc)


def test_other_client_errors_fail_at_once_with_their_status(
    server: SignedUrlServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.fault("reads.bed", status=410, errors=99)

    exc = stage_fails(tmp_path, server.url("reads.bed"))

    assert "HTTP 410 Gone" in str(exc)
    assert len(server.requests_for("reads.bed")) == 1
    assert_failure_hides_token(server, caplog, exc)


def test_retries_server_errors_then_succeeds(
    server: SignedUrlServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.fault("reads.bed", status=500, errors=2)

    staged, _ = stage(tmp_path, server.url("reads.bed"))

    assert staged.read_bytes() == DATA
    assert len(server.requests_for("reads.bed")) == 3
    retries = [r.getMessage() for r in caplog.records if r.name == "genoflow.storage.https"]
    assert len(retries) == 2
    assert all("reads.bed?…: HTTP 500" in line for line in retries)
    assert_no_token(server, caplog)


def test_gives_up_on_persistent_server_errors_after_the_attempt_bound(
    server: SignedUrlServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.fault("reads.bed", status=503, errors=99)

    exc = stage_fails(tmp_path, server.url("reads.bed"))

    assert "HTTP 503 Service Unavailable; gave up after 4 attempts" in str(exc)
    assert len(server.requests_for("reads.bed")) == FAST.attempts
    assert_failure_hides_token(server, caplog, exc)


def test_resumes_a_connection_dropped_halfway_with_a_range_request(
    server: SignedUrlServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.fault("reads.bed", drops=1)

    staged, _ = stage(tmp_path, server.url("reads.bed"))

    assert staged.read_bytes() == DATA
    first, second = server.requests_for("reads.bed")
    assert "Range" not in first.headers
    offset = int(second.headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < offset <= len(DATA) // 2
    assert second.headers["If-Range"] == f'"{MD5}"'
    assert_no_token(server, caplog)


def test_restarts_a_dropped_download_when_the_server_ignores_ranges(
    server: SignedUrlServer, tmp_path: Path
) -> None:
    server.ranges = False
    server.fault("reads.bed", drops=1)

    staged, _ = stage(tmp_path, server.url("reads.bed"))

    assert staged.read_bytes() == DATA
    assert len(server.requests_for("reads.bed")) == 2


def test_keeps_resuming_while_each_attempt_brings_new_bytes(
    server: SignedUrlServer, tmp_path: Path
) -> None:
    server.fault("reads.bed", drops=FAST.attempts + 2)

    staged, _ = stage(tmp_path, server.url("reads.bed"))

    assert staged.read_bytes() == DATA
    assert len(server.requests_for("reads.bed")) == FAST.attempts + 3


def test_retries_a_read_timeout_then_succeeds(
    server: SignedUrlServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    https.register_readers(policy=dataclasses.replace(FAST, read_timeout=0.2))
    server.fault("reads.bed", stalls=1, stall_seconds=1.0)

    staged, _ = stage(tmp_path, server.url("reads.bed"))

    assert staged.read_bytes() == DATA
    assert len(server.requests_for("reads.bed")) == 2
    assert "read timed out" in caplog.text
    assert_no_token(server, caplog)


def test_fails_a_body_always_shorter_than_declared_and_leaves_no_file(
    server: SignedUrlServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.fault("reads.bed", short=True)

    exc = stage_fails(tmp_path, server.url("reads.bed"))

    assert "fewer bytes than declared" in str(exc)
    assert f"gave up after {FAST.attempts} attempts" in str(exc)
    assert len(server.requests_for("reads.bed")) == FAST.attempts
    assert_failure_hides_token(server, caplog, exc)


def test_fails_a_restarted_body_that_stays_short_when_the_server_ignores_ranges(
    server: SignedUrlServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.ranges = False
    server.fault("reads.bed", short=True)

    exc = stage_fails(tmp_path, server.url("reads.bed"))

    assert "fewer bytes than declared" in str(exc)
    assert len(server.requests_for("reads.bed")) == FAST.attempts
    assert_failure_hides_token(server, caplog, exc)


def test_fails_when_the_file_changes_on_the_server_mid_download(
    server: SignedUrlServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.fault("reads.bed", drops=1, replace_after_drop=DATA[::-1])

    exc = stage_fails(tmp_path, server.url("reads.bed"))

    assert "changed on the server during the download" in str(exc)
    assert len(server.requests_for("reads.bed")) == 2
    assert_failure_hides_token(server, caplog, exc)


def test_refuses_a_redirect_to_another_host(
    server: SignedUrlServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.fault("moved.bed", redirect=server.url("reads.bed", host="localhost"))

    exc = stage_fails(tmp_path, server.url("moved.bed"))

    assert f"redirect to another host refused (http://localhost:{server.port}/reads.bed?…)" in str(
        exc
    )
    assert [r.name for r in server.requests] == ["moved.bed"]
    assert_failure_hides_token(server, caplog, exc)


def test_follows_a_redirect_on_the_same_host(server: SignedUrlServer, tmp_path: Path) -> None:
    server.fault("moved.bed", redirect=server.url("reads.bed"))

    staged, _ = stage(tmp_path, server.url("moved.bed"))

    assert staged.read_bytes() == DATA
    assert [r.name for r in server.requests] == ["moved.bed", "reads.bed"]


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("https://h/a", "https://h/b?sig=2"),
        ("https://h/a", "https://H:443/b"),
        ("http://h/a", "https://h/b"),
        ("http://h:8080/a", "http://h:8080/b"),
    ],
)
def test_allows_redirects_within_the_host(source: str, target: str) -> None:
    assert https.redirect_refusal(source, target) is None


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("https://evil/b?sig=secret", "another host refused (https://evil/b?…)"),
        ("https://h:8443/b", "another host refused"),
        ("http://h/b?sig=secret", "refused: not the same or a safer scheme"),
        ("ftp://h/b", "refused: not the same or a safer scheme"),
        ("https://h:99999/b?sig=secret", "malformed URL refused (https://h:99999/b?…)"),
    ],
)
def test_refuses_redirects_that_leave_the_host_or_downgrade(target: str, reason: str) -> None:
    refusal = https.redirect_refusal("https://h/a?sig=1", target)

    assert refusal is not None and reason in refusal
    assert "secret" not in refusal


def test_gives_up_when_the_time_bound_is_spent_before_the_attempts(
    server: SignedUrlServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    https.register_readers(policy=dataclasses.replace(FAST, max_seconds=0.001, backoff=0.01))
    server.fault("reads.bed", status=503, errors=99)

    exc = stage_fails(tmp_path, server.url("reads.bed"))

    assert "gave up after 1 attempt without progress" in str(exc)
    assert len(server.requests_for("reads.bed")) == 1
    assert_failure_hides_token(server, caplog, exc)


def test_fails_a_refused_connection_after_bounded_retries(
    server: SignedUrlServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{closed_port}/reads.bed?token={server.secret}"

    exc = stage_fails(tmp_path, url)

    assert f"connection refused; gave up after {FAST.attempts} attempts" in str(exc)
    assert_failure_hides_token(server, caplog, exc)


def test_deletes_the_copy_when_the_md5_is_wrong(
    server: SignedUrlServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ChecksumError) as info:
        stage(tmp_path, server.url("reads.bed"), md5="0" * 32)

    assert not (tmp_path / "staged").exists()
    assert "md5 is" in str(info.value)
    assert_failure_hides_token(server, caplog, info.value)


def test_uses_the_second_replica_when_the_first_is_forbidden(
    server: SignedUrlServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = server.url("reads.bed")

    staged, used = stage(tmp_path, server.url("reads.bed", expired=True), good)

    assert (staged.read_bytes(), used) == (DATA, good)
    assert len(server.requests_for("reads.bed")) == 2
    assert_no_token(server, caplog)


def test_reader_repr_and_name_hide_the_query(server: SignedUrlServer) -> None:
    url = server.url("reads.bed")

    with https.open_https(url, policy=FAST) as body:
        assert body.read(10) == DATA[:10]
        shown = (repr(body), repr(body.raw), body.name)

    assert body.name == redact(url)
    assert_hidden(server, *shown)


def test_register_readers_serves_both_http_schemes() -> None:
    assert staging.READERS["https"] is staging.READERS["http"]
    assert staging.READERS["https"].keywords == {"policy": FAST}


def test_importing_the_module_registers_nothing() -> None:
    code = "import genoflow.storage.https, genoflow.storage.staging as s; print(sorted(s.READERS))"

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert out.stdout.strip() == "['', 'file']"


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_treats_overload_and_server_errors_as_transient(status: int) -> None:
    assert https.is_transient(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 416, 501, 505])
def test_treats_client_errors_as_permanent(status: int) -> None:
    assert not https.is_transient(status)


@pytest.mark.parametrize(
    "exc",
    [
        requests.exceptions.ConnectionError("refused"),
        requests.exceptions.ConnectTimeout("slow"),
        requests.exceptions.ReadTimeout("slow"),
        requests.exceptions.ChunkedEncodingError("cut"),
        urllib3.exceptions.ProtocolError("Connection broken"),
        urllib3.exceptions.IncompleteRead(10, 20),
        urllib3.exceptions.ReadTimeoutError(None, "/", "Read timed out."),  # type: ignore[arg-type]
        ConnectionResetError(104, "reset"),
        ConnectionRefusedError(111, "refused"),
        TimeoutError("timed out"),
    ],
)
def test_treats_dropped_connections_and_timeouts_as_transient(exc: BaseException) -> None:
    assert https.is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        requests.exceptions.SSLError("bad certificate"),
        requests.exceptions.InvalidURL("no host"),
        requests.exceptions.TooManyRedirects("loop"),
        SourceError("gone", file="x"),
        ValueError("bad"),
    ],
)
def test_treats_tls_and_request_mistakes_as_permanent(exc: BaseException) -> None:
    assert not https.is_transient(exc)


def test_policy_rejects_zero_attempts() -> None:
    with pytest.raises(ValueError, match="attempts"):
        https.HttpPolicy(attempts=0)
