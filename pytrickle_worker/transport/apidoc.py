"""How a route module documents its HTTP routes for ``GET /openapi.json``.

A module that defines routes also exports their :class:`RouteDoc` entries, next to the
routes, so the two are edited together; whoever mounts the routes on the app registers the
entries with :func:`document_routes`. ``server/openapi.py`` builds the OpenAPI 3.1 document
from every registered entry (request and response bodies from the pydantic models named
here), and a test fails when the app has a route that no entry documents.

Every entry gets its error answers from the one error shape (``{"status": "error",
"message": ...}``): name the statuses in ``errors``; a route that needs the token gets its
401 without asking. WebSocket routes are entries too (``websocket=True``): a GET answered
with 101, listed again in the document's description with the protocol spelled out.

Kept in ``transport`` so that every front door, and the server above them, can use it.

A front door's routes module, for example::

    LIVE_ROUTE_DOCS = (
        RouteDoc("GET", "/labels", "Labels that have frames", tags=("live",),
                 replies=(Reply(200, "sorted labels", Body(LabelList)),),
                 errors={429: "too many requests from this client"}),
        RouteDoc("POST", "/frames", "Upload a frame", tags=("live",),
                 request=Body(content_type="multipart/form-data", schema={...}),
                 replies=(Reply(200, "stored", Body(UploadAnswer)),),
                 errors={400: "...", 413: "...", 415: "...", 422: "..."}),
        RouteDoc("GET", "/ws/labels/{label}", "Push of every new frame under a label",
                 description="binary messages: JSON header, b'--IMG--', JPEG ...",
                 tags=("live",), websocket=True),
    )

and where the routes are mounted: ``document_routes(app, LIVE_ROUTE_DOCS)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel

__all__ = [
    "ROUTE_DOCS_KEY",
    "Auth",
    "Body",
    "QueryParam",
    "Reply",
    "RouteDoc",
    "document_routes",
    "documented_routes",
]

#: Who may call a route when access control is on:
#: ``token``: ``Authorization: Bearer`` (static token or JWT);
#: ``token_or_query``: the same, or ``?token=`` for clients that cannot set headers;
#: ``open``: anyone (probes, the docs).
Auth = Literal["token", "token_or_query", "open"]


@dataclass(frozen=True, slots=True)
class Body:
    """A request or response body: JSON described by ``model``, or another media type with
    an optional raw JSON Schema (``None``: any bytes, e.g. a JPEG)."""

    model: type[BaseModel] | None = None
    content_type: str = "application/json"
    schema: Mapping[str, Any] | None = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class Reply:
    """One documented answer that is not an error (errors: :attr:`RouteDoc.errors`)."""

    status: int
    description: str
    body: Body | None = None
    #: header name -> what it says
    headers: Mapping[str, str] = field(default_factory=dict[str, str])


@dataclass(frozen=True, slots=True)
class QueryParam:
    name: str
    description: str
    required: bool = False
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True, slots=True)
class RouteDoc:
    """One operation: ``method`` and ``path`` exactly as registered on the router
    (``/camera/{camera_id}/image``)."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: str
    summary: str
    description: str = ""
    tags: tuple[str, ...] = ()
    replies: tuple[Reply, ...] = ()
    request: Body | None = None
    request_required: bool = True
    #: status -> when it is answered (with the error shape)
    errors: Mapping[int, str] = field(default_factory=dict[int, str])
    #: path parameter name -> what it is (every ``{name}`` of the path is documented anyway)
    path_params: Mapping[str, str] = field(default_factory=dict[str, str])
    query_params: tuple[QueryParam, ...] = ()
    auth: Auth = "token"
    #: A WebSocket upgrade: documented as a GET answered with 101; ``description`` tells the
    #: protocol (messages both ways) and is repeated in the document's description.
    websocket: bool = False


#: The entries registered for the app's routes, in registration order.
ROUTE_DOCS_KEY: web.AppKey[list[RouteDoc]] = web.AppKey("route_docs")


def document_routes(app: web.Application, docs: Iterable[RouteDoc]) -> None:
    """Register ``docs`` for routes mounted on ``app``; call it where they are mounted."""
    if ROUTE_DOCS_KEY not in app:
        app[ROUTE_DOCS_KEY] = []
    app[ROUTE_DOCS_KEY].extend(docs)


def documented_routes(app: web.Application) -> tuple[RouteDoc, ...]:
    return tuple(app.get(ROUTE_DOCS_KEY, ()))
