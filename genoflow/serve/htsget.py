"""GA4GH htsget 1.3: tickets whose URLs fetch a region of a published artifact from ``/data``.

Endpoints (``GET`` and ``POST``):

- ``/reads/{id}``: alignments, ``format=BAM`` (the default; CRAM answers UnsupportedFormat);
- ``/variants/{id}``: VCF, ``format=VCF`` (the default; BCF answers UnsupportedFormat);
- ``/intervals/{id}`` — genoflow's extension for the other tabix-indexed formats (BED,
  narrowPeak, broadPeak, GFF3, GTF; bigBed is served as the BED it was converted to): the same
  parameters as ``/variants``, ``format`` defaulting to the source's own (``BED``, ``GFF3``…);
- ``/service-info``, ``/reads/service-info``, ``/variants/service-info``,
  ``/intervals/service-info``: GA4GH service-info with the ``htsget`` extension.

Invariants:
- a ticket's ``urls``, fetched and concatenated in order, are a valid BAM or BGZF text file (see
  :mod:`genoflow.serve.blocks`): ``/data/{md5}`` with a ``Range`` header per byte range, inline
  ``data:`` URLs for record-complete pieces of partial blocks, and the EOF block last;
- URLs are absolute, built from ``GENOFLOW_PUBLIC_URL`` or else the request's own base URL;
  with bearer tokens on, each ``/data`` URL is HMAC-signed (:mod:`genoflow.serve.signing`), so a
  client that forwards no header still reads it;
- every error is htsget's JSON ``{"htsget": {"error": …, "message": …}}`` with the spec's status;
  those raised before a route runs (InvalidAuthentication, PermissionDenied, PayloadTooLarge and
  the request bounds) come from :mod:`genoflow.serve.middleware` in the same shape;
- a miss starts (or joins) the md5's one build and waits up to ``GENOFLOW_HTSGET_WAIT``
  seconds; not done by then, the answer is 503 with ``Retry-After``.
"""

from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from genoflow import __version__
from genoflow.core.errors import GenoflowError
from genoflow.serve.blocks import Inline, Piece, Region, UnknownReference, plan_for
from genoflow.serve.catalog import AmbiguousName, Catalog, Files, Source, UnknownSource
from genoflow.serve.signing import sign

MEDIA_TYPE = "application/vnd.ga4gh.htsget.v1.3.0+json"
OCTETS = "application/octet-stream"
MAX_REGIONS = 1024
MAX_POS = (1 << 32) - 1
STATUS = {
    "InvalidAuthentication": 401,
    "PermissionDenied": 403,
    "NotFound": 404,
    "UnsupportedFormat": 400,
    "InvalidInput": 400,
    "InvalidRange": 400,
    "ServiceUnavailable": 503,
}


class HtsgetError(GenoflowError):
    """An htsget request the server refuses; ``kind`` is the spec's error type."""

    default_stage = "htsget"

    def __init__(self, kind: str, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.kind, self.headers = kind, headers or {}

    def response(self) -> Response:
        body = {"htsget": {"error": self.kind, "message": self.message}}
        return _json(body, STATUS[self.kind], self.headers)


@dataclass(frozen=True)
class Endpoint:
    """One htsget data type: its path, the sources it serves and the formats it speaks."""

    datatype: str
    formats: tuple[str, ...]

    def accepts(self, source: Source) -> bool:
        if self.datatype == "reads":
            return source.family == "alignments"
        if source.family != "intervals":
            return False
        return (source.format == "vcf") == (self.datatype == "variants")

    def format_of(self, source: Source) -> str:
        if self.datatype != "intervals":
            return self.formats[0]
        return "BED" if source.format == "bigBed" else source.format.upper()


READS = Endpoint("reads", ("BAM",))
VARIANTS = Endpoint("variants", ("VCF",))
INTERVALS = Endpoint("intervals", ("BED", "NARROWPEAK", "BROADPEAK", "GFF3", "GTF"))
ENDPOINTS = (READS, VARIANTS, INTERVALS)


@dataclass(frozen=True)
class Query:
    """A parsed htsget request: the format asked for, header-only or not, and the regions."""

    format: str | None
    header_only: bool
    regions: tuple[Region, ...]


def routes() -> list[Route]:
    """The htsget routes, for :func:`genoflow.serve.app.create_app`."""
    found = [Route("/service-info", _info(READS), methods=["GET"])]
    for endpoint in ENDPOINTS:
        base = f"/{endpoint.datatype}"
        found.append(Route(f"{base}/service-info", _info(endpoint), methods=["GET"]))
        found.append(Route(base + "/{ident:path}", _ticket(endpoint), methods=["GET", "POST"]))
    return found


def _json(body: dict[str, Any], status: int = 200, headers: dict | None = None) -> Response:
    return JSONResponse(body, status, headers=headers, media_type=MEDIA_TYPE)


def service_info(endpoint: Endpoint) -> dict[str, Any]:
    """GA4GH service-info for one htsget data type."""
    return {
        "id": f"org.genoflow.htsget.{endpoint.datatype}",
        "name": f"genoflow htsget ({endpoint.datatype})",
        "type": {"group": "org.ga4gh", "artifact": "htsget", "version": "1.3.0"},
        "description": "Regions of genoflow's sorted, indexed artifacts, as htsget tickets.",
        "organization": {"name": "genoflow", "url": "https://github.com/genoflow"},
        "version": __version__,
        "htsget": {
            "datatype": endpoint.datatype,
            "formats": list(endpoint.formats),
            "fieldsParametersEffective": False,
            "tagsParametersEffective": False,
        },
    }


def _info(endpoint: Endpoint):
    async def info(request: Request) -> Response:
        return _json(service_info(endpoint))

    return info


def _ticket(endpoint: Endpoint):
    async def ticket(request: Request) -> Response:
        try:
            return await _answer(request, endpoint)
        except HtsgetError as exc:
            return exc.response()

    return ticket


async def _answer(request: Request, endpoint: Endpoint) -> Response:
    fields = await _fields(request)
    query = parse_query(fields)
    catalog: Catalog = request.app.state.catalog
    source = await run_in_threadpool(_resolve, catalog, request.path_params["ident"], endpoint)
    wanted = (query.format or endpoint.format_of(source)).upper()
    if wanted != endpoint.format_of(source):
        raise HtsgetError("UnsupportedFormat", f"{wanted} is not served here: ask for "
                          f"{endpoint.format_of(source)}")  # fmt: skip
    files = await run_in_threadpool(catalog.files, source)
    if files is None:
        files = await _built(request, source)
    pieces = await run_in_threadpool(_pieces, files, query)
    return _json({"htsget": {"format": wanted, "urls": _urls(request, source, pieces)}})


async def _fields(request: Request) -> dict[str, Any]:
    if request.method == "GET":
        params = request.query_params
        fields: dict[str, Any] = {key: params[key] for key in params}
        if "referenceName" in fields or "start" in fields or "end" in fields:
            region = {k: fields.pop(k) for k in ("referenceName", "start", "end") if k in fields}
            fields["regions"] = [region]
        return fields
    try:
        body = json.loads(await request.body() or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise HtsgetError("InvalidInput", "the POST body is not JSON") from exc
    if not isinstance(body, dict):
        raise HtsgetError("InvalidInput", "the POST body must be a JSON object")
    return body


def parse_query(fields: dict[str, Any]) -> Query:
    """Check htsget's parameters (GET's query string, or a POST body) and return what they ask.

    Raises:
        HtsgetError: InvalidInput, or InvalidRange when a start lies beyond its end.
    """
    fmt, cls = fields.get("format"), fields.get("class")
    if fmt is not None and not isinstance(fmt, str):
        raise HtsgetError("InvalidInput", "format must be a string")
    if cls not in (None, "header", "body"):
        raise HtsgetError("InvalidInput", "class must be header (or absent)")
    tags, notags = _tag_list(fields.get("tags")), _tag_list(fields.get("notags"))
    if tags & notags:
        raise HtsgetError(
            "InvalidInput", f"tags and notags share {', '.join(sorted(tags & notags))}"
        )
    raw = fields.get("regions")
    if raw is None:
        return Query(fmt, cls == "header", (Region(None),))
    if not isinstance(raw, list) or not raw:
        raise HtsgetError("InvalidInput", "regions must be a non-empty list")
    if len(raw) > MAX_REGIONS:
        raise HtsgetError("InvalidInput", f"at most {MAX_REGIONS} regions per request")
    return Query(fmt, cls == "header", tuple(_region(item) for item in raw))


def _tag_list(value: Any) -> set[str]:
    if value is None:
        return set()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
        raise HtsgetError("InvalidInput", "tags and notags are lists of two-letter tags")
    return {tag for tag in items if tag}


def _region(item: Any) -> Region:
    if not isinstance(item, dict):
        raise HtsgetError("InvalidInput", "each region is an object with referenceName")
    name = item.get("referenceName")
    start, end = _position(item.get("start"), "start"), _position(item.get("end"), "end")
    if not isinstance(name, str) or not name:
        raise HtsgetError("InvalidInput", "start and end need a referenceName")
    if name == "*" and (start is not None or end is not None):
        raise HtsgetError("InvalidInput", "unplaced unmapped reads (*) take no start or end")
    if start is not None and end is not None and start > end:
        raise HtsgetError("InvalidRange", f"start {start} is beyond end {end}")
    return Region(name, start or 0, end)


def _position(value: Any, what: str) -> int | None:
    if value is None:
        return None
    text = str(value)
    if isinstance(value, bool) or not text.isdigit() or int(text) > MAX_POS:
        raise HtsgetError("InvalidInput", f"{what} must be a whole number from 0 to {MAX_POS}")
    return int(text)


def _resolve(catalog: Catalog, ident: str, endpoint: Endpoint) -> Source:
    try:
        source = catalog.resolve(ident)
    except UnknownSource as exc:
        raise HtsgetError("NotFound", f"no registered source has the id {ident!r}") from exc
    except AmbiguousName as exc:
        message = f"several sources are named {ident!r}: ask by md5 ({', '.join(exc.md5s)})"
        raise HtsgetError("InvalidInput", message) from exc
    if not endpoint.accepts(source):
        raise HtsgetError("NotFound", f"{ident!r} is a {source.format} source, not "
                          f"{endpoint.datatype}")  # fmt: skip
    return source


async def _built(request: Request, source: Source) -> Files:
    """Start (or join) the build and wait a bounded time; 503 with Retry-After otherwise."""
    builds, serve = request.app.state.builds, request.app.state.serve
    try:
        job = await run_in_threadpool(builds.request, source)
        job = await run_in_threadpool(builds.wait, job.id, serve.htsget_wait)
    except GenoflowError as exc:
        raise _unavailable(f"the build cannot start: {exc.message}", 30) from exc
    if job.status == "failed":
        wait = max(1, math.ceil((job.retry_at or 0) - time.time()))
        raise _unavailable(f"the build failed: {job.error}; job /jobs/{job.id}", wait)
    files = await run_in_threadpool(request.app.state.catalog.files, source)
    if files is None:
        raise _unavailable(f"the build is {job.status}: follow /jobs/{job.id}", 5)
    return files


def _unavailable(message: str, retry_after: int) -> HtsgetError:
    headers = {"Retry-After": str(retry_after), "Cache-Control": "no-store"}
    return HtsgetError("ServiceUnavailable", message, headers=headers)


def _pieces(files: Files, query: Query) -> list[Piece]:
    if files.index is None:
        raise HtsgetError("NotFound", "this artifact has no index to answer regions from")
    plan = plan_for(files.data, files.index)
    try:
        return plan.ranges(query.regions, header_only=query.header_only)
    except UnknownReference as exc:
        raise HtsgetError("NotFound", f"no reference {exc.file!r} in this file") from exc


def _urls(request: Request, source: Source, pieces: list[Piece]) -> list[dict[str, Any]]:
    serve = request.app.state.serve
    base = serve.public_url or str(request.base_url).rstrip("/")
    path = f"/data/{source.md5}"
    url = base + path
    if serve.tokens_file is not None:
        url += "?" + sign(serve.tokens_file, path)
    found = []
    for piece in pieces:
        if isinstance(piece, Inline):
            data = base64.b64encode(piece.data).decode()
            found.append(
                {"url": f"data:application/octet-stream;base64,{data}", "class": piece.cls}
            )
        else:
            found.append({"url": url, "headers": {"Range": piece.header}, "class": piece.cls})
    return found
