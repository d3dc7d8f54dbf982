"""Subscriptions of the CMS protocol: camera + pipeline + emission state, owned by the worker.

A subscription outlives any one backend connection: detections go to every connected backend
(through the ``deliver`` callback), and the :class:`SubscriptionManager` is torn down only when
the worker stops or the disconnect grace period ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from processors.mpta import MptaProcessor
from pytrickle_worker.cms.emission import DetectionEmitter, EmissionMode
from pytrickle_worker.errors import WorkerError
from pytrickle_worker.ingest.errors import CropError
from pytrickle_worker.ingest.frame import CameraFrame
from pytrickle_worker.ingest.hub import CameraHub, Subscription
from pytrickle_worker.ingest.source import SourceConfig, is_local_path
from pytrickle_worker.logutil import mask_text, mask_url
from pytrickle_worker.mpta.service import PipelineService
from pytrickle_worker.protocol import (
    CameraConnection,
    DetectionData,
    ErrorMessage,
    ImageDetection,
    SessionId,
    SubscribePayload,
    iso_timestamp,
)

logger = logging.getLogger(__name__)

#: How long a processing loop waits for a frame before it re-checks its state.
FRAME_WAIT_S = 1.0
#: Errors of one subscription's processing loop are reported at most this often.
ERROR_REPORT_INTERVAL_S = 10.0


class SubscriptionError(WorkerError):
    """A subscribe/unsubscribe request that cannot be carried out; the message says why."""


@dataclass
class ActiveSubscription:
    payload: SubscribePayload
    camera: Subscription
    processor: MptaProcessor
    emitter: DetectionEmitter
    task: asyncio.Task[None] | None = None
    frames_processed: int = 0
    #: Frames taken from the camera but not analysed (crop impossible, processing failed).
    frames_dropped: int = 0
    detections_sent: int = 0
    last_error: str | None = None
    last_error_report: float = field(default=0.0)
    last_camera_error: str | None = None

    @property
    def identifier(self) -> str:
        return self.payload.subscriptionIdentifier

    def connection(self) -> CameraConnection:
        p = self.payload
        return CameraConnection(
            subscriptionIdentifier=p.subscriptionIdentifier,
            modelId=p.modelId,
            modelName=p.modelName,
            online=self.camera.status.online,
            cropX1=p.cropX1,
            cropY1=p.cropY1,
            cropX2=p.cropX2,
            cropY2=p.cropY2,
        )


Deliver = Callable[[ImageDetection | ErrorMessage], None]


class SubscriptionManager:
    def __init__(
        self,
        hub: CameraHub,
        service: PipelineService,
        deliver: Deliver,
        *,
        target_fps: float,
        max_streams: int,
        emission: EmissionMode,
    ) -> None:
        self.hub = hub
        self.service = service
        self.deliver = deliver
        self.target_fps = target_fps
        self.max_streams = max_streams
        self.emission = emission
        self.sessions: dict[str, SessionId] = {}
        self._active: dict[str, ActiveSubscription] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._pending = 0

    # ------------------------------------------------------------------ queries

    def __len__(self) -> int:
        return len(self._active)

    def get(self, identifier: str) -> ActiveSubscription | None:
        return self._active.get(identifier)

    def active(self) -> list[ActiveSubscription]:
        return list(self._active.values())

    def connections(self) -> list[CameraConnection]:
        return [sub.connection() for sub in self._active.values()]

    def session_for(self, identifier: str) -> SessionId | None:
        display = identifier.partition(";")[0]
        return self.sessions.get(display)

    # ------------------------------------------------------------------ commands

    def set_session(self, display: str, session_id: SessionId | None) -> int:
        """Set (or clear, with None) the session of every subscription of ``display``."""
        if session_id is None:
            self.sessions.pop(display, None)
        else:
            self.sessions[display] = session_id
        return sum(1 for i in self._active if i.partition(";")[0] == display)

    def _lock(self, identifier: str) -> asyncio.Lock:
        lock = self._locks.get(identifier)
        if lock is None:
            lock = self._locks[identifier] = asyncio.Lock()
        return lock

    async def subscribe(self, payload: SubscribePayload) -> bool:
        """Start (or atomically replace) a subscription. Returns False when nothing changed.

        The archive is fetched and its models loaded before the old subscription (if any) is
        touched, so a failing replacement leaves the running one as it was.
        """
        identifier = payload.subscriptionIdentifier
        async with self._lock(identifier):
            current = self._active.get(identifier)
            if current is not None and current.payload.same_subscription(payload):
                return False
            if current is None and len(self._active) + self._pending >= self.max_streams:
                raise SubscriptionError(
                    f"max_streams reached ({self.max_streams} subscriptions); "
                    "unsubscribe one first or raise max_streams"
                )
            self._pending += 1
            try:
                replacement = await self._start(payload)
            finally:
                self._pending -= 1
            if current is not None:
                await self._stop(current)
            self._active[identifier] = replacement
            replacement.task = asyncio.get_running_loop().create_task(
                self._run(replacement), name=f"subscription {identifier}"
            )
            logger.info(
                "%s %s: model %s (%s), camera %s",
                "replaced" if current is not None else "subscribed",
                identifier,
                payload.modelId,
                mask_url(payload.modelUrl),
                mask_url(payload.source_url),
            )
            return True

    async def _start(self, payload: SubscribePayload) -> ActiveSubscription:
        processor = MptaProcessor(self.service, payload.modelUrl)
        await processor.start()
        try:
            source = SourceConfig(
                url=payload.rtspUrl,
                snapshot_url=payload.snapshotUrl,
                snapshot_interval_ms=payload.snapshotInterval,
                # A local file standing in for a camera (demos, tests) plays in a loop, at its
                # native rate, like a camera that never ends.
                loop=bool(payload.rtspUrl) and is_local_path(payload.rtspUrl or ""),
            )
            camera = self.hub.subscribe(source, target_fps=self.target_fps, crop=payload.crop)
        except BaseException:
            await processor.stop()
            raise
        processor.tracker.set_frame_rate(self.target_fps)
        pipeline = processor.pipeline
        tracked = pipeline is not None and not pipeline.root.is_classifier
        emitter = DetectionEmitter(self.emission, tracked=tracked)
        return ActiveSubscription(payload, camera, processor, emitter)

    async def unsubscribe(self, identifier: str) -> bool:
        async with self._lock(identifier):
            current = self._active.pop(identifier, None)
            if current is None:
                return False
            await self._stop(current)
            logger.info("unsubscribed %s", identifier)
        self._locks.pop(identifier, None)
        return True

    async def _stop(self, sub: ActiveSubscription) -> None:
        if sub.task is not None:
            sub.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sub.task
        await sub.camera.close()
        await sub.processor.stop()

    async def close(self) -> None:
        for identifier in list(self._active):
            await self.unsubscribe(identifier)

    # ------------------------------------------------------------------ processing

    async def _run(self, sub: ActiveSubscription) -> None:
        while True:
            try:
                frame = await sub.camera.next_frame(timeout=FRAME_WAIT_S)
            except CropError as exc:
                sub.frames_dropped += 1
                self._report(sub, str(exc))
                continue
            if frame is None:
                if sub.camera.closed:
                    return
                self._report_camera(sub)
                continue
            try:
                await self._process(sub, frame)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                sub.frames_dropped += 1
                logger.exception("%s: processing failed", sub.identifier)
                self._report(sub, f"processing failed: {exc}")

    async def _process(self, sub: ActiveSubscription, frame: CameraFrame) -> None:
        processed = await sub.processor.process(frame.rgb, self.target_fps)
        sub.frames_processed += 1
        detection = sub.emitter.decide(processed.detection)
        if detection is None:
            return
        message = ImageDetection(
            subscriptionIdentifier=sub.identifier,
            timestamp=iso_timestamp(frame.capture_time),
            data=DetectionData(
                detection=detection, modelId=sub.payload.modelId, modelName=sub.payload.modelName
            ),
            sessionId=self.session_for(sub.identifier),
        )
        sub.detections_sent += 1
        self.deliver(message)

    def _report_camera(self, sub: ActiveSubscription) -> None:
        """Tell the backends once per distinct camera error (the stateReport shows the state)."""
        status = sub.camera.status
        if status.online or not status.last_error:
            sub.last_camera_error = None
            return
        if status.last_error != sub.last_camera_error:
            sub.last_camera_error = status.last_error
            gave_up = " (gave up: max_retries reached)" if status.gave_up else ""
            self._report(sub, f"camera offline: {status.last_error}{gave_up}")

    def _report(self, sub: ActiveSubscription, error: str) -> None:
        error = mask_text(error)
        now = time.monotonic()
        if error == sub.last_error and now - sub.last_error_report < ERROR_REPORT_INTERVAL_S:
            return
        sub.last_error = error
        sub.last_error_report = now
        self.deliver(ErrorMessage(subscriptionIdentifier=sub.identifier, error=error))
