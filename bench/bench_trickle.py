"""Throughput of the trickle media path against bare PyAV, measured in the same run.

    python bench/bench_trickle.py [--seconds 10] [--size 1280x720] [--runs 3]

Input: ``--seconds`` of the synthetic moving-objects scene (``render_scene`` /
``moving_objects``) at 30 fps, encoded by our ``encode_segments`` into 2 s MPEG-TS segments
(H.264, superfast/zerolatency, no B-frames), made once. Then, interleaved per round:

* ``bare``: plain PyAV on one thread: one demuxer over the concatenated segments, decode,
  ``to_ndarray("rgb24")``, ``from_ndarray`` + libx264 with the same settings into one TS.
  The same pixel work as ours (YUV→RGB→YUV), none of the pipeline;
* ``bare-yuv``: the same without the RGB round trip (decode → encode of YUV frames): the
  floor of any decode+encode;
* ``ours``: ``SegmentDecoder`` (fed the segments in 64 KB chunks) → ``PassthroughProcessor``
  → ``SegmentEncoder`` (one TS per GOP), as ``StreamSession`` wires them (decoder and encoder
  threads, bounded queues, backpressure from the encoder), queues large enough to lose no
  frame, so the figure is throughput and not dropping;
* ``session``: a whole ``StreamSession`` over a loopback ``TrickleServer``: segments POSTed
  with the trickle publisher, output read by a trickle subscriber, until the output ends.

Each figure is frames / wall seconds (first input byte to last output byte), the median over
``--runs`` rounds; ratios are ours / bare.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from fractions import Fraction
from typing import Any

import av
from av.video.frame import PictureType

from processors.passthrough import PassthroughProcessor
from pytrickle_worker.devtools.synthetic import moving_objects, render_scene
from pytrickle_worker.devtools.trickle_server import TrickleServer
from pytrickle_worker.frontdoors.streamserver.schemas import StartRequest
from pytrickle_worker.frontdoors.streamserver.session import StreamSession, StreamSessionConfig
from pytrickle_worker.media.mpegts import TS_TIME_BASE
from pytrickle_worker.media.segment_decoder import SegmentDecoder
from pytrickle_worker.media.segment_encoder import EncoderSettings, SegmentEncoder, encode_segments
from pytrickle_worker.processing import VideoFrame
from pytrickle_worker.transport.trickle import TricklePublisher, TrickleSubscriber

FPS = 30
CHUNK = 64 * 1024


def make_segments(width: int, height: int, seconds: float) -> list[bytes]:
    frames = (
        VideoFrame(
            render_scene(width, height, moving_objects(i, width, height, FPS), seed=i % 8),
            i * 90_000 // FPS,
            TS_TIME_BASE,
        )
        for i in range(round(seconds * FPS))
    )
    return encode_segments(frames, EncoderSettings())


def bare(segments: list[bytes], rgb: bool) -> int:
    """Plain PyAV decode (+ RGB round trip) + encode, one thread; returns frames encoded."""
    settings = EncoderSettings()
    out = io.BytesIO()
    count = 0
    with (
        av.open(io.BytesIO(b"".join(segments)), format="mpegts") as source,
        av.open(out, "w", format="mpegts") as sink,
    ):
        video_in = source.streams.video[0]
        video_in.thread_type = "AUTO"
        stream = sink.add_stream("libx264", rate=FPS)
        stream.width = video_in.codec_context.width
        stream.height = video_in.codec_context.height
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, 90_000)
        stream.codec_context.max_b_frames = 0
        stream.codec_context.gop_size = 2 * FPS
        stream.options = settings.codec_options() | {"x264-params": "scenecut=0:bframes=0"}
        for frame in source.decode(video_in):
            if rgb:
                pixels = frame.to_ndarray(format="rgb24")
                encoded = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(
                    format="yuv420p"
                )
            else:
                encoded = frame
            encoded.pts, encoded.time_base = frame.pts, frame.time_base
            encoded.pict_type = PictureType.NONE
            sink.mux(stream.encode(encoded))
            count += 1
        sink.mux(stream.encode(None))
    return count


async def ours(segments: list[bytes]) -> int:
    """SegmentDecoder → passthrough → SegmentEncoder, wired as StreamSession does."""
    processor = PassthroughProcessor()
    await processor.on_stream_start({})
    decoder = SegmentDecoder(frame_queue_size=1024)
    decoder.start()
    encoder = SegmentEncoder(frame_queue_size=8)
    encoder.start()

    async def feed() -> None:
        for segment in segments:
            await decoder.feed_segment(
                [segment[i : i + CHUNK] for i in range(0, len(segment), CHUNK)]
            )
        decoder.end_input()

    async def process() -> None:
        while (decoded := await decoder.next_frame()) is not None:
            result = await processor.process_video_async(
                VideoFrame(decoded.rgb, decoded.pts, decoded.time_base)
            )
            if result is not None:
                await encoder.frames_in.wait_for_room()
                encoder.put_frame(result)
        await encoder.close(flush=True, timeout=60)

    async def drain() -> int:
        size = 0
        while (segment := await encoder.next_segment()) is not None:
            size += len(await segment.read_all())
        return size

    await asyncio.gather(feed(), process(), drain())
    assert decoder.frames.dropped == 0 and encoder.frames_dropped == 0
    return encoder.frames_encoded


async def session(segments: list[bytes]) -> int:
    """A whole StreamSession over loopback trickle; returns the frames it encoded."""
    server = TrickleServer()
    port = await server.start("127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}/bench"
    server.create_channel("bench", "video/MP2T")
    server.create_channel("bench-out", "video/MP2T")
    request = StartRequest(
        gateway_request_id="bench", subscribe_url=base, publish_url=base + "-out"
    )
    config = StreamSessionConfig(start_seq=0, frame_queue_size=1024, segment_queue_size=64)
    processor = PassthroughProcessor()
    await processor.on_stream_start({})
    stream = StreamSession(request, processor, config=config)
    try:
        await stream.start()

        async def read_output() -> None:
            async with TrickleSubscriber(base + "-out", start_seq=0) as subscriber:
                while (segment := await subscriber.next_segment()) is not None:
                    await segment.read_all(256 * 1024 * 1024)

        reader = asyncio.ensure_future(read_output())
        async with TricklePublisher(base, "video/mp2t") as publisher:
            for segment in segments:
                await publisher.publish(segment)
        await stream.wait_closed()
        await reader
        stats = stream.stats()
        assert stats.frames_dropped_before_processing == 0
        return int(stats.frames_encoded)
    finally:
        await stream.stop()
        await server.stop()


def timed(run: Callable[[], int]) -> tuple[float, int]:
    started = time.perf_counter()
    frames = run()
    return time.perf_counter() - started, frames


def timed_async(run: Callable[[], Coroutine[Any, Any, int]]) -> tuple[float, int]:
    return timed(lambda: asyncio.run(run()))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    started = time.perf_counter()
    segments = make_segments(width, height, args.seconds)
    total = sum(map(len, segments))
    expected = round(args.seconds * FPS)
    print(
        f"input: {expected} frames {width}x{height}@{FPS} in {len(segments)} segments, "
        f"{total / 1e6:.1f} MB (made in {time.perf_counter() - started:.1f} s)"
    )

    cases: dict[str, Callable[[], tuple[float, int]]] = {
        "bare": lambda: timed(lambda: bare(segments, rgb=True)),
        "bare-yuv": lambda: timed(lambda: bare(segments, rgb=False)),
        "ours": lambda: timed_async(lambda: ours(segments)),
        "session": lambda: timed_async(lambda: session(segments)),
    }
    fps: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(1, args.runs + 1):
        line: list[str] = []
        for name, case in cases.items():
            seconds, frames = case()
            if frames != expected:
                print(f"{name}: {frames} frames, expected {expected}", file=sys.stderr)
                return 1
            fps[name].append(frames / seconds)
            line.append(f"{name} {frames / seconds:6.1f} fps")
        print(f"round {round_}: " + ", ".join(line))

    median = {name: statistics.median(values) for name, values in fps.items()}
    print(f"\nmedian of {args.runs} runs (frames per second, wall clock):")
    for name, value in median.items():
        print(f"  {name:9s} {value:7.1f} fps")
    print(f"  ours / bare          = {median['ours'] / median['bare']:.3f}")
    print(f"  ours / bare-yuv      = {median['ours'] / median['bare-yuv']:.3f}")
    print(f"  session / bare       = {median['session'] / median['bare']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
