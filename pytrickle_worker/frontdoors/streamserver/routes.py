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
from pytrickle_worker.frontdoors.streamserver.schemas import parse_start_request
from pytrickle_worker.processing import ParamsError
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
        await read_json(request, empty_ok=True)  # pytrickle sends {} or nothing
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
        return web.json_response({"version": manager.version})

    @_guarded
    async def hardware_info(request: web.Request) -> web.StreamResponse:
        return web.json_response(await manager.hardware_info())

    @_guarded
    async def hardware_stats(request: web.Request) -> web.StreamResponse:
        return web.json_response(await manager.hardware_stats())

    @_guarded
    async def live(request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "alive"})

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

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await manager.startup()
        yield
        await manager.shutdown()

    app.cleanup_ctx.append(lifecycle)


def health_response(manager: StreamManager, extra: dict[str, Any] | None = None) -> web.Response:
    """A ready-made ``/health`` answer from the manager, for hosts without their own."""
    code, body = manager.health()
    if extra:
        body = {**extra, **body}
    return web.json_response(body, status=code)
