"""The trickle server on the wire: a real server on 127.0.0.1, raw aiohttp client requests."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from pytrickle_worker.devtools.trickle_server import TrickleServer
from pytrickle_worker.transport.trickle.headers import (
    CLOSED_HEADER,
    LATEST_HEADER,
    RESET_HEADER,
    SEQ_HEADER,
)

HOST = "127.0.0.1"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client


async def _serve(server: TrickleServer) -> str:
    port = await server.start(HOST, 0)
    return f"http://{HOST}:{port}"


@pytest.fixture
async def trickle() -> AsyncIterator[tuple[TrickleServer, str]]:
    server = TrickleServer(keepalive_interval_s=0.2)
    base = await _serve(server)
    yield server, base
    await server.stop()


class Body:
    """A chunked request body the test feeds piece by piece."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def stream(self) -> AsyncIterator[bytes]:
        yield b""  # puts the request headers on the wire now (aiohttp coalesces them otherwise)
        while (chunk := await self.queue.get()) is not None:
            yield chunk

    def feed(self, chunk: bytes | None) -> None:
        self.queue.put_nowait(chunk)


async def _post(
    session: aiohttp.ClientSession, url: str, data: bytes, **headers: str
) -> tuple[int, dict[str, str]]:
    async with session.post(url, data=data, headers=headers) as response:
        await response.read()
        return response.status, dict(response.headers)


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], bytes]:
    async with session.get(url) as response:
        return response.status, dict(response.headers), await response.read()


async def _fill(session: aiohttp.ClientSession, base: str, channel: str, count: int) -> None:
    for seq in range(count):
        status, _ = await _post(session, f"{base}/{channel}/{seq}", f"seg-{seq}".encode())
        assert status == 200


async def test_autocreate_on_post_and_read_back(
    trickle: tuple[TrickleServer, str], session: aiohttp.ClientSession
) -> None:
    server, base = trickle
    status, headers = await _post(
        session, f"{base}/cam/0", b"hello", **{"Content-Type": "video/mp2t"}
    )
    assert status == 200
    assert headers[SEQ_HEADER] == "0"
    assert server.channels == ["cam"]
    status, headers, body = await _get(session, f"{base}/cam/0")
    assert (status, body) == (200, b"hello")
    assert headers[SEQ_HEADER] == "0"
    assert headers["Content-Type"] == "video/mp2t"
    assert headers[LATEST_HEADER] == "1"  # segment 0 is not the live edge any more
    status, headers, body = await _get(session, f"{base}/cam/next")
    assert (status, body, headers[LATEST_HEADER]) == (200, b"1", "1")


async def test_autocreate_off_gives_404_until_created(session: aiohttp.ClientSession) -> None:
    server = TrickleServer(autocreate=False)
    base = await _serve(server)
    try:
        assert (await _post(session, f"{base}/ch/0", b"x"))[0] == 404
        assert (await _post(session, f"{base}/ch", b""))[0] == 404
        assert server.channels == []
        assert server.create_channel("ch", "application/json")
        assert (await _post(session, f"{base}/ch/0", b"{}"))[0] == 200
        status, headers, body = await _get(session, f"{base}/ch/0")
        assert (status, body, headers["Content-Type"]) == (200, b"{}", "application/json")
    finally:
        await server.stop()


async def test_post_channel_creates_it(
    trickle: tuple[TrickleServer, str], session: aiohttp.ClientSession
) -> None:
    server, base = trickle
    status, _ = await _post(session, f"{base}/ev", b"", **{"Expect-Content": "application/json"})
    assert status == 200
    assert server.channels == ["ev"]
    status, headers, body = await _get(session, f"{base}/ev/next")
    assert (status, body, headers[LATEST_HEADER]) == (200, b"0", "0")
    assert CLOSED_HEADER not in headers


async def test_unknown_channel_is_404(
    trickle: tuple[TrickleServer, str], session: aiohttp.ClientSession
) -> None:
    _, base = trickle
    for url in (f"{base}/nope/0", f"{base}/nope/-1", f"{base}/nope/next"):
        assert (await _get(session, url))[0] == 404
    async with session.delete(f"{base}/nope/0") as response:
        assert response.status == 404


async def test_invalid_indices_are_400(
    trickle: tuple[TrickleServer, str], session: aiohttp.ClientSession
) -> None:
    server, base = trickle
    server.create_channel("ch")
    assert (await _get(session, f"{base}/ch/abc"))[0] == 400
    assert (await _get(session, f"{base}/ch/-3"))[0] == 400
    assert (await _post(session, f"{base}/ch/-2", b"x"))[0] == 400
    async with session.delete(f"{base}/ch/x") as response:
        assert response.status == 400


async def test_ring_keeps_five_segments(
    trickle: tuple[TrickleServer, str], session: aiohttp.ClientSession
) -> None:
    _, base = trickle
    await _fill(session, base, "ring", 7)  # 0..6: slots 0 and 1 now hold 5 and 6
    for gone in (0, 1):
        status, headers, _ = await _get(session, f"{base}/ring/{gone}")
        assert status == 470
        assert headers[LATEST_HEADER] == "7"
        assert headers[SEQ_HEADER] == str(gone)
    for seq in range(2, 7):
        status, headers, body = await _get(session, f"{base}/ring/{seq}")
        assert (status, body) == (200, f"seg-{seq}".encode())
        assert headers[SEQ_HEADER] == str(seq)
    # Too far ahead of the write head is a 470 as well (not a wait).
    status, headers, _ = await _get(session, f"{base}/ring/9")
    assert (status, headers[LATEST_HEADER]) == (470, "7")


async def test_minus_one_waits_for_the_next_write(
    trickle: tuple[TrickleServer, str], session: aiohttp.ClientSession
) -> None:
    _, base = trickle
    await _fill(session, base, "ch", 1)
    waiting = asyncio.create_task(_get(session, f"{base}/ch/-1"))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    assert (await _post(session, f"{base}/ch/-1", b"next one"))[0] == 200  # -1 = next write
    status, headers, body = await asyncio.wait_for(waiting, 5)
    assert (status, body, headers[SEQ_HEADER]) == (200, b"next one", "1")


async def test_minus_two_gives_the_last_segment(
    trickle: tuple[TrickleServer, str], session: aiohttp.ClientSession
) -> None:
    server, base = trickle
    await _fill(session, base, "ch", 3)
    status, headers, body = await _get(session, f"{base}/ch/-2")
    assert (status, body, headers[SEQ_HEADER]) == (200, b"seg-2", "2")
    # On a channel with nothing written yet, -2 waits for segment 0.
    server.create_channel("empty")
    waiting = asyncio.create_task(_get(session, f"{base}/empty/-2"))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await _post(session, f"{base}/empty/0", b"first")
    status, headers, body = await asyncio.wait_for(waiting, 5)
    assert (status, body, headers[SEQ_HEADER]) == (200, b"first", "0")


async def test_segment_streams_to_subscribers_while_written(
    trickle: tuple[TrickleServer, str], session: aiohttp.ClientSession
) -> None:
    _, base = trickle
    body = Body()
    post = asyncio.create_task(session.post(f"{base}/live/0", data=body.stream()))
    await asyncio.sleep(0.1)
    opening = asyncio.create_task(session.get(f"{base}/live/0"))
    await asyncio.sleep(0.1)
    assert not opening.done()  # a subscriber gets its headers with the first byte
    body.feed(b"part one|")
    async with await asyncio.wait_for(opening, 5) as early:
        first = await asyncio.wait_for(early.content.readany(), 5)
        assert first == b"part one|"
        assert not post.done()  # the POST is still open: the bytes were streamed, not stored
        assert early.headers[SEQ_HEADER] == "0"
        # A second subscriber that joins mid-segment reads it from the start too.
        async with session.get(f"{base}/live/0") as late:
            assert await asyncio.wait_for(late.content.readany(), 5) == b"part one|"
            body.feed(b"part two")
            body.feed(None)
            assert await asyncio.wait_for(late.read(), 5) == b"part two"
        assert first + await asyncio.wait_for(early.read(), 5) == b"part one|part two"
    response = await asyncio.wait_for(post, 5)
    assert response.status == 200
    assert response.headers[SEQ_HEADER] == "0"
    response.release()


async def test_delete_channel_ends_subscribers_then_404(
    trickle: tuple[TrickleServer, str], session: aiohttp.ClientSession
) -> None:
    server, base = trickle
    await _fill(session, base, "ch", 2)
    waiting = asyncio.create_task(_get(session, f"{base}/ch/-1"))
    await asyncio.sleep(0.2)
    async with session.delete(f"{base}/ch") as response:
        assert response.status == 200
    status, headers, _ = await asyncio.wait_for(waiting, 5)
    assert status == 200
    assert headers[CLOSED_HEADER] == "terminated"
    assert server.channels == []
    assert (await _get(session, f"{base}/ch/0"))[0] == 404
    assert (await _get(session, f"{base}/ch/-1"))[0] == 404
    async with session.delete(f"{base}/ch") as response:
        assert response.status == 400
        assert "Invalid stream" in await response.text()


async def test_delete_unknown_channel_is_400(
    trickle: tuple[TrickleServer, str], session: aiohttp.ClientSession
) -> None:
    _, base = trickle
    async with session.delete(f"{base}/never") as response:
        assert response.status == 400
        assert "Invalid stream" in await response.text()


async def test_closed_channel_answers_pending_posts_with_closed(
    trickle: tuple[TrickleServer, str], session: aiohttp.ClientSession
) -> None:
    server, base = trickle
    server.create_channel("ch")
    body = Body()  # a preconnected POST: headers sent, no byte yet
    post = asyncio.create_task(session.post(f"{base}/ch/0", data=body.stream()))
    await asyncio.sleep(0.2)
    assert server.close_channel("ch")
    response = await asyncio.wait_for(post, 5)
    assert response.status == 200
    assert response.headers[CLOSED_HEADER] == "terminated"
    response.release()


async def test_delete_segment_releases_its_subscriber(
    trickle: tuple[TrickleServer, str], session: aiohttp.ClientSession
) -> None:
    server, base = trickle
    await _fill(session, base, "ch", 1)
    waiting = asyncio.create_task(_get(session, f"{base}/ch/1"))  # pre-creates segment 1
    await asyncio.sleep(0.2)
    async with session.delete(f"{base}/ch/1") as response:
        assert response.status == 200
    status, headers, _ = await asyncio.wait_for(waiting, 5)
    assert status == 470  # ended without data on an open channel
    assert headers[LATEST_HEADER] == "1"
    async with session.delete(f"{base}/ch/7") as response:
        assert response.status == 400
    assert server.channels == ["ch"]


async def test_reset_releases_a_subscriber_waiting_on_the_old_sequence(
    trickle: tuple[TrickleServer, str], session: aiohttp.ClientSession
) -> None:
    server, base = trickle
    await _fill(session, base, "ch", 3)
    stuck = asyncio.create_task(_get(session, f"{base}/ch/3"))  # waits for the old publisher
    await asyncio.sleep(0.2)
    # A restarted publisher without the header: segment 0 overwrites its slot, 3 still waits.
    assert (await _post(session, f"{base}/ch/0", b"restart-0"))[0] == 200
    assert server.next_write("ch") == 1
    await asyncio.sleep(0.2)
    assert not stuck.done()
    # With Lp-Trickle-Reset the waiting subscriber is released and pointed at the new sequence.
    body = Body()
    post = asyncio.create_task(
        session.post(f"{base}/ch/0", data=body.stream(), headers={RESET_HEADER: "1"})
    )
    status, headers, _ = await asyncio.wait_for(stuck, 5)
    assert status == 470
    assert headers[LATEST_HEADER] == "0"
    assert (await _get(session, f"{base}/ch/2"))[0] == 470  # old segments are gone
    reader = asyncio.create_task(_get(session, f"{base}/ch/0"))
    body.feed(b"after reset")
    body.feed(None)
    status, headers, data = await asyncio.wait_for(reader, 5)
    assert (status, data, headers[SEQ_HEADER]) == (200, b"after reset", "0")
    (await post).release()


async def test_idle_channels_are_swept(session: aiohttp.ClientSession) -> None:
    server = TrickleServer(idle_timeout_s=0.4, sweep_interval_s=0.1)
    base = await _serve(server)
    try:
        await _fill(session, base, "idle", 1)
        await _fill(session, base, "busy", 1)
        server.create_channel("_internal")
        waiting = asyncio.create_task(_get(session, f"{base}/idle/-1"))
        for seq in range(1, 8):  # keep "busy" written to
            await asyncio.sleep(0.1)
            await _post(session, f"{base}/busy/{seq}", b"x")
        status, headers, _ = await asyncio.wait_for(waiting, 5)
        assert (status, headers[CLOSED_HEADER]) == (200, "terminated")
        assert sorted(server.channels) == ["_internal", "busy"]
        assert (await _get(session, f"{base}/idle/0"))[0] == 404
    finally:
        await server.stop()


async def test_oversize_segment_is_413(session: aiohttp.ClientSession) -> None:
    server = TrickleServer(max_segment_bytes=1024)
    base = await _serve(server)
    try:
        server.create_channel("ch")
        # Declared too large: refused before anything is stored.
        assert (await _post(session, f"{base}/ch/0", b"x" * 2048))[0] == 413
        assert server.next_write("ch") == 0
        # Chunked and growing past the limit while subscribers read it.
        reader = asyncio.create_task(_get(session, f"{base}/ch/0"))
        await asyncio.sleep(0.1)
        body = Body()
        post = asyncio.create_task(session.post(f"{base}/ch/0", data=body.stream()))
        for _ in range(3):
            body.feed(b"y" * 512)
        response = await asyncio.wait_for(post, 5)
        assert response.status == 413
        response.release()
        body.feed(None)
        status, _, data = await asyncio.wait_for(reader, 5)
        assert status == 200
        assert data == b"y" * 1024  # the segment ended where the limit was hit
        # The channel keeps working for the next segment.
        assert (await _post(session, f"{base}/ch/1", b"fine"))[0] == 200
    finally:
        await server.stop()


async def test_channel_limit_is_503(session: aiohttp.ClientSession) -> None:
    server = TrickleServer(max_channels=2)
    base = await _serve(server)
    try:
        assert (await _post(session, f"{base}/a/0", b"1"))[0] == 200
        assert (await _post(session, f"{base}/b/0", b"1"))[0] == 200
        assert (await _post(session, f"{base}/c/0", b"1"))[0] == 503
        assert sorted(server.channels) == ["a", "b"]
    finally:
        await server.stop()


async def test_empty_post_advances_the_write_index(
    trickle: tuple[TrickleServer, str], session: aiohttp.ClientSession
) -> None:
    server, base = trickle
    server.create_channel("ch")
    waiting = asyncio.create_task(_get(session, f"{base}/ch/0"))
    await asyncio.sleep(0.1)
    status, headers = await _post(session, f"{base}/ch/0", b"")
    assert (status, headers[SEQ_HEADER]) == (200, "0")
    assert server.next_write("ch") == 1
    status, headers, _ = await asyncio.wait_for(waiting, 5)
    assert (status, headers[LATEST_HEADER]) == (470, "1")


async def test_keepalive_100_continue_until_the_first_byte(
    trickle: tuple[TrickleServer, str],
) -> None:
    _, base = trickle
    port = int(base.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(
            b"POST /ka/0 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: text/plain\r\n\r\n"
        )
        await writer.drain()
        await asyncio.sleep(0.7)  # keepalive_interval_s is 0.2 s
        interim = await asyncio.wait_for(reader.read(4096), 5)
        assert interim.count(b"HTTP/1.1 100 Continue\r\n\r\n") >= 2
        assert b"200" not in interim
        writer.write(b"5\r\nhello\r\n0\r\n\r\n")
        await writer.drain()
        final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        # No more interim responses once the body started: only the final one follows.
        assert final.startswith(b"HTTP/1.1 200")
        assert b"Lp-Trickle-Seq: 0" in final
    finally:
        writer.close()
        await writer.wait_closed()


async def test_mounted_under_a_base_path(session: aiohttp.ClientSession) -> None:
    server = TrickleServer(idle_timeout_s=0.3, sweep_interval_s=0.1)
    app = web.Application()

    async def health(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/health", health)
    server.attach(app, "/ai/trickle/")
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    port = runner.addresses[0][1]
    base = f"http://{HOST}:{port}"
    try:
        assert (await _get(session, f"{base}/health"))[2] == b"ok"
        assert (await _post(session, f"{base}/ai/trickle/ch/0", b"mounted"))[0] == 200
        assert (await _get(session, f"{base}/ai/trickle/ch/0"))[2] == b"mounted"
        assert (await _get(session, f"{base}/ch/0"))[0] == 404
        await asyncio.sleep(0.7)  # the sweeper runs with the host app
        assert server.channels == []
    finally:
        await runner.cleanup()


def test_run_trickle_server_serves_until_sigterm() -> None:
    """The blocking helper behind ``pytrickle-worker trickle-server``, in its own process."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = int(sock.getsockname()[1])
    code = (
        "from pytrickle_worker.devtools.trickle_server import run_trickle_server; "
        f"run_trickle_server({HOST!r}, {port})"
    )
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=repo)
    try:

        async def exercise() -> None:
            async with aiohttp.ClientSession() as client:
                deadline = time.monotonic() + 15
                while True:
                    try:
                        status, _ = await _post(client, f"http://{HOST}:{port}/cli/0", b"ok")
                        break
                    except aiohttp.ClientConnectorError:
                        assert time.monotonic() < deadline, "trickle server did not start"
                        await asyncio.sleep(0.1)
                assert status == 200
                got = await _get(client, f"http://{HOST}:{port}/cli/0")
                assert (got[0], got[2]) == (200, b"ok")

        asyncio.run(exercise())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
