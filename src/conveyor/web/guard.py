"""What every response of `conveyor serve` carries, and what every request may not exceed.

A pure ASGI middleware, outside everything else the server runs (see `GuardedAPI`), so even
an unhandled error answers in the JSON shape with the security headers. It refuses:

- a body larger than `max_body` bytes with 413 (by its Content-Length, and by counting when it
  has none), and a NUL character in the path or query string with 400 (no store can hold it);
- a request a browser sent from another origin, with 403: a `fetch`, a form, an event stream
  or an embedded resource whose `Origin` is not this server's, or whose `Sec-Fetch-Site` says
  another site, or (for writes from browsers that send neither) whose `Referer` is another
  origin. Following a link to the dashboard from elsewhere (a top-level navigation) is allowed;
  programs send none of these headers;
- on a server without tokens, which only this machine may use: a Host header naming anything
  but this machine (a DNS-rebinding page would otherwise be "same-origin" with it), a client
  that is not on a loopback address, and any request that came through a proxy (it carries
  `Forwarded`, `X-Forwarded-For`, `X-Real-IP` or `Via`): a proxy would open it to everyone.

It adds the security headers — a strict Content-Security-Policy (scripts, styles and
connections from this origin only, no inline script or style, no framing), no MIME sniffing, no
referrer sent to other sites — and makes a `Location` that names this server relative, so a
forged Host header is never reflected into a redirect.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.logging import get_logger

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
    (b"cross-origin-resource-policy", b"same-origin"),
]
#: Headers a reverse proxy adds: a server without tokens refuses requests carrying any.
PROXY_HEADERS = (b"forwarded", b"x-forwarded-for", b"x-real-ip", b"via")
#: Where the server's own origin (its public URL's) is kept in a request's scope.
ORIGIN_KEY = "conveyor.origin"

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})

log = get_logger("conveyor.web")


def origin_of(url: str) -> str:
    """`https://example.com:8443` of any URL (scheme and host lower-cased)."""
    parts = urlsplit(url.strip())
    return f"{parts.scheme.lower()}://{parts.netloc.lower().rpartition('@')[2]}"


def own_origin(scope: Scope) -> str:
    """This server's origin as the browser sees it: the public URL if one is configured, else
    the request's scheme (https behind a trusted proxy) and Host."""
    if ORIGIN_KEY in scope:
        return str(scope[ORIGIN_KEY])
    host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
    return f"{scope.get('scheme', 'http')}://{host.lower()}"


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


class BodyTooLarge(HTTPException):
    def __init__(self) -> None:
        super().__init__(413, "the request body is too large")


def host_name(host: bytes) -> str:
    """`localhost` of `localhost:8000`, `[::1]` of `[::1]:8000`."""
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text.partition("]")[0] + "]"
    return text.rpartition(":")[0] if text.count(":") == 1 else text


def relative(location: bytes, host: bytes) -> bytes:
    """A redirect to this server (by its Host) as a path: the Host is never reflected."""
    parts = urlsplit(location.decode("latin-1"))
    if not parts.scheme or parts.netloc.encode("latin-1").lower() != host.lower():
        return location
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return path.encode("latin-1")


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        max_body: int = MAX_BODY_BYTES,
        loopback_only: bool = False,
        public_url: str | None = None,
    ) -> None:
        self.app, self.max_body, self.loopback_only = app, max_body, loopback_only
        self.public_origin = origin_of(public_url) if public_url else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.public_origin is not None:
            scope[ORIGIN_KEY] = self.public_origin
        headers = dict(scope["headers"])
        refused = self.refusal(scope, headers)
        if refused is not None:
            await self._refuse(send, *refused)
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
                sent = [
                    (k, relative(v, headers.get(b"host", b"")) if k.lower() == b"location" else v)
                    for k, v in message.get("headers", [])
                ]
                message = {**message, "headers": [*sent, *HEADERS]}
            await send(message)

        try:
            await self.app(scope, counted, headed)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(
                send, 413, "the request body is too large", {"max_bytes": self.max_body}
            )
        except Exception:
            if started:  # the app's error handler answered already (or the response broke)
                raise
            log.exception("http.error", method=scope.get("method"), path=scope.get("path"))
            await self._refuse(send, 500, "internal server error")

    def refusal(self, scope: Scope, headers: dict[bytes, bytes]) -> tuple[Any, ...] | None:
        """(status, error, detail) of a request refused before it reaches the app, or None."""
        if self.loopback_only:
            if host_name(headers.get(b"host", b"")) not in LOOPBACK_HOSTS:
                return (
                    421,
                    "this server answers only to 127.0.0.1 and localhost",
                    "it has no API tokens: it serves this machine only",
                )
            client = scope.get("client")
            if (client is not None and not is_loopback(client[0])) or any(
                h in headers for h in PROXY_HEADERS
            ):
                return (
                    403,
                    "this server has no API tokens: it serves this machine only",
                    "set CONVEYOR_API_TOKENS to serve other machines or a proxy",
                )
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return 413, "the request body is too large", {"max_bytes": self.max_body}
        if "\x00" in scope["path"] or b"%00" in scope["query_string"].lower():
            return 400, "the path or query string holds a NUL character", None
        if self.from_another_origin(scope, headers):
            return 403, "cross-site requests are refused", "call it from a program"
        return None

    def from_another_origin(self, scope: Scope, headers: dict[bytes, bytes]) -> bool:
        own = own_origin(scope)
        sender = headers.get(b"origin")
        if sender is not None and sender != b"null":
            return origin_of(sender.decode("latin-1")) != own
        navigation = scope["method"] in ("GET", "HEAD") and (
            headers.get(b"sec-fetch-mode") in (None, b"navigate")
        )
        if headers.get(b"sec-fetch-site") in (b"cross-site", b"same-site") and not navigation:
            return True
        if sender == b"null":  # a sandboxed or opaque page: never this dashboard's own
            return not navigation
        referer = headers.get(b"referer")
        if scope["method"] not in ("GET", "HEAD") and referer is not None:
            return origin_of(referer.decode("latin-1")) != own
        return False

    async def _refuse(self, send: Send, status: int, error: str, detail: Any = None) -> None:
        data = json.dumps({"error": error, "detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                    *HEADERS,
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})


class GuardedAPI(FastAPI):
    """A FastAPI application with `Guard` outside all of it, error handling included."""

    #: Guard's settings; `create_api` sets them on each instance.
    guard: dict[str, Any] = {}

    def build_middleware_stack(self) -> ASGIApp:
        return Guard(super().build_middleware_stack(), **self.guard)
