"""The aiohttp application: CMS WebSocket, camera images, health. Later: StreamServer routes."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from pytrickle_worker import __version__
from pytrickle_worker.cms.endpoint import CmsEndpoint
from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.ingest.hub import CameraHub
from pytrickle_worker.logutil import mask_url
from pytrickle_worker.mpta.loader import LoadedPipeline
from pytrickle_worker.mpta.service import PipelineService

logger = logging.getLogger(__name__)


class WorkerState:
    """Runtime state the routes report; owned by the app, not a module global."""

    def __init__(self, config: WorkerConfig, default_pipeline_source: str | None) -> None:
        self.config = config
        self.default_pipeline_source = default_pipeline_source
        self.default_pipeline: LoadedPipeline | None = None
        self.started_at = time.time()
        self.ready = False
        self.startup_error: str | None = None


SERVICE_KEY = web.AppKey("pipeline_service", PipelineService)
STATE_KEY = web.AppKey("worker_state", WorkerState)
HUB_KEY = web.AppKey("camera_hub", CameraHub)
CMS_KEY = web.AppKey("cms_endpoint", CmsEndpoint)


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    service = request.app[SERVICE_KEY]
    cms = request.app[CMS_KEY]
    pipeline = state.default_pipeline
    body: dict[str, object] = {
        "status": "healthy" if state.ready else "starting",
        "version": __version__,
        "uptime_s": round(time.time() - state.started_at, 3),
        "execution_provider": service.providers.primary,
        "models_loaded": service.registry.loaded_count,
        "default_pipeline": mask_url(pipeline.source) if pipeline else None,
        "subscriptions": len(cms.subscriptions),
        "backends": len(cms.registry.connections),
        "actions": service.actions.snapshot(),
    }
    if state.startup_error:
        body["status"] = "error"
        body["error"] = state.startup_error
    return web.json_response(body, status=200 if state.ready else 503)


def create_app(config: WorkerConfig, default_pipeline_source: str | None = None) -> web.Application:
    app = web.Application(client_max_size=config.max_message_bytes)
    service = PipelineService(config)
    hub = CameraHub(config.ingest_config())
    cms = CmsEndpoint(config, hub, service)
    state = WorkerState(config, default_pipeline_source)
    app[SERVICE_KEY] = service
    app[STATE_KEY] = state
    app[HUB_KEY] = hub
    app[CMS_KEY] = cms
    app.router.add_get("/health", health)
    app.router.add_routes(cms.routes())

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await hub.start()
        await cms.start()
        if state.default_pipeline_source:
            try:
                state.default_pipeline = await service.load(state.default_pipeline_source)
            except Exception as exc:
                state.startup_error = str(exc)
                logger.error("default pipeline failed to load: %s", exc)
        state.ready = state.startup_error is None
        logger.info(
            "worker ready on %s:%d (provider %s)",
            config.host,
            config.port,
            service.providers.name,
        )
        yield
        state.ready = False
        await cms.stop()
        await hub.stop()
        if state.default_pipeline is not None:
            await service.release(state.default_pipeline)
        await service.close()

    app.cleanup_ctx.append(lifecycle)
    return app
