"""Who may talk to ``nnseg serve``: the bearer token, and the guards against web pages.

With a token set, every endpoint but ``/health`` and MONAI Label's login endpoints (``/auth/``, ``/auth/token``)
needs ``Authorization: Bearer <token>``. A server bound to anything but the loopback interface must have a token:
:func:`check_binding` refuses to start otherwise.

A token-less server on 127.0.0.1 is still reachable from any web page the user opens. :class:`SameOrigin` (403)
closes the two ways in: DNS rebinding (a page whose name resolves to 127.0.0.1 sends ``Host: evil.example``; only
loopback names and ``--allowed_host`` names are accepted when there is no token) and cross-site requests (a page's
``fetch`` or HTML form POSTs an image: a state-changing request whose ``Origin`` is not this server's own, nor an
``--allowed_origin``, or whose ``Sec-Fetch-Site`` says cross-site, is refused). Programs (curl, 3D Slicer, Python
clients) send no ``Origin`` and are not affected.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import os
import secrets
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

TOKEN_ENV = "NNSEG_SERVE_TOKEN"
MIN_TOKEN_LENGTH = 16
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def resolve_token(token: str | None, env: dict[str, str] | None = None) -> str | None:
    """``--token``, else ``$NNSEG_SERVE_TOKEN``, else None (no authentication).

    Raises:
        ValueError: a token shorter than 16 characters.
    """
    value = token if token else (os.environ if env is None else env).get(TOKEN_ENV) or None
    if value is not None and len(value) < MIN_TOKEN_LENGTH:
        raise ValueError(f"the server token has {len(value)} characters; use at least {MIN_TOKEN_LENGTH}, e.g. "
                         f"{secrets.token_urlsafe(24)!r} (--token or ${TOKEN_ENV})")
    return value


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    """Refuse a server reachable from other machines without a token.

    Raises:
        ValueError: ``host`` is not loopback and no token is set.
    """
    if token is None and not is_loopback(host):
        raise ValueError(f"refusing to serve on {host} without authentication: anyone who reaches it could run "
                         f"models on your hardware and send images. Set a token with --token or ${TOKEN_ENV} "
                         f"(e.g. {secrets.token_urlsafe(24)}), or bind to 127.0.0.1")


def authorized(header: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header carries the token (always True when no token is set)."""
    if token is None:
        return True
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


DRAIN_BYTES = 64 << 20
DRAIN_IDLE_S = 1.0


async def drain(receive: Receive, *, limit: int = DRAIN_BYTES, idle_s: float = DRAIN_IDLE_S) -> None:
    """Read and drop the rest of a refused request body while it keeps coming (up to ``limit`` bytes, each piece
    within ``idle_s``): a server that closes the connection while the client is still sending makes the kernel reset
    it, and the client may never read the answer. A body that is declared but not sent (a lying ``Content-Length``)
    costs ``idle_s``, not the declared length."""
    dropped = 0
    while dropped <= limit:
        try:
            message = await asyncio.wait_for(receive(), idle_s)
        except asyncio.TimeoutError:
            return
        dropped += len(message.get("body", b""))
        if message.get("type") != "http.request" or not message.get("more_body"):
            return


async def send_json(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    """Answer a plain ASGI request with ``{"detail": ...}`` (the middlewares' refusals)."""
    body = json.dumps({"detail": detail}).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


class BearerAuth:
    """ASGI middleware: 401 unless the request carries the token (paths in ``public`` excepted)."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, token: str | None, public: Collection[str]) -> None:
        self.app = app
        self.token = token
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.token is not None and scope["path"] not in self.public:
            header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            if not authorized(header, self.token):
                await send_json(send, 401, "missing or wrong bearer token: send 'Authorization: Bearer <token>' (the "
                                "server's --token / $NNSEG_SERVE_TOKEN)", {"WWW-Authenticate": "Bearer"})
                return
        await self.app(scope, receive, send)


@dataclass(frozen=True)
class RequestGuard:
    """The rules of :class:`SameOrigin` (and the body timeout of :class:`nnseg.serve.automatic.uploads.SizeLimit`)."""

    hosts: set[str] | None = None  # Host names accepted (None: any, e.g. a server with a token)
    origins: set[str] = field(default_factory=set)  # browser origins allowed to change state
    body_timeout_s: float = 20.0


def host_name(header: str) -> str:
    """The name in a ``Host`` header, without port and brackets, lower case (``[::1]:80`` -> ``::1``)."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def refusal(method: str, headers: dict[bytes, bytes], guard: RequestGuard) -> str | None:
    """Why a request is refused by the Host / cross-origin rules (None: accepted)."""
    host = headers.get(b"host", b"").decode("latin-1")
    if guard.hosts is not None and host and not (host_name(host) in guard.hosts or is_loopback(host_name(host))):
        return (f"the Host header {host[:100]!r} is not a name of this server; it is refused so that web pages cannot "
                "reach it by DNS rebinding. Use http://127.0.0.1:<port>/ (or start the server with --allowed_host "
                "NAME for a name of yours)")
    if method in SAFE_METHODS:
        return None
    origin = headers.get(b"origin", b"").decode("latin-1").strip()
    site = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower()
    if origin and origin not in guard.origins and (origin == "null" or urlsplit(origin).netloc.lower() != host.lower()):
        return (f"cross-origin {method} refused: a web page from {origin[:100]!r} may not send requests that run or "
                "change work on this server; call it from a program (no Origin header) or the same origin, or start "
                "the server with --allowed_origin ORIGIN for a web app you trust")
    if not origin and site in ("cross-site", "same-site"):
        return (f"cross-site {method} refused (Sec-Fetch-Site: {site}): a web page may not send requests that run or "
                "change work on this server; start it with --allowed_origin ORIGIN for a web app you trust")
    return None


class SameOrigin:
    """ASGI middleware: 403 for a foreign ``Host`` (token-less servers) and for cross-origin state changes."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, guard: RequestGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            why = refusal(scope["method"], dict(scope.get("headers") or []), self.guard)
            if why is not None:
                await drain(receive)
                await send_json(send, 403, why, {"Connection": "close"})
                return
        await self.app(scope, receive, send)
