"""Google Cloud Storage: a :class:`Location` under ``gs://bucket/prefix``, and gs:// source readers.

Invariants. An object exists only when a GET of its exact name finds it (a prefix listing never
counts, so ``x.vcf.gz.tbi`` cannot make ``x.vcf.gz`` exist). A download is kept only when its size
and md5 equal the object's ``md5Hash`` (``crc32c`` for composite objects, which carry no md5); an
upload is accepted only when the stored ``md5Hash`` equals the local file's. ``put(if_absent=True)``
is one conditional write (``ifGenerationMatch=0``): of concurrent writers exactly one wins and the
others get :class:`AlreadyExists`. No error text that shows a credential is chained to ours.

Retries. gcsfs already retries every HTTP request (6 tries, about 30 s of backoff) on 5xx, 408,
429 and connection errors. On top of that, this module repeats a whole operation at most
``retries`` times, only when :func:`is_transient` says so: a bounded product, never a loop.

gcsfs is imported on first use, after ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` (otherwise its
zonal-bucket probe stalls every call against an emulator); nothing touches the network before
the first call.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar
from urllib.parse import urlsplit

from genoflow.core.checksums import md5_file
from genoflow.core.errors import SourceError, StorageError, redact
from genoflow.storage.locations import AlreadyExists, Location, ObjectInfo, safe_relpath

if TYPE_CHECKING:
    from gcsfs.core import GCSFile, GCSFileSystem

T = TypeVar("T")
READ_SIZE = 8 << 20  # one ranged GET per 8 MiB: few round trips, bounded memory
DEFAULT_RETRIES = 2
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
_SECRETS = re.compile(r"(?i)(bearer\s+|access_token[\"'=:\s]+)[^\s\"',}]+|ya29\.[\w.-]+")
_URLS = re.compile(r"https?://\S+")
_REPLICA_HINT = "invalidate this replica and use another"


def make_filesystem(
    *, endpoint_url: str | None = None, token: Any = None, project: str | None = None
) -> GCSFileSystem:
    """A fresh gcsfs file system (no instance or listings cache), for an endpoint that resolves.

    Only the endpoint's host name is looked up (:func:`check_resolves`); no request is made yet.

    Args:
        endpoint_url: an emulator's ``http://host:port``; default ``STORAGE_EMULATOR_HOST``.
        token: gcsfs credentials; default anonymous against an emulator, else gcsfs's chain.
        project: the project for bucket-level calls.

    Raises:
        UnresolvedHostError: the endpoint's host name does not resolve.
    """
    core = _import_gcsfs()
    if token is None and (endpoint_url or os.environ.get("STORAGE_EMULATOR_HOST")):
        token = "anon"
    # Resolve before google-auth searches for credentials: it may probe a metadata server for
    # ~15 s. With given credentials, building first reports a malformed token before the DNS.
    searching = token is None
    if searching:
        check_resolves(endpoint_url)
    extra = {"project": project} if project else {}
    # The core class: gcsfs.GCSFileSystem is the zonal subclass if gcsfs was imported earlier.
    fs = core.GCSFileSystem(
        token=token,
        endpoint_url=endpoint_url,
        skip_instance_cache=True,
        use_listings_cache=False,
        **extra,
    )
    if not searching:
        check_resolves(endpoint_url)
    return fs


class UnresolvedHostError(ConnectionError):
    """The store's host name does not resolve (DNS): permanent, never retried."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"cannot resolve host {host}: {reason}")
        self.host = host


def check_resolves(endpoint_url: str | None = None) -> None:
    """Fail at once when the store's host name does not resolve; before any other request.

    gcsfs retries a failed connection six times over about 30 s, logging a traceback each
    time, and google-auth may first probe a metadata server for as long: a name that does not
    resolve fails every time, so asking the resolver first turns all that into one error.

    Args:
        endpoint_url: the endpoint a file system will use; default gcsfs's own choice
            (``STORAGE_EMULATOR_HOST``, else Google's).

    Raises:
        UnresolvedHostError: the endpoint's host name does not resolve.
    """
    location = endpoint_url or _import_gcsfs()._location()
    if "://" not in location:
        location = f"http://{location}"  # gcsfs reads a bare STORAGE_EMULATOR_HOST this way
    endpoint = urlsplit(location)
    host = endpoint.hostname
    if host:
        port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise UnresolvedHostError(host, str(exc)) from None


def unresolved_host(exc: BaseException) -> str | None:
    """The host name whose resolution failed somewhere in ``exc``'s chain, else None."""
    seen: BaseException | None = exc
    for _ in range(16):  # chains are short; the bound only guards against a cycle
        if seen is None:
            return None
        if isinstance(seen, UnresolvedHostError):
            return seen.host
        if _is_dns_error(seen):
            host = getattr(seen, "host", None)  # aiohttp's error names it; gaierror does not
            return host if isinstance(host, str) and host else "(the store's endpoint)"
        seen = seen.__cause__ or seen.__context__
    return None


def _is_dns_error(exc: BaseException) -> bool:
    import aiohttp

    return isinstance(exc, socket.gaierror | aiohttp.ClientConnectorDNSError)


def is_transient(exc: BaseException) -> bool:
    """Whether repeating the operation that raised ``exc`` may succeed.

    True for the HTTP statuses in :data:`~genoflow.storage.http_policy.RETRYABLE_STATUSES` (408,
    429, 5xx but 501 and 505), dropped or refused connections, truncated bodies and
    timeouts; False for the rest (host names that do not resolve, missing objects, failed
    preconditions, access denied, bad requests, checksum mismatches, the project's own errors).
    """
    import aiohttp  # gcsfs's dependencies, loaded with it on first use
    import requests

    from genoflow.storage.http_policy import RETRYABLE_STATUSES

    if isinstance(exc, FileNotFoundError | FileExistsError | PermissionError):
        return False
    if unresolved_host(exc) is not None:
        return False  # a name that does not resolve now will not in the next seconds either
    status = _http_status(exc)
    if status is not None:
        return status in RETRYABLE_STATUSES
    return isinstance(
        exc,
        ConnectionError
        | TimeoutError
        | aiohttp.ClientConnectionError
        | aiohttp.ClientPayloadError
        | requests.ConnectionError
        | requests.Timeout
        | requests.exceptions.ChunkedEncodingError,
    )


def call_with_retry(
    operation: Callable[[], T],
    *,
    retries: int = DEFAULT_RETRIES,
    base_delay: float = 0.5,
    max_delay: float = 8.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``operation``; after a transient error wait (jittered, doubling) and run it again.

    At most ``retries`` repeats; a non-transient error, or the last transient one, is raised as is.
    """
    attempt = 0
    while True:
        try:
            return operation()
        except Exception as exc:
            if attempt >= retries or not is_transient(exc):
                raise
            sleep(min(max_delay, base_delay * 2**attempt) * random.uniform(0.5, 1.0))
            attempt += 1


def describe(exc: BaseException) -> str:
    """A one-line reason for a store error, without credentials or URL query strings."""
    if isinstance(exc, FileNotFoundError):
        return "not found (HTTP 404)"
    host = unresolved_host(exc)
    if host is not None:
        return f"cannot resolve host {host}"
    text = str(exc).strip()
    if isinstance(exc, PermissionError) or text.startswith("Forbidden"):
        return "access denied (HTTP 403)"
    status = _http_status(exc)
    head = _scrub(text.splitlines()[0] if text else "")[:200]
    label = f"HTTP {status}" if status is not None else type(exc).__name__
    return f"{label}: {head}" if head else label


def parse_gs_uri(uri: str) -> tuple[str, str]:
    """Split ``gs://bucket/key`` into bucket and key (which may be empty).

    Raises:
        ValueError: not a gs:// URI with a valid bucket name.
    """
    scheme, sep, rest = uri.partition("://")
    bucket, _, key = rest.partition("/")
    if not sep or scheme != "gs" or not _BUCKET.fullmatch(bucket):
        raise ValueError(f"not a gs://bucket/object URI: {redact(uri)}")
    return bucket, key


class GcsLocation(Location):
    """Copies under ``gs://bucket/prefix`` (a replica location shared by several machines).

    Args:
        name: the location's name in the registry.
        root: ``gs://bucket`` or ``gs://bucket/prefix``.
        deployment: the deployment whose machines share this storage.
        endpoint_url: an emulator's ``http://host:port`` (default ``STORAGE_EMULATOR_HOST``).
        token: gcsfs credentials (see :func:`make_filesystem`); never shown anywhere.
        project: the GCS project, for bucket-level calls.
        retries: how many times one operation is repeated after a transient error.
    """

    kind = "gcs"

    def __init__(
        self,
        name: str,
        root: str,
        *,
        deployment: str,
        endpoint_url: str | None = None,
        token: Any = None,
        project: str | None = None,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        try:
            bucket, prefix = parse_gs_uri(root)
            prefix = prefix.strip("/")
            if prefix:
                safe_relpath(prefix)
        except ValueError as exc:
            raise StorageError(str(exc), file=root, stage="locate") from exc
        root = f"gs://{bucket}/{prefix}".rstrip("/")
        super().__init__(name, root, deployment=deployment, is_local=False)
        self.bucket, self.prefix, self.retries = bucket, prefix, retries
        self._options = {"endpoint_url": endpoint_url, "token": token, "project": project}
        self._fs: GCSFileSystem | None = None
        self._fs_pid = 0
        self._lock = threading.Lock()

    def filesystem(self) -> GCSFileSystem:
        """This location's gcsfs file system, built on first use (and again after a fork)."""
        with self._lock:
            if self._fs is None or self._fs_pid != os.getpid():
                self._fs, self._fs_pid = make_filesystem(**self._options), os.getpid()
            return self._fs

    def key(self, path: str) -> str:
        """The gcsfs path (``bucket/prefix/path``) of ``path``."""
        return "/".join(p for p in (self.bucket, self.prefix, safe_relpath(path).as_posix()) if p)

    def uri(self, path: str) -> str:
        return f"gs://{self.key(path)}"

    def stat(self, path: str) -> ObjectInfo | None:
        key = self.key(path)
        return self._run(lambda: stat_object(self.filesystem(), key), path, "stat", "locate")

    def get(self, path: str, dest: Path) -> ObjectInfo:
        """Download into ``dest``, hashing as it arrives; a copy that does not verify is deleted.

        Raises:
            StorageError: (stage ``transfer``) missing object, store error, or mismatch.
        """
        dest = Path(dest)
        try:
            return self._run(lambda: self._download(path, dest), path, "download", "transfer")
        except BaseException:
            dest.unlink(missing_ok=True)
            raise

    def put(self, src: Path, path: str, *, if_absent: bool = False) -> ObjectInfo:
        """Upload ``src``; with ``if_absent``, only if no object has that name yet.

        Raises:
            AlreadyExists: ``if_absent`` and another writer's object is there.
            StorageError: (stage ``transfer``) store error, or the stored md5 is not the file's.
        """
        src, uri, key = Path(src), self.uri(path), self.key(path)
        try:
            local = ObjectInfo(size=src.stat().st_size, md5=md5_file(src))
        except OSError as exc:
            raise StorageError(
                f"cannot read the file to upload: {exc.strerror}", file=str(src), stage="transfer"
            ) from exc
        attempts = 0

        def upload() -> None:
            nonlocal attempts
            attempts += 1
            fs = self.filesystem()
            try:
                fs.put_file(str(src), key, mode="create" if if_absent else "overwrite")
            except FileExistsError as exc:
                # A repeat after a lost response meets our own first write: same bytes, ours.
                seen = stat_object(fs, key) if attempts > 1 else None
                if seen is None or (seen.size, seen.md5) != (local.size, local.md5):
                    raise AlreadyExists(
                        "another writer published this object first", file=uri, stage="publish"
                    ) from _cause(exc)

        self._run(upload, path, "upload", "transfer")
        stored = self._run(lambda: stat_object(self.filesystem(), key), path, "stat", "transfer")
        if stored is None or (stored.size, stored.md5 or local.md5) != (local.size, local.md5):
            try:
                self._run(lambda: self._discard(key, stored), path, "delete", "transfer")
                done = "the bad copy was removed"
            except StorageError as exc:
                done = f"removing the bad copy failed too ({exc.message}): delete it by hand"
            raise StorageError(
                f"the stored object ({stored}) does not match the uploaded file "
                f"({local.size} bytes, md5 {local.md5})",
                file=uri,
                stage="transfer",
                hint=f"{done}; upload again",
            )
        return stored

    def delete(self, path: str) -> None:
        key = self.key(path)

        def remove() -> None:
            try:
                self.filesystem().rm_file(key)
            except FileNotFoundError:
                return  # already gone, or a repeat of a delete that landed: the goal holds

        self._run(remove, path, "delete", "transfer")

    def _download(self, path: str, dest: Path) -> ObjectInfo:
        try:
            handle = open_object(self.filesystem(), self.key(path))
        except FileNotFoundError as exc:
            raise StorageError(
                "replica is missing", file=self.uri(path), stage="transfer", hint=_REPLICA_HINT
            ) from _cause(exc)
        with handle:
            want = object_info(handle.details)
            got = _copy_hashing(handle, dest, crc32c=want.md5 is None)
        problem = mismatch(want, got)
        if problem:
            raise StorageError(
                f"download does not match the stored object: {problem}",
                file=self.uri(path),
                stage="transfer",
                hint=_REPLICA_HINT,
            )
        return ObjectInfo(got.size, got.md5, want.crc32c, want.generation)

    def _discard(self, key: str, stored: ObjectInfo | None) -> None:
        """Delete the bad object just written: that generation only, never a newer one."""
        bucket, _, name = key.partition("/")
        if stored is not None:
            try:
                self.filesystem().call(
                    "DELETE", "b/{}/o/{}", bucket, name, ifGenerationMatch=stored.generation
                )
            except (FileNotFoundError, FileExistsError):
                return  # removed or replaced by someone else meanwhile: not ours to delete

    def _run(self, operation: Callable[[], T], path: str, action: str, stage: str) -> T:
        try:
            return call_with_retry(operation, retries=self.retries)
        except _store_errors() as exc:
            raise StorageError(
                f"{action} failed: {describe(exc)}",
                file=self.uri(path),
                stage=stage,
                hint=_hint(exc, self.bucket),
            ) from _cause(exc)


def mismatch(want: ObjectInfo, got: ObjectInfo) -> str | None:
    """Why downloaded bytes (``got``) are not the stored object (``want``), or None if they are."""
    if want.size != got.size:
        return f"{got.size} bytes arrived, the object has {want.size}"
    if want.md5 and want.md5 != got.md5:
        return f"md5 is {got.md5}, the object's md5Hash says {want.md5}"
    if not want.md5 and want.crc32c and want.crc32c != got.crc32c:
        return f"crc32c is {got.crc32c}, the object says {want.crc32c}"
    return None


@contextmanager
def open_gs(uri: str) -> Iterator[BinaryIO]:
    """Open a ``gs://bucket/object`` source for streaming (the reader :data:`staging.READERS` uses).

    Raises:
        SourceError: bad URI, missing object, or a store error (also while reading).
    """
    bucket, key = _source_object(uri)
    try:
        handle = call_with_retry(lambda: open_object(make_filesystem(), f"{bucket}/{key}"))
    except FileNotFoundError as exc:
        raise SourceError("object not found", file=uri) from _cause(exc)
    except _store_errors() as exc:
        raise SourceError(
            f"cannot open: {describe(exc)}", file=uri, hint=_hint(exc, bucket)
        ) from _cause(exc)
    with handle, io.BufferedReader(_SourceReader(handle, uri), READ_SIZE) as reader:
        yield reader


def gs_md5(uri: str) -> str | None:
    """The lower-case hex md5 GCS keeps for ``uri`` (None for composite objects, which have none).

    Raises:
        SourceError: bad URI, missing object, or a store error.
    """
    bucket, key = _source_object(uri)
    try:
        info = call_with_retry(lambda: stat_object(make_filesystem(), f"{bucket}/{key}"))
    except _store_errors() as exc:
        raise SourceError(
            f"cannot stat: {describe(exc)}", file=uri, hint=_hint(exc, bucket)
        ) from _cause(exc)
    if info is None:
        raise SourceError("object not found", file=uri)
    return info.md5


def register_readers() -> None:
    """Let staging read ``gs://`` source URIs."""
    from genoflow.storage import staging  # only the app's wiring needs staging to know gs://

    staging.READERS["gs"] = open_gs


class _SourceReader(io.RawIOBase):
    """A gcsfs file whose read errors become SourceError (so staging tries the next replica)."""

    def __init__(self, handle: GCSFile, uri: str) -> None:
        super().__init__()
        self._handle, self._uri = handle, uri

    def readable(self) -> bool:
        return True

    @property
    def length(self) -> int | None:
        """The object's size as GCS records it (staging checks it before downloading)."""
        size = self._handle.details.get("size")
        return int(size) if size is not None else None

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._handle.read(len(buffer))
        except _store_errors() as exc:
            raise SourceError(f"read failed: {describe(exc)}", file=self._uri) from _cause(exc)
        buffer[: len(data)] = data
        return len(data)


def _source_object(uri: str) -> tuple[str, str]:
    try:
        bucket, key = parse_gs_uri(uri)
    except ValueError as exc:
        raise SourceError(str(exc), file=uri, hint="write gs://bucket/object") from exc
    if not key or key.endswith("/"):
        raise SourceError("names a bucket or folder, not an object", file=uri)
    return bucket, key


def stat_object(fs: GCSFileSystem, key: str) -> ObjectInfo | None:
    """The object named exactly ``key`` (``bucket/name``), or None when there is none."""
    try:
        info = fs.info(key)
    except FileNotFoundError:
        return None
    # info() answers "directory" when only longer names share the prefix: not this object.
    if info.get("type") != "file" or info.get("name") != key:
        return None
    return object_info(info)


def open_object(fs: GCSFileSystem, key: str) -> GCSFile:
    """Open object ``key`` for sequential reading, uncached; FileNotFoundError if not an object."""
    handle = fs.open(key, "rb", block_size=READ_SIZE, cache_type="none", concurrency=1)
    if handle.details.get("type") != "file":
        handle.close()
        raise FileNotFoundError(key)
    return handle


def object_info(info: dict[str, Any]) -> ObjectInfo:
    """An object's size, md5 (hex), crc32c and generation, from gcsfs's listing or info entry."""
    md5, generation = info.get("md5Hash"), info.get("generation")
    return ObjectInfo(
        size=int(info["size"]),
        md5=base64.b64decode(md5).hex() if md5 else None,
        crc32c=info.get("crc32c"),
        generation=str(generation) if generation else None,
    )


def _copy_hashing(handle: GCSFile, dest: Path, *, crc32c: bool) -> ObjectInfo:
    import google_crc32c  # installed with gcsfs; only composite objects need it

    md5, crc, size = hashlib.md5(), google_crc32c.Checksum() if crc32c else None, 0
    with open(dest, "wb") as out:
        while chunk := handle.read(READ_SIZE):
            md5.update(chunk)
            if crc is not None:
                crc.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    crc_b64 = base64.b64encode(crc.digest()).decode() if crc is not None else None
    return ObjectInfo(size=size, md5=md5.hexdigest(), crc32c=crc_b64)


def _http_status(exc: BaseException) -> int | None:
    for attribute in ("code", "status"):  # gcsfs HttpError.code, aiohttp ClientResponseError
        value = getattr(exc, attribute, None)
        if isinstance(value, int | str) and str(value).isdigit() and 100 <= int(value) < 600:
            return int(value)
    return None


def _hint(exc: BaseException, bucket: str) -> str:
    if unresolved_host(exc) is not None:
        return (
            "check the store's endpoint (STORAGE_EMULATOR_HOST, when set) and this machine's "
            "DNS and network"
        )
    if is_transient(exc):
        return "the store is unreachable or overloaded; try again later"
    if describe(exc).startswith(("access denied", "HTTP 401", "HTTP 403")):
        return f"check that the credentials may read and write gs://{bucket}"
    if isinstance(exc, FileNotFoundError):
        return f"check that the bucket gs://{bucket} exists"
    return "check the location's URI and credentials"


def _scrub(text: str) -> str:
    text = _SECRETS.sub(lambda m: (m.group(1) or "") + "…", text)
    return _URLS.sub(lambda m: redact(m.group(0)), text)


def _cause(exc: BaseException) -> BaseException | None:
    """``exc`` to chain to our error, or None when an error in its chain shows a secret.

    Chained errors are printed with tracebacks and logged: a URL with ``access_token=`` in one's
    text (requests puts it there) must not reach them.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if _scrub(str(seen)) != str(seen):
            return None
        seen = seen.__cause__ or seen.__context__
    return exc


def _store_errors() -> tuple[type[BaseException], ...]:
    import aiohttp
    import google.auth.exceptions
    import requests

    return (
        OSError,
        ValueError,
        _import_gcsfs().HttpError,
        aiohttp.ClientError,
        requests.RequestException,
        google.auth.exceptions.GoogleAuthError,
    )


class _NoRaisedTracebacks(logging.Filter):
    """Lower gcsfs's ``logger.exception`` records to DEBUG, without their traceback.

    gcsfs logs a traceback for each request that ran out of retries and then raises the same
    error, which this module turns into one message naming the object, the stage and what to
    do; the traceback would only bury that message (and could show a URL).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info or record.levelno >= logging.ERROR:
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def _import_gcsfs() -> Any:
    """gcsfs's core module, imported only after switching off its zonal-bucket support."""
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    import gcsfs.core  # the variable above must be set before this import

    logger = logging.getLogger("gcsfs")
    if not any(isinstance(f, _NoRaisedTracebacks) for f in logger.filters):
        logger.addFilter(_NoRaisedTracebacks())

    return gcsfs.core
