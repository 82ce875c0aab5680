"""The HTTP/1.1 protocol ``genoflow serve`` runs under uvicorn: httptools with a bounded head.

uvicorn's httptools protocol buffers a request's head (its target and headers) however long it
grows, before any ASGI layer sees it, so :class:`genoflow.serve.middleware.Bounds` alone would
refuse a 20 MB header only after holding it in memory.

Invariant: a connection that has sent more than :data:`MAX_HEAD` bytes (give or take one read
of the socket) without completing a request head is answered 431 and closed; no more of it is
read. Heads within the bound reach
the middleware, which applies the exact limits (414 for the target, 431 for the headers).
Without httptools, uvicorn's h11 protocol is used with the same bound
(``h11_max_incomplete_event_size``).
"""

from __future__ import annotations

from typing import Any

from genoflow.serve.middleware import MAX_HEADERS, MAX_TARGET

MAX_HEAD = MAX_TARGET + MAX_HEADERS + 16384  # the request line, headers and their framing
_REFUSAL = b"a request head (target and headers) may hold at most %d bytes" % MAX_HEAD


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools (uvicorn without its standard extras)
    HttpToolsProtocol = None


def uvicorn_options() -> dict[str, Any]:
    """The ``http`` protocol (and its head bound) to pass to ``uvicorn.run``."""
    if HttpToolsProtocol is None:
        return {"http": "h11", "h11_max_incomplete_event_size": MAX_HEAD}
    return {"http": BoundedHttpTools}


if HttpToolsProtocol is not None:

    class BoundedHttpTools(HttpToolsProtocol):
        """uvicorn's httptools protocol that stops reading an overlong request head (a module
        attribute, so that uvicorn's worker processes unpickle it by name)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head, self._head_bytes = True, 0

        def data_received(self, data: bytes) -> None:
            # One read is at most the transport's buffer (tens of KiB): the parser takes it,
            # and a head still incomplete beyond the bound is refused before the next read.
            if self._in_head:
                self._head_bytes += len(data)
            super().data_received(data)
            if self._in_head and self._head_bytes > MAX_HEAD:
                self._refuse()

        def on_headers_complete(self) -> None:
            self._in_head, self._head_bytes = False, 0
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_head = True
            super().on_message_complete()

        def _refuse(self) -> None:
            if self.transport.is_closing():
                return
            head = (
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n" % len(_REFUSAL)
            )
            self.transport.write(head + _REFUSAL)
            self.transport.close()
