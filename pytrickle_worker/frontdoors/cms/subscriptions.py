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
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from processors.mpta_detector import MptaDetectorProcessor
from pytrickle_worker.core.errors import WorkerError
from pytrickle_worker.core.fps import FpsMeter
from pytrickle_worker.core.latency import LatencyHistogram
from pytrickle_worker.core.logutil import mask_text, mask_url
from pytrickle_worker.engine.mpta.policy import ModelUrlPolicy
from pytrickle_worker.engine.mpta.service import PipelineService
from pytrickle_worker.frontdoors.cms.emission import DetectionEmitter, EmissionMode
from pytrickle_worker.frontdoors.cms.protocol import (
    CameraConnection,
    DetectionData,
    ErrorMessage,
    ImageDetection,
    SessionId,
    SubscribePayload,
    iso_timestamp,
)
from pytrickle_worker.processing import FrameProcessor, StreamContext, VideoFrame
from pytrickle_worker.processing.registry import (
    ProcessorDeps,
    ProcessorFactory,
    lookup,
    parse_processor_url,
)
from pytrickle_worker.processing.sink import ResultSink, StreamSinks
from pytrickle_worker.sources.errors import CropError
from pytrickle_worker.sources.frame import CameraFrame
from pytrickle_worker.sources.hub import CameraHub, Subscription

logger = logging.getLogger(__name__)

#: How long a processing loop waits for a frame before it re-checks its state.
FRAME_WAIT_S = 1.0
#: Errors of one subscription's processing loop are reported at most this often.
ERROR_REPORT_INTERVAL_S = 10.0
#: The MPTA params of a CMS subscription: its archive's Redis actions run, and nothing is
#: drawn (the CMS door sends detections, not frames).
CMS_PARAMS: dict[str, Any] = {"run_actions": True, "annotate": False}


class SubscriptionError(WorkerError):
    """A subscribe/unsubscribe request that cannot be carried out; the message says why."""


@dataclass
class ActiveSubscription:
    payload: SubscribePayload
    camera: Subscription
    processor: FrameProcessor
    stream: StreamContext
    emitter: DetectionEmitter
    #: The result sinks (the live view) of this subscription, named by its label and key.
    sinks: StreamSinks = field(default_factory=lambda: StreamSinks((), "", "", "cms"))
    task: asyncio.Task[None] | None = None
    frames_processed: int = 0
    #: Frames taken from the camera but not analysed (crop impossible, processing failed).
    frames_dropped: int = 0
    detections_sent: int = 0
    last_error: str | None = None
    last_error_report: float = field(default=0.0)
    last_camera_error: str | None = None
    #: A frame was analysed since the camera last went offline: it is online, whatever the
    #: reader's bookkeeping says yet.
    analysed_since_offline: bool = False
    #: The ``online`` value the backends last saw in a stateReport.
    announced_online: bool = False
    #: Capture→result latency of each analysed frame (camera decode to processor result).
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    #: Frames analysed per second (the processor's results).
    analysed: FpsMeter = field(default_factory=FpsMeter)

    @property
    def identifier(self) -> str:
        return self.payload.subscriptionIdentifier

    @property
    def online(self) -> bool:
        return self.analysed_since_offline or self.camera.status.online

    def connection(self) -> CameraConnection:
        p = self.payload
        self.announced_online = online = self.online
        return CameraConnection(
            subscriptionIdentifier=p.subscriptionIdentifier,
            modelId=p.modelId,
            modelName=p.modelName,
            online=online,
            cropX1=p.cropX1,
            cropY1=p.cropY1,
            cropX2=p.cropX2,
            cropY2=p.cropY2,
        )


Deliver = Callable[[ImageDetection | ErrorMessage], None]
#: Tells the backend that sent a command what went wrong with it.
Reply = Callable[[str], None]

#: Subscriptions started or stopped at once while the worker releases everything.
RELEASE_CONCURRENCY = 16
#: Starts (archive fetch and model load) at once, across all ids.
MAX_CONCURRENT_STARTS = 4
#: Ids that are neither subscribed nor yet starting may have this many subscribes pending.
MAX_PENDING_NEW = 64


def _log_release(identifier: str, error: str) -> None:
    logger.warning("%s: release of an unclaimed subscription failed: %s", identifier, error)


@dataclass
class _Intent:
    """What the backends last asked for one subscription id, and the task carrying it out.

    Commands never wait in a queue: each one overwrites ``desired`` (the last command wins),
    and the id's one worker task moves the running state towards it, one step at a time.
    """

    desired: SubscribePayload | None
    reply: Reply
    worker: asyncio.Task[None] | None = None
    #: The start in progress and the payload it is starting, so a newer command can cancel it.
    starting: asyncio.Task[ActiveSubscription] | None = None
    starting_payload: SubscribePayload | None = None


class SubscriptionManager:
    """Owns every CMS subscription; see the README's "Command ordering".

    For each subscription id, commands take effect in arrival order and the last one wins:
    a burst of subscribe/unsubscribe ends in the state of its last message. One worker task
    per id applies them, so two operations on one id never overlap. A subscribe that a newer
    command supersedes while its archive loads is cancelled and its resources freed. An
    unsubscribe is never refused: it only changes what the worker task aims for.
    """

    def __init__(
        self,
        hub: CameraHub,
        service: PipelineService,
        deliver: Deliver,
        *,
        target_fps: float,
        max_streams: int,
        emission: EmissionMode,
        on_change: Callable[[], None] = lambda: None,
        processors: Mapping[str, ProcessorFactory] | None = None,
        model_urls: ModelUrlPolicy | None = None,
        sinks: Sequence[ResultSink] = (),
        sink_names: Callable[[str], tuple[str, str]] = lambda identifier: ("cms", identifier),
    ) -> None:
        self.hub = hub
        #: Where analysed frames go besides the backends (the live view), and the
        #: (label, key) a subscription identifier has there.
        self.sinks = tuple(sinks)
        self.sink_names = sink_names
        self.service = service
        self.deliver = deliver
        self.target_fps = target_fps
        #: Processors a ``processor://NAME`` modelUrl may name (:mod:`.processing.registry`).
        self.processors: Mapping[str, ProcessorFactory] = processors or {}
        self._deps = ProcessorDeps(service, model_urls or service.config.model_url_policy())
        # Camera frames are numbered at the hub's sampling rate (the MPTA stream's tracker
        # runs at that fixed rate).
        self._time_base = Fraction(1) / Fraction(target_fps)
        self.max_streams = max_streams
        self.emission = emission
        #: Called when the set of subscriptions, or a camera's reported state, changes.
        self.on_change = on_change
        self.sessions: dict[str, SessionId] = {}
        self._active: dict[str, ActiveSubscription] = {}
        self._intents: dict[str, _Intent] = {}
        self._starts = asyncio.Semaphore(MAX_CONCURRENT_STARTS)
        self._starting_new = 0
        self._closing = False
        #: Subscriptions a reconnected backend has not subscribed again yet (see reclaim).
        self._unclaimed: set[str] = set()

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

    @property
    def pending(self) -> int:
        """Ids with a command still being carried out."""
        return len(self._intents)

    async def settled(self) -> None:
        """Wait until every command received so far has been carried out. Cancelling the
        wait cancels no command (asyncio.wait, unlike gather, leaves its tasks alone)."""
        while self._intents:
            workers = {i.worker for i in self._intents.values() if i.worker is not None}
            if workers:
                await asyncio.wait(workers)
            else:
                await asyncio.sleep(0)

    # ------------------------------------------------------------------ commands

    def set_session(self, display: str, session_id: SessionId | None) -> int:
        """Set (or clear, with None) the session of every subscription of ``display``.

        A new session makes the display's objects in view be announced again, with it: the
        backend opens a session on a detection and then expects that session's detections
        (worker.md), but with ``changes`` emission the object that started it was already
        sent and would never be sent again.
        """
        if session_id is None:
            self.sessions.pop(display, None)
        elif self.sessions.get(display) != session_id:
            self.sessions[display] = session_id
            self.announce_again(display)
        return len(self._of_display(display))

    def announce_again(self, display: str | None = None) -> None:
        """Forget what was sent for ``display``'s subscriptions (every one's with None), so
        each announces the objects it sees at its next analysed frame."""
        for sub in self._active.values() if display is None else self._of_display(display):
            sub.emitter.reset()

    def _of_display(self, display: str) -> list[ActiveSubscription]:
        return [s for s in self._active.values() if s.payload.display_identifier == display]

    def begin_reclaim(self, keep: set[str]) -> int:
        """A backend reconnected: every subscription but ``keep``, running or still starting,
        must be claimed again by a command for its id before :meth:`release_unclaimed`.
        Returns how many."""
        self._unclaimed = {i for i in [*self._active, *self._intents] if self._wanted(i)} - keep
        return len(self._unclaimed)

    def release_unclaimed(self) -> list[str]:
        """Unsubscribe what no command claimed since :meth:`begin_reclaim`; their ids."""
        released = [] if self._closing else sorted(i for i in self._unclaimed if self._wanted(i))
        self._unclaimed = set()
        for identifier in released:
            self.request(identifier, None, lambda error, i=identifier: _log_release(i, error))
        return released

    def _wanted(self, identifier: str) -> bool:
        """Running, or starting (its last command a subscribe)."""
        intent = self._intents.get(identifier)
        if intent is not None:
            return intent.desired is not None
        return identifier in self._active

    def request(self, identifier: str, payload: SubscribePayload | None, reply: Reply) -> None:
        """Ask for ``identifier`` to run ``payload`` (subscribe) or nothing (unsubscribe).

        Returns at once; ``reply`` hears of a command that fails. Never raises.
        """
        self._unclaimed.discard(identifier)
        if self._closing:
            reply("every subscription is being released; send the command again")
            return
        intent = self._intents.get(identifier)
        if intent is None:
            current = self._active.get(identifier)
            if payload is None and current is None:
                reply("unknown subscriptionIdentifier")
                return
            if _same(payload, current.payload if current is not None else None):
                self.on_change()  # nothing to do; the backend still hears the state
                return
            if payload is not None and current is None and self._new_pending() >= MAX_PENDING_NEW:
                reply("too many subscribe requests pending")
                return
            intent = self._intents[identifier] = _Intent(payload, reply)
            intent.worker = asyncio.get_running_loop().create_task(
                self._carry_out(identifier, intent), name=f"subscription command {identifier}"
            )
            return
        intent.desired, intent.reply = payload, reply
        starting = intent.starting
        if starting is not None and not _same(intent.starting_payload, payload):
            starting.cancel()  # superseded: stop loading what nobody wants any more

    def _new_pending(self) -> int:
        return sum(1 for i in self._intents if i not in self._active)

    async def _carry_out(self, identifier: str, intent: _Intent) -> None:
        try:
            while await self._step(identifier, intent):
                pass
        except Exception as exc:  # a bug: say so rather than leave the command unanswered
            logger.exception("%s: command failed", identifier)
            intent.reply(f"internal error: {exc}")
        finally:
            if self._intents.get(identifier) is intent:
                del self._intents[identifier]
            if not self._closing:  # closing: no backend is told (the drain closes them)
                self.on_change()

    async def _step(self, identifier: str, intent: _Intent) -> bool:
        """One move towards ``intent.desired``; False once the running state matches it."""
        desired = intent.desired
        current = self._active.get(identifier)
        if desired is None:
            if current is None:
                return False
            del self._active[identifier]
            await _uncancelled(self._stop(current))
            logger.info("unsubscribed %s", identifier)
            return True
        if current is not None and current.payload.same_subscription(desired):
            return False
        if current is None and len(self._active) + self._starting_new >= self.max_streams:
            intent.desired = None
            intent.reply(
                f"max_streams reached ({self.max_streams} subscriptions); "
                "unsubscribe one first or raise max_streams"
            )
            return False
        replacement = await self._start_cancellable(intent, desired, new=current is None)
        if replacement is None:
            return True  # superseded or failed: look at what is wanted now
        if not _same(intent.desired, desired):
            await _uncancelled(self._stop(replacement))  # superseded after it had started
            return True
        # The replacement is ready before the old one stops, so a failing replacement
        # leaves the running subscription as it was.
        if current is not None:
            await _uncancelled(self._stop(current))
        self._active[identifier] = replacement
        replacement.task = asyncio.get_running_loop().create_task(
            self._run(replacement), name=f"subscription {identifier}"
        )
        logger.info(
            "%s %s: model %s (%s), camera %s",
            "replaced" if current is not None else "subscribed",
            identifier,
            desired.modelId,
            mask_url(desired.modelUrl),
            mask_url(desired.source_url),
        )
        return True

    async def _start_cancellable(
        self, intent: _Intent, payload: SubscribePayload, *, new: bool
    ) -> ActiveSubscription | None:
        """Start ``payload``; None when a newer command cancelled the start or it failed."""
        async with self._starts:
            if not _same(intent.desired, payload):
                return None  # superseded while it waited for its turn
            self._starting_new += new
            start = asyncio.get_running_loop().create_task(self._start(payload))
            intent.starting, intent.starting_payload = start, payload
            try:
                return await start
            except asyncio.CancelledError:
                if not start.cancelled() or _cancelling():
                    raise  # the worker itself is being cancelled (the manager closes)
                return None
            except WorkerError as exc:
                if _same(intent.desired, payload):
                    # Nothing changed: what runs (if anything) is what is wanted now.
                    current = self._active.get(payload.subscriptionIdentifier)
                    intent.desired = current.payload if current is not None else None
                    intent.reply(str(exc))
                return None
            finally:
                intent.starting = intent.starting_payload = None
                self._starting_new -= new

    async def _start(self, payload: SubscribePayload) -> ActiveSubscription:
        named = parse_processor_url(payload.modelUrl)
        processor: FrameProcessor
        if named is None:
            # The endpoint has checked modelUrl against the model-URL rule: trusted here.
            processor = MptaDetectorProcessor(self.service, default_model_url=payload.modelUrl)
            params = CMS_PARAMS
        else:
            name, params = named
            processor = lookup(self.processors, name)(self._deps)
        try:
            await processor.load_model()
            stream = await processor.open_stream(
                payload.subscriptionIdentifier, params, frame_rate=self.target_fps
            )
        except BaseException:
            await _uncancelled(processor.close())
            raise
        try:
            camera = self.hub.subscribe(
                payload.source_config(), target_fps=self.target_fps, crop=payload.crop
            )
        except BaseException:
            await _uncancelled(_close_processor(processor, stream))
            raise
        emitter = DetectionEmitter(self.emission, tracked=stream.tracked)
        label, key = self.sink_names(payload.subscriptionIdentifier)
        sinks = StreamSinks(self.sinks, label, key, "cms")
        return ActiveSubscription(payload, camera, processor, stream, emitter, sinks)

    async def _stop(self, sub: ActiveSubscription) -> None:
        if sub.task is not None:
            sub.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sub.task
        sub.sinks.end()
        await sub.camera.close()
        await _close_processor(sub.processor, sub.stream)

    async def close(self) -> None:
        """Cancel every pending command and release every subscription, several at a time."""
        self._closing = True
        try:
            workers = [i.worker for i in self._intents.values() if i.worker is not None]
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            subscriptions = list(self._active.values())
            self._active.clear()
            gate = asyncio.Semaphore(RELEASE_CONCURRENCY)

            async def release(sub: ActiveSubscription) -> None:
                async with gate:
                    await self._stop(sub)

            results = await asyncio.gather(
                *(release(sub) for sub in subscriptions), return_exceptions=True
            )
            for sub, result in zip(subscriptions, results, strict=True):
                if isinstance(result, Exception):
                    logger.error("%s: release failed: %s", sub.identifier, result)
            if subscriptions:
                logger.info("released %d subscription(s)", len(subscriptions))
        finally:
            self._closing = False

    # ------------------------------------------------------------------ processing

    async def _run(self, sub: ActiveSubscription) -> None:
        while True:
            try:
                frame = await sub.camera.next_frame(
                    timeout=FRAME_WAIT_S, convert=not sub.processor.takes_decoded_frames
                )
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
        video = VideoFrame(
            frame.image if sub.processor.takes_decoded_frames else frame.rgb,
            sub.frames_processed,
            self._time_base,
            capture_time=frame.capture_time,
            stream_id=sub.payload.subscriptionIdentifier,
        )
        processed = await sub.stream.process(video)
        sub.latency.observe(time.time() - frame.capture_time)
        sub.analysed.tick()
        sub.frames_processed += 1
        sub.analysed_since_offline = True
        sub.sinks.offer(video, processed, sub.analysed.fps)
        if not sub.announced_online:
            # The backends hear that the camera is online before its first detection (state
            # is sent ahead of detections), not at the next heartbeat.
            self.on_change()
        # The CMS detection ({"class", "confidence", "id"}) is the first record's.
        found = processed.records[0].get("detection") if processed.records else None
        detection = sub.emitter.decide(found)
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
        if not status.online:
            sub.analysed_since_offline = False
        sub.sinks.set_online(sub.online)
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


async def _close_processor(processor: FrameProcessor, stream: StreamContext) -> None:
    try:
        await stream.close()
    finally:
        await processor.close()


def _same(a: SubscribePayload | None, b: SubscribePayload | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.same_subscription(b)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _uncancelled(step: Coroutine[Any, Any, None]) -> None:
    """Run ``step`` to its end even if the caller is cancelled meanwhile (then re-raise):
    a stop cut in half would leave a camera connection or a loaded model behind."""
    task = asyncio.ensure_future(step)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    task.result()  # its own exception, if it failed
    if cancelled:
        raise asyncio.CancelledError
