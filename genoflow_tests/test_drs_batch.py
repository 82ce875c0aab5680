"""Reading a manifest resolves its ``drs://`` ids concurrently, each distinct id once.

A small DRS 1.x server runs in the test on 127.0.0.1 and delays every answer, counts the
requests for each object and the most it ever answered at once. A manifest of many DRS rows
must resolve in a fraction of the time one request after another takes, never with more
requests in flight than ``GENOFLOW_DRS_CONCURRENCY``, keeping its rows' order and lines, every
failing id an error of its own row, and every token only for the server it is configured for.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from genoflow.manifests.reading import read_manifest

pytestmark = pytest.mark.system  # starts HTTP servers (see pyproject markers)

DELAY = 0.05
ROWS = 200


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many clients connect at once; a full backlog stalls them 1 s


class SlowDrs:
    """A DRS server answering ``objects/{id}`` after :data:`DELAY` seconds.

    Attributes:
        token: the bearer token it requires, or None for none.
        objects: id → the bytes the object stands for (its size and md5 are answered).
        asked: requests per object id.
        most: the most requests it was answering at one moment.
        authorizations: every ``Authorization`` header it was sent.
    """

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.objects: dict[str, bytes] = {}
        self.asked: Counter[str] = Counter()
        self.most = 0
        self.authorizations: list[str] = []
        self._now = 0
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def drs(self, object_id: str) -> str:
        return f"drs://127.0.0.1:{self.port}/{object_id}"

    def answer(self, path: str, authorization: str | None) -> tuple[int, dict]:
        with self._lock:
            self._now += 1
            self.most = max(self.most, self._now)
            if authorization is not None:
                self.authorizations.append(authorization)
        try:
            time.sleep(DELAY)
            match = re.fullmatch(r"/ga4gh/drs/v1/objects/([^/]+)", urlsplit(path).path)
            object_id = unquote(match.group(1)) if match else ""
            with self._lock:
                self.asked[object_id] += 1
            if self.token is not None and authorization != f"Bearer {self.token}":
                return 401, {"msg": "token required", "status_code": 401}
            if object_id not in self.objects:
                return 404, {"msg": "no such object", "status_code": 404}
            data = self.objects[object_id]
            return 200, {
                "id": object_id,
                "size": len(data),
                "created_time": "2024-01-01T00:00:00Z",
                "checksums": [{"type": "md5", "checksum": hashlib.md5(data).hexdigest()}],
                "access_methods": [{"type": "https", "access_id": "primary"}],
            }
        finally:
            with self._lock:
                self._now -= 1

    def __enter__(self) -> SlowDrs:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler_for(server: SlowDrs) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = server.answer(self.path, self.headers.get("Authorization"))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def drs(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowDrs]:
    with SlowDrs(token="secret-token-1") as server:
        monkeypatch.setenv("GENOFLOW_DRS_INSECURE_HOSTS", "127.0.0.1")
        monkeypatch.setenv("GENOFLOW_DRS_TOKENS", f"127.0.0.1:{server.port}={server.token}")
        monkeypatch.delenv("GENOFLOW_DRS_TOKEN", raising=False)
        monkeypatch.delenv("GENOFLOW_DRS_CONCURRENCY", raising=False)
        yield server


def _bed(index: int) -> bytes:
    return f"chr1\t{index}\t{index + 10}\tpeak{index}\n".encode()


def _manifest(path: Path, uris: list[str]) -> Path:
    lines = ["name\turi\tmd5"]
    lines += [f"f{index}.bed\t{uri}\t" for index, uri in enumerate(uris)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_two_hundred_drs_rows_resolve_in_a_fraction_of_one_request_after_another(
    drs: SlowDrs, tmp_path: Path
) -> None:
    for index in range(ROWS):
        drs.objects[f"obj{index}"] = _bed(index)
    manifest = _manifest(tmp_path / "m.tsv", [drs.drs(f"obj{i}") for i in range(ROWS)])
    started = time.perf_counter()
    read = read_manifest(manifest)
    seconds = time.perf_counter() - started
    sequential = ROWS * DELAY
    print(f"\n{ROWS} DRS rows, {DELAY * 1000:.0f} ms each: {seconds:.2f} s (one by one ≥ "
          f"{sequential:.0f} s); at most {drs.most} requests at once")  # fmt: skip
    assert read.errors == []
    assert seconds < sequential / 4
    assert [row.line for row in read.rows] == list(range(2, ROWS + 2))
    assert [row.name for row in read.rows] == [f"f{i}.bed" for i in range(ROWS)]
    assert [row.md5 for row in read.rows] == [hashlib.md5(_bed(i)).hexdigest() for i in range(ROWS)]
    assert [row.size for row in read.rows] == [len(_bed(i)) for i in range(ROWS)]


def test_no_more_ids_are_resolved_at_once_than_the_concurrency_allows(
    drs: SlowDrs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENOFLOW_DRS_CONCURRENCY", "3")
    for index in range(24):
        drs.objects[f"obj{index}"] = _bed(index)
    read = read_manifest(_manifest(tmp_path / "m.tsv", [drs.drs(f"obj{i}") for i in range(24)]))
    assert len(read.rows) == 24
    assert 1 < drs.most <= 3


def test_an_id_named_by_many_rows_is_asked_for_once(drs: SlowDrs, tmp_path: Path) -> None:
    drs.objects["shared"] = _bed(1)
    drs.objects["other"] = _bed(2)
    uris = [drs.drs("shared"), drs.drs("other"), drs.drs("shared"), drs.drs("shared")]
    read = read_manifest(_manifest(tmp_path / "m.tsv", uris))
    assert read.errors == []
    assert [row.name for row in read.rows] == ["f0.bed", "f1.bed", "f2.bed", "f3.bed"]
    assert drs.asked == Counter({"shared": 1, "other": 1})


def test_each_failing_id_is_an_error_of_its_own_row_and_the_others_resolve(
    drs: SlowDrs, tmp_path: Path
) -> None:
    for index in range(0, 40, 2):
        drs.objects[f"obj{index}"] = _bed(index)
    manifest = _manifest(tmp_path / "m.tsv", [drs.drs(f"obj{i}") for i in range(40)])
    read = read_manifest(manifest)
    assert [row.line for row in read.rows] == list(range(2, 42, 2))
    assert [error.line for error in read.errors] == list(range(3, 43, 2))
    for error in read.errors:
        object_id = f"obj{error.line - 2}"
        assert drs.drs(object_id) in error.reason
        assert "no such object on the DRS server (HTTP 404)" in error.reason


def test_a_token_goes_only_to_the_drs_server_it_is_configured_for(
    drs: SlowDrs, tmp_path: Path
) -> None:
    with SlowDrs() as open_server:
        uris = []
        for index in range(32):
            server = drs if index % 2 else open_server
            server.objects[f"obj{index}"] = _bed(index)
            uris.append(server.drs(f"obj{index}"))
        read = read_manifest(_manifest(tmp_path / "m.tsv", uris))
    assert read.errors == []
    assert len(read.rows) == 32
    assert open_server.authorizations == []
    assert drs.authorizations == [f"Bearer {drs.token}"] * 16


def test_a_wrong_token_fails_its_rows_without_showing_the_token(
    drs: SlowDrs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENOFLOW_DRS_TOKENS", f"127.0.0.1:{drs.port}=not-the-token")
    drs.objects["obj0"] = _bed(0)
    read = read_manifest(_manifest(tmp_path / "m.tsv", [drs.drs("obj0")]))
    assert read.rows == []
    (error,) = read.errors
    assert "HTTP 401" in error.reason and "not-the-token" not in error.reason


def test_an_unusable_concurrency_setting_is_an_error_of_every_drs_row_only(
    drs: SlowDrs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENOFLOW_DRS_CONCURRENCY", "0")
    local = tmp_path / "local.bed"
    local.write_bytes(_bed(7))
    drs.objects["obj0"] = _bed(0)
    manifest = tmp_path / "m.tsv"
    manifest.write_text(
        "name\turi\tmd5\n"
        f"a.bed\t{drs.drs('obj0')}\t\n"
        f"b.bed\t{local}\t{hashlib.md5(_bed(7)).hexdigest()}\n"
    )
    read = read_manifest(manifest)
    assert [row.name for row in read.rows] == ["b.bed"]
    (error,) = read.errors
    assert "is not a whole number from 1 to 256" in error.reason
    assert drs.asked == Counter()
