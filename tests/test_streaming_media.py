"""SegmentDecoder / SegmentEncoder on synthetic H.264 MPEG-TS segments (real PyAV, real x264)."""

from __future__ import annotations

import asyncio
import functools
import io
import itertools
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator
from fractions import Fraction

import av
import numpy as np
import pytest
from av.video.frame import PictureType

from pytrickle_worker.core.queues import DropOldestQueue
from pytrickle_worker.devtools.synthetic import moving_objects, render_scene
from pytrickle_worker.media.mpegts import TS_TIME_BASE, EncodedSegment
from pytrickle_worker.media.segment_decoder import DecodedVideoFrame, SegmentDecoder
from pytrickle_worker.media.segment_encoder import EncoderSettings, SegmentEncoder, encode_segments
from pytrickle_worker.processing import VideoFrame

W, H, FPS = 320, 180, 30
TICKS = 90_000 // FPS
N = 150  # 5 s: segments of 60, 60 and 30 frames


def scene_frame(index: int, width: int = W, height: int = H) -> VideoFrame:
    rgb = render_scene(width, height, moving_objects(index, width, height, FPS), seed=index)
    return VideoFrame(rgb, index * TICKS, TS_TIME_BASE)


@functools.cache
def synthetic_segments(count: int = N, width: int = W, height: int = H) -> tuple[bytes, ...]:
    """``count`` frames of the moving-objects scene, encoded by our encoder (2 s GOPs)."""
    return tuple(encode_segments(scene_frame(i, width, height) for i in range(count)))


def decode_all(data: bytes) -> list[av.VideoFrame]:
    with av.open(io.BytesIO(data), format="mpegts") as container:
        return list(container.decode(video=0))


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def decode_segments(
    segments: tuple[bytes, ...] | list[bytes], decoder: SegmentDecoder, chunk: int = 7777
) -> list[DecodedVideoFrame]:
    decoder.start()
    for segment in segments:
        assert await decoder.feed_segment(chunked(segment, chunk))
    decoder.end_input()
    frames: list[DecodedVideoFrame] = []
    while (frame := await decoder.next_frame()) is not None:
        frames.append(frame)
    assert await decoder.wait_ended(5)
    return frames


def av_ts(seconds: float = 4.0) -> bytes:
    """One MPEG-TS with H.264 video and mono AAC audio (48 kHz), made by plain PyAV."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mpegts") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        video.options = {"preset": "ultrafast", "tune": "zerolatency"}
        audio = container.add_stream("aac", rate=48_000)
        audio.layout = "mono"
        samples = 0
        for i in range(round(seconds * FPS)):
            frame = av.VideoFrame.from_ndarray(scene_frame(i).rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            container.mux(video.encode(frame))
            while samples < (i + 1) * 48_000 // FPS:
                tone = np.sin(np.arange(samples, samples + 1024) / 20.0).astype(np.float32)
                chunk = av.AudioFrame.from_ndarray(tone[None, :], format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 48_000, samples
                chunk.time_base = Fraction(1, 48_000)
                samples += 1024
                container.mux(audio.encode(chunk))
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
    return buffer.getvalue()


# ---------------------------------------------------------------------------- encoder
def test_encode_segments_cuts_one_standalone_segment_per_gop() -> None:
    segments = synthetic_segments()
    assert len(segments) == 3
    counts = []
    for index, data in enumerate(segments):
        assert data[0] == 0x47  # a TS packet, PAT first
        frames = decode_all(data)  # decodes on its own: PAT/PMT, SPS/PPS, IDR
        counts.append(len(frames))
        assert frames[0].key_frame
        assert frames[0].pict_type == PictureType.I
        assert sum(f.key_frame for f in frames) == 1
        assert all((f.width, f.height) == (W, H) for f in frames)
        pts = [f.pts for f in frames]
        assert pts == sorted(set(pts))
        assert pts[0] == index * 2 * 90_000  # an IDR every 2 s of pts
    assert counts == [60, 60, 30]
    every = [f.pts for data in segments for f in decode_all(data)]
    assert every == [i * TICKS for i in range(N)]  # input pts kept, 90 kHz


def test_encoder_has_no_b_frames_and_keeps_picture_close_to_input() -> None:
    frames = decode_all(synthetic_segments()[0])
    assert all(f.pict_type in (PictureType.I, PictureType.P) for f in frames)
    source = scene_frame(10).rgb.astype(np.int16)
    decoded = frames[10].to_ndarray(format="rgb24").astype(np.int16)
    assert float(np.abs(decoded - source).mean()) < 8.0


def test_encoder_even_size_rescaling_and_pts_jump_back() -> None:
    frames = [scene_frame(i, 321, 181) for i in range(40)]
    frames[20] = VideoFrame(render_scene(640, 360, []), frames[20].pts, TS_TIME_BASE)
    # a publisher restart: pts start over
    frames += [VideoFrame(f.rgb, f.pts, TS_TIME_BASE) for f in frames[:30]]
    decoded = [f for data in encode_segments(frames) for f in decode_all(data)]
    assert len(decoded) == 70
    assert {(f.width, f.height) for f in decoded} == {(320, 180)}
    pts = [f.pts for f in decoded]
    assert all(b > a for a, b in itertools.pairwise(pts))
    assert pts[40] == pts[39] + TICKS  # the jump back continues one frame later


async def test_segment_encoder_streams_a_segment_while_it_is_written() -> None:
    encoder = SegmentEncoder(frame_queue_size=N)
    encoder.start()
    for i in range(10):
        assert encoder.put_frame(scene_frame(i))
    first = await asyncio.wait_for(encoder.next_segment(), 5)
    assert first is not None and first.index == 1 and first.start_pts == 0
    chunks = first.chunks()
    head = await asyncio.wait_for(anext(chunks), 5)  # bytes before the GOP is complete
    assert head[0] == 0x47 and not first.done
    for i in range(10, N):
        encoder.put_frame(scene_frame(i))
    await encoder.close()
    rest = [chunk async for chunk in chunks]
    assert first.done and head + b"".join(rest) == first.data()
    segments: list[EncodedSegment] = [first]
    while (segment := await encoder.next_segment()) is not None:
        segments.append(segment)
    assert [s.frames for s in segments] == [60, 60, 30]
    assert [s.start_pts for s in segments] == [0, 180_000, 360_000]
    for segment in segments:
        frames = decode_all(await segment.read_all())
        assert frames[0].key_frame and len(frames) == segment.frames
    assert encoder.frames_encoded == N and encoder.frames_dropped == 0
    assert encoder.error is None and encoder.ended


async def test_segment_encoder_drops_the_oldest_frames_when_behind() -> None:
    encoder = SegmentEncoder(frame_queue_size=3)  # not started: nothing is consumed
    for i in range(10):
        encoder.put_frame(scene_frame(i))
    assert encoder.frames_dropped == 7
    encoder.start()
    await encoder.close()
    segments = [s async for s in _segments(encoder)]
    frames = [f for s in segments for f in decode_all(s.data())]
    assert [f.pts for f in frames] == [7 * TICKS, 8 * TICKS, 9 * TICKS]


async def _segments(encoder: SegmentEncoder) -> AsyncIterator[EncodedSegment]:
    while (segment := await encoder.next_segment()) is not None:
        yield segment


def test_bitrate_mode_and_codec_options() -> None:
    settings = EncoderSettings(bitrate=400_000, preset="veryfast")
    options = settings.codec_options()
    assert options["tune"] == "zerolatency" and options["forced-idr"] == "1"
    assert "crf" not in options and "bframes=0" in options["x264-params"]
    frames = [
        f
        for data in encode_segments([scene_frame(i) for i in range(30)], settings)
        for f in decode_all(data)
    ]
    assert len(frames) == 30


# ---------------------------------------------------------------------------- decoder
async def test_decoder_round_trip_over_consecutive_segments() -> None:
    decoder = SegmentDecoder(frame_queue_size=N, name="req-7")
    started = time.time()
    frames = await decode_segments(synthetic_segments(), decoder)
    assert len(frames) == N
    # The one frame type: stream id and wall-clock capture time, in decode order.
    assert {f.stream_id for f in frames} == {"req-7"}
    captured = [f.capture_time for f in frames]
    assert all(c is not None and started <= c <= time.time() for c in captured), captured
    assert captured == sorted(captured)
    assert [f.pts for f in frames] == [i * TICKS for i in range(N)]
    assert all(f.time_base == TS_TIME_BASE for f in frames)
    assert [f.index for f in frames] == list(range(1, N + 1))
    assert all(f.rgb.shape == (H, W, 3) and f.rgb.dtype == np.uint8 for f in frames)
    assert all(f.rgb.flags.writeable for f in frames)
    diff = np.abs(frames[75].rgb.astype(np.int16) - scene_frame(75).rgb.astype(np.int16))
    assert float(diff.mean()) < 8.0
    assert decoder.info is not None and (decoder.info.width, decoder.info.height) == (W, H)
    assert decoder.info.audio_codec is None
    assert decoder.error is None and decoder.restarts == 0 and decoder.frames.dropped == 0
    # VideoFrame-compatible
    VideoFrame(frames[0].rgb, frames[0].pts, frames[0].time_base)


async def test_decoder_drops_the_oldest_frames_for_a_slow_consumer() -> None:
    decoder = SegmentDecoder(frame_queue_size=4)
    decoder.start()
    for segment in synthetic_segments():
        await decoder.feed_segment([segment])
    decoder.end_input()
    assert await decoder.wait_ended(10)  # nobody read meanwhile
    frames = [f async for f in _frames(decoder)]
    assert [f.pts for f in frames] == [i * TICKS for i in range(N - 4, N)]
    assert decoder.frames.dropped == N - 4 and decoder.frames_decoded == N


async def _take(decoder: SegmentDecoder, count: int, delay_s: float) -> list[DecodedVideoFrame]:
    """``count`` frames, read by a consumer that needs ``delay_s`` per frame."""
    taken: list[DecodedVideoFrame] = []
    while len(taken) < count:
        frame = await asyncio.wait_for(decoder.next_frame(), 10)
        assert frame is not None
        taken.append(frame)
        await asyncio.sleep(delay_s)
    return taken


async def test_a_burst_at_the_live_edge_waits_for_the_consumer() -> None:
    """A whole segment at once (a -2 start): nothing is dropped, the decoder waits."""
    decoder = SegmentDecoder(frame_queue_size=4)
    decoder.start()
    first = synthetic_segments()[0]  # 60 frames
    await decoder.feed_segment([first])
    frames = await _take(decoder, 50, 0.005)  # the demuxer may hold the last few back
    decoder.end_input()
    frames += [f async for f in _frames(decoder)]
    assert [f.pts for f in frames] == [i * TICKS for i in range(60)]
    assert decoder.frames.dropped == 0


async def test_a_consumer_behind_by_a_segment_drops_the_oldest_to_catch_up() -> None:
    decoder = SegmentDecoder(frame_queue_size=4)
    decoder.start()
    for segment in synthetic_segments():  # 3 segments queued: the consumer is behind
        await decoder.feed_segment([segment])
    frames = await _take(decoder, 30, 0.02)  # 50 fps: slower than decoding
    assert decoder.frames.dropped > 0  # frames of the older segments were skipped
    # At the newest segment (nothing newer is arriving) the decoder waits again: the frames
    # of the last segment come through one after another.
    last = [f.pts // TICKS for f in frames if f.pts >= 120 * TICKS]
    assert last and last == list(range(last[0], last[0] + len(last)))
    await decoder.close()


async def _frames(decoder: SegmentDecoder) -> AsyncIterator[DecodedVideoFrame]:
    while (frame := await decoder.next_frame()) is not None:
        yield frame


async def test_decoder_max_fps_and_output_size() -> None:
    decoder = SegmentDecoder(frame_queue_size=N, max_fps=10, output_size=(100, 120))
    frames = await decode_segments(synthetic_segments(), decoder)
    assert len(frames) == 50 and decoder.frames_skipped == 100
    assert [f.pts for f in frames] == [i * 3 * TICKS for i in range(50)]
    assert all(f.rgb.shape == (120, 100, 3) and f.rgb.flags.c_contiguous for f in frames)


async def test_an_extreme_shape_is_cropped_before_it_is_scaled() -> None:
    """A 16x4000 input covering 64x64: scaled whole it would be 64x16000 first (3 MB here; a
    16000x13000 one, 2.5 GB); cropped first, only its centre, rows 1992-2008, is scaled."""
    rows = np.linspace(0, 255, 4000).astype(np.uint8)  # brightness grows down the frame
    rgb = np.repeat(rows[:, None, None], 16, axis=1).repeat(3, axis=2)
    segments = encode_segments(VideoFrame(rgb, i * TICKS, TS_TIME_BASE) for i in range(4))
    decoder = SegmentDecoder(frame_queue_size=N, output_size=(64, 64))
    tracemalloc.start()
    try:
        frames = await decode_segments(segments, decoder)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert frames and all(f.rgb.shape == (64, 64, 3) and f.rgb.flags.c_contiguous for f in frames)
    top, bottom = frames[0].rgb[0].mean(), frames[0].rgb[-1].mean()
    assert abs(top - rows[1992]) < 3 and abs(bottom - rows[2007]) < 3  # the centre, whole
    assert peak < 1_500_000, peak  # never the 3 MB of the whole frame scaled


async def test_decoder_drops_whole_queued_segments_when_its_input_is_full() -> None:
    segments = synthetic_segments()
    decoder = SegmentDecoder(
        frame_queue_size=N, max_buffer_bytes=len(segments[0]) + len(segments[1]) // 2
    )
    for segment in segments:  # the thread is not running yet: nothing is read
        assert await asyncio.wait_for(decoder.feed_segment(chunked(segment, 4096)), 5)
    assert decoder.segments_dropped >= 1
    frames = await decode_segments([], decoder)
    # The first segment went; decoding starts cleanly at the next IDR.
    assert frames and frames[0].pts == decoder.segments_dropped * 60 * TICKS
    assert [f.pts for f in frames] == [frames[0].pts + i * TICKS for i in range(len(frames))]
    assert decoder.decode_errors == 0


async def test_decoder_skips_garbage_before_the_stream() -> None:
    garbage = np.random.default_rng(1).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    decoder = SegmentDecoder(frame_queue_size=N)
    frames = await decode_segments((garbage, *synthetic_segments()), decoder)
    assert len(frames) >= N - 60  # at worst the first GOP is lost
    assert frames[-1].pts == (N - 1) * TICKS


async def test_decoder_close_without_input_ends_promptly() -> None:
    decoder = SegmentDecoder()
    decoder.start()
    await asyncio.sleep(0.05)
    await asyncio.wait_for(decoder.close(), 5)
    assert decoder.ended and await decoder.next_frame() is None
    assert not await decoder.feed(b"\x47" * 188)


async def test_audio_is_remuxed_into_the_output_segments() -> None:
    source = av_ts()
    with av.open(io.BytesIO(source), format="mpegts") as container:
        audio_in = sum(1 for p in container.demux(audio=0) if p.size)
    decoder = SegmentDecoder(frame_queue_size=N)
    decoder.start()
    await decoder.feed_segment(chunked(source, 10_000))
    decoder.end_input()
    encoder: SegmentEncoder | None = None
    count = 0
    while (frame := await decoder.next_frame()) is not None:
        if encoder is None:
            assert decoder.audio_stream is not None
            encoder = SegmentEncoder(frame_queue_size=N, audio_template=decoder.audio_stream)
            encoder.start()
            decoder.set_audio_sink(encoder.put_audio)
        encoder.put_frame(frame)
        count += 1
    assert encoder is not None and count == 120
    assert decoder.info is not None and decoder.info.audio_codec == "aac"
    await encoder.close()
    segments = [s async for s in _segments(encoder)]
    assert len(segments) == 2
    audio_out = 0
    for segment in segments:
        with av.open(io.BytesIO(segment.data()), format="mpegts") as container:
            assert [s.type for s in container.streams] == ["video", "audio"]
            packets = [(p.stream.type, p.pts, p.is_keyframe) for p in container.demux() if p.size]
        video = [(pts, key) for kind, pts, key in packets if kind == "video"]
        audio = [pts for kind, pts, _ in packets if kind == "audio"]
        assert video[0][1], "a segment starts with its IDR"
        assert audio, "every segment carries its audio"
        audio_out += len(audio)
        first = video[0][0]
        assert first is not None
        assert all(pts is not None and abs(pts - first) < 3 * 90_000 for pts in audio)
    assert audio_out == encoder.audio_muxed
    assert audio_out >= audio_in - 5  # only what trails the last video frame may stay behind
    # the audio still decodes
    with av.open(io.BytesIO(segments[1].data()), format="mpegts") as container:
        assert sum(f.samples for f in container.decode(audio=0)) > 48_000


# ---------------------------------------------------------------------------- queue
async def test_drop_oldest_queue_across_threads() -> None:
    queue: DropOldestQueue[int] = DropOldestQueue(3)
    assert queue.put(1) is None and queue.put(2) is None and queue.put(3) is None
    assert queue.put(4) == 1 and queue.dropped == 1 and len(queue) == 3
    assert await queue.get() == 2

    await asyncio.wait_for(queue.wait_for_room(), 1)  # 2 of 3: room already

    got: list[int | None] = []

    def consumer() -> None:
        while (item := queue.get_blocking(2)) is not None:
            got.append(item)

    thread = threading.Thread(target=consumer)
    thread.start()
    for i in range(5, 8):
        queue.put(i)
        await asyncio.sleep(0.01)
    queue.close()
    await asyncio.to_thread(thread.join, 5)
    assert got == [3, 4, 5, 6, 7]
    assert queue.put(9) == 9 and await queue.get() is None


async def test_drop_oldest_queue_wakes_an_async_consumer_from_a_thread() -> None:
    queue: DropOldestQueue[str] = DropOldestQueue(2)
    waiting = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0.01)
    threading.Thread(target=queue.put, args=("x",)).start()
    assert await asyncio.wait_for(waiting, 2) == "x"
    queue.put("a")
    queue.put("b")
    room = asyncio.ensure_future(queue.wait_for_room())
    await asyncio.sleep(0.01)
    assert not room.done()
    threading.Thread(target=queue.get_nowait).start()
    await asyncio.wait_for(room, 2)


@pytest.mark.parametrize("size", [0, -1])
def test_drop_oldest_queue_needs_a_positive_size(size: int) -> None:
    with pytest.raises(ValueError, match="maxsize"):
        DropOldestQueue[int](size)
