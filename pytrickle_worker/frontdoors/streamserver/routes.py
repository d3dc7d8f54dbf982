"""Thin aiohttp handlers for the StreamServer API; the StreamManager does the work.

Stream routes are served both under ``/api`` (the pytrickle README) and at the root
(what go-livepeer calls): ``/stream/start|stop|params|status``, plus the
``/live-video-to-video`` alias of start. ``/version``, ``/app-version``, ``/hardware/*``
and ``/health/live|ready`` are never prefixed; ``/health`` itself belongs to the host
app, which merges :meth:`StreamManager.health` into it.

Every error answers ``{"status": "error", "message": ...}``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from pytrickle_worker.core.logutil import mask_text
from pytrickle_worker.frontdoors.streamserver.manager import ApiError, StreamManager
from pytrickle_worker.frontdoors.streamserver.schemas import (
    AppVersion,
    HardwareInfo,
    HardwareStats,
    Liveness,
    ParamsUpdated,
    Readiness,
    StartRequest,
    StreamParams,
    StreamStarted,
    StreamStatus,
    StreamStopped,
    VersionInfo,
    parse_start_request,
)
from pytrickle_worker.processing import ParamsError
from pytrickle_worker.transport.apidoc import Body, Reply, RouteDoc, document_routes
from pytrickle_worker.transport.http_errors import error_response
from pytrickle_worker.transport.json_body import read_json

logger = logging.getLogger(__name__)

__all__ = [
    "MANAGER_KEY",
    "ROUTE_PREFIXES",
    "attach",
    "create_api",
    "error_response",
    "health_response",
    "route_docs",
]

MANAGER_KEY = web.AppKey("stream_manager", StreamManager)
ROUTE_PREFIXES: tuple[str, ...] = ("/api", "")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _guarded(handler: Handler) -> Handler:
    """Turn ApiError/ParamsError into their status and anything else into a logged 500."""

    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.message)
        except ParamsError as exc:
            return error_response(400, str(exc))
        except web.HTTPException:
            raise
        except Exception as exc:
            logger.exception("%s %s failed", request.method, request.path)
            return error_response(500, f"internal error: {mask_text(str(exc))}")

    return run


def create_api(manager: StreamManager) -> list[web.RouteDef]:
    """The StreamServer routes bound to ``manager``."""

    @_guarded
    async def start(request: web.Request) -> web.StreamResponse:
        start_request = parse_start_request(await read_json(request))
        return web.json_response(await manager.start(start_request))

    @_guarded
    async def stop(request: web.Request) -> web.StreamResponse:
        # The body is not read: pytrickle sends {} or nothing, and go-livepeer's
        # orchestrator forwards the gateway's reason as plain text ("stream ended"). A stop
        # refused for its body would leave the stream running.
        return web.json_response(await manager.stop())

    @_guarded
    async def params(request: web.Request) -> web.StreamResponse:
        return web.json_response(await manager.update_params(await read_json(request)))

    @_guarded
    async def status(request: web.Request) -> web.StreamResponse:
        return web.json_response(manager.status())

    @_guarded
    async def version(request: web.Request) -> web.StreamResponse:
        return web.json_response(manager.version_info())

    @_guarded
    async def app_version(request: web.Request) -> web.StreamResponse:
        return web.json_response(AppVersion(version=manager.version).model_dump(mode="json"))

    @_guarded
    async def hardware_info(request: web.Request) -> web.StreamResponse:
        return web.json_response(await manager.hardware_info())

    @_guarded
    async def hardware_stats(request: web.Request) -> web.StreamResponse:
        return web.json_response(await manager.hardware_stats())

    @_guarded
    async def live(request: web.Request) -> web.StreamResponse:
        return web.json_response(Liveness(status="alive").model_dump(mode="json"))

    @_guarded
    async def ready(request: web.Request) -> web.StreamResponse:
        code, body = manager.ready()
        return web.json_response(body, status=code)

    routes: list[web.RouteDef] = []
    for prefix in ROUTE_PREFIXES:
        routes += [
            web.post(f"{prefix}/stream/start", start),
            web.post(f"{prefix}/stream/stop", stop),
            web.post(f"{prefix}/stream/params", params),
            web.get(f"{prefix}/stream/status", status),
        ]
    routes += [
        web.post("/live-video-to-video", start),
        web.get("/version", version),
        web.get("/app-version", app_version),
        web.get("/hardware/info", hardware_info),
        web.get("/hardware/stats", hardware_stats),
        web.get("/health/live", live),
        web.get("/health/ready", ready),
    ]
    return routes


def attach(app: web.Application, manager: StreamManager) -> None:
    """Mount the routes on ``app`` and tie the manager's lifecycle to the app's.

    The manager starts loading when the app starts and shuts down (stopping any stream and
    closing the processor) before cleanup contexts registered earlier run, so services the
    processor uses are still open when it closes.
    """
    app[MANAGER_KEY] = manager
    app.router.add_routes(create_api(manager))
    document_routes(app, route_docs())

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await manager.startup()
        yield
        await manager.shutdown()

    app.cleanup_ctx.append(lifecycle)


_STREAM = ("stream",)
_BODY_ERRORS: dict[int, str] = {
    400: "the body is not JSON, or a field is invalid (the message names it)",
    413: "the body is larger than PTW_MAX_MESSAGE_BYTES",
    415: "the body's charset is unknown",
}


def _start_doc(path: str) -> RouteDoc:
    return RouteDoc(
        "POST",
        path,
        "Start a stream (trickle channels in and out)",
        description=(
            "Unknown top-level keys are ignored (go-livepeer sends some); `params` holds the "
            "stream-level params (`width`/`height` together, `max_framerate`) and the "
            "processor's own (MPTA: `model_url`, `min_confidence`, `trigger_classes`, "
            "`annotate`, `target_fps`, `run_actions`)."
        ),
        tags=_STREAM,
        request=Body(StartRequest),
        replies=(Reply(200, "the stream runs", Body(StreamStarted)),),
        errors={
            **_BODY_ERRORS,
            500: "the model, the processor or the media session failed to start",
            503: "the model is still loading, a stream is active, or the worker is draining",
        },
    )


def route_docs() -> list[RouteDoc]:
    """/openapi.json entries of :func:`create_api`'s routes."""
    docs: list[RouteDoc] = []
    for prefix in ROUTE_PREFIXES:
        docs += [
            _start_doc(f"{prefix}/stream/start"),
            RouteDoc(
                "POST",
                f"{prefix}/stream/stop",
                "Stop the stream (the output channel gets its DELETE)",
                tags=_STREAM,
                request=Body(
                    schema={},
                    description="ignored: pytrickle sends `{}` or nothing, go-livepeer's "
                    "orchestrator the gateway's reason as plain text",
                ),
                request_required=False,
                replies=(Reply(200, "stopped", Body(StreamStopped)),),
                errors={
                    400: "no active stream",
                    500: "the session or the processor failed to stop",
                },
            ),
            RouteDoc(
                "POST",
                f"{prefix}/stream/params",
                "Change params of the running stream",
                description=(
                    "Stream-level params (`max_framerate`; `width`/`height` only to the same "
                    "value: they are fixed at start) and the processor's own params."
                ),
                tags=_STREAM,
                request=Body(StreamParams, description="stream-level and processor params"),
                replies=(Reply(200, "applied", Body(ParamsUpdated)),),
                errors={**_BODY_ERRORS, 500: "the processor or the session failed to apply them"},
            ),
            RouteDoc(
                "GET",
                f"{prefix}/stream/status",
                "The stream's state, rates and params",
                tags=_STREAM,
                replies=(Reply(200, "the status", Body(StreamStatus)),),
            ),
        ]
    return [
        *docs,
        _start_doc("/live-video-to-video"),
        RouteDoc(
            "GET",
            "/version",
            "Pipeline, model id and version",
            tags=("info",),
            replies=(Reply(200, "version facts", Body(VersionInfo)),),
        ),
        RouteDoc(
            "GET",
            "/app-version",
            "The worker's version",
            tags=("info",),
            replies=(Reply(200, "the version", Body(AppVersion)),),
        ),
        RouteDoc(
            "GET",
            "/hardware/info",
            "The GPUs (empty without one)",
            tags=("hardware",),
            replies=(Reply(200, "GPU facts", Body(HardwareInfo)),),
        ),
        RouteDoc(
            "GET",
            "/hardware/stats",
            "GPU load and memory (empty without a GPU)",
            tags=("hardware",),
            replies=(Reply(200, "GPU load", Body(HardwareStats)),),
        ),
        RouteDoc(
            "GET",
            "/health/live",
            "Liveness probe",
            tags=("health",),
            auth="open",
            replies=(Reply(200, "the process answers", Body(Liveness)),),
        ),
        RouteDoc(
            "GET",
            "/health/ready",
            "Readiness probe",
            tags=("health",),
            auth="open",
            replies=(
                Reply(200, "the model is loaded", Body(Readiness)),
                Reply(503, "loading or draining (the readiness body)", Body(Readiness)),
            ),
        ),
    ]


def health_response(manager: StreamManager, extra: dict[str, Any] | None = None) -> web.Response:
    """A ready-made ``/health`` answer from the manager, for hosts without their own."""
    code, body = manager.health()
    if extra:
        body = {**extra, **body}
    return web.json_response(body, status=code)
