"""GA4GH DRS 1.2 of ``genoflow serve``, against a real server on loopback: service-info, objects
for sources, sorted files, indexes and their bundle, access URLs read back and checksummed, 202
while a build runs, DRS's error JSON, and bearer tokens.

The home is built by the real pipeline (``genoflow run``) from demo files once per module.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from genoflow.core.checksums import md5_file
from genoflow_tests.conftest import run_cli
from genoflow_tests.support.serve import DEMO, build_home, serving

pytestmark = pytest.mark.system
DRS = "/ga4gh/drs/v1"
TOKEN = "drs-test-token-0123456789"


def _md5(file: str) -> str:
    return md5_file(DEMO / "demo" / file)


BAM, VCF, CSV = _md5("sample3.bam"), _md5("trio.vcf"), _md5("samples.csv")
UNBUILT = _md5("expression_counts.txt")  # registered only (a "twin" of another md5)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_home(tmp_path_factory.mktemp("drs"), run_cli)


@pytest.fixture(scope="module")
def client(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    log = tmp_path_factory.mktemp("drs-log") / "serve.log"
    with serving(home, log) as base, httpx.Client(base_url=base, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def guarded(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    folder = tmp_path_factory.mktemp("drs-tokens")
    tokens = folder / "tokens.txt"
    tokens.write_text(TOKEN + "\n")
    env = {"GENOFLOW_SERVE_TOKENS": str(tokens)}
    with (
        serving(home, folder / "serve.log", env) as base,
        httpx.Client(base_url=base, timeout=60) as client,
    ):
        yield client


def _object(client: httpx.Client, ident: str, **kwargs) -> dict:
    answer = client.get(f"{DRS}/objects/{ident}", **kwargs)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    return answer.json()


def _fetched(client: httpx.Client, url: str) -> bytes:
    """The bytes behind an access URL, fetched with no header at all."""
    answer = httpx.get(url, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.content


def _checksum(drs_object: dict) -> str:
    (md5,) = [c["checksum"] for c in drs_object["checksums"] if c["type"] == "md5"]
    return md5


def test_service_info_is_ga4gh_service_info_of_type_drs_1_2(client):
    info = client.get(f"{DRS}/service-info").json()
    assert info["type"] == {"group": "org.ga4gh", "artifact": "drs", "version": "1.2.0"}
    assert {"id", "name", "organization", "version"} <= set(info)
    assert {"name", "url"} <= set(info["organization"])


@pytest.mark.parametrize("file", ["sample3.bam", "trio.vcf", "enhancers.bed", "samples.csv"])
def test_a_source_md5_is_its_id_and_its_access_url_reads_bytes_of_that_md5(client, file):
    md5 = _md5(file)
    found = _object(client, md5)
    assert found["id"] == md5
    assert _checksum(found) == md5
    body = _fetched(client, found["access_methods"][0]["access_url"]["url"])
    assert hashlib.md5(body).hexdigest() == md5
    assert len(body) == found["size"] == (DEMO / "demo" / file).stat().st_size
    assert found["name"] == file
    assert found["created_time"].endswith("+00:00")


def test_the_source_role_is_another_name_of_the_source_object(client):
    assert _object(client, f"{BAM}.source")["id"] == BAM


@pytest.mark.parametrize(("md5", "data", "index"), [(BAM, ".bam", ".bai"), (VCF, ".gz", ".tbi")])
def test_the_sorted_file_and_its_index_read_back_as_the_bytes_they_checksum(
    client, md5, data, index
):
    for role, suffix in (("sorted", data), ("index", data + index)):
        found = _object(client, f"{md5}.{role}")
        assert found["name"].endswith(suffix)
        url = found["access_methods"][0]["access_url"]["url"]
        assert urlsplit(url).path == f"/files/{md5}/{found['name']}"
        body = _fetched(client, url)
        assert hashlib.md5(body).hexdigest() == _checksum(found)
        assert len(body) == found["size"]


def test_the_sorted_object_is_the_file_data_serves(client):
    found = _object(client, f"{BAM}.sorted")
    assert _fetched(client, found["access_methods"][0]["access_url"]["url"]) == (
        client.get(f"/data/{BAM}").content
    )


def test_the_access_endpoint_gives_the_url_of_the_objects_access_id(client):
    found = _object(client, f"{VCF}.index")
    (method,) = found["access_methods"]
    answer = client.get(f"{DRS}/objects/{VCF}.index/access/{method['access_id']}")
    assert answer.status_code == 200
    assert answer.json() == {"url": method["access_url"]["url"]}


def test_the_bundle_holds_the_sorted_file_and_its_index_with_drs_bundle_checksum(client):
    bundle = _object(client, f"{BAM}.bundle")
    ids = [item["id"] for item in bundle["contents"]]
    assert ids == [f"{BAM}.sorted", f"{BAM}.index"]
    parts = [_object(client, ident) for ident in ids]
    assert [item["name"] for item in bundle["contents"]] == [part["name"] for part in parts]
    assert bundle["size"] == sum(part["size"] for part in parts)
    joined = "".join(sorted(_checksum(part) for part in parts))
    assert _checksum(bundle) == hashlib.md5(joined.encode()).hexdigest()
    host = urlsplit(str(client.base_url)).netloc
    assert bundle["contents"][1]["drs_uri"] == [f"drs://{host}/{BAM}.index"]
    assert "access_methods" not in bundle
    assert _object(client, f"{BAM}.bundle", params={"expand": "true"}) == bundle


def test_self_uri_is_a_drs_uri_of_this_host_and_the_id(client):
    host = urlsplit(str(client.base_url)).netloc
    assert _object(client, f"{VCF}.sorted")["self_uri"] == f"drs://{host}/{VCF}.sorted"


def test_a_post_with_a_json_body_answers_as_the_get(client):
    got = _object(client, BAM)
    posted = client.post(f"{DRS}/objects/{BAM}", json={"expand": True})
    assert posted.status_code == 200
    assert {k: v for k, v in posted.json().items() if k != "access_methods"} == {
        k: v for k, v in got.items() if k != "access_methods"
    }


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/objects/00000000000000000000000000000000", 404),
        ("/objects/sample3.bam", 404),
        (f"/objects/{BAM}.sideways", 404),
        (f"/objects/{CSV}.sorted", 404),
        (f"/objects/{CSV}.bundle", 404),
        (f"/objects/{BAM}/access/s3", 404),
        (f"/objects/{BAM}.bundle/access/https", 404),
        ("/objects", 404),
        ("/stream/anything", 404),
    ],
)
def test_what_does_not_exist_answers_drs_error_json(client, path, status):
    answer = client.get(DRS + path)
    assert answer.status_code == status
    body = answer.json()
    assert body["status_code"] == status
    assert isinstance(body["msg"], str) and body["msg"]


def test_a_post_body_that_is_not_json_answers_400_in_drs_shape(client):
    answer = client.post(f"{DRS}/objects/{BAM}", content=b"{nope")
    assert answer.status_code == 400
    assert answer.json()["status_code"] == 400


def test_options_says_no_authorization_is_needed_without_tokens(client):
    answer = client.request("OPTIONS", f"{DRS}/objects/{BAM}")
    assert answer.status_code == 200
    assert answer.json() == {"drs_object_id": BAM, "supported_types": ["None"]}


def test_an_unbuilt_source_answers_202_with_retry_after_then_the_object_once_built(client):
    first = client.get(f"{DRS}/objects/{UNBUILT}")
    assert first.status_code == 202, first.text
    assert first.json()["status_code"] == 202
    assert int(first.headers["retry-after"]) >= 0
    assert first.headers["location"].startswith("/jobs/")
    deadline = time.monotonic() + 240
    answer = first
    while answer.status_code == 202 and time.monotonic() < deadline:
        time.sleep(max(1, int(answer.headers["retry-after"])))
        answer = client.get(f"{DRS}/objects/{UNBUILT}")
    assert answer.status_code == 200, answer.text
    body = _fetched(client, answer.json()["access_methods"][0]["access_url"]["url"])
    assert hashlib.md5(body).hexdigest() == UNBUILT


def test_with_tokens_an_object_without_a_token_answers_401_in_drs_shape(guarded):
    answer = guarded.get(f"{DRS}/objects/{BAM}")
    assert answer.status_code == 401
    assert answer.json()["status_code"] == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")


def test_with_tokens_a_wrong_token_answers_401_and_never_echoes_it(guarded):
    answer = guarded.get(f"{DRS}/objects/{BAM}", headers={"Authorization": "Bearer wrong-one"})
    assert answer.status_code == 401
    assert answer.json()["status_code"] == 401
    assert "wrong-one" not in answer.text


def test_with_tokens_the_access_url_is_signed_and_reads_without_a_header(guarded):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    found = _object(guarded, f"{VCF}.sorted", headers=auth)
    url = found["access_methods"][0]["access_url"]["url"]
    assert "sig=" in urlsplit(url).query
    assert TOKEN not in url
    assert hashlib.md5(_fetched(guarded, url)).hexdigest() == _checksum(found)
    assert httpx.get(url.split("?")[0], timeout=60).status_code == 401


def test_with_tokens_a_signed_url_offered_for_a_drs_object_answers_403(guarded):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    url = _object(guarded, f"{VCF}.sorted", headers=auth)["access_methods"][0]["access_url"]
    query = urlsplit(url["url"]).query
    answer = guarded.get(f"{DRS}/objects/{VCF}.sorted?{query}")
    assert answer.status_code == 403
    assert answer.json()["status_code"] == 403


def test_with_tokens_options_names_bearer_auth(guarded):
    answer = guarded.request("OPTIONS", f"{DRS}/objects/{BAM}")
    assert answer.status_code == 200
    assert answer.json()["supported_types"] == ["BearerAuth"]
