"""Does ``session.run`` cost more CPU while cameras decode next to it?

    .venv/bin/python bench/bench_contention.py [--cameras 6] [--imgsz 320] [--seconds 15]

The density floor (bench/density.py) adds decoding and inference costs measured apart. This
checks that they add up: ``--cameras`` PyAV decoders play a generated 720p30 clip in real time
(threaded, as the camera hub decodes) while one single-thread ``session.run`` loop per core
runs the generated YOLOv8n-sized model; the CPU per run is the process CPU minus the
decoders' own CPU per frame (measured alone first) over the runs done. Printed next to the
CPU per run alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cms_saturation import session
from bench_ingest import encode_clip

from pytrickle_worker.devtools.models import build_yolov8n_like
from pytrickle_worker.engine.inference.imageops import letterbox


def measure(
    clip: Path,
    tensor: np.ndarray,
    sessions: list[ort.InferenceSession],
    cameras: int,
    seconds: float,
) -> tuple[float, float, int, int]:
    """(process CPU s, wall s, frames decoded, runs) with ``cameras`` decoders and the
    ``sessions`` running at once."""
    stop = threading.Event()
    lock = threading.Lock()
    counts = [0, 0]

    def decoder() -> None:
        while not stop.is_set():
            with av.open(str(clip)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                started = time.monotonic()
                for index, _ in enumerate(container.decode(stream)):
                    if stop.is_set():
                        return
                    with lock:
                        counts[0] += 1
                    time.sleep(max(0.0, started + (index + 1) / 30 - time.monotonic()))

    def runner(s: ort.InferenceSession) -> None:
        name = s.get_inputs()[0].name
        while not stop.is_set():
            s.run(None, {name: tensor})
            with lock:
                counts[1] += 1

    threads = [threading.Thread(target=decoder) for _ in range(cameras)]
    threads += [threading.Thread(target=runner, args=(s,)) for s in sessions]
    cpu, wall = time.process_time(), time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return time.process_time() - cpu, time.monotonic() - wall, counts[0], counts[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        clip, model = tmp / "clip.mp4", tmp / "detector.onnx"
        encode_clip(clip, 1280, 720, seconds=10)
        build_yolov8n_like(model, imgsz=args.imgsz, batch=None)
        with av.open(str(clip)) as container:
            frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
        tensor = letterbox(frame, (args.imgsz, args.imgsz))[0].copy()
        sessions = [session(model, 1) for _ in range(cores)]
        cpu, wall, decoded, _ = measure(clip, tensor, [], args.cameras, args.seconds)
        decode_cpu = cpu / decoded
        cpu, wall, _, runs = measure(clip, tensor, sessions, 0, args.seconds)
        alone = cpu / runs
        cpu, wall, decoded, runs = measure(clip, tensor, sessions, args.cameras, args.seconds)
        together = (cpu - decoded * decode_cpu) / runs
    print(
        f"{args.cameras} decoders: {decode_cpu * 1000:.2f} ms CPU per frame; session.run at "
        f"{args.imgsz} on {cores} x 1 thread: {alone * 1000:.2f} ms CPU per run alone, "
        f"{together * 1000:.2f} ms next to the decoders (x{together / alone:.3f}; "
        f"{decoded / wall:.0f} frames/s decoded, {runs / wall:.1f} runs/s)"
    )


if __name__ == "__main__":
    main()
