"""StreamManager: the StreamServer state machine, independent of HTTP.

States (``/health`` and ``/stream/status``)::

    LOADING --load_model ok--> IDLE --start--> OK --stop / input ended--> IDLE
       |                        ^  \\                |
       +--load_model failed--> ERROR <--start failed-+--session failed

* LOADING: the processor's model loads in the background; starts get 503.
* IDLE: ready, no stream. OK: one stream runs; another start gets 503.
* ERROR: the model failed to load, a start failed, or a session died. It is never sticky:
  the next start is accepted (it retries the model load first when that is what failed)
  and clears ERROR when it succeeds. A failed startup load is retried in the background
  (5 s, doubling to 60 s) unless its error is permanent (a local archive that does not
  exist).

Client mistakes (bad params, stop with no stream) answer 400 and change no state. One
stream at a time, as pytrickle: a processor instance serves one stream.

The media session is pluggable (``session_factory``); a start request without any channel
URL gets an :class:`IdleSession` (a stream with no media yet), which performs no I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, cast

from pytrickle_worker import __version__
from pytrickle_worker.core.backoff import Backoff
from pytrickle_worker.core.errors import WorkerError
from pytrickle_worker.core.hardware import HardwareMonitor
from pytrickle_worker.core.logutil import mask_text
from pytrickle_worker.frontdoors.streamserver.hardware import gpu_info, gpu_stats
from pytrickle_worker.frontdoors.streamserver.schemas import (
    DrainInfo,
    HardwareInfo,
    HardwareStats,
    ParamsUpdated,
    Readiness,
    StartRequest,
    StreamFps,
    StreamHealth,
    StreamInfo,
    StreamParams,
    StreamStarted,
    StreamState,
    StreamStatus,
    StreamStopped,
    VersionInfo,
    split_params_update,
)
from pytrickle_worker.processing import FrameProcessor, ParamsError
from pytrickle_worker.transport.http_errors import ApiError

logger = logging.getLogger(__name__)

__all__ = [
    "ApiError",
    "IdleSession",
    "IdleStats",
    "SessionFactory",
    "SessionStats",
    "StreamManager",
    "StreamSessionLike",
    "StreamState",
]


class SessionStats(Protocol):
    """A session's counters (``StreamStats`` for a trickle stream)."""

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class IdleStats:
    """An :class:`IdleSession`'s counters: no media, so no rates."""

    params: dict[str, Any]
    kind: Literal["idle"] = "idle"
    input_fps: float = 0.0
    output_fps: float = 0.0
    processing_fps: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "input_fps": self.input_fps,
            "output_fps": self.output_fps,
            "processing_fps": self.processing_fps,
            "params": dict(self.params),
        }


class StreamSessionLike(Protocol):
    """What the manager needs of a media session (trickle in → processor → trickle out).

    * ``start()`` connects and returns once the session runs; raising means the start
      failed (the manager then calls ``stop()`` and ``on_stream_stop()`` itself).
    * ``stop()`` ends it (idempotent) and releases everything; it must not call the
      processor's ``on_stream_stop`` (the manager does).
    * ``update_params(changes, requested)`` receives the validated, runtime-changeable
      stream-level fields (today ``max_framerate``; possibly none) and the whole update as
      requested, for the ``params_updated`` event; the manager has already applied the
      processor's params. It is called for every accepted update.
    * ``stats().to_dict()["max_framerate"]``, when present, is the rate cap in effect (it
      may also change from the control channel); status shows it in ``current_params``.
    * ``stats()`` is cheap and non-blocking; from its ``to_dict()`` the manager reads ``input_fps``,
      ``output_fps`` and ``processing_fps`` from it (floats) and ``input_stalled`` (bool,
      optional: the input watchdog's verdict, shown in status and ``/health``) and shows
      the rest as is.
    * ``wait_closed()`` returns when the session has ended, by ``stop()`` or on its own
      (input ended, channel gone), and raises the failure that ended it, if any.
    """

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def update_params(
        self, changes: dict[str, Any], requested: dict[str, Any] | None = None
    ) -> None: ...

    def stats(self) -> SessionStats: ...

    async def wait_closed(self) -> None: ...


SessionFactory = Callable[[StartRequest, FrameProcessor], StreamSessionLike]


class IdleSession:
    """A stream with no media channels: it holds the stream slot and does no I/O."""

    def __init__(self, request: StartRequest, processor: FrameProcessor) -> None:
        self.request = request
        self.processor = processor
        self.params: dict[str, Any] = request.stream_params.given()
        self._closed = asyncio.Event()
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self._closed.set()

    async def update_params(
        self, changes: dict[str, Any], requested: dict[str, Any] | None = None
    ) -> None:
        self.params.update(changes)

    def stats(self) -> IdleStats:
        return IdleStats(params=dict(self.params))

    async def wait_closed(self) -> None:
        await self._closed.wait()


class _Stream:
    """The active stream: its request, session, settings and watcher."""

    def __init__(self, request: StartRequest, session: StreamSessionLike) -> None:
        self.request = request
        self.session = session
        self.stream_params: StreamParams = request.stream_params
        self.started_at = time.time()
        self.watcher: asyncio.Task[None] | None = None


def _env_model_id() -> str:
    return os.environ.get("CAPABILITY_NAME") or os.environ.get("MODEL_ID") or "pytrickle-worker"


#: How long a start that arrives during the startup model load waits for it (pytrickle's
#: waits for the load however long it takes; past this the start gets its 503 and the
#: orchestrator, whose HTTP call has its own deadline, may try again).
START_WAITS_FOR_LOAD_S: Final = 30.0


class StreamManager:
    """Owns the processor, the stream state and the active session."""

    def __init__(
        self,
        processor: FrameProcessor,
        session_factory: SessionFactory | None = None,
        *,
        hardware: HardwareMonitor | None = None,
        pipeline: str | None = None,
        model_id: str | None = None,
        version: str = __version__,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.processor = processor
        self.session_factory = session_factory
        self.pipeline = pipeline or os.environ.get("PIPELINE") or "byoc"
        self.model_id = model_id or _env_model_id()
        self.version = version
        self.stop_timeout_s = stop_timeout_s
        self._hardware = hardware
        self._state = StreamState.LOADING
        self._error: str | None = None
        self._loaded = False
        self._load_task: asyncio.Task[None] | None = None
        self._retry_task: asyncio.Task[None] | None = None
        self._load_error_permanent = False
        self._stream: _Stream | None = None
        self._starting = False
        self._lock = asyncio.Lock()
        self._last_params: dict[str, Any] = {}
        self._draining = False
        self.load_retry_initial_s = 5.0
        self.load_retry_max_s = 60.0
        self.start_waits_for_load_s = START_WAITS_FOR_LOAD_S

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> StreamState:
        return self._state

    @property
    def error_message(self) -> str | None:
        return self._error

    @property
    def active(self) -> bool:
        return self._stream is not None

    @property
    def stream_id(self) -> str | None:
        """The active stream's ``gateway_request_id``; None without a stream."""
        stream = self._stream
        return None if stream is None else stream.request.gateway_request_id

    @property
    def draining(self) -> bool:
        return self._draining

    def begin_drain(self) -> None:
        """The process is shutting down: not ready any more, and starts are refused."""
        self._draining = True

    def _set_error(self, message: str) -> None:
        self._error = mask_text(message)
        self._state = StreamState.ERROR
        logger.error("stream server ERROR: %s", self._error)

    def _set_idle(self) -> None:
        self._state = StreamState.IDLE if self._loaded else StreamState.LOADING

    # ------------------------------------------------------------------ lifecycle

    async def startup(self) -> None:
        """Start loading the processor's model in the background (state LOADING)."""
        if self._load_task is None:
            self._state = StreamState.LOADING
            self._load_task = asyncio.get_running_loop().create_task(
                self._load(), name="stream-manager-load"
            )

    async def wait_loaded(self) -> None:
        """Wait for the startup load (whatever its outcome)."""
        if self._load_task is not None:
            await asyncio.shield(self._load_task)

    async def _load(self) -> None:
        if not await self._try_load() and not self._draining and not self._load_error_permanent:
            self._retry_task = asyncio.get_running_loop().create_task(
                self._retry_load(), name="stream-manager-load-retry"
            )

    async def _retry_load(self) -> None:
        """Keep trying in the background: a pod whose model failed to load (the model server
        was down) must heal on its own, since an unready pod gets no start that would retry."""
        backoff = Backoff(self.load_retry_initial_s, self.load_retry_max_s, jitter=False)
        while not self._loaded and not self._draining:
            await asyncio.sleep(backoff.failed())
            async with self._lock:
                if self._loaded or self._draining:
                    return
                if await self._try_load() and self._stream is None:
                    self._error = None
                    self._state = StreamState.IDLE

    async def _try_load(self) -> bool:
        started = time.perf_counter()
        try:
            await self.processor.load_model()
        except Exception as exc:
            if not isinstance(exc, WorkerError):
                logger.exception("processor model failed to load")
            # A missing local archive stays missing: no background retry (a start still
            # tries again), and the log and /health say so once.
            self._load_error_permanent = isinstance(exc, WorkerError) and exc.permanent
            suffix = " (not retried in the background; the next stream start tries again)"
            self._set_error(
                f"model failed to load: {exc}{suffix if self._load_error_permanent else ''}"
            )
            return False
        self._loaded = True
        if self._state is StreamState.LOADING:
            self._state = StreamState.IDLE
        logger.info("processor ready in %.2f s", time.perf_counter() - started)
        return True

    async def shutdown(self, *, close_processor: bool = True) -> None:
        """Stop the stream, stop loading, and close the processor."""
        for task in (self._load_task, self._retry_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        async with self._lock:
            stream, self._stream = self._stream, None
            if stream is not None:
                await self._teardown(stream, cancel_watcher=True)
                self._set_idle()
        if close_processor:
            await self.processor.close()

    # ------------------------------------------------------------------ health

    def session_stats(self) -> SessionStats | None:
        """The active session's counters; None without a stream (or a broken session)."""
        stream = self._stream
        if stream is None:
            return None
        try:
            return stream.session.stats()
        except Exception as exc:  # status must answer even if the session is broken
            logger.warning("session stats failed: %s", exc)
            return None

    def _session_stats(self) -> dict[str, Any]:
        stats = self.session_stats()
        return {} if stats is None else stats.to_dict()

    def health(self) -> tuple[int, dict[str, Any]]:
        """``/health``: 200 in every state (the state is in the body).

        ``healthy`` is false in ERROR and while the active stream's input is stalled
        (``input_stalled``: no frame for the session's input timeout); a stalled stream
        stays ``OK`` with 200 (it is running and may get its input back; the gateway's
        side is what failed), so StreamServer clients see the same states as before.
        """
        stalled = bool(self._session_stats().get("input_stalled"))
        body = StreamHealth(
            status=self._state,
            healthy=self._state is not StreamState.ERROR and not stalled,
        )
        # Fields set only when they apply, so exclude_unset leaves the others out.
        if self._stream is not None:
            body.input_stalled = stalled
        if self._draining:
            body.draining = True
        # 200 in every state, ERROR included, as pytrickle's StreamServer answers: an
        # orchestrator that reads a 500 as "worker down" would never send the start that
        # clears ERROR. The body says ERROR (and healthy: false); /health/ready is the probe.
        if self._state is StreamState.ERROR:
            body.error_message = self._error
        return 200, body.model_dump(mode="json", exclude_unset=True)

    def ready(self) -> tuple[int, dict[str, Any]]:
        """``/health/ready``: 200 once the model is loaded, unless the process is shutting
        down. ERROR after a failed stream is ready (the next start clears it); ERROR because
        the model never loaded is not (it retries in the background, unless the error is
        permanent)."""
        ok = self._loaded and not self._draining
        body = Readiness(status=self._state, ready=ok)
        if self._draining:
            body.draining = True
        return (200 if ok else 503), body.model_dump(mode="json", exclude_unset=True)

    def status(self) -> dict[str, Any]:
        stream = self._stream
        stats = self._session_stats()
        stalled = bool(stats.get("input_stalled"))
        fps = {
            key: float(stats.get(key) or 0.0)
            for key in ("input_fps", "output_fps", "processing_fps")
        }
        current: dict[str, Any] = {}
        stream_info: StreamInfo | None = None
        if stream is not None:
            current = stream.request.masked()
            current["params"] = self._current_params(stream)
            stream_info = StreamInfo.model_validate(
                {
                    **stream.request.masked(),
                    "started_at": stream.started_at,
                    "uptime_s": round(time.time() - stream.started_at, 3),
                }
            )
        return StreamStatus(
            # pytrickle's get_pipeline_state() fields first (status/pipeline_state repeat the
            # state, as there), then ours.
            status=self._state,
            state=self._state,
            pipeline_state=self._state,
            additional_info=DrainInfo(draining=self._draining),
            # As pytrickle's: not ready in ERROR (here the next start may still clear it).
            pipeline_ready=self._loaded and self._state is not StreamState.ERROR,
            startup_complete=self._load_task is not None and self._load_task.done(),
            active_streams=1 if stream is not None else 0,
            active_client=stream is not None,
            client_active=stream is not None,
            client_running=stream is not None,
            error_message=self._error,
            healthy=self._state is not StreamState.ERROR and not stalled,
            input_stalled=stalled,
            fps=StreamFps.model_validate(fps),
            current_params=current,
            stream=stream_info,
            session=stats,
        ).model_dump(mode="json", exclude_unset=True)

    def _current_params(self, stream: _Stream) -> dict[str, Any]:
        params = stream.stream_params.given()
        params.update(self._last_params)
        try:
            stats = stream.session.stats().to_dict()
        except Exception:  # status must answer even if the session is broken
            stats = {}
        if "max_framerate" in stats:  # the cap in effect, whoever set it last
            if stats["max_framerate"] is None:
                params.pop("max_framerate", None)
            else:
                params["max_framerate"] = stats["max_framerate"]
        params.update(self.processor.current_params())
        return params

    # ------------------------------------------------------------------ start / stop

    async def start(self, request: StartRequest) -> dict[str, Any]:
        if self._draining:
            raise ApiError(503, "The server is shutting down")
        load = self._load_task
        if self._state is StreamState.LOADING and load is not None and not load.done():
            # pytrickle's StreamServer awaits the model load before it answers a start: an
            # orchestrator's start that arrives while a pod warms up is served, not refused.
            await asyncio.wait({load}, timeout=self.start_waits_for_load_s)
            if self._draining:
                raise ApiError(503, "The server is shutting down")
        if self._state is StreamState.LOADING:
            raise ApiError(503, "Pipeline is still initializing. Please wait for IDLE status.")
        if self._stream is not None or self._starting:
            raise ApiError(503, "Pipeline is still in use")
        self._starting = True
        try:
            async with self._lock:
                await self._start_locked(request)
        finally:
            self._starting = False
        stream_id = request.gateway_request_id
        logger.info("stream %s started: %s", stream_id, request.masked())
        return StreamStarted(
            status="success",
            message="Stream started successfully",
            request_id=stream_id,
            current_state=StreamStatus.model_validate(self.status()),
        ).model_dump(mode="json", exclude_unset=True)

    async def _start_locked(self, request: StartRequest) -> None:
        if not self._loaded:
            # The startup load failed: try again now, so a transient failure heals.
            try:
                await self.processor.load_model()
            except Exception as exc:
                self._set_error(f"model failed to load: {exc}")
                raise ApiError(500, f"Error starting stream: {self._error}") from exc
            self._loaded = True
        try:
            await self.processor.on_stream_start(request.processor_params())
        except ParamsError as exc:
            raise ApiError(400, f"Invalid params: {exc}") from exc
        except Exception as exc:
            logger.exception("processor failed to start the stream")
            self._set_error(f"processor failed to start the stream: {exc}")
            raise ApiError(500, f"Error starting stream: {self._error}") from exc
        session: StreamSessionLike | None = None
        try:
            session = self._make_session(request)
            await session.start()
        except Exception as exc:
            logger.exception("stream session failed to start")
            if session is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.stop_timeout_s):
                        await session.stop()
            with contextlib.suppress(Exception):
                await self.processor.on_stream_stop()
            self._set_error(f"stream session failed to start: {exc}")
            raise ApiError(500, f"Error starting stream: {self._error}") from exc
        stream = _Stream(request, session)
        self._stream = stream
        self._last_params = {}
        self._error = None
        self._state = StreamState.OK
        stream.watcher = asyncio.get_running_loop().create_task(
            self._watch(stream), name=f"stream-watch-{request.gateway_request_id}"
        )

    def _make_session(self, request: StartRequest) -> StreamSessionLike:
        if not request.has_channels:
            return IdleSession(request, self.processor)
        if self.session_factory is None:
            raise WorkerError("this server has no media session support configured")
        return self.session_factory(request, self.processor)

    async def stop(self) -> dict[str, Any]:
        async with self._lock:
            stream = self._stream
            if stream is None:
                raise ApiError(400, "No active stream to stop")
            self._stream = None
            failure = await self._teardown(stream, cancel_watcher=True)
            self._set_idle()
        logger.info("stream %s stopped", stream.request.gateway_request_id)
        if failure is not None:
            raise ApiError(500, f"Error stopping stream: {failure}")
        stopped = StreamStopped(status="success", message="Stream stopped successfully")
        return stopped.model_dump(mode="json")

    async def _teardown(self, stream: _Stream, *, cancel_watcher: bool) -> str | None:
        """Stop the session and tell the processor; returns a failure message, if any."""
        failure: str | None = None
        if cancel_watcher and stream.watcher is not None:
            stream.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stream.watcher
        try:
            async with asyncio.timeout(self.stop_timeout_s):
                await stream.session.stop()
        except Exception as exc:
            logger.exception("stream session failed to stop")
            failure = f"session stop failed: {exc!r}"
        try:
            await self.processor.on_stream_stop()
        except Exception as exc:
            logger.exception("processor on_stream_stop failed")
            failure = failure or f"processor stop failed: {exc!r}"
        self._last_params = {}
        return mask_text(failure) if failure else None

    async def _watch(self, stream: _Stream) -> None:
        """Notice a session that ends on its own, and free the stream slot."""
        failure: str | None = None
        try:
            await stream.session.wait_closed()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failure = str(exc) or repr(exc)
        async with self._lock:
            if self._stream is not stream:
                return
            self._stream = None
            stream_id = stream.request.gateway_request_id
            teardown_failure = await self._teardown(stream, cancel_watcher=False)
            if failure is not None:
                self._set_error(f"stream {stream_id} failed: {failure}")
            else:
                logger.info("stream %s ended", stream_id)
                if teardown_failure is not None:
                    logger.warning("stream %s: %s", stream_id, teardown_failure)
                self._set_idle()

    # ------------------------------------------------------------------ params

    async def update_params(self, update: object) -> dict[str, Any]:
        if not isinstance(update, dict):
            raise ApiError(400, "request body must be a JSON object of params")
        async with self._lock:
            stream = self._stream
            if stream is None:
                raise ApiError(400, "No active stream to update")
            params = cast(dict[str, Any], update)  # JSON object keys are strings
            try:
                changes, processor_params = split_params_update(params, stream.stream_params)
                if processor_params:
                    await self.processor.apply_params(processor_params)
            except ParamsError as exc:
                raise ApiError(400, f"Invalid params: {exc}") from exc
            except Exception as exc:
                logger.exception("processor failed to apply params")
                raise ApiError(500, f"Error updating params: {mask_text(str(exc))}") from exc
            try:
                await stream.session.update_params(changes, params)
            except ParamsError as exc:
                raise ApiError(400, f"Invalid params: {exc}") from exc
            except Exception as exc:
                logger.exception("session failed to apply params")
                raise ApiError(500, f"Error updating params: {mask_text(str(exc))}") from exc
            self._last_params.update(changes)
            current = self._current_params(stream)
        logger.info("params updated: %s", sorted(params))
        return ParamsUpdated(
            status="success", message="Parameters updated successfully", params=current
        ).model_dump(mode="json")

    # ------------------------------------------------------------------ info routes

    def version_info(self) -> dict[str, Any]:
        return VersionInfo(
            pipeline=self.pipeline, model_id=self.model_id, version=self.version
        ).model_dump(mode="json")

    def _monitor(self) -> HardwareMonitor:
        if self._hardware is None:
            self._hardware = HardwareMonitor()
        return self._hardware

    async def hardware_info(self) -> dict[str, Any]:
        info = await asyncio.to_thread(gpu_info, self._monitor())
        return HardwareInfo.model_validate(
            {"pipeline": self.pipeline, "model_id": self.model_id, "gpu_info": info}
        ).model_dump(mode="json")

    async def hardware_stats(self) -> dict[str, Any]:
        stats = await asyncio.to_thread(gpu_stats, self._monitor())
        return HardwareStats.model_validate(
            {"pipeline": self.pipeline, "model_id": self.model_id, "gpu_stats": stats}
        ).model_dump(mode="json")
