"""Two genoflow nodes chained by DRS: node A builds and runs ``genoflow serve``; node B, with its
own home and no folder shared with A, builds from A's DRS ids — named in a plain manifest and as
the ``persistent_id`` of a C2M2 ``file.tsv`` — and gets A's outputs byte for byte. With A's bearer
tokens on, B builds only with its token, which appears nowhere; an object A has registered but
not built is waited for through A's ``202 Accepted``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from genoflow.core.errors import DrsError
from genoflow.manifests import c2m2
from genoflow.storage.drs import drs_object
from genoflow.storage.http_policy import HttpPolicy
from genoflow_tests.conftest import require_tool, run_cli
from genoflow_tests.support.serve import serving

pytestmark = pytest.mark.system  # starts genoflow serve (see pyproject markers)
TOKEN = "chain-token-5b0c2e7f9a1d4c36"
NS = "cfde_chain"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _bed(rng: random.Random, rows: int) -> str:
    lines = []
    for n in range(rows):
        start = rng.randrange(1, 90_000)
        lines.append(f"chr{rng.choice((1, 2, 10))}\t{start}\t{start + rng.randrange(5, 900)}\tr{n}")
    return "\n".join(lines) + "\n"


def _vcf(rng: random.Random, rows: int) -> str:
    header = [
        "##fileformat=VCFv4.2",
        *(f"##contig=<ID=chr{c},length=100000>" for c in (1, 2, 10)),
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO",
    ]
    places = sorted({(rng.choice((1, 2, 10)), rng.randrange(1, 99_000)) for _ in range(rows)})
    rng.shuffle(places)
    body = [f"chr{c}\t{pos}\t.\tA\tG\t50\tPASS\t." for c, pos in places]
    return "\n".join(header + body) + "\n"


def _sam(rng: random.Random, rows: int) -> str:
    lines = ["@HD\tVN:1.6\tSO:unsorted", "@SQ\tSN:chr1\tLN:100000", "@SQ\tSN:chr2\tLN:100000"]
    for n in range(rows):
        pos = rng.randrange(1, 99_000)
        seq = "".join(rng.choice("ACGT") for _ in range(30))
        chrom = f"chr{rng.choice((1, 2))}"
        lines.append(f"read{n}\t0\t{chrom}\t{pos}\t60\t30M\t*\t0\t0\t{seq}\t{'I' * 30}")
    return "\n".join(lines) + "\n"


@dataclass
class NodeA:
    """Node A: its home, the folder of its source files, and its sources by name."""

    home: Path
    folder: Path
    files: dict[str, Path]

    def md5(self, name: str) -> str:
        return _md5(self.files[name])


def _manifest(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path.write_text("\n".join(["name\turi\tmd5", *("\t".join(row) for row in rows)]) + "\n")
    return path


@pytest.fixture(scope="module")
def node_a(tmp_path_factory: pytest.TempPathFactory) -> NodeA:
    """A's home: an unsorted BED, VCF and BAM built; a second BED registered only."""
    folder = tmp_path_factory.mktemp("node-a")
    rng = random.Random(16)
    files = {name: folder / name for name in ("peaks.bed", "calls.vcf", "reads.bam", "later.bed")}
    files["peaks.bed"].write_text(_bed(rng, 400))
    files["calls.vcf"].write_text(_vcf(rng, 300))
    files["later.bed"].write_text(_bed(rng, 200))
    sam = folder / "reads.sam"
    sam.write_text(_sam(rng, 300))
    samtools = require_tool("samtools")
    subprocess.run([samtools, "view", "-b", "-o", str(files["reads.bam"]), str(sam)], check=True)
    node = NodeA(folder / "home", folder, files)
    env = {"GENOFLOW_ALLOWED_ROOTS": str(folder)}
    rows = [(n, str(p), _md5(p)) for n, p in files.items() if n != "later.bed"]
    built = run_cli(node.home, "run", str(_manifest(folder / "built.tsv", rows)), env=env)
    assert built.returncode == 0, built.stdout + built.stderr
    later = [("later.bed", str(files["later.bed"]), node.md5("later.bed"))]
    only = _manifest(folder / "later.tsv", later)
    registered = run_cli(node.home, "register", str(only), env=env)
    assert registered.returncode == 0, registered.stdout + registered.stderr
    return node


@dataclass
class Served:
    """A running ``genoflow serve`` of node A: where it answers and its log."""

    node: NodeA
    base: str
    log: Path

    @property
    def authority(self) -> str:
        return self.base.removeprefix("http://")

    def drs(self, name: str) -> str:
        return f"drs://{self.authority}/{self.node.md5(name)}"


def _serve(node: NodeA, folder: Path, env: dict[str, str]) -> Iterator[Served]:
    env = {"GENOFLOW_ALLOWED_ROOTS": str(node.folder), **env}
    with serving(node.home, folder / "serve.log", env) as base:
        yield Served(node, base, folder / "serve.log")


@pytest.fixture(scope="module")
def served(node_a: NodeA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from _serve(node_a, tmp_path_factory.mktemp("serve-open"), {})


@pytest.fixture(scope="module")
def guarded(node_a: NodeA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("serve-tokens")
    (folder / "tokens.txt").write_text(TOKEN + "\n")
    yield from _serve(node_a, folder, {"GENOFLOW_SERVE_TOKENS": str(folder / "tokens.txt")})


@dataclass
class NodeB:
    """One ``genoflow run`` on node B: its home and what it printed."""

    home: Path
    result: subprocess.CompletedProcess[str]

    @property
    def output(self) -> str:
        return self.result.stdout + self.result.stderr

    def records(self) -> dict[str, dict]:
        return {record["name"]: record for record in json.loads(self.result.stdout)}


def _run_b(folder: Path, a: Served, table: Path, extra: dict[str, str] | None = None) -> NodeB:
    """``genoflow run --json`` of ``table`` on a fresh home of B, trusting A's plain http."""
    env = {"GENOFLOW_DRS_INSECURE_HOSTS": a.authority, "GENOFLOW_ALLOWED_ROOTS": str(folder)}
    home = folder / "home"
    return NodeB(home, run_cli(home, "run", str(table), "--json", env={**env, **(extra or {})}))


BUILT = ("peaks.bed", "calls.vcf", "reads.bam")


@pytest.fixture(scope="module")
def plain_b(served: Served, tmp_path_factory: pytest.TempPathFactory) -> NodeB:
    """B runs a plain manifest naming A's DRS ids (md5 left empty: the DRS fills it)."""
    folder = tmp_path_factory.mktemp("node-b-plain")
    rows = [(name, served.drs(name), "") for name in BUILT]
    return _run_b(folder, served, _manifest(folder / "from_a.tsv", rows))


def _c2m2_table(path: Path, served: Served) -> Path:
    """A C2M2 file.tsv whose rows name A's DRS ids as persistent_id, access_url left empty."""
    formats = {"peaks.bed": "format:3003", "calls.vcf": "format:3016", "reads.bam": "format:2572"}
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, c2m2.C2M2_COLUMNS, delimiter="\t", restval="")
        writer.writeheader()
        for n, name in enumerate(BUILT, 1):
            file = served.node.files[name]
            writer.writerow(
                {
                    "id_namespace": NS,
                    "local_id": f"CHAIN{n:03d}",
                    "project_id_namespace": NS,
                    "project_local_id": "chain",
                    "persistent_id": served.drs(name),
                    "size_in_bytes": str(file.stat().st_size),
                    "sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
                    "md5": _md5(file),
                    "filename": name,
                    "file_format": formats[name],
                    "access_url": "",
                }
            )
    return path


@pytest.fixture(scope="module")
def c2m2_b(served: Served, tmp_path_factory: pytest.TempPathFactory) -> NodeB:
    folder = tmp_path_factory.mktemp("node-b-c2m2")
    return _run_b(folder, served, _c2m2_table(folder / "file.tsv", served))


def _outputs(home: Path, md5: str) -> dict[str, bytes]:
    """Every data file of an md5's artifacts (source, sorted, index), by asset and name."""
    found = {}
    for path in (home / "cache").glob(f"*/{md5[:2]}/{md5}/*/v*/*"):
        if path.name != "genoflow.json":
            found[f"{path.parent.parent.name}/{path.name}"] = path.read_bytes()
    return found


def _assert_same_outputs_as_a(node_a: NodeA, b: NodeB) -> None:
    for name in BUILT:
        md5 = node_a.md5(name)
        ours, theirs = _outputs(node_a.home, md5), _outputs(b.home, md5)
        assert {key.split("/")[0] for key in theirs} == {"source", "sorted", "index"}, theirs
        assert ours.keys() == theirs.keys(), name
        for key in ours:
            assert ours[key] == theirs[key], f"{name}: {key} differs between A and B"


def test_b_builds_every_source_a_plain_manifest_names_by_a_drs_id(plain_b, node_a) -> None:
    assert plain_b.result.returncode == 0, plain_b.output
    records = plain_b.records()
    for name in BUILT:
        assert records[name]["error"] is None, records[name]
        assert set(records[name]["assets"].values()) == {"built"}, records[name]
        assert records[name]["md5"] == node_a.md5(name)  # filled from A's DRS checksums


def test_b_outputs_from_a_plain_manifest_are_byte_identical_to_a(plain_b, node_a) -> None:
    _assert_same_outputs_as_a(node_a, plain_b)


def test_b_builds_a_c2m2_table_whose_persistent_ids_are_a_drs_ids(c2m2_b, node_a) -> None:
    assert c2m2_b.result.returncode == 0, c2m2_b.output
    records = c2m2_b.records()
    for n, name in enumerate(BUILT, 1):
        record = records[f"{NS}:CHAIN{n:03d} {name}"]
        assert record["error"] is None, record
        assert set(record["assets"].values()) == {"built"}, record
    _assert_same_outputs_as_a(node_a, c2m2_b)


def _artifact(home: Path, md5: str, asset: str, suffix: str) -> Path:
    (path,) = (home / "cache").glob(f"*/{md5[:2]}/{md5}/{asset}/v*/*{suffix}")
    return path


def _region(command: list[str]) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def test_b_outputs_answer_region_queries_like_a_under_samtools_and_tabix(
    c2m2_b, node_a, samtools, tabix
) -> None:
    bam, vcf = node_a.md5("reads.bam"), node_a.md5("calls.vcf")

    def reads(home: Path) -> str:
        data, index = _artifact(home, bam, "sorted", ".bam"), _artifact(home, bam, "index", ".bai")
        return _region([samtools, "view", "-X", str(data), str(index), "chr1:1-50000"])

    def calls(home: Path) -> str:
        data, index = _artifact(home, vcf, "sorted", ".gz"), _artifact(home, vcf, "index", ".tbi")
        return _region([tabix, f"{data}##idx##{index}", "chr2:1-50000"])

    assert reads(c2m2_b.home) == reads(node_a.home) != ""
    assert calls(c2m2_b.home) == calls(node_a.home) != ""


@pytest.fixture(scope="module")
def with_token(guarded: Served, tmp_path_factory: pytest.TempPathFactory) -> NodeB:
    """B, holding A's token for A's host and port, runs A's DRS id of the BED."""
    folder = tmp_path_factory.mktemp("node-b-token")
    table = _manifest(folder / "from_a.tsv", [("peaks.bed", guarded.drs("peaks.bed"), "")])
    return _run_b(folder, guarded, table, {"GENOFLOW_DRS_TOKENS": f"{guarded.authority}={TOKEN}"})


@pytest.fixture(scope="module")
def without_token(guarded: Served, tmp_path_factory: pytest.TempPathFactory) -> NodeB:
    """B, holding no token, runs A's DRS id of the BED beside a local file of its own."""
    folder = tmp_path_factory.mktemp("node-b-no-token")
    local = folder / "own.bed"
    local.write_text(_bed(random.Random(7), 50))
    rows = [("peaks.bed", guarded.drs("peaks.bed"), ""), ("own.bed", str(local), _md5(local))]
    return _run_b(folder, guarded, _manifest(folder / "from_a.tsv", rows))


def test_with_a_tokens_on_b_builds_with_its_token(with_token, node_a) -> None:
    assert with_token.result.returncode == 0, with_token.output
    record = with_token.records()["peaks.bed"]
    assert set(record["assets"].values()) == {"built"}, record
    md5 = node_a.md5("peaks.bed")
    assert _outputs(with_token.home, md5) == _outputs(node_a.home, md5)


def test_without_a_token_the_row_is_an_error_saying_401_and_what_to_set(
    without_token, guarded
) -> None:
    assert without_token.result.returncode != 0
    lines = [line for line in without_token.output.splitlines() if guarded.drs("peaks.bed") in line]
    assert lines, without_token.output
    assert "HTTP 401" in "\n".join(lines), without_token.output
    assert "GENOFLOW_DRS_TOKENS" in "\n".join(lines), without_token.output


def test_without_a_token_the_other_rows_still_build(without_token) -> None:
    records = without_token.records()
    assert "peaks.bed" not in records  # a row error, never a half-built source
    assert set(records["own.bed"]["assets"].values()) == {"built"}, records["own.bed"]


def test_the_token_appears_in_no_output_log_or_stored_file(
    with_token, without_token, guarded
) -> None:
    for b in (with_token, without_token):
        assert TOKEN not in b.output
        for path in b.home.rglob("*"):
            assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in guarded.log.read_text()
    for path in guarded.node.home.rglob("*"):
        assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path


@pytest.fixture(scope="module")
def unbuilt_b(served: Served, tmp_path_factory: pytest.TempPathFactory) -> NodeB:
    """B runs A's DRS id of a source A has registered but never built."""
    folder = tmp_path_factory.mktemp("node-b-unbuilt")
    table = _manifest(folder / "from_a.tsv", [("later.bed", served.drs("later.bed"), "")])
    return _run_b(folder, served, table)


def test_b_waits_through_a_202_while_a_builds_a_registered_source(unbuilt_b, node_a) -> None:
    assert unbuilt_b.result.returncode == 0, unbuilt_b.output
    record = unbuilt_b.records()["later.bed"]
    assert set(record["assets"].values()) == {"built"}, record
    md5 = node_a.md5("later.bed")
    assert _outputs(unbuilt_b.home, md5) == _outputs(node_a.home, md5)


class SlowDrs:
    """A DRS server on loopback whose one object answers ``status`` with ``Retry-After`` until
    ``ready_after`` seconds have passed since its first request (None: never), then the
    object; it records when each object request came."""

    def __init__(self, status: int, retry_after: int, ready_after: float | None) -> None:
        self.status, self.retry_after, self.ready_after = status, retry_after, ready_after
        self.asked: list[float] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def _ready(self) -> bool:
        waited = time.monotonic() - self.asked[0]
        return self.ready_after is not None and waited >= self.ready_after

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        self.asked.append(time.monotonic())
        if self._ready():
            url = f"http://{self.authority}/bytes"
            body = {"id": "slow", "size": 3, "checksums": [{"type": "md5", "checksum": "0" * 32}],
                    "access_methods": [{"type": "https", "access_url": {"url": url}}]}  # fmt: skip
            status, headers = 200, {}
        else:
            body = {"msg": "not ready", "status_code": self.status}
            status, headers = self.status, {"Retry-After": str(self.retry_after)}
        data = json.dumps(body).encode()
        handler.send_response(status)
        for name, value in {**headers, "Content-Type": "application/json"}.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        slow = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                slow._answer(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.asked, self.asked[1:], strict=False)]


@pytest.fixture
def slow_drs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., SlowDrs]]:
    started: list[SlowDrs] = []

    def start(status: int, retry_after: int, ready_after: float | None) -> SlowDrs:
        server = SlowDrs(status, retry_after, ready_after)
        started.append(server)
        monkeypatch.setenv("GENOFLOW_DRS_INSECURE_HOSTS", server.authority)
        return server

    yield start
    for server in started:
        server.server.shutdown()
        server.server.server_close()


def test_a_202_is_asked_again_after_its_retry_after_until_the_object_is_ready(slow_drs) -> None:
    # Ready after 9 s: longer than five back-offs of 0.5 to 4 s, the old give-up point.
    server = slow_drs(202, 2, ready_after=9)
    found = drs_object(f"drs://{server.authority}/slow", stage="stage")
    assert found.size == 3
    assert len(server.asked) >= 5
    assert all(gap >= 1.95 for gap in server.gaps()), server.gaps()


def test_a_202_past_the_policys_time_is_an_error_saying_the_object_is_still_being_prepared(
    slow_drs,
) -> None:
    server = slow_drs(202, 1, ready_after=None)
    uri = f"drs://{server.authority}/slow"
    with pytest.raises(DrsError) as raised:
        drs_object(uri, policy=HttpPolicy(max_seconds=3), stage="stage")
    assert raised.value.file == uri
    assert "still preparing the object (HTTP 202" in raised.value.message
    assert "run again" in str(raised.value)
    assert 2 <= len(server.asked) <= 4


def test_a_503_with_retry_after_is_asked_again_no_sooner_than_it_says(slow_drs) -> None:
    server = slow_drs(503, 2, ready_after=0.1)
    assert drs_object(f"drs://{server.authority}/slow", stage="stage").size == 3
    assert len(server.asked) == 2
    assert server.gaps()[0] >= 1.95, server.gaps()
