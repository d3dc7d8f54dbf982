"""Per-stage cost of the MPTA engine against a bare ``session.run`` floor, measured in one run.

    .venv/bin/python bench/bench_engine.py [--frames 60] [--size WxH] [--provider cpu] [--spin]

For each model it runs, on the same synthetic 1080p camera frames, interleaved:

* the engine path: letterbox (PyAV swscale + numpy) → ``session.run`` → decode + NMS + scale
  back (→ ByteTrack update for detectors), timed per stage;
* the floor: a separate, identically configured ``onnxruntime.InferenceSession`` running the
  same input tensor, nothing else.

It prints medians per stage and the engine overhead (everything except ``session.run``) as a
share of the floor's inference time. The machines are noisy, so medians and ratios are what
count. The goal for the YOLOv8n-sized model at 640 is overhead < 10%.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pytrickle_worker.devtools.models import (
    build_colour_classifier,
    build_colour_detector,
    build_yolov8n_like,
)
from pytrickle_worker.devtools.synthetic import moving_objects, render_scene
from pytrickle_worker.engine.inference.imageops import letterbox
from pytrickle_worker.engine.inference.model import OnnxModel, StageTimings
from pytrickle_worker.engine.inference.providers import ProviderChoice, select_providers
from pytrickle_worker.engine.tracking.bytetrack import ByteTracker


@dataclass
class Samples:
    preprocess: list[float] = field(default_factory=list[float])
    inference: list[float] = field(default_factory=list[float])
    postprocess: list[float] = field(default_factory=list[float])
    tracking: list[float] = field(default_factory=list[float])
    total: list[float] = field(default_factory=list[float])
    floor: list[float] = field(default_factory=list[float])
    detections: list[int] = field(default_factory=list[int])


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def floor_session(path: Path, providers: ProviderChoice) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(path), providers.session_options(), providers=providers.ort_providers()
    )


def bench_detector(
    name: str, path: Path, frames: list[np.ndarray], providers: ProviderChoice, fps: float
) -> tuple[str, Samples]:
    model = OnnxModel(path, providers)
    model.warmup()
    floor = floor_session(path, providers)
    info = model.info
    tracker = ByteTracker(frame_rate=fps)
    samples = Samples()
    for frame in frames[:3]:  # warm both paths
        model.detect(frame)
        tensor, _ = letterbox(frame, info.input_size)
        floor.run(None, {info.input_name: tensor})
    for frame in frames:
        timings = StageTimings()
        started = time.perf_counter()
        dets = model.detect(frame, conf_thres=0.1, timings=timings)
        track_started = time.perf_counter()
        tracker.update(dets.boxes, dets.scores, dets.class_ids)
        ended = time.perf_counter()
        samples.preprocess.append(timings.preprocess_ms)
        samples.inference.append(timings.inference_ms)
        samples.postprocess.append(timings.postprocess_ms)
        samples.tracking.append((ended - track_started) * 1000)
        samples.total.append((ended - started) * 1000)
        samples.detections.append(len(dets))

        tensor, _ = letterbox(frame, info.input_size)
        floor_started = time.perf_counter()
        floor.run(None, {info.input_name: tensor})
        samples.floor.append((time.perf_counter() - floor_started) * 1000)
    model.close()
    return name, samples


def bench_classifier(
    path: Path, crops: list[np.ndarray], providers: ProviderChoice
) -> tuple[str, Samples]:
    model = OnnxModel(path, providers)
    model.warmup()
    floor = floor_session(path, providers)
    info = model.info
    samples = Samples()
    blank = np.zeros((1, 3, *info.input_size), np.float32)
    for crop in crops:
        timings = StageTimings()
        started = time.perf_counter()
        model.classify(crop, timings=timings)
        samples.total.append((time.perf_counter() - started) * 1000)
        samples.preprocess.append(timings.preprocess_ms)
        samples.inference.append(timings.inference_ms)
        samples.postprocess.append(timings.postprocess_ms)
        floor_started = time.perf_counter()
        floor.run(None, {info.input_name: blank})
        samples.floor.append((time.perf_counter() - floor_started) * 1000)
    model.close()
    return "demo classifier 64 (crop)", samples


def report(rows: list[tuple[str, Samples]], out: list[str]) -> None:
    header = (
        f"{'model':<30} {'pre':>7} {'infer':>8} {'post':>7} {'track':>7} {'total':>8} "
        f"{'floor':>8} {'overhead':>9} {'total/floor':>11} {'dets':>5}"
    )
    out.append(header)
    out.append("-" * len(header))
    for name, s in rows:
        overhead = median(
            [
                p + q + t
                for p, q, t in zip(
                    s.preprocess,
                    s.postprocess,
                    s.tracking or [0.0] * len(s.preprocess),
                    strict=True,
                )
            ]
        )
        floor = median(s.floor)
        out.append(
            f"{name:<30} {median(s.preprocess):7.2f} {median(s.inference):8.2f} "
            f"{median(s.postprocess):7.2f} {median(s.tracking):7.2f} {median(s.total):8.2f} "
            f"{floor:8.2f} {100 * overhead / floor:8.1f}% {median(s.total) / floor:11.3f} "
            f"{statistics.median(s.detections) if s.detections else 0:5.0f}"
        )
    out.append(
        "(milliseconds per frame, medians; overhead = median(pre+post+track) / median(floor))"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--size", default="1920x1080", help="camera frame size WxH")
    parser.add_argument("--provider", default="auto")
    parser.add_argument("--skip-yolo", action="store_true")
    parser.add_argument(
        "--spin", action="store_true", help="let onnxruntime threads spin (worker default: off)"
    )
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    providers = select_providers(args.provider, allow_spinning=args.spin)
    fps = 5.0
    frames = [
        render_scene(width, height, moving_objects(i, width, height, fps))
        for i in range(args.frames)
    ]
    crops = []
    for frame, i in zip(frames, range(args.frames), strict=True):
        x1, y1, x2, y2 = moving_objects(i, width, height, fps)[0].box
        crops.append(np.ascontiguousarray(frame[y1:y2, x1:x2]))

    rows: list[tuple[str, Samples]] = []
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp)
        detector = build_colour_detector(models / "detector.onnx", "v8", (640, 640), batch=None)
        classifier = build_colour_classifier(models / "classifier.onnx", batch=None)
        rows.append(bench_detector("demo colour detector 640", detector, frames, providers, fps))
        rows.append(bench_classifier(classifier, crops, providers))
        if not args.skip_yolo:
            stats = build_yolov8n_like(models / "yolov8n_like.onnx", 640, batch=None)
            print(
                f"yolov8n-like: {stats.params / 1e6:.2f} M params, {stats.gflops:.2f} GFLOPs at 640"
            )
            rows.append(
                bench_detector(
                    "yolov8n-like 640", models / "yolov8n_like.onnx", frames, providers, fps
                )
            )
    lines: list[str] = [
        f"provider {providers.describe()}; frames {args.frames} of {width}x{height}; "
        f"onnxruntime {ort.__version__}"
    ]
    report(rows, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
