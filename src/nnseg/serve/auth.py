"""Bearer-token authentication of ``nnseg serve``.

With a token set, every endpoint but ``/health`` and MONAI Label's login endpoints (``/auth/``, ``/auth/token``)
needs ``Authorization: Bearer <token>``. A server bound to anything but the loopback interface must have a token:
:func:`check_binding` refuses to start otherwise.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets

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
