"""The aiohttp application: the CMS WebSocket, camera images, the StreamServer REST API and
health. It creates every component and ties their lifecycles to the app's."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence

from aiohttp import web

from pytrickle_worker import __version__
from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.core.responsiveness import LoopLagProbe, ThreadWakeupProbe
from pytrickle_worker.engine.mpta.service import PipelineService
from pytrickle_worker.frontdoors.cms.endpoint import CMS_ROUTE_DOCS, CmsEndpoint
from pytrickle_worker.frontdoors.cms.protocol import SubscribePayload
from pytrickle_worker.frontdoors.live.page import PAGE_ROUTE_DOCS, page_routes
from pytrickle_worker.frontdoors.live.routes import LIVE_ROUTE_DOCS, LiveRoutes
from pytrickle_worker.frontdoors.live.uploads import (
    UPLOAD_ROUTE_DOCS,
    FrameUploads,
    UploadSettings,
)
from pytrickle_worker.frontdoors.live.view import LiveView
from pytrickle_worker.frontdoors.streamserver.manager import StreamManager
from pytrickle_worker.frontdoors.streamserver.routes import attach as attach_stream_api
from pytrickle_worker.frontdoors.streamserver.schemas import StartRequest
from pytrickle_worker.frontdoors.streamserver.session import StreamSession, StreamSessionConfig
from pytrickle_worker.processing import FrameProcessor
from pytrickle_worker.processing.registry import ProcessorDeps, discover_processors, lookup
from pytrickle_worker.processing.sink import StreamSinks
from pytrickle_worker.server.health import HEALTH_DOCS, worker_health
from pytrickle_worker.server.metrics import WorkerMetrics, metrics_route_doc
from pytrickle_worker.server.openapi import attach_api_docs
from pytrickle_worker.server.ratelimit import RateLimiter
from pytrickle_worker.server.security import security_middlewares
from pytrickle_worker.sources.hub import CameraHub
from pytrickle_worker.transport.apidoc import document_routes

logger = logging.getLogger(__name__)

SERVICE_KEY = web.AppKey("pipeline_service", PipelineService)
HUB_KEY = web.AppKey("camera_hub", CameraHub)
CMS_KEY = web.AppKey("cms_endpoint", CmsEndpoint)
STREAMS_KEY = web.AppKey("stream_manager", StreamManager)
STARTED_KEY = web.AppKey("started_at", float)
METRICS_KEY = web.AppKey("metrics", WorkerMetrics)
RATE_LIMITER_KEY = web.AppKey("rate_limiter", RateLimiter)
LIVE_KEY = web.AppKey("live_view", LiveView)


async def health(request: web.Request) -> web.Response:
    """StreamServer semantics (``status`` is LOADING, IDLE, OK or ERROR; always 200),
    plus what the worker is doing for CMS backends."""
    app = request.app
    service, cms, streams = app[SERVICE_KEY], app[CMS_KEY], app[STREAMS_KEY]
    code, body = streams.health()
    merged = worker_health(
        body,
        version=__version__,
        uptime_s=round(time.time() - app[STARTED_KEY], 3),
        execution_provider=service.providers.primary,
        models_loaded=service.registry.loaded_count,
        subscriptions=len(cms.subscriptions),
        backends=len(cms.registry.connections),
        actions=service.actions.snapshot(),
    )
    return web.json_response(merged, status=code)


def create_app(
    config: WorkerConfig,
    default_pipeline_source: str | None = None,
    local_subscriptions: Sequence[SubscribePayload] = (),
) -> web.Application:
    """``default_pipeline_source``: the MPTA the stream processor preloads (and warms up).
    ``local_subscriptions``: CMS subscriptions the worker makes itself once started (the run
    command's demo camera), as if a backend had sent them."""
    # Access control (static token, JWT), rate limits, CORS and body-size limits
    # (docs/SECURITY.md); reads the token and key files.
    rate_limiter = RateLimiter.from_config(config)
    app = web.Application(
        client_max_size=config.max_message_bytes,
        middlewares=security_middlewares(config, rate_limiter),
    )
    if rate_limiter is not None:
        app[RATE_LIMITER_KEY] = rate_limiter
        app.cleanup_ctx.append(rate_limiter.lifecycle)
    service = PipelineService(config)
    hub = CameraHub(config.ingest_config())
    # One model-URL rule for both doors; the operator's preloaded pipeline is trusted.
    trusted = [default_pipeline_source] if default_pipeline_source is not None else []
    model_urls = config.model_url_policy(trusted)
    # Processors by name (one module each in processors/); the CMS door runs MPTA, or the
    # one a processor:// modelUrl names; the stream door runs config.stream_processor.
    processors = discover_processors()
    # The live view (docs/LIVE.md): both doors hand it their analysed frames.
    live = LiveView.from_config(config)
    # Other producers' frames into the same view (authenticated like every data route).
    # Each upload over the socket counts against the uploads' rate limit, not only its upgrade.
    upload_gate = None if rate_limiter is None else rate_limiter.message_gate("uploads")
    uploads = FrameUploads(live.writer, UploadSettings.from_config(config), gate=upload_gate)
    cms = CmsEndpoint(config, hub, service, model_urls, processors, sinks=live.sinks)
    deps = ProcessorDeps(service, model_urls, default_pipeline_source)
    processor = lookup(processors, config.stream_processor)(deps)
    session_config = StreamSessionConfig(input_timeout_s=config.stream_input_timeout_s)

    def session_factory(request: StartRequest, processor: FrameProcessor) -> StreamSession:
        # hw_decode as the hub resolved it at start (NVML is asked once): trickle streams
        # decode with NVDEC exactly when camera readers do, with the same software fallback.
        tuned = session_config.model_copy(
            update={
                "try_nvdec": hub.nvdec,
                "nvdec_api": hub.config.nvdec_api,
                "max_video_pixels": hub.config.max_video_pixels,
            }
        )
        label, key = config.live_stream_names(request.gateway_request_id)
        sinks = StreamSinks(live.sinks, label, key, "stream")
        return StreamSession(request, processor, config=tuned, sinks=sinks)

    streams = StreamManager(processor, session_factory)
    app[SERVICE_KEY] = service
    app[HUB_KEY] = hub
    app[CMS_KEY] = cms
    app[STREAMS_KEY] = streams
    app[STARTED_KEY] = time.time()
    app[LIVE_KEY] = live
    # Whether ready threads wait for the GIL, and callbacks for the loop (/metrics).
    wakeup, loop_lag = ThreadWakeupProbe(), LoopLagProbe()
    metrics = WorkerMetrics(
        hub=hub,
        cms=cms,
        service=service,
        streams=streams,
        live=live,
        wakeup=wakeup,
        loop_lag=loop_lag,
    )
    app[METRICS_KEY] = metrics

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await service.start()
        await live.start()
        await hub.start()
        await cms.start()
        for payload in local_subscriptions:
            cms.subscribe_local(payload)
        logger.info(
            "worker started (execution provider %s); %s; %s",
            service.providers.name,
            service.describe_redis_setting(),
            model_urls.describe(),
        )
        wakeup.start()
        loop_lag.start()
        try:
            yield
        finally:
            await loop_lag.stop()
            wakeup.stop()
        await cms.stop()
        await hub.stop()
        await live.stop()
        await service.close()

    # Registered first, so it is torn down last: the stream API shuts down while the
    # PipelineService it uses is still open.
    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics.handle)  # Prometheus text format (docs/METRICS.md)
    app.router.add_routes(cms.routes())
    app.router.add_routes(
        LiveRoutes(
            live,
            max_viewers=config.live_max_viewers,
            max_viewers_per_client=config.live_max_viewers_per_client,
            max_pulls_per_s=config.live_max_pulls_per_s,
            client_of=None if rate_limiter is None else rate_limiter.client_address,
        ).routes()
    )
    uploads.attach(app)
    # Every route mounted here is documented in /openapi.json (tests/test_openapi.py checks).
    document_routes(app, [*HEALTH_DOCS, metrics_route_doc(config.metrics_require_token)])
    document_routes(app, CMS_ROUTE_DOCS)
    document_routes(app, LIVE_ROUTE_DOCS)
    document_routes(app, UPLOAD_ROUTE_DOCS)
    attach_stream_api(app, streams)
    app.router.add_routes(page_routes())  # GET /live: the live-view page (no data, open)
    document_routes(app, PAGE_ROUTE_DOCS)
    attach_api_docs(app, title="pytrickle-worker", version=__version__)
    return app
