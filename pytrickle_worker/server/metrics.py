"""Prometheus metrics of the worker, served at ``GET /metrics`` (docs/METRICS.md).

:class:`WorkerMetrics` owns a :class:`~prometheus_client.CollectorRegistry` of its own (never
the library's global one, so two apps in one process never share series). Most values are
read from the components' own status snapshots at scrape time by :class:`WorkerCollector` --
the hub's per-source status, the CMS subscriptions and backend queues, the action
dispatcher, the model registry and the stream manager -- so nothing is counted twice. The only
metrics observed as they happen are the inference latency and batch-size histograms, which
the models feed through the :class:`~pytrickle_worker.engine.inference.model.InferenceObserver`
installed on the :class:`~pytrickle_worker.engine.inference.registry.ModelRegistry`. (The
per-stream capture→result latency is observed by the doors into their own
:class:`~pytrickle_worker.core.latency.LatencyHistogram` and read here as a snapshot.)

Counters taken from snapshots are the components' cumulative counts. They restart from zero
only when the thing they count is created again (a source reader restarted after its last
subscriber left, a new backend connection, a new stream session); Prometheus' ``rate()``
treats that as a counter reset. Every label is credential-free: sources and Redis targets are
masked with :func:`~pytrickle_worker.core.logutil.mask_url`, models are named by file name and
hash prefix, never by path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from pytrickle_worker import __version__
from pytrickle_worker.core.latency import LatencySnapshot
from pytrickle_worker.core.logutil import mask_url
from pytrickle_worker.core.responsiveness import LoopLagProbe, ThreadWakeupProbe
from pytrickle_worker.engine.inference.batching import BatchObserver
from pytrickle_worker.engine.inference.model import ModelInfo
from pytrickle_worker.engine.mpta.service import PipelineService
from pytrickle_worker.frontdoors.cms.endpoint import CmsEndpoint
from pytrickle_worker.frontdoors.live.view import LiveView
from pytrickle_worker.frontdoors.live.writer import DROP_REASONS
from pytrickle_worker.frontdoors.streamserver.manager import StreamManager, StreamState
from pytrickle_worker.frontdoors.streamserver.stats import StreamStats
from pytrickle_worker.sources.hub import CameraHub
from pytrickle_worker.transport.apidoc import Body, Reply, RouteDoc

__all__ = [
    "InferenceMetrics",
    "WorkerCollector",
    "WorkerMetrics",
    "metrics_route_doc",
    "model_labels",
]

logger = logging.getLogger(__name__)

PREFIX = "ptw"
#: session.run durations: from a GPU's ~1 ms to a slow CPU's seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 16, 32, 64)
#: Waits for a model run: none at low load, up to a run or two under overload.
QUEUE_WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Hash characters in the ``sha256`` label: enough to tell two files of one name apart.
SHA_LABEL_CHARS = 12

MODEL_LABELS = ("model", "sha256")


def model_labels(info: ModelInfo) -> tuple[str, str]:
    """``(file name, hash prefix)``: a model's labels (never its path, which may be private)."""
    return info.path.name, info.sha256[:SHA_LABEL_CHARS]


class InferenceMetrics(BatchObserver):
    """The histograms every model's ``session.run`` feeds (an ``InferenceObserver``).

    Called from the inference threads; prometheus_client metrics are thread-safe.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(
            f"{PREFIX}_inference_seconds",
            "Duration of one ONNX Runtime session.run, per model",
            MODEL_LABELS,
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_inference_batch_size",
            "Images per session.run, per model",
            MODEL_LABELS,
            registry=registry,
            buckets=BATCH_BUCKETS,
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_inference_queue_wait_seconds",
            "Wait of one image for its model run (gathering into a batch, a free run slot)",
            ("model",),
            registry=registry,
            buckets=QUEUE_WAIT_BUCKETS,
        )

    def observe_inference(self, model: ModelInfo, seconds: float, batch_size: int) -> None:
        labels = model_labels(model)
        self.latency.labels(*labels).observe(seconds)
        self.batch_size.labels(*labels).observe(batch_size)

    def observe_batch(self, model: str, size: int, queue_wait_s: list[float]) -> None:
        """A batch of the cross-stream batcher (a ``BatchObserver``): each request's wait
        from its submission to the start of its run."""
        histogram = self.queue_wait.labels(model)
        for wait in queue_wait_s:
            histogram.observe(wait)


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))


def _counter(name: str, doc: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))


def _number(value: object) -> float:
    """A snapshot value as a float (None and non-numbers count as 0)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return 0.0


@dataclass(frozen=True, slots=True)
class _StreamRow:
    """One analysed stream of either door, as the per-stream metrics show it."""

    door: str  # "cms" or "trickle"
    stream: str  # the subscriptionIdentifier, or the trickle stream's gateway_request_id
    latency: LatencySnapshot
    analysed_fps: float
    skipped_sampler: int
    skipped_overload: int


def _histogram_buckets(snapshot: LatencySnapshot) -> list[tuple[str, float]]:
    """A snapshot's cumulative buckets as HistogramMetricFamily takes them (+Inf last)."""
    buckets: list[tuple[str, float]] = [
        (repr(float(bound)), float(count))  # "0.025", "10.0": as Histogram writes le
        for bound, count in zip(snapshot.bounds, snapshot.cumulative, strict=True)
    ]
    buckets.append(("+Inf", float(snapshot.count)))
    return buckets


class WorkerCollector(Collector):
    """Reads the components' snapshots at scrape time; a component left out is skipped.

    Runs on the event loop (the scrape handler), where the components live. A section that
    fails is logged and left out, so one broken component never breaks the whole scrape.
    """

    def __init__(
        self,
        *,
        hub: CameraHub | None = None,
        cms: CmsEndpoint | None = None,
        service: PipelineService | None = None,
        streams: StreamManager | None = None,
        live: LiveView | None = None,
        wakeup: ThreadWakeupProbe | None = None,
        loop_lag: LoopLagProbe | None = None,
    ) -> None:
        self.hub = hub
        self.cms = cms
        self.service = service
        self.streams = streams
        self.live = live
        self.wakeup = wakeup
        self.loop_lag = loop_lag

    def describe(self) -> Iterable[Metric]:
        return []  # do not collect at registration (the components may not have started)

    def collect(self) -> Iterable[Metric]:
        sections: list[Callable[[], list[Metric]]] = [self._worker]
        if self.hub is not None:
            sections.append(self._sources)
        if self.cms is not None:
            sections.append(self._cms)
        if self.service is not None:
            sections += [self._models, self._scheduler, self._actions]
        if self.streams is not None:
            sections.append(self._stream)
        if self.cms is not None or self.streams is not None:
            sections.append(self._per_stream)
        if self.live is not None:
            sections.append(self._live)
        for section in sections:
            try:
                metrics = section()
            except Exception:
                logger.exception("metrics: %s failed; left out of this scrape", section.__name__)
                continue
            yield from metrics

    # ------------------------------------------------------------------ sections

    def _worker(self) -> list[Metric]:
        info = _gauge("worker_info", "The worker's version (always 1)", ["version"])
        info.add_metric([__version__], 1)
        metrics: list[Metric] = [info]
        for probe, name, doc in (
            (
                self.wakeup,
                "thread_wakeup_lateness_seconds",
                "How late a sleeping thread wakes: the wait for the GIL (and for a core on a "
                "saturated host) that every native call pays on return",
            ),
            (
                self.loop_lag,
                "event_loop_lag_seconds",
                "How late a task sleeping on the event loop resumes",
            ),
        ):
            if probe is not None:
                snapshot = probe.histogram.snapshot()
                family = HistogramMetricFamily(f"{PREFIX}_{name}", doc)
                family.add_metric([], _histogram_buckets(snapshot), snapshot.sum_s)
                metrics.append(family)
        return metrics

    def _sources(self) -> list[Metric]:
        assert self.hub is not None
        labels = ("source", "kind")
        online = _gauge("source_online", "1 while the source delivers frames", labels)
        fps_in = _gauge("source_fps_in", "Packets per second read from the source", labels)
        fps_decoded = _gauge("source_fps_decoded", "Frames per second decoded", labels)
        subscribers = _gauge("source_subscribers", "Subscriptions sharing the source", labels)
        failures = _gauge(
            "source_consecutive_failures", "Failed (re)connects since the last frame", labels
        )
        reconnects = _counter("source_reconnects", "Reconnect attempts of the reader", labels)
        packets = _counter("source_packets", "Packets read", labels)
        frames = _counter("source_frames_decoded", "Frames decoded", labels)
        corrupt = _counter("source_corrupt_packets", "Corrupt packets skipped", labels)
        delivered = _counter("source_frames_delivered", "Frames handed to subscriptions", labels)
        for status in self.hub.statuses():
            key = [mask_url(status.source), status.kind]  # already masked; masking is idempotent
            online.add_metric(key, float(status.online))
            fps_in.add_metric(key, status.fps_in)
            fps_decoded.add_metric(key, status.fps_decoded)
            subscribers.add_metric(key, status.subscribers)
            failures.add_metric(key, status.consecutive_failures)
            reconnects.add_metric(key, status.reconnects)
            packets.add_metric(key, status.packets_in)
            frames.add_metric(key, status.frames_decoded)
            corrupt.add_metric(key, status.corrupt_packets)
            delivered.add_metric(key, status.frames_delivered)
        return [
            online,
            fps_in,
            fps_decoded,
            subscribers,
            failures,
            reconnects,
            packets,
            frames,
            corrupt,
            delivered,
        ]

    def _cms(self) -> list[Metric]:
        assert self.cms is not None
        registry, subscriptions = self.cms.registry, self.cms.subscriptions
        clients = _gauge("cms_websocket_clients", "Connected CMS backends (WebSocket clients)")
        clients.add_metric([], len(registry.connections))
        active = _gauge("cms_subscriptions", "Active camera subscriptions")
        active.add_metric([], len(subscriptions))
        undelivered = _counter(
            "cms_detections_undelivered",
            "imageDetections no backend received (none connected, or dropped from a backlog)",
        )
        undelivered.add_metric([], registry.detections_undelivered)
        patches = _gauge("cms_pending_patches", "patchSession messages waiting for a backend")
        patches.add_metric([], len(registry.pending_patches))

        backend = ("peer", "connection")
        depth = _gauge("cms_outbound_queue_depth", "Messages waiting to be sent", backend)
        sent = _counter("cms_outbound_messages_sent", "Messages sent to the backend", backend)
        dropped = _counter(
            "cms_outbound_dropped",
            "Messages dropped from a full outbound queue (kind: detection or control)",
            (*backend, "kind"),
        )
        for connection in sorted(registry.connections, key=lambda c: c.serial):
            key = [connection.peer, str(connection.serial)]
            queue = connection.queue
            depth.add_metric(key, len(queue))
            sent.add_metric(key, queue.stats.sent)
            dropped.add_metric([*key, "detection"], queue.stats.detections_dropped)
            dropped.add_metric([*key, "control"], queue.stats.control_dropped)

        sub_label = ("subscription",)
        processed = _counter(
            "subscription_frames_processed", "Frames run through the pipeline", sub_label
        )
        sub_dropped = _counter(
            "subscription_frames_dropped",
            "Frames taken from the camera but not analysed (crop impossible, processing failed)",
            sub_label,
        )
        skipped = _counter(
            "subscription_frames_skipped",
            "Decoded camera frames the subscription never took (its fps sampling, and lag)",
            sub_label,
        )
        detections = _counter(
            "subscription_detections_sent", "imageDetections sent to the backends", sub_label
        )
        for sub in subscriptions.active():
            key = [sub.identifier]
            processed.add_metric(key, sub.frames_processed)
            sub_dropped.add_metric(key, sub.frames_dropped)
            skipped.add_metric(key, sub.camera.frames_skipped)
            detections.add_metric(key, sub.detections_sent)
        return [
            clients,
            active,
            undelivered,
            patches,
            depth,
            sent,
            dropped,
            processed,
            sub_dropped,
            skipped,
            detections,
        ]

    def _models(self) -> list[Metric]:
        assert self.service is not None
        providers, registry = self.service.providers, self.service.registry
        provider = _gauge(
            "execution_provider_info",
            "The execution provider the worker prefers (always 1)",
            ["provider", "preference"],
        )
        provider.add_metric([providers.primary, providers.preference], 1)
        loaded = _gauge("models_loaded", "ONNX Runtime sessions loaded")
        loaded.add_metric([], registry.loaded_count)
        loads = _counter("model_loads", "Sessions created since start")
        loads.add_metric([], registry.total_loads)
        info = _gauge(
            "model_info",
            "A loaded model and the provider its session really uses (always 1)",
            [*MODEL_LABELS, "provider", "contract", "task"],
        )
        refs = _gauge("model_refs", "Pipelines using the model", MODEL_LABELS)
        seen: set[tuple[str, str, str]] = set()
        for row in registry.stats():
            name = row["path"].replace("\\", "/").rsplit("/", 1)[-1]
            key = (name, row["sha256"][:SHA_LABEL_CHARS], row["provider"])
            if key in seen:  # one file on two provider chains: counted once
                continue
            seen.add(key)
            info.add_metric([*key, row["contract"], row["task"]], 1)
            refs.add_metric(list(key[:2]), row["refs"])
        return [provider, loaded, loads, info, refs]

    def _scheduler(self) -> list[Metric]:
        assert self.service is not None
        stats = self.service.scheduler.stats()
        workers = _gauge("inference_workers", "Inference runs at once (the thread budget's)")
        workers.add_metric([], stats["inference_workers"])
        threads = _gauge("inference_intra_op_threads", "onnxruntime intra-op threads per run")
        threads.add_metric([], stats["intra_op_threads"])
        pending = _gauge("inference_jobs_pending", "Inference jobs queued or running")
        pending.add_metric([], stats["inference_pending"])
        loads = _gauge("model_loads_pending", "Model loads and unloads queued or running")
        loads.add_metric([], stats["loads_pending"])
        max_batch = _gauge(
            "inference_max_batch", "Most images one run of a dynamic-batch model takes"
        )
        max_batch.add_metric([], stats["max_batch"])
        padded = _counter(
            "inference_padded_rows",
            "Padding rows run (fixed-batch models, and batches padded to warmed-up sizes)",
        )
        padded.add_metric([], cast("int", stats["batching"]["padded_rows"]))
        return [workers, threads, pending, loads, max_batch, padded]

    def _actions(self) -> list[Metric]:
        assert self.service is not None
        snapshot = self.service.actions.snapshot()
        submitted = _counter("redis_action_jobs_submitted", "Action jobs queued (one per event)")
        submitted.add_metric([], _number(snapshot.get("submitted")))
        completed = _counter("redis_actions_completed", "Redis actions carried out")
        completed.add_metric([], _number(snapshot.get("completed_actions")))
        failures = _counter(
            "redis_action_failures",
            "Redis actions that failed (reason: redis_error or template_error)",
            ["reason"],
        )
        failures.add_metric(["redis_error"], _number(snapshot.get("redis_errors")))
        failures.add_metric(["template_error"], _number(snapshot.get("template_errors")))
        overflow = _counter(
            "redis_action_jobs_dropped", "Jobs dropped from a full outage buffer (oldest first)"
        )
        overflow.add_metric([], _number(snapshot.get("dropped_overflow")))
        outages = _counter("redis_outages", "Times a Redis server became unreachable")
        outages.add_metric([], _number(snapshot.get("redis_outages")))
        buffered = _gauge("redis_action_buffer_jobs", "Action jobs waiting to be sent")
        buffered.add_metric([], _number(snapshot.get("pending")))
        buffered_bytes = _gauge(
            "redis_action_buffer_bytes", "Bytes of images held by waiting action jobs"
        )
        buffered_bytes.add_metric([], _number(snapshot.get("pending_bytes")))
        target_online = _gauge(
            "redis_target_online", "1 while the Redis server is reachable", ["target"]
        )
        target_pending = _gauge(
            "redis_target_buffer_jobs", "Action jobs waiting for this Redis server", ["target"]
        )
        targets: Mapping[str, Mapping[str, Any]] = snapshot.get("targets") or {}
        for target, state in targets.items():
            key = [mask_url(target)]
            target_online.add_metric(key, _number(state.get("online")))
            target_pending.add_metric(key, _number(state.get("pending")))
        return [
            submitted,
            completed,
            failures,
            overflow,
            outages,
            buffered,
            buffered_bytes,
            target_online,
            target_pending,
        ]

    def _live(self) -> list[Metric]:
        assert self.live is not None
        writer = self.live.writer
        stored = _counter("live_frames_stored", "Frames the live view stored (JPEG + detections)")
        stored.add_metric([], writer.stored)
        dropped = _counter(
            "live_frames_dropped",
            "Frames the live view did not store (reason: rate_limit, queue_full, "
            "store_unavailable, invalid, error)",
            ["reason"],
        )
        for reason in DROP_REASONS:
            dropped.add_metric([reason], writer.dropped[reason])
        outages = _counter("live_store_outages", "Times the live store became unreachable")
        outages.add_metric([], writer.outages)
        online = _gauge("live_store_online", "1 while the live store takes writes", ["store"])
        online.add_metric([self.live.store.kind], float(writer.store_online))
        queue = _gauge("live_queue_frames", "Frames waiting for the live writer")
        queue.add_metric([], writer.queue_depth)
        encode = _counter(
            "live_render_seconds",
            "Time spent scaling, drawing and JPEG-encoding stored frames (worker threads)",
        )
        encode.add_metric([], writer.encode_seconds)
        viewers = _gauge("live_push_viewers", "Open push WebSockets (/ws/labels/{label})")
        viewers.add_metric([], self.live.viewers)
        push_dropped = _counter(
            "live_push_frames_dropped", "Frames a slow push viewer lost (its queue full)"
        )
        push_dropped.add_metric([], self.live.push_dropped)
        return [stored, dropped, outages, online, queue, encode, viewers, push_dropped]

    def _stream(self) -> list[Metric]:
        assert self.streams is not None
        status = self.streams.status()
        current = self.streams.state
        state = _gauge("stream_state", "The StreamServer state: 1 for the current one", ["state"])
        for member in StreamState:
            state.add_metric([member.value], float(member is current))
        active = _gauge("stream_active", "1 while a trickle stream runs")
        active.add_metric([], _number(status.get("active_streams")))
        fps = _gauge(
            "stream_fps",
            "Trickle stream rate (direction: input, processing, output)",
            ["direction"],
        )
        fps_values: Mapping[str, Any] = status.get("fps") or {}
        for direction in ("input", "processing", "output"):
            fps.add_metric([direction], _number(fps_values.get(f"{direction}_fps")))
        stats = self.streams.session_stats()
        session = stats if isinstance(stats, StreamStats) else None
        frames = _counter(
            "stream_frames",
            "Frames of the current stream, per stage (restarts per stream)",
            ["stage"],
        )
        for stage, count in (
            ("decoded", session.frames_decoded if session else 0),
            ("processed", session.frames_processed if session else 0),
            ("encoded", session.frames_encoded if session else 0),
        ):
            frames.add_metric([stage], float(count))
        dropped = _counter(
            "stream_frames_dropped",
            "Frames of the current stream dropped, per place (restarts per stream)",
            ["where"],
        )
        for where, count in (
            ("before_processing", session.frames_dropped_before_processing if session else 0),
            ("by_processor", session.frames_dropped_by_processor if session else 0),
            ("before_encoding", session.frames_dropped_before_encoding if session else 0),
        ):
            dropped.add_metric([where], float(count))
        queues = _gauge(
            "stream_queue_depth", "Items waiting in the current stream's queues", ["queue"]
        )
        for queue, depth in (
            ("decode", session.decode_queue_depth if session else 0),
            ("encode", session.encode_queue_depth if session else 0),
            ("segment", session.segment_queue_depth if session else 0),
        ):
            queues.add_metric([queue], float(depth))
        return [state, active, fps, frames, dropped, queues]

    def _per_stream(self) -> list[Metric]:
        """Both doors' analysed streams: latency, analysed rate, frames skipped and why."""
        labels = ("door", "stream")
        latency = HistogramMetricFamily(
            f"{PREFIX}_stream_latency_seconds",
            "Capture to result latency of each analysed frame, per stream",
            labels=list(labels),
        )
        fps = _gauge("stream_analysed_fps", "Frames analysed per second, per stream", labels)
        skipped = _counter(
            "stream_frames_skipped",
            "Decoded frames never analysed, per stream (reason: sampler or overload)",
            (*labels, "reason"),
        )
        for row in self._stream_rows():
            key = [row.door, row.stream]
            latency.add_metric(key, _histogram_buckets(row.latency), row.latency.sum_s)
            fps.add_metric(key, row.analysed_fps)
            skipped.add_metric([*key, "sampler"], row.skipped_sampler)
            skipped.add_metric([*key, "overload"], row.skipped_overload)
        return [latency, fps, skipped]

    def _stream_rows(self) -> list[_StreamRow]:
        rows: list[_StreamRow] = []
        if self.cms is not None:
            for sub in self.cms.subscriptions.active():
                camera = sub.camera
                rows.append(
                    _StreamRow(
                        "cms",
                        sub.identifier,
                        sub.latency.snapshot(),
                        sub.analysed.fps,
                        camera.frames_skipped_sampler,
                        camera.frames_skipped_overload,
                    )
                )
        if self.streams is not None:
            stats, stream_id = self.streams.session_stats(), self.streams.stream_id
            if isinstance(stats, StreamStats) and stream_id is not None:
                # The decoder's rate sampler skips; frames evicted from the full queue before
                # the processor (it was behind) are the overload.
                rows.append(
                    _StreamRow(
                        "trickle",
                        stream_id,
                        stats.latency,
                        stats.processing_fps,
                        stats.frames_skipped_by_rate,
                        stats.frames_dropped_before_processing,
                    )
                )
        return rows


class WorkerMetrics:
    """The app's metrics: a registry of its own, the snapshot collector and the inference
    histograms (installed as the model registry's observer when ``service`` is given)."""

    def __init__(
        self,
        *,
        hub: CameraHub | None = None,
        cms: CmsEndpoint | None = None,
        service: PipelineService | None = None,
        streams: StreamManager | None = None,
        live: LiveView | None = None,
        wakeup: ThreadWakeupProbe | None = None,
        loop_lag: LoopLagProbe | None = None,
        process_metrics: bool = True,
    ) -> None:
        self.registry = CollectorRegistry()
        self.inference = InferenceMetrics(self.registry)
        self.collector = WorkerCollector(
            hub=hub,
            cms=cms,
            service=service,
            streams=streams,
            live=live,
            wakeup=wakeup,
            loop_lag=loop_lag,
        )
        self.registry.register(self.collector)
        if process_metrics:  # process_* (CPU, memory, fds), python_info, python_gc_*
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        if service is not None:
            service.registry.set_observer(self.inference)
            service.scheduler.batching.observer = self.inference

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    async def handle(self, request: web.Request) -> web.Response:
        """``GET /metrics``."""
        return web.Response(body=self.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def metrics_route_doc(require_token: bool) -> RouteDoc:
    """``GET /metrics`` for /openapi.json; open unless ``metrics_require_token``."""
    return RouteDoc(
        "GET",
        "/metrics",
        "Prometheus metrics (text exposition format, docs/METRICS.md)",
        tags=("metrics",),
        auth="token" if require_token else "open",
        replies=(
            Reply(
                200,
                "the metrics of this worker",
                Body(content_type=CONTENT_TYPE_LATEST, schema={"type": "string"}),
            ),
        ),
    )
