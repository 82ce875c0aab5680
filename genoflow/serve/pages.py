"""``/``: the registered sources, a page at a time, with links to their files, viewer and job.

Invariants:
- every value shown comes from the registry (and the build claims) and is HTML-escaped (a
  manifest name is text a submitter chose); a page lists at most :data:`MAX_PAGE` sources, so
  the page costs the same for a registry of 100 sources and one of 100,000;
- a source's status is ``built`` (its artifact is published), ``building`` or ``failed`` (its
  current job, linked to ``/jobs/{id}``), else ``not built``; the jobs of a page's unbuilt
  sources are read in one query of the claim table, so a page with no job imports no Dagster.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from genoflow.serve.catalog import Catalog, Source
from genoflow.serve.files import file_name

if TYPE_CHECKING:
    from genoflow.serve.builds import Job

PAGE = 100
MAX_PAGE = 1000
_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
    "td,th{padding:.25em .75em;border-bottom:1px solid #ddd;text-align:left}"
    "code{font-size:.9em}"
)


def _number(text: str | None, default: int, high: int) -> int:
    return min(int(text), high) if text and text.isdigit() else default


def status_cell(built: bool, job: Job | None) -> str:
    """A source's status as HTML: built, building or failed (linked to its job), not built."""
    if built:
        return "built"
    if job is not None and job.status != "succeeded":
        word = "failed" if job.status == "failed" else "building"
        return f'<a href="/jobs/{escape(job.id)}">{word}</a>'
    return "not built (a GET on data starts its build)"


def _row(source: Source, built: bool, job: Job | None) -> str:
    md5 = source.md5
    links = [f'<a href="/data/{md5}">data</a>']
    if source.family != "passthrough":
        links.append(f'<a href="/index/{md5}">index</a>')
        links.append(f'<a href="/files/{md5}/{file_name(source)}">file</a>')
        links.append(f'<a href="/view/{md5}">viewer</a>')
    cells = [
        escape(", ".join(source.names)),
        escape(source.format),
        f"<code>{md5}</code>",
        status_cell(built, job),
        " ".join(links),
    ]
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _page(catalog: Catalog, builds: Any, offset: int, limit: int) -> str:
    sources, total = catalog.page(offset, limit)
    built = {source.md5 for source in sources if catalog.files(source) is not None}
    unbuilt = [source.md5 for source in sources if source.md5 not in built]
    jobs = builds.jobs_of(unbuilt) if unbuilt else {}
    rows = "\n".join(_row(source, source.md5 in built, jobs.get(source.md5)) for source in sources)
    more = ""
    if offset + limit < total:
        more = f'<p><a href="/?offset={offset + limit}&amp;limit={limit}">next {limit}</a></p>'
    shown = f"{offset + 1}–{offset + len(sources)}" if sources else "none"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>genoflow</title><style>{_STYLE}</style></head><body>"
        f"<h1>genoflow</h1><p>{total} registered sources; showing {shown}.</p>"
        "<table><thead><tr><th>name</th><th>format</th><th>md5</th><th>status</th>"
        f"<th>links</th></tr></thead><tbody>\n{rows}\n</tbody></table>{more}</body></html>"
    )


async def home(request: Request) -> Response:
    """The list of registered sources (``?offset=&limit=``, at most :data:`MAX_PAGE`)."""
    offset = _number(request.query_params.get("offset"), 0, 10**9)
    limit = _number(request.query_params.get("limit"), PAGE, MAX_PAGE) or PAGE
    state = request.app.state
    html = await run_in_threadpool(_page, state.catalog, state.builds, offset, limit)
    return HTMLResponse(html, headers={"Cache-Control": "no-cache"})


def routes() -> list[Route]:
    """The pages' routes, for :func:`genoflow.serve.app.create_app`."""
    return [Route("/", home, methods=["GET", "HEAD"])]
