"""The service's HTTP core through Starlette's TestClient: /data, /index, /files, ranges,
conditional requests, CORS, bounds, tokens, the access log and the home page.

The artifacts are built by the real pipeline (``genoflow run``) from demo files once per module.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import sqlite3
from collections.abc import Iterator
from email.utils import format_datetime
from pathlib import Path
from types import SimpleNamespace

import anyio
import httpx
import pytest
from starlette.testclient import TestClient

from genoflow.core.settings import ConfigError, ServeSettings, Settings
from genoflow.serve.app import create_app
from genoflow.serve.catalog import Catalog, Files
from genoflow.serve.ranges import CHUNK, FileSlice, parse_range
from genoflow.storage.cache import Cache
from genoflow.storage.registry import Registry
from genoflow_tests.conftest import run_cli
from genoflow_tests.support.serve import build_home

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_home(tmp_path_factory.mktemp("serve"), run_cli)


def _client(home: Path, serve: ServeSettings | None = None) -> TestClient:
    settings = Settings.from_env({"GENOFLOW_HOME": str(home)})
    return TestClient(create_app(settings, serve or ServeSettings()))


@pytest.fixture(scope="module")
def client(home: Path) -> Iterator[TestClient]:
    with _client(home) as client:
        yield client


def _files(home: Path, ident: str) -> Files:
    with Registry(home / "registry.db") as registry:
        catalog = Catalog(registry, Cache(home / "cache"))
        files = catalog.files(catalog.resolve(ident))
    assert files is not None
    return files


@pytest.fixture(scope="module")
def bam(home: Path) -> Files:
    return _files(home, "sample3.bam")


@pytest.fixture(scope="module")
def vcf(home: Path) -> Files:
    return _files(home, "trio.vcf")


def test_data_serves_the_sorted_bam_whole_with_validators_and_caching_headers(client, bam):
    answer = client.get("/data/sample3.bam")
    assert answer.status_code == 200
    assert answer.content == bam.data.read_bytes()
    assert answer.headers["etag"] == f'"{bam.md5_of(bam.data)}"'
    assert answer.headers["content-length"] == str(bam.data.stat().st_size)
    assert answer.headers["accept-ranges"] == "bytes"
    assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert answer.headers["content-type"] == "application/octet-stream"
    assert answer.headers["last-modified"].endswith(" GMT")


def test_a_source_is_served_alike_by_md5_and_by_its_unique_name(client, bam):
    by_md5 = client.get(f"/data/{bam.artifact.marker.source_md5}")
    assert by_md5.content == client.get("/data/sample3.bam").content


def test_one_range_answers_206_with_content_range(client, bam):
    whole = bam.data.read_bytes()
    answer = client.get("/data/sample3.bam", headers={"Range": "bytes=100-199"})
    assert answer.status_code == 206
    assert answer.content == whole[100:200]
    assert answer.headers["content-range"] == f"bytes 100-199/{len(whole)}"
    assert answer.headers["content-length"] == "100"


@pytest.mark.parametrize(
    ("header", "span"),
    [("bytes=-28", (-28, None)), ("bytes=1000-", (1000, None)), ("bytes=10-99999999", (10, None))],
)
def test_suffix_open_ended_and_overlong_ranges_are_served_to_the_end(client, bam, header, span):
    whole = bam.data.read_bytes()
    start = span[0] % len(whole)
    answer = client.get("/data/sample3.bam", headers={"Range": header})
    assert answer.status_code == 206
    assert answer.content == whole[start:]
    assert answer.headers["content-range"] == f"bytes {start}-{len(whole) - 1}/{len(whole)}"


def test_a_range_past_the_end_answers_416_with_the_size(client, bam):
    size = bam.data.stat().st_size
    answer = client.get("/data/sample3.bam", headers={"Range": f"bytes={size}-"})
    assert answer.status_code == 416
    assert answer.headers["content-range"] == f"bytes */{size}"


@pytest.mark.parametrize("header", ["bytes=abc", "bytes=5-2", "bytes", "bytes=", "bytes=1-2-3"])
def test_a_malformed_range_answers_400(client, header):
    assert client.get("/data/sample3.bam", headers={"Range": header}).status_code == 400


def test_a_range_unit_other_than_bytes_is_ignored(client, bam):
    answer = client.get("/data/sample3.bam", headers={"Range": "lines=1-2"})
    assert answer.status_code == 200
    assert len(answer.content) == bam.data.stat().st_size


def test_several_disjoint_ranges_answer_200_with_the_whole_file(client, bam):
    answer = client.get("/data/sample3.bam", headers={"Range": "bytes=0-9, 500-599"})
    assert answer.status_code == 200
    assert answer.content == bam.data.read_bytes()


def test_overlapping_and_adjacent_ranges_are_merged_into_one_206(client, bam):
    answer = client.get("/data/sample3.bam", headers={"Range": "bytes=0-9,10-19,5-14"})
    assert answer.status_code == 206
    assert answer.content == bam.data.read_bytes()[:20]


@pytest.mark.parametrize("tag", ["{etag}", "W/{etag}", '"other", {etag}', "*"])
def test_if_none_match_with_the_etag_answers_304(client, tag):
    etag = client.head("/data/sample3.bam").headers["etag"]
    answer = client.get("/data/sample3.bam", headers={"If-None-Match": tag.format(etag=etag)})
    assert answer.status_code == 304
    assert answer.content == b""
    assert answer.headers["etag"] == etag


def test_if_none_match_with_another_etag_answers_200(client):
    assert client.get("/data/sample3.bam", headers={"If-None-Match": '"x"'}).status_code == 200


def test_if_modified_since_the_publication_answers_304(client):
    modified = client.head("/data/sample3.bam").headers["last-modified"]
    later = format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(days=1), usegmt=True)
    for since in (modified, later):
        answer = client.get("/data/sample3.bam", headers={"If-Modified-Since": since})
        assert answer.status_code == 304


def test_if_range_honours_range_only_for_this_representation(client, bam):
    head = client.head("/data/sample3.bam").headers
    for validator in (head["etag"], head["last-modified"]):
        same = client.get(
            "/data/sample3.bam", headers={"Range": "bytes=0-9", "If-Range": validator}
        )
        assert same.status_code == 206
    for stale in ('"0123"', f"W/{head['etag']}", "Mon, 01 Jan 2001 00:00:00 GMT"):
        other = client.get("/data/sample3.bam", headers={"Range": "bytes=0-9", "If-Range": stale})
        assert other.status_code == 200
        assert other.content == bam.data.read_bytes()


def test_if_match_with_another_etag_answers_412(client):
    assert client.get("/data/sample3.bam", headers={"If-Match": '"x"'}).status_code == 412


def test_head_answers_the_get_headers_without_a_body(client, bam):
    head = client.head("/data/sample3.bam", headers={"Range": "bytes=0-99"})
    assert head.status_code == 206
    assert head.content == b""
    assert head.headers["content-length"] == "100"
    assert head.headers["content-range"] == f"bytes 0-99/{bam.data.stat().st_size}"


def test_index_serves_the_tabix_index_of_a_vcf(client, vcf):
    answer = client.get("/index/trio.vcf")
    assert answer.status_code == 200
    assert vcf.index is not None and vcf.index.name.endswith(".tbi")
    assert answer.content == vcf.index.read_bytes()
    assert answer.headers["etag"] == f'"{vcf.md5_of(vcf.index)}"'


def test_data_of_a_vcf_is_bgzf_as_application_gzip_never_content_encoding(client, vcf):
    answer = client.get("/data/trio.vcf")
    assert answer.headers["content-type"] == "application/gzip"
    assert "content-encoding" not in answer.headers
    assert answer.content == vcf.data.read_bytes()


def test_a_format_without_an_index_answers_404_with_a_json_reason(client):
    answer = client.get("/index/samples.csv")
    assert answer.status_code == 404
    assert answer.json()["error"] == "csv files have no index"


def test_passthrough_data_is_the_staged_source_with_its_media_type(client, home):
    answer = client.get("/data/samples.csv")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/csv"
    assert (
        answer.content
        == (Path(__file__).parents[1] / "data/manifests/demo/samples.csv").read_bytes()
    )


def test_raw_true_serves_the_verified_source_bytes(client, bam):
    answer = client.get("/data/sample3.bam?raw=true")
    assert answer.status_code == 200
    source_md5 = bam.artifact.marker.source_md5
    assert hashlib.md5(answer.content).hexdigest() == source_md5
    assert answer.headers["etag"] == f'"{source_md5}"'


def test_files_serves_data_and_index_under_htslib_names(client, bam, vcf):
    md5 = bam.artifact.marker.source_md5
    assert client.get(f"/files/{md5}/x.bam").content == bam.data.read_bytes()
    assert client.get(f"/files/{md5}/x.bam.bai").content == bam.index.read_bytes()
    vcf_md5 = vcf.artifact.marker.source_md5
    assert client.get(f"/files/{vcf_md5}/trio.vcf.gz").content == vcf.data.read_bytes()
    assert client.get(f"/files/{vcf_md5}/trio.vcf.gz.tbi").content == vcf.index.read_bytes()


@pytest.mark.parametrize(
    "name", ["x.bam.csi", "x.gz", "x.bai", ".bam", "x.bam.tbi.bai", "x y.bam", "x.sam"]
)
def test_files_answers_404_for_a_name_that_is_not_the_convention(client, bam, name):
    md5 = bam.artifact.marker.source_md5
    assert client.get(f"/files/{md5}/{name}").status_code == 404


def test_files_takes_only_an_md5_not_a_name(client):
    assert client.get("/files/sample3.bam/x.bam").status_code == 404


def test_an_unknown_id_answers_404_json(client):
    answer = client.get("/data/nothing-of-that-name")
    assert answer.status_code == 404
    assert answer.json()["error"] == "no registered source has this md5 or name"
    assert client.get("/index/" + "0" * 32).status_code == 404


def test_an_ambiguous_name_answers_409_listing_its_md5s(client):
    answer = client.get("/data/twin")
    assert answer.status_code == 409
    assert answer.json()["md5s"] == sorted(
        ["ef6ea422fdf64f5481abd462e605805a", "66b490092ea7af548869ab86f4a436a4"]
    )
    assert client.get("/data/ef6ea422fdf64f5481abd462e605805a").status_code == 200


def test_head_on_a_registered_unbuilt_source_answers_404_and_starts_nothing(home):
    with _client(home) as client:
        answer = client.head("/data/cohort.vcf.gz")
        assert answer.status_code == 404
        assert client.app.state.builds._builds is None  # no build machinery was even opened
    assert not (home / "cache" / "intervals" / "57").exists()


@pytest.mark.parametrize(
    "raw",
    [b"/data/%2e%2e%2f%2e%2e%2fregistry.db", b"/index/..%2F..%2F", b"/data/a%2Fb",
     b"/files/0123456789abcdef0123456789abcdef/..%2fgenoflow.json"],
)  # fmt: skip
def test_traversal_and_encoded_slashes_answer_404(client, raw):
    answer = client.get(httpx.URL("http://testserver", raw_path=raw))
    assert answer.status_code == 404


def test_a_nul_or_control_character_in_the_path_answers_400(client):
    for raw in (b"/data/sample3.bam%00.bai", b"/data/a%0ab"):
        assert client.get(httpx.URL("http://testserver", raw_path=raw)).status_code == 400


def test_an_overlong_target_answers_414_and_a_large_body_413(client):
    assert client.get("/data/" + "a" * 9000).status_code == 414
    big = client.request("GET", "/data/sample3.bam", content=b"x" * ((1 << 20) + 1))
    assert big.status_code == 413


def test_cors_preflight_and_exposed_headers(client):
    preflight = client.options(
        "/data/sample3.bam",
        headers={
            "Origin": "https://viewer.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "range",
        },
    )
    assert preflight.status_code == 200
    assert "range" in preflight.headers["access-control-allow-headers"].lower()
    answer = client.get("/data/sample3.bam", headers={"Origin": "https://viewer.example"})
    assert answer.headers["access-control-allow-origin"] == "*"
    exposed = {
        h.strip().lower() for h in answer.headers["access-control-expose-headers"].split(",")
    }
    assert {"content-range", "content-length", "accept-ranges", "etag"} <= exposed


def test_cors_allows_only_the_configured_origins(home):
    with _client(home, ServeSettings(origins=("https://ok.example",))) as client:
        good = client.get("/data/sample3.bam", headers={"Origin": "https://ok.example"})
        bad = client.get("/data/sample3.bam", headers={"Origin": "https://evil.example"})
    assert good.headers["access-control-allow-origin"] == "https://ok.example"
    assert "access-control-allow-origin" not in bad.headers


def test_bearer_tokens_are_required_when_a_tokens_file_is_set(home, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# readers\nalpha-token\n\nbeta-token\n")
    with _client(home, ServeSettings(tokens_file=tokens)) as client:
        none = client.get("/data/sample3.bam")
        assert none.status_code == 401
        assert none.headers["www-authenticate"].startswith("Bearer")
        wrong = {"Authorization": "Bearer alpha"}
        assert client.get("/data/sample3.bam", headers=wrong).status_code == 401
        good = {"Authorization": "Bearer beta-token"}
        assert client.get("/data/sample3.bam", headers=good).status_code == 200
        preflight = {"Origin": "https://x", "Access-Control-Request-Method": "GET"}
        assert client.options("/data/sample3.bam", headers=preflight).status_code == 200
        tokens.write_text("gamma-token-longer\n")  # revoked without a restart
        assert client.get("/data/sample3.bam", headers=good).status_code == 401
        fresh = {"Authorization": "Bearer gamma-token-longer"}
        assert client.get("/data/sample3.bam", headers=fresh).status_code == 200


def test_an_unreadable_tokens_file_refuses_to_start(home, tmp_path):
    with pytest.raises(ConfigError, match="GENOFLOW_SERVE_TOKENS"):
        create_app(
            Settings.from_env({"GENOFLOW_HOME": str(home)}),
            ServeSettings(tokens_file=tmp_path / "missing"),
        )


def test_the_access_log_never_shows_a_query_string_or_a_token(home, tmp_path, caplog):
    tokens = tmp_path / "tokens"
    tokens.write_text("header-secret-1234\n")
    caplog.set_level(logging.INFO, logger="genoflow.serve.access")
    with _client(home, ServeSettings(tokens_file=tokens)) as client:
        client.get(
            "/data/sample3.bam?token=query-secret-5678&raw=true",
            headers={"Authorization": "Bearer header-secret-1234"},
        )
        client.get("/index/trio.vcf?X-Goog-Signature=query-secret-5678")
    lines = [record.getMessage() for record in caplog.records]
    assert any('"GET /data/sample3.bam HTTP/1.1" 200' in line for line in lines)
    assert any('"GET /index/trio.vcf HTTP/1.1" 401' in line for line in lines)
    text = "\n".join(lines)
    assert "query-secret-5678" not in text and "header-secret-1234" not in text


def test_home_lists_sources_with_links_and_status(client, bam):
    page = client.get("/")
    assert page.status_code == 200
    md5 = bam.artifact.marker.source_md5
    for link in (f"/data/{md5}", f"/index/{md5}", f"/view/{md5}", f"/files/{md5}/sample3.bam"):
        assert f'href="{link}"' in page.text
    assert "cohort.vcf.gz" in page.text and "not built" in page.text
    assert 'href="/index/ef6ea422fdf64f5481abd462e605805a"' not in page.text  # csv: no index


def test_home_pages_through_sources_and_escapes_names(home, tmp_path):
    rows = [
        ("<script>alert(1)</script>.csv", "0" * 31 + "1"),
        ("plain.csv", "0" * 31 + "2"),
    ]
    with Registry(home / "registry.db") as registry:
        registry.register(
            SimpleNamespace(md5=md5, name=name, uri="x", format="csv", family="passthrough",
                            size=1, manifest=str(tmp_path), line=i, extra={})
            for i, (name, md5) in enumerate(rows)
        )  # fmt: skip
    with _client(home) as client:
        first = client.get("/?limit=1")
        assert "<script>alert" not in first.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;.csv" in first.text
        assert 'href="/?offset=1&amp;limit=1"' in first.text
        assert "plain.csv" in client.get("/?offset=1&limit=1").text


def test_a_name_is_resolved_through_the_name_index(home):
    with sqlite3.connect(home / "registry.db") as db:
        plan = db.execute("EXPLAIN QUERY PLAN SELECT * FROM source_row WHERE name = 'x'").fetchall()
    assert "ix_source_row_name" in str(plan)
    with Registry(home / "registry.db") as registry:
        assert {row.name for row in registry.rows_named("twin")} == {"twin"}
        assert len(registry.rows_named("twin")) == 2


def test_a_file_is_streamed_in_bounded_chunks_and_never_read_whole(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(bytes(range(256)) * (5 * CHUNK // 256 + 7))
    sent: list[dict] = []

    async def receive() -> dict:
        await anyio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    response = FileSlice(path, 3, path.stat().st_size - 5, 206, {}, "application/octet-stream")
    anyio.run(response, {"type": "http", "method": "GET"}, receive, send)
    bodies = [m["body"] for m in sent if m["type"] == "http.response.body"]
    assert max(len(body) for body in bodies) <= CHUNK
    assert len(bodies) >= 5
    assert b"".join(bodies) == path.read_bytes()[3:-5]
    assert sent[-1]["more_body"] is False


def test_parse_range_edges():
    assert parse_range("bytes=0-0", 10) == (0, 1)
    assert parse_range("items=2-", 10) is None  # another unit: ignored
    assert parse_range("Bytes=2-", 10) == (2, 10)
    assert parse_range("bytes=-100", 10) == (0, 10)
    assert parse_range("bytes=0-1, 2-3", 10) == (0, 4)
    assert parse_range("bytes=20-30, 0-1", 10) == (0, 2)  # the unsatisfiable part is dropped
