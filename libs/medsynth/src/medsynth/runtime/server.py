"""How the api and ingest services are served: uvicorn, with deadlines for slow clients.

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive``, but sets no deadline for a
request's headers (h11 waits for the rest of them as long as the client likes) nor for its body, so a
client that opens a connection and goes quiet holds it, and a task, indefinitely. Here:

* :class:`HeaderTimeoutH11` — uvicorn's h11 protocol with a deadline for each request's headers,
  counted from the connection's opening or the previous response; past it, a client that sent part of
  a request gets 408 and the connection ends (one that sent nothing is closed).
* :class:`BodyTimeout` — ASGI middleware: each part of a request body must arrive within ``seconds``
  of the app asking for it (an upload may take as long as it keeps coming); past it, 408.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from medsynth.core.settings import Settings

log = logging.getLogger(__name__)

_LATE = b"the request's headers did not arrive in time"
REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                   b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_LATE), _LATE))


class HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol, with ``header_timeout_s`` for each request's headers to arrive."""

    def __init__(self, *args: Any, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_arrived()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:  # a request's headers are in: its cycle runs
            self._headers_arrived()

    def on_response_complete(self) -> None:
        self._await_headers()  # first: the base class may start a pipelined request, which stops the clock again
        super().on_response_complete()

    def _await_headers(self) -> None:
        self._headers_arrived()
        if not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _headers_arrived(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return
        if self.conn.trailing_data[0]:  # part of a request came: say why the connection ends
            log.info("%s: no complete request headers within %g s; 408", _client(self.client), self.header_timeout_s)
            self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()


class BodyTimeout:
    """ASGI middleware: a request whose body stops coming for ``seconds`` is answered 408 (and its
    connection closed). Only the body is timed: once its last part is in, ``receive`` waits untimed
    (for a disconnect, while a response streams)."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app, self.seconds = app, seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.seconds)
            except TimeoutError:
                log.info("%s %s from %s: no body data for %g s; 408", scope["method"], scope["path"],
                         _client(scope.get("client")), self.seconds)
                raise HTTPException(408, f"the request body stopped coming: nothing for {self.seconds:g} s",
                                    headers={"Connection": "close"}) from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, timed_receive, send)


def _client(client: Any) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"


def uvicorn_config(app: ASGIApp, settings: Settings, **overrides: Any):
    """uvicorn's configuration for a service: its address, medsynth's logging (none of uvicorn's own),
    the keep-alive and header deadlines (the body's is the app's :class:`BodyTimeout`)."""
    import uvicorn

    options: dict[str, Any] = {
        "host": settings.http_host, "port": settings.http_port, "log_config": None,
        "http": functools.partial(HeaderTimeoutH11, header_timeout_s=settings.http_header_timeout_s),
        "timeout_keep_alive": settings.http_keep_alive_s,
    }
    return uvicorn.Config(app, **(options | overrides))
