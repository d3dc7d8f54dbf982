"""The CMS WebSocket at ``/`` and ``GET /camera/{camera_id}/image``.

Handlers stay thin: parsing lives in :mod:`pytrickle_worker.frontdoors.cms.protocol`,
subscriptions in
:class:`SubscriptionManager`, delivery in :class:`BackendRegistry`. Nothing a backend sends can
take the connection or the worker down: every bad message is answered with an ``error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping, Sequence

from aiohttp import WSCloseCode, WSMsgType, web

from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.core.bucket import TokenBucket
from pytrickle_worker.core.hardware import HardwareMonitor, LoadSample
from pytrickle_worker.core.logutil import mask_text
from pytrickle_worker.engine.mpta.policy import ModelUrlPolicy, ModelUrlRefusedError
from pytrickle_worker.engine.mpta.service import PipelineService
from pytrickle_worker.frontdoors.cms.backends import BackendConnection, BackendRegistry
from pytrickle_worker.frontdoors.cms.emission import EmissionMode
from pytrickle_worker.frontdoors.cms.protocol import (
    ErrorMessage,
    InboundMessage,
    InboundPatchSessionMessage,
    PatchSessionResultMessage,
    PatchSessionResultReply,
    ProtocolError,
    RequestStateMessage,
    SetSessionIdMessage,
    StateReport,
    SubscribeMessage,
    SubscribePayload,
    parse_inbound,
)
from pytrickle_worker.frontdoors.cms.snapshots import FrameJpegs
from pytrickle_worker.frontdoors.cms.subscriptions import SubscriptionManager
from pytrickle_worker.media.jpeg import encode_jpeg
from pytrickle_worker.processing.registry import (
    ProcessorFactory,
    discover_processors,
    parse_processor_url,
)
from pytrickle_worker.processing.sink import ResultSink
from pytrickle_worker.sources.hub import CameraHub
from pytrickle_worker.transport.apidoc import Body, Reply, RouteDoc
from pytrickle_worker.transport.credentials import close_when_credentials_expire

logger = logging.getLogger(__name__)

#: An inbound message counts one unit towards the rate limit, plus one per this many bytes.
INBOUND_UNIT_BYTES = 16 * 1024
#: A state report reuses a hardware sample younger than this.
STATE_SAMPLE_MIN_AGE_S = 1.0


class CmsEndpoint:
    """Owns the CMS side of the worker; ``start``/``stop`` bracket its life."""

    def __init__(
        self,
        config: WorkerConfig,
        hub: CameraHub,
        service: PipelineService,
        model_urls: ModelUrlPolicy | None = None,
        processors: Mapping[str, ProcessorFactory] | None = None,
        sinks: Sequence[ResultSink] = (),
    ) -> None:
        """``sinks``: where analysed frames go besides the backends (the live view)."""
        self.config = config
        self.hub = hub
        # The same rule as the stream door's model_url (pytrickle_worker/engine/mpta/policy.py).
        self.model_urls = model_urls or config.model_url_policy()
        self.monitor = HardwareMonitor()
        self._load: tuple[float, LoadSample] | None = None
        #: GET /camera/{id}/image: one JPEG per camera frame, however many ask.
        self.frame_jpegs = FrameJpegs()
        self.registry = BackendRegistry(
            queue_size=config.ws_queue_size,
            grace_s=config.disconnect_grace_s,
            on_grace_expired=self._release_all,
        )
        self.subscriptions = SubscriptionManager(
            hub,
            service,
            self.registry.broadcast,
            target_fps=config.analysis_fps,
            max_streams=config.max_streams,
            emission=EmissionMode(config.emission),
            on_change=self._broadcast_state,
            processors=processors if processors is not None else discover_processors(),
            model_urls=self.model_urls,
            sinks=sinks,
            sink_names=config.live_cms_names,
        )
        self._heartbeat: asyncio.Task[None] | None = None
        #: Subscriptions the worker made itself (the demo camera): never reclaimed.
        self._local: set[str] = set()
        self._reclaim: asyncio.Task[None] | None = None
        self.accepting = True

    # ------------------------------------------------------------------ lifecycle

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.websocket),
            web.get("/camera/{camera_id}/image", self.camera_image),
        ]

    async def start(self) -> None:
        self._heartbeat = asyncio.get_running_loop().create_task(
            self._heartbeat_loop(), name="cms-heartbeat"
        )

    async def stop(self) -> None:
        self.accepting = False
        for task in (self._heartbeat, self._reclaim):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.registry.close()
        await self.subscriptions.close()
        self.monitor.close()

    def begin_drain(self) -> None:
        """The process is shutting down: refuse new subscriptions."""
        self.accepting = False
        if self._reclaim is not None:
            self._reclaim.cancel()  # the drain releases everything

    async def drain(self, timeout_s: float) -> bool:
        """Stop every subscription, flush each backend's queue, then close its WebSocket
        with 1001 (going away). True when every queue was flushed within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self.begin_drain()
        # close() also cancels pending subscribes: none starts a camera after it.
        try:
            async with asyncio.timeout(timeout_s):
                await self.subscriptions.close()
        except TimeoutError:
            logger.warning("drain: subscriptions did not stop in time")
        flushed = await self.registry.flush(max(0.0, deadline - loop.time()))
        await self.registry.close(code=WSCloseCode.GOING_AWAY, message=b"worker shutting down")
        return flushed

    def _start_reclaim(self) -> None:
        """A backend connected after none was: the subscriptions kept through the gap must be
        claimed again (a subscribe, or an unsubscribe, for the id) within the grace period,
        or they are released. A backend written for the original worker, which forgot
        everything on a disconnect, subscribes again what it wants; what it does not want
        any more (a restarted CMS that gave the camera to another worker) must not run on
        here unseen. A window already open keeps its deadline: a backend that keeps
        reconnecting does not keep unclaimed cameras alive."""
        if self._reclaim is not None and not self._reclaim.done():
            return
        if self.subscriptions.begin_reclaim(self._local):
            self._reclaim = asyncio.get_running_loop().create_task(
                self._release_unclaimed(), name="cms-reclaim"
            )

    async def _release_unclaimed(self) -> None:
        await asyncio.sleep(self.config.disconnect_grace_s)
        if not self.registry.connections:
            return  # gone again: the disconnect grace period decides
        released = self.subscriptions.release_unclaimed()
        if released:
            logger.info(
                "released %d subscription(s) the reconnected backend did not subscribe again "
                "within %.0f s: %s",
                len(released),
                self.config.disconnect_grace_s,
                ", ".join(released[:20]),
            )

    async def _release_all(self) -> None:
        await self.subscriptions.close()
        # The session ids were the departed backend's: a display subscribed again later must
        # not have its detections tagged with a stale session.
        self.subscriptions.sessions.clear()

    # ------------------------------------------------------------------ state

    def state_report(self) -> StateReport:
        # One sample a second at most: psutil's CPU figure is the load since the previous
        # call (two calls a millisecond apart say 0 or 100), and a backend flooding
        # requestState would otherwise query NVML for each.
        now = time.monotonic()
        cached = self._load
        if cached is None or now - cached[0] >= STATE_SAMPLE_MIN_AGE_S:
            cached = self._load = (now, self.monitor.sample())
        load = cached[1]
        return StateReport(
            cpuUsage=round(load.cpu_percent, 1),
            memoryUsage=round(load.memory_percent, 1),
            gpuUsage=None if load.gpu_percent is None else round(load.gpu_percent, 1),
            gpuMemoryUsage=(
                None if load.gpu_memory_percent is None else round(load.gpu_memory_percent, 1)
            ),
            cameraConnections=self.subscriptions.connections(),
        )

    def _broadcast_state(self) -> None:
        if self.registry.connections:
            self.registry.broadcast(self.state_report())

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval_s)
            if self.registry.connections:
                self.registry.broadcast(self.state_report())

    # ------------------------------------------------------------------ websocket

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        if not self.accepting:  # draining: the backend should connect to another worker
            return web.json_response(
                {"status": "error", "message": "worker is shutting down"}, status=503
            )
        if len(self.registry.connections) >= self.config.max_backends:
            return web.json_response(
                {
                    "status": "error",
                    "message": f"too many CMS connections (PTW_MAX_BACKENDS="
                    f"{self.config.max_backends})",
                },
                status=503,
            )
        ws = web.WebSocketResponse(
            heartbeat=self.config.ws_ping_interval_s,
            # Twice our own limit, so a message somewhat over it gets an `error` reply; a
            # larger one closes the connection (1009) before it is all buffered.
            max_msg_size=self.config.max_message_bytes * 2,
        )
        await ws.prepare(request)
        peer = request.remote or "?"
        first = not self.registry.connections
        connection = self.registry.add(ws, peer, request.transport)
        logger.info("backend connected: %s", peer)
        if first:
            # What was detected while no backend listened went nowhere: the objects in view
            # are announced again to the backend that now does.
            self.subscriptions.announce_again()
            self._start_reclaim()
        connection.send(self.state_report())
        # A JWT's exp ends the connection (the backend reconnects with a fresh token, within
        # the disconnect grace period its subscriptions survive for it to claim again).
        stop_expiry = close_when_credentials_expire(ws, request)
        inbound = TokenBucket(self.config.cms_inbound_rate, self.config.cms_inbound_burst)
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    # Checked before parsing, the work it bounds.
                    if not inbound.take(1 + len(message.data) // INBOUND_UNIT_BYTES):
                        logger.warning(
                            "backend %s: over %g messages a second; closing", peer, inbound.rate
                        )
                        await ws.close(
                            code=WSCloseCode.POLICY_VIOLATION,
                            message=b"too many messages (PTW_CMS_INBOUND_RATE)",
                        )
                        break
                    self._handle_text(connection, message.data)
                elif message.type == WSMsgType.BINARY:
                    self._error(connection, "binary frames are not part of the protocol")
                elif message.type == WSMsgType.ERROR:
                    logger.info("backend %s: websocket error %s", peer, ws.exception())
                    break
        finally:
            stop_expiry()
            await self.registry.remove(connection)
            logger.info("backend disconnected: %s", peer)
        return ws

    def _error(
        self, connection: BackendConnection | None, error: str, identifier: str | None = None
    ) -> None:
        message = ErrorMessage(subscriptionIdentifier=identifier, error=mask_text(error))
        if connection is None:
            self.registry.broadcast(message)
        else:
            connection.send(message)

    def _handle_text(self, connection: BackendConnection, text: str) -> None:
        if len(text) > self.config.max_message_bytes:
            self._error(
                connection,
                f"message of {len(text)} bytes exceeds the limit of "
                f"{self.config.max_message_bytes} bytes",
            )
            return
        try:
            document: object = json.loads(text)
        except (ValueError, RecursionError) as exc:
            # ValueError covers JSONDecodeError and also Python's limit on int digits (a
            # number of more than 4300 digits), which json.loads raises as a plain ValueError.
            self._error(connection, f"message is not valid JSON: {exc}")
            return
        try:
            message = parse_inbound(document)
        except ProtocolError as exc:
            self._error(connection, str(exc), exc.subscription_identifier)
            return
        self._dispatch(connection, message)

    def _dispatch(self, connection: BackendConnection, message: InboundMessage) -> None:
        if isinstance(message, RequestStateMessage):
            connection.send(self.state_report())
        elif isinstance(message, SetSessionIdMessage):
            payload = message.payload
            matched = self.subscriptions.set_session(payload.displayIdentifier, payload.sessionId)
            logger.info(
                "session of display %s set to %s (%d subscription(s))",
                payload.displayIdentifier,
                payload.sessionId,
                matched,
            )
        elif isinstance(message, InboundPatchSessionMessage):
            connection.send(
                PatchSessionResultReply(
                    payload={
                        "sessionId": message.session_id,
                        "success": True,
                        "message": "Session patch acknowledged",
                    }
                )
            )
        elif isinstance(message, PatchSessionResultMessage):
            result = message.payload
            log = logger.info if result.success else logger.warning
            log("patchSession %s: success=%s %s", result.sessionId, result.success, result.message)
        elif isinstance(message, SubscribeMessage):
            self._command(connection, message.payload.subscriptionIdentifier, message.payload)
        else:
            self._command(connection, message.payload.subscriptionIdentifier, None)

    def subscribe_local(self, payload: SubscribePayload) -> None:
        """Subscribe on the worker's own behalf (the run command's demo camera): the same
        subscription a backend's ``subscribe`` makes, with its errors logged instead of sent.
        Backends see it in ``stateReport`` like any other."""
        identifier = payload.subscriptionIdentifier
        self._local.add(identifier)

        def reply(error: str) -> None:
            logger.warning("local subscription %s: %s", identifier, mask_text(error))

        self.subscriptions.request(identifier, payload, reply)

    def _command(
        self, connection: BackendConnection, identifier: str, payload: SubscribePayload | None
    ) -> None:
        def reply(error: str) -> None:
            self._error(connection, error, identifier)

        if not self.accepting:
            reply("worker is shutting down")
            return
        # A processor:// modelUrl names a processor: there is no archive to fetch.
        if payload is not None and parse_processor_url(payload.modelUrl) is None:
            try:
                self.model_urls.check(payload.modelUrl)
            except ModelUrlRefusedError as exc:
                reply(f"modelUrl: {exc}")
                return
        self.subscriptions.request(identifier, payload, reply)

    # ------------------------------------------------------------------ image

    async def camera_image(self, request: web.Request) -> web.Response:
        # aiohttp has already percent-decoded the path segment (%3B -> ';'); decoding it again
        # would turn a literal '%41' in an identifier into 'A' and serve another camera.
        identifier = request.match_info["camera_id"]
        subscription = self.subscriptions.get(identifier)
        if subscription is None:
            return web.json_response(
                {"status": "error", "message": f"camera {identifier!r} is not subscribed"},
                status=404,
            )
        camera = subscription.camera

        async def encode() -> bytes:
            # The camera's whole frame, as the original worker served it ("the latest JPEG
            # image from the camera stream"), not the subscription's crop: a CMS draws the
            # crop on it. Converted and encoded off the loop.
            frame = await camera.latest(cropped=False)
            if frame is None:
                raise LookupError("the camera closed")
            return await asyncio.to_thread(lambda: encode_jpeg(frame.rgb, 85))

        frame_id = camera.latest_frame_id
        jpeg: bytes | None = None
        if frame_id is not None:
            with contextlib.suppress(LookupError):  # the camera closed meanwhile
                jpeg = await self.frame_jpegs.get(frame_id[0], frame_id[1], encode)
        if jpeg is None:
            return web.json_response(
                {"status": "error", "message": f"no frame available yet for camera {identifier!r}"},
                status=404,
            )
        return web.Response(body=jpeg, content_type="image/jpeg")


#: /openapi.json entries of :meth:`CmsEndpoint.routes`.
CMS_ROUTE_DOCS: tuple[RouteDoc, ...] = (
    RouteDoc(
        "GET",
        "/",
        "CMS worker protocol (WebSocket)",
        description=(
            "JSON text messages both ways (docs/COMPATIBILITY.md, the CMS worker protocol). "
            "In: subscribe, unsubscribe, requestState, setSessionId, patchSessionResult. "
            "Out: stateReport every heartbeat, imageDetection per analysed frame, "
            "patchSession, and error naming what was wrong with a message (the socket stays "
            "open). The token goes in `Authorization: Bearer` or `?token=`."
        ),
        tags=("cms",),
        auth="token_or_query",
        websocket=True,
    ),
    RouteDoc(
        "GET",
        "/camera/{camera_id}/image",
        "The latest frame of a subscribed camera, as JPEG",
        tags=("cms",),
        auth="token_or_query",
        path_params={"camera_id": "the subscription identifier, `display;camera`"},
        replies=(Reply(200, "the camera's latest frame", Body(content_type="image/jpeg")),),
        errors={404: "the camera is not subscribed, or has no frame yet"},
    ),
)
