"""Camera hub against real loopback servers: GStreamer RTSP and the aiohttp media server."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import time
from collections.abc import AsyncGenerator, Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiohttp import web

from pytrickle_worker.media.images import probe_image
from pytrickle_worker.media.jpeg import encode_jpeg
from pytrickle_worker.media.options import sniff_format
from pytrickle_worker.sources import (
    CameraHub,
    IngestConfig,
    SourceConfig,
)
from pytrickle_worker.sources.snapshot import MAX_SNAPSHOT_BYTES, SnapshotError
from pytrickle_worker.sources.snapshot import decode_image as decode_snapshot
from tests.helpers import collect
from tests.media_fixtures import RtspServer
from tests.servers.media_http import MediaHttpServer, get_clip

NET: dict[str, Any] = {
    "hw_decode": "off",
    "open_timeout_s": 3.0,
    "read_timeout_s": 1.5,
    "stall_timeout_s": 1.5,
    "backoff_initial_s": 0.1,
    "reconnect_interval_sec": 0.5,
}


def hub_with(**overrides: Any) -> CameraHub:
    return CameraHub(IngestConfig(**{**NET, **overrides}))


async def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> float:
    """Poll ``predicate``; the seconds it took. TimeoutError if it never holds."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        if loop.time() - start > within:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.02)
    return loop.time() - start


async def server_wait(server: RtspServer, predicate: Callable[[RtspServer], bool]) -> None:
    await asyncio.to_thread(server.wait_for, predicate, 5.0)


def assert_no_secret(secret: str, *texts: object) -> None:
    for text in texts:
        assert secret not in str(text)


# -- RTSP -------------------------------------------------------------------------------------


async def test_rtsp_frames_size_rate_and_per_subscriber_fps(rtsp_server: RtspServer) -> None:
    async with hub_with() as hub:
        source = SourceConfig(url=rtsp_server.url)
        every = hub.subscribe(source, target_fps=100)
        two = hub.subscribe(source, target_fps=2)
        five = hub.subscribe(source, target_fps=5)
        for sub in (every, two, five):
            assert await sub.next_frame(timeout=8) is not None
        got_all, got_two, got_five = await asyncio.gather(
            collect(every, 3.0), collect(two, 3.0), collect(five, 3.0)
        )
        assert 38 <= len(got_all) <= 48  # 15 fps
        assert 5 <= len(got_two) <= 7  # ~2 fps
        assert 13 <= len(got_five) <= 16  # ~5 fps
        for frames in (got_all, got_two, got_five):
            seqs = [f.seq for f in frames]
            assert len(set(seqs)) == len(seqs) and seqs == sorted(seqs)  # never a repeat
            assert {f.rgb.shape for f in frames} == {(360, 640, 3)}
        status = every.status
        assert status.online and status.kind == "stream"
        assert (status.width, status.height, status.codec) == (640, 360, "h264")
        assert status.fps_in == pytest.approx(15, rel=0.2)
        assert status.fps_decoded == pytest.approx(15, rel=0.2)
        assert status.subscribers == 3


async def test_rtsp_five_subscribers_one_session_one_decode(rtsp_server: RtspServer) -> None:
    async with hub_with() as hub:
        # two spellings of the same camera: the normalised URL is the sharing key
        other_spelling = f"RTSP://127.0.0.1:{rtsp_server.port}/cam"
        subs = [
            hub.subscribe(SourceConfig(url=url), target_fps=10)
            for url in [rtsp_server.url] * 3 + [other_spelling] * 2
        ]
        assert len(hub.statuses()) == 1
        firsts = [await sub.next_frame(timeout=8) for sub in subs]
        results = await asyncio.gather(*(collect(s, 2.0) for s in subs))
        results = [[first, *frames] for first, frames in zip(firsts, results, strict=True) if first]
        assert len(results) == 5 and all(len(r) >= 16 for r in results)
        counters = rtsp_server.counters()
        assert counters["sessions_total"] == 1
        assert counters["clients_connected_total"] == 1
        status = subs[0].status
        taken = {f.seq for r in results for f in r}
        assert status.conversions == len(taken)  # converted once per frame, not per subscriber
        assert status.frames_delivered == sum(len(r) for r in results)
        assert status.conversions <= status.frames_delivered
        assert status.conversions <= status.frames_decoded
        # the same frame reaches every subscriber as one shared, read-only image
        first = {id(f.rgb) for r in results for f in r if f.seq == min(taken)}
        assert len(first) == 1
        for sub in subs[:-1]:
            await sub.close()
        assert rtsp_server.counters()["current_clients"] == 1
        await subs[-1].close()
        await server_wait(rtsp_server, lambda s: s.current_clients == 0)
        await server_wait(rtsp_server, lambda s: s.current_sessions == 0)
        assert rtsp_server.counters()["sessions_total"] == 1


async def test_rtsp_server_killed_and_restarted(rtsp_server: RtspServer) -> None:
    async with hub_with() as hub:
        sub = hub.subscribe(SourceConfig(url=rtsp_server.url), target_fps=30)
        assert await sub.next_frame(timeout=8) is not None
        assert sub.status.online
        await asyncio.to_thread(rtsp_server.kill)
        await wait_until(lambda: not sub.status.online, within=5)
        assert sub.status.last_error
        await asyncio.sleep(1.0)  # a few refused reconnects
        outage = sub.status
        assert not outage.online and outage.reconnects >= 1
        await asyncio.to_thread(rtsp_server.restart)
        loop = asyncio.get_running_loop()
        restarted, restarted_wall = loop.time(), time.time()
        frame = await sub.next_frame(timeout=8)
        while frame is not None and frame.capture_time < restarted_wall:
            frame = await sub.next_frame(timeout=8)  # the last frame from before the outage
        assert frame is not None
        # within the backoff cap plus one open (probe ~1 s) plus scheduling slack
        assert loop.time() - restarted <= NET["reconnect_interval_sec"] + NET["open_timeout_s"]
        assert frame.rgb.shape == (360, 640, 3)
        assert sub.status.online and sub.status.subscribers == 1
        more = await collect(sub, 1.0)
        assert len(more) >= 8  # delivering again, to the same subscription


async def test_a_frozen_rtsp_camera_is_offline_within_the_read_timeout(
    rtsp_server: RtspServer,
) -> None:
    # The camera's process stops mid-stream (SIGSTOP): the TCP connection stays open and
    # silent, the way a hung camera or a dead link behind a NAT looks.
    read_timeout = 3.0
    overrides = {"read_timeout_s": read_timeout, "stall_timeout_s": read_timeout}
    async with hub_with(**overrides) as hub:
        sub = hub.subscribe(SourceConfig(url=rtsp_server.url), target_fps=5)
        assert await sub.next_frame(timeout=8) is not None
        assert rtsp_server.proc is not None
        os.kill(rtsp_server.proc.pid, signal.SIGSTOP)
        try:
            took = await wait_until(lambda: not sub.status.online, within=4 * read_timeout)
        finally:
            os.kill(rtsp_server.proc.pid, signal.SIGCONT)
        # Within the read timeout plus slack, not twice it (FFmpeg's RTSP demuxer waits its
        # socket timeout out twice).
        assert took < 1.5 * read_timeout, took
        assert "stalled" in (sub.status.last_error or ""), sub.status
        await sub.close()


async def test_rtsp_401_and_404_give_up_after_max_retries(
    rtsp_server_factory: Callable[..., RtspServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pytrickle_worker")
    server = rtsp_server_factory(user="admin", password="right-pw")
    secret = "wr0ng-s3cret"
    bad_auth = server.url_with_credentials("admin", secret)
    async with hub_with(max_retries=2) as hub:
        unauthorised = hub.subscribe(SourceConfig(url=bad_auth), target_fps=5)
        not_found = hub.subscribe(
            SourceConfig(url=server.url_with_credentials().replace("/cam", "/nothing-here")),
            target_fps=5,
        )
        await wait_until(lambda: unauthorised.status.gave_up and not_found.status.gave_up, 8)
        for sub, code in ((unauthorised, "401"), (not_found, "404")):
            status = sub.status
            assert not status.online
            assert status.reconnects == 2 and status.consecutive_failures == 3
            assert status.last_error is not None and code in status.last_error, status
            assert await sub.next_frame(timeout=0.1) is None
        connections = server.counters()["clients_connected_total"]
        assert connections <= 6  # 1 attempt + 2 retries each, one connection per attempt
        await asyncio.sleep(0.6)
        assert server.counters()["clients_connected_total"] == connections  # no more retries
        assert "***" in unauthorised.status.source
        assert_no_secret(secret, unauthorised.status, caplog.text, hub.statuses())
        assert_no_secret("right-pw", not_found.status, caplog.text)


# -- HTTP -------------------------------------------------------------------------------------


async def test_http_404_and_401_give_up_after_max_retries(
    media_http: MediaHttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pytrickle_worker")
    secret = "n0t-the-pw"
    async with hub_with(max_retries=2) as hub:
        missing = hub.subscribe(SourceConfig(url=media_http.url("/missing.ts")), target_fps=5)
        denied = hub.subscribe(
            SourceConfig(url=media_http.url("/auth/stream.ts", auth=("admin", secret))),
            target_fps=5,
        )
        await wait_until(lambda: missing.status.gave_up and denied.status.gave_up, 8)
        assert missing.status.last_error is not None and "404" in missing.status.last_error
        assert denied.status.last_error is not None and "401" in denied.status.last_error
        for sub in (missing, denied):
            assert sub.status.reconnects == 2 and not sub.status.online
        assert media_http.requests["/missing.ts"] == 3
        assert media_http.requests["/auth/stream.ts"] <= 6  # FFmpeg retries auth once per try
        before = dict(media_http.requests)
        await asyncio.sleep(0.6)
        assert dict(media_http.requests) == before
        assert_no_secret(secret, denied.status, caplog.text)

        # the right credentials work, and are masked in the status
        allowed = hub.subscribe(
            SourceConfig(url=media_http.url("/auth/stream.ts", auth=media_http.credentials)),
            target_fps=5,
        )
        frame = await allowed.next_frame(timeout=8)
        assert frame is not None and frame.rgb.shape == (360, 640, 3)
        assert_no_secret(media_http.credentials[1], allowed.status, caplog.text)


async def test_http_stall_watchdog_and_recovery(media_http: MediaHttpServer) -> None:
    async with hub_with() as hub:
        sub = hub.subscribe(SourceConfig(url=media_http.url("/stream.ts")), target_fps=30)
        assert await sub.next_frame(timeout=8) is not None
        media_http.frozen = True  # the connection stays open but no byte arrives
        elapsed = await wait_until(lambda: not sub.status.online, within=6)
        assert elapsed <= NET["stall_timeout_s"] + 1.5
        assert sub.status.last_error is not None and "stalled" in sub.status.last_error
        media_http.frozen = False
        thawed = time.time()
        frame = await sub.next_frame(timeout=8)
        while frame is not None and frame.capture_time < thawed:
            frame = await sub.next_frame(timeout=8)  # the last frame from before the stall
        assert frame is not None
        assert sub.status.online and sub.status.reconnects >= 1
        assert media_http.streams_total >= 2


async def test_http_stall_ts_fires_the_watchdog(media_http: MediaHttpServer) -> None:
    async with hub_with() as hub:
        sub = hub.subscribe(SourceConfig(url=media_http.url("/stall.ts")), target_fps=30)
        await wait_until(lambda: sub.status.frames_decoded > 0, within=8)
        await wait_until(lambda: sub.status.last_error is not None, within=5)
        assert "stalled" in (sub.status.last_error or "")
        await sub.close()
        await media_http.wait_for(lambda s: s.open_streams == 0)


async def test_http_mjpeg_and_last_unsubscribe_closes(media_http: MediaHttpServer) -> None:
    async with hub_with() as hub:
        source = SourceConfig(url=media_http.url("/mjpeg"))
        subs = [hub.subscribe(source, target_fps=10) for _ in range(3)]
        results = await asyncio.gather(*(collect(s, 1.5) for s in subs))
        assert all(len(r) >= 8 for r in results)
        assert {f.rgb.shape for r in results for f in r} == {(360, 640, 3)}
        assert subs[0].status.codec == "mjpeg"
        assert media_http.streams_total == 1 and media_http.open_streams == 1
        await subs[0].close()
        await subs[1].close()
        await asyncio.sleep(0.2)
        assert media_http.open_streams == 1
        await subs[2].close()
        await media_http.wait_for(lambda s: s.open_streams == 0, timeout=3)
        assert hub.statuses() == []


async def test_http_stream_that_ends_is_reopened(media_http: MediaHttpServer) -> None:
    async with hub_with() as hub:
        sub = hub.subscribe(SourceConfig(url=media_http.url("/eof.ts?seconds=2")), target_fps=30)
        frames = await collect(sub, 4.5)
        assert len(frames) >= 12
        assert media_http.streams_total >= 2
        assert sub.status.reconnects >= 1
        seqs = [f.seq for f in frames]
        assert seqs == sorted(set(seqs))


async def test_mjpeg_content_type_sniff(media_http: MediaHttpServer) -> None:
    answer = await asyncio.to_thread(sniff_format, media_http.url("/mjpeg"), 2.0)
    assert answer.answered and answer.format == "mpjpeg"
    answer = await asyncio.to_thread(sniff_format, media_http.url("/snapshot.jpg"), 2.0)
    assert answer.answered and answer.format is None
    refused = await asyncio.to_thread(sniff_format, "http://127.0.0.1:9/x", 1.0)
    assert not refused.answered


# -- snapshots --------------------------------------------------------------------------------


async def test_snapshot_fetched_once_per_interval_for_all_subscribers(
    media_http: MediaHttpServer,
) -> None:
    async with hub_with() as hub:
        source = SourceConfig(
            snapshot_url=media_http.url("/snapshot.jpg"), snapshot_interval_ms=200
        )
        subs = [hub.subscribe(source, target_fps=10) for _ in range(4)]
        results = await asyncio.gather(*(collect(s, 1.5) for s in subs))
        hits = media_http.snapshot_hits
        assert 7 <= hits <= 9  # 1.5 s / 0.2 s, plus the first fetch
        for frames in results:
            assert 5 <= len(frames) <= hits
            assert {f.rgb.shape for f in frames} == {(360, 640, 3)}
        by_seq: dict[int, set[int]] = {}
        for frames in results:
            for f in frames:
                by_seq.setdefault(f.seq, set()).add(id(f.rgb))
        assert all(len(ids) == 1 for ids in by_seq.values())  # one image shared by everyone
        status = subs[0].status
        assert status.kind == "snapshot" and status.codec == "mjpeg" and status.online
        assert status.conversions == len(by_seq)
        assert status.frames_decoded == hits
        for sub in subs:
            await sub.close()
        await asyncio.sleep(0.5)
        assert media_http.snapshot_hits == hits  # the last unsubscribe stopped the polling


async def test_a_snapshot_camera_is_fetched_at_its_fastest_subscribers_interval(
    media_http: MediaHttpServer,
) -> None:
    # Two displays share one camera, one every 2 s, one every 0.2 s: each gets its own rate
    # from one fetch loop (the shortest interval), and the slow rate comes back when the fast
    # one leaves. The original worker kept the first subscriber's interval.
    url = media_http.url("/snapshot.jpg")
    async with hub_with() as hub:
        slow = hub.subscribe(
            SourceConfig(snapshot_url=url, snapshot_interval_ms=2000), target_fps=1
        )
        assert await slow.next_frame(timeout=5) is not None
        hits = media_http.snapshot_hits
        fast = hub.subscribe(SourceConfig(snapshot_url=url, snapshot_interval_ms=200), target_fps=5)
        frames = await collect(fast, 1.5)
        fetched = media_http.snapshot_hits - hits
        assert 5 <= fetched <= 10, fetched  # every 0.2 s from when it joined, not in 2 s
        assert len(frames) >= 4
        assert len(hub.statuses()) == 1  # still one reader
        await fast.close()
        await asyncio.sleep(0.3)
        hits = media_http.snapshot_hits
        await asyncio.sleep(1.5)
        assert media_http.snapshot_hits - hits <= 1  # back to every 2 s
        await slow.close()


async def test_snapshot_errors_go_offline_and_give_up(media_http: MediaHttpServer) -> None:
    async with hub_with(max_retries=1) as hub:
        source = SourceConfig(
            snapshot_url=media_http.url("/auth/snapshot.jpg", auth=("admin", "bad-pw")),
            snapshot_interval_ms=100,
        )
        sub = hub.subscribe(source, target_fps=5)
        await wait_until(lambda: sub.status.gave_up, within=5)
        status = sub.status
        assert status.last_error is not None and "401" in status.last_error
        assert not status.online and status.consecutive_failures == 2
        assert media_http.requests["/auth/snapshot.jpg"] == 2
        assert "bad-pw" not in str(status)
        assert await sub.next_frame(timeout=0.1) is None


async def test_a_snapshot_over_the_pixel_limit_is_refused_before_decoding(
    media_http: MediaHttpServer,
) -> None:
    # The demo snapshot is 640x360: one pixel over this camera's limit.
    async with hub_with(max_retries=1, max_video_pixels=640 * 360 - 1) as hub:
        url = media_http.url("/snapshot.jpg")
        sub = hub.subscribe(SourceConfig(snapshot_url=url, snapshot_interval_ms=100), target_fps=5)
        await wait_until(lambda: sub.status.gave_up, within=5)
        status = sub.status
        assert status.last_error == (
            "the snapshot is 640x360 (230400 pixels), over the limit of 230399 pixels "
            "(PTW_MAX_VIDEO_PIXELS)"
        )
        assert status.frames_decoded == 0 and not status.online
        await sub.close()


def test_a_snapshot_of_a_thousand_scans_is_refused_before_decoding() -> None:
    jpeg = encode_jpeg(np.full((120, 160, 3), 90, dtype=np.uint8), 90)
    start, end = jpeg.index(b"\xff\xda"), jpeg.rindex(b"\xff\xd9")
    bomb = jpeg[:start] + jpeg[start:end] * 1000 + jpeg[end:]
    with pytest.raises(SnapshotError, match="not a valid image: JPEG has 1000 scans"):
        decode_snapshot(bomb)
    frame, codec = decode_snapshot(jpeg)
    assert (frame.width, frame.height, codec) == (160, 120, "mjpeg")
    # What follows the image's end (a phone's "motion photo" video) holds no scans of it.
    assert probe_image(jpeg + b"\xff\xda" * 500).width == 160


def test_an_imperfect_snapshot_is_left_to_ffmpeg_and_other_formats_are_capped_too() -> None:
    # Cameras write imperfect JPEGs: one without its end-of-image marker still decodes.
    jpeg = encode_jpeg(np.full((120, 160, 3), 90, dtype=np.uint8), 90)
    frame, _ = decode_snapshot(jpeg[:-2])
    assert (frame.width, frame.height) == (160, 120)
    # A format the header check does not read is held to the limit once decoded.
    codec = av.CodecContext.create("bmp", "w")
    assert isinstance(codec, av.VideoCodecContext)
    codec.width, codec.height, codec.pix_fmt = 160, 120, "bgr24"
    codec.time_base = Fraction(1, 1)
    picture = av.VideoFrame.from_ndarray(np.zeros((120, 160, 3), np.uint8), format="bgr24")
    bmp = b"".join(bytes(p) for p in [*codec.encode(picture), *codec.encode(None)])
    assert decode_snapshot(bmp)[0].width == 160
    with pytest.raises(SnapshotError, match=r"the snapshot is 160x120 .* over the limit of 19199"):
        decode_snapshot(bmp, max_pixels=160 * 120 - 1)


async def test_a_snapshot_sent_in_pieces_is_read_whole(tmp_path: Path) -> None:
    # A camera's HTTP server writes a 1080p JPEG in pieces; the reader must wait for all of
    # it (a read of "up to N bytes" returns the first piece, which still decodes, grey below).
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)  # noise: a large JPEG
    rgb[-120:] = (220, 30, 30)
    jpeg = encode_jpeg(rgb, 95)
    assert len(jpeg) > 500_000

    async def pieces(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.content_length = len(jpeg)
        await response.prepare(request)
        for start in range(0, len(jpeg), 64 * 1024):
            await response.write(jpeg[start : start + 64 * 1024])
            await asyncio.sleep(0.005)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/snap.jpg", pieces)
    async with serve(app) as base, hub_with() as hub:
        sub = hub.subscribe(
            SourceConfig(snapshot_url=f"{base}/snap.jpg", snapshot_interval_ms=500), target_fps=5
        )
        try:
            frame = await sub.next_frame(timeout=10)
            assert frame is not None and frame.rgb.shape == (1080, 1920, 3)
            bottom = frame.rgb[-100:].reshape(-1, 3).mean(axis=0)
            assert bottom[0] > 180 and bottom[1] < 80 and bottom[2] < 80, bottom
        finally:
            await sub.close()


async def test_a_snapshot_over_the_size_limit_is_refused() -> None:
    # Declared too large: refused before reading. Streamed without a length: cut off once past
    # the limit. Either way an error naming the limit, the source offline, no frame.
    async def declared(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.content_length = MAX_SNAPSHOT_BYTES + 1
        await response.prepare(request)
        await response.write(b"\xff\xd8")  # the rest never comes
        return response

    async def streamed(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b"\0" * (1024 * 1024)
        with contextlib.suppress(ConnectionError):
            for _ in range(MAX_SNAPSHOT_BYTES // len(chunk) + 2):
                await response.write(chunk)
        return response

    app = web.Application()
    app.router.add_get("/declared.jpg", declared)
    app.router.add_get("/streamed.jpg", streamed)
    async with serve(app) as base, hub_with(max_retries=0) as hub:
        for path in ("/declared.jpg", "/streamed.jpg"):
            sub = hub.subscribe(
                SourceConfig(snapshot_url=base + path, snapshot_interval_ms=100), target_fps=5
            )
            try:
                await wait_until(lambda s=sub: s.status.gave_up, within=10)
                error = sub.status.last_error or ""
                assert f"larger than {MAX_SNAPSHOT_BYTES} bytes" in error, (path, error)
                assert await sub.next_frame(timeout=0.1) is None
            finally:
                await sub.close()


async def test_a_reader_that_gave_up_starts_again_for_a_new_subscriber() -> None:
    # max_retries reached: the reader gives up. A new subscriber asks for the camera again;
    # the old subscriber, still there, gets the new reader's frames too.
    jpeg = encode_jpeg(np.full((120, 160, 3), 90, dtype=np.uint8), 90)
    broken = True

    async def snapshot(request: web.Request) -> web.Response:
        if broken:
            return web.Response(status=503, text="camera rebooting")
        return web.Response(body=jpeg, content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/snap.jpg", snapshot)
    async with serve(app) as base, hub_with(max_retries=1) as hub:
        source = SourceConfig(snapshot_url=f"{base}/snap.jpg", snapshot_interval_ms=100)
        first = hub.subscribe(source, target_fps=10)
        try:
            await wait_until(lambda: first.status.gave_up, within=5)
            assert "503" in (first.status.last_error or "")
            broken = False
            await asyncio.sleep(0.3)
            assert await first.next_frame(timeout=0.2) is None  # given up: nobody fetches
            second = hub.subscribe(source, target_fps=10)
            try:
                for sub in (second, first):
                    frame = await sub.next_frame(timeout=5)
                    assert frame is not None and frame.rgb.shape == (120, 160, 3)
                    assert sub.status.online and not sub.status.gave_up
                assert len(hub.statuses()) == 1  # one reader for the camera
            finally:
                await second.close()
        finally:
            await first.close()
        assert hub.statuses() == []


def _digest_ok(header: str, method: str, user: str, password: str, realm: str, nonce: str) -> bool:
    """Check an RFC 7616 ``Authorization: Digest`` header (MD5, qop=auth), as a camera does."""
    if not header.lower().startswith("digest "):
        return False
    fields = dict(
        (name.strip(), value.strip().strip('"'))
        for name, _, value in (part.partition("=") for part in header[7:].split(","))
    )
    if fields.get("username") != user or fields.get("nonce") != nonce:
        return False

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()  # RFC 7616 MD5, as cameras use

    ha1 = md5(f"{user}:{realm}:{password}")
    ha2 = md5(f"{method}:{fields.get('uri', '')}")
    expected = md5(f"{ha1}:{nonce}:{fields.get('nc', '')}:{fields.get('cnonce', '')}:auth:{ha2}")
    return fields.get("response") == expected


async def test_a_snapshot_camera_that_asks_for_digest_auth_gets_it() -> None:
    # Hikvision ISAPI, Dahua snapshot.cgi and Axis cameras answer Basic auth with a Digest
    # challenge; the credentials of the URL then go as Digest.
    jpeg = encode_jpeg(np.full((90, 120, 3), 150, dtype=np.uint8), 90)
    realm, nonce = "IP Camera", "5f1e0a9b3c"
    seen: list[str] = []

    async def snapshot(request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        seen.append(header.split(" ", 1)[0])
        if _digest_ok(header, request.method, "admin", "p@ss:w0rd", realm, nonce):
            return web.Response(body=jpeg, content_type="image/jpeg")
        challenge = f'Digest realm="{realm}", nonce="{nonce}", qop="auth", algorithm=MD5'
        return web.Response(status=401, headers={"WWW-Authenticate": challenge})

    app = web.Application()
    app.router.add_get("/ISAPI/Streaming/channels/101/picture", snapshot)
    async with serve(app) as base, hub_with() as hub:
        host = base.removeprefix("http://")
        url = f"http://admin:p%40ss%3Aw0rd@{host}/ISAPI/Streaming/channels/101/picture"
        sub = hub.subscribe(SourceConfig(snapshot_url=url, snapshot_interval_ms=100), target_fps=10)
        try:
            for _ in range(3):
                frame = await sub.next_frame(timeout=5)
                assert frame is not None and frame.rgb.shape == (90, 120, 3)
            assert sub.status.online and sub.status.last_error is None
        finally:
            await sub.close()
    assert seen[0] == "Basic" and "Digest" in seen
    # Digest from then on: one challenge, not one per snapshot.
    assert seen.count("Basic") == 1 and seen.count("") <= 1, seen


class _Buffer:
    """A write-only file for PyAV's muxer: what it wrote since the last take."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk: bytes) -> int:
        self.data += chunk
        return len(chunk)

    def take(self) -> bytes:
        out = bytes(self.data)
        self.data.clear()
        return out


async def test_a_camera_whose_video_freezes_while_its_audio_flows_is_stalled() -> None:
    # A live MPEG-TS camera with audio: its video stops after a second, its audio goes on.
    # The reader reads packets all the while, so only the no-frame watchdog can tell.
    fps, video_s, audio_s = 15, 1.0, 12.0

    async def camera(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "video/mp2t"})
        await response.prepare(request)
        sink = _Buffer()
        # A bounded interleaving delay, as a camera's muxer has: FFmpeg's default (10 s)
        # holds the audio back once the video stops.
        options = {"max_interleave_delta": "200000", "flush_packets": "1"}
        with av.open(sink, "w", format="mpegts", options=options) as out:
            video = out.add_stream("mpeg2video", rate=fps)
            video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
            audio = out.add_stream("mp2", rate=48000)
            audio.layout = "mono"
            samples = np.zeros((1, 1152), np.int16)
            audio_pts = 0
            try:
                for index in range(int(audio_s * fps)):
                    now = index / fps
                    if now < video_s:
                        image = np.full((120, 160, 3), 40 + index * 5, np.uint8)
                        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                        frame.pts = index
                        for packet in video.encode(frame):
                            out.mux(packet)
                    while audio_pts < (now + 1 / fps) * 48000:
                        chunk = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
                        chunk.sample_rate, chunk.pts = 48000, audio_pts
                        audio_pts += 1152
                        for packet in audio.encode(chunk):
                            out.mux(packet)
                    if data := sink.take():
                        await response.write(data)
                    await asyncio.sleep(1 / fps)
            except ConnectionError:
                pass
        return response

    app = web.Application()
    app.router.add_get("/live.ts", camera)
    stall = 2.0
    async with serve(app) as base, hub_with(read_timeout_s=stall, stall_timeout_s=stall) as hub:
        sub = hub.subscribe(SourceConfig(url=f"{base}/live.ts"), target_fps=15)
        try:
            assert await sub.next_frame(timeout=8) is not None
            # Offline before the stream ends (it would then say "stream ended").
            await wait_until(lambda: not sub.status.online, within=video_s + 3 * stall + 2)
            assert "no frame decoded" in (sub.status.last_error or ""), sub.status
        finally:
            await sub.close()


# -- sources served by the test itself: broken MJPEG, HLS -------------------------------------


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncGenerator[str]:
    """Run ``app`` on 127.0.0.1:<free port>; yields the base URL."""
    runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_corrupt_mjpeg_parts_are_skipped_then_no_frame_watchdog_fires() -> None:
    """1 s of good JPEG parts, then parts of random bytes: packets keep coming, frames stop."""
    jpegs = (await asyncio.to_thread(get_clip, 320, 240, 15, 1.0)).jpegs

    async def broken_camera(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "multipart/x-mixed-replace; boundary=frame"}
        )
        await response.prepare(request)
        rng = np.random.default_rng(0)
        index = 0
        try:
            while True:
                part = jpegs[index] if index < len(jpegs) else rng.bytes(4000)
                await response.write(
                    b"--frame\r\nContent-Type: image/jpeg\r\n"
                    + f"Content-Length: {len(part)}\r\n\r\n".encode()
                    + part
                    + b"\r\n"
                )
                index += 1
                await asyncio.sleep(1 / 15)
        except (ConnectionError, asyncio.CancelledError):
            pass
        return response

    app = web.Application()
    app.router.add_get("/mjpeg", broken_camera)
    async with serve(app) as base, hub_with() as hub:
        sub = hub.subscribe(SourceConfig(url=f"{base}/mjpeg"), target_fps=30)
        first = await sub.next_frame(timeout=8)
        assert first is not None and first.rgb.shape == (240, 320, 3)
        await wait_until(lambda: sub.status.last_error is not None, within=8)
        status = sub.status
        assert status.corrupt_packets > 0
        assert "no frame decoded" in (status.last_error or ""), status
        await wait_until(lambda: sub.status.online, within=8)  # reconnected: good parts again
        assert sub.status.reconnects >= 1


async def test_hls_over_http(tmp_path: Path) -> None:
    playlist = tmp_path / "index.m3u8"

    def write_hls() -> None:
        options = {"hls_time": "1", "hls_list_size": "0", "hls_playlist_type": "vod"}
        with av.open(str(playlist), mode="w", format="hls", options=options) as out:
            stream = out.add_stream("libx264", rate=15)
            stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
            stream.codec_context.gop_size = 15
            for index in range(45):
                frame = av.VideoFrame.from_ndarray(
                    np.full((240, 320, 3), index * 5, np.uint8), format="rgb24"
                )
                frame.pts, frame.time_base = index, Fraction(1, 15)
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)

    await asyncio.to_thread(write_hls)
    app = web.Application()
    app.router.add_static("/hls", tmp_path)
    async with serve(app) as base, hub_with() as hub:
        sub = hub.subscribe(SourceConfig(url=f"{base}/hls/index.m3u8"), target_fps=100)
        frames = await collect(sub, 1.5)
        assert len(frames) >= 10
        assert {f.rgb.shape for f in frames} == {(240, 320, 3)}
        assert sub.status.codec == "h264"
