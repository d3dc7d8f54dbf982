"""GPU floors: bare ``session.run`` on CUDA per batch size (plain and through the worker's IO
binding), and bare PyAV decode of a 1080p clip with NVDEC (through ``h264_cuvid``, a CUDA
context per decoder, and through FFmpeg's hwaccel on the primary context) and in software,
one decoder and many at once.

These are the parts the density benchmark's GPU figures are judged against: what ONNX
Runtime's CUDA provider and the card's NVDEC engines give to a bare loop on this host.

    python bench/bench_gpu.py                      # --json for the figures as JSON

Needs onnxruntime-gpu and an NVIDIA driver; without CUDA it says so and exits 2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import onnxruntime as ort
from av.codec.hwaccel import HWAccel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import encode_clip
from density import gpu_sample

from pytrickle_worker.devtools.models import build_yolov8n_like
from pytrickle_worker.engine.inference.binding import BoundRunner
from pytrickle_worker.media.nvdec import VideoDecoder

#: ``--cpu-smoke`` runs every part on the CPU provider (checking the script, not the card).
DEVICE = {"provider": "CUDAExecutionProvider", "binding": "cuda"}


def cuda_session(model: Path, search: str) -> ort.InferenceSession:
    """A CUDA session with cuDNN's convolution algorithm search ``search`` (the worker's
    default is HEURISTIC; onnxruntime's is EXHAUSTIVE)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    provider = DEVICE["provider"]
    chain: list[Any] = ["CPUExecutionProvider"]
    if provider != "CPUExecutionProvider":
        chain.insert(0, (provider, {"device_id": 0, "cudnn_conv_algo_search": search}))
    session = ort.InferenceSession(str(model), options, providers=chain)
    if session.get_providers()[0] != provider:
        raise SystemExit(f"no {provider} session: {session.get_providers()}")
    return session


def timed_runs(call: Any, seconds: float) -> tuple[float, list[float]]:
    """The first call's seconds (a new input shape: cuDNN's algorithm search), then the
    latencies of back-to-back calls for ``seconds`` after two more warm-ups."""
    started = time.perf_counter()
    call()
    first = time.perf_counter() - started
    for _ in range(2):
        call()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - started)
    return first, latencies


def emit(rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
    """Keeps ``row`` and prints it at once (stderr), so a run stopped by a timeout still
    leaves every figure measured before it."""
    rows.append(row)
    print(json.dumps(row), file=sys.stderr, flush=True)


def gpu_state() -> dict[str, float]:
    """NVML's utilisation and memory of GPU 0 (empty without NVML)."""
    return gpu_sample() or {}


def run_rates(model: Path, imgsz: int, batches: list[int], seconds: float) -> list[dict[str, Any]]:
    """Images/s and median run latency per batch size, plain ``session.run`` and the worker's
    ``BoundRunner`` (IO binding, device buffers per batch size), on one CUDA session; and two
    sessions at once at the largest batch."""
    session = cuda_session(model, "HEURISTIC")
    name = session.get_inputs()[0].name
    output = session.get_outputs()[0]
    tail = tuple(int(d) for d in output.shape[1:])
    bound = BoundRunner(session, name, output.name, tail, device=DEVICE["binding"])
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    for batch in batches:
        tensor = rng.random((batch, 3, imgsz, imgsz), dtype=np.float32)
        row: dict[str, Any] = {"batch": batch}
        for label, call in (
            ("plain", lambda t=tensor: session.run(None, {name: t})),
            ("bound", lambda t=tensor: bound.run(t)),
        ):
            try:
                first, latencies = timed_runs(call, seconds)
            except Exception as exc:  # a failing path is a finding: record it, go on
                row[f"{label}_error"] = repr(exc)
                continue
            row[f"{label}_first_ms"] = first * 1000
            row[f"{label}_img_s"] = batch * len(latencies) / sum(latencies)
            row[f"{label}_ms"] = statistics.median(latencies) * 1000
        emit(rows, row | gpu_state())
    # onnxruntime's default search, at the smallest and largest batch: the first run's stall
    # and the steady rate, against the worker's HEURISTIC above.
    exhaustive = cuda_session(model, "EXHAUSTIVE")
    for batch in (batches[0], batches[-1]):
        tensor = rng.random((batch, 3, imgsz, imgsz), dtype=np.float32)
        first, latencies = timed_runs(lambda t=tensor: exhaustive.run(None, {name: t}), seconds)
        emit(
            rows,
            {
                "batch": batch,
                "search": "EXHAUSTIVE",
                "plain_first_ms": first * 1000,
                "plain_img_s": batch * len(latencies) / sum(latencies),
                "plain_ms": statistics.median(latencies) * 1000,
            },
        )
    # Two sessions (two runs in flight) at the largest batch: does the card take more?
    batch = batches[-1]
    tensor = rng.random((batch, 3, imgsz, imgsz), dtype=np.float32)
    second = cuda_session(model, "HEURISTIC")
    counts = [0, 0]
    stop = threading.Event()

    def loop(index: int, s: Any) -> None:
        while not stop.is_set():
            s.run(None, {name: tensor})
            counts[index] += 1

    for s in (session, second):
        s.run(None, {name: tensor})
    threads = [threading.Thread(target=loop, args=(i, s)) for i, s in enumerate((session, second))]
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    emit(
        rows,
        {
            "batch": batch,
            "sessions": 2,
            "plain_img_s": batch * sum(counts) / (time.perf_counter() - started),
        }
        | gpu_state(),
    )
    return rows


def decode_clip(clip: Path, api: str | None, loops: int, fallbacks: list[str]) -> int:
    """Decodes ``clip`` ``loops`` times (NVDEC through ``api``, or software with FFmpeg's
    threads when ``api`` is None); frames. ``api`` ``on-gpu``: the hwaccel with the frames
    left on the GPU (PyAV's ``is_hw_owned``), what NVDEC gives without a copy per frame."""
    if api == "on-gpu":
        return decode_on_gpu(clip, loops, fallbacks)
    frames = 0
    for _ in range(loops):
        with av.open(str(clip)) as container:
            stream = container.streams.video[0]
            decoder = VideoDecoder(
                stream,
                try_nvdec=api is not None,
                on_fallback=fallbacks.append,
                api="hwaccel" if api == "hwaccel" else "cuvid",
            )
            for packet in container.demux(stream):
                if packet.size:
                    frames += len(decoder.decode(packet))
    return frames


def decode_on_gpu(clip: Path, loops: int, fallbacks: list[str]) -> int:
    """``decode_clip`` with NVDEC's frames kept on the GPU (none is downloaded)."""
    frames = 0
    for _ in range(loops):
        accel = HWAccel("cuda", allow_software_fallback=False, is_hw_owned=True)
        try:
            container = av.open(str(clip), hwaccel=accel)
        except av.FFmpegError as exc:
            fallbacks.append(f"no CUDA hwaccel: {exc}")
            container = av.open(str(clip))
        with container:
            stream = container.streams.video[0]
            flag: Any = stream.codec_context.is_hwaccel
            if not (flag() if callable(flag) else flag):
                fallbacks.append("decoded in software")
            try:
                frames += sum(1 for _ in container.decode(stream))
            except av.FFmpegError as exc:
                fallbacks.append(f"decode failed: {exc}")
    return frames


def decode_together(clip: Path, api: str | None, k: int, loops: int) -> dict[str, Any]:
    """Frames/s and process CPU per frame of ``k`` decoders at once."""
    fallbacks: list[str] = []
    counts = [0] * k

    def work(i: int) -> None:
        counts[i] = decode_clip(clip, api, loops, fallbacks)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(k)]
    cpu, wall = time.process_time(), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    frames = sum(counts)
    return {
        "decoder": f"nvdec {api}" if api else "software",
        "parallel": k,
        "fps": frames / wall,
        "streams_at_30fps": frames / wall / 30,
        "cpu_ms_per_frame": 1000 * cpu / max(1, frames),
        "fallbacks": sorted(set(fallbacks)),
    } | gpu_state()


def decode_rates(clip: Path, parallel: list[int], loops: int) -> list[dict[str, Any]]:
    """``decode_together`` for each count of decoders: NVDEC through cuvid (a CUDA context
    per decoder), through the hwaccel (the primary context), the hwaccel with the frames
    left on the GPU, then software."""
    rows: list[dict[str, Any]] = []
    for api in ("cuvid", "hwaccel", "on-gpu", None):
        for k in parallel:
            emit(rows, decode_together(clip, api, k, loops))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--batches", default="1,4,8,16,32,64")
    parser.add_argument("--seconds", type=float, default=3.0, help="per batch size")
    parser.add_argument("--resolution", default="1920x1080")
    parser.add_argument("--parallel", default="1,8,32", help="decoders at once")
    parser.add_argument("--loops", type=int, default=2, help="passes over the 10 s clip")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cpu-smoke", action="store_true", help="check the script on the CPU")
    args = parser.parse_args()
    if args.cpu_smoke:
        DEVICE.update(provider="CPUExecutionProvider", binding="cpu")
    elif "CUDAExecutionProvider" not in ort.get_available_providers():
        print(f"onnxruntime {ort.__version__} has no CUDA provider", file=sys.stderr)
        raise SystemExit(2)
    width, height = (int(v) for v in args.resolution.split("x"))
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        model = tmp / "detector.onnx"
        build_yolov8n_like(model, imgsz=args.imgsz, batch=None)
        runs = run_rates(model, args.imgsz, [int(b) for b in args.batches.split(",")], args.seconds)
        clip = tmp / "clip.mp4"
        encode_clip(clip, width, height, seconds=10)
        decodes = decode_rates(clip, [int(k) for k in args.parallel.split(",")], args.loops)
    result = {"onnxruntime": ort.__version__, "imgsz": args.imgsz, "runs": runs, "decode": decodes}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"onnxruntime {ort.__version__}, CUDA, YOLOv8n-sized at {args.imgsz}")
    for row in runs:
        bound = f", IO binding {row['bound_img_s']:.0f} img/s" if "bound_img_s" in row else ""
        bound += f", IO binding failed: {row['bound_error']}" if "bound_error" in row else ""
        sessions = f" x{row['sessions']} sessions" if "sessions" in row else ""
        search = f" {row['search']}" if "search" in row else ""
        first = f", first run {row['plain_first_ms']:.0f} ms" if "plain_first_ms" in row else ""
        print(
            f"  batch {row['batch']}{sessions}{search}: {row['plain_img_s']:.0f} img/s{bound}"
            f"{first}"
        )
    print(f"decode {width}x{height} H.264")
    for row in decodes:
        print(
            f"  {row['decoder']} x{row['parallel']}: {row['fps']:.0f} fps "
            f"({row['streams_at_30fps']:.1f} streams at 30 fps), "
            f"{row['cpu_ms_per_frame']:.2f} ms CPU/frame {row['fallbacks'] or ''}"
        )


if __name__ == "__main__":
    main()
