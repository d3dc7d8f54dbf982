"""CPU time per analysed frame of each worker stage around ``session.run`` (issue 13).

    .venv/bin/python bench/bench_frame_path.py [--resolution 720p] [--imgsz 320] [--frames 100]

Decodes the density benchmark's clip (the same textured, moving scene), takes every
``--every``-th frame (6: a 5 fps sample of 30 fps) and times, per frame, in this thread's CPU
time (``time.thread_time``, robust to other processes' load on a shared machine):

* ``rgb``: the decoder's YUV frame to a full-resolution RGB array (``to_ndarray("rgb24")``);
* ``letterbox(rgb)``: that RGB array letterboxed into the model's reused input tensor;
* ``letterbox(yuv)``: the YUV frame letterboxed straight into the tensor, one swscale call
  (what the CMS path does since issue 13);
* ``decode+nms``: the seeded YOLOv8n-sized model's output to boxes in frame pixels;
* ``tracker``: one ByteTrack update with those detections;
* ``run``: the ``session.run`` itself, for scale.

It prints the median and p90 of each over the frames, and the mean difference between the
two letterbox paths' inputs (tests/test_letterbox_decoded.py compares their detections; this
seeded random model turns any pixel change into other boxes, so its boxes are not compared).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from bench_ingest import encode_clip

from pytrickle_worker.devtools.models import build_yolov8n_like
from pytrickle_worker.engine.inference.imageops import LetterboxBuffer, letterbox
from pytrickle_worker.engine.inference.model import InputMeta, OnnxModel
from pytrickle_worker.engine.inference.providers import select_providers
from pytrickle_worker.engine.tracking.bytetrack import ByteTracker

RESOLUTIONS = {"720p": (1280, 720), "1080p": (1920, 1080)}


class Clock:
    """This thread's CPU time between laps, in milliseconds, into named sample lists."""

    def __init__(self, stages: dict[str, list[float]]) -> None:
        self._stages = stages
        self._last = time.thread_time()

    def restart(self) -> None:
        self._last = time.thread_time()

    def lap(self, name: str) -> None:
        now = time.thread_time()
        self._stages[name].append((now - self._last) * 1000)
        self._last = now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", choices=sorted(RESOLUTIONS), default="720p")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--every", type=int, default=6)
    parser.add_argument("--conf", type=float, default=0.1, help="the tracker's low floor")
    args = parser.parse_args()
    width, height = RESOLUTIONS[args.resolution]
    stages: dict[str, list[float]] = {
        name: []
        for name in ("rgb", "letterbox(rgb)", "letterbox(yuv)", "decode+nms", "tracker", "run")
    }
    detections: list[int] = []
    pixel_diff: list[float] = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        clip, model_path = tmp / "clip.mp4", tmp / "detector.onnx"
        encode_clip(clip, width, height, seconds=args.frames * args.every / 30 + 1)
        build_yolov8n_like(model_path, imgsz=args.imgsz, batch=None)
        model = OnnxModel(model_path, select_providers("cpu"))
        size = model.info.input_size
        rgb_buffer, yuv_buffer = LetterboxBuffer(size), LetterboxBuffer(size)
        tracker = ByteTracker(frame_rate=30 / args.every)
        with av.open(str(clip)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                if index % args.every:
                    continue
                if len(detections) == args.frames:
                    break
                clock = Clock(stages)
                rgb = frame.to_ndarray(format="rgb24")
                clock.lap("rgb")
                old, info_old = letterbox(rgb, size, rgb_buffer)
                clock.lap("letterbox(rgb)")
                new, info_new = letterbox(frame, size, yuv_buffer)
                clock.lap("letterbox(yuv)")
                assert info_old == info_new
                pixel_diff.append(float(np.abs(old - new).mean()) * 255)
                clock.restart()
                output = np.array(model.run(new))
                clock.lap("run")
                shape = (height, width, 3)
                (dets,) = model.postprocess_detections(
                    output, (InputMeta(shape, info_new),), args.conf
                )
                clock.lap("decode+nms")
                tracker.update(dets.boxes, dets.scores, dets.class_ids)
                clock.lap("tracker")
                detections.append(len(dets))
    print(
        f"{args.resolution} -> {args.imgsz}, {len(detections)} frames, "
        f"{statistics.median(detections):.0f} detections a frame (median); "
        f"CPU ms per frame (thread_time):"
    )
    for name, values in stages.items():
        ordered = sorted(values)
        p90 = ordered[int(0.9 * (len(ordered) - 1))]
        print(f"  {name:<16} median {statistics.median(values):6.2f}   p90 {p90:6.2f}")
    old_path = statistics.median(
        a + b for a, b in zip(stages["rgb"], stages["letterbox(rgb)"], strict=True)
    )
    print(
        f"  full RGB + letterbox {old_path:.2f} ms vs one swscale call "
        f"{statistics.median(stages['letterbox(yuv)']):.2f} ms; the two inputs differ by "
        f"{statistics.median(pixel_diff):.2f} grey levels on average (same geometry)"
    )


if __name__ == "__main__":
    main()
