"""Access control, CORS and request-body limits: aiohttp middlewares for the worker app.

:func:`security_middlewares` builds them from the config, outermost first:

1. **CORS** (only when ``cors_origins`` is set; otherwise no CORS header is ever sent).
   A preflight (``OPTIONS`` with ``Access-Control-Request-Method``) from an allowed origin gets
   204 with ``Access-Control-Allow-Origin`` echoing that origin, the allowed methods and
   headers (``Authorization``, ``Content-Type``) and ``Vary: Origin``; from any other origin,
   403 and no CORS header. Preflights never need the token (browsers cannot send it there).
   Other responses to an allowed origin carry ``Access-Control-Allow-Origin`` and
   ``Vary: Origin``, errors (401, 404, 413) included, so a page can read them. A WebSocket
   upgrade is left alone: browsers do not apply CORS to WebSockets, and the token is what
   guards the endpoint. Written here rather than with ``aiohttp-cors``: the policy is a
   fixed list of origins and one set of methods and headers for every route, which takes ~40
   lines; ``aiohttp-cors`` needs per-route registration (every route the API and the metrics
   engineer add would have to be remembered), has no middleware mode, and would be one more
   dependency to track.
2. **Errors as JSON** (:mod:`pytrickle_worker.server.errors`): aiohttp's plain-text 404/405
   and unhandled exceptions become ``{"status": "error", "message": ...}``.
3. **Access token** (only when ``access_token``/``access_token_file`` is set). Required as
   ``Authorization: Bearer <token>`` on every route except the health probes (``/health``,
   ``/health/live``, ``/health/ready``) and ``/metrics`` (open unless
   ``metrics_require_token``). Clients that cannot set headers (browser WebSockets, ``<img>``
   tags) may pass ``?token=<token>`` instead, on the CMS WebSocket (``GET /``) and
   ``GET /camera/{id}/image`` only; REST routes take the header alone, so the token does not
   end up in proxies' access logs for ordinary API calls. Tokens are compared in constant
   time (``hmac.compare_digest`` of SHA-256 digests, so the length does not leak either). A
   failure answers 401 ``{"status": "error", "message": "unauthorized"}`` with
   ``WWW-Authenticate: Bearer`` and nothing about why; the log line says why, with the
   method, path (never the query) and remote address, never the presented token.
4. **Body size**: a ``Content-Length`` above the app's ``client_max_size``
   (``max_message_bytes``, or a route's own limit: ``POST /frames`` takes
   ``live_upload_max_bytes``) is answered 413 before the handler runs; a body without one
   (chunked) that grows past it while a handler reads it gets the same JSON 413
   ``{"status": "error", "message": "request body too large (limit N bytes)"}``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.server.errors import error_middleware
from pytrickle_worker.transport.body_limits import route_body_limit
from pytrickle_worker.transport.http_errors import error_response

logger = logging.getLogger(__name__)

__all__ = [
    "ALLOWED_HEADERS",
    "ALLOWED_METHODS",
    "METRICS_PATH",
    "OPEN_PATHS",
    "QUERY_TOKEN_PATHS",
    "AccessPolicy",
    "security_middlewares",
]

#: Liveness/readiness probes: kubelets and load balancers call them without credentials.
OPEN_PATHS: frozenset[str] = frozenset({"/health", "/health/live", "/health/ready"})
METRICS_PATH = "/metrics"
#: Routes (as registered) that also accept ``?token=``: the CMS WebSocket and camera images.
QUERY_TOKEN_PATHS: frozenset[str] = frozenset({"/", "/camera/{camera_id}/image"})
ALLOWED_METHODS = "GET, HEAD, POST, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type"
PREFLIGHT_MAX_AGE_S = 600


def _error(status: int, message: str) -> web.Response:
    return error_response(status, message)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Who may call what; only a digest of the token is kept."""

    token_digest: bytes
    metrics_require_token: bool = False

    def is_open(self, route_path: str | None) -> bool:
        if route_path in OPEN_PATHS:
            return True
        return route_path == METRICS_PATH and not self.metrics_require_token

    def check(self, presented: str) -> bool:
        return hmac.compare_digest(_digest(presented), self.token_digest)


def _route_path(request: web.Request) -> str | None:
    """The matched route as registered (``/camera/{camera_id}/image``); None when no route
    matched (404/405), which then needs the token like any other path."""
    resource = request.match_info.route.resource
    return None if resource is None else resource.canonical


def _presented_token(request: web.Request, route_path: str | None) -> tuple[str | None, str]:
    """The token the client presented and, when there is none, why (for the log only)."""
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None, "unsupported authorization scheme"
        return value.strip(), ""
    if route_path in QUERY_TOKEN_PATHS and "token" in request.query:
        return request.query["token"], ""
    return None, "no credentials"


def auth_middleware(policy: AccessPolicy) -> Middleware:
    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        route_path = _route_path(request)
        if policy.is_open(route_path):
            return await handler(request)
        presented, reason = _presented_token(request, route_path)
        if presented is not None and policy.check(presented):
            return await handler(request)
        log = logger.info if presented is None else logger.warning
        log(
            "unauthorized %s %s from %s: %s",
            request.method,
            request.path,
            request.remote or "?",
            reason or "wrong token",
        )
        response = _error(401, "unauthorized")
        response.headers[hdrs.WWW_AUTHENTICATE] = "Bearer"
        return response

    return require_token


def _add_vary_origin(response: web.StreamResponse) -> None:
    vary = response.headers.get(hdrs.VARY)
    if vary is None:
        response.headers[hdrs.VARY] = "Origin"
    elif "origin" not in {v.strip().lower() for v in vary.split(",")}:
        response.headers[hdrs.VARY] = f"{vary}, Origin"


def cors_middleware(origins: frozenset[str]) -> Middleware:
    """``origins``: lower-case ``scheme://host[:port]`` (the config normalises them)."""

    def decorate(response: web.StreamResponse, origin: str, allowed: bool) -> None:
        if response.prepared:  # a WebSocket, already upgraded
            return
        if allowed:
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
        _add_vary_origin(response)

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None:
            return await handler(request)
        allowed = origin.lower() in origins
        preflight = (
            request.method == hdrs.METH_OPTIONS
            and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
        )
        if preflight:
            if not allowed:
                logger.info("CORS preflight from disallowed origin %r refused", origin)
                response = _error(403, "origin not allowed")
                _add_vary_origin(response)
                return response
            return web.Response(
                status=204,
                headers={
                    hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: origin,
                    hdrs.ACCESS_CONTROL_ALLOW_METHODS: ALLOWED_METHODS,
                    hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ALLOWED_HEADERS,
                    hdrs.ACCESS_CONTROL_MAX_AGE: str(PREFLIGHT_MAX_AGE_S),
                    hdrs.VARY: "Origin",
                },
            )
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # 404/405 and friends are responses too
            decorate(exc, origin, allowed)
            raise
        decorate(response, origin, allowed)
        return response

    return cors


def _too_large(limit: int) -> web.Response:
    return _error(413, f"request body too large (limit {limit} bytes)")


@web.middleware
async def body_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """413 for a body over the app's ``client_max_size`` (or the route's own limit, see
    :mod:`pytrickle_worker.transport.body_limits`): early when ``Content-Length`` says so,
    and as JSON when aiohttp raises while a handler reads a chunked body."""
    limit = route_body_limit(request)
    length = request.content_length
    if limit and length is not None and length > limit:
        logger.info(
            "%s %s from %s: body of %d bytes refused (limit %d)",
            request.method,
            request.path,
            request.remote or "?",
            length,
            limit,
        )
        return _too_large(limit)
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return _too_large(limit)


def security_middlewares(config: WorkerConfig) -> list[Middleware]:
    """The middlewares for ``web.Application(middlewares=...)``, outermost first.

    Reads ``access_token_file`` now (a changed file takes effect on restart); raises
    :class:`~pytrickle_worker.core.errors.WorkerError` when it cannot be read.
    """
    middlewares: list[Middleware] = []
    if config.cors_origins:
        middlewares.append(cors_middleware(frozenset(config.cors_origins)))
        logger.info("CORS allowed for %s", ", ".join(config.cors_origins))
    # Inside CORS (its JSON errors get the CORS headers), outside the rest (their errors
    # become JSON too).
    middlewares.append(error_middleware)
    token = config.resolved_access_token()
    if token is not None:
        policy = AccessPolicy(
            token_digest=_digest(token.get_secret_value()),
            metrics_require_token=config.metrics_require_token,
        )
        middlewares.append(auth_middleware(policy))
        logger.info(
            "access token required (open: health probes%s)",
            "" if config.metrics_require_token else ", /metrics",
        )
    middlewares.append(body_limit_middleware)
    return middlewares
