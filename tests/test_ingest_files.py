"""Camera hub on local files generated with PyAV: pacing, sampling, crops, resolution changes,
corrupt data, end of file, retries, NVDEC fallback, sharing and leaks."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import pytest_asyncio

from pytrickle_worker.core.cpus import host_cores
from pytrickle_worker.core.hardware import count_gpus as nvml_gpu_count
from pytrickle_worker.sources import (
    CameraHub,
    Crop,
    CropError,
    HubNotStartedError,
    IngestConfig,
    IngestError,
    SourceConfig,
)
from tests.helpers import collect, os_thread_name

FPS = 15

FAST = {
    "hw_decode": "off",
    "open_timeout_s": 3.0,
    "read_timeout_s": 2.0,
    "stall_timeout_s": 2.0,
    "backoff_initial_s": 0.05,
    "reconnect_interval_sec": 0.2,
}


# -- media generated with PyAV ----------------------------------------------------------------


def _frame(index: int, width: int, height: int) -> av.VideoFrame:
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:, :, 0] = (index * 8) % 256
    rgb[:, : width // 2, 1] = 255
    return av.VideoFrame.from_ndarray(rgb, format="rgb24")


def encode_h264(
    path: Path, *, frames: int, width: int = 320, height: int = 240, fmt: str | None = None
) -> Path:
    with av.open(str(path), mode="w", format=fmt) as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = FPS
        stream.codec_context.options = {"preset": "ultrafast", "tune": "zerolatency"}
        for index in range(frames):
            frame = _frame(index, width, height)
            frame.pts = index
            frame.time_base = Fraction(1, FPS)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ingest-media")


@pytest.fixture(scope="module")
def clip(media_dir: Path) -> Path:
    """320x240, 15 fps, 2 s of H.264 in MP4."""
    return encode_h264(media_dir / "clip.mp4", frames=2 * FPS)


@pytest.fixture(scope="module")
def second_clip(clip: Path, media_dir: Path) -> Path:
    """The same clip under another name: another camera."""
    return Path(shutil.copy(clip, media_dir / "second.mp4"))


@pytest.fixture(scope="module")
def resizing_clip(media_dir: Path) -> Path:
    """MPEG-TS: 1 s at 320x240, then 1 s at 160x120 in the same stream."""
    first = encode_h264(media_dir / "a.ts", frames=FPS, fmt="mpegts")
    second = encode_h264(media_dir / "b.ts", frames=FPS, width=160, height=120, fmt="mpegts")
    joined = media_dir / "resize.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    return joined


@pytest.fixture(scope="module")
def corrupt_clip(media_dir: Path) -> Path:
    """MJPEG in Matroska, 3 s: five packets are random bytes, and the file is cut mid-packet."""
    rng = np.random.default_rng(3)
    path = media_dir / "corrupt.mkv"
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("mjpeg", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuvj420p"

        def mux(packets: list[av.Packet], index: int) -> None:
            for packet in packets:
                if 10 <= index < 30 and index % 4 == 0 and packet.size:
                    garbage = av.Packet(rng.integers(0, 256, packet.size, np.uint8).tobytes())
                    garbage.pts, garbage.dts = packet.pts, packet.dts
                    garbage.time_base, garbage.stream = packet.time_base, stream
                    out.mux(garbage)
                else:
                    out.mux(packet)

        for index in range(3 * FPS):
            frame = _frame(index, 320, 240)
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            mux(stream.encode(frame), index)
        mux(stream.encode(), -1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 9 // 10 + 13])
    return path


@pytest_asyncio.fixture
async def hub() -> AsyncIterator[CameraHub]:
    async with CameraHub(IngestConfig.model_validate(FAST)) as camera_hub:
        yield camera_hub


async def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.02)


def ingest_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ingest ")]


# -- frames, rate, sampling -------------------------------------------------------------------


async def test_file_frames_arrive_at_size_and_native_rate(hub: CameraHub, clip: Path) -> None:
    sub = hub.subscribe(SourceConfig(url=str(clip), loop=True), target_fps=100)
    first = await sub.next_frame(timeout=5)
    assert first is not None
    frames = await collect(sub, 2.0)
    assert 24 <= len(frames) <= 34  # paced like a 15 fps camera, not decoded flat out
    assert all(f.rgb.shape == (240, 320, 3) and f.rgb.dtype == np.uint8 for f in frames)
    assert all(
        (f.width, f.height, f.source_width, f.source_height) == (320, 240, 320, 240) for f in frames
    )
    seqs = [first.seq] + [f.seq for f in frames]
    assert seqs == sorted(set(seqs))
    assert frames[-1].capture_time > first.capture_time
    assert not frames[0].rgb.flags.writeable
    status = sub.status
    assert status.online and status.kind == "stream"
    assert (status.width, status.height, status.codec, status.decoder) == (320, 240, "h264", "h264")
    assert not status.hw_decoder
    assert status.fps_decoded == pytest.approx(FPS, rel=0.25)
    assert status.fps_in == pytest.approx(FPS, rel=0.25)
    assert status.subscribers == 1
    await sub.close()


async def test_target_fps_sampling_never_repeats(hub: CameraHub, clip: Path) -> None:
    source = SourceConfig(url=str(clip), loop=True)
    slow = hub.subscribe(source, target_fps=2)
    fast = hub.subscribe(source, target_fps=5)
    assert await slow.next_frame(timeout=5) is not None
    assert await fast.next_frame(timeout=5) is not None
    slow_frames, fast_frames = await asyncio.gather(collect(slow, 3.0), collect(fast, 3.0))
    assert 5 <= len(slow_frames) <= 7  # ~2 fps
    assert 13 <= len(fast_frames) <= 16  # ~5 fps
    for frames, fps in ((slow_frames, 2), (fast_frames, 5)):
        seqs = [f.seq for f in frames]
        assert len(seqs) == len(set(seqs)) and seqs == sorted(seqs)
        gaps = np.diff([f.capture_time for f in frames])
        assert gaps.min() >= 1 / fps - 1 / FPS - 0.02
    status = slow.status
    taken = {f.seq for f in slow_frames + fast_frames}
    # each taken frame was converted once, whoever took it; frames nobody took never were
    assert status.conversions <= len(taken) + 2  # +2: the two first frames taken above
    assert status.conversions < status.frames_decoded
    assert status.frames_delivered == len(slow_frames) + len(fast_frames) + 2
    await slow.close()
    await fast.close()


async def test_skipped_frames_split_into_sampler_and_overload(hub: CameraHub, clip: Path) -> None:
    """A subscriber that keeps up only skips what its fps sampling skips; one that is busy
    longer than its interval also misses frames it would have taken (overload)."""
    source = SourceConfig(url=str(clip), loop=True)
    idle = hub.subscribe(source, target_fps=5)
    busy = hub.subscribe(source, target_fps=5)
    assert await idle.next_frame(timeout=5) is not None
    assert await busy.next_frame(timeout=5) is not None

    async def slow_consumer(seconds: float) -> int:
        taken = 0
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            if await busy.next_frame(timeout=1) is not None:
                taken += 1
                await asyncio.sleep(0.6)  # "processing" for three intervals of 5 fps
        return taken

    idle_frames, busy_taken = await asyncio.gather(collect(idle, 3.0), slow_consumer(3.0))
    for sub in (idle, busy):
        assert sub.frames_skipped == sub.frames_skipped_sampler + sub.frames_skipped_overload
    # 15 fps sampled at 5 fps: about two of every three frames are the sampler's.
    assert len(idle_frames) >= 12
    assert idle.frames_skipped_sampler >= 1.5 * len(idle_frames) - 3
    assert idle.frames_skipped_overload <= 3  # at most a late wake-up or two
    # Busy 0.6 s per frame (~9 frames): ~2 replaced before the due time, ~6 after it.
    assert busy_taken >= 3
    assert busy.frames_skipped_overload > busy.frames_skipped_sampler > 0
    await idle.close()
    await busy.close()


async def test_latest_does_not_consume(hub: CameraHub, clip: Path) -> None:
    sub = hub.subscribe(SourceConfig(url=str(clip), loop=True), target_fps=10)
    first = await sub.next_frame(timeout=5)
    assert first is not None
    peek = await sub.latest()
    assert peek is not None and peek.seq >= first.seq
    following = await sub.next_frame(timeout=2)
    assert following is not None and following.seq > first.seq
    await sub.close()
    assert await sub.latest() is None
    assert await sub.next_frame(timeout=0.1) is None


async def test_close_wakes_a_waiting_next_frame(hub: CameraHub, clip: Path) -> None:
    source = SourceConfig(url=str(clip), loop=True)
    sub = hub.subscribe(source, target_fps=0.2)  # one frame every 5 s
    assert await sub.next_frame(timeout=5) is not None
    waiting = asyncio.create_task(sub.next_frame())
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await sub.close()
    assert await asyncio.wait_for(waiting, 2) is None
    assert time.monotonic() - started < 2
    assert sub.closed


# -- crops ------------------------------------------------------------------------------------


async def test_crop_validation_and_clipping(
    hub: CameraHub, clip: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = SourceConfig(url=str(clip), loop=True)
    with pytest.raises(CropError, match=r"\(50, 10, 40, 20\)"):
        hub.subscribe(source, target_fps=5, crop=Crop(x1=50, y1=10, x2=40, y2=20))
    assert hub.statuses() == []  # nothing was started for the refused subscriber

    # outside the frame: only the frame size reveals it -> next_frame raises, names both
    outside = hub.subscribe(source, target_fps=30, crop=Crop(x1=400, y1=0, x2=500, y2=100))
    with pytest.raises(CropError, match=r"\(400, 0, 500, 100\).*320x240"):
        await outside.next_frame(timeout=5)
    assert outside.error is not None and "320x240" in outside.error
    # once the size is known, the same crop is refused at subscribe time
    with pytest.raises(CropError, match="320x240"):
        hub.subscribe(source, target_fps=5, crop=Crop(x1=400, y1=0, x2=500, y2=100))

    inside = hub.subscribe(source, target_fps=30, crop=Crop(x1=10, y1=20, x2=110, y2=220))
    frame = await inside.next_frame(timeout=5)
    assert frame is not None
    assert frame.rgb.shape == (200, 100, 3) and (frame.width, frame.height) == (100, 200)
    assert (frame.source_width, frame.source_height) == (320, 240)

    caplog.set_level(logging.WARNING, logger="pytrickle_worker.sources")
    partial = hub.subscribe(source, target_fps=30, crop=Crop(x1=-20, y1=200, x2=100, y2=400))
    shapes = {f.rgb.shape for f in await collect(partial, 0.5)}
    assert shapes == {(40, 100, 3)}
    clipped_logs = [r for r in caplog.records if "clipped to (0, 200, 100, 240)" in r.message]
    assert len(clipped_logs) == 1  # once per subscription, not per frame
    # the crop view is cut from the shared full frame
    full = hub.subscribe(source, target_fps=30)
    whole = await full.next_frame(timeout=5)
    assert whole is not None and whole.rgb.shape == (240, 320, 3)
    for sub in (outside, inside, partial, full):
        await sub.close()


async def test_resolution_change_mid_stream(hub: CameraHub, resizing_clip: Path) -> None:
    sub = hub.subscribe(
        SourceConfig(url=str(resizing_clip)),
        target_fps=100,
        crop=Crop(x1=100, y1=0, x2=300, y2=100),
    )
    frames = await collect(sub, 2.6)
    sizes = [(f.source_width, f.source_height) for f in frames]
    assert (320, 240) in sizes and (160, 120) in sizes
    assert sizes.index((160, 120)) > sizes.index((320, 240))
    for f in frames:
        expected_width = 200 if f.source_width == 320 else 60  # clipped at the new size
        assert f.rgb.shape == (100, expected_width, 3)
    assert sub.status.finished
    assert (sub.status.width, sub.status.height) == (160, 120)
    await sub.close()


# -- faults -----------------------------------------------------------------------------------


async def test_corrupt_and_truncated_file_is_survived(hub: CameraHub, corrupt_clip: Path) -> None:
    sub = hub.subscribe(SourceConfig(url=str(corrupt_clip), realtime=False), target_fps=1000)
    frames = await collect(sub, 1.5)
    status = sub.status
    assert frames, status
    assert status.finished and not status.online
    assert status.corrupt_packets >= 3  # counted and skipped, not fatal
    assert status.frames_decoded >= 25
    assert status.last_error is None
    await sub.close()


async def test_end_of_file_and_loop(hub: CameraHub, clip: Path) -> None:
    once = hub.subscribe(SourceConfig(url=str(clip), realtime=False), target_fps=1000)
    await wait_until(lambda: once.status.finished)
    assert once.status.frames_decoded == 2 * FPS
    last = await once.next_frame(timeout=1)
    assert last is not None  # the last frame stays available
    assert await once.next_frame(timeout=0.3) is None  # and nothing newer comes
    await once.close()

    looping = hub.subscribe(SourceConfig(url=str(clip), realtime=False, loop=True), target_fps=5)
    await wait_until(lambda: looping.status.frames_decoded > 3 * 2 * FPS)
    assert looping.status.online and not looping.status.finished
    await looping.close()


async def test_a_video_over_the_pixel_limit_is_refused_before_decoding(clip: Path) -> None:
    limit = 320 * 240 - 1
    config = IngestConfig.model_validate({**FAST, "max_retries": 1, "max_video_pixels": limit})
    async with CameraHub(config) as hub:
        sub = hub.subscribe(SourceConfig(url=str(clip)), target_fps=5)
        await wait_until(lambda: sub.status.gave_up)
        status = sub.status
        assert status.frames_decoded == 0 and not status.online
        assert status.last_error == (
            f"the video is 320x240 (76800 pixels), over the limit of {limit} pixels "
            "(PTW_MAX_VIDEO_PIXELS)"
        )
        await sub.close()


async def test_a_picture_over_the_pixel_limit_mid_stream_is_never_decoded(
    media_dir: Path,
) -> None:
    """The header declares 160x120 (allowed); 320x240 pictures follow: FFmpeg refuses them
    before allocating one, and none reaches a subscriber."""
    small = encode_h264(media_dir / "small.ts", frames=FPS, width=160, height=120, fmt="mpegts")
    large = encode_h264(media_dir / "large.ts", frames=FPS, fmt="mpegts")
    growing = media_dir / "grow.ts"
    growing.write_bytes(small.read_bytes() + large.read_bytes())
    config = IngestConfig.model_validate({**FAST, "max_retries": 1, "max_video_pixels": 160 * 120})
    async with CameraHub(config) as hub:
        sub = hub.subscribe(SourceConfig(url=str(growing), realtime=False), target_fps=1000)
        frames = await collect(sub, 1.5)
        assert frames and {(f.source_width, f.source_height) for f in frames} == {(160, 120)}
        assert sub.status.width == 160
        await sub.close()


async def test_missing_file_retries_are_bounded(tmp_path: Path) -> None:
    config = IngestConfig.model_validate({**FAST, "max_retries": 2})
    async with CameraHub(config) as hub:
        sub = hub.subscribe(SourceConfig(url=str(tmp_path / "nope.mp4")), target_fps=5)
        await wait_until(lambda: sub.status.gave_up)
        status = sub.status
        assert not status.online
        assert status.reconnects == 2 and status.consecutive_failures == 3
        assert status.last_error is not None and "No such file" in status.last_error
        # subscribers are not torn down: they just get nothing
        assert await sub.next_frame(timeout=0.2) is None
        assert not sub.closed
        assert hub.statuses()[0].gave_up
        await sub.close()


async def test_a_cancelled_next_frame_is_cancelled_even_when_a_frame_wakes_it(
    tmp_path: Path,
) -> None:
    """The wake-up of a new frame and the cancellation of the waiting task (a subscription
    being stopped) land in the same loop tick. On Python 3.11, ``asyncio.wait_for`` returned
    the wake-up and dropped the cancellation, so the processing loop ran on after its stop
    (found by tests/test_cms_fuzz.py); every such wait must raise CancelledError."""
    async with CameraHub(IngestConfig.model_validate(FAST)) as hub:
        sub = hub.subscribe(SourceConfig(url=str(tmp_path / "never.mp4")), target_fps=5)
        for _ in range(50):
            waiting = asyncio.get_running_loop().create_task(sub.next_frame(timeout=5.0))
            while sub._entry.signal.waiting == 0:  # noqa: ASYNC110  # pyright: ignore[reportPrivateUsage] - until it waits
                await asyncio.sleep(0)
            sub._entry.signal.fire()  # pyright: ignore[reportPrivateUsage] - as the reader does
            await asyncio.sleep(0)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(waiting, 2.0)
        await sub.close()


@pytest.mark.parametrize(
    ("api", "reason"),
    [("cuvid", "h264_cuvid"), ("hwaccel", "NVDEC hwaccel for h264 cannot be created")],
)
async def test_forced_nvdec_falls_back_to_software(
    clip: Path, caplog: pytest.LogCaptureFixture, api: str, reason: str
) -> None:
    if nvml_gpu_count() > 0:
        pytest.skip("this host has a GPU: the fallback path is not exercised")
    caplog.set_level(logging.INFO, logger="pytrickle_worker.sources")
    config = IngestConfig.model_validate({**FAST, "hw_decode": "nvdec", "nvdec_api": api})
    async with CameraHub(config) as hub:
        assert hub.nvdec
        sub = hub.subscribe(SourceConfig(url=str(clip), realtime=False, loop=True), target_fps=30)
        frames = await collect(sub, 1.0)
        assert len(frames) >= 10
        assert frames[0].rgb.shape == (240, 320, 3)
        status = sub.status
        assert status.decoder == "h264" and not status.hw_decoder and status.online
        await sub.close()
    fallbacks = [r for r in caplog.records if "NVDEC is not usable" in r.message]
    assert len(fallbacks) == 1 and fallbacks[0].levelno == logging.INFO
    assert reason in fallbacks[0].getMessage()


async def test_auto_hw_decode_never_tries_nvdec_on_cpu_host(
    clip: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if nvml_gpu_count() > 0:
        pytest.skip("this host has a GPU")
    caplog.set_level(logging.DEBUG, logger="pytrickle_worker.sources")
    config = IngestConfig.model_validate({**FAST, "hw_decode": "auto"})
    async with CameraHub(config) as hub:
        assert not hub.nvdec
        sub = hub.subscribe(SourceConfig(url=str(clip), realtime=False), target_fps=30)
        assert await sub.next_frame(timeout=5) is not None
        await sub.close()
    assert not [r for r in caplog.records if "cuvid" in r.message or "NVDEC is not" in r.message]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- sharing, lifecycle, leaks ----------------------------------------------------------------


async def test_subscribers_share_one_reader(hub: CameraHub, clip: Path) -> None:
    before = len(ingest_threads())
    spellings = [str(clip), f"file://{clip}", str(clip.parent / "." / clip.name)]
    subs = [
        hub.subscribe(SourceConfig(url=spellings[i % 3], loop=True), target_fps=30)
        for i in range(5)
    ]
    assert len(hub.statuses()) == 1
    assert len(ingest_threads()) == before + 1
    results = await asyncio.gather(*(collect(s, 1.0) for s in subs))
    assert all(len(r) >= 8 for r in results)
    status = subs[0].status
    assert status.subscribers == 5
    taken = {f.seq for r in results for f in r}
    assert status.conversions == len(taken)  # one conversion per frame, however many took it
    assert status.frames_delivered == sum(len(r) for r in results) > len(taken)
    for sub in subs[:-1]:
        await sub.close()
    assert len(ingest_threads()) == before + 1  # still one subscriber left
    await subs[-1].close()
    await wait_until(lambda: len(ingest_threads()) == before)
    assert hub.statuses() == []


async def test_unconverted_frames_convert_only_on_use(hub: CameraHub, clip: Path) -> None:
    """``convert=False`` (the CMS door's detector path) hands over the decoded frame: nothing
    is converted to RGB until something reads ``rgb``; a cropped frame is converted as before."""
    source = SourceConfig(url=str(clip), loop=True)
    whole = hub.subscribe(source, target_fps=30)
    frames = [await whole.next_frame(timeout=5, convert=False) for _ in range(3)]
    assert all(f is not None and f.pixels is not None for f in frames)
    assert whole.status.conversions == 0
    last = frames[-1]
    assert last is not None and last.pixels is not None
    assert last.image is last.pixels and last.converted is None
    with last.pixels.decoded() as decoded:
        assert decoded is not None and (decoded.width, decoded.height) == (320, 240)
    rgb = await asyncio.to_thread(lambda: last.rgb)
    assert rgb.shape == (240, 320, 3) and not rgb.flags.writeable
    assert whole.status.conversions == 1 and last.pixels.rgb_ready is rgb

    cropped = hub.subscribe(source, target_fps=30, crop=Crop(x1=10, y1=20, x2=110, y2=220))
    frame = await cropped.next_frame(timeout=5, convert=False)
    assert frame is not None and frame.pixels is None and frame.converted is not None
    assert frame.rgb.shape == (200, 100, 3) and frame.image is frame.rgb
    await whole.close()
    await cropped.close()


async def test_subscribe_argument_errors(clip: Path) -> None:
    hub = CameraHub(IngestConfig.model_validate(FAST))
    with pytest.raises(HubNotStartedError):
        hub.subscribe(SourceConfig(url=str(clip)), target_fps=5)
    async with hub:
        with pytest.raises(IngestError, match="target_fps"):
            hub.subscribe(SourceConfig(url=str(clip)), target_fps=0)
        with pytest.raises(IngestError, match="target_fps"):
            hub.subscribe(SourceConfig(url=str(clip)), target_fps=float("nan"))
        sub = hub.subscribe(SourceConfig(url=str(clip), loop=True), target_fps=5)
    # hub.stop() closed the subscription and its reader
    assert sub.closed
    assert await sub.next_frame(timeout=0.1) is None
    assert not ingest_threads()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_no_thread_or_fd_leak_after_100_cycles(hub: CameraHub, clip: Path) -> None:
    source = SourceConfig(url=str(clip), loop=True)

    async def cycle() -> None:
        sub = hub.subscribe(source, target_fps=30, crop=Crop(x1=0, y1=0, x2=64, y2=64))
        frame = await sub.next_frame(timeout=5)
        assert frame is not None and frame.rgb.shape == (64, 64, 3)
        await sub.close()

    await cycle()  # warm up: conversion threads, codec tables
    await asyncio.sleep(0.1)
    threads_before = {t.ident for t in threading.enumerate()}
    fds_before = _open_fds()
    for _ in range(100):
        await cycle()
    await wait_until(lambda: not ingest_threads())
    await asyncio.sleep(0.1)
    new = [t.name for t in threading.enumerate() if t.ident not in threads_before]
    # the hub's conversion pool may grow up to its bound; nothing else may appear
    assert [name for name in new if not name.startswith("ingest-convert")] == []
    pool = [t for t in threading.enumerate() if t.name.startswith("ingest-convert")]
    assert len(pool) <= (hub.config.convert_threads or min(4, host_cores()))
    assert _open_fds() <= fds_before
    assert hub.statuses() == []


def os_thread_names() -> list[str]:
    """The OS names of this process's threads (``/proc/self/task/*/comm``)."""
    names: list[str] = []
    for tid in os.listdir("/proc/self/task"):
        try:
            names.append(os_thread_name(int(tid)))
        except OSError:  # the thread ended meanwhile
            continue
    return names


def frame_threads() -> list[str]:
    """FFmpeg's H.264 frame-threading workers in this process (it names them av:h264:df<n>)."""
    return [name for name in os_thread_names() if name.startswith("av:h264:df")]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names from /proc")
async def test_decoders_take_one_thread_each_once_cameras_fill_the_cores(
    clip: Path, second_clip: Path
) -> None:
    """Frame threading costs more CPU per frame than one thread; once there is a camera per
    core the cores are busy anyway, so each decoder gets one thread."""
    config = IngestConfig.model_validate(FAST)
    async with CameraHub(config, cores=2) as hub:
        assert hub.decoder_threads() == 0  # no camera: FFmpeg's choice
        first = hub.subscribe(SourceConfig(url=str(clip), loop=True), target_fps=30)
        assert hub.decoder_threads() == 0  # one camera on two cores
        other = hub.subscribe(SourceConfig(url=str(second_clip), loop=True), target_fps=30)
        assert hub.decoder_threads() == 1
        await other.close()
        assert hub.decoder_threads() == 0
        await first.close()
    async with CameraHub(config, cores=1) as hub:
        sub = hub.subscribe(SourceConfig(url=str(clip), loop=True), target_fps=30)
        assert len(await collect(sub, 1.0)) >= 8
        assert frame_threads() == []  # the session decodes on the reader's thread alone
        # The reader is named by its role for top -H and perf, never by the camera's URL.
        assert "ptw-ingest" in os_thread_names()
        await sub.close()
    if (os.cpu_count() or 1) > 1:  # FFmpeg's own choice is one thread on one CPU
        async with CameraHub(config, cores=64) as hub:
            sub = hub.subscribe(SourceConfig(url=str(clip), loop=True), target_fps=30)
            assert len(await collect(sub, 1.0)) >= 8
            assert frame_threads() != []
            await sub.close()
    pinned = IngestConfig.model_validate({**FAST, "decoder_threads": 3})
    async with CameraHub(pinned, cores=1) as hub:
        assert hub.decoder_threads() == 3  # a configured count wins
