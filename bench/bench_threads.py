"""Inference throughput of thread layouts: N parallel runs × T intra-op threads each.

    .venv/bin/python bench/bench_threads.py [--frames 40] [--repeats 3] [--layouts 2x1,1x2]

On the YOLOv8n-sized model at 640 (``build_yolov8n_like``), CPU provider, spinning off (the
worker default), one session per layout shared by its ``N`` threads (as the worker's
registry shares one session per model): each thread runs ``model.detect`` on 1080p frames
(letterbox → ``session.run`` → decode + NMS) until ``--frames`` frames are done in all.
Layouts are interleaved per repeat (machines here are noisy); the figure per layout is the
median frames/s over the repeats, and the median per-frame latency.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from pytrickle_worker.devtools.models import build_yolov8n_like
from pytrickle_worker.devtools.synthetic import moving_objects, render_scene
from pytrickle_worker.engine.inference.model import OnnxModel
from pytrickle_worker.engine.inference.providers import select_providers

Frame = npt.NDArray[np.uint8]


def run_layout(
    model: OnnxModel, workers: int, frames: list[Frame], count: int
) -> tuple[float, float]:
    """(frames/s, median latency ms) of ``count`` frames on ``workers`` threads."""
    lock = threading.Lock()
    taken = 0
    latencies: list[float] = []

    def work() -> None:
        nonlocal taken
        while True:
            with lock:
                if taken >= count:
                    return
                index = taken
                taken += 1
            started = time.perf_counter()
            model.detect(frames[index % len(frames)], conf_thres=0.25)
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=work, name=f"bench_{i}") for i in range(workers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return count / wall, statistics.median(latencies) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=40, help="frames per layout and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layouts", default="2x1,1x2", help="WORKERSxTHREADS, comma-separated")
    args = parser.parse_args()
    layouts = [tuple(int(v) for v in item.split("x")) for item in args.layouts.split(",")]
    frames = [render_scene(1920, 1080, moving_objects(i, 1920, 1080, 5.0)) for i in range(8)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "yolov8n_like.onnx"
        stats = build_yolov8n_like(path, 640, batch=None)
        models: dict[tuple[int, ...], OnnxModel] = {}
        for layout in layouts:
            providers = select_providers("cpu", intra_op_threads=layout[1], allow_spinning=False)
            models[layout] = OnnxModel(path, providers)
        results: dict[tuple[int, ...], list[tuple[float, float]]] = {lay: [] for lay in layouts}
        for model in models.values():  # warm every session once more
            run_layout(model, 1, frames, 2)
        for repeat in range(args.repeats):
            for layout in layouts:
                fps, latency = run_layout(models[layout], layout[0], frames, args.frames)
                results[layout].append((fps, latency))
                print(
                    f"repeat {repeat + 1}: {layout[0]} run(s) x {layout[1]} thread(s): "
                    f"{fps:.2f} frames/s, latency {latency:.1f} ms",
                    flush=True,
                )
    print(
        f"\nyolov8n-like 640 ({stats.params / 1e6:.2f} M params, {stats.gflops:.2f} GFLOPs), "
        f"onnxruntime {ort.__version__}, CPU, spinning off, {args.frames} frames of "
        f"1920x1080 per layout and repeat, {args.repeats} repeats"
    )
    print("| layout | frames/s (each repeat) | median frames/s | median latency ms |")
    print("|---|---|---|---|")
    for layout in layouts:
        rows = results[layout]
        each = ", ".join(f"{fps:.2f}" for fps, _ in rows)
        fps = statistics.median(fps for fps, _ in rows)
        latency = statistics.median(lat for _, lat in rows)
        name = f"{layout[0]} parallel run(s) × {layout[1]} intra-op thread(s)"
        print(f"| {name} | {each} | **{fps:.2f}** | {latency:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
