"""GA4GH DRS 1.2 under ``/ga4gh/drs/v1/``: every source and every built file as a DRS object.

Endpoints: ``GET service-info``; ``GET``/``POST objects/{id}`` (POST takes DRS 1.2's JSON body;
its ``expand``, like the query's, changes nothing, as no bundle here nests another, and its
``passports`` are not credentials here: bearer tokens are); ``OPTIONS objects/{id}`` (the
authorizations a client needs); ``GET``/``POST objects/{id}/access/{access_id}``, whose one
``access_id`` is ``https``. Blobs' access methods have DRS's type ``https`` (DRS 1.2 has no
``http``), with an ``http://`` URL when the server is reached over plain HTTP.

Object ids (derived from the source md5 alone, so a client holding a manifest row can name every
object of it, built or not):

- ``{md5}`` (or ``{md5}.source``): the staged, verified source bytes (``/data/{md5}?raw=true``);
- ``{md5}.sorted``: the sorted BAM or BGZF file (``/files/{md5}/{name}``);
- ``{md5}.index``: its ``.bai``/``.csi``/``.tbi`` (``/files/{md5}/{name}.{suffix}``);
- ``{md5}.bundle``: a bundle whose ``contents`` are the two above.

Invariants:
- an id is parsed into an md5 and a role and only compared with registry values; every size,
  checksum, time and name comes from the artifact's ``genoflow.json`` and the cache layout;
- every answer that is not an object is DRS's error JSON ``{"msg": …, "status_code": …}`` with
  that status; the refusals of :mod:`genoflow.serve.middleware` (401, 403, bounds) on these
  paths have the same shape;
- an access URL points at this service's own ``/data`` or ``/files`` routes (absolute, from
  ``GENOFLOW_PUBLIC_URL`` or the request's base URL); with bearer tokens on it is HMAC-signed
  (:mod:`genoflow.serve.signing`) for :data:`~genoflow.serve.signing.TICKET_TTL` seconds, so it
  needs no header, and the object is ``no-store``;
- an object not built yet starts (or joins) the md5's one build, as ``/data`` does, and answers
  ``202`` with ``Retry-After`` and ``Location: /jobs/{id}``; a failed build within its back-off
  answers ``503`` with ``Retry-After``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from genoflow import __version__
from genoflow.core.errors import GenoflowError, redact_text
from genoflow.serve.catalog import Catalog, Files, Source, UnknownSource
from genoflow.serve.files import file_name, media_type
from genoflow.serve.middleware import DRS_ROOT as PREFIX
from genoflow.serve.signing import sign

DRS_VERSION = "1.2.0"
ROLES = ("source", "sorted", "index", "bundle")
ACCESS_ID = "https"  # the one access method of every blob
_ID = re.compile(r"([0-9a-f]{32})(?:\.(source|sorted|index|bundle))?")
_SAFE = re.compile(r"[^A-Za-z0-9._-]")
NO_STORE = {"Cache-Control": "no-store"}


class DrsError(GenoflowError):
    """A DRS request the server answers with DRS's error JSON and ``status``."""

    default_stage = "drs"

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}

    def response(self) -> Response:
        return error_response(self.status, self.message, self.headers)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """DRS's error JSON: ``{"msg": message, "status_code": status}``."""
    body = {"msg": message, "status_code": status}
    return JSONResponse(body, status_code=status, headers={**NO_STORE, **(headers or {})})


@dataclass(frozen=True)
class ObjectId:
    """A parsed DRS id: the source md5 and which of its objects (one of :data:`ROLES`)."""

    md5: str
    role: str

    @property
    def text(self) -> str:
        """The canonical id (``{md5}`` for the source, ``{md5}.{role}`` otherwise)."""
        return self.md5 if self.role == "source" else f"{self.md5}.{self.role}"


def parse_id(ident: str) -> ObjectId:
    """The md5 and role an object id names.

    Raises:
        DrsError: 404, the id is not ``{md5}`` or ``{md5}.{role}``.
    """
    found = _ID.fullmatch(ident)
    if found is None:
        roles = ", ".join(f".{role}" for role in ROLES[1:])
        raise DrsError(404, f"no DRS object has this id: ids are a source md5, or it with {roles}")
    return ObjectId(found.group(1), found.group(2) or "source")


def routes() -> list[Route]:
    """The DRS routes, for :func:`genoflow.serve.app.create_app`."""
    return [
        Route(f"{PREFIX}/service-info", info, methods=["GET"]),
        Route(PREFIX + "/objects/{ident}", get_object, methods=["GET", "POST"]),
        Route(PREFIX + "/objects/{ident}", authorizations, methods=["OPTIONS"]),
        Route(PREFIX + "/objects/{ident}/access/{access_id}", access, methods=["GET", "POST"]),
        Route(PREFIX + "/{rest:path}", unknown, methods=["GET", "POST", "HEAD"]),
    ]


def service_info() -> dict[str, Any]:
    """GA4GH service-info of the DRS endpoint (type ``org.ga4gh:drs:1.2.0``)."""
    return {
        "id": "org.genoflow.drs",
        "name": "genoflow DRS",
        "type": {"group": "org.ga4gh", "artifact": "drs", "version": DRS_VERSION},
        "description": "genoflow's registered sources and their sorted, indexed artifacts, "
        "as DRS objects ({md5}, {md5}.sorted, {md5}.index, {md5}.bundle).",
        "organization": {"name": "genoflow", "url": "https://github.com/genoflow"},
        "version": __version__,
    }


async def info(request: Request) -> Response:
    return JSONResponse(service_info())


async def unknown(request: Request) -> Response:
    return error_response(404, "no such DRS endpoint: see service-info, objects/{id} and "
                          "objects/{id}/access/{access_id}")  # fmt: skip


async def get_object(request: Request) -> Response:
    """``GET``/``POST objects/{id}``: the DRS object, 202 while it builds, or DRS's error."""
    try:
        await _body(request)
        oid = parse_id(request.path_params["ident"])
        source, files = await _built(request, oid)
        return JSONResponse(_object(request, oid, source, files), headers=NO_STORE)
    except DrsError as exc:
        return exc.response()


async def access(request: Request) -> Response:
    """``objects/{id}/access/{access_id}``: the blob's AccessURL (``{"url": …}``)."""
    try:
        await _body(request)
        oid = parse_id(request.path_params["ident"])
        if oid.role == "bundle" or request.path_params["access_id"] != ACCESS_ID:
            raise DrsError(404, f"this object has no such access_id: ask for {ACCESS_ID!r}")
        source, files = await _built(request, oid)
        return JSONResponse({"url": _access_url(request, oid, source, files)}, headers=NO_STORE)
    except DrsError as exc:
        return exc.response()


async def authorizations(request: Request) -> Response:
    """``OPTIONS objects/{id}``: how a client authorizes (DRS 1.2's Authorizations)."""
    try:
        oid = parse_id(request.path_params["ident"])
        await run_in_threadpool(_source, request.app.state.catalog, oid)
    except DrsError as exc:
        return exc.response()
    kind = "None" if request.app.state.serve.tokens_file is None else "BearerAuth"
    return JSONResponse({"drs_object_id": oid.text, "supported_types": [kind]})


async def _body(request: Request) -> dict[str, Any]:
    """A POST's JSON body (``expand``, ``passports``), or ``{}`` for a GET."""
    if request.method != "POST":
        return {}
    try:
        body = json.loads(await request.body() or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise DrsError(400, "the POST body is not JSON") from exc
    if not isinstance(body, dict):
        raise DrsError(400, "the POST body must be a JSON object")
    return body


def _source(catalog: Catalog, oid: ObjectId) -> Source:
    """The registered source of an id, checked to have the object it names."""
    try:
        source = catalog.resolve(oid.md5)
    except UnknownSource as exc:
        raise DrsError(404, f"no registered source has the md5 {oid.md5}") from exc
    if oid.role != "source" and source.family == "passthrough":
        raise DrsError(404, f"{source.format} sources are served as staged: only {oid.md5} exists")
    return source


def _located(catalog: Catalog, oid: ObjectId) -> tuple[Source, Files | None]:
    source = _source(catalog, oid)
    if oid.role != "source":
        return source, catalog.files(source)
    artifact = catalog.source_artifact(source)
    return source, None if artifact is None else Files(artifact, artifact.main, None)


async def _built(request: Request, oid: ObjectId) -> tuple[Source, Files]:
    """The source and its published files; otherwise the build starts and this raises."""
    source, files = await run_in_threadpool(_located, request.app.state.catalog, oid)
    if files is not None and all(path.is_file() for path in files.artifact.files):
        return source, files
    if files is not None:  # removed under us (repair, invalidation): look again next time
        request.app.state.catalog.forget(source)
    raise await _building(request, source)


async def _building(request: Request, source: Source) -> DrsError:
    """Start (or join) the md5's build: 202 with Retry-After, or 503 when it failed lately."""
    from genoflow.serve.jobs import POLL_AFTER, start_build  # the jobs module answers

    job = await start_build(request, source)
    if isinstance(job, Response):  # the server is shutting down
        wait = job.headers.get("retry-after", "5")
        return DrsError(
            503, "the server is shutting down; ask again", headers={"Retry-After": wait}
        )
    location = {"Location": f"/jobs/{job.id}"}
    if job.status != "failed":
        wait = str(POLL_AFTER.get(job.status, 5))
        message = f"not built yet: the build is {job.status} (job /jobs/{job.id}); retry after"
        return DrsError(202, f"{message} {wait} s", headers={**location, "Retry-After": wait})
    wait = max(0, math.ceil((job.retry_at or 0) - time.time()))
    error = redact_text(job.error or "unknown error")
    message = f"the build failed: {error}; a new attempt may start in {wait} s"
    return DrsError(503, message, headers={**location, "Retry-After": str(wait)})


def _object(request: Request, oid: ObjectId, source: Source, files: Files) -> dict[str, Any]:
    if oid.role == "bundle":
        return _bundle(request, oid, source, files)
    path = _path_of(oid, files)
    return {
        **_common(request, oid, source, files),
        "name": _name(oid, source, files),
        "size": _size_of(files, path),
        "mime_type": media_type(path),
        "checksums": [{"type": "md5", "checksum": files.md5_of(path)}],
        "access_methods": [
            {
                "type": "https",
                "access_id": ACCESS_ID,
                "access_url": {"url": _access_url(request, oid, source, files)},
            }
        ],
    }


def _bundle(request: Request, oid: ObjectId, source: Source, files: Files) -> dict[str, Any]:
    parts = [ObjectId(oid.md5, "sorted"), ObjectId(oid.md5, "index")]
    md5s = sorted(files.md5_of(_path_of(part, files)) for part in parts)
    host = _host(request)
    return {
        **_common(request, oid, source, files),
        "name": _name(oid, source, files),
        "size": sum(_size_of(files, _path_of(part, files)) for part in parts),
        # DRS: the md5 of the sorted concatenation of the contents' checksums.
        "checksums": [{"type": "md5", "checksum": hashlib.md5("".join(md5s).encode()).hexdigest()}],
        "contents": [
            {
                "name": _name(part, source, files),
                "id": part.text,
                "drs_uri": [f"drs://{host}/{part.text}"],
            }
            for part in parts
        ],
    }


def _common(request: Request, oid: ObjectId, source: Source, files: Files) -> dict[str, Any]:
    marker = files.artifact.marker
    created = marker.created_at
    return {
        "id": oid.text,
        "self_uri": f"drs://{_host(request)}/{oid.text}",
        "created_time": created,
        "updated_time": created,
        "version": f"{marker.asset}/v{marker.version}",
        "description": f"{source.format} source {source.md5}: {_ROLE_TEXT[oid.role]}",
        "aliases": list(source.names),
    }


_ROLE_TEXT = {
    "source": "the staged, verified source bytes",
    "sorted": "the coordinate-sorted, compressed file",
    "index": "the index of the sorted file",
    "bundle": "the sorted file and its index",
}


def _size_of(files: Files, path: Path) -> int:
    return next(entry.size for entry in files.artifact.entries if entry.name == path.name)


def _path_of(oid: ObjectId, files: Files) -> Path:
    """The published file an id names (the index, or else the data file)."""
    if oid.role == "index":
        if files.index is None:
            raise DrsError(404, "this artifact has no index file")
        return files.index
    return files.data


def _name(oid: ObjectId, source: Source, files: Files) -> str:
    """A portable file name ([A-Za-z0-9._-]) for an object: the ``/files`` name of the data
    (and of its index), or the source's first manifest name."""
    if oid.role == "source":
        base = _SAFE.sub("_", source.names[0].rsplit("/", 1)[-1]).lstrip(".")
        return base or oid.md5
    data = _SAFE.sub("_", file_name(source))
    if oid.role == "index" and files.index is not None:
        return data + files.index.suffix
    return data + (".bundle" if oid.role == "bundle" else "")


def _access_url(request: Request, oid: ObjectId, source: Source, files: Files) -> str:
    """An absolute URL of this service's route serving the blob, signed when tokens are on."""
    if oid.role == "source":
        path, query = f"/data/{oid.md5}", "raw=true"
    else:
        name = file_name(source)
        suffix = files.index.suffix if oid.role == "index" and files.index is not None else ""
        path, query = f"/files/{oid.md5}/{name}{suffix}", ""
    serve = request.app.state.serve
    if serve.tokens_file is not None:
        query = "&".join(q for q in (query, sign(serve.tokens_file, path)) if q)
    return _base(request) + path + (f"?{query}" if query else "")


def _base(request: Request) -> str:
    return request.app.state.serve.public_url or str(request.base_url).rstrip("/")


def _host(request: Request) -> str:
    """The ``host[:port]`` of the drs:// URIs: ``GENOFLOW_PUBLIC_URL``'s, or the request's."""
    return urlsplit(_base(request)).netloc
