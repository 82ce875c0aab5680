"""``/data/{id}``, ``/index/{id}`` and ``/files/{md5}/{name}``: published artifacts, by range.

Invariants:
- every file served is one of a published artifact's files, found through the catalog; the
  request's identifier is only compared with registry values and ``name`` only with suffixes,
  so no part of a request becomes a path;
- ``/files/{md5}/{name}``: ``name`` is free (letters, digits, ``._+-``) so that a tool can save
  the file under a name of its own; it must end with the artifact's data suffix (``.bam``,
  ``.gz``, or a passthrough format's own, e.g. ``.csv``) for the data, and with that plus the
  index's suffix (``.bai``, ``.csi``, ``.tbi``) for the index — exactly where htslib and igv.js
  look for an index beside a data URL;
- a miss (the artifact is not published): ``HEAD`` answers 404 and starts nothing; ``GET`` asks
  ``app.state.builds`` for the build (one per md5, across processes) and answers what
  :func:`genoflow.serve.jobs.miss_response` says (202 with ``Location: /jobs/{id}``, or the
  failed job's error and when a retry may start).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
import weakref
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Scope, Send

from genoflow.core.formats import FORMAT_SUFFIX
from genoflow.serve.auth import Tokens
from genoflow.serve.catalog import (
    MD5,
    MEMO_SIZE,
    AmbiguousName,
    Catalog,
    Files,
    Source,
    UnknownSource,
)
from genoflow.serve.middleware import MAX_HEADERS, MAX_TARGET, log_access
from genoflow.serve.ranges import (
    CHUNK,
    RangeError,
    Representation,
    file_response,
    parse_range,
    read_at,
)

MAX_IDENT = 1024
_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,254}")
INDEX_SUFFIXES = (".bai", ".csi", ".tbi")
OCTETS = "application/octet-stream"  # BAM and the indexes have no registered media type
MEDIA_TYPES = {
    # BGZF is gzip (RFC 6713): never Content-Encoding, or clients would inflate it.
    ".gz": "application/gzip",
    ".bgz": "application/gzip",
    ".csv": "text/csv",
    ".tsv": "text/tab-separated-values",
    **dict.fromkeys((".bam", ".bai", ".csi", ".tbi", ".bw", ".bb"), OCTETS),
}


def media_type(path: Path) -> str:
    """The Content-Type of a served file, by its suffix; other text formats are ``text/plain``
    (with ``nosniff``, a browser never renders them)."""
    return MEDIA_TYPES.get(path.suffix.lower(), "text/plain")


def data_suffix(source: Source) -> str:
    """The suffix a ``/files`` name must end with to ask for a source's data file."""
    if source.family == "alignments":
        return ".bam"
    if source.family == "intervals":
        return ".gz"
    return "." + FORMAT_SUFFIX.get(source.format, source.format)


def file_name(source: Source) -> str:
    """A ``/files`` name for a source's data: its first manifest name, made safe, with the data
    suffix (``trio.vcf`` → ``trio.vcf.gz``)."""
    base = re.sub(r"[^A-Za-z0-9._+-]", "_", source.names[0].rsplit("/", 1)[-1]).lstrip(".")
    suffix = data_suffix(source)
    return (base or "data") + ("" if base.endswith(suffix) else suffix)


def _problem(status: int, message: str, **extra: object) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _representation(files: Files, path: Path) -> Representation:
    """The representation of one of ``files``' files, made once per :class:`Files` (whose
    headers are then formatted once too)."""
    key = (id(files), path)
    found = _REPS.get(key)
    if found is not None and found[0] is files:
        return found[1]
    entry = next(e for e in files.artifact.entries if e.name == path.name)
    created = dt.datetime.fromisoformat(files.artifact.marker.created_at)
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.UTC)
    rep = Representation(path, entry.size, entry.md5, created, media_type(path))
    if len(_REPS) >= MEMO_SIZE:
        _REPS.clear()  # bounded, like the memos it follows
    _REPS[key] = (files, rep)
    return rep


# Representations by (id of the Files they belong to, path); the Files is kept to check identity.
_REPS: dict[tuple[int, Path], tuple[Files, Representation]] = {}


def _located(catalog: Catalog, ident: str, raw: bool) -> tuple[Source, Files | None]:
    """The source and its files (the staged source itself with ``raw``), or None while unbuilt."""
    source = catalog.resolve(ident)
    if not raw:
        return source, catalog.files(source)
    artifact = catalog.source_artifact(source)
    return source, None if artifact is None else Files(artifact, artifact.main, None)


# Published files found per catalog, by (identifier, raw), until the catalog's memo_seconds pass.
_Hot = dict[tuple[str, bool], tuple[float, Source, Files]]
_HOT: weakref.WeakKeyDictionary[Catalog, _Hot] = weakref.WeakKeyDictionary()


async def _locate(catalog: Catalog, ident: str, raw: bool) -> tuple[Source, Files | None]:
    """:func:`_located`, answered on the event loop while a hit is remembered (a range read then
    costs no thread hand-off); anything else (first sight, a miss, expiry) asks the catalog in a
    worker thread, since that may query the registry and read a marker."""
    hot = _HOT.setdefault(catalog, {})
    found = hot.get((ident, raw))
    if found is not None and found[0] > time.monotonic():
        return found[1], found[2]
    source, files = await run_in_threadpool(_located, catalog, ident, raw)
    if files is not None:
        if len(hot) >= MEMO_SIZE:
            hot.clear()  # bounded: a flood of distinct ids costs lookups, never memory
        hot[(ident, raw)] = (time.monotonic() + catalog.memo_seconds, source, files)
    return source, files


def _forget(catalog: Catalog, source: Source) -> None:
    """Drop what is remembered of a source's files, here and in the catalog."""
    hot = _HOT.get(catalog, {})
    for key in [key for key, found in hot.items() if found[1].md5 == source.md5]:
        hot.pop(key, None)
    catalog.forget(source)


async def serve(request: Request, ident: str, want: str, *, raw: bool = False) -> Response:
    """Answer a GET or HEAD for a source's ``data`` or ``index`` file.

    Args:
        request: the request (its app's state holds the catalog and the builds).
        ident: an md5, or a manifest name only one md5 has.
        want: ``data`` or ``index``.
        raw: serve the verified source bytes instead of the visualization-ready file.
    """
    if len(ident) > MAX_IDENT:
        return _problem(404, "no registered source has this md5 or name")
    catalog: Catalog = request.app.state.catalog
    try:
        source, files = await _locate(catalog, ident, raw)
    except UnknownSource:
        return _problem(404, "no registered source has this md5 or name", id=ident)
    except AmbiguousName as exc:
        return _problem(409, "several sources have this name: ask for one by md5", md5s=exc.md5s)
    if want == "index" and source.family == "passthrough":
        return _problem(404, f"{source.format} files have no index", md5=source.md5)
    if files is None:
        return await _miss(request, source)
    path = files.data if want == "data" else files.index
    if path is None:
        return _problem(404, f"{source.format} files have no index", md5=source.md5)
    if not path.is_file():  # removed under us (repair, invalidation): look again next time
        _forget(catalog, source)
        return await _miss(request, source)
    return file_response(request.headers, request.method, _representation(files, path))


async def _miss(request: Request, source: Source) -> Response:
    if request.method == "HEAD":
        return _problem(404, "not built yet: a GET starts its build", md5=source.md5)
    from genoflow.serve.jobs import miss_response, start_build  # the jobs module answers

    job = await start_build(request, source)
    return job if isinstance(job, Response) else miss_response(job)


async def data(request: Request) -> Response:
    raw = request.query_params.get("raw", "").lower() in ("1", "true", "yes")
    return await serve(request, request.path_params["ident"], "data", raw=raw)


async def index(request: Request) -> Response:
    return await serve(request, request.path_params["ident"], "index")


async def named(request: Request) -> Response:
    """``/files/{md5}/{name}``: the data or its index, by htslib's naming convention."""
    md5, name = request.path_params["md5"], request.path_params["name"]
    if not MD5.fullmatch(md5) or not _NAME.fullmatch(name):
        return _problem(404, "no such file: /files/{md5}/{name}.{suffix}")
    catalog: Catalog = request.app.state.catalog
    try:
        source = await run_in_threadpool(catalog.resolve, md5)
    except UnknownSource:
        return _problem(404, "no registered source has this md5", id=md5)
    suffix = data_suffix(source)
    if name.endswith(suffix) and len(name) > len(suffix):
        return await serve(request, md5, "data")
    stem, _, tail = name.rpartition(".")
    if "." + tail in INDEX_SUFFIXES and stem.endswith(suffix) and len(stem) > len(suffix):
        files = await run_in_threadpool(catalog.files, source)
        built = files.index if files is not None else None
        if built is not None and built.suffix != "." + tail:
            return _problem(404, f"this artifact's index is a {built.suffix} file", md5=md5)
        return await serve(request, md5, "index")
    return _problem(404, f"a name here ends with {suffix} (data) or {suffix}.bai/.csi/.tbi")


# ---- The hot path: a GET of a small range of a remembered artifact, answered without routing.
# Any request header named here sends the request through the whole application instead (CORS
# for an Origin, conditional requests, a request body).
_FULL = frozenset((b"origin", b"if-match", b"if-none-match", b"if-modified-since", b"if-range",
                   b"content-length", b"transfer-encoding"))  # fmt: skip
_VARY = (b"vary", b"Origin")  # what the CORS layer adds to an answer to a request without Origin


async def answer_hot(state: Any, scope: Scope, send: Send) -> bool:
    """Answer a plain ``GET`` of at most :data:`~genoflow.serve.ranges.CHUNK` bytes of a file
    whose artifact is remembered (see :func:`_locate`) exactly as the whole application would:
    same status, headers (validators, caching, ``Vary: Origin`` from CORS, ``private`` behind a
    token), body and access-log line, without its router and layers. Returns False, having
    sent nothing, for anything else; the application then answers.

    A plain GET has no query string and no header of :data:`_FULL`, its head is within the
    bounds, it carries a valid bearer token when tokens are on, and it asks for one
    satisfiable range of at most a chunk (or a whole file of at most a chunk).

    Args:
        state: the application's ``app.state`` (its ``catalog`` and ``tokens``).
        scope: the ASGI scope of an HTTP request.
        send: the ASGI send callable.
    """
    started = time.perf_counter()
    if scope["method"] != "GET" or scope["query_string"]:
        return False
    found = _hot_file(getattr(state, "catalog", None), scope["path"])
    if found is None or len(scope.get("raw_path") or b"") > MAX_TARGET:
        return False
    rep = _representation(*found)
    asked = _plain_request(scope, rep, getattr(state, "tokens", None))
    if asked is None:
        return False
    (start, end), ranged, private = asked
    try:
        fd = os.open(rep.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # removed under us: the application forgets it and answers the miss
        return False
    try:
        body = await read_at(fd, start, end - start, rep.path, end)
    except RangeError:  # shorter than its marker says: the application answers (and raises)
        return False
    finally:
        os.close(fd)
    if len(body) != end - start:
        return False
    headers = [*(rep.private_headers if private else rep.raw_headers)]
    status = 206 if ranged else 200
    if ranged:
        headers.append((b"content-range", b"bytes %d-%d/%d" % (start, end - 1, rep.size)))
    headers += [
        (b"content-type", rep.media_type.encode()),
        (b"content-length", b"%d" % len(body)),
        _VARY,
    ]
    try:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
    finally:
        log_access(scope, status, len(body), started)
    return True


def _hot_file(catalog: Catalog | None, path: str) -> tuple[Files, Path] | None:
    """The remembered files and the one file a ``/data``, ``/index`` or ``/files`` path names
    (as :func:`serve` and :func:`named` would find it), or None."""
    if catalog is None:
        return None
    kind, _, rest = path[1:].partition("/")
    ident, want = rest, kind
    if kind == "files":
        ident, slash, name = rest.partition("/")
        if not slash or not MD5.fullmatch(ident) or not _NAME.fullmatch(name):
            return None
    elif kind not in ("data", "index"):
        return None
    found = _HOT.get(catalog, {}).get((ident, False))
    if found is None or found[0] <= time.monotonic():
        return None
    _, source, files = found
    if kind == "files":
        suffix = data_suffix(source)
        want = "data" if name.endswith(suffix) and len(name) > len(suffix) else "index"
        stem, _, tail = name.rpartition(".")
        if want == "index" and not (
            files.index is not None
            and files.index.suffix == "." + tail
            and stem.endswith(suffix)
            and len(stem) > len(suffix)
        ):
            return None
    if want == "index" and (files.index is None or source.family == "passthrough"):
        return None
    return files, files.data if want == "data" else files.index


def _plain_request(
    scope: Scope, rep: Representation, tokens: Tokens | None
) -> tuple[tuple[int, int], bool, bool] | None:
    """The span ``[start, end)`` a plain GET asks for, whether by a Range header, and whether
    it needed a token; None when the request is not plain (see :func:`answer_hot`)."""
    size, header, authorization = 0, None, None
    for name, value in scope["headers"]:
        size += len(name) + len(value)
        if name in _FULL:
            return None
        if name == b"range" and header is None:
            header = value.decode("latin-1")
        elif name == b"authorization" and authorization is None:
            authorization = value.decode("latin-1")
    if size > MAX_HEADERS:
        return None
    if tokens is not None:
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or not tokens.allows(token):
            return None
    span: tuple[int, int] | None = (0, rep.size)
    if header is not None:
        try:
            span = parse_range(header, rep.size)
        except RangeError:
            return None
    if span is None or span[1] - span[0] > CHUNK or span[1] <= span[0]:
        return None
    return span, header is not None, tokens is not None


def routes() -> list[Route]:
    """The file routes, for :func:`genoflow.serve.app.create_app`."""
    methods = ["GET", "HEAD"]
    return [
        Route("/data/{ident:path}", data, methods=methods),
        Route("/index/{ident:path}", index, methods=methods),
        Route("/files/{md5}/{name}", named, methods=methods),
    ]
