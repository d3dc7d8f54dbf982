"""CPU cost of the camera hub per camera, against a bare-PyAV floor measured in the same run.

    .venv/bin/python bench/bench_ingest.py [--seconds 10] [--sizes 1920x1080,1280x720]

For each size it encodes an H.264 30 fps clip (libx264, no B-frames, IDR every 2 s, like a
camera), then measures process CPU time (all threads) for:

* floor: bare PyAV — demux + decode every frame (threaded decoding, as the hub does) and convert
  to RGB only the frames a 5 fps consumer needs;
* hub, 1 subscriber at 5 fps: the clip played as a camera (paced at its native rate);
* hub, 10 subscribers at 5 fps on the same camera.

CPU per second of video is the figure; the ratios are what count on a noisy machine. Goals:
hub(1) <= 1.1 x floor; hub(10) adds < 10% over hub(1) (inference not included).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pytrickle_worker.sources.config import IngestConfig
from pytrickle_worker.sources.hub import CameraHub
from pytrickle_worker.sources.source import SourceConfig

FPS = 30
SAMPLE_FPS = 5.0


def encode_clip(path: Path, width: int, height: int, seconds: float) -> None:
    """A moving, textured scene (so the encoder produces realistic P-frames)."""
    rng = np.random.default_rng(0)
    background = rng.integers(40, 200, size=(height // 8, width // 8, 3), dtype=np.uint8)
    background = np.repeat(np.repeat(background, 8, axis=0), 8, axis=1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "tune": "zerolatency", "bf": "0", "g": str(2 * FPS)}
        stream.time_base = Fraction(1, FPS)
        for i in range(int(seconds * FPS)):
            frame = np.roll(background, shift=(i * 3, i * 5), axis=(0, 1))
            x = (i * 12) % (width - 200)
            frame[100:260, x : x + 200] = (220, 40, 40)
            video = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video.pts = i
            for packet in stream.encode(video):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def floor_cpu(path: Path) -> tuple[float, int]:
    """CPU seconds to decode every frame and convert the 5 fps subset; frames converted."""
    started = time.process_time()
    converted = 0
    next_time = 0.0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            t = float(frame.time or 0.0)
            if t + 1e-6 >= next_time:
                frame.to_ndarray(format="rgb24")
                converted += 1
                next_time += 1.0 / SAMPLE_FPS
    return time.process_time() - started, converted


async def hub_cpu(path: Path, subscribers: int, seconds: float) -> tuple[float, int, int]:
    """CPU seconds while the hub plays the clip once to ``subscribers`` 5 fps subscribers."""
    hub = CameraHub(IngestConfig(hw_decode="off"))
    await hub.start()
    source = SourceConfig(url=str(path), loop=False, realtime=True)
    subs = [hub.subscribe(source, target_fps=SAMPLE_FPS) for _ in range(subscribers)]
    taken = [0] * subscribers

    async def consume(index: int) -> None:
        while True:
            frame = await subs[index].next_frame(timeout=2.0)
            if frame is None:
                return
            taken[index] += 1

    started = time.process_time()
    await asyncio.wait_for(
        asyncio.gather(*(consume(i) for i in range(subscribers))), timeout=seconds + 30
    )
    cpu = time.process_time() - started
    conversions = subs[0].status.conversions
    for sub in subs:
        await sub.close()
    await hub.stop()
    return cpu, min(taken), conversions


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sizes", default="1920x1080,1280x720")
    parser.add_argument("--repeats", type=int, default=3, help="floor runs (median)")
    args = parser.parse_args()
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            width, height = (int(v) for v in size.lower().split("x"))
            clip = Path(tmp) / f"clip_{width}x{height}.mp4"
            encode_clip(clip, width, height, args.seconds)
            floors = [floor_cpu(clip) for _ in range(args.repeats)]
            floor = statistics.median(f[0] for f in floors)
            one, taken_one, conv_one = asyncio.run(hub_cpu(clip, 1, args.seconds))
            ten, taken_ten, conv_ten = asyncio.run(hub_cpu(clip, 10, args.seconds))
            per_s = 1.0 / args.seconds
            rows.append(
                f"{size:>10} {height}p{FPS}  floor {floor * per_s * 100:6.1f}% "
                f"({floors[0][1]} conv)  hub x1 {one * per_s * 100:6.1f}% "
                f"({taken_one} taken, {conv_one} conv)  hub x10 {ten * per_s * 100:6.1f}% "
                f"({taken_ten} taken each, {conv_ten} conv)  "
                f"hub/floor {one / floor:5.2f}  x10/x1 {ten / one:5.2f}"
            )
    print(
        f"CPU per camera as % of one core, {args.seconds:.0f} s clips sampled at {SAMPLE_FPS} fps"
    )
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
