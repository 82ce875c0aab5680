"""Measure ``genoflow serve`` against peer servers: range reads, htsget tickets, memory, a miss.

Invariants:
- every server listens on 127.0.0.1 only and every load is bounded in time (``wrk -d``) or in
  count (the htsget regions, the job polls);
- peers are measured in one invocation on the same files: nginx serves the very BAM genoflow
  published (its cache file), htsgetr reads the very BAM, VCF and indexes (linked into its data
  folder); measurements alternate (the peer first on even repeats, genoflow first on odd ones;
  per htsget region the two servers alternate too) so neither side always runs second;
- every server started is stopped with its whole process group, even when a measurement fails;
- the report replaces only the "Serving" section of ``results.md`` (between its markers), so
  ``run.py``'s sections and this one live in one file.

With ``--baseline REF`` the range reads also measure genoflow as of git revision ``REF`` (its
``genoflow`` package exported into ``work/serve/baseline-*`` and put first on ``PYTHONPATH``),
in the same alternation: before and after in one run. With ``--only``, the other sections of
``results.md`` are kept as they were, each with the command that measured it.

Usage: ``python benchmarks/serve.py [--scale 1] [--workers 2] [--duration 300] [--only ranges]
[--seconds 8] [--repeats 2] [--baseline REF]``
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "work" / "serve"
HTSGETR_VENV = HERE / "work" / "htsgetr-venv"
HTSGETR_VERSION = "0.1.0"
GENOFLOW = [sys.executable, "-m", "genoflow.cli"]
SPAN = 64 * 1024
FOLLOWED = 20
LEVELS = (1, 16, 64)
SECTIONS = ("ranges", "htsget", "memory", "miss")
HEADINGS = {"ranges": "### Range reads", "htsget": "### htsget tickets",
            "memory": "### Server memory", "miss": "### Miss to first byte"}  # fmt: skip
BEFORE = "genoflow before"  # the side measured with --baseline
BEGIN, END = "<!-- serve.py: begin -->", "<!-- serve.py: end -->"
# The htsgetr 0.1.0 wheel names its extension _htsgetr but exports PyInit_htsgetr, so
# ``import htsgetr`` fails; load the extension under the name it was built with.
HTSGETR_LAUNCH = """
import glob, importlib.machinery as m, importlib.util as u, os, sys
where = u.find_spec("htsgetr").submodule_search_locations[0]
loader = m.ExtensionFileLoader("htsgetr", glob.glob(os.path.join(where, "_htsgetr*.so"))[0])
module = u.module_from_spec(u.spec_from_loader("htsgetr", loader))
loader.exec_module(module)
module.HtsgetServer(sys.argv[1], host="127.0.0.1", port=int(sys.argv[2])).run()
"""


# ----------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    """Until ``url`` answers anything over HTTP (any status), or the server exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:g} s: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def started(
    argv: list[str], probe: str, log: Path, env: dict[str, str] | None = None, stop: int = 2
) -> Iterator[subprocess.Popen]:
    """A server in a session of its own, ready when ``probe`` answers; stopped with signal
    ``stop`` (SIGINT), then its whole group killed."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=out, env=env, start_new_session=True, cwd=WORK
        )
    try:
        _wait_ready(probe, proc, log)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, stop)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def genoflow_env(home: Path) -> dict[str, str]:
    env = {**os.environ, "GENOFLOW_HOME": str(home), "GENOFLOW_ALLOWED_ROOTS": str(HERE)}
    env.pop("DAGSTER_HOME", None)
    return env


@contextlib.contextmanager
def genoflow_serve(
    home: Path, workers: int, name: str, source: Path | None = None
) -> Iterator[tuple[str, int]]:
    """``genoflow serve --workers N`` on a free loopback port: (base URL, server pid); the
    ``genoflow`` package of folder ``source`` when given (a baseline), else the installed one."""
    port = free_port()
    argv = [*GENOFLOW, "serve", "--port", str(port), "--workers", str(workers)]
    base = f"http://127.0.0.1:{port}"
    env = genoflow_env(home)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(source), env.get("PYTHONPATH", "")]).rstrip(":")
    with started(argv, base + "/data/none", WORK / f"{name}.log", env) as proc:
        yield base, proc.pid


def baseline_tree(ref: str) -> Path:
    """The ``genoflow`` package as of git revision ``ref``, exported under ``work/serve``."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short=12", f"{ref}^{{commit}}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    tree = WORK / f"baseline-{commit}"
    if not (tree / "genoflow").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", commit, "genoflow"], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def nginx_config(prefix: Path, port: int, path: Path, workers: int) -> Path:
    """A private nginx config serving ``path`` at ``/bench.bam`` on 127.0.0.1:``port``."""
    for sub in ("tmp", "logs"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    user = "user root;" if os.geteuid() == 0 else ""
    temps = " ".join(
        f"{kind}_temp_path {prefix}/tmp/{kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"worker_processes {workers}; daemon off; master_process on; {user}\n"
        f"pid {prefix}/nginx.pid; error_log {prefix}/logs/error.log warn;\n"
        "events { worker_connections 1024; }\n"
        # tcp_nopush (Debian's default) corks each 64 KiB answer for a 40 ms delayed ACK on
        # loopback: ~2 MB/s at one client. Measure nginx at its best: sendfile without it.
        f"http {{ access_log {prefix}/logs/access.log; sendfile on; tcp_nopush off;\n"
        f"  keepalive_requests 1000000; {temps}\n"
        f"  server {{ listen 127.0.0.1:{port};\n"
        f"    location = /bench.bam {{ alias {path}; default_type application/octet-stream; }}\n"
        "  } }\n"
    )
    return conf


@contextlib.contextmanager
def nginx_serve(path: Path, workers: int) -> Iterator[str]:
    """Debian's nginx serving ``path`` (base URL; the file at ``/bench.bam``)."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    prefix = WORK / "nginx"
    conf = nginx_config(prefix, port, path, workers)
    argv = [nginx, "-p", str(prefix), "-c", str(conf)]
    base = f"http://127.0.0.1:{port}"
    with started(argv, base + "/bench.bam", WORK / "nginx.log", stop=signal.SIGQUIT):
        yield base


def ensure_htsgetr() -> Path:
    """The python of a virtualenv holding htsgetr (PyPI), made on first use."""
    python = HTSGETR_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(HTSGETR_VENV)], check=True)
    found = subprocess.run([str(python), "-m", "pip", "show", "htsgetr"], capture_output=True)
    if found.returncode != 0:
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"htsgetr=={HTSGETR_VERSION}"], check=True
        )
    return python


@contextlib.contextmanager
def htsgetr_serve(files: dict[str, Path]) -> Iterator[str]:
    """htsgetr over a folder of links to ``files`` (link name → target)."""
    data = WORK / "htsgetr-data"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    for name, target in files.items():
        (data / name).symlink_to(target)
    port = free_port()
    argv = [str(ensure_htsgetr()), "-c", HTSGETR_LAUNCH, str(data), str(port)]
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "RUST_LOG": "warn"}
    with started(argv, base + "/service-info", WORK / "htsgetr.log", env):
        yield base


# ----------------------------------------------------------------------------- the artifacts


@dataclass(frozen=True)
class Artifact:
    """One published artifact: the source md5 the service knows it by, and its files."""

    md5: str
    data: Path
    index: Path


def manifest(path: Path, rows: list[tuple[str, Path]]) -> Path:
    from genoflow.core.checksums import md5_file

    lines = ["name\turi\tmd5"] + [f"{name}\t{src}\t{md5_file(src)}" for name, src in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def genoflow_cli(home: Path, *args: str) -> None:
    done = subprocess.run(
        [*GENOFLOW, *args], env=genoflow_env(home), capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"genoflow {args[0]} failed: {done.stdout[-1500:]}{done.stderr[-1500:]}")


def built(home: Path, name: str) -> Artifact:
    """The published files of the source named ``name`` in ``home``."""
    from genoflow.core.settings import Settings
    from genoflow.serve.catalog import Catalog
    from genoflow.storage.cache import Cache
    from genoflow.storage.registry import Registry

    settings = Settings.from_env(genoflow_env(home))
    registry = Registry(settings.registry_target)
    try:
        catalog = Catalog(registry, Cache(settings.cache_root))
        source = catalog.resolve(name)
        files = catalog.files(source)
    finally:
        registry.close()
    if files is None or files.index is None:
        raise RuntimeError(f"{name} is not published in {home}")
    return Artifact(source.md5, files.data, files.index)


def build_home(scale: float) -> tuple[Path, Artifact, Artifact]:
    """The BAM and VCF of ``generate.py`` at ``scale``, built by ``genoflow run`` (a cache hit
    when they are already built)."""
    from generate import ensure_input

    home = WORK / f"home-x{scale:g}"
    rows = [("bench.bam", ensure_input("bam", scale=scale))]
    rows.append(("bench.vcf", ensure_input("vcf", scale=scale)))
    began = time.perf_counter()
    genoflow_cli(home, "run", str(manifest(WORK / "bench.tsv", rows)))
    print(f"genoflow run: {time.perf_counter() - began:.0f} s", flush=True)
    return home, built(home, "bench.bam"), built(home, "bench.vcf")


# ----------------------------------------------------------------------------- range reads

DONE_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "bytes": %d, "us": %d, "p50": %d, "p99": %d, "errors": %d}\\n',
    summary.requests, summary.bytes, summary.duration, latency:percentile(50),
    latency:percentile(99), e.connect + e.read + e.write + e.status + e.timeout))
end
"""
RANGE_LUA = """
local size, span, path = %(size)d, %(span)d, "%(path)s"
local thread_id = 0
setup = function(thread) thread:set("seed", %(seed)d + thread_id); thread_id = thread_id + 1 end
init = function(args) math.randomseed(seed) end
request = function()
  local first = math.random(0, size - span)
  local range = "bytes=" .. first .. "-" .. (first + span - 1)
  return wrk.format("GET", path, {["Range"] = range})
end
"""


@dataclass
class Load:
    """One wrk measurement: a side, a client count, and what wrk counted."""

    side: str
    clients: int
    repeat: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def mbps(self) -> float:
        return self.requests * SPAN / self.seconds / 1e6


def wrk(url: str, script: Path, clients: int, seconds: float) -> dict:
    """``wrk`` against ``url`` for ``seconds`` with ``clients`` connections; its WRKJSON line."""
    argv = ["wrk", f"-t{min(clients, 2)}", f"-c{clients}", f"-d{seconds:g}s", "--timeout", "10s",
            "-s", str(script), url]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {done.stdout[-800:]}{done.stderr[-800:]}")
    return json.loads(line.removeprefix("WRKJSON "))


def range_script(name: str, size: int, path: str, seed: int) -> Path:
    script = WORK / f"{name}.lua"
    script.write_text(
        RANGE_LUA % {"size": size, "span": SPAN, "path": path, "seed": seed} + DONE_LUA
    )
    return script


def range_reads(args: argparse.Namespace, bam: Artifact, home: Path) -> list[Load]:
    """Random 64 KiB ranges at each client count, the sides (nginx, genoflow, and the
    baseline genoflow with ``--baseline``) taking turns: each repeat starts one side later."""
    size = bam.data.stat().st_size
    subprocess.run(["cat", str(bam.data)], stdout=subprocess.DEVNULL, check=True)  # page cache
    loads: list[Load] = []
    baseline = baseline_tree(args.baseline) if args.baseline else None
    with contextlib.ExitStack() as stack:
        nginx = stack.enter_context(nginx_serve(bam.data, args.workers))
        ours, _ = stack.enter_context(genoflow_serve(home, args.workers, "genoflow-ranges"))
        path = f"/data/{bam.md5}"
        targets = {
            "nginx": (nginx + "/bench.bam", range_script("nginx", size, "/bench.bam", 1)),
            "genoflow": (ours + path, range_script("genoflow", size, path, 1)),
        }
        if baseline is not None:
            before, _ = stack.enter_context(
                genoflow_serve(home, args.workers, "genoflow-baseline", baseline)
            )
            targets[BEFORE] = (before + path, range_script("baseline", size, path, 1))
        for url, script in targets.values():
            wrk(url, script, 16, 3)  # warm-up: imports, first lookups, connections
        sides = list(targets)
        for clients in LEVELS:
            for repeat in range(args.repeats):
                turn = repeat % len(sides)
                for side in sides[turn:] + sides[:turn]:
                    url, script = targets[side]
                    got = wrk(url, script, clients, args.seconds)
                    loads.append(_load(side, clients, repeat, got))
                    print(f"ranges {side} c={clients} r={repeat}: {loads[-1].mbps:.0f} MB/s, "
                          f"p50 {loads[-1].p50_ms:.2f} ms", flush=True)  # fmt: skip
    return loads


def _load(side: str, clients: int, repeat: int, got: dict) -> Load:
    return Load(
        side, clients, repeat, got["requests"], got["us"] / 1e6, got["p50"] / 1e3,
        got["p99"] / 1e3, got["errors"],
    )  # fmt: skip


# ----------------------------------------------------------------------------- htsget


@dataclass
class Tickets:
    """Ticket latencies and the bytes each ticket makes a client fetch, for one server and kind."""

    side: str
    kind: str
    ms: list[float] = field(default_factory=list)
    fetch: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    followed: int = 0  # URLs fetched from the first FOLLOWED tickets
    refused: int = 0  # of those, URLs the server did not answer with 200 or 206


def regions(contigs: dict[str, int], count: int, seed: int) -> list[tuple[str, int, int]]:
    """Random regions: a contig by length, a width log-uniform in 1 kbp–1 Mbp."""
    rng = random.Random(seed)
    names, sizes = list(contigs), list(contigs.values())
    chosen = []
    for _ in range(count):
        name = rng.choices(names, weights=sizes)[0]
        width = int(10 ** rng.uniform(3, 6))
        start = rng.randrange(0, max(1, contigs[name] - width))
        chosen.append((name, start, min(start + width, contigs[name])))
    return chosen


class Client:
    """One keep-alive HTTP/1.1 connection to a loopback server."""

    def __init__(self, base: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def get(self, target: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        self.conn.request("GET", target, headers=headers or {})
        response = self.conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.conn.close()


def ticket_bytes(ticket: dict, whole: int) -> int:
    """The bytes a client fetches to follow ``ticket``: inline data, then per URL its Range
    header, else its ``start``/``end`` query (htsgetr's form, end exclusive), else the whole
    file (``whole`` bytes)."""
    total = 0
    for item in ticket["htsget"]["urls"]:
        url = item["url"]
        if url.startswith("data:"):
            total += len(base64.b64decode(url.split(",", 1)[1]))
            continue
        spec = {k.lower(): v for k, v in item.get("headers", {}).items()}.get("range", "")
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", spec)
        if match and match.group(2):
            total += int(match.group(2)) - int(match.group(1)) + 1
        elif "start" in query and "end" in query:
            total += int(query["end"]) - int(query["start"])
        else:
            total += whole - (int(match.group(1)) if match else 0)
    return total


def one_ticket(client: Client, target: str, into: Tickets, whole: int) -> None:
    began = time.perf_counter()
    status, body = client.get(target)
    into.ms.append((time.perf_counter() - began) * 1000)
    if status != 200:
        into.errors.append(f"{status} {target}: {body[:200]!r}")
        return
    ticket = json.loads(body)
    into.fetch.append(ticket_bytes(ticket, whole))
    if len(into.fetch) <= FOLLOWED:
        for item in ticket["htsget"]["urls"]:
            if not item["url"].startswith("data:"):
                into.followed += 1
                into.refused += not _fetches(item["url"], item.get("headers", {}))


def _fetches(url: str, headers: dict[str, str]) -> bool:
    """Whether a ticket's URL answers 200 or 206 (read to the end)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as response:
            response.read()
            return response.status in (200, 206)
    except urllib.error.HTTPError:
        return False


def htsget(args: argparse.Namespace, bam: Artifact, vcf: Artifact, home: Path) -> list[Tickets]:
    """Ticket latency over ``args.regions`` random regions per kind, genoflow and htsgetr
    alternating region by region on one keep-alive connection each."""
    import pysam

    with pysam.AlignmentFile(str(bam.data)) as reads:
        contigs = dict(zip(reads.references, reads.lengths, strict=True))
    links = {"bench.bam": bam.data, "bench.bam" + bam.index.suffix: bam.index,
             "bench.vcf.gz": vcf.data, "bench.vcf.gz" + vcf.index.suffix: vcf.index}  # fmt: skip
    results = []
    with htsgetr_serve(links) as peer, genoflow_serve(home, args.workers, "genoflow-htsget") as (
        ours, _,
    ):  # fmt: skip
        for kind, art in (("reads", bam), ("variants", vcf)):
            ids = {"genoflow": (ours, art.md5), "htsgetr": (peer, "bench")}
            whole = art.data.stat().st_size
            results += _tickets(kind, ids, regions(contigs, args.regions, seed=14), whole)
    return results


def _tickets(
    kind: str, ids: dict[str, tuple[str, str]], chosen: list[tuple[str, int, int]], whole: int
) -> list[Tickets]:
    clients = {side: Client(base) for side, (base, _) in ids.items()}
    out = {side: Tickets(side, kind) for side in ids}
    try:
        for side, (_, ident) in ids.items():  # warm-up: one header ticket each
            clients[side].get(f"/{kind}/{ident}?class=header")
        for i, (name, start, end) in enumerate(chosen):
            order = list(ids) if i % 2 == 0 else list(reversed(ids))
            for side in order:
                query = f"referenceName={name}&start={start}&end={end}"
                one_ticket(clients[side], f"/{kind}/{ids[side][1]}?{query}", out[side], whole)
    finally:
        for client in clients.values():
            client.close()
    for tickets in out.values():
        print(f"htsget {kind} {tickets.side}: p50 {pct(tickets.ms, 50):.2f} ms, "
              f"{len(tickets.errors)} errors", flush=True)  # fmt: skip
    return list(out.values())


# ----------------------------------------------------------------------------- memory

MIXED_LUA = """
local size, span, md5 = %(size)d, %(span)d, "%(md5)s"
local contigs = {%(contigs)s}
local n = 0
request = function()
  n = n + 1
  if n %% 8 == 0 then
    local c = contigs[math.random(1, #contigs)]
    local start = math.random(0, math.max(1, c[2] - 100000))
    return wrk.format("GET", "/reads/" .. md5 .. "?referenceName=" .. c[1] .. "&start=" ..
      start .. "&end=" .. (start + 100000))
  end
  local first = math.random(0, size - span)
  return wrk.format("GET", "/data/" .. md5, {["Range"] = "bytes=" .. first .. "-" ..
    (first + span - 1)})
end
"""


@dataclass
class Memory:
    """Summed RSS of the server's processes, sampled once a second under load."""

    seconds: float
    samples: list[tuple[float, float]]  # (seconds since the load began, MB)
    processes: int
    requests: int
    errors: int

    def window(self, low: float, high: float) -> float:
        """The median MB over ``[low, high)`` of the run, as fractions of its length."""
        span = self.samples[-1][0] or 1
        chosen = [mb for t, mb in self.samples if low * span <= t < high * span + 1e-9]
        return statistics.median(chosen or [self.samples[-1][1]])


def session_rss(session: int) -> tuple[float, int]:
    """MB resident summed over the processes of ``session``, and how many there are."""
    total, count, page = 0, 0, os.sysconf("SC_PAGE_SIZE")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[3]) == session:
                total += int(stat.with_name("statm").read_text().split()[1]) * page
                count += 1
        except (OSError, IndexError, ValueError):  # the process ended while being read
            continue
    return total / (1 << 20), count


def memory(args: argparse.Namespace, bam: Artifact, home: Path) -> Memory:
    """The server under 64 clients for ``args.duration`` seconds (7 in 8 requests a 64 KiB
    range, 1 in 8 an htsget ticket for a random 100 kbp region), its RSS sampled every second."""
    import pysam

    with pysam.AlignmentFile(str(bam.data)) as reads:
        named = zip(reads.references, reads.lengths, strict=True)
        contigs = ", ".join(f'{{"{n}", {size}}}' for n, size in named if size > 200_000)
    script = WORK / "mixed.lua"
    text = MIXED_LUA % {"size": bam.data.stat().st_size, "span": SPAN, "md5": bam.md5,
                        "contigs": contigs}  # fmt: skip
    script.write_text(text + DONE_LUA)
    with genoflow_serve(home, args.workers, "genoflow-memory") as (base, pid):
        wrk(base + "/", script, 64, 5)  # warm-up
        argv = ["wrk", "-t2", "-c64", f"-d{args.duration:g}s", "--timeout", "10s", "-s",
                str(script), base + "/"]  # fmt: skip
        began = time.perf_counter()
        load = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        samples, count = [], 0
        while load.poll() is None:
            mb, count = session_rss(pid)
            samples.append((time.perf_counter() - began, mb))
            time.sleep(1)
        out = load.stdout.read() if load.stdout else ""
    (WORK / "memory.tsv").write_text("".join(f"{t:.1f}\t{mb:.1f}\n" for t, mb in samples))
    line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
    got = json.loads(line.removeprefix("WRKJSON ")) if line else {"requests": 0, "errors": -1}
    return Memory(args.duration, samples, count, got["requests"], got["errors"])


# ----------------------------------------------------------------------------- a miss


@dataclass
class Miss:
    """From a GET of an unbuilt 10 MB BAM to the first byte of its artifact."""

    size_mb: float
    accepted_s: float
    succeeded_s: float
    first_byte_s: float
    polls: int
    steps: list[tuple[str, float]]
    status: str


def miss(args: argparse.Namespace) -> Miss:
    """Register a ~10 MB BAM in a fresh home, then GET it: 202, poll /jobs, GET the data."""
    from generate import ensure_input

    src = ensure_input("bam", scale=args.miss_scale)
    home = WORK / "miss-home"
    shutil.rmtree(home, ignore_errors=True)
    genoflow_cli(home, "register", str(manifest(WORK / "miss.tsv", [("small.bam", src)])))
    with genoflow_serve(home, args.workers, "genoflow-miss") as (base, _):
        client = Client(base)
        try:
            return _follow_miss(client, src.stat().st_size / 1e6)
        finally:
            client.close()


def _follow_miss(client: Client, size_mb: float) -> Miss:
    """GET → 202, poll ``/jobs/{id}`` (or, where the server has no jobs route, GET the data
    again) every 0.1 s until done, then time the first byte of a 64 KiB range."""
    began = time.perf_counter()
    status, body = client.get("/data/small.bam")
    accepted = time.perf_counter() - began
    if status != 202:
        raise RuntimeError(f"a miss answered {status}, not 202: {body[:300]!r}")
    job, polls, via = json.loads(body), 0, "/jobs"
    while job["status"] not in ("succeeded", "failed") and time.perf_counter() - began < 900:
        time.sleep(0.1)
        polls += 1
        status, body = client.get(job["url"] if via == "/jobs" else "/data/small.bam")
        if status == 404 and via == "/jobs":
            via = "/data"  # no /jobs route: a GET of the data answers 202 until it is built
        elif status in (200, 202):
            job = {**job, **json.loads(body)} if via == "/jobs" or status == 202 else job
        if via == "/data" and status == 200:
            job["status"] = "succeeded"
    succeeded = time.perf_counter() - began
    client.conn.request("GET", "/data/small.bam", headers={"Range": f"bytes=0-{SPAN - 1}"})
    response = client.conn.getresponse()
    response.read(1)
    first = time.perf_counter() - began
    response.read()
    steps = [(s["step"], _seconds(s["started"], s["ended"])) for s in job.get("steps", [])]
    return Miss(size_mb, accepted, succeeded, first, polls, steps, f"{job['status']} ({via})")


def _seconds(started: str | None, ended: str | None) -> float:
    import datetime as dt

    if not started or not ended:
        return float("nan")
    return (dt.datetime.fromisoformat(ended) - dt.datetime.fromisoformat(started)).total_seconds()


# ----------------------------------------------------------------------------- the report


def pct(values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def ranges_section(loads: list[Load], workers: int, seconds: float, baseline: str = "") -> str:
    before = (
        f" `{BEFORE}` is genoflow as of `{baseline}`, measured in the same turns."
        if baseline
        else ""
    )
    lines = [
        f"Random {SPAN >> 10} KiB ranges of the BAM, `wrk` on loopback for {seconds:g} s per "
        f"measurement, medians over repeats, the sides taking turns; genoflow `serve --workers "
        f"{workers}` (uvicorn), nginx `worker_processes {workers}` with sendfile (tcp_nopush "
        f"off), both logging every request.{before}\n",
        "| clients | side | MB/s | requests/s | p50 ms | p99 ms | errors | / nginx MB/s |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for clients in LEVELS:
        med = {}
        for side in ("nginx", BEFORE, "genoflow"):
            runs = [x for x in loads if x.clients == clients and x.side == side]
            if runs:
                med[side] = [statistics.median(getattr(x, k) for x in runs)
                             for k in ("mbps", "rps", "p50_ms", "p99_ms")] + [
                    sum(x.errors for x in runs)]  # fmt: skip
        for side, (mbps, rps, p50, p99, errors) in med.items():
            ratio = f"{mbps / med['nginx'][0]:.2f}" if side != "nginx" and "nginx" in med else ""
            lines.append(f"| {clients} | {side} | {mbps:.0f} | {rps:.0f} | {p50:.2f} | {p99:.2f} "
                         f"| {errors} | {ratio} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def htsget_section(results: list[Tickets], count: int) -> str:
    lines = [
        f"{count} random regions per endpoint (a contig by length, width log-uniform in "
        "1 kbp–1 Mbp), one keep-alive client, the two servers alternating region by region. "
        "Bytes fetched: inline data plus every Range a ticket lists (a URL without one counts "
        "the whole file).\n",
        "| endpoint | side | p50 ms | p99 ms | mean KB fetched | median KB fetched | errors "
        f"| URLs refused (first {FOLLOWED} tickets) | genoflow / htsgetr p50 | p99 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in dict.fromkeys(t.kind for t in results):
        by = {t.side: t for t in results if t.kind == kind}
        for side, t in by.items():
            ratio = ""
            if side == "genoflow" and "htsgetr" in by:
                peer = by["htsgetr"].ms
                ratio = f"{pct(t.ms, 50) / pct(peer, 50):.2f} | {pct(t.ms, 99) / pct(peer, 99):.2f}"
            mean = statistics.mean(t.fetch) / 1e3 if t.fetch else float("nan")
            median = statistics.median(t.fetch) / 1e3 if t.fetch else float("nan")
            lines.append(
                f"| /{kind} | {side} | {pct(t.ms, 50):.2f} | {pct(t.ms, 99):.2f} "
                f"| {mean:.0f} | {median:.0f} | {len(t.errors)} | {t.refused} of {t.followed} "
                f"| {ratio or ' |'} |"
            )
    errors = [e for t in results for e in t.errors[:2]]
    return "\n".join(lines) + "\n" + "".join(f"\n- error: `{e}`" for e in errors) + "\n"


def memory_section(m: Memory, workers: int) -> str:
    early, late = m.window(0.1, 0.2), m.window(0.9, 1.0)
    growth = late - early
    flat = "yes" if growth <= max(5.0, 0.05 * early) else "no"
    peak = max(mb for _, mb in m.samples)
    return (
        f"`genoflow serve --workers {workers}` ({m.processes} processes) under 64 `wrk` clients "
        f"for {m.seconds:g} s (7 in 8 requests a 64 KiB range, 1 in 8 an htsget ticket for a "
        "random 100 kbp region); summed RSS of every server process, sampled each second.\n\n"
        "| seconds | requests | errors | RSS MB at 10–20 % | at 90–100 % | peak | growth MB "
        "| flat (growth ≤ max(5 MB, 5 %)) |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        f"| --- |\n| {m.seconds:g} | {m.requests} | {m.errors} | {early:.0f} | {late:.0f} "
        f"| {peak:.0f} | {growth:+.1f} | {flat} |\n\nMedian RSS MB per tenth of the run: "
        f"{', '.join(f'{m.window(i / 10, (i + 1) / 10):.0f}' for i in range(10))} (every "
        "sample in `work/serve/memory.tsv`).\n"
    )


def miss_section(m: Miss) -> str:
    steps = ", ".join(f"{name} {s:.1f} s" for name, s in m.steps) or "none reported"
    return (
        f"A {m.size_mb:.0f} MB BAM registered (not built) in a fresh home; `GET /data` → 202, "
        "`/jobs/{id}` polled every 0.1 s until it succeeded, then a 64 KiB range.\n\n"
        "| BAM MB | 202 after s | job succeeded after s | first byte after s | polls | job |\n"
        "| ---: | ---: | ---: | ---: | ---: | --- |\n"
        f"| {m.size_mb:.0f} | {m.accepted_s:.3f} | {m.succeeded_s:.1f} | {m.first_byte_s:.1f} "
        f"| {m.polls} | {m.status} |\n\nThe job's steps: {steps}.\n"
    )


def write_section(output: Path, text: str) -> None:
    """Put ``text`` between the markers in ``output``, replacing what was there."""
    old = output.read_text() if output.exists() else ""
    block = f"{BEGIN}\n{text.rstrip()}\n{END}\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + block + rest.split(END, 1)[1].lstrip("\n")
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + block
    output.write_text(new)


def merge_sections(old: str, measured: dict[str, str]) -> str:
    """The serving section: the subsections of ``measured`` (section name → its text, heading
    first) in place of the old ones, the others of ``old`` kept, in :data:`SECTIONS` order. A
    kept subsection that does not name its run gets the line the old section began with."""
    body = old.split(BEGIN, 1)[1].split(END, 1)[0] if BEGIN in old and END in old else ""
    head, *chunks = re.split(r"(?m)^(?=### )", body)
    run = re.search(r"(?m)^Run on .*$", head)
    kept = {}
    for chunk in chunks:
        name = next((n for n, h in HEADINGS.items() if chunk.startswith(h)), None)
        if name is not None and name not in measured:
            if run and "Run on " not in chunk:
                title, _, rest = chunk.partition("\n")
                chunk = f"{title}\n\n{run.group(0)}\n{rest}"
            kept[name] = chunk.rstrip() + "\n"
    parts = {**kept, **measured}
    intro = "## Serving\n\nEach subsection names the run that measured it.\n"
    return "\n".join([intro, *(parts[name] for name in SECTIONS if name in parts)])


def kept_section(output: Path) -> str:
    """The serving section of ``output`` with its markers (for ``run.py``, which rewrites the
    file), or ``""``."""
    old = output.read_text() if output.exists() else ""
    if BEGIN not in old or END not in old:
        return ""
    return "\n" + BEGIN + old.split(BEGIN, 1)[1].split(END, 1)[0] + END + "\n"


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated subset")
    parser.add_argument("--scale", type=float, default=1.0, help="BAM/VCF size, 1 = 300/200 MB")
    parser.add_argument("--workers", type=int, default=2, help="genoflow and nginx processes")
    parser.add_argument("--seconds", type=float, default=8, help="wrk seconds per measurement")
    parser.add_argument("--repeats", type=int, default=2, help="range measurements per side")
    parser.add_argument("--regions", type=int, default=1000, help="htsget regions per endpoint")
    parser.add_argument("--duration", type=float, default=300, help="memory run, seconds")
    parser.add_argument("--miss-scale", type=float, default=0.033, help="miss BAM (~10 MB)")
    parser.add_argument("--output", type=Path, default=HERE / "results.md")
    parser.add_argument("--baseline", help="git revision of genoflow to measure too (ranges)")
    args = parser.parse_args(argv)
    args.argv, args.only = argv, args.only.split(",")
    if set(args.only) - set(SECTIONS) or args.repeats < 1 or args.workers < 1:
        parser.error(f"choose sections from {', '.join(SECTIONS)}; repeats, workers >= 1")
    nginx = shutil.which("nginx") or Path("/usr/sbin/nginx").exists()
    if shutil.which("wrk") is None or not nginx:
        parser.error("needs Debian's wrk and nginx: apt-get install -y wrk nginx")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on `timeout`
    today = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    command = shlex.join(["python", "benchmarks/serve.py", *args.argv])
    ran = f"Run on {today} with `{command}`.\n"
    measured: dict[str, str] = {}
    if {"ranges", "htsget", "memory"} & set(args.only):
        home, bam, vcf = build_home(args.scale)
        size = f"{bam.data.stat().st_size / 1e6:.0f} MB BAM"
    for section in args.only:  # each section is written as soon as it is measured
        if section == "ranges":
            loads = range_reads(args, bam, home)
            text = ranges_section(loads, args.workers, args.seconds, args.baseline or "")
            title = f"Range reads ({size})"
        elif section == "htsget":
            text = htsget_section(htsget(args, bam, vcf, home), args.regions)
            vcf_mb = vcf.data.stat().st_size / 1e6
            title = f"htsget tickets ({size}, {vcf_mb:.0f} MB VCF.gz)"
        elif section == "memory":
            text = memory_section(memory(args, bam, home), args.workers)
            title = "Server memory"
        else:
            text, title = miss_section(miss(args)), "Miss to first byte"
        measured[section] = f"### {title}\n\n{ran}\n{text}"
        old = args.output.read_text() if args.output.exists() else ""
        write_section(args.output, merge_sections(old, measured))
        print(measured[section], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
