"""Trickle publisher and subscriber against a real trickle server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from pytrickle_worker.devtools.trickle_server import TrickleServer
from pytrickle_worker.transport.trickle import TrickleError, TricklePublisher, TrickleSubscriber

HOST = "127.0.0.1"
LIMIT = 1 << 20


@pytest.fixture
async def trickle() -> AsyncIterator[tuple[TrickleServer, str]]:
    server = TrickleServer(keepalive_interval_s=0.2)
    port = await server.start(HOST, 0)
    yield server, f"http://{HOST}:{port}"
    await server.stop()


def _payload(seq: int) -> list[bytes]:
    """Segment ``seq`` as a few chunks of different sizes."""
    return [f"seg{seq}:".encode(), bytes([seq % 256]) * (1000 + 97 * seq), b"|end"]


async def _read(sub: TrickleSubscriber) -> tuple[int, bytes] | None:
    segment = await asyncio.wait_for(sub.next_segment(), 5)
    if segment is None:
        return None
    return segment.seq, await asyncio.wait_for(segment.read_all(LIMIT), 5)


async def _publish_all(pub: TricklePublisher, seqs: range) -> None:
    for seq in seqs:
        writer = await pub.next_segment()
        assert writer.seq == seq
        for chunk in _payload(seq):
            await writer.write(chunk)
            await asyncio.sleep(0.005)
        await writer.close()
        assert writer.ok, writer.error
        assert writer.server_seq == seq


async def test_round_trip_in_order(trickle: tuple[TrickleServer, str]) -> None:
    server, base = trickle
    url = f"{base}/stream"
    server.create_channel("stream", "video/mp2t")
    count = 12  # more than the ring of 5
    async with TrickleSubscriber(url, start_seq=-1) as sub:
        received: list[tuple[int, bytes]] = []

        async def consume() -> None:
            while (got := await _read(sub)) is not None:
                received.append(got)

        consumer = asyncio.create_task(consume())
        await asyncio.sleep(0.1)
        async with TricklePublisher(url, "video/mp2t") as pub:
            await _publish_all(pub, range(count))
            # The subscriber keeps up: wait until it has everything before the DELETE.
            for _ in range(200):
                if len(received) == count:
                    break
                await asyncio.sleep(0.01)
        await asyncio.wait_for(consumer, 5)  # close() sent DELETE: the subscriber sees the end
        assert [seq for seq, _ in received] == list(range(count))
        for seq, data in received:
            assert data == b"".join(_payload(seq))
        assert sub.ended
        assert sub.jumps == 0
        assert sub.errors == 0
        assert pub.stats.posts_ok == count
        assert pub.stats.posts_failed == 0
        assert server.channels == []


async def test_segment_chunks_arrive_while_published(trickle: tuple[TrickleServer, str]) -> None:
    server, base = trickle
    url = f"{base}/live"
    server.create_channel("live")
    async with (
        TrickleSubscriber(url, start_seq=-1) as sub,
        TricklePublisher(url, "text/plain") as pub,
    ):
        writer = await pub.next_segment()
        await writer.write(b"first")
        segment = await asyncio.wait_for(sub.next_segment(), 5)
        assert segment is not None
        chunks = segment.chunks()
        assert await asyncio.wait_for(anext(chunks), 5) == b"first"
        await writer.write(b"second")
        assert await asyncio.wait_for(anext(chunks), 5) == b"second"
        await writer.close()
        assert [c async for c in chunks] == []
        assert segment.done


async def test_publisher_tolerates_100_continue_keepalives(
    trickle: tuple[TrickleServer, str],
) -> None:
    server, base = trickle  # keepalive_interval_s=0.2
    url = f"{base}/slow"
    server.create_channel("slow")
    async with (
        TricklePublisher(url, "text/plain") as pub,
        TrickleSubscriber(url, start_seq=0) as sub,
    ):
        writer = await pub.next_segment()
        await asyncio.sleep(0.7)  # several interim 100 responses on the open POST
        await writer.write(b"late first byte")
        await writer.close()
        assert writer.ok, writer.error
        assert await _read(sub) == (0, b"late first byte")


async def test_start_at_minus_two_and_minus_one(trickle: tuple[TrickleServer, str]) -> None:
    server, base = trickle
    url = f"{base}/ch"
    server.create_channel("ch")
    async with TricklePublisher(url, "application/octet-stream") as pub:
        for seq in range(3):
            await pub.publish(f"m{seq}".encode())
        latest = TrickleSubscriber(url)  # start_seq=-2: the last written segment
        upcoming = TrickleSubscriber(url, start_seq=-1)  # the next one to be written
        try:
            assert await _read(latest) == (2, b"m2")
            waiting = asyncio.create_task(_read(upcoming))
            await asyncio.sleep(0.2)
            assert not waiting.done()
            await pub.publish(b"m3")
            assert await asyncio.wait_for(waiting, 5) == (3, b"m3")
            assert await _read(latest) == (3, b"m3")  # continues from Lp-Trickle-Seq + 1
        finally:
            await latest.close()
            await upcoming.close()


async def test_470_jumps_to_latest(trickle: tuple[TrickleServer, str]) -> None:
    server, base = trickle
    url = f"{base}/ch"
    server.create_channel("ch")
    async with TricklePublisher(url, "text/plain") as pub:
        for seq in range(10):
            await pub.publish(f"m{seq}".encode())
        async with TrickleSubscriber(url, start_seq=0) as sub:  # 0 was overwritten long ago
            waiting = asyncio.create_task(_read(sub))
            await asyncio.sleep(0.2)
            assert sub.jumps == 1
            assert sub.seq == 10  # Lp-Trickle-Latest: now waiting at the live edge
            await pub.publish(b"m10")
            assert await asyncio.wait_for(waiting, 5) == (10, b"m10")


async def test_unknown_channel_ends_with_none(trickle: tuple[TrickleServer, str]) -> None:
    _, base = trickle
    async with TrickleSubscriber(f"{base}/missing") as sub:
        assert await sub.next_segment() is None
        assert sub.ended
        assert await sub.next_segment() is None
        assert sub.errors == 0


async def test_closed_channel_ends_with_none(trickle: tuple[TrickleServer, str]) -> None:
    server, base = trickle
    server.create_channel("ch")
    async with TrickleSubscriber(f"{base}/ch", start_seq=-1) as sub:
        waiting = asyncio.create_task(sub.next_segment())
        await asyncio.sleep(0.2)
        server.close_channel("ch")  # the waiting GET is answered with Lp-Trickle-Closed
        assert await asyncio.wait_for(waiting, 5) is None
        assert sub.ended


async def test_publisher_close_deletes_the_channel(trickle: tuple[TrickleServer, str]) -> None:
    server, base = trickle
    url = f"{base}/ch"
    pub = TricklePublisher(url, "text/plain")
    assert await pub.publish(b"only")
    assert server.channels == ["ch"]
    async with TrickleSubscriber(url, start_seq=-1) as sub:
        waiting = asyncio.create_task(sub.next_segment())
        await asyncio.sleep(0.2)
        await pub.close()
        assert server.channels == []
        assert await asyncio.wait_for(waiting, 5) is None
    # close(delete=False) leaves the channel alone.
    other = TricklePublisher(f"{base}/kept", "text/plain")
    await other.publish(b"x")
    await other.close(delete=False)
    assert server.channels == ["kept"]


async def test_restarted_publisher_with_reset_keeps_subscriber_going(
    trickle: tuple[TrickleServer, str],
) -> None:
    server, base = trickle
    url = f"{base}/ch"
    server.create_channel("ch")
    async with TrickleSubscriber(url, start_seq=-1) as sub:
        first = TricklePublisher(url, "text/plain")
        reading = asyncio.create_task(_read(sub))
        await asyncio.sleep(0.1)
        for seq in range(7):
            await first.publish(f"old{seq}".encode())
            assert await asyncio.wait_for(reading, 5) == (seq, f"old{seq}".encode())
            reading = asyncio.create_task(_read(sub))
        await first.close(delete=False)  # crashed or restarted: the channel stays
        # The subscriber now waits for 7. A new publisher counts from 0 again and says so.
        second = TricklePublisher(url, "text/plain", reset_on_start=True)
        try:
            await second.publish(b"new0")
            assert await asyncio.wait_for(reading, 5) == (0, b"new0")
            assert sub.jumps == 1  # released with 470, Lp-Trickle-Latest 0
            await second.publish(b"new1")
            assert await _read(sub) == (1, b"new1")
        finally:
            await second.close()


async def test_restarted_publisher_without_reset_resumes_at_the_old_seq(
    trickle: tuple[TrickleServer, str],
) -> None:
    """go-livepeer's behaviour: a POST below the write index overwrites its slot only.

    A subscriber waiting on seq 3 of the old publisher keeps waiting until the new publisher
    reaches 3; segments 0..2 of the new run pass it by.
    """
    server, base = trickle
    url = f"{base}/ch"
    server.create_channel("ch")
    first = TricklePublisher(url, "text/plain")
    for seq in range(3):
        await first.publish(f"old{seq}".encode())
    await first.close(delete=False)
    async with TrickleSubscriber(url, start_seq=-1) as sub:
        reading = asyncio.create_task(_read(sub))
        second = TricklePublisher(url, "text/plain")
        try:
            for seq in range(3):
                await second.publish(f"new{seq}".encode())
            await asyncio.sleep(0.2)
            assert not reading.done()
            assert server.next_write("ch") == 3
            await second.publish(b"new3")
            assert await asyncio.wait_for(reading, 5) == (3, b"new3")
        finally:
            await second.close()


async def test_publisher_survives_a_failed_post() -> None:
    server = TrickleServer(max_segment_bytes=100)
    port = await server.start(HOST, 0)
    url = f"http://{HOST}:{port}/ch"
    try:
        async with TricklePublisher(url, "text/plain") as pub:
            writer = await pub.next_segment()
            for _ in range(4):
                await writer.write(b"z" * 40)
            await writer.close()
            assert writer.status == 413
            assert writer.failed
            assert pub.stats.posts_failed == 1
            ok = await pub.next_segment()
            await ok.write(b"small")
            await ok.close()
            assert ok.ok
            assert ok.server_seq == 1
            assert pub.stats.posts_ok == 1
    finally:
        await server.stop()


async def test_publisher_reopens_a_preconnect_the_server_released(
    trickle: tuple[TrickleServer, str],
) -> None:
    server, base = trickle
    url = f"{base}/ch"
    async with TricklePublisher(url, "text/plain") as pub:
        await pub.publish(b"before")  # POST 1 is now preconnected
        await asyncio.sleep(0.1)
        server.close_channel("ch")  # e.g. the idle sweep: the pending POST 1 is answered
        await asyncio.sleep(0.1)
        writer = await pub.next_segment()  # a fresh POST 1, which autocreates the channel
        await writer.write(b"after")
        await writer.close()
        assert writer.ok, writer.error
        assert writer.server_seq == 1
        assert pub.stats.posts_failed == 0
        async with TrickleSubscriber(url, start_seq=1) as sub:
            assert await _read(sub) == (1, b"after")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def test_publisher_to_a_dead_server_counts_failures() -> None:
    url = f"http://{HOST}:{_closed_port()}/ch"
    pub = TricklePublisher(url, "text/plain", connect_timeout_s=1.0)
    assert not await pub.publish(b"lost")
    assert not await pub.publish(b"lost too")
    await pub.close()
    assert pub.stats.posts_failed == 2
    assert pub.stats.posts_ok == 0


async def test_subscriber_gives_up_after_max_retries() -> None:
    calls = 0

    async def broken(_request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.Response(status=503, text="busy")

    app = web.Application()
    app.router.add_get("/ch/{idx}", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        sub = TrickleSubscriber(f"http://{HOST}:{port}/ch", max_retries=2, retry_delay_s=0.01)
        with pytest.raises(TrickleError, match="503 busy"):
            await sub.next_segment()
        assert calls == 3
        await sub.close()
    finally:
        await runner.cleanup()
    dead = TrickleSubscriber(
        f"http://{HOST}:{_closed_port()}/ch", max_retries=1, retry_delay_s=0.01
    )
    with pytest.raises(TrickleError):
        await dead.next_segment()
    await dead.close()


async def test_subscriber_refreshes_a_long_wait(trickle: tuple[TrickleServer, str]) -> None:
    server, base = trickle
    url = f"{base}/quiet"
    server.create_channel("quiet")
    async with TrickleSubscriber(url, start_seq=-1, read_timeout_s=0.3, max_retries=0) as sub:
        waiting = asyncio.create_task(_read(sub))
        await asyncio.sleep(1.0)
        async with TricklePublisher(url, "application/json") as pub:
            await pub.publish(b'{"late": true}')
            assert await asyncio.wait_for(waiting, 5) == (0, b'{"late": true}')
        assert sub.refreshes >= 2  # timed-out waits were made again, not counted as errors
        assert sub.errors == 0


async def test_read_all_limit_and_single_read(trickle: tuple[TrickleServer, str]) -> None:
    server, base = trickle
    url = f"{base}/ch"
    server.create_channel("ch")
    async with TricklePublisher(url, "text/plain") as pub:
        await pub.publish(b"x" * 64)
        async with TrickleSubscriber(url) as sub:
            segment = await sub.next_segment()
            assert segment is not None
            with pytest.raises(TrickleError, match="larger than 10 bytes"):
                await segment.read_all(10)
            with pytest.raises(TrickleError, match="already read"):
                await segment.read_all(100)


async def test_requests_are_opened_in_advance(trickle: tuple[TrickleServer, str]) -> None:
    server, base = trickle
    url = f"{base}/ch"
    server.create_channel("ch")
    async with TricklePublisher(url, "text/plain") as pub:
        writer = await pub.next_segment()  # POST 0, and POST 1 preconnected
        await writer.write(b"zero")
        async with TrickleSubscriber(url, start_seq=0) as sub:
            segment = await sub.next_segment()  # GET 0, and GET 1 preconnected
            assert segment is not None
            await writer.close()
            assert await segment.read_all(LIMIT) == b"zero"
            await asyncio.sleep(0.1)
            # Server internals, read only: both requests for segment 1 already wait on it.
            channel = server._channels["ch"]  # pyright: ignore[reportPrivateUsage]
            pending = channel.segments[1]
            assert pending is not None
            assert pending.idx == 1
            assert pending.writers == 1
            assert pending.fresh
            await pub.publish(b"one")
            assert await _read(sub) == (1, b"one")
