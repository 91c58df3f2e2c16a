"""What every response of `conveyor serve` carries, and what every request may not exceed.

A pure ASGI middleware: it refuses a body larger than `max_body` bytes with 413 (by its
Content-Length, and by counting when it has none), a NUL character in the path or query
string with 400 (no store can hold it), and — on a server without tokens, which only loopback
may reach — a Host header naming anything but this machine (a DNS-rebinding page would
otherwise be "same-origin" with it); and it adds the security headers — a strict
Content-Security-Policy (scripts, styles and connections from this origin only, no inline
script or style, no framing), no MIME sniffing, no referrer sent to other sites.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The largest request body accepted.
MAX_BODY_BYTES = 1 << 20

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})


def cross_site(request: Request) -> bool:
    """A browser sent this from a page of another site (or origin): by `Sec-Fetch-Site`, or
    an `Origin` (else `Referer`) that is not this server's. Programs send neither."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        return True
    sender = request.headers.get("origin") or request.headers.get("referer")
    if sender is None:
        return False
    parts = urlsplit(sender)
    return f"{parts.scheme}://{parts.netloc}" != f"{request.url.scheme}://{request.url.netloc}"


class BodyTooLarge(HTTPException):
    def __init__(self) -> None:
        super().__init__(413, "the request body is too large")


def host_name(host: bytes) -> str:
    """`localhost` of `localhost:8000`, `[::1]` of `[::1]:8000`."""
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text.partition("]")[0] + "]"
    return text.rpartition(":")[0] if text.count(":") == 1 else text


class Guard:
    def __init__(
        self, app: ASGIApp, max_body: int = MAX_BODY_BYTES, loopback_only: bool = False
    ) -> None:
        self.app, self.max_body, self.loopback_only = app, max_body, loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.loopback_only and host_name(headers.get(b"host", b"")) not in LOOPBACK_HOSTS:
            await self._refuse(send, 421, "this server answers only to 127.0.0.1 and localhost",
                               "it has no API tokens: it serves this machine only")  # fmt: skip
            return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await self._refuse(send, 413, "the request body is too large",
                               {"max_bytes": self.max_body})  # fmt: skip
            return
        if "\x00" in scope["path"] or b"%00" in scope["query_string"].lower():
            await self._refuse(send, 400, "the path or query string holds a NUL character")
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge
            return message

        async def headed(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), *HEADERS]}
            await send(message)

        try:
            await self.app(scope, counted, headed)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(send, 413, "the request body is too large",
                               {"max_bytes": self.max_body})  # fmt: skip

    async def _refuse(self, send: Send, status: int, error: str, detail: Any = None) -> None:
        data = json.dumps({"error": error, "detail": detail}).encode()
        await send({
            "type": "http.response.start", "status": status,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(data)).encode()), *HEADERS],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": data})
