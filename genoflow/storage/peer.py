"""A peer's ``genoflow serve`` as a replica location: pull its artifacts over HTTP(S), push ours.

A node with no shared filesystem and no bucket names a peer's base URL in ``GENOFLOW_REPLICAS``
(``https://peer:8080``). :class:`PeerLocation` answers the :class:`Location` interface over the
peer's replica API (:mod:`genoflow.serve.publish`, under ``/peer/v1``), so the DataManager ranks,
copies, verifies and invalidates peer replicas exactly as it does local and ``gs://`` ones.

Invariants:
- the token is sent only in the ``Authorization`` header of requests to the peer's own base URL
  (redirects are never followed); it never appears in a URI, a repr, an error, a log record or
  metadata;
- a download is kept only when its size is the one the peer announced (the caller then checks
  every file's md5 against the marker, :func:`genoflow.storage.transfer.stage`);
- a push writes each data file into a draft of the peer's, in chunks the server's body bound
  accepts, then commits the marker; the peer verifies every file against the marker, renames the
  draft into place (never over an existing artifact: 409 is :class:`AlreadyExists`) and
  registers it, and a refused commit leaves nothing there;
- only transient failures are retried (:func:`genoflow.storage.http_policy.is_transient`), a
  bounded number of times; no library exception, whose text carries URLs, is chained to ours.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import secrets
import threading
import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from genoflow.core.errors import StorageError, redact
from genoflow.storage.http_policy import LIBRARY_ERRORS, HttpPolicy, describe, is_transient
from genoflow.storage.locations import AlreadyExists, Location, ObjectInfo, safe_relpath
from genoflow.storage.marker import MARKER
from genoflow.storage.transfer import BadReplica, marker_path

if TYPE_CHECKING:
    from genoflow.storage.datamanager import DataManager

log = logging.getLogger(__name__)

API = "peer/v1"
CHUNK = 1 << 20  # the peer's request body bound (genoflow.serve.middleware.MAX_BODY)
GENERATION = "X-Genoflow-Generation"
_READ = 1 << 16
_HINTS = {
    401: "set GENOFLOW_PEER_TOKEN to a token listed in the peer's GENOFLOW_SERVE_TOKENS",
    403: "ask the peer for a token with the publish scope, or remove it from GENOFLOW_REPLICAS",
    404: "the peer does not hold it: invalidate this replica and use another",
    422: "fix what the peer names (register the manifest there first if it names the md5)",
}


class PeerLocation(Location):
    """Artifacts held by another node's ``genoflow serve`` (its cache, through its API).

    Args:
        name: the location's name in the registry (the base URL).
        root: the peer's base URL, ``https://host[:port][/path]``.
        deployment: the deployment of the peer's machines.
        token: the bearer token for the peer; never shown anywhere.
        policy: retry bounds and timeouts.
    """

    kind = "https"

    def __init__(
        self,
        name: str,
        root: str,
        *,
        deployment: str,
        token: str | None = None,
        policy: HttpPolicy | None = None,
    ) -> None:
        super().__init__(name, root.rstrip("/"), deployment=deployment, is_local=False)
        self._token = token
        self._policy = policy or HttpPolicy()
        self._drafts: dict[str, str] = {}  # artifact folder -> draft id of a push under way
        self._local = threading.local()

    def uri(self, path: str) -> str:
        return self._url("artifacts", safe_relpath(path).as_posix())

    def stat(self, path: str) -> ObjectInfo | None:
        url = self.uri(path)
        with self._send("HEAD", url, "stat", stage="locate") as response:
            if response.status_code == 404:
                return None
            self._check(response, url, "stat", stage="locate")
            return ObjectInfo(
                size=int(response.headers.get("Content-Length", "-1")),
                generation=response.headers.get(GENERATION),
            )

    def get(self, path: str, dest: Path) -> ObjectInfo:
        """Download into ``dest``; one whose size is not the announced one is deleted.

        Raises:
            StorageError: (stage ``transfer``) missing, refused, unreachable, or cut short.
        """
        url = self.uri(path)
        for attempt in range(self._policy.attempts):
            try:
                return self._download(url, Path(dest))
            except _CutShort as exc:
                Path(dest).unlink(missing_ok=True)
                if attempt == self._policy.attempts - 1:
                    raise StorageError(
                        f"download failed: {exc}", file=url, stage="transfer", hint=_HINTS[404]
                    ) from None
                self._pause(attempt)
            except BaseException:
                Path(dest).unlink(missing_ok=True)
                raise
        raise AssertionError("unreachable")  # the loop returns or raises

    def put(self, src: Path, path: str, *, if_absent: bool = False) -> ObjectInfo:
        """Push one file: a data file into this artifact's draft on the peer; the marker commits
        the draft (a peer never overwrites an artifact, so ``if_absent`` always holds).

        Raises:
            AlreadyExists: the peer already holds an artifact at that folder.
            StorageError: refused (401, 403, 422 with the peer's reason) or unreachable.
        """
        pure = safe_relpath(path)
        folder, name = pure.parent.as_posix(), pure.name
        if name == MARKER:
            return self._commit(Path(src), folder)
        draft = self._drafts.get(folder) or secrets.token_hex(16)
        return self._upload(Path(src), folder, name, draft)

    def delete(self, path: str) -> None:
        """Abandon the push under way into ``path``'s folder (the peer removes its draft).

        Raises:
            StorageError: ``path`` is a published artifact's: only the peer removes those.
        """
        folder = safe_relpath(path).parent.as_posix()
        draft = self._drafts.pop(folder, None)
        if draft is None:
            if self.stat(path) is None:
                return  # missing is not an error
            raise StorageError(
                "is a published artifact of the peer, which only the peer itself removes",
                file=self.uri(path),
                stage="transfer",
                hint="run `genoflow verify --repair` on the peer",
            )
        url = self._url("drafts", draft, folder)
        with self._send("DELETE", url, "abandon the draft", stage="transfer") as response:
            if response.status_code not in (204, 404):
                self._check(response, url, "abandon the draft", stage="transfer")

    def _upload(self, src: Path, folder: str, name: str, draft: str) -> ObjectInfo:
        url = self._url("drafts", draft, folder, name)
        total, offset = src.stat().st_size, 0
        with open(src, "rb") as handle:
            while True:
                chunk = handle.read(CHUNK)
                end = offset + len(chunk) - 1
                span = f"bytes {offset}-{end}/{total}" if chunk else f"bytes */{total}"
                headers = {"Content-Range": span, "Content-Type": "application/octet-stream"}
                with self._send("PUT", url, "upload", data=chunk, headers=headers) as response:
                    self._check(response, url, "upload", stage="transfer")
                    self._drafts[folder] = draft  # the peer holds it now: delete() abandons it
                    answer = response.json() if end + 1 >= total else None
                offset = end + 1
                if answer is not None:
                    return ObjectInfo(size=int(answer["size"]), md5=str(answer["md5"]))

    def _commit(self, src: Path, folder: str) -> ObjectInfo:
        draft = self._drafts.pop(folder, None) or secrets.token_hex(16)
        url = self._url("commit", draft, folder)
        body = src.read_bytes()
        headers = {"Content-Type": "application/json"}
        with self._send("POST", url, "commit", data=body, headers=headers) as response:
            if response.status_code == 409:
                raise AlreadyExists(
                    "the peer already holds this artifact", file=self.uri(folder), stage="publish"
                )
            self._check(response, url, "commit", stage="publish")
            answer = response.json()
        return ObjectInfo(
            size=int(answer["size"]), md5=str(answer["md5"]), generation=answer.get("generation")
        )

    def _download(self, url: str, dest: Path) -> ObjectInfo:
        with self._send("GET", url, "download", stream=True) as response:
            if response.status_code == 404:
                raise StorageError(
                    "replica is missing", file=url, stage="transfer", hint=_HINTS[404]
                )
            self._check(response, url, "download", stage="transfer")
            announced = int(response.headers.get("Content-Length", "-1"))
            digest, size = hashlib.md5(), 0
            try:
                with open(dest, "wb") as out:
                    for piece in response.iter_content(_READ):
                        digest.update(piece)
                        out.write(piece)
                        size += len(piece)
                    out.flush()
                    os.fsync(out.fileno())
            except LIBRARY_ERRORS as exc:
                if isinstance(exc, OSError) and not is_transient(exc):
                    raise StorageError(
                        f"cannot write the download ({exc.strerror})",
                        file=str(dest),
                        stage="transfer",
                    ) from None
                raise _CutShort(describe(exc)) from None
        if announced >= 0 and size != announced:
            raise _CutShort(f"{size} bytes arrived, the peer announced {announced}")
        return ObjectInfo(
            size=size, md5=digest.hexdigest(), generation=response.headers.get(GENERATION)
        )

    def _url(self, *parts: str) -> str:
        return "/".join([self.root, API, *(str(PurePosixPath(part)) for part in parts)])

    def _session(self) -> requests.Session:
        """This thread's session, carrying the token (made again after a fork)."""
        session = getattr(self._local, "session", None)
        if session is None or getattr(self._local, "pid", None) != os.getpid():
            session = requests.Session()
            adapter = HTTPAdapter(max_retries=Retry(total=0, read=False, redirect=False))
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.trust_env = False  # no .netrc credentials or proxies chosen behind our back
            if self._token:
                session.headers["Authorization"] = f"Bearer {self._token}"
            self._local.session, self._local.pid = session, os.getpid()
        return session

    def _send(
        self, method: str, url: str, action: str, *, stage: str = "transfer", **kwargs: Any
    ) -> requests.Response:
        """One request, repeated after transient failures within the policy's bounds."""
        timeout = (self._policy.connect_timeout, self._policy.read_timeout)
        for attempt in range(self._policy.attempts):
            try:
                response = self._session().request(
                    method, url, timeout=timeout, allow_redirects=False, **kwargs
                )
            except LIBRARY_ERRORS as exc:
                failure, transient = describe(exc), is_transient(exc)
            else:
                if not is_transient(response.status_code):
                    return response
                failure, transient = f"HTTP {response.status_code}", True
                response.close()
            if not transient or attempt == self._policy.attempts - 1:
                raise StorageError(
                    f"{action} failed: {failure}",
                    file=url,
                    stage=stage,
                    hint="check that the peer's genoflow serve is running and reachable",
                )
            log.info("peer %s: %s failed (%s); trying again", redact(self.root), action, failure)
            self._pause(attempt)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _pause(self, attempt: int) -> None:
        delay = min(self._policy.max_backoff, self._policy.backoff * 2**attempt)
        time.sleep(delay * random.uniform(0.5, 1.0))

    @staticmethod
    def _check(response: requests.Response, url: str, action: str, *, stage: str) -> None:
        """Raise for any answer but 2xx, with the peer's own reason (it never holds a token)."""
        status = response.status_code
        if 200 <= status < 300:
            return
        reason = _reason(response)
        if 300 <= status < 400:
            reason = "the peer answered a redirect, which is never followed"
        raise StorageError(
            f"{action} refused by the peer (HTTP {status}): {reason}",
            file=url,
            stage=stage,
            hint=_HINTS.get(status, "check the peer's log"),
        )


class _CutShort(Exception):
    """A download ended early or broke off (transient: tried again)."""


def _reason(response: requests.Response) -> str:
    try:
        answer = response.json()
    except ValueError:
        answer = None
    text = answer.get("error") if isinstance(answer, dict) else None
    text = str(text) if text else response.reason or "no reason given"
    return re.sub(r"\s+", " ", text)[:500]


def peer_locations(uris: tuple[str, ...] | list[str], *, token: str | None) -> list[PeerLocation]:
    """The peers among replica URIs (``http(s)://``), each its own location and deployment."""
    return [
        PeerLocation(uri.rstrip("/"), uri, deployment=f"peer:{uri.rstrip('/')}", token=token)
        for uri in uris
        if uri.startswith(("https://", "http://"))
    ]


def discover(manager: DataManager, locations: list[Location], relpath: str) -> list[str]:
    """Register every peer replica of ``relpath`` that a peer holds (its marker read and
    checked), so the DataManager can rank it; a peer that cannot be reached is skipped.

    Peers keep registries of their own: unlike a shared bucket, whose replicas a shared registry
    lists, a peer's artifact is found by its exact key.

    Args:
        manager: the node's :class:`~genoflow.storage.datamanager.DataManager`.
        locations: the node's replica locations (only :class:`PeerLocation` ones are asked).
        relpath: the artifact's cache key relpath.

    Returns:
        The names of the peers found holding it.
    """
    found = []
    for location in locations:
        if not isinstance(location, PeerLocation):
            continue
        try:
            if location.stat(marker_path(relpath)) is None:
                continue
            manager.register_path(location, relpath, relpath)
        except (BadReplica, StorageError) as exc:
            log.warning("peer %s skipped for %s: %s", redact(location.root), relpath, exc.message)
            continue
        found.append(location.name)
    return found
