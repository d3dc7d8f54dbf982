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
3. **Rate limits** (:mod:`pytrickle_worker.server.ratelimit`, unless every limit is off):
   ``/labels``, the uploads and the stream start routes answer 429
   ``{"status": "error", "message": "rate limit exceeded: 60 per 1 minute"}`` with
   ``Retry-After`` (whole seconds, at least 1) once a client has used its budget. Outside the
   access check, so guessing tokens on those routes is limited too.
4. **Access control** (when ``access_token``/``access_token_file`` or any JWT key is set).
   A bearer token is accepted when it equals the static token (compared in constant time:
   ``hmac.compare_digest`` of SHA-256 digests, so the length does not leak either) or is a
   valid JWT (:mod:`pytrickle_worker.server.jwtauth`). Required on every route except the
   open ones: the health probes (``/health``, ``/health/live``, ``/health/ready``),
   ``/metrics`` (unless ``metrics_require_token``), and the routes that hold no data: the live
   page (``/live``, ``/live/static/*``) and the API description (``/docs``, ``/docs/*``,
   ``/openapi.json``). Where the token is read, first found wins:

   - ``Authorization: Bearer <token>``, on every route;
   - on a WebSocket upgrade, an offered subprotocol ``ptw.bearer.<base64url(token)>``
     (unpadded; a browser cannot set headers on a WebSocket, and the token must stay out
     of URLs, which end up in logs and history);
   - ``?token=<token>``, on the CMS WebSocket (``GET /``) and ``GET /camera/{id}/image``
     only (clients that cannot set headers: old browser code, ``<img>`` tags); REST routes
     never take it, so the token does not end up in proxies' access logs.

   A failure answers 401 ``{"status": "error", "message": "unauthorized"}`` with
   ``WWW-Authenticate: Bearer`` and nothing about why; the log line says why (no
   credentials, wrong token, JWT expired, audience wrong, signature invalid, ...), with the
   method, path (never the query) and remote address, never the presented token.
5. **Body size**: a ``Content-Length`` above the app's ``client_max_size``
   (``max_message_bytes``, or a route's own limit: ``POST /frames`` takes
   ``live_upload_max_bytes``) is answered 413 before the handler runs; a body without one
   (chunked) that grows past it while a handler reads it gets the same JSON 413
   ``{"status": "error", "message": "request body too large (limit N bytes)"}``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
from dataclasses import dataclass

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.server.errors import error_middleware
from pytrickle_worker.server.jwtauth import JwtRejected, JwtVerifier, looks_like_jwt
from pytrickle_worker.server.ratelimit import RateLimiter, route_group
from pytrickle_worker.transport.body_limits import route_body_limit
from pytrickle_worker.transport.credentials import CREDENTIALS_EXPIRE_AT
from pytrickle_worker.transport.http_errors import error_response

logger = logging.getLogger(__name__)

__all__ = [
    "ALLOWED_HEADERS",
    "ALLOWED_METHODS",
    "METRICS_PATH",
    "NO_DATA_PATHS",
    "OPEN_PATHS",
    "OPEN_PREFIXES",
    "QUERY_TOKEN_PATHS",
    "WS_BEARER_PREFIX",
    "AccessPolicy",
    "is_open_path",
    "security_middlewares",
]

#: Liveness/readiness probes: kubelets and load balancers call them without credentials.
OPEN_PATHS: frozenset[str] = frozenset({"/health", "/health/live", "/health/ready"})
#: Also open: the live page and the API description, which hold no data (the data routes
#: they call need the token). ``/live/static`` is how aiohttp names a static resource.
NO_DATA_PATHS: frozenset[str] = frozenset({"/live", "/live/static", "/docs", "/openapi.json"})
#: Canonical route paths under these are open too (``/live/static/{path}``, Swagger UI's
#: ``/docs/{file}``).
OPEN_PREFIXES: tuple[str, ...] = ("/live/static/", "/docs/")
METRICS_PATH = "/metrics"
#: Routes (as registered) that also accept ``?token=``: the CMS WebSocket and camera images.
QUERY_TOKEN_PATHS: frozenset[str] = frozenset({"/", "/camera/{camera_id}/image"})
ALLOWED_METHODS = "GET, HEAD, POST, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type"
PREFLIGHT_MAX_AGE_S = 600
#: A WebSocket client offers ``ptw.bearer.<base64url(token), unpadded>`` as a subprotocol.
WS_BEARER_PREFIX = "ptw.bearer."


def _error(status: int, message: str) -> web.Response:
    return error_response(status, message)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def is_open_path(route_path: str | None) -> bool:
    """A probe or a route that holds no data (``/metrics`` is decided by the policy)."""
    if route_path is None:
        return False
    return (
        route_path in OPEN_PATHS
        or route_path in NO_DATA_PATHS
        or route_path.startswith(OPEN_PREFIXES)
    )


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Who may call what; of the static token only a digest is kept."""

    token_digest: bytes | None = None
    jwt: JwtVerifier | None = None
    metrics_require_token: bool = False

    def is_open(self, route_path: str | None) -> bool:
        if is_open_path(route_path):
            return True
        return route_path == METRICS_PATH and not self.metrics_require_token

    def verdict(self, presented: str) -> tuple[str | None, float | None]:
        """(None when ``presented`` is accepted, else why not; when it stops being valid:
        a JWT's ``exp``, None for the static token or a JWT without one)."""
        if self.token_digest is not None and hmac.compare_digest(
            _digest(presented), self.token_digest
        ):
            return None, None
        if self.jwt is None or not looks_like_jwt(presented):
            return "wrong token", None
        try:
            claims = self.jwt.verify(presented)
        except JwtRejected as exc:
            return exc.reason, None
        exp = claims.get("exp")
        if not isinstance(exp, int | float):
            return None, None
        return None, float(exp) + self.jwt.leeway_s  # as long as verify() accepts it


def _route_path(request: web.Request) -> str | None:
    """The matched route as registered (``/camera/{camera_id}/image``); None when no route
    matched (404/405), which then needs the token like any other path."""
    resource = request.match_info.route.resource
    return None if resource is None else resource.canonical


def _is_websocket_upgrade(request: web.Request) -> bool:
    return request.headers.get(hdrs.UPGRADE, "").strip().lower() == "websocket"


def _subprotocol_token(request: web.Request) -> tuple[str | None, str]:
    """The token from an offered ``ptw.bearer.*`` subprotocol, or why it is unusable."""
    offered = (
        entry.strip()
        for value in request.headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, [])
        for entry in value.split(",")
    )
    encoded = next((e for e in offered if e.startswith(WS_BEARER_PREFIX)), None)
    if encoded is None:
        return None, ""
    encoded = encoded.removeprefix(WS_BEARER_PREFIX)
    try:
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), altchars=b"-_", validate=True)
        token = raw.decode("utf-8").strip()
    except (binascii.Error, ValueError):
        return None, "malformed bearer subprotocol"
    if not token:
        return None, "empty bearer subprotocol"
    return token, ""


def _presented_token(request: web.Request, route_path: str | None) -> tuple[str | None, str]:
    """The token the client presented and, when there is none, why (for the log only)."""
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None, "unsupported authorization scheme"
        return value.strip(), ""
    if _is_websocket_upgrade(request):
        token, reason = _subprotocol_token(request)
        if token is not None or reason:
            return token, reason
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
        if presented is not None:
            refused, expires_at = policy.verdict(presented)
            if refused is None:
                if expires_at is not None:
                    # Long-lived sockets close when the token expires (transport/credentials).
                    request[CREDENTIALS_EXPIRE_AT] = expires_at
                return await handler(request)
            reason = refused
        log = logger.info if presented is None else logger.warning
        log(
            "unauthorized %s %s from %s: %s",
            request.method,
            request.path,
            request.remote or "?",
            reason,
        )
        response = _error(401, "unauthorized")
        response.headers[hdrs.WWW_AUTHENTICATE] = "Bearer"
        return response

    return require_token


def rate_limit_middleware(limiter: RateLimiter) -> Middleware:
    @web.middleware
    async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        group = route_group(_route_path(request))
        if group is None or not limiter.limited(group) or request.method == hdrs.METH_OPTIONS:
            return await handler(request)
        client = limiter.client_address(request)
        refusal = await limiter.check(group, client)
        if refusal is None:
            return await handler(request)
        logger.debug(
            "rate limit %s (%s) reached by %s on %s %s",
            group,
            refusal.limit,
            client,
            request.method,
            request.path,
        )
        response = _error(429, f"rate limit exceeded: {refusal.limit}")
        response.headers[hdrs.RETRY_AFTER] = str(refusal.retry_after_s)
        return response

    return rate_limit


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


def security_middlewares(
    config: WorkerConfig, rate_limiter: RateLimiter | None = None
) -> list[Middleware]:
    """The middlewares for ``web.Application(middlewares=...)``, outermost first.

    ``rate_limiter``: from :meth:`RateLimiter.from_config`; the caller ties its lifecycle to
    the app (``app.cleanup_ctx.append(rate_limiter.lifecycle)``). Reads ``access_token_file``,
    ``jwt_secret_file`` and the JWT key files now (a changed file takes effect on restart);
    raises :class:`~pytrickle_worker.core.errors.WorkerError` when one cannot be used.
    """
    middlewares: list[Middleware] = []
    if config.cors_origins:
        middlewares.append(cors_middleware(frozenset(config.cors_origins)))
        logger.info("CORS allowed for %s", ", ".join(config.cors_origins))
    # Inside CORS (its JSON errors get the CORS headers), outside the rest (their errors
    # become JSON too).
    middlewares.append(error_middleware)
    if rate_limiter is not None:
        middlewares.append(rate_limit_middleware(rate_limiter))
    token = config.resolved_access_token()
    verifier = JwtVerifier.from_config(config)
    if token is not None or verifier is not None:
        policy = AccessPolicy(
            token_digest=None if token is None else _digest(token.get_secret_value()),
            jwt=verifier,
            metrics_require_token=config.metrics_require_token,
        )
        middlewares.append(auth_middleware(policy))
        accepted = [
            *(["the static token"] if token is not None else []),
            *([f"JWTs ({verifier.describe()})"] if verifier is not None else []),
        ]
        logger.info(
            "access token required (accepted: %s; open: health probes%s, live page, API docs)",
            " or ".join(accepted),
            "" if config.metrics_require_token else ", /metrics",
        )
    middlewares.append(body_limit_middleware)
    return middlewares
