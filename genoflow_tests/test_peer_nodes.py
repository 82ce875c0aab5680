"""Two nodes with no shared filesystem, bucket or registry: each its own GENOFLOW_HOME, talking
only through real ``genoflow serve`` processes (the peer replica API, ``/peer/v1``)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from genoflow.core.checksums import md5_file
from genoflow.core.errors import GenoflowError
from genoflow.core.settings import ConfigError, PeerSettings, Settings
from genoflow.serve.auth import Tokens
from genoflow.storage.layout import ArtifactKey

from .conftest import run_cli
from .support.serve import DEMO, serving

pytestmark = pytest.mark.system  # starts genoflow serve processes

FILES = DEMO / "demo"
READ_TOKEN = "peer-read-7f3a9c0d1e2b4a5f"
PUBLISH_TOKEN = "peer-publish-5c8e1b2d9a0f3e7c"
BARE_TOKEN = "peer-bare-0a1b2c3d4e5f6a7b"
BUILT_ON_A = ["enhancers.bed", "sample3.bam", "trio.vcf"]
PUSHED_BY_B = "barley_regions.bed"  # registered on A, built by B, pushed to A
FORGED = "sample1_H3K27ac_peaks.narrowPeak"  # registered on A, target of hand-made pushes
REFUSED = "sample1_H3K27me3_peaks.broadPeak"  # registered on A, pushed with a read token
CHUNKED = "genes.gff3"  # registered on A, target of a push larger than one request body
UNREGISTERED = "genes.gtf"  # never registered on A


def _manifest(path: Path, names: list[str], *, reachable: bool) -> Path:
    """A manifest of demo files; unreachable URIs make any staging attempt fail."""
    lines = ["name\turi\tmd5\tformat"]
    for name in names:
        uri = str(FILES / name) if reachable else f"http://127.0.0.1:9/gone/{name}"
        lines.append(f"{name}\t{uri}\t{md5_file(FILES / name)}\t")
    path.write_text("\n".join(lines) + "\n")
    return path


def _peer_env(base: str, token: str) -> dict[str, str]:
    return {
        "GENOFLOW_REPLICAS": base,
        "GENOFLOW_PEER_INSECURE_HOSTS": "127.0.0.1",
        "GENOFLOW_PEER_TOKEN": token,
        "GENOFLOW_ALLOWED_ROOTS": str(DEMO),
    }


def _run_json(home: Path, manifest: Path, env: dict[str, str]) -> tuple[list[dict], str]:
    done = run_cli(home, "run", "--json", str(manifest), env=env)
    return json.loads(done.stdout or "[]"), done.stdout + done.stderr


@pytest.fixture(scope="module")
def node_a(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Node A: built BED, BAM and VCF; three more sources registered only; serving with
    tokens of each scope."""
    folder = tmp_path_factory.mktemp("node-a")
    home = folder / "home"
    env = {"GENOFLOW_ALLOWED_ROOTS": str(DEMO)}
    built = run_cli(
        home, "run", str(_manifest(folder / "a.tsv", BUILT_ON_A, reachable=True)), env=env
    )
    assert built.returncode == 0, built.stdout + built.stderr
    others = _manifest(folder / "more.tsv", [PUSHED_BY_B, FORGED, REFUSED, CHUNKED], reachable=True)
    registered = run_cli(home, "register", str(others), env=env)
    assert registered.returncode == 0, registered.stdout + registered.stderr
    tokens = folder / "tokens"
    tokens.write_text(
        f"# scopes after the token\n{READ_TOKEN} read\n{PUBLISH_TOKEN} publish\n{BARE_TOKEN}\n"
    )
    log = folder / "serve.log"
    with serving(home, log, env={"GENOFLOW_SERVE_TOKENS": str(tokens)}) as base:
        yield {"base": base, "home": home, "log": log, "outputs": [built.stdout + built.stderr]}


def _key(name: str, asset: str) -> ArtifactKey:
    from genoflow.build.families import key_for

    md5 = md5_file(FILES / name)
    family = "alignments" if name.endswith(".bam") else "intervals"
    return key_for(family, md5, asset)


def _marker(home: Path, key: ArtifactKey) -> dict | None:
    path = home / "cache" / key.relstr / "genoflow.json"
    return json.loads(path.read_text()) if path.exists() else None


def _registry_rows(home: Path, key: ArtifactKey) -> int:
    with contextlib.closing(sqlite3.connect(home / "registry.db")) as db:
        query = "SELECT count(*) FROM replica JOIN artifact ON artifact.id = replica.artifact_id "
        return db.execute(query + "WHERE artifact.key = ?", (key.relstr,)).fetchone()[0]


def _debris(home: Path, md5: str) -> list[Path]:
    """Anything left under A's cache for one md5 (drafts included)."""
    return [path for path in (home / "cache").rglob("*") if md5 in str(path)]


def _assert_no_token(text: str) -> None:
    for token in (READ_TOKEN, PUBLISH_TOKEN, BARE_TOKEN):
        assert token not in text


def test_b_obtains_every_artifact_from_a_over_http_with_no_rebuild_and_pushes_what_it_builds(
    node_a: dict, tmp_path: Path
) -> None:
    home_b = tmp_path / "b-home"
    pulled, pull_output = _run_json(
        home_b,
        _manifest(tmp_path / "b.tsv", BUILT_ON_A, reachable=False),
        _peer_env(node_a["base"], READ_TOKEN),
    )
    assert [row["error"] for row in pulled] == [None, None, None], pull_output
    for row in pulled:  # nothing staged, sorted or indexed on B: every artifact came from A
        assert row["assets"] == dict.fromkeys(("source", "sorted", "index"), "transferred")
        assert all(row["checks"].values())
    for name in BUILT_ON_A:
        for asset in ("source", "sorted", "index"):
            key = _key(name, asset)
            assert _marker(home_b, key) == _marker(node_a["home"], key)

    built, push_output = _run_json(
        home_b,
        _manifest(tmp_path / "new.tsv", [PUSHED_BY_B], reachable=True),
        _peer_env(node_a["base"], PUBLISH_TOKEN),
    )
    assert built[0]["error"] is None, push_output
    assert set(built[0]["assets"].values()) == {"built"}
    for asset in ("source", "sorted", "index"):
        key = _key(PUSHED_BY_B, asset)
        assert _marker(node_a["home"], key) == _marker(home_b, key)
        assert _registry_rows(node_a["home"], key) == 1
    md5 = md5_file(FILES / PUSHED_BY_B)
    served = requests.get(
        f"{node_a['base']}/data/{md5}", headers={"Authorization": f"Bearer {READ_TOKEN}"}
    )
    assert served.status_code == 200
    sorted_b = home_b / "cache" / _key(PUSHED_BY_B, "sorted").relstr
    data_name = _marker(home_b, _key(PUSHED_BY_B, "sorted"))["files"][0]["name"]
    assert served.content == (sorted_b / data_name).read_bytes()

    log_b = tmp_path / "b-serve.log"
    tokens_b = tmp_path / "b-tokens"
    tokens_b.write_text(f"{BARE_TOKEN}\n")
    with serving(home_b, log_b, env={"GENOFLOW_SERVE_TOKENS": str(tokens_b)}) as base_b:
        bam = md5_file(FILES / "sample3.bam")
        answer = requests.get(
            f"{base_b}/data/{bam}", headers={"Authorization": f"Bearer {BARE_TOKEN}"}
        )
        assert answer.status_code == 200 and answer.content[:4] == b"\x1f\x8b\x08\x04"
    _assert_no_token(pull_output + push_output + log_b.read_text() + node_a["log"].read_text())
    _assert_no_token("".join(path.read_text() for path in home_b.rglob("*.json")))
    _assert_no_token((home_b / "registry.db").read_bytes().decode("latin-1"))


def _push(base: str, token: str | None, key: ArtifactKey, files: dict[str, bytes], marker: bytes):
    """A push by hand: each file into a draft, then the marker; the commit's answer."""
    draft = "ab" * 16
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for name, body in files.items():
        put = requests.put(
            f"{base}/peer/v1/drafts/{draft}/{key.relstr}/{name}",
            data=body,
            headers={**headers, "Content-Range": f"bytes 0-{len(body) - 1}/{len(body)}"},
        )
        if put.status_code != 200:
            return put
    return requests.post(
        f"{base}/peer/v1/commit/{draft}/{key.relstr}", data=marker, headers=headers
    )


def _marker_for(key: ArtifactKey, files: dict[str, bytes], **changes) -> bytes:
    from genoflow.storage.marker import FileEntry, content_checksum

    entries = [FileEntry(name, len(body), md5_file_bytes(body)) for name, body in files.items()]
    marker = {
        "format_version": 1,
        "asset": key.asset_path,
        "source_md5": key.md5,
        "version": key.version,
        "processor": "hand.made",
        "files": [entry.__dict__.copy() for entry in entries],
        "checksum": content_checksum(entries),
        "inputs": [],
        "tools": {},
        "details": {},
        "created_at": "2026-01-01T00:00:00+00:00",
        "created_by": {"host": "forger", "pid": 1},
    }
    marker.update(changes)
    return json.dumps(marker).encode()


def md5_file_bytes(body: bytes) -> str:
    import hashlib

    return hashlib.md5(body).hexdigest()


def test_a_forged_marker_or_a_file_that_does_not_match_is_refused_and_leaves_nothing(
    node_a: dict,
) -> None:
    key = _key(FORGED, "source")
    files = {FORGED: (FILES / FORGED).read_bytes()}
    forged_md5 = json.loads(_marker_for(key, files))
    forged_md5["files"][0]["md5"] = "0" * 32  # the marker lies about the file
    forged_md5["checksum"] = "0" * 32
    tampered = {FORGED: files[FORGED][:-1] + b"X"}  # the file is not the one the marker lists
    other_key = {"source_md5": md5_file(FILES / UNREGISTERED)}
    cases = [
        (files, json.dumps(forged_md5).encode(), "md5"),
        (tampered, _marker_for(key, files), "md5"),
        (files, _marker_for(key, files, checksum="f" * 32), "checksum"),
        (files, _marker_for(key, files, **other_key), "another artifact"),
        (files, b"{not json", "not JSON"),
    ]
    for pushed, marker, reason in cases:
        answer = _push(node_a["base"], PUBLISH_TOKEN, key, pushed, marker)
        assert answer.status_code == 422 and reason in answer.json()["error"]
        assert _debris(node_a["home"], key.md5) == []  # no draft, no folder
        assert _registry_rows(node_a["home"], key) == 0
    unregistered = _key(UNREGISTERED, "source")
    gtf = {UNREGISTERED: (FILES / UNREGISTERED).read_bytes()}
    answer = _push(node_a["base"], PUBLISH_TOKEN, unregistered, gtf, _marker_for(unregistered, gtf))
    assert answer.status_code == 422 and "not registered" in answer.json()["error"]
    existing = _key("enhancers.bed", "source")
    bed = {"enhancers.bed": (FILES / "enhancers.bed").read_bytes()}
    answer = _push(node_a["base"], PUBLISH_TOKEN, existing, bed, _marker_for(existing, bed))
    assert answer.status_code == 409
    assert _marker(node_a["home"], existing)["processor"] != "hand.made"

    answer = _push(node_a["base"], PUBLISH_TOKEN, key, files, _marker_for(key, files))
    assert answer.status_code == 201  # the same push, honest, is taken
    assert _registry_rows(node_a["home"], key) == 1
    log = node_a["log"].read_text()
    assert f"POST /peer/v1/commit/{'ab' * 16}/{key.relstr}" in log  # pushes are logged...
    _assert_no_token(log)  # ...without their tokens


def test_only_a_publish_token_may_push(node_a: dict, tmp_path: Path) -> None:
    key = _key(REFUSED, "source")
    files = {REFUSED: (FILES / REFUSED).read_bytes()}
    marker = _marker_for(key, files)
    assert _push(node_a["base"], None, key, files, marker).status_code == 401
    for token in (READ_TOKEN, BARE_TOKEN, "not-a-token-at-all"):
        answer = _push(node_a["base"], token, key, files, marker)
        assert answer.status_code == (401 if token.startswith("not") else 403)
        assert token not in answer.text
    assert _debris(node_a["home"], key.md5) == []

    rows, output = _run_json(
        tmp_path / "b-home",
        _manifest(tmp_path / "b.tsv", [REFUSED], reachable=True),
        _peer_env(node_a["base"], READ_TOKEN),
    )
    assert rows[0]["error"] is not None and "403" in rows[0]["error"], output
    assert "publish scope" in rows[0]["error"] and "could not be removed" not in rows[0]["error"]
    assert _debris(node_a["home"], key.md5) == []
    assert _registry_rows(node_a["home"], key) == 0
    _assert_no_token(output + node_a["log"].read_text())


def test_a_peer_is_https_unless_its_host_is_named_insecure_and_its_token_is_never_shown() -> None:
    env = {"GENOFLOW_REPLICAS": "http://127.0.0.1:8080", "GENOFLOW_PEER_TOKEN": READ_TOKEN}
    with pytest.raises(ConfigError, match="GENOFLOW_PEER_INSECURE_HOSTS") as refused:
        Settings.from_env(env)
    assert READ_TOKEN not in str(refused.value)
    allowed = {**env, "GENOFLOW_PEER_INSECURE_HOSTS": "127.0.0.1:8080"}
    assert Settings.from_env(allowed).replicas == ("http://127.0.0.1:8080",)
    assert Settings.from_env({"GENOFLOW_REPLICAS": "https://peer:8443"}).replicas
    with pytest.raises(ConfigError, match="base URL"):
        Settings.from_env({"GENOFLOW_REPLICAS": f"https://user:{READ_TOKEN}@peer:8443"})
    assert READ_TOKEN not in repr(PeerSettings.from_env(env))

    from genoflow.storage.peer import peer_locations

    (peer,) = peer_locations(["https://peer:8443"], token=READ_TOKEN)
    assert READ_TOKEN not in repr(peer) + peer.uri("intervals/ab/x/source/v1/genoflow.json")


def test_a_tokens_file_line_may_name_scopes_and_a_bare_token_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{BARE_TOKEN}\n{READ_TOKEN} read\n{PUBLISH_TOKEN}\tread,publish\n")
    tokens = Tokens(path)
    assert tokens.allows(BARE_TOKEN) and not tokens.allows(BARE_TOKEN, "publish")
    assert tokens.allows(READ_TOKEN) and not tokens.allows(READ_TOKEN, "publish")
    assert tokens.allows(PUBLISH_TOKEN) and tokens.allows(PUBLISH_TOKEN, "publish")
    assert not tokens.allows("peer-unknown")
    path.write_text(f"{PUBLISH_TOKEN} write\n")
    with pytest.raises(GenoflowError, match="line 1: unknown scope 'write'") as refused:
        Tokens(path)
    assert PUBLISH_TOKEN not in str(refused.value)


def test_a_file_larger_than_one_request_body_is_pushed_in_chunks_and_pulled_back_verified(
    node_a: dict, tmp_path: Path
) -> None:
    from genoflow.storage.marker import MARKER
    from genoflow.storage.peer import CHUNK, peer_locations
    from genoflow.storage.transfer import stage

    key = _key(CHUNKED, "source")
    body = bytes(range(256)) * ((CHUNK * 5 // 2) // 256) + b"tail"
    (tmp_path / "big").write_bytes(body)
    (tmp_path / MARKER).write_bytes(_marker_for(key, {"data.gff3": body}))
    (peer,) = peer_locations([node_a["base"]], token=PUBLISH_TOKEN)
    sent = peer.put(tmp_path / "big", f"{key.relstr}/data.gff3")
    assert (sent.size, sent.md5) == (len(body), md5_file_bytes(body))
    peer.put(tmp_path / MARKER, f"{key.relstr}/{MARKER}", if_absent=True)
    assert _registry_rows(node_a["home"], key) == 1

    (reader,) = peer_locations([node_a["base"]], token=READ_TOKEN)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    staged = stage(reader, key.relstr, scratch, expected=None)
    assert staged.files["data.gff3"].read_bytes() == body
