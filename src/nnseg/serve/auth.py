"""Bearer-token authentication of ``nnseg serve``.

With a token set, every endpoint but ``/health`` and MONAI Label's login endpoints (``/auth/``, ``/auth/token``)
needs ``Authorization: Bearer <token>``. A server bound to anything but the loopback interface must have a token:
:func:`check_binding` refuses to start otherwise.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import secrets
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

TOKEN_ENV = "NNSEG_SERVE_TOKEN"
MIN_TOKEN_LENGTH = 16


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
