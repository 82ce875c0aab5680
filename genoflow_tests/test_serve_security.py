"""The service's security with bearer tokens on (``GENOFLOW_SERVE_TOKENS``): htsget's own auth
errors, signed viewer links that igv.js in headless Chromium follows, the bounds on what a
request may ask, and tokens and signatures that never reach a log, a job, metadata, the Dagster
run or an error.

The artifacts are built by the real pipeline (``genoflow run``) from demo files once per module;
the system tests run ``genoflow serve`` for real.
"""

from __future__ import annotations

import http.client
import json
import re
import select
import shutil
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from genoflow.core.checksums import md5_file
from genoflow.core.settings import ConfigError, ServeSettings, Settings
from genoflow.serve.app import create_app
from genoflow.serve.htsget import MAX_REGIONS
from genoflow.serve.middleware import MAX_BODY, MAX_HEADERS, MAX_TARGET
from genoflow.serve.signing import TICKET_TTL, VIEW_TTL, sign
from genoflow_tests.conftest import REPO, require_tool, run_cli
from genoflow_tests.support.serve import DEMO, build_home, serving
from genoflow_tests.support.unavailable import unavailable

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TOKEN = "reader-token-5c1e9a77d2"
HTSGET_JSON = "application/vnd.ga4gh.htsget.v1.3.0+json"
BAM = md5_file(DEMO / "demo" / "sample3.bam")
VCF = md5_file(DEMO / "demo" / "trio.vcf")
BED = md5_file(DEMO / "demo" / "enhancers.bed")
COHORT = md5_file(DEMO / "demo" / "cohort.vcf.gz")  # registered, never built by build_home
BEARER = {"Authorization": f"Bearer {TOKEN}"}
JS = REPO / "genoflow_tests" / "js"
IGV = REPO / "genoflow" / "serve" / "web" / "node_modules" / "igv" / "dist" / "igv.min.js"
SETTINGS = re.compile(r'<script type="application/json" id="genoflow-view">(.*?)</script>')


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_home(tmp_path_factory.mktemp("security"), run_cli)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "tokens"
    path.write_text(f"# readers\n{TOKEN}\n")
    return path


def _client(home: Path, tokens: Path | None) -> TestClient:
    settings = Settings.from_env({"GENOFLOW_HOME": str(home)})
    return TestClient(create_app(settings, ServeSettings(tokens_file=tokens)))


@pytest.fixture(scope="module")
def client(home: Path, tokens: Path) -> Iterator[TestClient]:
    with _client(home, tokens) as client:
        yield client


def _htsget_error(answer: httpx.Response) -> tuple[int, str]:
    assert answer.headers["content-type"] == HTSGET_JSON, answer.headers
    body = answer.json()
    assert set(body) == {"htsget"} and set(body["htsget"]) == {"error", "message"}, body
    return answer.status_code, body["htsget"]["error"]


def _signed(tokens: Path, path: str, **kwargs: int) -> str:
    return f"{path}?{sign(tokens, path, **kwargs)}"


# -- htsget's own authentication errors ----------------------------------------------------------

HTSGET_PATHS = [
    f"/reads/{BAM}?referenceName=chr1&start=0&end=1000",
    f"/variants/{VCF}",
    f"/intervals/{BED}",
    "/service-info",
    "/reads/service-info",
    "/variants/service-info",
    "/intervals/service-info",
]


@pytest.mark.parametrize("target", HTSGET_PATHS)
def test_htsget_paths_answer_invalid_authentication_401_without_a_valid_token(client, target):
    missing = client.get(target)
    assert _htsget_error(missing) == (401, "InvalidAuthentication")
    assert missing.headers["www-authenticate"] == 'Bearer realm="genoflow"'
    wrong = client.get(target, headers={"Authorization": "Bearer not-the-token"})
    assert _htsget_error(wrong) == (401, "InvalidAuthentication")
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert "not-the-token" not in wrong.text
    assert client.get(target, headers=BEARER).status_code == 200


def test_an_htsget_post_without_a_token_answers_invalid_authentication(client):
    answer = client.post(f"/reads/{BAM}", json={"regions": [{"referenceName": "chr1"}]})
    assert _htsget_error(answer) == (401, "InvalidAuthentication")


def test_a_signed_url_offered_for_an_htsget_ticket_is_permission_denied_403(client, tokens):
    # Even a signature this server made (for the ticket's own /data URL, or this very path)
    # opens only a file or a page: a ticket needs a bearer token.
    for path, signed_for in [(f"/reads/{BAM}", f"/data/{BAM}"), ("/service-info", "/service-info")]:
        answer = client.get(f"{path}?{sign(tokens, signed_for)}")
        assert _htsget_error(answer) == (403, "PermissionDenied")
        assert "sig=" not in answer.text and "www-authenticate" not in answer.headers


def test_paths_outside_htsget_keep_the_generic_401(client):
    for target in (f"/data/{BAM}", f"/jobs/{'0' * 8}", "/", f"/links/{BAM}"):
        answer = client.get(target)
        assert answer.status_code == 401
        assert answer.headers["content-type"] == "application/json"
        assert answer.json() == {"error": "a valid bearer token is required"}


def test_expired_forged_and_moved_signatures_are_refused_without_echoing_them(client, tokens):
    data = f"/data/{BAM}"
    expired = _signed(tokens, data, now=time.time() - TICKET_TTL - 5)
    forged = _signed(tokens, data).replace("sig=", "sig=A")
    moved = f"/data/{VCF}?" + sign(tokens, data)
    answers = {name: client.get(url) for name, url in
               [("expired", expired), ("forged", forged), ("moved", moved)]}  # fmt: skip
    assert {name: a.status_code for name, a in answers.items()} == dict.fromkeys(answers, 401)
    assert "expired" in answers["expired"].json()["error"]
    assert "not valid" in answers["forged"].json()["error"]
    assert "not valid" in answers["moved"].json()["error"]
    for answer in answers.values():
        assert 'error="invalid_token"' in answer.headers["www-authenticate"]
        assert "sig=" not in answer.text and "exp=" not in answer.text
    assert client.get(_signed(tokens, data)).status_code == 200


def test_with_tokens_an_answer_is_private_to_shared_caches(client, tokens):
    for answer in (client.get(f"/data/{BAM}", headers=BEARER),
                   client.get(_signed(tokens, f"/data/{BAM}"))):  # fmt: skip
        assert answer.status_code == 200
        assert answer.headers["cache-control"] == "private, max-age=31536000, immutable"


# -- signed viewer links -----------------------------------------------------------------------


def test_links_need_a_bearer_token_and_no_signature_ever_mints_one(client, tokens):
    assert client.get(f"/links/{BAM}").status_code == 401
    assert client.get(_signed(tokens, f"/links/{BAM}")).status_code == 401
    moved = _signed(tokens, f"/view/{BAM}").replace("/view/", "/links/")
    assert client.get(moved).status_code == 401
    answer = client.get("/links/sample3.bam", headers=BEARER)
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    links = answer.json()
    assert links["md5"] == BAM
    for kind in ("view", "data", "index"):
        url = urllib.parse.urlsplit(links[kind])
        assert url.path == {"view": f"/view/{BAM}", "data": f"/data/{BAM}"}.get(
            kind, f"/index/{BAM}"
        )
        query = urllib.parse.parse_qs(url.query)
        assert abs(int(query["exp"][0]) - time.time() - VIEW_TTL) < 60
        assert client.get(f"{url.path}?{url.query}").status_code == 200  # no header
    assert client.get("/links/twin", headers=BEARER).status_code == 409
    assert client.get(f"/links/{'0' * 32}", headers=BEARER).status_code == 404


def _page_urls(page: str) -> list[str]:
    """Every URL a view page hands igv.js or links to (the page's own paths)."""
    settings = json.loads(SETTINGS.search(page).group(1))["igv"]
    found = [settings["reference"]["url"]]
    for track in settings["tracks"]:
        found += [track["url"], track["indexURL"]]
    found += [src.replace("&amp;", "&") for src in re.findall(r'<script src="([^"]+)"', page)]
    found += [h.replace("&amp;", "&") for h in re.findall(r'href="(/(?:data|index)/[^"]+)"', page)]
    return found


@pytest.mark.parametrize("md5", [BAM, VCF, BED])
def test_a_signed_view_link_opens_the_page_and_all_it_loads_expires_with_it(client, tokens, md5):
    assert client.get(f"/view/{md5}").status_code == 401
    link = _signed(tokens, f"/view/{md5}", ttl=120)
    expires = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)["exp"][0]
    page = client.get(link + "&locus=chr1")
    assert page.status_code == 200, page.text
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    urls = _page_urls(page.text)
    assert len(urls) == 7, urls  # chrom.sizes, track, index, 2 scripts, data and index links
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        assert urllib.parse.parse_qs(parts.query)["exp"] == [expires], url
        answer = client.get(url, headers={"Range": "bytes=0-99"})  # no bearer header
        assert answer.status_code in (200, 206), (url, answer.text)
        unsigned = client.get(parts.path)
        assert unsigned.status_code == 401, url


def test_a_view_page_asked_with_a_bearer_token_signs_its_urls_for_the_view_ttl(client):
    page = client.get(f"/view/{BAM}", headers=BEARER)
    assert page.status_code == 200
    for url in _page_urls(page.text):
        exp = int(urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["exp"][0])
        assert abs(exp - time.time() - VIEW_TTL) < 60


def test_a_view_signature_opens_only_its_own_path(client, tokens):
    query = sign(tokens, f"/view/{BAM}")
    for other in (f"/data/{BAM}", f"/view/{VCF}", f"/view/{BAM}/chrom.sizes", "/static/view.js"):
        assert client.get(f"{other}?{query}").status_code == 401, other


def test_without_tokens_the_view_page_and_links_are_plain(home):
    with _client(home, None) as plain:
        page = plain.get(f"/view/{BAM}")
        assert "sig=" not in page.text and page.headers["cache-control"] == "no-cache"
        links = plain.get(f"/links/{BAM}").json()
        assert links["expires"] is None and links["view"].endswith(f"/view/{BAM}")


def test_editing_the_tokens_file_voids_every_signed_link(home, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("first-token-abcdef\n")
    with _client(home, tokens) as client:
        links = client.get(f"/links/{BAM}", headers={"Authorization": "Bearer first-token-abcdef"})
        view = urllib.parse.urlsplit(links.json()["view"])
        assert client.get(f"{view.path}?{view.query}").status_code == 200
        tokens.write_text("second-token-abcdef\n")  # revoked without a restart
        assert client.get(f"{view.path}?{view.query}").status_code == 401


# -- bounds -----------------------------------------------------------------------------------


def test_an_htsget_body_over_the_bound_is_payload_too_large_even_when_chunked(client):
    big = b'{"regions": [' + b" " * MAX_BODY + b"]}"
    sized = client.post(f"/reads/{BAM}", content=big, headers=BEARER)
    assert _htsget_error(sized) == (413, "PayloadTooLarge")

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    chunked = client.post(f"/reads/{BAM}", content=chunks(), headers=BEARER)
    assert "content-length" not in chunked.request.headers
    assert _htsget_error(chunked) == (413, "PayloadTooLarge")
    plain = client.post("/data/x", content=chunks(), headers=BEARER)
    assert plain.status_code == 413 and "error" in plain.json()


def test_a_chunked_body_within_the_bound_reaches_the_ticket(client):
    body = json.dumps({"regions": [{"referenceName": "chr1", "start": 0, "end": 5000}]}).encode()
    answer = client.post(f"/reads/{BAM}", content=iter([body[:10], body[10:]]), headers=BEARER)
    assert answer.status_code == 200, answer.text
    assert answer.json()["htsget"]["urls"]


def test_an_overlong_target_or_oversized_headers_are_refused_before_any_route(client):
    long_path = f"/reads/{BAM}?referenceName=" + "a" * MAX_TARGET
    assert _htsget_error(client.get(long_path, headers=BEARER)) == (400, "InvalidInput")
    assert client.get("/data/" + "a" * MAX_TARGET, headers=BEARER).status_code == 414
    big = {**BEARER, "X-Filler": "f" * MAX_HEADERS}
    assert client.get(f"/data/{BAM}", headers=big).status_code == 431
    assert _htsget_error(client.get("/service-info", headers=big)) == (400, "InvalidInput")


def test_a_ticket_takes_at_most_max_regions(client):
    region = {"referenceName": "chr1", "start": 0, "end": 100}
    over = client.post(f"/reads/{BAM}", json={"regions": [region] * (MAX_REGIONS + 1)},
                       headers=BEARER)  # fmt: skip
    assert _htsget_error(over) == (400, "InvalidInput")
    assert str(MAX_REGIONS) in over.json()["htsget"]["message"]
    at = client.post(f"/reads/{BAM}", json={"regions": [region] * MAX_REGIONS}, headers=BEARER)
    assert at.status_code == 200, at.text


def test_concurrent_builds_are_bounded_by_serve_builders(tmp_path, monkeypatch):
    """Two misses for distinct md5s with one builder: both jobs are taken at once, but the
    second run starts only after the first ended (it waited in the queue, no second fork)."""
    from genoflow.serve.builds import Builds
    from genoflow.serve.catalog import Source

    home = tmp_path / "home"
    sources = tmp_path / "sources"
    sources.mkdir()
    rows = ["name\turi\tmd5"]
    for n in range(2):
        path = sources / f"peaks{n}.bed"
        path.write_text((DEMO / "demo" / "enhancers.bed").read_text() + f"chr22\t{n}\t{n + 9}\n")
        rows.append(f"{path.name}\t{path}\t{md5_file(path)}")
    manifest = tmp_path / "m.tsv"
    manifest.write_text("\n".join(rows) + "\n")
    done = run_cli(home, "register", str(manifest), env={"GENOFLOW_ALLOWED_ROOTS": str(sources)})
    assert done.returncode == 0, done.stdout + done.stderr
    monkeypatch.setenv("GENOFLOW_HOME", str(home))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    settings = Settings.from_env({"GENOFLOW_HOME": str(home), "GENOFLOW_THREADS": "1"})
    builds = Builds(settings, ServeSettings(builders=1))
    try:
        jobs = [
            builds.request(Source(row.split("\t")[2], "intervals", "bed", (row.split("\t")[0],)))
            for row in rows[1:]
        ]
        assert len({job.id for job in jobs}) == 2
        ended = [builds.wait(job.id, 240) for job in jobs]
        assert [job.status for job in ended] == ["succeeded", "succeeded"], ended
        records = [builds.instance.get_run_record_by_id(job.id) for job in jobs]
        first, second = sorted(records, key=lambda record: record.start_time)
        assert first.end_time <= second.start_time, (first, second)
    finally:
        builds.close()
    with pytest.raises(ConfigError, match="GENOFLOW_SERVE_BUILDERS"):
        ServeSettings.from_env({"GENOFLOW_SERVE_BUILDERS": "65"})


# -- against a running server -------------------------------------------------------------------

PUBLIC = "http://genoflow.example.org:8080"


def _call(
    base: str, target: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    parts = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request(method, target, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        connection.close()


def _local(url: str) -> str:
    """The path and query of a URL the server wrote (absolute, under its public URL)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        unavailable("node is not on PATH: apt-get install nodejs npm (CI's .ci/run does)")
    if not (JS / "node_modules" / "playwright-core").is_dir():
        unavailable("the JavaScript test clients are not installed: run `make test-clients`")
    if not IGV.is_file():
        unavailable("igv.js is not installed: run `make web`")
    return node


@pytest.mark.system
@pytest.mark.timeout(600)
def test_igv_js_in_chromium_opens_a_signed_view_link_with_tokens_on(home, tokens, tmp_path):
    chromium = require_tool("chromium")
    node = _node()
    env = {"GENOFLOW_SERVE_TOKENS": str(tokens)}
    with serving(home, tmp_path / "serve.log", env) as base:
        assert _call(base, f"/view/{BAM}")[0] == 401
        status, _, body = _call(base, f"/links/{BAM}", BEARER)
        assert status == 200
        link = base + _local(json.loads(body)["view"])
        shot = tmp_path / "viewer-signed.png"
        done = subprocess.run(
            [node, "view.mjs", chromium, link, str(shot)],
            cwd=JS,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["view"] == "ready", report
    [track] = report["tracks"]
    assert track["features"] > 0, report
    assert not report["failed"], report["failed"]
    # Everything the page loaded came from the server, each URL with its own signature.
    assert all(url.startswith(base + "/") for url in report["requests"]), report["requests"]
    assert all("sig=" in url for url in report["requests"]), report["requests"]
    assert not [line for line in report["console"] if "pageerror" in line], report["console"]
    assert shot.stat().st_size > 10_000


def _sigs(text: str) -> set[str]:
    return set(re.findall(r"sig=([A-Za-z0-9_-]+)", text))


def _dagster_text(home: Path, job_id: str) -> tuple[str, list]:
    """Everything the Dagster UI shows of a run (tags, config, event log) as one text, and the
    run's materializations."""
    from dagster import DagsterEventType, DagsterInstance
    from dagster._serdes import serialize_value

    dagster_home = Settings.from_env({"GENOFLOW_HOME": str(home)}).dagster_home
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        run = instance.get_run_by_id(job_id)
        assert run is not None
        entries = instance.all_logs(job_id)
        text = serialize_value(run) + "\n".join(serialize_value(entry) for entry in entries)
        materialized = [
            entry.asset_materialization
            for entry in entries
            if entry.dagster_event
            and entry.dagster_event.event_type == DagsterEventType.ASSET_MATERIALIZATION
        ]
    return text, materialized


@pytest.mark.system
@pytest.mark.timeout(600)
def test_tokens_and_signatures_never_appear_in_logs_jobs_metadata_the_run_or_errors(
    home, tokens, tmp_path
):
    wrong, query_secret = "wrong-token-77aa19", "query-secret-3e8d"
    env = {
        "GENOFLOW_SERVE_TOKENS": str(tokens),
        "GENOFLOW_PUBLIC_URL": PUBLIC,
        "GENOFLOW_DAGSTER_URL": "http://dagster.example.org:3000",
    }
    log = tmp_path / "serve.log"
    answers: list[bytes] = []  # every body and header the server sent
    with serving(home, log, env) as base:

        def call(target: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
            status, head, body = _call(base, target, headers)
            answers.append(json.dumps(head).encode() + body)
            return status, head, body

        _, _, links = call(f"/links/{BED}", BEARER)
        view = _local(json.loads(links)["view"])
        assert call(view)[0] == 200
        ticket_at = f"/variants/{VCF}?referenceName=chr1&start=0&end=100000"
        status, _, ticket = call(ticket_at, BEARER)
        assert status == 200
        urls = json.loads(ticket)["htsget"]["urls"]
        first = next(url for url in urls if url["url"].startswith(PUBLIC))
        assert call(_local(first["url"]), first["headers"])[0] == 206
        signatures = _sigs(links.decode()) | _sigs(answers[1].decode()) | _sigs(ticket.decode())
        assert len(signatures) >= 5
        forged = "A" + sorted(signatures)[0][1:]
        signatures.add(forged)
        refused = [
            (f"/data/{BAM}?token={query_secret}", {}, 401),
            (ticket_at, {"Authorization": f"Bearer {wrong}"}, 401),
            (f"/reads/{BAM}?exp=1&sig={forged}", {}, 403),
            (f"/data/{BAM}?exp=9999999999&sig={forged}", {}, 401),
            (f"/data/{'0' * 32}?token={query_secret}", BEARER, 404),
            (f"/variants/{'0' * 32}?sig={forged}", BEARER, 404),
        ]
        refusals = []
        for target, headers, expected in refused:
            status, head, body = call(target, headers)
            assert status == expected, target
            refusals.append(json.dumps(head).encode() + body)
        # A miss through a token and a signed view link starts one build, a Dagster run.
        status, head, _ = call(f"/data/{COHORT}?token={query_secret}", BEARER)
        assert status == 202, head
        job = head["location"]
        status, _, links = call(f"/links/{COHORT}", BEARER)
        signatures |= _sigs(links.decode())
        assert call(_local(json.loads(links)["view"]))[0] == 202
        deadline = time.monotonic() + 300
        while json.loads(call(job, BEARER)[2])["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, "the build did not end within 300 s"
            time.sleep(1)
        status, _, done = call(job, BEARER)
        assert json.loads(done)["status"] == "succeeded", done
        assert call("/", BEARER)[0] == 200
    dagster, materialized = _dagster_text(home, job.rsplit("/", 1)[1])
    assert materialized
    metadata = json.dumps([{k: str(v.value) for k, v in m.metadata.items()} for m in materialized])
    assert f"{PUBLIC}/view/{COHORT}" in metadata
    places = {
        "access log": log.read_text(),
        "answers": b"\n".join(answers).decode("latin-1"),
        "jobs": done.decode(),
        "metadata": metadata,
        "dagster run": dagster,
    }
    assert '"GET /links/' in places["access log"] and '"GET /reads/' in places["access log"]
    secrets = {TOKEN, wrong, query_secret, str(tokens.read_text()).strip()}
    for place, text in places.items():
        for secret in secrets:
            assert secret not in text, (place, secret)
        if place != "answers":  # the server hands out signatures, and nowhere else
            assert not _sigs(text) and not [s for s in signatures if s in text], place
    # The refusals echo no token, signature or query: only the answers that mint signatures
    # carry any.
    for body in refusals:
        assert b"sig=" not in body and query_secret.encode() not in body, body
        assert not [s for s in signatures if s.encode() in body], body


def _raw(base: str, head: bytes, body: bytes = b"", *, piece: int = 65536) -> bytes:
    """Send a raw request (``head`` then ``body``, in pieces) and read the answer, also while
    sending (the server may answer and close before the request is all sent); b"" when it
    closed without an answer."""
    parts = urllib.parse.urlsplit(base)
    answer = b""
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as connection:
        try:
            data = head + body
            for start in range(0, len(data), piece):
                connection.sendall(data[start : start + piece])
                while select.select([connection], [], [], 0)[0]:
                    if not (chunk := connection.recv(65536)):
                        return answer
                    answer += chunk
            while chunk := connection.recv(65536):
                answer += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
    return answer


@pytest.mark.system
def test_a_running_server_bounds_request_heads_and_chunked_bodies(home, tokens, tmp_path):
    env = {"GENOFLOW_SERVE_TOKENS": str(tokens)}
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    with serving(home, tmp_path / "serve.log", env) as base:
        huge = b"GET /data/x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 20_000_000 + b"\r\n\r\n"
        started = time.monotonic()
        answer = _raw(base, huge)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert time.monotonic() - started < 20
        big = b"GET /service-info HTTP/1.1\r\nHost: a\r\n" + auth
        answer = _raw(base, big + b"X-Big: " + b"a" * (MAX_HEADERS + 10) + b"\r\n\r\n", piece=4096)
        assert answer.startswith(b"HTTP/1.1 400 ") and b'"InvalidInput"' in answer, answer[:300]
        chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
        post = f"POST /reads/{BAM} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        answer = _raw(base, post.encode() + auth + b"\r\n", chunk * (MAX_BODY // 65536 + 2))
        assert answer.startswith(b"HTTP/1.1 413 ") and b'"PayloadTooLarge"' in answer, answer
        # The unread body is not waited for: the server closes at once, not after keep-alive.
        assert b"\r\nconnection: close\r\n" in answer.lower(), answer[:300]
        assert _call(base, f"/data/{BAM}", {**BEARER, "Range": "bytes=0-9"})[0] == 206
