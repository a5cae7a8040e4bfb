"""The page and its static assets, served without a token (they hold no data) and with a Content-Security-Policy.

Only the files in ``static/`` are served, by exact name (no path is built from the request). The policy lets the page
load scripts, styles, fonts and images from the server itself only (``data:``/``blob:`` images for the report's
inline PNGs and downloads; inline styles for the report's coloured table cells): no third-party request is possible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

STATIC = Path(__file__).resolve().parent / "static"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml",
                 ".txt": "text/plain; charset=utf-8", ".json": "application/json"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "font-src 'self' data:; connect-src 'self' data: blob:; worker-src 'self' blob:; frame-src 'self'; "
       "child-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}
INDEX = "index.html"


def asset_names(folder: Path = STATIC) -> dict[str, Path]:
    """URL name -> file of every served asset (the built page); empty when the page was not built."""
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix in CONTENT_TYPES}


def public_paths(folder: Path = STATIC) -> set[str]:
    """The page's paths, which need no token (the page asks for it and sends it with every API call)."""
    return {"/", *(f"/static/{name}" for name in asset_names(folder))}


def _missing_page() -> str:
    return ("<!DOCTYPE html><html lang=\"en\"><meta charset=\"utf-8\"><title>nnseg serve</title><body><h1>nnseg serve"
            "</h1><p>The browser page was not built into this installation (src/nnseg/serve/page/static is empty). "
            "Run <code>./dev.sh setup</code> (or <code>cd web &amp;&amp; npm ci &amp;&amp; npm run build</code>) in "
            "the source checkout, or install a released nnseg. The REST API (<a href=\"/docs\">/docs</a>) works "
            "without it.</p></body></html>")


def page_router(folder: Path = STATIC) -> Any:
    """``GET /`` (the page) and ``GET /static/{name}`` (its assets), each with :data:`SECURITY_HEADERS`."""
    from fastapi import APIRouter
    from fastapi.responses import HTMLResponse, Response

    router = APIRouter()
    assets = asset_names(folder)

    @router.get("/", include_in_schema=False)
    async def index() -> Any:
        if INDEX not in assets:
            return HTMLResponse(_missing_page(), headers=SECURITY_HEADERS)
        return Response(assets[INDEX].read_bytes(), media_type=CONTENT_TYPES[".html"], headers=SECURITY_HEADERS)

    @router.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Any:
        path = assets.get(name)
        if path is None:
            return Response(b"not found", status_code=404, media_type="text/plain", headers=SECURITY_HEADERS)
        return Response(path.read_bytes(), media_type=CONTENT_TYPES[path.suffix], headers=SECURITY_HEADERS)

    return router
