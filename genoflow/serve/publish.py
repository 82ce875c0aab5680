"""``/peer/v1``: this node's artifacts for peers to pull, and the pushes peers make into it.

A node with no shared filesystem or bucket lists this server in its ``GENOFLOW_REPLICAS``
(:class:`genoflow.storage.peer.PeerLocation`); these routes are the other end:

- ``GET``/``HEAD /peer/v1/artifacts/{relpath}/{name}``: one file of a published artifact, its
  ``genoflow.json`` included, by its exact cache key; 404 for anything else. It needs what every
  route needs (a valid token, of any scope, when tokens are on);
- ``PUT /peer/v1/drafts/{draft}/{relpath}/{name}``: one chunk of a data file
  (``Content-Range: bytes a-b/total``, within the server's body bound; ``bytes */0`` for an
  empty file) into the push ``draft`` (32 hex digits the pusher chose); the chunk that completes
  the file answers its size and md5 as received;
- ``DELETE /peer/v1/drafts/{draft}/{relpath}``: abandon a push;
- ``POST /peer/v1/commit/{draft}/{relpath}``: the marker, last: verify, publish, register
  (201 with the marker's size, md5 and generation).

Invariants:
- pushing needs a bearer token with the ``publish`` scope (:mod:`genoflow.serve.auth`): 403
  otherwise, and always 403 on a server that runs without tokens;
- a push is published only when its source md5 is registered here (422 otherwise, also for
  another family), nothing exists at its key (409), and the marker is well formed, names that
  very key, and lists exactly the draft's files, each with the size and md5 it has (422);
- a draft is a private temp sibling of the artifact folder, named as
  :mod:`genoflow.storage.atomic` names them (so a sweep removes it once this server is gone);
  it becomes the artifact by one rename, marker written last, never over an existing folder;
  a refused or failed commit removes it, and nothing is registered before the rename;
- no path is made from the request except through :meth:`ArtifactKey.parse` and a file-name
  pattern; an answer echoes only the validated key and names, never a header.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from genoflow.core.checksums import md5_file
from genoflow.core.errors import StorageError
from genoflow.serve.auth import PUBLISH, bearer
from genoflow.storage import atomic
from genoflow.storage.cache import Cache
from genoflow.storage.datamanager import DataManager
from genoflow.storage.layout import ArtifactKey
from genoflow.storage.locations import LocalLocation
from genoflow.storage.marker import MARKER, Marker, content_checksum

PREFIX = "/peer/v1"
GENERATION = "X-Genoflow-Generation"  # the same header genoflow.storage.peer reads
_DRAFT = re.compile(r"[0-9a-f]{32}")
_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,254}")
_SPAN = re.compile(r"bytes (?:(\d+)-(\d+)|\*)/(\d+)")


class Refused(Exception):
    """A request this module answers with ``status`` and ``message`` (JSON ``{"error": …}``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message

    def response(self) -> JSONResponse:
        headers = {"Cache-Control": "no-store"}
        return JSONResponse({"error": self.message}, status_code=self.status, headers=headers)


def routes() -> list[Route]:
    """The peer replica API, for the app's route list."""
    return [
        Route(f"{PREFIX}/artifacts/{{path:path}}", read_file, methods=["GET", "HEAD"]),
        Route(f"{PREFIX}/drafts/{{draft}}/{{path:path}}", draft_file, methods=["PUT", "DELETE"]),
        Route(f"{PREFIX}/commit/{{draft}}/{{path:path}}", commit, methods=["POST"]),
    ]


async def read_file(request: Request) -> Response:
    """A file of a published artifact (or its marker), with its generation; 404 otherwise."""
    cache: Cache = request.app.state.catalog.cache
    try:
        key, name = _split(request.path_params["path"], missing=404)
    except Refused as refused:
        return refused.response()
    artifact = await run_in_threadpool(cache.lookup, key)
    listed = {entry.name for entry in artifact.entries} if artifact is not None else set()
    if artifact is None or name is None or (name != MARKER and name not in listed):
        return Refused(404, f"{key} holds no published file of that name here").response()
    path = artifact.path / name
    try:
        found = await run_in_threadpool(os.stat, path)
    except FileNotFoundError:
        return Refused(404, f"{key} was removed meanwhile").response()
    headers = {GENERATION: _generation(found), "Cache-Control": "no-store"}
    return FileResponse(
        path, headers=headers, media_type="application/octet-stream", stat_result=found
    )


async def draft_file(request: Request) -> Response:
    """``PUT`` one chunk of a pushed file into a draft; ``DELETE`` the draft."""
    state = request.app.state
    try:
        _publisher(request)
        draft = _draft_id(request.path_params["draft"])
        if request.method == "DELETE":
            key, name = _split(request.path_params["path"], missing=400)
            await run_in_threadpool(_abandon, state.catalog.cache, key, draft)
            return Response(status_code=204)
        key, name = _split(request.path_params["path"], missing=400)
        if name is None or name == MARKER or not _NAME.fullmatch(name):
            raise Refused(400, f"a data file of {key} needs a plain file name ({MARKER} commits)")
        span = _span(request.headers.get("content-range", ""))
        body = await request.body()
        answer = await run_in_threadpool(_write_chunk, state, key, name, draft, span, body)
    except Refused as refused:
        return refused.response()
    return JSONResponse(answer, status_code=200 if "md5" in answer else 202)


async def commit(request: Request) -> Response:
    """Verify a draft against the marker in the body, publish it, register it (201)."""
    state = request.app.state
    try:
        _publisher(request)
        draft = _draft_id(request.path_params["draft"])
        key, name = _split(request.path_params["path"], missing=400)
        if name is not None:
            raise Refused(400, "a commit names an artifact folder, not a file")
        body = await request.body()
        answer = await run_in_threadpool(_commit, state, key, draft, body)
    except Refused as refused:
        return refused.response()
    return JSONResponse(answer, status_code=201)


def _publisher(request: Request) -> None:
    """Refuse (403) a request whose bearer token may not publish here."""
    tokens = request.app.state.tokens
    if tokens is None:
        raise Refused(
            403,
            "this server takes no pushes: it runs without GENOFLOW_SERVE_TOKENS; list a token "
            "with the publish scope there",
        )
    token = bearer(request.headers)
    if token is None or not tokens.allows(token, PUBLISH):
        raise Refused(403, "this token may not publish here: it needs the publish scope")


def _split(path: str, *, missing: int) -> tuple[ArtifactKey, str | None]:
    """The artifact key a path names, and the file name after it (None for the folder)."""
    parts = path.split("/")
    key = ArtifactKey.parse("/".join(parts[:5]))
    if key is None or len(parts) > 6:
        raise Refused(missing, "the path names no artifact (family/md5[:2]/md5/asset/vN)")
    name = parts[5] if len(parts) == 6 else None
    if name is not None and not _NAME.fullmatch(name):
        raise Refused(missing, f"{key} has no file of that name")
    return key, name


def _draft_id(value: str) -> str:
    if not _DRAFT.fullmatch(value):
        raise Refused(400, "a draft id is 32 lower-case hex digits")
    return value


def _span(header: str) -> tuple[int, int, int]:
    """``(start, end, total)`` of a ``Content-Range`` (``end`` is ``start - 1`` for none)."""
    match = _SPAN.fullmatch(header.strip())
    if match is None:
        raise Refused(400, "a chunk needs Content-Range: bytes start-end/total (or */0)")
    total = int(match[3])
    if match[1] is None:
        if total:
            raise Refused(400, "Content-Range bytes */N is only for an empty file (N = 0)")
        return 0, -1, 0
    start, end = int(match[1]), int(match[2])
    if end < start or end >= total:
        raise Refused(400, "Content-Range must have start <= end < total")
    return start, end, total


def _admissible(state: Any, key: ArtifactKey) -> None:
    """Refuse a push whose source is not registered here (422) or whose key is taken (409)."""
    families = {row.family for row in state.catalog.registry.rows(key.md5)}
    if not families:
        raise Refused(
            422, f"source md5 {key.md5} is not registered on this node: register its manifest "
            "here first"
        )  # fmt: skip
    if key.family not in families:
        raise Refused(422, f"source md5 {key.md5} is registered here as {sorted(families)[0]}")
    cache: Cache = state.catalog.cache
    if os.path.lexists(cache.folder(key)):
        raise Refused(409, f"{key} already exists here; a published artifact is never replaced")


def _draft_folder(cache: Cache, key: ArtifactKey, draft: str, *, create: bool) -> Path | None:
    """The draft's folder beside the artifact's, made when ``create`` (None when absent)."""
    dest = cache.folder(key)
    found = sorted(dest.parent.glob(f".{dest.name}.tmp.*.{draft}")) if dest.parent.is_dir() else []
    if found or not create:
        return found[0] if found else None
    temp = atomic.temp_sibling(dest)  # the atomic module's naming, with our draft id at the end
    named = temp.with_name(f"{temp.name.rsplit('.', 1)[0]}.{draft}")
    os.rename(temp, named)
    return named


def _write_chunk(
    state: Any, key: ArtifactKey, name: str, draft: str, span: tuple[int, int, int], body: bytes
) -> dict[str, Any]:
    start, end, total = span
    if len(body) != end - start + 1:
        raise Refused(400, f"the chunk holds {len(body)} bytes, its Content-Range says otherwise")
    _admissible(state, key)
    folder = _draft_folder(state.catalog.cache, key, draft, create=True)
    assert folder is not None  # made when missing
    path = folder / name
    held = path.stat().st_size if path.exists() else 0
    if start > held:
        raise Refused(400, f"{name}: the chunk starts at byte {start}, the draft holds {held}")
    with open(path, "r+b" if path.exists() else "wb") as handle:
        handle.truncate(start)  # a chunk sent again after a lost answer replaces itself
        handle.seek(start)
        handle.write(body)
    if end + 1 < total:
        return {"received": end + 1}
    return {"size": path.stat().st_size, "md5": md5_file(path)}


def _abandon(cache: Cache, key: ArtifactKey, draft: str) -> None:
    folder = _draft_folder(cache, key, draft, create=False)
    if folder is not None:
        atomic.remove_tree(folder)
        atomic.prune_empty(folder.parent, stop=cache.root)


def _commit(state: Any, key: ArtifactKey, draft: str, body: bytes) -> dict[str, Any]:
    cache: Cache = state.catalog.cache
    folder = _draft_folder(cache, key, draft, create=False)
    try:
        _admissible(state, key)
        if folder is None:
            raise Refused(422, f"no file of {key} was pushed into this draft")
        marker = _marker(body, key)
        problems = _mismatches(folder, marker)
        if problems:
            raise Refused(422, f"{key} does not match its {MARKER}: " + "; ".join(problems))
        with open(folder / MARKER, "wb") as handle:
            handle.write(body)
        atomic.fsync_tree(folder)
        if not atomic.publish_dir(folder, cache.folder(key)):
            raise Refused(409, f"{key} was published here meanwhile by another writer")
    except BaseException:
        if folder is not None:
            atomic.remove_tree(folder)
            atomic.prune_empty(folder.parent, stop=cache.root)
        raise
    _register(state, key)
    found = os.stat(cache.folder(key) / MARKER)
    md5 = hashlib.md5(body).hexdigest()
    return {"size": len(body), "md5": md5, "generation": _generation(found)}


def _marker(body: bytes, key: ArtifactKey) -> Marker:
    """The pushed marker, when well formed, naming ``key`` and consistent with its files."""
    try:
        marker = Marker.from_json(json.loads(body))
    except ValueError:
        raise Refused(422, f"the pushed {MARKER} is not JSON") from None
    except StorageError as exc:
        raise Refused(422, f"the pushed {exc.message}") from None
    facts = (
        ("source_md5", marker.source_md5, key.md5),
        ("asset", marker.asset, key.asset_path),
        ("version", marker.version, key.version),
    )
    wrong = [field for field, have, want in facts if have != want]
    if wrong:
        raise Refused(422, f"the pushed {MARKER} names another artifact than {key} ({wrong})")
    names = [entry.name for entry in marker.files]
    bad = not names or len(set(names)) != len(names) or MARKER in names
    if bad or not all(_NAME.fullmatch(name) for name in names):
        raise Refused(422, f"the pushed {MARKER} lists no files, a file twice, or a bad name")
    if content_checksum(marker.entries) != marker.checksum:
        raise Refused(422, f"the pushed {MARKER} has a checksum that is not its files'")
    return marker


def _mismatches(folder: Path, marker: Marker) -> list[str]:
    """How the draft's files differ from what the marker lists (empty when they match)."""
    listed = {entry.name for entry in marker.files}
    problems = [
        f"{path.name} was pushed but is not listed"
        for path in sorted(folder.iterdir())
        if path.name not in listed
    ]
    for entry in marker.files:
        path = folder / entry.name
        if not path.is_file():
            problems.append(f"{entry.name} is missing")
        elif (size := path.stat().st_size) != entry.size:
            problems.append(f"{entry.name} has {size} bytes, {MARKER} says {entry.size}")
        elif (md5 := md5_file(path)) != entry.md5:
            problems.append(f"{entry.name} has md5 {md5}, {MARKER} says {entry.md5}")
    return problems


def _register(state: Any, key: ArtifactKey) -> None:
    """Register the pushed artifact as this deployment's PRIMARY replica (as a build would)."""
    settings = state.settings
    local = LocalLocation(
        f"{settings.deployment}:cache", settings.cache_root, deployment=settings.deployment
    )
    registry = state.catalog.registry
    with DataManager(registry, workdir=settings.home / "work", locations=[local]) as manager:
        manager.register_path(local, key.relstr, key.relstr)


def _generation(found: os.stat_result) -> str:
    return f"{found.st_dev}:{found.st_ino}:{found.st_mtime_ns}"
