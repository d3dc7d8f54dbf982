"""``GET /live``: the live-view page, and ``GET /live/static/{name}``: its script and style.

Plain files shipped as package data (``static/``), read once when the app is built and served
from memory: no build step, no CDN, so the page works offline. They hold no data (the page
fetches everything with the viewer's token), so the access control leaves them open.

The Content-Security-Policy keeps the page to its own origin: scripts and styles only from
``/live/static``, images from Blob URLs (the frames arrive over the WebSocket), connections
(fetch, WebSocket) only back to this worker.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

from aiohttp import web

from pytrickle_worker.transport.apidoc import Body, Reply, RouteDoc
from pytrickle_worker.transport.http_errors import error_response

__all__ = ["PAGE_PATH", "PAGE_ROUTE_DOCS", "STATIC_PATH", "LivePage", "page_routes"]

PAGE_PATH = "/live"
STATIC_PATH = "/live/static/{name}"
_PAGE_FILE = "live.html"
#: What the page may load; anything else under /live/static is a 404.
_STATIC_TYPES: dict[str, str] = {
    "live.js": "text/javascript",
    "live.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)


PAGE_ROUTE_DOCS: tuple[RouteDoc, ...] = (
    RouteDoc(
        "GET",
        PAGE_PATH,
        "The live view: a web page of the cameras' frames and detections",
        description=(
            "Plain HTML that loads its script and style from `/live/static/`. It holds no "
            "data: it calls `GET /labels`, `GET /labels/{label}/keys`, `WS /ws/labels/{label}` "
            "and `WS /ws/stream/{label}/{key}` with the viewer's token (asked for on a 401, "
            "kept in the tab's session storage, sent as `Authorization: Bearer` and as the "
            "WebSocket subprotocol `ptw.bearer.<base64url(token)>`)."
        ),
        tags=("live",),
        auth="open",
        replies=(
            Reply(200, "the page", Body(content_type="text/html")),
            Reply(304, "unchanged since the ETag sent in If-None-Match"),
        ),
    ),
    RouteDoc(
        "GET",
        STATIC_PATH,
        "The live page's script, style and icon",
        tags=("live",),
        auth="open",
        path_params={"name": "one of " + ", ".join(_STATIC_TYPES)},
        replies=(
            Reply(200, "the file", Body(content_type="text/javascript")),
            Reply(304, "unchanged since the ETag sent in If-None-Match"),
        ),
        errors={404: "no such file"},
    ),
)


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    content_type: str
    etag: str


def _read_asset(name: str, content_type: str) -> _Asset:
    body = resources.files("pytrickle_worker.frontdoors.live").joinpath("static", name).read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return _Asset(body, content_type, etag)


class LivePage:
    """The page's files, read from the package once, answered with an ETag (a reload with
    ``If-None-Match`` gets 304) and ``no-cache`` (an upgraded worker's page is never stale)."""

    def __init__(self) -> None:
        self._page = _read_asset(_PAGE_FILE, "text/html")
        self._static = MappingProxyType(
            {name: _read_asset(name, kind) for name, kind in _STATIC_TYPES.items()}
        )

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PAGE_PATH, self.page), web.get(STATIC_PATH, self.static)]

    async def page(self, request: web.Request) -> web.Response:
        return _answer(request, self._page)

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        asset = self._static.get(name)
        if asset is None:
            known = ", ".join(self._static)
            return error_response(404, f"no static file {name!r} (the page has: {known})")
        return _answer(request, asset)


def _answer(request: web.Request, asset: _Asset) -> web.Response:
    headers = {
        "ETag": asset.etag,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": _CSP,
        "Referrer-Policy": "no-referrer",
    }
    if asset.etag in {tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")}:
        return web.Response(status=304, headers=headers)
    return web.Response(
        body=asset.body, content_type=asset.content_type, charset="utf-8", headers=headers
    )


def page_routes() -> list[web.RouteDef]:
    """The page's routes, for ``app.router.add_routes``."""
    return LivePage().routes()
