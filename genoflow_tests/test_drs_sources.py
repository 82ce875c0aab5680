"""Manifest rows naming GA4GH DRS ids (``drs://``), end to end through ``genoflow run``.

A small DRS 1.x server runs in the test on 127.0.0.1: it answers ``objects/{id}`` and
``objects/{id}/access/{access_id}`` with a bearer token, and serves the bytes at signed URLs
on the host name ``localhost`` (another host, to the client) whose signature changes with every
object request, so only a URL resolved at staging time works. Hostile ids (404, 401, a redirect
loop, oversize JSON, a checksum that contradicts the manifest, no usable access method, a size
that lies, a body longer than its size) each end as a clear error naming the id, while the good
rows of the same manifest still build.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from .conftest import DATA, run_cli

pytestmark = pytest.mark.system  # starts an HTTP server (see pyproject markers)

DEMO = DATA / "manifests" / "demo"
BED = (DEMO / "enhancers.bed").read_bytes()
BAM = (DEMO / "sample3.bam").read_bytes()
GTF = (DEMO / "genes.gtf").read_bytes()


@dataclass
class DrsObject:
    """One object the test server knows, and how it misbehaves.

    Attributes:
        data: the bytes served.
        via: ``url`` (an https-style access_url), ``access_id`` or ``s3`` (nothing usable).
        size: the size announced, when it lies.
        md5: the md5 checksum announced, when it lies.
        status: an error status every object request gets.
        loop: every object request is redirected to itself.
        huge_json: the object's JSON is padded past the client's limit.
        unsized_body: the bytes are sent without Content-Length (to the connection's end).
    """

    data: bytes
    via: str = "url"
    size: int | None = None
    md5: str | None = None
    status: int | None = None
    loop: bool = False
    huge_json: bool = False
    unsized_body: bool = False
    signature: str = field(default="", repr=False)


class DrsServer:
    """A DRS 1.x server for the objects in :attr:`objects`, requiring :attr:`token`."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(16)
        self.objects: dict[str, DrsObject] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # host, path, headers
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def drs(self, object_id: str) -> str:
        return f"drs://127.0.0.1:{self.port}/{object_id}"

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        with self._lock:
            host = handler.headers.get("Host", "")
            self.requests.append((host, parts.path, dict(handler.headers)))
        if parts.path.startswith("/bytes/"):
            self._bytes(handler, unquote(parts.path[len("/bytes/") :]), parts.query)
            return
        match = re.fullmatch(r"/ga4gh/drs/v1/objects/([^/]+)(/access/([^/]+))?", parts.path)
        found = self.objects.get(unquote(match.group(1))) if match else None
        if handler.headers.get("Authorization") != f"Bearer {self.token}":
            _send(handler, 401, {"msg": "token required", "status_code": 401})
        elif found is None:
            _send(handler, 404, {"msg": "no such object", "status_code": 404})
        elif found.status is not None:
            _send(handler, found.status, {"msg": "not for this token", "status_code": found.status})
        elif found.loop:
            _send(handler, 302, None, location=parts.path)
        elif match.group(3):
            host = handler.headers.get("Host", "")
            _send(handler, 200, {"url": self._signed(match.group(1), found, host)})
        else:
            _send(handler, 200, self._object(unquote(match.group(1)), found))

    def _signed(self, object_id: str, found: DrsObject, host: str) -> str:
        """A fresh signed URL; the one before it stops working."""
        found.signature = secrets.token_hex(8)
        return f"http://{host}/bytes/{object_id}?sig={found.signature}"

    def _object(self, object_id: str, found: DrsObject) -> dict:
        if found.via == "access_id":
            method = {"type": "https", "access_id": "primary"}
        elif found.via == "s3":
            method = {"type": "s3", "access_url": {"url": f"s3://bucket/{object_id}"}}
        else:  # on "localhost": another host than the DRS server's, to the client
            url = self._signed(object_id, found, f"localhost:{self.port}")
            method = {"type": "https", "access_url": {"url": url}}
        body = {
            "id": object_id,
            "self_uri": self.drs(object_id),
            "size": len(found.data) if found.size is None else found.size,
            "created_time": "2024-01-01T00:00:00Z",
            "checksums": [{"type": "md5", "checksum": found.md5 or _md5(found.data)}],
            "access_methods": [method],
        }
        if found.huge_json:
            body["description"] = "x" * (2 << 20)
        return body

    def _bytes(self, handler: BaseHTTPRequestHandler, object_id: str, query: str) -> None:
        found = self.objects.get(object_id)
        signature = parse_qs(query).get("sig", [""])[0]
        if found is None or not found.signature or signature != found.signature:
            _send(handler, 403, None)
            return
        handler.send_response(200)
        if found.unsized_body:
            handler.close_connection = True
        else:
            handler.send_header("Content-Length", str(len(found.data)))
        handler.end_headers()
        handler.wfile.write(found.data)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def _send(
    handler: BaseHTTPRequestHandler, status: int, body: dict | None, *, location: str = ""
) -> None:
    payload = json.dumps(body).encode() if body is not None else b""
    handler.send_response(status)
    if location:
        handler.send_header("Location", location)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


def _handler_for(server: DrsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.handle(self)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the default prints each request line on stderr."""

    return Handler


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _env(server: DrsServer) -> dict[str, str]:
    return {
        "GENOFLOW_THREADS": "1",
        "GENOFLOW_DRS_INSECURE_HOSTS": f"127.0.0.1:{server.port},localhost",
        "GENOFLOW_DRS_TOKENS": f"127.0.0.1:{server.port}={server.token}",
        "GENOFLOW_DRS_PREFIXES": f"demo=http://127.0.0.1:{server.port}",
    }


@dataclass
class Run:
    server: DrsServer
    home: Path
    result: subprocess.CompletedProcess

    @property
    def output(self) -> str:
        return self.result.stdout + self.result.stderr

    def records(self) -> dict[str, dict]:
        return {record["name"]: record for record in json.loads(self.result.stdout)}


def _run(tmp: Path, server: DrsServer, rows: list[tuple[str, str, str]], *args: str) -> Run:
    manifest = tmp / "m.tsv"
    lines = ["name\turi\tmd5", *("\t".join(row) for row in rows)]
    manifest.write_text("\n".join(lines) + "\n")
    home = tmp / "home"
    return Run(server, home, run_cli(home, "run", str(manifest), *args, env=_env(server)))


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """One run of a BED (md5 left empty) by access_url and a BAM (md5 given) by access_id."""
    server = DrsServer()
    server.objects = {
        "bed-1": DrsObject(BED),
        "bam-1": DrsObject(BAM, via="access_id"),
        "gtf-1": DrsObject(GTF),
    }
    server.start()
    try:
        rows = [
            ("enhancers.bed", server.drs("bed-1"), ""),
            ("sample3.bam", server.drs("bam-1"), _md5(BAM)),
            ("genes.gtf", "drs://demo:gtf-1", ""),  # compact: GENOFLOW_DRS_PREFIXES
        ]
        yield _run(tmp_path_factory.mktemp("good"), server, rows, "--json")
    finally:
        server.stop()


def _artifact_files(home: Path, md5: str, asset: str) -> dict[str, bytes]:
    found = {}
    for path in (home / "cache").glob(f"*/{md5[:2]}/{md5}/{asset}/v*/*"):
        if path.name != "genoflow.json":
            found[path.name] = path.read_bytes()
    return found


def test_drs_rows_of_a_bed_and_a_bam_build(good: Run) -> None:
    assert good.result.returncode == 0, good.output
    records = good.records()
    for name in ("enhancers.bed", "sample3.bam"):
        assert set(records[name]["assets"].values()) == {"built"}, records[name]


def test_an_empty_md5_is_filled_from_the_drs_checksums(good: Run) -> None:
    assert good.records()["enhancers.bed"]["md5"] == _md5(BED)


def test_the_staged_sources_are_the_drs_objects_bytes(good: Run) -> None:
    assert list(_artifact_files(good.home, _md5(BED), "source").values()) == [BED]
    assert list(_artifact_files(good.home, _md5(BAM), "source").values()) == [BAM]


def test_outputs_match_a_build_of_the_same_files_from_local_paths(
    good: Run, tmp_path: Path
) -> None:
    manifest = tmp_path / "local.tsv"
    manifest.write_text(
        f"name\turi\tmd5\nenhancers.bed\t{DEMO / 'enhancers.bed'}\t{_md5(BED)}\n"
        f"sample3.bam\t{DEMO / 'sample3.bam'}\t{_md5(BAM)}\n"
    )
    home = tmp_path / "home"
    env = {"GENOFLOW_THREADS": "1", "GENOFLOW_ALLOWED_ROOTS": str(DEMO)}
    local = run_cli(home, "run", str(manifest), env=env)
    assert local.returncode == 0, local.stderr
    for md5 in (_md5(BED), _md5(BAM)):
        for asset in ("sorted", "index"):
            assert _artifact_files(good.home, md5, asset) == _artifact_files(home, md5, asset)


def test_a_compact_drs_id_resolves_through_its_configured_prefix(good: Run) -> None:
    assert set(good.records()["genes.gtf"]["assets"].values()) == {"built"}
    assert list(_artifact_files(good.home, _md5(GTF), "source").values()) == [GTF]


def test_the_access_id_is_resolved_through_the_access_endpoint(good: Run) -> None:
    paths = [path for _, path, _ in good.server.requests]
    assert "/ga4gh/drs/v1/objects/bam-1/access/primary" in paths
    assert "/bytes/bam-1" in paths


def test_the_token_goes_to_the_drs_server_and_not_to_another_hosts_access_url(
    good: Run,
) -> None:
    bearer = f"Bearer {good.server.token}"
    to_drs = [h for _, path, h in good.server.requests if path.startswith("/ga4gh/")]
    elsewhere = [h for host, path, h in good.server.requests if host.startswith("localhost:")]
    assert to_drs and all(h.get("Authorization") == bearer for h in to_drs)
    assert elsewhere and all("Authorization" not in h for h in elsewhere)


def test_the_token_and_signatures_are_shown_and_stored_nowhere(good: Run) -> None:
    written = b"".join(p.read_bytes() for p in good.home.rglob("*") if p.is_file())
    assert good.server.token not in good.output
    assert good.server.token.encode() not in written
    status = run_cli(good.home, "status", "--json", env=_env(good.server))
    assert good.server.token not in status.stdout + status.stderr
    for found in good.server.objects.values():  # the last signature of each object's URL
        assert found.signature.encode() not in written
        assert found.signature not in good.output


def test_access_urls_are_resolved_when_staging_not_when_reading_the_manifest(good: Run) -> None:
    # Each object request signs a new URL and revokes the one before: the manifest was read
    # (one object request) before staging asked again, and only the newest URL worked.
    objects = [path for _, path, _ in good.server.requests if path.endswith("/bed-1")]
    assert len(objects) >= 2
    assert good.result.returncode == 0


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """One run: a good row beside every kind of bad DRS id."""
    server = DrsServer()
    server.objects = {
        "good": DrsObject(GTF),
        "locked": DrsObject(BED, status=401),
        "forbidden": DrsObject(BED, status=403),
        "loop": DrsObject(BED, loop=True),
        "huge": DrsObject(BED, huge_json=True),
        "differs": DrsObject(BED),
        "s3-only": DrsObject(BAM, via="s3"),
        "size-lies": DrsObject(b"#comment\n" + BED, size=len(BED) // 2),
        "longer": DrsObject(b"#extra\n" + BED, size=len(BED), md5=_md5(BED), unsized_body=True),
    }
    server.start()
    try:
        rows = [
            ("genes.gtf", server.drs("good"), ""),
            ("missing.bed", server.drs("absent"), ""),
            ("locked.bed", server.drs("locked"), ""),
            ("forbidden.bed", server.drs("forbidden"), ""),
            ("loop.bed", server.drs("loop"), ""),
            ("huge.bed", server.drs("huge"), ""),
            ("differs.bed", server.drs("differs"), "0" * 32),
            ("s3.bam", server.drs("s3-only"), ""),
            ("lies.bed", server.drs("size-lies"), ""),
            ("longer.bed", server.drs("longer"), _md5(BED)),
        ]
        yield _run(tmp_path_factory.mktemp("hostile"), server, rows)
    finally:
        server.stop()


def test_good_drs_rows_build_beside_bad_ones(hostile: Run) -> None:
    line = next(line for line in hostile.result.stdout.splitlines() if "genes.gtf" in line)
    assert line.count("built") == 3, hostile.output


def _error_for(run: Run, object_id: str) -> str:
    lines = [line for line in run.output.splitlines() if f"/{object_id}" in line]
    assert lines, f"no message names {object_id}:\n{run.output}"
    return "\n".join(lines)


@pytest.mark.parametrize(
    ("object_id", "says"),
    [
        ("absent", "no such object on the DRS server (HTTP 404)"),
        ("locked", "refused access (HTTP 401)"),
        ("forbidden", "refused access (HTTP 403)"),
        ("loop", "redirect loop"),
        ("huge", "larger than 1048576 bytes"),
        ("differs", "disagrees with the DRS object's md5 checksum"),
        ("s3-only", "no usable access method (offered: s3)"),
        ("size-lies", "but the object's size is"),
        ("longer", "larger than the object's size"),
    ],
)
def test_a_bad_drs_id_is_an_error_naming_the_id_and_what_is_wrong(
    hostile: Run, object_id: str, says: str
) -> None:
    assert says in _error_for(hostile, object_id)


def test_a_drs_error_says_what_to_do(hostile: Run) -> None:
    assert "GENOFLOW_DRS_TOKENS" in _error_for(hostile, "locked")
    assert "check the id" in _error_for(hostile, "absent")


def test_the_run_fails_when_a_drs_row_does(hostile: Run) -> None:
    assert hostile.result.returncode != 0


def test_a_drs_host_is_reached_over_https_unless_listed_as_insecure() -> None:
    from genoflow.core.settings import DrsSettings
    from genoflow.storage.drs import parse_drs_uri

    listed = DrsSettings.from_env({"GENOFLOW_DRS_INSECURE_HOSTS": "127.0.0.1:8080"})
    assert parse_drs_uri("drs://drs.example.org/abc", listed).object_url == (
        "https://drs.example.org/ga4gh/drs/v1/objects/abc"
    )
    assert parse_drs_uri("drs://127.0.0.1:8080/abc", listed).base == "http://127.0.0.1:8080"
    assert parse_drs_uri("drs://127.0.0.1:9090/abc", listed).base == "https://127.0.0.1:9090"


def test_a_compact_prefix_on_plain_http_is_refused_unless_its_host_is_listed() -> None:
    from genoflow.core.errors import SourceError
    from genoflow.core.settings import DrsSettings
    from genoflow.storage.drs import parse_drs_uri

    unlisted = DrsSettings.from_env({"GENOFLOW_DRS_PREFIXES": "demo=http://10.0.0.1:80"})
    with pytest.raises(SourceError, match="GENOFLOW_DRS_INSECURE_HOSTS"):
        parse_drs_uri("drs://demo:abc", unlisted)
    with pytest.raises(SourceError, match="GENOFLOW_DRS_PREFIXES"):
        parse_drs_uri("drs://other:abc", unlisted)


def test_a_drs_token_never_appears_in_a_settings_error_or_repr() -> None:
    from genoflow.core.settings import ConfigError, DrsSettings

    secret = secrets.token_hex(8)
    with pytest.raises(ConfigError) as caught:
        DrsSettings.from_env({"GENOFLOW_DRS_TOKENS": f"host={secret},broken"})
    assert "GENOFLOW_DRS_TOKENS" in str(caught.value)
    settings = DrsSettings.from_env({"GENOFLOW_DRS_TOKENS": f"host={secret}"})
    assert settings.token_for("host", 443) == secret
    assert secret not in repr(settings)
