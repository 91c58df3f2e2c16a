"""`conveyor serve`'s HTTP server: uvicorn, with what it lacks against a hostile network.

- A connection must send a complete request (head and body) within `request_timeout` seconds
  of its first byte, or of opening; else it is closed. A silent connection, or one that
  dribbles a request head a byte at a time, cannot hold a file descriptor for long.
- An idle keep-alive connection is closed after `KEEP_ALIVE_S`.
- At most `limit` connections are open at once; one more is closed as soon as it is accepted.
  (Each open event stream holds one, and the API allows `MAX_STREAMS` of those.)
- A request uvicorn cannot parse (a malformed request line, a head over `MAX_HEAD_BYTES`)
  gets the JSON error shape and the security headers, like every other answer. No `server`
  header names the software.
- Proxy headers (`X-Forwarded-For`, `X-Forwarded-Proto`) are believed only from the addresses
  in `forwarded_allow_ips`; by default from none.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from conveyor.config import SERVE_CONNECTION_LIMIT, SERVE_REQUEST_TIMEOUT_S
from conveyor.logging import get_logger
from conveyor.web.guard import HEADERS

#: Seconds an idle keep-alive connection stays open.
KEEP_ALIVE_S = 5
#: The largest request head (request line and headers).
MAX_HEAD_BYTES = 16 * 1024

log = get_logger("conveyor.web")


class GuardedProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for every request and a connection cap."""

    request_timeout = SERVE_REQUEST_TIMEOUT_S
    limit = SERVE_CONNECTION_LIMIT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limit:
            log.warning("http.connection_refused", reason="too many connections", limit=self.limit)
            transport.abort()
            return
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._watch_request()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:  # refused in connection_made
            return
        self._stop_watch()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # idle now: uvicorn's keep-alive timeout closes it unless a new request begins
        self._stop_watch()

    def _watch_request(self) -> None:
        """Keep a deadline while a request is being received; none once it is all in."""
        receiving = self.conn.their_state in (h11.IDLE, h11.SEND_BODY)
        if self.transport.is_closing() or not receiving:
            self._stop_watch()
        elif self._deadline is None and (
            self.conn.their_state is h11.SEND_BODY
            or self.cycle is None
            or self.cycle.response_complete  # a new request on a kept-alive connection
        ):
            self._deadline = self.loop.call_later(self.request_timeout, self._too_slow)

    def _stop_watch(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        log.info(
            "http.request_timeout",
            client=self.client and self.client[0],
            seconds=self.request_timeout,
        )
        if self.conn.our_state is h11.IDLE and self.conn.their_state is h11.IDLE:
            self.send_error(408, "the request was not sent in time", close=True)
        else:
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self.send_error(400, "invalid HTTP request", close=True)

    def send_error(self, status: int, error: str, *, close: bool) -> None:
        """An error answered by the server itself: the JSON shape, the security headers."""
        body = json.dumps({"error": error, "detail": None}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *HEADERS,
        ]
        try:
            self.transport.write(self.conn.send(h11.Response(status_code=status, headers=headers)))
            self.transport.write(self.conn.send(h11.Data(data=body)) or b"")
            self.transport.write(self.conn.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError:  # the connection is past where a response can go
            log.info("http.error_not_sent", status=status, error=error)
        if close:
            self.transport.close()


def run(
    api: Any,
    *,
    host: str,
    port: int,
    log_level: str,
    request_timeout: float = SERVE_REQUEST_TIMEOUT_S,
    limit: int = SERVE_CONNECTION_LIMIT,
    forwarded_allow_ips: str | None = None,
) -> None:
    """Serve `api` until SIGINT or SIGTERM."""
    protocol = type(
        "Protocol", (GuardedProtocol,), {"request_timeout": request_timeout, "limit": limit}
    )
    uvicorn.run(
        api,
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=False,
        http=protocol,
        server_header=False,
        timeout_keep_alive=KEEP_ALIVE_S,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        proxy_headers=forwarded_allow_ips is not None,
        forwarded_allow_ips=forwarded_allow_ips or "",
    )
