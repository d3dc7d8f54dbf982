"""Density: how many live cameras one worker analyses at the target rate, judged by the
slowest stream, against a floor measured in the same run.

    .venv/bin/python bench/density.py [--resolution 720p] [--imgsz 320] [--target-fps 5]
        [--provider cpu|cuda|tensorrt] [--hw-decode] [--model PATH] [--max-batch N]
        [--start-n 2] [--step 2] [--max-n 64] [--seconds 20] [--workers 1] [--trickle] [--json]

What runs (every part a separate process, as in production):

* the cameras: the project's demo camera (``pytrickle-worker demo camera``) loops one H.264
  clip at 30 fps as live MPEG-TS over HTTP; each subscription names it with its own query
  string, so the worker opens one connection and decodes one stream per camera;
* the worker: ``pytrickle-worker serve --no-demo``, every-frame emission, ``--target-fps``
  analysis per camera, a one-node MPTA with a YOLOv8n-sized detector (generated, dynamic
  batch axis) or ``--model``;
* a CMS backend (this process) on one WebSocket: it subscribes cameras, N at a time, and
  records every ``imageDetection`` as it arrives (never pausing its reader, so a message's
  receipt time is when it arrived): per-stream fps and capture→detection latency (the
  message's ``timestamp`` is the frame's capture time).

The ramp: N cameras, warm-up, a measuring window; add ``--step`` cameras; stop at the first
N whose slowest stream falls below the target (``SLOWEST_TOLERANCE``: a 20 s window counts
whole frames) or at ``--max-n``. The max N is the last N that held.

The floor, from the same machine in the same run: the CPU it takes to read and decode one
frame of a camera (bare PyAV on one connection to the same demo camera, before the worker
starts: the cheaper of FFmpeg's frame+slice threads and one thread, median of three 5 s
reads each; decoding the clip's file, without the socket and the MPEG-TS demuxer, is printed
beside it) and the best throughput of a bare
``session.run`` of the same model, over one single-thread session per core or one session
with every core, at batch 1 and at the worker's batch size. What the cores have left after
decoding every frame of N cameras, and after the camera process, runs inference at that
rate: ``floor fps(N) = min(N × target, spare cores × best runs per core-second)``. From it:
the floor's max N, and at every step the worker's total analysed fps / the floor's (the
figure that counts under overload), and the worker's CPU / the floor's CPU for the same
frames (the figure that counts below saturation). The floor is measured before and after
the ramp, its figures the mean of the two.

A step below the target is also judged against the floor's parts **run together** at its
N (``--rounds`` pairs): the worker's cameras stop, N bare PyAV readers of the same camera
and the best bare ``session.run`` layout run at once in this process for ``--seconds`` (with
the live view on, each reader also makes the bare JPEGs the worker would store), the
cameras start again and the worker's next window follows. The parts added up assume that a
run costs what it costs with the machine to itself; run together, decoding and inference
share caches and the scheduler, which moves a run's CPU either way (measured here: a
single-thread run is cheaper next to decoders than next to a second run). Pairing the two
halves a minute apart keeps the machine's drift out of the ratio.

Per step it also reads each worker's ``/metrics``: the mean ``session.run``, rows a run and
the share of padding, and the wake-up probes (``ptw_thread_wakeup_lateness_seconds``: the
wait for the GIL a native call pays on return, when cores are spare; the event loop's lag).

``--workers K``: K worker processes share the host (each its own GIL, all one GPU); camera
``n`` goes to worker ``n % K`` and the figures are their sums. Each sizes its thread budget
for the whole host (set ``--worker-env PTW_INFERENCE_WORKERS=...`` to share it out). One
process's Python can be the limit before the cores or the GPU are (bench/RESULTS.md, "GPU").

``--trickle``: one stream through the StreamServer door, input at 30 fps real time, every
frame analysed: its processing fps against a floor of decode + ``session.run`` + encode.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from math import ceil
from pathlib import Path
from typing import Any, cast

import aiohttp
import av
import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cms_saturation import (
    capture_latency,
    cpu_seconds,
    decode_cpu_per_frame,
    free_port,
    inferences_per_second,
    session,
    spawn_camera,
    spawn_worker,
    wait_http,
)
from bench_ingest import encode_clip
from bench_live import BareEncoder
from bench_trickle import make_segments

from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.core.errors import WorkerError
from pytrickle_worker.devtools.assets import build_mpta
from pytrickle_worker.devtools.models import build_yolov8n_like
from pytrickle_worker.devtools.trickle_server import TrickleServer
from pytrickle_worker.engine.inference.imageops import letterbox
from pytrickle_worker.media.mpegts import TS_TIME_BASE
from pytrickle_worker.media.nvdec import NvdecApi, VideoDecoder
from pytrickle_worker.media.segment_encoder import EncoderSettings, encode_segments
from pytrickle_worker.processing import VideoFrame
from pytrickle_worker.sources.frame import DecodedFrame
from pytrickle_worker.transport.trickle import TricklePublisher

CLIP_FPS = 30
#: Frames each live decode of the floor times (5 s of the camera).
LIVE_DECODE_FRAMES = 150
#: Clip frames the floor's live-view JPEG cost is the median of, after the first few.
LIVE_JPEG_FRAMES = 45
LIVE_JPEG_WARMUP = 5
#: The floor's decoder settings: (name, threads), 0 being FFmpeg's frame+slice threads.
DECODE_MODES = (("frame+slice threads", 0), ("1 thread", 1))
#: The slowest stream "holds" at this fraction of the target: a window of 20 s at 5 fps is
#: 100 frames, and where the window cuts a frame interval costs up to one frame.
SLOWEST_TOLERANCE = 0.97
RESOLUTIONS = {"720p": (1280, 720), "1080p": (1920, 1080)}
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


# ----------------------------------------------------------------------------- the floor


@dataclass
class Floor:
    cores: int
    decode_cpu_s: float  # CPU seconds to decode one clip frame
    runs_per_s: float  # the best bare session.run throughput (images/s)
    best: str  # which layout and batch gave it
    uses_cpu_for_inference: bool
    layouts: dict[str, float] = field(default_factory=dict[str, float])
    #: Each layout's (intra-op threads, sessions, batch).
    shapes: dict[str, tuple[int, int, int]] = field(default_factory=dict[str, tuple[int, int, int]])
    decode_modes: dict[str, float] = field(default_factory=dict[str, float])  # CPU s/frame
    #: The live view's frames (0 fps: the worker's live view is off): per camera this many
    #: a second, each a bare scale + JPEG costing ``live_cpu_s``.
    live_fps: float = 0.0
    live_cpu_s: float = 0.0
    #: With ``--hw-decode``, the floor decodes as the worker's readers do: NVDEC through
    #: this API (its CPU cost; NVDEC's own throughput is not modelled: bench_gpu.py).
    nvdec_api: NvdecApi | None = None

    def live_cores(self, cameras: int, analysed_per_camera: float) -> float:
        """The cores the floor spends on N cameras' live-view JPEGs (a camera stores at most
        one a frame it analyses)."""
        return cameras * min(self.live_fps, analysed_per_camera) * self.live_cpu_s

    def fps(self, cameras: int, target: float, camera_cores: float) -> float:
        """The most analysed fps N cameras can give on this machine."""
        wanted = cameras * target
        decode = cameras * CLIP_FPS * self.decode_cpu_s
        # The live view's cost at the target rate: where N cameras get less than their
        # target, a camera under 2 analysed fps stores fewer, and the floor counts more
        # than it would spend there (in the worker's disfavour).
        other = decode + camera_cores + self.live_cores(cameras, target)
        spare = max(0.0, self.cores - other)
        if self.uses_cpu_for_inference:
            return min(wanted, spare * self.runs_per_s / self.cores)
        # A GPU runs inference; the cores must still decode every frame.
        decodable = 1.0 if other <= self.cores else spare / max(decode, 1e-9)
        return min(wanted * decodable, self.runs_per_s)

    def cpu_cores(self, cameras: int, analysed_fps: float) -> float:
        """The cores the floor spends on N cameras' decoding, their live-view JPEGs and
        ``analysed_fps`` runs."""
        decode = cameras * CLIP_FPS * self.decode_cpu_s
        decode += self.live_cores(cameras, analysed_fps / max(cameras, 1))
        if not self.uses_cpu_for_inference:
            return decode
        return decode + analysed_fps * self.cores / self.runs_per_s

    def averaged(self, other: Floor) -> Floor:
        """The mean of two measurements of the floor (before and after the ramp)."""

        def mean(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
            return {k: (v + b.get(k, v)) / 2 for k, v in a.items()}

        layouts = mean(self.layouts, other.layouts)
        best = max(layouts, key=lambda k: layouts[k])
        return Floor(
            self.cores,
            (self.decode_cpu_s + other.decode_cpu_s) / 2,
            layouts[best],
            best,
            self.uses_cpu_for_inference,
            layouts,
            self.shapes,
            mean(self.decode_modes, other.decode_modes),
            self.live_fps,
            (self.live_cpu_s + other.live_cpu_s) / 2,
            self.nvdec_api,
        )

    @property
    def decode_threads(self) -> int:
        """The cheaper live decoder setting's thread count (0: FFmpeg's choice)."""
        cheaper = min(
            (mode for mode in DECODE_MODES if f"live {mode[0]}" in self.decode_modes),
            key=lambda mode: self.decode_modes[f"live {mode[0]}"],
        )
        return cheaper[1]

    def max_n(self, target: float, camera_cores_per_camera: float) -> int:
        n = 0
        while n < 10_000:
            nxt = n + 1
            if self.fps(nxt, target, nxt * camera_cores_per_camera) < nxt * target * 0.999:
                break
            n = nxt
        return n


def throughput(
    model: Path, provider: str, tensor: np.ndarray, threads: int, parallel: int
) -> float:
    """Images per second of ``parallel`` sessions of ``threads`` threads each, at once."""
    return inferences_per_second(model, tensor, threads, parallel, PROVIDERS[provider])


def live_decode_cpu_per_frame(
    url: str, threads: int, nvdec_api: NvdecApi | None, frames: int = LIVE_DECODE_FRAMES
) -> float:
    """CPU seconds per frame for bare PyAV to read ``url`` (the demo camera's live MPEG-TS over
    HTTP, as a worker's reader gets it) and decode it (``decoded_frames``). The first second
    is skipped (connection, probing, the decoder's start)."""
    with av.open(url, timeout=30) as container:
        started, count = 0.0, 0
        for count, _ in enumerate(decoded_frames(container, threads, nvdec_api), 1):
            if count == CLIP_FPS:
                started = time.process_time()
            elif count == CLIP_FPS + frames:
                break
        else:
            raise SystemExit(f"the camera at {url} ended after {count} frames")
    return (time.process_time() - started) / frames


def decoded_frames(
    container: av.container.InputContainer, threads: int, nvdec_api: NvdecApi | None
) -> Iterator[av.VideoFrame]:
    """The container's video frames, in software (FFmpeg's frame+slice threads for
    ``threads`` 0, else that many) or, with ``nvdec_api``, through NVDEC as the worker's
    readers decode (``VideoDecoder``, software when NVDEC is not usable)."""
    stream = video_stream(container, threads)
    if nvdec_api is None:
        yield from container.decode(stream)
        return
    decoder = VideoDecoder(stream, try_nvdec=True, threads=threads, api=nvdec_api)
    for packet in container.demux(stream):
        if packet.size:
            yield from decoder.decode(packet)


def video_stream(container: av.container.InputContainer, threads: int) -> av.VideoStream:
    """The container's video stream, decoded with FFmpeg's frame+slice threads
    (``threads`` 0) or that many threads."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    if threads:
        stream.codec_context.thread_count = threads
    return stream


def live_jpeg_cpu_per_frame(clip: Path, max_width: int, quality: int) -> float:
    """CPU seconds of a bare scale + JPEG (bench_live's floor: one swscale pass into the
    encoder's format, FFmpeg's mjpeg with the worker's settings) of one decoded clip frame,
    as a camera's reader hands it over: the median over ``LIVE_JPEG_FRAMES`` frames."""
    encoder = BareEncoder(max_width, quality)
    costs: list[float] = []
    with av.open(str(clip)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index >= LIVE_JPEG_FRAMES:
                break
            started = time.thread_time()
            encoder.encode(DecodedFrame(index, time.time(), None, frame))
            costs.append(time.thread_time() - started)
    return statistics.median(costs[LIVE_JPEG_WARMUP:])


def input_tensor(clip: Path, imgsz: int) -> np.ndarray:
    """The model's batch-1 input made from the clip's first frame."""
    with av.open(str(clip)) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    return letterbox(frame, (imgsz, imgsz))[0].copy()


@dataclass
class Together:
    """The floor's parts run at once: N bare live decoders and bare ``session.run`` loops."""

    runs_per_s: float  # images/s the sessions completed while the cameras were decoded
    decoded_fps_min: float  # the slowest camera's decoded frames/s (30: it kept up)
    run_cpu_ms: float  # the sessions' CPU per image (their threads' clocks)
    #: The rest of the process's CPU per decoded frame: decoding (on FFmpeg's threads
    #: too), the readers' JPEGs and Python.
    decode_cpu_ms: float


def together_floor(
    camera_url: str,
    model: Path,
    provider: str,
    tensor: np.ndarray,
    floor: Floor,
    cameras: int,
    analysed_per_camera: float,
    live: WorkerConfig,
    seconds: float,
    warmup: float = 5.0,
) -> Together:
    """Runs ``cameras`` bare PyAV readers of the demo camera (the floor's cheaper decoder
    setting; with the live view on, each also makes a bare JPEG at the rate the worker
    stores) next to the floor's best ``session.run`` layout looping back to back, all in
    this process, and measures the runs the sessions complete in ``seconds``.

    This is what bare PyAV and bare ONNX Runtime achieve together on this machine, so the
    cost of sharing it (caches, memory bandwidth, the scheduler's slices) is in it; the
    parts measured one at a time leave that out (``Floor.fps``)."""
    threads, parallel, batch = floor.shapes[floor.best]
    batch_tensor = np.repeat(tensor, batch, axis=0)
    sessions = [session(model, threads, PROVIDERS[provider]) for _ in range(parallel)]
    name = sessions[0].get_inputs()[0].name
    for s in sessions:
        s.run(None, {name: batch_tensor})
    stop = threading.Event()
    started = threading.Barrier(cameras + 1)
    decoded = [0] * cameras
    measuring = threading.Event()
    completions: list[float] = []
    run_cpu: list[float] = []
    errors: list[BaseException] = []
    live_rate = min(live.live_fps, analysed_per_camera) if live.live_enabled else 0.0
    jpeg_every = max(1, round(CLIP_FPS / live_rate)) if live_rate else 0

    def read(index: int) -> None:
        encoder = BareEncoder(live.live_max_width, live.live_jpeg_quality) if jpeg_every else None
        try:
            with av.open(camera_url, timeout=30) as container:
                frames = decoded_frames(container, floor.decode_threads, floor.nvdec_api)
                for count, frame in enumerate(frames):
                    if count == 0:
                        started.wait()
                    if stop.is_set():
                        return
                    if measuring.is_set():
                        decoded[index] += 1
                    if encoder is not None and count % jpeg_every == 0:
                        encoder.encode(DecodedFrame(count, time.time(), None, frame))
        except Exception as exc:  # reported by the caller
            errors.append(exc)
            stop.set()
            with contextlib.suppress(threading.BrokenBarrierError):
                started.abort()

    def infer(s: Any) -> None:
        while not stop.is_set():
            clock = time.thread_time()
            s.run(None, {name: batch_tensor})
            completions.append(time.monotonic())
            if measuring.is_set():
                run_cpu.append(time.thread_time() - clock)

    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(cameras)]
    for thread in readers:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        started.wait(timeout=60)
    if errors or started.broken:
        stop.set()
        reason = repr(errors[0]) if errors else "no first frame within 60 s"
        raise SystemExit(f"the together floor's camera read failed: {reason}")
    runners = [threading.Thread(target=infer, args=(s,), daemon=True) for s in sessions]
    for thread in runners:
        thread.start()
    time.sleep(warmup)
    measuring.set()
    begin, cpu_begin = time.monotonic(), time.process_time()
    time.sleep(seconds)
    end, cpu_end = time.monotonic(), time.process_time()
    measuring.clear()
    stop.set()
    for thread in [*runners, *readers]:
        thread.join(60)
    if errors:
        raise SystemExit(f"the together floor's camera read failed: {errors[0]!r}")
    runs = sum(1 for t in completions if begin <= t < end)
    return Together(
        runs * batch / (end - begin),
        min(decoded) / (end - begin),
        1000 * statistics.median(run_cpu) / batch if run_cpu else float("nan"),
        1000 * (cpu_end - cpu_begin - sum(run_cpu)) / max(1, sum(decoded)),
    )


def measure_floor(
    clip: Path,
    camera_url: str,
    model: Path,
    args: argparse.Namespace,
    cores: int,
    live: WorkerConfig,
) -> Floor:
    # The best bare decode, as for session.run: FFmpeg's threads or one thread per camera
    # (the worker's choice from as many cameras as cores), each the median of
    # --floor-repeats. Of the camera's live stream, as the worker receives it: reading the
    # socket and demuxing MPEG-TS are part of decoding a camera (10-30% more than decoding
    # the clip's file).
    # The file's figures are printed beside them.
    nvdec_api = live.nvdec_api if args.hw_decode else None
    decode_modes = {
        f"live {mode}": statistics.median(
            live_decode_cpu_per_frame(camera_url, threads, nvdec_api)
            for _ in range(args.floor_repeats)
        )
        for mode, threads in DECODE_MODES
    }
    decode_cpu = min(decode_modes.values())
    decode_modes.update(
        (
            f"file {mode}",
            statistics.median(
                decode_cpu_per_frame(clip, threads) for _ in range(args.floor_repeats)
            ),
        )
        for mode, threads in DECODE_MODES
    )
    one = input_tensor(clip, args.imgsz)
    batches = sorted({1, args.max_batch or (16 if args.provider != "cpu" else 4)})
    shapes: dict[str, tuple[int, int, int]] = {}
    for batch in batches:
        if args.provider == "cpu":
            shapes[f"{cores}x1 thread, batch {batch}"] = (1, cores, batch)
            shapes[f"1x{cores} threads, batch {batch}"] = (cores, 1, batch)
        else:
            shapes[f"1 session, batch {batch}"] = (1, 1, batch)
            shapes[f"2 sessions, batch {batch}"] = (1, 2, batch)
    layouts = {
        name: throughput(model, args.provider, np.repeat(one, batch, axis=0), threads, parallel)
        for name, (threads, parallel, batch) in shapes.items()
    }
    best = max(layouts, key=lambda k: layouts[k])
    floor = Floor(
        cores,
        decode_cpu,
        layouts[best],
        best,
        args.provider == "cpu",
        layouts,
        shapes,
        decode_modes,
        nvdec_api=nvdec_api,
    )
    if live.live_enabled:
        # The worker's live view stores this many frames a second per camera: the same work
        # done bare belongs to the floor (bench_live.py prices the worker's against it).
        floor.live_fps = live.live_fps
        floor.live_cpu_s = live_jpeg_cpu_per_frame(
            clip, live.live_max_width, live.live_jpeg_quality
        )
    return floor


# ----------------------------------------------------------------------------- the worker


@dataclass
class Detection:
    camera: int
    received: float  # time.monotonic()
    latency_s: float


@dataclass
class Step:
    cameras: int
    fps_min: float
    fps_median: float
    fps_total: float
    latency_p50_ms: float
    latency_p95_ms: float
    worker_cores: float
    camera_cores: float
    holds: bool
    #: The worker's mean session.run (from /metrics) vs the floor's, both per image.
    run_ms: float = 0.0
    #: Rows per run (padding included) and the share of them that was padding.
    rows_per_run: float = 0.0
    padded_share: float = 0.0
    #: The worker's wake-up probes over the window: a sleeping thread's lateness (the GIL
    #: wait a native call pays on return, with spare cores) and the event loop's lag; mean
    #: and the upper bound of the bucket holding the 95th percentile.
    wakeup_mean_ms: float = 0.0
    wakeup_p95_ms: float = 0.0
    loop_lag_mean_ms: float = 0.0
    loop_lag_p95_ms: float = 0.0
    gpu: dict[str, float] | None = None
    # Against the floor (``scored``).
    floor_fps: float = 0.0
    floor_cores: float = 0.0
    worker_over_floor_fps: float = 0.0
    worker_over_floor_cpu: float = 0.0
    floor_run_ms: float = 0.0
    # The overload step against the floor's parts run together at its N
    # (``together_floor``), in rounds that alternate with the worker's windows.
    together_rounds: list[dict[str, float]] = field(default_factory=list[dict[str, float]])
    together_fps: float = 0.0  # the rounds' median
    worker_over_together_fps: float = 0.0  # the median of the rounds' ratios


def with_together(step: Step, rounds: list[dict[str, float]]) -> Step:
    """``step`` with its paired rounds against the floor's parts run together."""
    return replace(
        step,
        together_rounds=rounds,
        together_fps=statistics.median(r["together_fps"] for r in rounds),
        worker_over_together_fps=statistics.median(
            r["worker_fps"] / r["together_fps"] for r in rounds
        ),
    )


def scored(step: Step, floor: Floor, target: float) -> Step:
    """``step`` with its floor figures from ``floor``."""
    n, total = step.cameras, step.fps_total
    floor_fps = floor.fps(n, target, step.camera_cores)
    floor_cores = floor.cpu_cores(n, total)
    return replace(
        step,
        floor_fps=floor_fps,
        floor_cores=floor_cores,
        worker_over_floor_fps=total / floor_fps if floor_fps else float("nan"),
        worker_over_floor_cpu=step.worker_cores / floor_cores if floor_cores else 0.0,
        floor_run_ms=1000 * floor.cores / floor.runs_per_s,
    )


def subscription_id(camera: int) -> str:
    return f"density-{camera};cam-{camera}"


def camera_of(identifier: str) -> int:
    return int(identifier.split(";", 1)[0].removeprefix("density-"))


class Backend:
    """One CMS WebSocket to one worker; records every imageDetection as it arrives."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.detections: list[Detection] = []
        self.errors: list[dict[str, Any]] = []
        self.ids: set[str] = set()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                return
            data = json.loads(message.data)
            kind = data.get("type")
            if kind == "imageDetection":
                identifier = data["subscriptionIdentifier"]
                if identifier not in self.ids:
                    continue  # sent before its unsubscribe arrived
                latency = capture_latency(data, time.time())
                self.detections.append(Detection(camera_of(identifier), time.monotonic(), latency))
            elif kind == "error":
                self.errors.append(data)

    async def subscribe(self, camera_port: int, mpta: Path, camera: int) -> None:
        identifier = subscription_id(camera)
        self.ids.add(identifier)
        payload = {
            "subscriptionIdentifier": identifier,
            "rtspUrl": f"http://127.0.0.1:{camera_port}/stream.ts?camera={camera}",
            "modelUrl": str(mpta),
            "modelId": 1,
            "modelName": "density",
        }
        await self.ws.send_json({"type": "subscribe", "payload": payload})

    async def unsubscribe_all(self) -> None:
        for identifier in sorted(self.ids):
            payload = {"subscriptionIdentifier": identifier}
            await self.ws.send_json({"type": "unsubscribe", "payload": payload})
        self.ids.clear()


class Fleet:
    """The CMS backend of ``--workers`` worker processes: camera ``n`` goes to worker
    ``n % workers``, and the detections of all of them count together."""

    def __init__(self, backends: list[Backend]) -> None:
        self.backends = backends
        self.cameras = 0

    @property
    def detections(self) -> list[Detection]:
        return [d for backend in self.backends for d in backend.detections]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [e for backend in self.backends for e in backend.errors]

    async def subscribe(self, camera_port: int, mpta: Path, count: int) -> None:
        while self.cameras < count:
            backend = self.backends[self.cameras % len(self.backends)]
            await backend.subscribe(camera_port, mpta, self.cameras)
            self.cameras += 1

    async def unsubscribe_all(self) -> None:
        for backend in self.backends:
            await backend.unsubscribe_all()
        self.cameras = 0

    async def wait_quiet(self, within: float = 30.0) -> None:
        """Until no detection has arrived for a second (every camera stopped)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            latest = (b.detections[-1].received for b in self.backends if b.detections)
            last = max(latest, default=0.0)
            if time.monotonic() - last > 1.0:
                return
            await asyncio.sleep(0.2)
        raise SystemExit("the worker kept sending detections after every unsubscribe")

    async def wait_idle(self, processes: Sequence[psutil.Process], within: float = 60.0) -> None:
        """Until each worker uses under a tenth of a core over a second (their cameras
        closed, nothing left from them), so that a floor measured next finds the machine
        to itself."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            before = sum(cpu_seconds(p) for p in processes)
            await asyncio.sleep(1.0)
            if sum(cpu_seconds(p) for p in processes) - before < 0.1 * len(processes):
                return
        raise SystemExit("the worker stayed busy after every camera was unsubscribed")

    async def wait_all_running(self, count: int, within: float = 180.0, since: float = 0.0) -> None:
        deadline = time.monotonic() + within
        while (
            len({d.camera for d in self.detections if d.camera < count and d.received > since})
            < count
        ):
            if self.errors:
                raise SystemExit(f"worker error: {self.errors[0]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"not every one of {count} cameras produced a detection")
            await asyncio.sleep(0.2)

    def window(self, start: float, end: float, count: int) -> tuple[list[float], list[float]]:
        counts = [0] * count
        latencies: list[float] = []
        for d in self.detections:
            if start <= d.received < end and d.camera < count:
                counts[d.camera] += 1
                latencies.append(d.latency_s)
        return [c / (end - start) for c in counts], latencies


@dataclass
class ProbeReading:
    """A wake-up probe's histogram: sum (s), count, and cumulative counts by upper bound."""

    sum_s: float = 0.0
    count: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict[float, float])


@dataclass
class WorkerReading:
    """Cumulative figures of the worker's ``/metrics`` at one moment (every model summed)."""

    run_s: float = 0.0
    runs: float = 0.0
    rows: float = 0.0  # ptw_inference_batch_size's sum: rows run, padding included
    padded_rows: float = 0.0
    wakeup: ProbeReading = field(default_factory=ProbeReading)
    loop_lag: ProbeReading = field(default_factory=ProbeReading)


async def read_workers(http: aiohttp.ClientSession, ports: Sequence[int]) -> WorkerReading:
    """Every worker's figures summed (the probes' histograms pooled)."""
    reading = WorkerReading()
    for port in ports:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            add_reading(reading, await response.text())
    return reading


def add_reading(reading: WorkerReading, text: str) -> None:
    probes = {
        "ptw_thread_wakeup_lateness_seconds": reading.wakeup,
        "ptw_event_loop_lag_seconds": reading.loop_lag,
    }
    for family in text_string_to_metric_families(text):
        probe = probes.get(family.name)
        for sample in family.samples:
            name, value = sample.name, float(sample.value)
            if name == "ptw_inference_seconds_sum":
                reading.run_s += value
            elif name == "ptw_inference_seconds_count":
                reading.runs += value
            elif name == "ptw_inference_batch_size_sum":
                reading.rows += value
            elif name == "ptw_inference_padded_rows_total":
                reading.padded_rows += value
            elif probe is not None and name.endswith("_sum"):
                probe.sum_s += value
            elif probe is not None and name.endswith("_count"):
                probe.count += value
            elif probe is not None and name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                probe.buckets[bound] = probe.buckets.get(bound, 0.0) + value


def lateness_ms(before: ProbeReading, after: ProbeReading) -> tuple[float, float]:
    """A probe's mean over a window and the upper bound of the bucket holding its 95th
    percentile (ms; nan without samples)."""
    count = after.count - before.count
    if count <= 0:
        return float("nan"), float("nan")
    mean = (after.sum_s - before.sum_s) / count * 1000
    for bound in sorted(after.buckets):
        if after.buckets[bound] - before.buckets.get(bound, 0.0) >= 0.95 * count:
            return mean, bound * 1000
    return mean, float("inf")


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in cast("dict[str, Any]", value).items()}
    if isinstance(value, list):
        return [finite(v) for v in cast("list[Any]", value)]
    return value


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def gpu_sample() -> dict[str, float] | None:
    try:
        import pynvml  # noqa: PLC0415 - only where there is a GPU
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        util = pynvml.nvmlDeviceGetUtilizationRates(handle)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return {"gpu_util_pct": float(util.gpu), "gpu_mem_mib": memory.used / 2**20}
    except pynvml.NVMLError:
        return None


@dataclass
class Workers:
    """The worker processes under test (``--workers``), their ports and the camera's process."""

    ports: list[int]
    processes: list[psutil.Process]
    camera: psutil.Process


async def ramp(
    args: argparse.Namespace,
    floor: Floor,
    mpta: Path,
    camera: subprocess.Popen[bytes],
    camera_port: int,
    env: dict[str, str],
    tmp: Path,
    together: Callable[[int, float], Together],
) -> list[Step]:
    ports = [free_port() for _ in range(args.workers)]
    logs = args.log_dir or tmp
    spawned: list[subprocess.Popen[bytes]] = []
    steps: list[Step] = []
    try:
        for i, port in enumerate(ports):
            # Each worker its own cache (archive extraction is per process). Each sizes its
            # thread budget for the whole host: K workers run K times the threads.
            spawned.append(
                spawn_worker(
                    port,
                    env if i == 0 else {**env, "PTW_CACHE_DIR": str(tmp / f"cache-{i}")},
                    logs / ("worker.log" if i == 0 else f"worker-{i}.log"),
                )
            )
        for port in ports:
            await wait_http(f"http://127.0.0.1:{port}/health/live")
        workers = Workers(
            ports, [psutil.Process(w.pid) for w in spawned], psutil.Process(camera.pid)
        )
        async with contextlib.AsyncExitStack() as stack:
            http = await stack.enter_async_context(aiohttp.ClientSession())
            sockets = [
                await stack.enter_async_context(
                    http.ws_connect(f"ws://127.0.0.1:{port}/", max_msg_size=0)
                )
                for port in ports
            ]
            fleet = Fleet([Backend(ws) for ws in sockets])
            window = partial(measure_window, args, fleet, http, workers)
            n = args.start_n
            overload_n: int | None = None
            while n <= args.max_n:
                subscribed = time.monotonic()
                await fleet.subscribe(camera_port, mpta, n)
                await fleet.wait_all_running(n, since=subscribed)
                step = scored(await window(n), floor, args.target_fps)
                if not step.holds and args.rounds:
                    rounds = partial(paired_rounds, args, fleet, camera_port, mpta)
                    step = await rounds(step, window, together, workers.processes)
                steps.append(step)
                print(progress(step, args), file=sys.stderr if args.json else sys.stdout)
                if n == overload_n:
                    break
                if not step.holds or n + args.step > args.max_n:
                    # One step well past what the floor can serve: the overload figure.
                    per_camera = step.camera_cores / n
                    overload_n = ceil(floor.max_n(args.target_fps, per_camera) * args.overload)
                    if overload_n <= n:
                        break
                    n = overload_n
                    continue
                n += args.step
    finally:
        for worker in spawned:
            worker.terminate()
        for worker in spawned:
            with contextlib.suppress(Exception):
                worker.wait(30)
    return steps


async def measure_window(
    args: argparse.Namespace,
    fleet: Fleet,
    http: aiohttp.ClientSession,
    workers: Workers,
    n: int,
) -> Step:
    """The workers' figures over one window of ``args.seconds`` with ``n`` cameras running."""

    def worker_cpu() -> float:
        return sum(cpu_seconds(p) for p in workers.processes)

    await asyncio.sleep(args.warmup)
    first = await read_workers(http, workers.ports)
    before = (worker_cpu(), cpu_seconds(workers.camera), time.monotonic())
    await asyncio.sleep(args.seconds)
    end = time.monotonic()
    last = await read_workers(http, workers.ports)
    runs = last.runs - first.runs
    rows = last.rows - first.rows
    wakeup = lateness_ms(first.wakeup, last.wakeup)
    loop_lag = lateness_ms(first.loop_lag, last.loop_lag)
    fps, latencies = fleet.window(before[2], end, n)
    return Step(
        cameras=n,
        fps_min=min(fps),
        fps_median=statistics.median(fps),
        fps_total=sum(fps),
        latency_p50_ms=percentile(latencies, 0.5) * 1000,
        latency_p95_ms=percentile(latencies, 0.95) * 1000,
        worker_cores=(worker_cpu() - before[0]) / (end - before[2]),
        camera_cores=(cpu_seconds(workers.camera) - before[1]) / (end - before[2]),
        holds=min(fps) >= args.target_fps * SLOWEST_TOLERANCE,
        run_ms=(last.run_s - first.run_s) / runs * 1000 if runs else 0.0,
        rows_per_run=rows / runs if runs else 0.0,
        padded_share=(last.padded_rows - first.padded_rows) / rows if rows else 0.0,
        wakeup_mean_ms=wakeup[0],
        wakeup_p95_ms=wakeup[1],
        loop_lag_mean_ms=loop_lag[0],
        loop_lag_p95_ms=loop_lag[1],
        gpu=gpu_sample(),
    )


async def paired_rounds(
    args: argparse.Namespace,
    fleet: Fleet,
    camera_port: int,
    mpta: Path,
    step: Step,
    window: Callable[[int], Awaitable[Step]],
    together: Callable[[int, float], Together],
    workers: Sequence[psutil.Process],
) -> Step:
    """A step past the max N against the floor's parts run together at its N, in
    ``args.rounds`` pairs: the worker's cameras stop, the bare parts run, the cameras start
    again and the worker's next window follows. Each pair's two halves are a minute apart
    at most, so the machine's drift (its speed moved 10-20% between runs here) falls on
    both sides of each ratio alike."""
    n = step.cameras
    rounds: list[dict[str, float]] = []
    worker_fps = step.fps_total
    for index in range(args.rounds):
        await fleet.unsubscribe_all()
        await fleet.wait_quiet()
        await fleet.wait_idle(workers)
        bare = await asyncio.to_thread(together, n, step.fps_median)
        fps = min(n * args.target_fps, bare.runs_per_s)
        rounds.append(
            {
                "worker_fps": worker_fps,
                "together_fps": fps,
                "together_run_cpu_ms": bare.run_cpu_ms,
                "together_decode_cpu_ms": bare.decode_cpu_ms,
                "together_decoded_fps_min": bare.decoded_fps_min,
            }
        )
        print(
            f"  N={n} round {index + 1}: worker {worker_fps:.1f} fps, the floor's parts run "
            f"together {fps:.1f} (run {bare.run_cpu_ms:.1f} ms CPU, decode "
            f"{bare.decode_cpu_ms:.2f} ms CPU a frame, slowest camera "
            f"{bare.decoded_fps_min:.1f} fps) -> x{worker_fps / fps:.3f}",
            file=sys.stderr if args.json else sys.stdout,
        )
        if index + 1 < args.rounds:
            resumed = time.monotonic()
            await fleet.subscribe(camera_port, mpta, n)
            await fleet.wait_all_running(n, since=resumed)
            worker_fps = (await window(n)).fps_total
    return with_together(step, rounds)


def progress(step: Step, args: argparse.Namespace) -> str:
    gpu = ""
    if step.gpu:
        gpu = f", GPU {step.gpu['gpu_util_pct']:.0f}% {step.gpu['gpu_mem_mib']:.0f} MiB"
    return (
        f"N={step.cameras:3d}: per-stream fps min {step.fps_min:.2f} median "
        f"{step.fps_median:.2f} ({'holds' if step.holds else 'below'} {args.target_fps:g}); "
        f"total {step.fps_total:.1f} vs floor {step.floor_fps:.1f} "
        f"(x{step.worker_over_floor_fps:.3f}); capture->detection p50 "
        f"{step.latency_p50_ms:.0f} ms p95 {step.latency_p95_ms:.0f} ms; worker "
        f"{step.worker_cores:.2f} cores vs floor {step.floor_cores:.2f} "
        f"(x{step.worker_over_floor_cpu:.2f}); camera {step.camera_cores:.2f} cores; "
        f"session.run {step.run_ms:.1f} ms vs floor {step.floor_run_ms:.1f}, "
        f"{step.rows_per_run:.1f} rows a run ({step.padded_share:.0%} padding); thread "
        f"wake-up late {step.wakeup_mean_ms:.1f} ms (p95 <= {step.wakeup_p95_ms:g}), loop lag "
        f"{step.loop_lag_mean_ms:.1f} ms (p95 <= {step.loop_lag_p95_ms:g}){gpu}"
    )


# ----------------------------------------------------------------------------- trickle door


async def trickle_door(
    args: argparse.Namespace, floor: Floor, mpta: Path, env: dict[str, str], tmp: Path
) -> dict[str, float]:
    """One stream, 30 fps real-time input, every frame analysed: processing fps vs floor."""
    width, height = resolution(args.resolution)
    segments = make_segments(width, height, seconds=20)
    encode_cpu = encode_cpu_per_frame(width, height)
    server = TrickleServer()
    port = await server.start("127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}/density"
    for name in ("density", "density-out"):
        server.create_channel(name, "video/MP2T")
    worker_port = free_port()
    worker = spawn_worker(worker_port, env, (args.log_dir or tmp) / "worker-trickle.log")
    try:
        await wait_http(f"http://127.0.0.1:{worker_port}/health/live")
        start = {
            "gateway_request_id": "density",
            "subscribe_url": base,
            "publish_url": base + "-out",
            "params": {"model_url": str(mpta)},
        }
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"http://127.0.0.1:{worker_port}/api/stream/start", json=start
            ) as response:
                if response.status != 200:
                    raise SystemExit(f"stream start: {response.status} {await response.text()}")
            worker_ps = psutil.Process(worker.pid)
            publisher = TricklePublisher(base, "video/mp2t")
            began = time.monotonic()
            samples: list[float] = []
            cpu_before = cpu_seconds(worker_ps)
            for index, segment in enumerate(segments * 2):
                await publisher.publish(segment)
                due = began + (index + 1) * 2.0  # 2 s segments in real time
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if index >= 2:  # past the start
                    async with http.get(
                        f"http://127.0.0.1:{worker_port}/api/stream/status"
                    ) as response:
                        status = await response.json()
                    samples.append(float(status["fps"]["processing_fps"]))
            worker_cores = (cpu_seconds(worker_ps) - cpu_before) / (time.monotonic() - began)
            await publisher.close()
    finally:
        worker.terminate()
        with contextlib.suppress(Exception):
            worker.wait(30)
        await server.stop()
    # Its live view stores live_fps of the 30 analysed frames a second.
    live = floor.live_cpu_s * min(floor.live_fps, CLIP_FPS) / CLIP_FPS
    per_frame = floor.decode_cpu_s + encode_cpu + live + (floor.cores / floor.runs_per_s)
    floor_fps = min(float(CLIP_FPS), floor.cores / per_frame)
    fps = statistics.median(samples)
    return {
        "trickle_fps": fps,
        "trickle_floor_fps": floor_fps,
        "trickle_over_floor": fps / floor_fps,
        "trickle_worker_cores": worker_cores,
        "encode_cpu_ms": encode_cpu * 1000,
    }


def encode_cpu_per_frame(width: int, height: int) -> float:
    rgb = np.zeros((height, width, 3), np.uint8)
    frames = [VideoFrame(rgb, i * 3000, TS_TIME_BASE) for i in range(60)]
    started = time.process_time()
    encode_segments(frames, EncoderSettings())
    return (time.process_time() - started) / len(frames)


# ----------------------------------------------------------------------------- main


def resolution(text: str) -> tuple[int, int]:
    if text in RESOLUTIONS:
        return RESOLUTIONS[text]
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu")
    parser.add_argument("--hw-decode", action="store_true", help="NVDEC (PTW_HW_DECODE=nvdec)")
    parser.add_argument("--model", type=Path, help="an ONNX detector (default: generated)")
    parser.add_argument("--imgsz", type=int, default=320, help="the generated model's size")
    parser.add_argument("--resolution", default="720p", help="720p, 1080p or WxH")
    parser.add_argument("--target-fps", type=float, default=5.0)
    parser.add_argument("--max-batch", type=int, default=0, help="PTW_MAX_BATCH (0: default)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the host (and its GPU); camera n goes to worker n %% K",
    )
    parser.add_argument("--start-n", type=int, default=2)
    parser.add_argument("--step", type=int, default=2)
    parser.add_argument("--max-n", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring window per N")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument(
        "--overload",
        type=float,
        default=1.5,
        help="after the ramp, one step at this many times the floor's max N",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="steps below the target: pairs of (worker window, the floor's parts run together)",
    )
    parser.add_argument("--trickle", action="store_true", help="also measure the stream door")
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="PTW_X=VALUE",
        help="a setting for the worker (repeatable); the bench's own PTW_* settings win",
    )
    parser.add_argument(
        "--floor-repeats",
        type=int,
        default=3,
        help="each floor decode figure is the median of this many measurements",
    )
    parser.add_argument("--log-dir", type=Path, help="keep the worker's and the camera's logs here")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


async def main() -> None:
    args = parse_args()
    width, height = resolution(args.resolution)
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        clip = tmp / "clip.mp4"
        encode_clip(clip, width, height, seconds=20)
        model = args.model or tmp / "detector.onnx"
        if args.model is None:
            build_yolov8n_like(model, imgsz=args.imgsz, batch=None)
        pipeline: dict[str, Any] = {
            "pipeline": {
                "modelId": "density-detector",
                "modelFile": "detector.onnx",
                "minConfidence": 0.25,
                "triggerClasses": [],
                "actions": [],
                "branches": [],
            }
        }
        mpta = build_mpta(tmp / "density.mpta", pipeline, {"detector.onnx": model})
        env = {k: v for k, v in os.environ.items() if not k.startswith("PTW_")}
        for setting in args.worker_env:
            key, _, value = setting.partition("=")
            if not key.startswith("PTW_") or not _:
                raise SystemExit(f"--worker-env wants PTW_NAME=VALUE, got {setting!r}")
            env[key] = value
        env.update(
            PTW_EXECUTION_PROVIDER=args.provider,
            PTW_TARGET_FPS=str(args.target_fps),
            PTW_POLL_INTERVAL_MS="0",
            PTW_EMISSION="every_frame",
            PTW_MAX_STREAMS=str(max(16, args.max_n)),
            PTW_HW_DECODE="nvdec" if args.hw_decode else "off",
            PTW_MAX_BATCH=str(args.max_batch),
            PTW_ALLOW_LOCAL_MODELS="true",
            PTW_CACHE_DIR=str(tmp / "cache"),
            PYTHONUNBUFFERED="1",
        )
        env.setdefault("PTW_LOG_LEVEL", "WARNING")  # --worker-env PTW_LOG_LEVEL=INFO wins
        try:
            settings = WorkerConfig.load(None, env)
        except WorkerError as exc:
            raise SystemExit(f"--worker-env: {exc}") from exc
        camera_port = free_port()
        camera = spawn_camera(camera_port, clip, env, (args.log_dir or tmp) / "camera.log")
        try:
            await wait_http(f"http://127.0.0.1:{camera_port}/health")
            camera_url = f"http://127.0.0.1:{camera_port}/stream.ts?camera=floor"
            measure = partial(measure_floor, clip, camera_url, model, args, cores, settings)
            # The floor before and after the ramp, its figures the mean of the two: the
            # machine's speed drifts between runs as much as the gaps measured here.
            before = await asyncio.to_thread(measure)
            together = partial(
                together_floor,
                camera_url,
                model,
                args.provider,
                input_tensor(clip, args.imgsz),
                before,
                live=settings,
                seconds=args.seconds,
            )
            steps = await ramp(args, before, mpta, camera, camera_port, env, tmp, together)
            after = await asyncio.to_thread(measure)
            floor = before.averaged(after)
            steps = [scored(step, floor, args.target_fps) for step in steps]
        finally:
            camera.terminate()
            with contextlib.suppress(Exception):
                camera.wait(30)
        trickle = await trickle_door(args, floor, mpta, env, tmp) if args.trickle else None
    report(args, floor, steps, trickle, (width, height), (before, after))


def floor_summary(floor: Floor) -> dict[str, Any]:
    return {
        "decode_cpu_ms": floor.decode_cpu_s * 1000,
        "decode_modes_ms": {k: v * 1000 for k, v in floor.decode_modes.items()},
        "nvdec_api": floor.nvdec_api,
        "runs_per_s": floor.runs_per_s,
        "best": floor.best,
        "layouts": floor.layouts,
        "live_fps": floor.live_fps,
        "live_jpeg_cpu_ms": floor.live_cpu_s * 1000,
    }


def report(
    args: argparse.Namespace,
    floor: Floor,
    steps: list[Step],
    trickle: dict[str, float] | None,
    size: tuple[int, int],
    measured: tuple[Floor, Floor],
) -> None:
    # The ramp's steps, before the overload step: the max N is the last that held.
    ramp_steps = [
        s
        for s in steps
        if s.cameras
        <= min((s.cameras for s in steps if not s.holds), default=steps[-1].cameras if steps else 0)
    ]
    held = [s for s in ramp_steps if s.holds]
    max_n = held[-1].cameras if held else 0
    overload = steps[-1] if steps and not steps[-1].holds else None
    below = steps[0] if steps else None
    camera_per_camera = statistics.median(s.camera_cores / s.cameras for s in steps)
    floor_max_n = floor.max_n(args.target_fps, camera_per_camera)
    result: dict[str, Any] = {
        "machine_cores": floor.cores,
        "resolution": f"{size[0]}x{size[1]}",
        "imgsz": args.imgsz,
        "provider": args.provider,
        "target_fps": args.target_fps,
        "max_n": max_n,
        "floor_max_n": floor_max_n,
        "floor": floor_summary(floor),
        "floor_before": floor_summary(measured[0]),
        "floor_after": floor_summary(measured[1]),
        "steps": [asdict(s) for s in steps],
        "at_max_n": asdict(held[-1]) if held else None,
        "overload": asdict(overload) if overload else None,
        "below_saturation": asdict(below) if below else None,
        "trickle": trickle,
        "workers": args.workers,
    }
    if args.json:
        print(json.dumps(finite(result), indent=2, allow_nan=False))
        return
    print(
        f"machine: {floor.cores} cores; clip {size[0]}x{size[1]}@{CLIP_FPS}; detector at "
        f"{args.imgsz} on {args.provider}; target {args.target_fps:g} fps per stream"
    )
    layouts = "; ".join(f"{k}: {v:.1f}/s" for k, v in floor.layouts.items())
    modes = ", ".join(f"{k} {v * 1000:.2f}" for k, v in floor.decode_modes.items())
    if floor.nvdec_api:
        modes += f"; the live modes through NVDEC ({floor.nvdec_api}) where usable"
    print(
        f"floor (mean of before and after the ramp): decode {floor.decode_cpu_s * 1000:.2f} ms "
        f"CPU/frame, the cheaper live mode ({modes}); session.run {layouts}"
    )
    if floor.live_fps:
        print(
            f"floor: the live view's {floor.live_fps:g} JPEGs/s per camera at "
            f"{floor.live_cpu_s * 1000:.2f} ms CPU each (bare scale + encode)"
        )
    for when, one in zip(("before", "after"), measured, strict=True):
        print(
            f"floor {when} the ramp: decode {one.decode_cpu_s * 1000:.2f} ms, session.run "
            f"{one.runs_per_s:.1f}/s ({one.best}), live JPEG {one.live_cpu_s * 1000:.2f} ms"
        )
    for step in steps:
        print(progress(step, args))
    print(f"max N: worker {max_n}, floor {floor_max_n}")
    if held:
        s = held[-1]
        print(
            f"at N={s.cameras}: per-stream fps min {s.fps_min:.2f} median {s.fps_median:.2f}; "
            f"capture->detection p50 {s.latency_p50_ms:.0f} ms p95 {s.latency_p95_ms:.0f} ms"
        )
    for step in steps:
        if step.together_rounds:
            ratios = ", ".join(
                f"{r['worker_fps'] / r['together_fps']:.3f}" for r in step.together_rounds
            )
            print(
                f"N={step.cameras} against the floor's parts run together, "
                f"{len(step.together_rounds)} paired rounds: x{ratios}; median "
                f"x{step.worker_over_together_fps:.3f}"
            )
    if overload:
        print(
            f"overload N={overload.cameras}: worker {overload.fps_total:.1f} fps vs floor "
            f"{overload.floor_fps:.1f} -> x{overload.worker_over_floor_fps:.3f}, vs the parts "
            f"run together {overload.together_fps:.1f} (median of rounds) -> "
            f"x{overload.worker_over_together_fps:.3f}; slowest "
            f"{overload.fps_min:.2f} vs median {overload.fps_median:.2f}"
        )
    if below:
        print(
            f"below saturation N={below.cameras}: worker {below.worker_cores:.2f} cores vs "
            f"floor {below.floor_cores:.2f} -> x{below.worker_over_floor_cpu:.2f}"
        )
    if trickle:
        print(
            f"trickle door: {trickle['trickle_fps']:.1f} fps vs floor "
            f"{trickle['trickle_floor_fps']:.1f} (decode+run+encode) -> "
            f"x{trickle['trickle_over_floor']:.3f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
