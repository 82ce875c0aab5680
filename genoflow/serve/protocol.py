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

Invariant (:class:`HeadHold`): a response head goes out in the same write (one ``writev``) as
the body that follows it in the same step of the event loop; a head with no body in that step
goes out at the end of it. Bytes leave in the order they were written.
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


HELD = 16384  # a write at most this long, with nothing held, may be a head: held


class HeadHold:
    """A transport that holds a short write (uvicorn writes a response head on its own) until
    the next write or the end of the event loop's current step, then sends both in one
    ``writelines``: one system call per small answer instead of two.

    Args:
        transport: the connection's transport.
        loop: its event loop.
    """

    def __init__(self, transport: Any, loop: Any) -> None:
        self._transport, self._loop, self._held = transport, loop, None

    def write(self, data: bytes) -> None:
        held, self._held = self._held, None
        if held is not None:
            self._transport.writelines((held, data))
        elif len(data) <= HELD:
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Send what is held, if anything."""
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


if HttpToolsProtocol is not None:

    class BoundedHttpTools(HttpToolsProtocol):
        """uvicorn's httptools protocol that stops reading an overlong request head (a module
        attribute, so that uvicorn's worker processes unpickle it by name)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head, self._head_bytes = True, 0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.transport = HeadHold(transport, self.loop)  # what each request's cycle writes to

        def data_received(self, data: bytes) -> None:
            # One read is at most the transport's buffer (tens of KiB): the parser takes it,
            # and a head still incomplete beyond the bound is refused before the next read.
            if self._in_head:
                self._head_bytes += len(data)
            super().data_received(data)
            if self._in_head and self._head_bytes > MAX_HEAD:
                self._refuse()
            self._rearm_keep_alive()

        def _rearm_keep_alive(self) -> None:
            # uvicorn cancels the keep-alive timer on every read, and arms it only when a
            # response completes: the rest of a body that arrives after an early answer (a
            # 413) would leave the connection open for good.
            cycle = self.cycle
            if (
                cycle is not None
                and cycle.response_complete
                and not self.pipeline
                and self.timeout_keep_alive_task is None
                and not self.transport.is_closing()
            ):
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )

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
