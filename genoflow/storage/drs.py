"""GA4GH DRS sources: resolve ``drs://`` ids to an access URL and stage their bytes over https.

Two URI forms are read (DRS 1.x "hostname-based" and "compact identifier-based"):

- ``drs://host[:port]/object_id`` — resolved at ``https://host[:port]/ga4gh/drs/v1/objects/{id}``
  (plain http only for a host listed in ``GENOFLOW_DRS_INSECURE_HOSTS``);
- ``drs://prefix:accession`` — the prefix is looked up in ``GENOFLOW_DRS_PREFIXES``
  (``prefix=https://host[/path]``, identifiers.org style, without a resolver round trip) and
  the accession resolved at ``{base}/ga4gh/drs/v1/objects/{accession}``.

Invariants:

- A bearer token (``GENOFLOW_DRS_TOKEN`` / ``GENOFLOW_DRS_TOKENS``) is sent only to the DRS
  server it is configured for, and to an access URL on that same origin when the DRS gave the
  URL no headers of its own; a URL the DRS gave headers for gets exactly those. Neither a
  token nor a header value ever reaches a message, a log record or anything stored: errors name
  the ``drs://`` id and redacted URLs only, and no library exception is chained.
- Access URLs are resolved when the bytes are read (signed URLs expire), never kept.
- The bytes handed out are at most the object's ``size``: a body announcing or delivering
  more, or ending short of it, is a :class:`~genoflow.core.errors.SourceError` naming the id.
- A DRS answer is at most :data:`MAX_JSON` bytes of JSON; redirects stay on the same host
  and a loop is refused.
- A ``202`` (the object is being prepared, e.g. a genoflow server building it) is no failure:
  it is asked again after its ``Retry-After``, for at most the policy's ``max_seconds``.
- :func:`resolve_objects` asks for many ids at once (``GENOFLOW_DRS_CONCURRENCY`` at a time),
  each id once, with the same token rules as :func:`drs_object`; one id's failure is that id's
  answer and never stops the others.
"""

from __future__ import annotations

import io
import json
import random
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import quote, unquote, urljoin, urlsplit

import requests

from genoflow.core.errors import DrsError, GenoflowError, SourceError, redact
from genoflow.core.settings import DrsSettings
from genoflow.storage.http_policy import (
    LIBRARY_ERRORS,
    HttpPolicy,
    describe,
    is_transient,
    redirect_refusal,
)
from genoflow.storage.https import open_https
from genoflow.storage.staging import known_size

__all__ = [
    "MAX_JSON",
    "DrsObject",
    "DrsTarget",
    "drs_object",
    "open_drs",
    "parse_drs_uri",
    "resolve_objects",
]

MAX_JSON = 1 << 20
"""The largest DRS JSON answer read (1 MiB); a bigger one is refused, not parsed."""

API = "/ga4gh/drs/v1/objects/"
_HTTP_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class DrsTarget:
    """Where one ``drs://`` id is resolved.

    Attributes:
        uri: the id as the manifest gives it.
        base: the DRS server's base URL (scheme, host, port, path prefix), no trailing slash.
        object_id: the object id asked for.
    """

    uri: str
    base: str
    object_id: str

    @property
    def object_url(self) -> str:
        return f"{self.base}{API}{quote(self.object_id, safe='')}"

    def access_url(self, access_id: str) -> str:
        return f"{self.object_url}/access/{quote(access_id, safe='')}"


@dataclass(frozen=True)
class DrsObject:
    """What a DRS server says of one (non-bundle) object.

    Attributes:
        size: its size in bytes.
        md5: its md5 checksum, lower-case hex, when it lists one.
        access_methods: the ``access_methods`` list as answered.
    """

    size: int
    md5: str | None
    access_methods: tuple[Mapping[str, Any], ...]


def _problem(uri: str, message: str, *, stage: str, hint: str) -> DrsError:
    return DrsError(message, file=uri, stage=stage, hint=hint)


def parse_drs_uri(uri: str, settings: DrsSettings, *, stage: str = "manifest") -> DrsTarget:
    """Where ``uri`` (``drs://host[:port]/id`` or ``drs://prefix:accession``) is resolved.

    Raises:
        SourceError: a malformed id, an unknown prefix, or plain http to a host not listed in
            ``GENOFLOW_DRS_INSECURE_HOSTS``.
    """
    rest = uri[len("drs://") :] if uri.lower().startswith("drs://") else ""
    if not rest or "?" in rest or "#" in rest or any(c.isspace() for c in rest):
        raise _problem(
            uri,
            "not a DRS id (drs://host/id or drs://prefix:accession, no query)",
            stage=stage,
            hint="fix the manifest's uri",
        )
    authority, slash, path = rest.partition("/")
    if not slash:  # compact: drs://prefix:accession
        prefix, colon, accession = authority.partition(":")
        base = settings.prefixes.get(prefix.lower())
        if not colon or not accession or base is None:
            known = ", ".join(sorted(settings.prefixes)) or "none"
            raise _problem(
                uri,
                f"unknown compact-identifier prefix {prefix!r} (known: {known})",
                stage=stage,
                hint="add prefix=https://host to GENOFLOW_DRS_PREFIXES, "
                "or give the id as drs://host/object_id",
            )
        target = DrsTarget(uri, base, unquote(accession))
    else:
        host, port = _host_port(f"//{authority}")
        if not path or not host or "@" in authority:
            raise _problem(
                uri, "needs drs://host[:port]/object_id", stage=stage, hint="fix the manifest's uri"
            )
        scheme = "http" if settings.allows_http(host, port) else "https"
        target = DrsTarget(uri, f"{scheme}://{authority}", unquote(path))
    host, port = _host_port(target.base)
    if target.base.startswith("http://") and not settings.allows_http(host or "", port):
        raise _problem(
            uri,
            f"{redact(target.base)} is plain http",
            stage=stage,
            hint="use https, or list the host in GENOFLOW_DRS_INSECURE_HOSTS",
        )
    return target


def _host_port(url: str) -> tuple[str | None, int | None]:
    """``url``'s host and port, (None, None) when it has no valid one."""
    try:
        parts = urlsplit(url)
        return parts.hostname, parts.port
    except ValueError:
        return None, None


def _auth(target: DrsTarget, settings: DrsSettings) -> dict[str, str]:
    parts = urlsplit(target.base)
    token = settings.token_for(parts.hostname or "", parts.port)
    return {"Authorization": f"Bearer {token}"} if token else {}


def drs_object(uri: str, *, policy: HttpPolicy | None = None, stage: str = "manifest") -> DrsObject:
    """Resolve ``uri`` to its DRS object (size, md5, access methods), with the configured token.

    Raises:
        SourceError: naming the id: malformed, not found, refused, oversize or bad JSON, a
            redirect loop, a bundle, or an object without a valid size.
    """
    settings = DrsSettings.from_env()
    target = parse_drs_uri(uri, settings, stage=stage)
    with _session(_auth(target, settings)) as session:
        return _fetch_object(session, target, policy or HttpPolicy(), stage=stage)


def resolve_objects(
    uris: Iterable[str],
    *,
    policy: HttpPolicy | None = None,
    stage: str = "manifest",
    settings: DrsSettings | None = None,
) -> dict[str, DrsObject | GenoflowError]:
    """Resolve many ``drs://`` ids at once, each distinct id once, as :func:`drs_object` does.

    At most ``settings.concurrency`` (``GENOFLOW_DRS_CONCURRENCY``) requests are in flight;
    each worker thread keeps one :class:`requests.Session` per DRS server (connections are
    reused, a token goes only to the server it is configured for).

    Returns:
        Each distinct id → its object, or the error that id alone ends in (malformed, not
        found, refused…), in the order first given.

    Raises:
        ConfigError: a ``GENOFLOW_DRS_*`` variable holds an unusable value (read only when
            ``settings`` is not given).
    """
    distinct = list(dict.fromkeys(uris))
    if not distinct:
        return {}
    settings = settings or DrsSettings.from_env()
    sessions = _ThreadSessions(settings)
    policy = policy or HttpPolicy()

    def one(uri: str) -> DrsObject | GenoflowError:
        try:
            target = parse_drs_uri(uri, settings, stage=stage)
            return _fetch_object(sessions.get(target), target, policy, stage=stage)
        except GenoflowError as exc:  # this id's answer; the others go on
            return exc

    workers = min(settings.concurrency, len(distinct))
    try:
        if workers == 1:
            return {uri: one(uri) for uri in distinct}
        with ThreadPoolExecutor(workers, thread_name_prefix="genoflow-drs") as pool:
            return dict(zip(distinct, pool.map(one, distinct), strict=True))
    finally:
        sessions.close()


class _ThreadSessions:
    """One :class:`requests.Session` per (thread, DRS server origin), closed all together.

    A session is not documented as thread-safe, so threads never share one; keying by origin
    keeps each session's headers (its server's token) for that server alone.
    """

    def __init__(self, settings: DrsSettings) -> None:
        self._settings = settings
        self._local = threading.local()
        self._all: list[requests.Session] = []
        self._lock = threading.Lock()

    def get(self, target: DrsTarget) -> requests.Session:
        mine: dict[str, requests.Session] = self._local.__dict__.setdefault("sessions", {})
        parts = urlsplit(target.base)
        origin = f"{parts.scheme}://{parts.netloc}".lower()
        if origin not in mine:
            session = requests.Session()
            session.headers.update(_auth(target, self._settings))
            session.headers["Accept"] = "application/json"
            with self._lock:
                self._all.append(session)
            mine[origin] = session
        return mine[origin]

    def close(self) -> None:
        with self._lock:
            for session in self._all:
                session.close()
            self._all.clear()


def _fetch_object(
    session: requests.Session, target: DrsTarget, policy: HttpPolicy, *, stage: str
) -> DrsObject:
    body = _get_json(
        session, target.object_url, target, policy, stage=stage, what="resolving the DRS object"
    )
    size, methods = body.get("size"), body.get("access_methods")
    if body.get("contents") and not methods:
        raise _problem(
            target.uri,
            "is a bundle, not a single file",
            stage=stage,
            hint="list each member object's DRS id in the manifest",
        )
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _problem(
            target.uri,
            "the object has no valid size",
            stage=stage,
            hint="ask the DRS server's operators to fix the object",
        )
    md5 = None
    for checksum in body.get("checksums") or ():
        if isinstance(checksum, dict) and str(checksum.get("type", "")).lower() == "md5":
            md5 = str(checksum.get("checksum", "")).lower() or None
    if not isinstance(methods, list):
        methods = []
    return DrsObject(size, md5, tuple(m for m in methods if isinstance(m, dict)))


@contextmanager
def _session(headers: Mapping[str, str]) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers.update(headers)
        session.headers["Accept"] = "application/json"
        yield session


@dataclass(frozen=True)
class _Again:
    """A JSON request worth repeating: why, the server's ``Retry-After`` (seconds) if it gave
    one, and whether it was DRS's ``202`` ("not ready yet": no failure, only a wait)."""

    failure: str
    retry_after: float | None = None
    pending: bool = False


def _get_json(
    session: requests.Session,
    url: str,
    target: DrsTarget,
    policy: HttpPolicy,
    *,
    stage: str,
    what: str,
) -> dict[str, Any]:
    """GET ``url`` as a JSON object, retrying what is transient within ``policy``'s bounds.

    A failure uses up one of ``policy.attempts`` and waits the jittered back-off, never less
    than the server's ``Retry-After``; a ``202`` uses up none and waits its ``Retry-After``
    (at least ``policy.backoff``). Both wait at most ``policy.max_backoff`` at a time and
    ``policy.max_seconds`` in all.
    """
    started, failures = time.monotonic(), 0
    while True:
        outcome = _json_attempt(session, url, target, policy, stage=stage, what=what)
        if not isinstance(outcome, _Again):
            return outcome
        if outcome.pending:
            delay = max(outcome.retry_after or 0.0, policy.backoff)
        else:
            failures += 1
            delay = min(policy.backoff * 2 ** (failures - 1), policy.max_backoff)
            delay = max(delay * random.uniform(0.5, 1.0), outcome.retry_after or 0.0)
        delay = min(delay, policy.max_backoff)
        waited = time.monotonic() - started
        if failures >= policy.attempts or waited + delay > policy.max_seconds:
            break
        time.sleep(delay)
    if outcome.pending:
        raise _problem(
            target.uri,
            f"{what}: the DRS server is still preparing the object ({outcome.failure} "
            f"for {waited:.0f} s, the longest genoflow waits)",
            stage=stage,
            hint="the server is building it: run again once it is ready",
        )
    raise _problem(
        target.uri,
        f"{what}: the DRS server kept failing ({outcome.failure}; {failures} attempts)",
        stage=stage,
        hint="the DRS server is unavailable: try again later",
    )


def _json_attempt(
    session: requests.Session,
    url: str,
    target: DrsTarget,
    policy: HttpPolicy,
    *,
    stage: str,
    what: str,
) -> dict[str, Any] | _Again:
    """The JSON object at ``url``, or why to ask again; raise a permanent failure."""
    seen = {url}
    timeout = (policy.connect_timeout, policy.read_timeout)
    for _ in range(policy.max_redirects + 1):
        try:
            response = session.get(url, stream=True, allow_redirects=False, timeout=timeout)
        except LIBRARY_ERRORS as exc:
            failure = describe(exc)  # never the exception's text: it holds the URL
            if is_transient(exc):
                return _Again(failure)
            raise _problem(
                target.uri,
                f"{what}: {failure}",
                stage=stage,
                hint="check the DRS server's address",
            ) from None
        with response:
            if response.is_redirect:
                url = _next_hop(url, response, seen, target, stage=stage, what=what)
                continue
            return _answer(response, target, stage=stage, what=what)
    raise _problem(
        target.uri,
        f"{what}: redirected more than {policy.max_redirects} times",
        stage=stage,
        hint="report the DRS server's redirects to its operators",
    )


def _next_hop(
    url: str,
    response: requests.Response,
    seen: set[str],
    target: DrsTarget,
    *,
    stage: str,
    what: str,
) -> str:
    following = urljoin(url, response.headers.get("Location", ""))
    refusal = redirect_refusal(url, following)
    if refusal:
        raise _problem(
            target.uri,
            f"{what}: {refusal}",
            stage=stage,
            hint="the DRS server must answer on its own host",
        )
    if following in seen:
        raise _problem(
            target.uri,
            f"{what}: caught in a redirect loop ({redact(following)})",
            stage=stage,
            hint="report the DRS server's redirects to its operators",
        )
    seen.add(following)
    return following


_STATUS_HINTS = {
    401: (
        "the DRS server refused access (HTTP 401)",
        "set GENOFLOW_DRS_TOKEN, or a token for this host in GENOFLOW_DRS_TOKENS",
    ),
    403: (
        "the DRS server refused access (HTTP 403)",
        "use a token that may read this object (GENOFLOW_DRS_TOKEN / GENOFLOW_DRS_TOKENS)",
    ),
    404: (
        "no such object on the DRS server (HTTP 404)",
        "check the id in the manifest's uri, or ask the DRS server's operators",
    ),
}


def _retry_after(response: requests.Response) -> float | None:
    """The ``Retry-After`` seconds of an answer, None when absent or not a number of seconds."""
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else None


def _answer(
    response: requests.Response, target: DrsTarget, *, stage: str, what: str
) -> dict[str, Any] | _Again:
    """A 200's JSON object, why to ask again (a transient status, or 202: DRS's "not yet
    ready"), or raise for any other status, oversize or malformed JSON."""
    status = response.status_code
    if status == 202 or is_transient(status):
        return _Again(f"HTTP {status}", _retry_after(response), pending=status == 202)
    if status != 200:
        message, hint = _STATUS_HINTS.get(
            status, (f"the DRS server answered HTTP {status}", "check the id and the server")
        )
        raise _problem(target.uri, f"{what}: {message}", stage=stage, hint=hint)
    try:
        raw = response.raw.read(MAX_JSON + 1, decode_content=True)
    except LIBRARY_ERRORS as exc:
        return _Again(describe(exc))
    if len(raw) > MAX_JSON:
        raise _problem(
            target.uri,
            f"{what}: the answer is larger than {MAX_JSON} bytes; nothing was parsed",
            stage=stage,
            hint="check that the id names a DRS object",
        )
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        body = None
    if not isinstance(body, dict):
        raise _problem(
            target.uri,
            f"{what}: the answer is not a JSON object",
            stage=stage,
            hint="check that the host is a DRS 1.x server",
        )
    return body


@dataclass(frozen=True)
class _Access:
    url: str
    headers: dict[str, str]


def _usable(url: object, settings: DrsSettings) -> bool:
    """Whether genoflow reads ``url``: https, or http to a host listed as insecure."""
    if not isinstance(url, str):
        return False
    host, port = _host_port(url)
    if not host:
        return False
    scheme = url.split("://", 1)[0].lower()
    return scheme == "https" or (scheme == "http" and settings.allows_http(host, port))


def _headers(given: object) -> dict[str, str]:
    """An access URL's ``headers``: a list of ``"Name: value"`` strings, or a mapping."""
    if isinstance(given, Mapping):
        return {str(k): str(v) for k, v in given.items()}
    found: dict[str, str] = {}
    for line in given if isinstance(given, list) else ():
        name, colon, value = str(line).partition(":")
        if colon and name.strip():
            found[name.strip()] = value.strip()
    return found


def _same_origin(first: str, second: str) -> bool:
    one, two = urlsplit(first), urlsplit(second)
    ports = [p.port or _HTTP_DEFAULT_PORTS.get(p.scheme) for p in (one, two)]
    return (one.scheme, one.hostname, ports[0]) == (two.scheme, two.hostname, ports[1])


def _access(
    session: requests.Session,
    target: DrsTarget,
    found: DrsObject,
    settings: DrsSettings,
    policy: HttpPolicy,
) -> _Access:
    """The first usable access method: an ``access_url``, else an ``access_id`` resolved now."""
    offered: list[str] = []
    access_ids: list[str] = []
    for method in found.access_methods:
        offered.append(str(method.get("type") or "?"))
        given = method.get("access_url")
        url = given.get("url") if isinstance(given, Mapping) else given
        if _usable(url, settings):
            headers = given.get("headers") if isinstance(given, Mapping) else None
            return _Access(str(url), _headers(headers))
        if isinstance(method.get("access_id"), str) and method["access_id"]:
            access_ids.append(method["access_id"])
    for access_id in access_ids:
        answer = _get_json(
            session,
            target.access_url(access_id),
            target,
            policy,
            stage="stage",
            what="getting its access URL",
        )
        if _usable(answer.get("url"), settings):
            return _Access(str(answer["url"]), _headers(answer.get("headers")))
    shown = ", ".join(offered) or "none"
    raise _problem(
        target.uri,
        f"no usable access method (offered: {shown})",
        stage="stage",
        hint="genoflow reads https access URLs (plain http only for hosts in "
        "GENOFLOW_DRS_INSECURE_HOSTS): ask the DRS server for one",
    )


@contextmanager
def open_drs(uri: str, *, policy: HttpPolicy | None = None) -> Iterator[BinaryIO]:
    """Open a ``drs://`` id's bytes for staging, as :data:`staging.READERS` expects.

    The object and its access URL are resolved now (a signed URL is fresh), then the bytes
    are read through :func:`~genoflow.storage.https.open_https` (retries, resume). The reader
    announces the object's ``size`` as its ``length`` and never yields more than it.

    Raises:
        SourceError: naming the id and the step: resolving the object, getting an access URL,
            or reading it (refused, missing, larger or smaller than the object's size).
    """
    policy = policy or HttpPolicy()
    settings = DrsSettings.from_env()
    target = parse_drs_uri(uri, settings, stage="stage")
    auth = _auth(target, settings)
    with _session(auth) as session:
        found = _fetch_object(session, target, policy, stage="stage")
        access = _access(session, target, found, settings, policy)
    # A token goes only where it was configured for, unless the DRS said which headers to send.
    headers = access.headers or (auth if _same_origin(access.url, target.base) else {})
    try:
        with open_https(access.url, policy=policy, headers=headers) as body:
            announced = known_size(body)
            if announced is not None and announced != found.size:
                raise _problem(
                    uri,
                    f"its access URL {redact(access.url)} serves {announced} "
                    f"bytes, but the object's size is {found.size}",
                    stage="stage",
                    hint="ask the DRS server's operators to fix the object",
                )
            with io.BufferedReader(_Capped(body, uri, found.size)) as reader:
                yield reader
    except SourceError as exc:
        if isinstance(exc, DrsError):
            raise
        raise _problem(
            uri,
            f"reading its access URL {exc.file}: {exc.message}",
            stage="stage",
            hint="run again (a fresh access URL is resolved each time); if it keeps failing, "
            "ask the DRS server's operators",
        ) from None


class _Capped(io.RawIOBase):
    """A DRS object's body that must be exactly ``size`` bytes: more or fewer is an error."""

    def __init__(self, body: BinaryIO, uri: str, size: int) -> None:
        super().__init__()
        self._body, self._uri, self._size = body, uri, size
        self._delivered = 0

    def readable(self) -> bool:
        return True

    @property
    def length(self) -> int:
        return self._size

    def readinto(self, buffer: bytearray | memoryview) -> int:
        if not len(buffer):
            return 0
        # delivered <= size here (more raised below), so at least one byte is asked for.
        data = self._body.read(min(len(buffer), self._size + 1 - self._delivered))
        self._delivered += len(data)
        if self._delivered > self._size:
            raise _problem(
                self._uri,
                f"its body is larger than the object's size ({self._size} "
                "bytes); the copy was stopped there",
                stage="stage",
                hint="ask the DRS server's operators to fix the object",
            )
        if not data and self._delivered < self._size:
            raise _problem(
                self._uri,
                f"its body ended after {self._delivered} of {self._size} bytes",
                stage="stage",
                hint="try again later, or ask the DRS server's operators",
            )
        buffer[: len(data)] = data
        return len(data)
