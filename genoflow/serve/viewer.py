"""``/view/{id}``: a page where igv.js shows one artifact's track, and what that page loads.

Invariants:
- the page's JavaScript is served by this service: igv.js from the npm package that ``make web``
  installs (``genoflow/serve/web/node_modules/igv/dist``, never committed, never a CDN) and the
  small committed ``web/view.js``; the page's Content-Security-Policy allows nothing else, so no
  script, font or data request ever leaves this origin;
- the reference igv.js draws on is the artifact's own contigs (``/view/{md5}/chrom.sizes``), so
  no genome list or sequence is fetched from anywhere;
- every value on the page is HTML-escaped, and the view's settings travel as JSON in a
  ``<script type="application/json">`` block with ``<``, ``>`` and ``&`` escaped, so a manifest
  name or a ``?locus=`` can never close the block;
- ``?locus=`` is ``contig`` or ``contig:start-end`` on a contig of the artifact (else 400), so
  igv.js never sends it to a search service;
- a miss starts the artifact's build like ``/data`` does (one build per md5) and answers 202 with
  ``Location: /jobs/{id}`` and a page that reloads itself;
- with bearer tokens on, a browser (which sends no ``Authorization`` header) opens the page by a
  signed link from ``GET /links/{id}`` (itself only for a bearer token; a signature never opens
  ``/links``); every URL the page hands igv.js or links to (the track, its index,
  ``chrom.sizes``, the scripts, ``/data``, ``/index``) carries its own signature that expires
  with the link (or :data:`~genoflow.serve.signing.VIEW_TTL` after a bearer request), so no
  page outlives its link; such a page is ``no-store`` and sends no ``Referer``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Callable
from html import escape
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
)
from starlette.routing import Route

from genoflow.serve.catalog import MD5, AmbiguousName, Catalog, Files, Source, UnknownSource
from genoflow.serve.layout import Layout, NoView, layout, track
from genoflow.serve.signing import VIEW_TTL, Signature, expiry, sign, verify

WEB = Path(__file__).resolve().parent / "web"
IGV_DIST = WEB / "node_modules" / "igv" / "dist"
STATIC = {  # the only files /static serves: name → (path, media type)
    "igv/igv.min.js": (IGV_DIST / "igv.min.js", "text/javascript"),
    "igv/igv.min.js.map": (IGV_DIST / "igv.min.js.map", "application/json"),
    "view.js": (WEB / "view.js", "text/javascript"),
}
CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data: blob:; "
    "style-src 'self' 'unsafe-inline'; font-src 'self' data:; worker-src 'self' blob:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'self'"
)
_LOCUS = re.compile(r"(?P<contig>[^\s:]{1,255})(?::(?P<start>[\d,]{1,15})-(?P<end>[\d,]{1,15}))?")
_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1em 2em}header p{color:#444;margin:.25em 0}"
    "code{font-size:.9em}#igv{margin-top:1em}.error{color:#a00}"
)


def _html(title: str, body: str, *, status: int = 200, headers: dict | None = None) -> Response:
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)} · genoflow</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )
    head = {
        "Content-Security-Policy": CSP,
        "Cache-Control": "no-cache",
        "Referrer-Policy": "no-referrer",
        **(headers or {}),
    }
    return HTMLResponse(page, status_code=status, headers=head)


def _message(title: str, text: str, status: int) -> Response:
    return _html(
        title, f'<h1>{escape(title)}</h1><p class="error">{escape(text)}</p>', status=status
    )


def check_locus(text: str, view: Layout) -> str | None:
    """``text`` if it names a contig of the view (optionally with ``start-end``), else None."""
    match = _LOCUS.fullmatch(text.strip())
    if match is None or match["contig"] not in dict(view.sizes):
        return None
    if match["start"] is not None:
        start, end = (int(match[part].replace(",", "") or 0) for part in ("start", "end"))
        if not 0 < start <= end:
            return None
    return text.strip()


Signer = Callable[[str], str]


def _signer(request: Request) -> tuple[Signer, int | None]:
    """How the page's URLs are written: signed when tokens are on (expiring with the link that
    opened the page, or :data:`VIEW_TTL` from now), as plain paths otherwise; and the expiry."""
    tokens = request.app.state.serve.tokens_file
    if tokens is None:
        return (lambda path: path), None
    expires = None
    if verify(tokens, request.scope) is Signature.VALID:
        expires = expiry(request.scope)
    expires = expires or int(time.time()) + VIEW_TTL
    return (lambda path: f"{path}?{sign(tokens, path, expires=expires)}"), expires


def _signed_track(source: Source, files: Files, signer: Signer) -> dict:
    config = track(source, files)
    for key in ("url", "indexURL"):
        if key in config:
            config[key] = signer(config[key])
    return config


def _settings(source: Source, files: Files, view: Layout, locus: str, signer: Signer) -> str:
    """The view's settings as JSON that is safe inside a ``<script>`` element."""
    settings = {
        "md5": source.md5,
        "igv": {
            "locus": locus,
            "loadDefaultGenomes": False,
            "showCenterGuide": False,
            "reference": {
                "name": source.names[0],
                "format": "chromsizes",
                "url": signer(f"/view/{source.md5}/chrom.sizes"),
            },
            "tracks": [_signed_track(source, files, signer)],
        },
    }
    text = json.dumps(settings)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _page(
    source: Source, files: Files, view: Layout, locus: str, signed: tuple[Signer, int | None]
) -> Response:
    md5 = source.md5
    signer, expires = signed
    links = " · ".join(
        f'<a href="{escape(href)}">{label}</a>'
        for href, label in (
            (signer(f"/data/{md5}"), "data"),
            (signer(f"/index/{md5}"), "index"),
            ("/", "all sources"),
        )
    )
    settings = _settings(source, files, view, locus, signer)
    scripts = "".join(
        f'<script src="{escape(signer(path))}"></script>'
        for path in ("/static/igv/igv.min.js", "/static/view.js")
    )
    body = (
        f"<header><h1>{escape(', '.join(source.names))}</h1>"
        f"<p>{escape(source.format)} · md5 <code>{md5}</code> · {links}</p>"
        f'<p>region <code id="locus">{escape(locus)}</code></p></header>'
        '<div id="igv"></div><p id="status" role="status"></p>'
        f'<script type="application/json" id="genoflow-view">{settings}</script>'
        f"{scripts}"
    )
    headers = {} if expires is None else {"Cache-Control": "no-store"}
    return _html(source.names[0], body, headers=headers)


def _resolve(catalog: Catalog, ident: str) -> tuple[Source, Files | None, Layout | None]:
    source = catalog.resolve(ident)
    files = catalog.files(source)
    return source, files, None if files is None else layout(source, files)


async def _find(
    request: Request, ident: str
) -> tuple[Source, Files | None, Layout | None] | Response:
    """The source, its files and layout, or the answer explaining why there is no view."""
    catalog: Catalog = request.app.state.catalog
    try:
        return await run_in_threadpool(_resolve, catalog, ident)
    except UnknownSource:
        return _message("Not found", "no registered source has this md5 or name", 404)
    except AmbiguousName as exc:
        return _message("Ambiguous name", f"several sources have this name: {exc.md5s}", 409)
    except NoView as exc:
        return _message("No genome view", exc.message, 404)


async def view(request: Request) -> Response:
    """``GET|HEAD /view/{id}[?locus=contig:start-end]``: igv.js showing the artifact."""
    found = await _find(request, request.path_params["ident"])
    if isinstance(found, Response):
        return found
    source, files, view_layout = found
    if files is None or view_layout is None:
        return await _building(request, source)
    locus = view_layout.locus
    if "locus" in request.query_params:
        locus = check_locus(request.query_params["locus"], view_layout)
        if locus is None:
            names = ", ".join(name for name, _ in view_layout.sizes[:20])
            text = f"locus must be contig or contig:start-end on one of: {names}"
            return _message("Bad locus", text, 400)
    return _page(source, files, view_layout, locus, _signer(request))


async def _building(request: Request, source: Source) -> Response:
    if request.method == "HEAD":
        return _message("Not built yet", "not built yet: a GET starts its build", 404)
    from genoflow.serve.jobs import miss_response, start_build  # the jobs module answers

    job = await start_build(request, source)
    if isinstance(job, Response):
        return job
    answer = miss_response(job)
    headers = {k: v for k, v in answer.headers.items() if k in ("location", "retry-after")}
    wait = headers.get("retry-after", "5")
    text = json.loads(answer.body)
    body = (
        f'<h1>{escape(source.names[0])}: building</h1><p>job <a href="/jobs/{escape(job.id)}">'
        f"{escape(job.id)}</a> is {escape(job.status)}.</p>"
        f'<p class="error">{escape(text.get("message") or text.get("error") or "")}</p>'
        f"<p>This page reloads in {escape(wait)} s.</p>"
    )
    headers["Refresh"] = wait
    return _html(source.names[0], body, status=answer.status_code, headers=headers)


async def chrom_sizes(request: Request) -> Response:
    """``/view/{md5}/chrom.sizes``: the artifact's contigs, igv.js's reference for the page."""
    md5 = request.path_params["md5"]
    if not MD5.fullmatch(md5):
        return JSONResponse({"error": "a chrom.sizes is asked for by md5"}, status_code=404)
    found = await _find(request, md5)
    if isinstance(found, Response):
        return found
    _, _, view_layout = found
    if view_layout is None:
        return JSONResponse({"error": "not built yet", "md5": md5}, status_code=404)
    return PlainTextResponse(view_layout.chrom_sizes(), headers={"Cache-Control": "no-cache"})


async def static(request: Request) -> Response:
    """``/static/...``: igv.js from its npm package, and the page's own script."""
    found = STATIC.get(request.path_params["name"])
    if found is None:
        return JSONResponse({"error": "no such static file"}, status_code=404)
    path, media_type = found
    if not path.is_file():
        message = "igv.js is not installed: run `make web` (npm ci in genoflow/serve/web)"
        return JSONResponse({"error": message}, status_code=503)
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})


def _links_body(request: Request, source: Source) -> dict:
    """A source's URLs, signed to expire together when tokens are on."""
    serve = request.app.state.serve
    base = serve.public_url or str(request.base_url).rstrip("/")
    tokens, md5 = serve.tokens_file, source.md5
    expires = None if tokens is None else int(time.time()) + VIEW_TTL

    def url(path: str) -> str:
        return base + path + ("" if expires is None else f"?{sign(tokens, path, expires=expires)}")

    passthrough = source.family == "passthrough"
    return {
        "md5": md5,
        "expires": None
        if expires is None
        else dt.datetime.fromtimestamp(expires, dt.UTC).isoformat(),
        "view": None if passthrough else url(f"/view/{md5}"),
        "data": url(f"/data/{md5}"),
        "index": None if passthrough else url(f"/index/{md5}"),
    }


async def links(request: Request) -> Response:
    """``GET /links/{id}``: the source's viewer, data and index URLs; with tokens on, signed to
    last :data:`VIEW_TTL` seconds, so a browser or a tool that sends no header can open them.
    The middleware lets only a bearer token through here (a signature never opens ``/links``)."""
    catalog: Catalog = request.app.state.catalog
    ident = request.path_params["ident"]
    try:
        source = await run_in_threadpool(catalog.resolve, ident)
    except UnknownSource:
        return JSONResponse({"error": "no registered source has this md5 or name"}, 404)
    except AmbiguousName as exc:
        message = "several sources have this name: ask for one by md5"
        return JSONResponse({"error": message, "md5s": exc.md5s}, 409)
    body = await run_in_threadpool(_links_body, request, source)
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


def routes() -> list[Route]:
    """The viewer's routes, for :func:`genoflow.serve.app.create_app`."""
    methods = ["GET", "HEAD"]
    return [
        Route("/links/{ident:path}", links, methods=["GET"]),
        Route("/view/{md5}/chrom.sizes", chrom_sizes, methods=methods),
        Route("/view/{ident:path}", view, methods=methods),
        Route("/static/{name:path}", static, methods=methods),
    ]
