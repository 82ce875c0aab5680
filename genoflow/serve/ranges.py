"""One helper that serves every file: byte ranges and conditional requests (RFC 9110).

Invariants:
- a response body is streamed from the file in chunks of :data:`CHUNK` bytes; no file is ever
  read whole, and a client that goes away stops the reading. A chunk already in the page cache
  is read on the event loop with ``RWF_NOWAIT`` (which never waits for the disk), any other in a
  worker thread, so a hot range costs no thread hand-off and a cold one never blocks the loop;
  a body of one chunk is sent in one message without a watcher task;
- one range (after merging overlapping and adjacent ones) answers 206 with ``Content-Range``;
  several disjoint ranges answer 200 with the whole file (RFC 9110 §14.2 lets a server ignore
  Range; no genome client sends several, and a multipart body is one more framing to get
  wrong); a range that starts past the end answers 416 with ``Content-Range: bytes */size``; a
  Range header that does not parse answers 400; a unit other than ``bytes`` is ignored;
- the ETag is strong: the file's md5 from ``genoflow.json``, so it is the same on every node that
  holds a replica; Last-Modified is the artifact's publication time from the same marker;
- conditions are evaluated in RFC 9110 §13.2.2's order: If-Match (412), If-None-Match (304),
  If-Modified-Since (304, only without If-None-Match), then If-Range decides whether Range is
  honoured;
- artifacts are content-addressed, so every file response may be cached for a year.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import re
from dataclasses import dataclass
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path

import anyio
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from genoflow.core.errors import GenoflowError

CHUNK = 256 * 1024
MAX_RANGE_PARTS = 64
IMMUTABLE = "public, max-age=31536000, immutable"
_INT_RANGE = re.compile(r"(\d{1,19})-(\d{0,19})")
_SUFFIX_RANGE = re.compile(r"-(\d{1,19})")


class RangeError(GenoflowError):
    """A Range header the server cannot honour."""

    default_stage = "serve"


class MalformedRange(RangeError):
    """The Range header does not parse (answered 400)."""


class UnsatisfiableRange(RangeError):
    """No range of the header overlaps the file (answered 416)."""


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The one byte span ``[start, end)`` a Range header asks for, or None to send the file whole.

    Args:
        header: the Range header's value.
        size: the file's size in bytes.

    Raises:
        MalformedRange: a range-spec does not parse, or ``last < first``.
        UnsatisfiableRange: no range-spec overlaps the file.
    """
    unit, equals, specs = header.partition("=")
    if not equals:
        raise MalformedRange("the Range header has no '='", file=header[:80])
    if unit.strip().lower() != "bytes":
        return None  # RFC 9110 §14.2: a range unit the server does not know is ignored
    parts = [part.strip() for part in specs.split(",") if part.strip()]
    if not parts:
        raise MalformedRange("the Range header names no range", file=header[:80])
    if len(parts) > MAX_RANGE_PARTS:
        return None
    spans = [span for span in (_span(part, size) for part in parts) if span is not None]
    if not spans:
        raise UnsatisfiableRange(f"no range lies within the file's {size} bytes", file=header[:80])
    merged = _merge(spans)
    return merged[0] if len(merged) == 1 else None


def _span(part: str, size: int) -> tuple[int, int] | None:
    """One range-spec as ``[start, end)`` clipped to the file, or None when unsatisfiable."""
    whole = _INT_RANGE.fullmatch(part)
    if whole:
        first, last = int(whole.group(1)), whole.group(2)
        end = size if not last else min(int(last) + 1, size)
        if last and int(last) < first:
            raise MalformedRange("a range ends before it starts", file=part)
        return (first, end) if first < size else None
    suffix = _SUFFIX_RANGE.fullmatch(part)
    if suffix:
        length = int(suffix.group(1))
        return (max(size - length, 0), size) if length and size else None
    raise MalformedRange("a range is not first-last, first- or -suffix", file=part)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def http_date(moment: dt.datetime) -> str:
    """An IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``), to the second."""
    return format_datetime(moment.astimezone(dt.UTC).replace(microsecond=0), usegmt=True)


def _parse_date(value: str) -> dt.datetime | None:
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _tags(value: str) -> list[str]:
    return [tag.strip() for tag in value.split(",") if tag.strip()]


def _weak_match(value: str, etag: str) -> bool:
    return any(tag == "*" or tag.removeprefix("W/") == etag for tag in _tags(value))


@dataclass(frozen=True)
class Representation:
    """What is known of one file before a byte of it is read.

    Attributes:
        path: the file (found through the catalog, never built from a request).
        size: its size as ``genoflow.json`` records it.
        md5: its md5 as ``genoflow.json`` records it (the strong ETag).
        modified: when its artifact was published.
        media_type: its Content-Type.
    """

    path: Path
    size: int
    md5: str
    modified: dt.datetime
    media_type: str

    @property
    def etag(self) -> str:
        return f'"{self.md5}"'

    def headers(self) -> dict[str, str]:
        """The validators and caching headers every answer about this file carries."""
        return dict(self._common)

    @functools.cached_property
    def _common(self) -> tuple[tuple[str, str], ...]:
        # Built once per representation: http_date() alone costs more than a cached read.
        return (
            ("ETag", self.etag),
            ("Last-Modified", http_date(self.modified)),
            ("Cache-Control", IMMUTABLE),
            ("Accept-Ranges", "bytes"),
            ("X-Content-Type-Options", "nosniff"),
        )

    @functools.cached_property
    def raw_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """:meth:`headers` as ASGI header pairs (lower-case names), once per representation."""
        return tuple((k.lower().encode(), v.encode("latin-1")) for k, v in self._common)

    @functools.cached_property
    def private_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """:attr:`raw_headers` for an answer that needed a token: ``Cache-Control: private``
        (as :class:`genoflow.serve.middleware.RequireToken` makes it)."""
        return tuple(
            (k, v.replace(b"public", b"private") if k == b"cache-control" else v)
            for k, v in self.raw_headers
        )


def precondition(headers: Headers, method: str, rep: Representation) -> int | None:
    """412 or 304 when a conditional header says so (RFC 9110 §13.2.2), else None."""
    if_match = headers.get("if-match")
    if if_match is not None and not any(tag in ("*", rep.etag) for tag in _tags(if_match)):
        return 412
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        return 304 if _weak_match(if_none_match, rep.etag) else None
    since = headers.get("if-modified-since")
    if since is not None and method in ("GET", "HEAD"):
        moment = _parse_date(since)
        if moment is not None and rep.modified.replace(microsecond=0) <= moment:
            return 304
    return None


def range_applies(headers: Headers, rep: Representation) -> bool:
    """Whether If-Range (absent, or naming this very representation) lets Range apply."""
    if_range = headers.get("if-range")
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith(('"', "W/")):
        return value == rep.etag  # strong comparison: a weak tag never matches
    moment = _parse_date(value)
    return moment is not None and moment == rep.modified.replace(microsecond=0)


def file_response(headers: Headers, method: str, rep: Representation) -> Response:
    """The answer to a GET or HEAD of one file: 200, 206, 304, 400, 412 or 416."""
    common = rep.headers()
    status = precondition(headers, method, rep)
    if status == 304:
        return Response(status_code=304, headers=common)
    if status == 412:
        return Response(status_code=412, headers=common)
    span = None
    header = headers.get("range")
    if header is not None and range_applies(headers, rep):
        try:
            span = parse_range(header, rep.size)
        except MalformedRange as exc:
            return Response(f"{exc}\n", 400, common, media_type="text/plain")
        except UnsatisfiableRange:
            return Response(b"", 416, {**common, "Content-Range": f"bytes */{rep.size}"})
    if span is None:
        return FileSlice(rep.path, 0, rep.size, 200, common, rep.media_type)
    start, end = span
    common["Content-Range"] = f"bytes {start}-{end - 1}/{rep.size}"
    return FileSlice(rep.path, start, end, 206, common, rep.media_type)


class FileSlice(Response):
    """Bytes ``[start, end)`` of a file, streamed chunk by chunk (nothing for HEAD).

    Args:
        path: the file.
        start: the first byte sent.
        end: one past the last byte sent.
        status: 200 or 206.
        headers: headers to send (Content-Length and Content-Type are set here).
        media_type: the Content-Type.
    """

    def __init__(
        self,
        path: Path,
        start: int,
        end: int,
        status: int,
        headers: dict[str, str],
        media_type: str,
    ) -> None:
        self.path, self.start, self.end = path, start, end
        self.status_code = status
        self.media_type = None  # set as is: Starlette would add a charset no file promises
        self.background = None
        self.body = b""
        length = str(end - start)
        self.init_headers({**headers, "Content-Type": media_type, "Content-Length": length})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})  # fmt: skip
        if scope["method"] == "HEAD" or self.start == self.end:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        # The route has just stat'ed the path, so its inode is in memory and open() finds it.
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if self.end - self.start <= CHUNK:  # one message: nothing to stop when a client leaves
                await self._stream(fd, send)
                return
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    await self._stream(fd, send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()  # the client went away: stop reading
        finally:
            os.close(fd)

    async def _stream(self, fd: int, send: Send) -> None:
        offset = self.start
        while offset < self.end:
            chunk = await self._read(fd, offset, min(CHUNK, self.end - offset))
            offset += len(chunk)
            more = offset < self.end
            await send({"type": "http.response.body", "body": chunk, "more_body": more})

    async def _read(self, fd: int, offset: int, want: int) -> bytes:
        """``want`` bytes at ``offset`` (fewer only at a premature end of file, which raises)."""
        return await read_at(fd, offset, want, self.path, self.end)


async def read_at(fd: int, offset: int, want: int, path: Path, end: int) -> bytes:
    """``want`` bytes of ``fd`` at ``offset``: from the page cache on the event loop when it
    holds them, else in a worker thread.

    Raises:
        RangeError: the file ends at ``offset``, before the ``end`` its marker records.
    """
    chunk = _cached_read(fd, want, offset)
    if chunk is None:
        chunk = await anyio.to_thread.run_sync(os.pread, fd, want, offset)
    if not chunk:
        raise RangeError(
            f"the file ended at byte {offset}, before the {end} its marker records",
            file=str(path),
            hint="run `genoflow verify --repair`",
        )
    return chunk


_NOWAIT = getattr(os, "RWF_NOWAIT", None)  # Linux 4.14+


def _cached_read(fd: int, want: int, offset: int) -> bytes | None:
    """``want`` bytes at ``offset`` when the page cache holds them all, read without waiting for
    the disk; None when it does not (or the platform cannot tell), so a thread reads them."""
    if _NOWAIT is None:
        return None
    buffer = bytearray(want)
    try:
        got = os.preadv(fd, [buffer], offset, _NOWAIT)
    except OSError:  # EAGAIN: not cached; EOPNOTSUPP: the file system cannot tell
        return None
    return bytes(buffer) if got == want else None
