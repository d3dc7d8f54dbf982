"""``GET /openapi.json`` (OpenAPI 3.1) and ``GET /docs`` (Swagger UI, offline).

The document is built from the :class:`~pytrickle_worker.transport.apidoc.RouteDoc` entries
the route modules registered on the app (:func:`build_openapi`): bodies come from the
pydantic models those entries name (their JSON Schemas, ``$defs`` hoisted into
``components.schemas``), every error answer refers to the one ``Error`` schema, and each
operation says whether it needs the token (``security: []`` on the open ones). It is built
on the first request, once every route module has registered its entries, and kept.

Swagger UI's files come from the ``swagger-ui-py`` package (Swagger UI 5, the first to render
OpenAPI 3.1); only four of them are served, from a fixed list, plus our own start-up script
(no inline script, and ``validatorUrl: null`` so the page never calls the public
validator): the page needs nothing from the network.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from pytrickle_worker.frontdoors.streamserver.schemas import ErrorBody
from pytrickle_worker.server.ratelimit import route_group
from pytrickle_worker.transport.apidoc import (
    Body,
    Reply,
    RouteDoc,
    document_routes,
    documented_routes,
)
from pytrickle_worker.transport.http_errors import error_response

logger = logging.getLogger(__name__)

__all__ = [
    "API_DESCRIPTION",
    "API_DOC_PATHS",
    "DOCS_PATH",
    "DOCS_STATIC_PATH",
    "OPENAPI_PATH",
    "ApiDocs",
    "attach_api_docs",
    "build_openapi",
    "find_swagger_ui",
]

OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"
DOCS_STATIC_PATH = "/docs/static/{name}"
_STATIC_PREFIX = "/docs/static/"
#: Open routes (server/security.py): they describe the API and hold no data.
API_DOC_PATHS: frozenset[str] = frozenset({OPENAPI_PATH, DOCS_PATH, DOCS_STATIC_PATH})

OPENAPI_VERSION = "3.1.0"
_REF = "#/components/schemas/{model}"
ERROR_SCHEMA = "Error"
_ERROR_REF = {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": (
            "`Authorization: Bearer <token>`: the static access token (PTW_ACCESS_TOKEN or "
            "PTW_ACCESS_TOKEN_FILE) or, where the worker is configured for them, a JWT "
            "(docs/SECURITY.md). Needed only when access control is configured; without it "
            "every route is open."
        ),
    },
    "queryToken": {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": (
            "`?token=<token>` for clients that cannot set headers (browser WebSockets, "
            "`<img>` tags); accepted on the CMS WebSocket and the camera image only."
        ),
    },
}
_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "open": [],
    "token": [{"bearerAuth": []}],
    "token_or_query": [{"bearerAuth": []}, {"queryToken": []}],
}
_UNAUTHORIZED = "no token, or a wrong one (`WWW-Authenticate: Bearer`)"
_RATE_LIMITED = "this client used its request budget for the window: wait `Retry-After` seconds"
#: ``{name}`` or ``{name:regex}`` in an aiohttp path.
_PATH_PARAM = re.compile(r"\{(\w+)(?::[^{}]*)?\}")

#: Swagger UI's files that /docs uses (name -> media type); nothing else is served.
SWAGGER_FILES: dict[str, str] = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
INIT_SCRIPT_NAME = "swagger-init.js"
_INIT_SCRIPT = f"""\
window.addEventListener("load", function () {{
  window.ui = SwaggerUIBundle({{
    url: "{OPENAPI_PATH}",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  }});
}});
"""
_CACHE_CONTROL = "public, max-age=3600"

API_DESCRIPTION = """\
The worker's HTTP API: the StreamServer REST API (under `/api` and, as go-livepeer calls it, \
at the root), health probes, hardware and version facts, camera images, Prometheus metrics, \
and the CMS WebSocket protocol.

**Errors.** Every error of every route (4xx, 5xx, unknown paths and methods included) has one \
body: `{"status": "error", "message": "..."}` (schema `Error`); a 400 names the bad field. \
The health probes are not errors: `/health` answers 200 with its status body in every \
state, `/health/ready` 503 with its readiness body.

**Access control** (when configured; docs/SECURITY.md): `Authorization: Bearer <token>` on \
every route except the ones marked open (no lock in Swagger UI): the probes, `/metrics` \
(unless PTW_METRICS_REQUIRE_TOKEN), this document and `/docs`. Request bodies are JSON, \
at most PTW_MAX_MESSAGE_BYTES (413)."""


def _openapi_path(path: str) -> str:
    return _PATH_PARAM.sub(r"{\1}", path)


def _operation_id(method: str, path: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", _openapi_path(path))
    return "_".join([method.lower(), *words]) if words else f"{method.lower()}_root"


def _models(docs: Sequence[RouteDoc]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    """Every (model, mode) the docs name, once each, in order."""
    found: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
    for doc in docs:
        if doc.request is not None and doc.request.model is not None:
            found[(doc.request.model, "validation")] = None
        for reply in doc.replies:
            if reply.body is not None and reply.body.model is not None:
                found[(reply.body.model, "serialization")] = None
    return list(found)


class _Builder:
    def __init__(self, docs: Sequence[RouteDoc]) -> None:
        self.docs = docs
        pairs = _models(docs)
        refs, defs = models_json_schema(pairs, ref_template=_REF) if pairs else ({}, {})
        self.refs: dict[tuple[Any, JsonSchemaMode], dict[str, Any]] = dict(refs)
        self.schemas: dict[str, Any] = dict(defs.get("$defs", {}))
        if ERROR_SCHEMA in self.schemas:
            raise ValueError(f"a model is named {ERROR_SCHEMA!r}, the error schema's name")
        error = ErrorBody.model_json_schema(ref_template=_REF)
        error["title"] = ERROR_SCHEMA
        self.schemas[ERROR_SCHEMA] = error

    def _content(self, body: Body, mode: JsonSchemaMode) -> dict[str, Any]:
        media: dict[str, Any] = {}
        if body.model is not None:
            media["schema"] = self.refs[(body.model, mode)]
        elif body.schema is not None:
            media["schema"] = dict(body.schema)
        return {body.content_type: media}

    def _reply(self, reply: Reply) -> dict[str, Any]:
        answer: dict[str, Any] = {"description": reply.description}
        if reply.body is not None:
            answer["content"] = self._content(reply.body, "serialization")
        if reply.headers:
            answer["headers"] = {
                name: {"description": text, "schema": {"type": "string"}}
                for name, text in reply.headers.items()
            }
        return answer

    @staticmethod
    def _error(description: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "description": description,
            "content": {"application/json": {"schema": _ERROR_REF}},
        }
        if headers:
            answer["headers"] = {
                name: {"description": text, "schema": {"type": "string"}}
                for name, text in headers.items()
            }
        return answer

    def _parameters(self, doc: RouteDoc) -> list[dict[str, Any]]:
        params: list[dict[str, Any]] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "description": doc.path_params.get(name, name),
                "schema": {"type": "string"},
            }
            for name in _PATH_PARAM.findall(doc.path)
        ]
        params += [
            {
                "name": query.name,
                "in": "query",
                "required": query.required,
                "description": query.description,
                "schema": dict(query.schema),
            }
            for query in doc.query_params
        ]
        return params

    def operation(self, doc: RouteDoc) -> dict[str, Any]:
        op: dict[str, Any] = {
            "operationId": _operation_id(doc.method, doc.path),
            "summary": doc.summary,
        }
        if doc.description:
            op["description"] = doc.description
        if doc.tags:
            op["tags"] = list(doc.tags)
        parameters = self._parameters(doc)
        if parameters:
            op["parameters"] = parameters
        if doc.request is not None:
            request: dict[str, Any] = {
                "required": doc.request_required,
                "content": self._content(doc.request, "validation"),
            }
            if doc.request.description:
                request["description"] = doc.request.description
            op["requestBody"] = request
        responses: dict[str, Any] = {}
        if doc.websocket and not any(reply.status == 101 for reply in doc.replies):
            responses["101"] = {"description": "Switching Protocols: the WebSocket is open"}
        for reply in doc.replies:
            responses[str(reply.status)] = self._reply(reply)
        if doc.auth != "open" and 401 not in doc.errors:
            responses["401"] = self._error(_UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})
        errors = dict(doc.errors)
        if route_group(doc.path) is not None:
            # The limiter decides by route path (server/ratelimit.py), so the document does too.
            errors.setdefault(429, _RATE_LIMITED)
        for status, text in sorted(errors.items()):
            headers = {"Retry-After": "seconds to wait"} if status == 429 else None
            responses[str(status)] = self._error(text, headers)
        if not responses:
            raise ValueError(f"{doc.method} {doc.path}: documents no response")
        op["responses"] = responses
        op["security"] = _SECURITY[doc.auth]
        return op

    def paths(self) -> dict[str, dict[str, Any]]:
        paths: dict[str, dict[str, Any]] = {}
        for doc in self.docs:
            item = paths.setdefault(_openapi_path(doc.path), {})
            method = doc.method.lower()
            if method in item:
                raise ValueError(f"{doc.method} {doc.path} is documented twice")
            item[method] = self.operation(doc)
        return paths


def _websocket_section(docs: Sequence[RouteDoc]) -> str:
    sockets = [doc for doc in docs if doc.websocket]
    if not sockets:
        return ""
    lines = [
        "## WebSocket routes",
        "",
        "Listed below as GET operations answered with 101; what flows over each socket:",
        "",
    ]
    for doc in sockets:
        text = f"- `{_openapi_path(doc.path)}`: {doc.summary.rstrip('.')}."
        if doc.description:
            text += f" {' '.join(doc.description.split())}"
        lines.append(text)
    return "\n".join(lines)


def build_openapi(
    docs: Sequence[RouteDoc], *, title: str, version: str, description: str = ""
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``docs``. Raises ValueError for an operation documented
    twice or one without any response."""
    builder = _Builder(docs)
    paths = builder.paths()
    text = "\n\n".join(part for part in (description, _websocket_section(docs)) if part)
    info: dict[str, Any] = {"title": title, "version": version}
    if text:
        info["description"] = text
    tags = dict.fromkeys(tag for doc in docs for tag in doc.tags)  # in the order mounted
    return {
        "openapi": OPENAPI_VERSION,
        "info": info,
        "tags": [{"name": tag} for tag in tags],
        "paths": paths,
        "components": {"schemas": builder.schemas, "securitySchemes": SECURITY_SCHEMES},
    }


def find_swagger_ui() -> Path | None:
    """The folder of Swagger UI's files in the ``swagger-ui-py`` package; found without
    importing the package (its code, and the template engine it imports, are not used)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def _docs_html(title: str) -> str:
    static = _STATIC_PREFIX
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}: API</title>
<link rel="stylesheet" href="{static}swagger-ui.css">
<link rel="icon" type="image/png" href="{static}favicon-32x32.png" sizes="32x32">
<link rel="icon" type="image/png" href="{static}favicon-16x16.png" sizes="16x16">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{static}swagger-ui-bundle.js" charset="utf-8"></script>
<script src="{static}{INIT_SCRIPT_NAME}" charset="utf-8"></script>
</body>
</html>
"""


class ApiDocs:
    """Serves the document and the Swagger UI page of one app."""

    def __init__(
        self, *, title: str, version: str, description: str = "", swagger_dir: Path | None
    ) -> None:
        self.title = title
        self.version = version
        self.description = description
        self.swagger_dir = swagger_dir
        self._document: bytes | None = None

    def document(self, app: web.Application) -> bytes:
        if self._document is None:
            built = build_openapi(
                documented_routes(app),
                title=self.title,
                version=self.version,
                description=self.description,
            )
            self._document = json.dumps(built, indent=1).encode()
        return self._document

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self.document(request.app), content_type="application/json")

    def _missing(self) -> web.Response:
        return error_response(
            503, "Swagger UI is not installed (the swagger-ui-py package); /openapi.json is"
        )

    async def page(self, request: web.Request) -> web.Response:
        if self.swagger_dir is None:
            return self._missing()
        return web.Response(text=_docs_html(self.title), content_type="text/html", charset="utf-8")

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        headers = {"Cache-Control": _CACHE_CONTROL}
        if name == INIT_SCRIPT_NAME:
            return web.Response(text=_INIT_SCRIPT, content_type="text/javascript", headers=headers)
        media_type = SWAGGER_FILES.get(name)
        if media_type is None:
            return error_response(404, f"not found: {request.path}")
        if self.swagger_dir is None:
            return self._missing()
        # FileResponse reads and sends the file off the event loop.
        headers["Content-Type"] = media_type
        return web.FileResponse(self.swagger_dir / name, headers=headers)

    def route_docs(self) -> list[RouteDoc]:
        tags = ("docs",)
        json_doc = Body(schema={"type": "object"}, description="the OpenAPI 3.1 document")
        html = Body(content_type="text/html", schema={"type": "string"})
        return [
            RouteDoc(
                "GET",
                OPENAPI_PATH,
                "This document",
                tags=tags,
                auth="open",
                replies=(Reply(200, "OpenAPI 3.1", json_doc),),
            ),
            RouteDoc(
                "GET",
                DOCS_PATH,
                "Swagger UI for this document (offline: no external URL)",
                tags=tags,
                auth="open",
                replies=(Reply(200, "the Swagger UI page", html),),
                errors={503: "Swagger UI's package is not installed"},
            ),
        ]


def attach_api_docs(
    app: web.Application,
    *,
    title: str,
    version: str,
    description: str = API_DESCRIPTION,
    swagger_dir: Path | Literal["auto"] | None = "auto",
) -> ApiDocs:
    """Mount ``/openapi.json``, ``/docs`` and ``/docs/static/{name}`` on ``app``."""
    folder = find_swagger_ui() if swagger_dir == "auto" else swagger_dir
    if folder is None:
        logger.warning("swagger-ui-py is not installed: /docs answers 503, /openapi.json works")
    docs = ApiDocs(title=title, version=version, description=description, swagger_dir=folder)
    app.router.add_get(OPENAPI_PATH, docs.openapi)
    app.router.add_get(DOCS_PATH, docs.page)
    app.router.add_get(DOCS_STATIC_PATH, docs.static)
    document_routes(app, docs.route_docs())
    return docs
