"""CMS throughput at saturation: N live cameras through the real worker process, against a
floor of bare PyAV decode plus bare ``session.run`` measured in the same run.

    .venv/bin/python bench/bench_cms_saturation.py [--cameras 6] [--seconds 20]
        [--size 1280x720] [--imgsz 320] [--target-fps 5]

What runs:

* N cameras: the project's demo camera (``pytrickle-worker demo camera``, a separate
  process) loops one H.264 30 fps clip as live MPEG-TS over HTTP; each subscription names it
  with its own query string, so the worker opens N connections and decodes N streams;
* the worker: ``pytrickle-worker serve --no-demo`` (a separate process), every-frame
  emission, ``PTW_TARGET_FPS`` analysis per camera, a one-node MPTA with a YOLOv8n-structured
  detector at ``--imgsz``;
* a CMS backend (this process) subscribes the N cameras and counts ``imageDetection``s: with
  every-frame emission, one per analysed frame.

The floor, from the same machine and the same run: the CPU seconds it takes to decode one
frame of the clip (PyAV, threaded, as the camera hub decodes) and the best throughput of a
bare ``session.run`` (one single-thread session per core, or one session with every core).
What the cores have left after decoding every frame of N cameras (and after the camera
process's own CPU) runs inference at that rate: ``floor fps = min(N x target, spare cores x
best inferences per core-second)``. The figure that counts is worker fps / floor fps.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import aiohttp
import av
import numpy as np
import onnxruntime as ort
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import encode_clip

from pytrickle_worker.devtools.assets import build_mpta
from pytrickle_worker.devtools.models import build_yolov8n_like
from pytrickle_worker.engine.inference.imageops import letterbox

REPO = Path(__file__).resolve().parent.parent
CLIP_FPS = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------------- floor


def decode_cpu_per_frame(clip: Path, threads: int = 0) -> float:
    """CPU seconds per frame to decode ``clip``: FFmpeg's frame+slice threads (``threads``
    0), or that many threads."""
    started = time.process_time()
    frames = 0
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if threads:
            stream.codec_context.thread_count = threads
        for _ in container.decode(stream):
            frames += 1
    return (time.process_time() - started) / max(1, frames)


def session(
    model: Path, threads: int, providers: Sequence[str] = ("CPUExecutionProvider",)
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model), options, providers=list(providers))


def inferences_per_second(
    model: Path,
    tensor: np.ndarray,
    threads: int,
    parallel: int,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> float:
    """Images per second of ``parallel`` sessions of ``threads`` intra-op threads each, run
    at once on ``tensor`` (a batch counts its images)."""
    sessions = [session(model, threads, providers) for _ in range(parallel)]
    name = sessions[0].get_inputs()[0].name
    for s in sessions:
        s.run(None, {name: tensor})
    runs = max(4, 40 // tensor.shape[0])

    def loop(s: ort.InferenceSession) -> None:
        for _ in range(runs):
            s.run(None, {name: tensor})

    rates: list[float] = []
    for _ in range(3):
        started = time.perf_counter()
        with ThreadPoolExecutor(parallel) as pool:
            list(pool.map(loop, sessions))
        rates.append(parallel * runs * tensor.shape[0] / (time.perf_counter() - started))
    return statistics.median(rates)


# ----------------------------------------------------------------------------- worker


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def spawn_camera(port: int, clip: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``pytrickle-worker demo camera`` looping ``clip`` on 127.0.0.1:``port``."""
    return spawn(
        [sys.executable, "-m", "pytrickle_worker", "demo", "camera", "--host", "127.0.0.1",
         "--port", str(port), "--video", str(clip)],
        env, log,
    )  # fmt: skip


def spawn_worker(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``pytrickle-worker serve --no-demo`` on 127.0.0.1:``port``."""
    return spawn(
        [sys.executable, "-m", "pytrickle_worker", "serve", "--no-demo", "--host", "127.0.0.1",
         "--port", str(port)],
        env, log,
    )  # fmt: skip


async def wait_http(url: str, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url) as response:
                    if response.status < 500:
                        return
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not answer within {within} s")
            await asyncio.sleep(0.2)


def capture_latency(message: dict[str, object], received: float) -> float:
    stamp = str(message["timestamp"]).replace("Z", "+00:00")
    return received - datetime.fromisoformat(stamp).timestamp()


async def measure_worker(
    port: int, camera_port: int, mpta: Path, cameras: int, seconds: float
) -> tuple[list[float], list[float]]:
    """Per-camera analysed fps over the window, and capture→detection latencies (s)."""
    counts = [0] * cameras
    latencies: list[float] = []
    measuring = False
    ids = [f"bench-{n};cam-{n}" for n in range(cameras)]
    async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://127.0.0.1:{port}/") as ws:
        for n, identifier in enumerate(ids):
            await ws.send_json(
                {
                    "type": "subscribe",
                    "payload": {
                        "subscriptionIdentifier": identifier,
                        "rtspUrl": f"http://127.0.0.1:{camera_port}/stream.ts?camera={n}",
                        "modelUrl": str(mpta),
                        "modelId": 1,
                        "modelName": "bench",
                    },
                }
            )
        seen: set[str] = set()
        deadline = time.monotonic() + 120
        window_end = warm_until = float("inf")
        async for message in ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            now = time.monotonic()
            if data.get("type") == "error":
                raise SystemExit(f"worker error: {data}")
            if data.get("type") == "imageDetection":
                identifier = data["subscriptionIdentifier"]
                seen.add(identifier)
                if measuring:
                    counts[ids.index(identifier)] += 1
                    latencies.append(capture_latency(data, time.time()))
                elif len(seen) == cameras:
                    # Every camera runs: let the queues reach their steady state, then count.
                    # (Never sleep here: messages would wait in the socket, and their receipt
                    # time, hence the latency, would be late.)
                    warm_until = min(warm_until, now + 5)
                    if now >= warm_until:
                        measuring, window_end = True, now + seconds
            if measuring and now >= window_end:
                break
            if not measuring and now > deadline:
                raise SystemExit(f"only {len(seen)} of {cameras} cameras produced a detection")
    return [count / seconds for count in counts], latencies


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--target-fps", type=float, default=5.0)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    cores = len(os.sched_getaffinity(0))

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        clip, model = tmp / "clip.mp4", tmp / "detector.onnx"
        encode_clip(clip, width, height, seconds=20)
        build_yolov8n_like(model, imgsz=args.imgsz, batch=None)
        pipeline = {
            "pipeline": {
                "modelId": "bench-detector",
                "modelFile": "detector.onnx",
                "minConfidence": 0.25,
                "triggerClasses": [],
                "actions": [],
                "branches": [],
            }
        }
        mpta = build_mpta(tmp / "bench.mpta", pipeline, {"detector.onnx": model})

        # The floor.
        decode_cpu = decode_cpu_per_frame(clip)
        with av.open(str(clip)) as container:
            frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
        tensor = letterbox(frame, (args.imgsz, args.imgsz))[0]
        single = inferences_per_second(model, tensor, threads=1, parallel=cores)
        together = inferences_per_second(model, tensor, threads=cores, parallel=1)
        best_per_core = max(single, together) / cores

        # The worker and its cameras.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PTW_")}
        env.update(
            PTW_TARGET_FPS=str(args.target_fps),
            PTW_POLL_INTERVAL_MS="0",
            PTW_EMISSION="every_frame",
            PTW_MAX_STREAMS=str(max(16, args.cameras)),
            PTW_HW_DECODE="off",
            PTW_LOG_LEVEL="WARNING",
            PTW_CACHE_DIR=str(tmp / "cache"),
            PYTHONUNBUFFERED="1",
        )
        camera_port, worker_port = free_port(), free_port()
        camera = spawn_camera(camera_port, clip, env, tmp / "camera.log")
        worker = spawn_worker(worker_port, env, tmp / "worker.log")
        try:
            await wait_http(f"http://127.0.0.1:{camera_port}/health")
            await wait_http(f"http://127.0.0.1:{worker_port}/health/live")
            worker_ps, camera_ps = psutil.Process(worker.pid), psutil.Process(camera.pid)
            cpu_before = (cpu_seconds(worker_ps), cpu_seconds(camera_ps), time.monotonic())
            fps, latencies = await measure_worker(
                worker_port, camera_port, mpta, args.cameras, args.seconds
            )
            elapsed = time.monotonic() - cpu_before[2]
            worker_cores = (cpu_seconds(worker_ps) - cpu_before[0]) / elapsed
            camera_cores = (cpu_seconds(camera_ps) - cpu_before[1]) / elapsed
        finally:
            for process in (worker, camera):
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(30)

    decode_cores = args.cameras * CLIP_FPS * decode_cpu
    spare = max(0.0, cores - decode_cores - camera_cores)
    floor_fps = min(args.cameras * args.target_fps, spare * best_per_core)
    total = sum(fps)
    latencies.sort()
    print(f"machine: {cores} cores; clip {width}x{height}@{CLIP_FPS}; detector at {args.imgsz}")
    print(
        f"floor: decode {decode_cpu * 1000:.2f} ms CPU/frame ({decode_cores:.2f} cores for "
        f"{args.cameras} cameras), session.run {single:.1f}/s ({cores}x1 thread) vs "
        f"{together:.1f}/s (1x{cores} threads); camera process {camera_cores:.2f} cores"
    )
    print(
        f"cameras {args.cameras} at {args.target_fps:g} fps target: worker {total:.2f} analysed "
        f"fps (per stream min {min(fps):.2f}, median {statistics.median(fps):.2f}), floor "
        f"{floor_fps:.2f} fps -> worker/floor {total / floor_fps:.3f}; worker CPU "
        f"{worker_cores:.2f} cores; capture->detection p50 "
        f"{latencies[len(latencies) // 2] * 1000:.0f} ms, p95 "
        f"{latencies[int(len(latencies) * 0.95)] * 1000:.0f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
