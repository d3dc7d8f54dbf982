"""Camera ingest building blocks: URLs, config, crops, backoff, options, NVDEC choice, slots."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import pytest
from av.codec.hwaccel import hwdevices_available
from av.error import HTTPUnauthorizedError
from pydantic import ValidationError

from pytrickle_worker.core.backoff import Backoff
from pytrickle_worker.frontdoors.cms.protocol import Crop as ProtocolCrop
from pytrickle_worker.media.nvdec import resolve_nvdec
from pytrickle_worker.media.options import format_hint, needs_sniff
from pytrickle_worker.sources import (
    Crop,
    CropError,
    IngestConfig,
    SourceConfig,
    normalise_source_url,
    open_options,
)
from pytrickle_worker.sources.crop import CropRect, clip_crop, validate_crop
from pytrickle_worker.sources.frame import PUBLISH_HISTORY, LatestFrame
from pytrickle_worker.sources.status import RateMeter, StatusTracker
from pytrickle_worker.sources.stream import describe_error

# -- URLs and source config -------------------------------------------------------------------


def test_normalise_network_urls() -> None:
    assert normalise_source_url("RTSP://Cam.Local:554/Stream1") == "rtsp://cam.local/Stream1"
    assert normalise_source_url("rtsp://cam:8554") == "rtsp://cam:8554/"
    assert normalise_source_url("http://h:80/a?b=1#frag") == "http://h/a?b=1"
    assert normalise_source_url(" https://H:443/x ") == "https://h/x"
    # credentials are kept (they may select what the camera serves), host case is not
    assert normalise_source_url("rtsp://User:Pw@CAM/s") == "rtsp://User:Pw@cam/s"
    assert normalise_source_url("rtsp://[::1]:554/s") == "rtsp://[::1]/s"


def test_normalise_local_paths(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    assert normalise_source_url(str(path)) == str(path)
    assert normalise_source_url(f"file://{path}") == str(path)
    relative = normalise_source_url("clip.mp4")
    assert Path(relative).is_absolute()


def test_source_config_kinds_and_aliases() -> None:
    stream = SourceConfig.model_validate({"rtspUrl": "rtsp://cam/1"})
    assert stream.kind == "stream"
    assert stream.target_url == "rtsp://cam/1"
    assert not stream.is_file
    snap = SourceConfig.model_validate(
        {"rtspUrl": "rtsp://cam/1", "snapshotUrl": "http://cam/s.jpg", "snapshotInterval": 500}
    )
    assert snap.kind == "snapshot"  # the original worker's rule: snapshot with an interval wins
    assert snap.snapshot_interval_s == 0.5
    assert snap.key.startswith("snapshot:http://cam/")
    assert SourceConfig(url="/tmp/x.mp4").is_file
    assert SourceConfig(url="RTSP://CAM:554/1").key == SourceConfig(url="rtsp://cam/1").key
    with pytest.raises(ValidationError, match="needs url"):
        SourceConfig()
    with pytest.raises(ValidationError, match="snapshot_interval_ms"):
        SourceConfig(snapshot_url="http://cam/s.jpg")
    with pytest.raises(ValidationError, match="no demuxer"):
        SourceConfig(url="http://cam/x", format="not-a-format")
    assert SourceConfig(url="http://cam/x", format="mpjpeg").format == "mpjpeg"


def test_ingest_config_defaults_and_validation() -> None:
    config = IngestConfig()
    assert config.rtsp_transport == "tcp"
    assert (config.open_timeout_s, config.read_timeout_s, config.stall_timeout_s) == (10, 10, 10)
    assert config.reconnect_interval_sec == 10
    assert config.backoff_initial_s == 0.5
    assert config.max_retries == -1
    assert config.hw_decode == "auto"
    assert config.decoder_threads == 0
    assert config.snapshot_timeout_s == 10
    with pytest.raises(ValidationError):
        IngestConfig(rtsp_transport="http")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        IngestConfig(max_retries=-2)
    with pytest.raises(ValidationError):
        IngestConfig(unknown=1)  # type: ignore[call-arg]


# -- crops ------------------------------------------------------------------------------------


def test_crop_validation_names_coordinates_and_frame() -> None:
    with pytest.raises(CropError, match=r"\(10, 0, 10, 5\) is empty"):
        validate_crop(Crop(x1=10, y1=0, x2=10, y2=5))
    with pytest.raises(CropError, match=r"\(0, 9, 5, 3\) is empty"):
        validate_crop(Crop(x1=0, y1=9, x2=5, y2=3))
    with pytest.raises(CropError, match="entirely outside"):
        validate_crop(Crop(x1=-20, y1=0, x2=-10, y2=5))
    with pytest.raises(CropError, match=r"\(700, 0, 800, 100\) lies entirely outside the 640x360"):
        validate_crop(Crop(x1=700, y1=0, x2=800, y2=100), (640, 360))
    validate_crop(Crop(x1=0, y1=0, x2=10, y2=10), (640, 360))
    assert issubclass(CropError, ValueError)


def test_crop_clipping() -> None:
    assert clip_crop(Crop(x1=10, y1=20, x2=110, y2=220), 640, 360) == (
        CropRect(10, 20, 110, 220),
        False,
    )
    assert clip_crop(Crop(x1=-5, y1=300, x2=700, y2=400), 640, 360) == (
        CropRect(0, 300, 640, 360),
        True,
    )
    with pytest.raises(CropError, match="320x240"):
        clip_crop(Crop(x1=0, y1=240, x2=10, y2=300), 320, 240)


def test_crop_aliases_and_protocol_crop_compatible() -> None:
    crop = Crop.model_validate({"cropX1": 1, "cropY1": 2, "cropX2": 3, "cropY2": 4})
    assert (crop.x1, crop.y1, crop.x2, crop.y2) == (1, 2, 3, 4)
    # the CMS protocol's Crop model satisfies the CropBox protocol the hub takes
    rect, clipped = clip_crop(ProtocolCrop(x1=0, y1=0, x2=50, y2=50), 40, 40)
    assert rect == CropRect(0, 0, 40, 40) and clipped


# -- backoff ----------------------------------------------------------------------------------


def test_backoff_grows_is_capped_and_jittered() -> None:
    backoff = Backoff(0.5, 4.0, rng=random.Random(1))
    ceilings = [backoff.ceiling(n) for n in range(1, 7)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    delays = [backoff.next_delay() for _ in range(50)]
    assert all(d is not None and 0.0 <= d <= 4.0 for d in delays)
    assert len({round(d or 0, 6) for d in delays}) > 40  # jittered, not a fixed schedule
    assert backoff.failures == 50
    backoff.reset()
    assert backoff.failures == 0
    first = backoff.next_delay()
    assert first is not None and first <= 0.5


def test_backoff_gives_up_after_max_retries() -> None:
    backoff = Backoff(0.1, 1.0, max_retries=2, rng=random.Random(0))
    assert backoff.next_delay() is not None
    assert backoff.next_delay() is not None
    assert backoff.next_delay() is None
    assert Backoff(0.1, 1.0, max_retries=0).next_delay() is None
    forever = Backoff(0.1, 1.0, max_retries=-1)
    assert all(forever.next_delay() is not None for _ in range(1000))


# -- FFmpeg options ---------------------------------------------------------------------------


def test_open_options() -> None:
    # Half the read timeout: FFmpeg's RTSP demuxer waits it out twice (see the frozen-camera
    # test in test_ingest_network.py).
    assert open_options("rtsp://cam/1", 2.5) == {"rtsp_transport": "tcp", "timeout": "1250000"}
    assert open_options("RTSP://cam/1", 1, "udp")["rtsp_transport"] == "udp"
    assert open_options("http://cam/x.ts", 3) == {"rw_timeout": "3000000"}
    assert open_options("https://cam/x.m3u8", 3, analyze_duration_s=1.0) == {
        "rw_timeout": "3000000",
        "analyzeduration": "1000000",
    }
    assert open_options("/videos/a.mp4", 3) == {}
    # media/decode.py (mpta run) uses the same options
    from pytrickle_worker.media import decode  # noqa: PLC0415

    assert decode.open_options is open_options


def test_format_hints_and_sniff_decision() -> None:
    assert format_hint("http://cam/mjpeg") == "mpjpeg"
    assert format_hint("http://cam/video.mjpg") == "mpjpeg"
    assert format_hint("http://cam/cgi-bin/mjpg/video.cgi") == "mpjpeg"
    assert format_hint("https://cdn/live/index.m3u8") == "hls"
    assert format_hint("http://cam/stream.ts") is None
    assert format_hint("rtsp://cam/mjpeg") is None
    assert not needs_sniff("http://cam/stream.ts")
    assert not needs_sniff("http://cam/mjpeg")
    assert not needs_sniff("rtsp://cam/1")
    assert needs_sniff("http://cam/video")


def test_errors_are_masked() -> None:
    exc = HTTPUnauthorizedError(825242872, "Server returned 401", "http://admin:hunter2@cam/x")
    text = describe_error(exc)
    assert "401" in text and "hunter2" not in text
    assert "hunter2" not in describe_error(OSError("cannot reach rtsp://u:hunter2@cam/s"))
    tracker = StatusTracker("rtsp://u:***@cam/s", "stream")
    tracker.failed("refused by rtsp://u:hunter2@cam/s?token=abc", 1)
    status = tracker.snapshot(0)
    assert status.last_error is not None
    assert "hunter2" not in status.last_error and "abc" not in status.last_error


# -- NVDEC choice -----------------------------------------------------------------------------


def test_resolve_nvdec() -> None:
    calls: list[int] = []

    def gpus(count: int) -> int:
        calls.append(count)
        return count

    assert resolve_nvdec("off", lambda: gpus(1)) is False
    assert resolve_nvdec("nvdec", lambda: gpus(0)) is True
    assert calls == []  # neither asks NVML
    assert resolve_nvdec("auto", lambda: gpus(0)) is False
    cuvid = "h264_cuvid" in av.codecs_available or "hevc_cuvid" in av.codecs_available
    assert resolve_nvdec("auto", lambda: gpus(1)) is cuvid
    # The hwaccel needs FFmpeg's CUDA hardware device, not the cuvid decoders.
    cuda = "cuda" in hwdevices_available()
    assert resolve_nvdec("auto", lambda: gpus(1), api="hwaccel") is cuda
    assert resolve_nvdec("auto", lambda: gpus(0), api="hwaccel") is False


def test_auto_on_this_host_does_not_pick_nvdec_without_gpu() -> None:
    from pytrickle_worker.core.hardware import count_gpus as nvml_gpu_count  # noqa: PLC0415

    if nvml_gpu_count() > 0:
        pytest.skip("this host has a GPU")
    assert resolve_nvdec("auto") is False


# -- rates and the latest-frame slot ----------------------------------------------------------


def test_rate_meter() -> None:
    meter = RateMeter(window_s=2.0)
    meter.reset(100.0)
    for i in range(30):
        meter.tick(100.0 + i / 15)
    assert meter.rate(102.0) == pytest.approx(15.0, rel=0.1)
    assert meter.rate(110.0) == 0.0


def test_latest_frame_converts_once_for_many_takers() -> None:
    conversions: list[int] = []
    notified: list[int] = []
    slot = LatestFrame(lambda: notified.append(1), lambda: conversions.append(1))
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, :, 0] = 200
    first = slot.publish(av.VideoFrame.from_ndarray(rgb, format="rgb24"), 0.0)
    second = slot.publish(av.VideoFrame.from_ndarray(rgb, format="rgb24"), 0.1)
    assert slot.latest is second
    assert (first.seq, second.seq) == (1, 2)
    assert len(notified) == 2
    assert second.rgb_ready is None
    barrier = threading.Barrier(8)

    def take() -> np.ndarray:
        barrier.wait()
        return second.to_rgb()

    with ThreadPoolExecutor(8) as pool:
        results = [future.result() for future in [pool.submit(take) for _ in range(8)]]
    assert len(conversions) == 1
    assert all(r is results[0] for r in results)
    assert results[0].shape == (48, 64, 3)
    assert not results[0].flags.writeable
    assert int(results[0][0, 0, 0]) == 200


def test_latest_frame_tells_which_missed_frames_were_newest_after_a_moment() -> None:
    """``newest_after``: the frames a subscriber skipped that were still the newest at or
    after its due time (the hub counts those as overload, the others as sampler skips)."""
    now = [0.0]
    slot = LatestFrame(lambda: None, clock=lambda: now[0])
    rgb = np.zeros((8, 8, 3), np.uint8)
    for index in range(10):  # frame seq = index + 1, published at index * 0.1 s
        now[0] = index * 0.1
        slot.publish(av.VideoFrame.from_ndarray(rgb, format="rgb24"), None)
    # Took 1, now takes 10; due at 0.35: frame 4 (newest 0.3 .. 0.4) and 5..9 were newest
    # after it; 2 and 3 were replaced before it.
    assert slot.newest_after(1, 10, 0.35) == 6
    assert slot.newest_after(1, 10, 0.4) == 5  # 4 was replaced exactly at the due time
    assert slot.newest_after(1, 10, 5.0) == 0  # due after everything: all sampler
    assert slot.newest_after(1, 10, -1.0) == 8  # due before everything: all overload
    assert slot.newest_after(9, 10, 0.0) == 0  # nothing skipped
    assert slot.newest_after(5, 8, 0.35) == 2  # only frames strictly between
    for index in range(10, PUBLISH_HISTORY + 20):  # older publish times are forgotten
        now[0] = index * 0.1
        slot.publish(av.VideoFrame.from_ndarray(rgb, format="rgb24"), None)
    last = PUBLISH_HISTORY + 20
    # Frames 20 .. 1043: those whose successor (21 .. 1044) is remembered.
    assert slot.newest_after(1, last, -1.0) == PUBLISH_HISTORY
