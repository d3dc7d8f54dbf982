"""A trickle channel as a camera of the hub, against the project's own TrickleServer.

A publisher posts H.264 MPEG-TS segments (our encoder's, 2 s GOPs) to a channel of a real
loopback trickle server; the hub subscribes to ``trickle://…`` and decodes it once for all
its subscribers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import pytest

from pytrickle_worker.core.hardware import count_gpus
from pytrickle_worker.devtools.trickle_server import TrickleServer
from pytrickle_worker.sources import CameraHub, IngestConfig, SourceConfig
from pytrickle_worker.sources.source import normalise_source_url
from pytrickle_worker.transport.trickle import TricklePublisher
from tests.helpers import collect
from tests.test_streaming_media import FPS, H, W, synthetic_segments

FAST = IngestConfig(
    hw_decode="off",
    open_timeout_s=2.0,
    read_timeout_s=1.0,
    stall_timeout_s=1.5,
    backoff_initial_s=0.1,
    reconnect_interval_sec=0.3,
)
#: 2 s of video per segment, like a gateway's.
SEGMENTS = synthetic_segments(4 * FPS)


@pytest.fixture
async def trickle() -> AsyncIterator[tuple[TrickleServer, str]]:
    server = TrickleServer(autocreate=True)
    port = await server.start("127.0.0.1", 0)
    yield server, f"127.0.0.1:{port}"
    await server.stop()


async def wait_until(predicate: Callable[[], bool], within: float = 8.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        assert loop.time() < deadline, "condition not met"
        await asyncio.sleep(0.02)


async def publish_live(url: str, rounds: int, *, reset: bool = False) -> TricklePublisher:
    """Segments at the pace a live publisher sends them (2 s of media per 0.5 s, to be quick)."""
    publisher = TricklePublisher(url, "video/mp2t", reset_on_start=reset)
    for _ in range(rounds):
        for segment in SEGMENTS:
            writer = await publisher.next_segment()
            step = -(-len(segment) // 20)
            for offset in range(0, len(segment), step):  # streamed, as an encoder writes it
                await writer.write(segment[offset : offset + step])
                await asyncio.sleep(0.5 / 20)
            await writer.close()
    return publisher


def test_trickle_urls_are_their_own_kind_and_share_a_key() -> None:
    source = SourceConfig(url="trickle://127.0.0.1:3389/cam")
    assert source.kind == "trickle" and not source.is_file
    https = SourceConfig(url="TRICKLE+HTTPS://Host:443/cam")
    assert https.key == "trickle:https://host/cam"
    assert normalise_source_url("trickle+http://127.0.0.1:3389/cam") == (
        "http://127.0.0.1:3389/cam"
    )
    assert source.key == SourceConfig(url="trickle+http://127.0.0.1:3389/cam").key


async def test_one_decode_for_every_subscriber(trickle: tuple[TrickleServer, str]) -> None:
    _server, address = trickle
    async with CameraHub(FAST) as hub:
        source = SourceConfig(url=f"trickle://{address}/cam")
        every = hub.subscribe(source, target_fps=100)
        slow = hub.subscribe(source, target_fps=2)
        publisher = asyncio.ensure_future(publish_live(f"http://{address}/cam", 2))
        first = await every.next_frame(timeout=8)
        assert first is not None and first.rgb.shape == (H, W, 3)
        got_every, got_slow = await asyncio.gather(collect(every, 1.5), collect(slow, 1.5))
        assert len(got_every) > 3 * len(got_slow) > 0
        statuses = hub.statuses()
        assert len(statuses) == 1  # one reader, one decode
        status = statuses[0]
        assert status.kind == "trickle" and status.online and status.subscribers == 2
        assert (status.width, status.height, status.codec) == (W, H, "h264")
        # The hub may have subscribed before the publisher created the channel (404, then a
        # reconnect); every frame since is decoded once.
        assert status.frames_decoded >= len(got_every)
        await (await publisher).close()
        await every.close()
        await slow.close()


async def test_channel_end_goes_offline_and_a_restarted_publisher_is_picked_up(
    trickle: tuple[TrickleServer, str],
) -> None:
    _server, address = trickle
    url = f"http://{address}/cam"
    async with CameraHub(FAST) as hub:
        source = SourceConfig(url=f"trickle://{address}/cam")
        sub = hub.subscribe(source, target_fps=100)
        publisher = await publish_live(url, 1)
        assert await sub.next_frame(timeout=5) is not None
        await publisher.close()  # DELETE: the channel ends (404, Closed)
        await wait_until(lambda: not hub.statuses()[0].online)
        status = hub.statuses()[0]
        assert status.last_error is not None and "ended" in status.last_error
        # The publisher comes back (autocreate): the reader reconnects to it.
        again = asyncio.ensure_future(publish_live(url, 2, reset=True))
        await wait_until(lambda: hub.statuses()[0].online)
        assert hub.statuses()[0].reconnects >= 1
        frame = await sub.next_frame(timeout=5)
        assert frame is not None and frame.rgb.shape == (H, W, 3)
        await (await again).close()
        await sub.close()


async def test_missing_channel_is_offline_with_a_clear_error() -> None:
    server = TrickleServer(autocreate=False)  # GETs of unknown channels answer 404
    port = await server.start("127.0.0.1", 0)
    try:
        async with CameraHub(FAST.model_copy(update={"max_retries": 2})) as hub:
            source = SourceConfig(url=f"trickle://127.0.0.1:{port}/nobody")
            sub = hub.subscribe(source, target_fps=5)
            await wait_until(lambda: hub.statuses()[0].gave_up)
            status = hub.statuses()[0]
            assert not status.online and status.consecutive_failures == 3  # 1 + 2 retries
            assert status.last_error is not None and "ended" in status.last_error
            await sub.close()
    finally:
        await server.stop()


async def test_garbage_on_the_channel_is_an_error_not_a_crash(
    trickle: tuple[TrickleServer, str],
) -> None:
    _server, address = trickle
    async with CameraHub(FAST.model_copy(update={"max_retries": 1})) as hub:
        sub = hub.subscribe(SourceConfig(url=f"trickle://{address}/junk"), target_fps=5)
        publisher = TricklePublisher(f"http://{address}/junk", "video/mp2t")
        for _ in range(4):
            await publisher.publish(b"\x47" + b"\xff" * 200_000)
            await asyncio.sleep(0.2)
        await wait_until(lambda: hub.statuses()[0].gave_up)
        status = hub.statuses()[0]
        assert not status.online and status.last_error is not None
        assert status.last_error.startswith(("undecodable", "stalled"))
        await publisher.close()
        await sub.close()


async def test_hw_decode_nvdec_falls_back_to_software_and_the_status_says_which(
    trickle: tuple[TrickleServer, str], caplog: pytest.LogCaptureFixture
) -> None:
    _server, address = trickle
    caplog.set_level(logging.INFO, logger="pytrickle_worker.media")
    async with CameraHub(FAST.model_copy(update={"hw_decode": "nvdec"})) as hub:
        assert hub.nvdec  # forced: tried whatever the host has
        subscription = hub.subscribe(SourceConfig(url=f"trickle://{address}/cam"), target_fps=5)
        publisher = asyncio.ensure_future(publish_live(f"http://{address}/cam", 1))
        assert await subscription.next_frame(timeout=8) is not None
        status = hub.statuses()[0]
        await (await publisher).close()
        await subscription.close()
    fell_back = [r.getMessage() for r in caplog.records if "NVDEC is not usable" in r.getMessage()]
    if count_gpus() == 0:  # no GPU: software, said once
        assert (status.decoder, status.hw_decoder) == ("h264", False), status
        assert len(fell_back) == 1, fell_back
    else:  # a GPU: NVDEC decodes, or the fallback is logged
        assert status.hw_decoder or fell_back, status
