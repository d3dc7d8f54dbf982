"""The stream session's side channels (frontdoors/streamserver/channels.py) against the
project's own trickle server on loopback: what a failed POST does to the next index, a
channel the gateway deleted, and the size of a data segment."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pytrickle_worker.devtools.trickle_server import TrickleServer
from pytrickle_worker.frontdoors.streamserver.channels import (
    MAX_DATA_SEGMENT_BYTES,
    ChannelPublisher,
    DataChannel,
    EventsChannel,
)
from pytrickle_worker.frontdoors.streamserver.schemas import (
    RUNTIME_IMMUTABLE,
    StreamParams,
    without_fixed_changes,
)
from pytrickle_worker.transport.trickle import TrickleError, TrickleSubscriber

HOST = "127.0.0.1"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def serve(**options: Any) -> tuple[TrickleServer, str]:
    server = TrickleServer(**options)
    port = await server.start(HOST, 0)
    return server, f"http://{HOST}:{port}"


async def read_segment(url: str, seq: int) -> bytes:
    async with TrickleSubscriber(url, start_seq=seq) as subscriber:
        segment = await asyncio.wait_for(subscriber.next_segment(), 5)
        assert segment is not None and segment.seq == seq
        return await asyncio.wait_for(segment.read_all(1 << 20), 5)


async def test_a_post_that_failed_part_way_moves_on_to_the_next_index(
    http: aiohttp.ClientSession,
) -> None:
    server, base = await serve(max_segment_bytes=100)
    try:
        url = f"{base}/ch-data"
        publisher = ChannelPublisher(url, "text/plain", http)
        # The server takes 100 bytes of segment 0, then refuses it (413): part of it went out.
        assert not await publisher.publish(b"z" * 160)
        assert publisher.next_seq == 1  # posting 0 again would reset what readers have
        assert await publisher.publish(b"small")
        assert await read_segment(url, 1) == b"small"
        assert (publisher.segments_ok, publisher.segments_failed) == (1, 1)
        await publisher.close(delete=False)
    finally:
        await server.stop()


async def test_a_post_that_sent_nothing_is_retried_at_its_index(
    http: aiohttp.ClientSession,
) -> None:
    with socket.socket() as sock:  # a port with nobody behind it
        sock.bind((HOST, 0))
        port = int(sock.getsockname()[1])
    publisher = ChannelPublisher(f"http://{HOST}:{port}/ch", "text/plain", http)
    assert not await publisher.publish(b"lost")
    assert publisher.next_seq == 0  # nothing reached a server: the index is still free
    assert not publisher.gone
    await publisher.close(delete=False)


async def test_a_deleted_channel_is_gone_and_nothing_more_is_posted(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    server, base = await serve(autocreate=False)  # no channel: every POST is a 404
    try:
        publisher = ChannelPublisher(f"{base}/gone", "text/plain", http)
        assert not await publisher.publish(b"one")
        assert publisher.gone
        assert "trickle channel http://127.0.0.1:" in caplog.text and "is gone (404)" in caplog.text
        with pytest.raises(TrickleError, match="is gone"):
            await publisher.begin()
        # The events and data channels stop instead of retrying a deleted channel for ever.
        events = EventsChannel(f"{base}/gone-events", http, retry_initial_s=0.01)
        events.start()
        events.emit({"type": "x"}, "stream_trace")
        records = [{"n": 1}]
        data = DataChannel(f"{base}/gone-data", http, lambda: records, interval_s=0.01)
        data.start()
        for channel in (events, data):
            task = channel._task  # pyright: ignore[reportPrivateUsage] - did the loop end?
            assert task is not None
            await asyncio.wait_for(task, 5)
        assert events.sent == 0 and events.failures == 1
        assert data.records_sent == 0 and data.failures == 1
        await events.close(1)
        await data.close(1)
    finally:
        await server.stop()


async def test_data_segments_stay_under_the_gateways_line_limit(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    server, base = await serve()
    try:
        url = f"{base}/big-data"
        records = [{"n": n, "text": "x" * 300} for n in range(400)]  # about 130 kB
        oversized = {"n": -1, "text": "y" * (MAX_DATA_SEGMENT_BYTES + 1)}
        given = [*records[:200], oversized, *records[200:]]
        taken: list[list[dict[str, Any]]] = [given]
        data = DataChannel(url, http, lambda: taken.pop() if taken else [], interval_s=60)
        assert await data.flush()
        assert data.records_dropped == 1 and "is over the" in caplog.text
        segments = [await read_segment(url, seq) for seq in range(data.batches_sent)]
        assert data.batches_sent >= 3
        assert all(len(segment) <= MAX_DATA_SEGMENT_BYTES for segment in segments)
        received = [
            json.loads(item) for segment in segments for item in json.loads(segment.decode())
        ]
        assert received == records  # every record, in order, once; the oversized one dropped
        assert data.records_sent == len(records)
        await data.close(1)
    finally:
        await server.stop()


# ------------------------------------------------------------------- control messages

FIXED_VALUES = st.one_of(
    st.none(),
    st.integers(-2, 2000),
    st.booleans(),
    st.text(max_size=3),
    # What pytrickle reads as numbers and booleans, and so does the stream door.
    st.sampled_from(["512", " 480", "640.0", "1", "0", "yes", "No", "true"]),
    st.sampled_from([512.0, 480.0]),
)


def as_the_stream_reads(name: str, value: object) -> object:
    """``value`` of a fixed key as a start request's params would hold it."""
    if value is None:
        return None
    params = {name: value}
    if name in ("width", "height"):  # they are validated together
        params["height" if name == "width" else "width"] = 1
    return getattr(StreamParams.model_validate(params), name)


@given(
    current=st.sampled_from(
        [
            StreamParams(),
            StreamParams(width=512, height=512),
            StreamParams(width=640, height=480, detect_out_resolution=True),
        ]
    ),
    fixed=st.dictionaries(st.sampled_from(RUNTIME_IMMUTABLE), FIXED_VALUES),
    rest=st.dictionaries(st.sampled_from(["label", "max_framerate", "prompt"]), st.integers()),
)
@example(  # the same flag as text: no change
    current=StreamParams(width=640, height=480, detect_out_resolution=True),
    fixed={"detect_out_resolution": "1", "width": "640"},
    rest={},
)
def test_a_control_message_keeps_everything_but_changed_fixed_sizes(
    current: StreamParams, fixed: dict[str, Any], rest: dict[str, Any]
) -> None:
    update = {**rest, **fixed}
    kept, dropped = without_fixed_changes(update, current)
    assert {k: v for k, v in kept.items() if k not in RUNTIME_IMMUTABLE} == rest
    for name in RUNTIME_IMMUTABLE:
        if name in kept:  # a fixed key survives only with the stream's own value
            assert as_the_stream_reads(name, kept[name]) == getattr(current, name)
    assert set(kept) | set(dropped) == set(update) and not set(kept) & set(dropped)
    assert ("width" in kept) == ("width" in update and "width" not in dropped)
    if "width" in dropped or "height" in dropped:  # the size goes as a whole
        assert "width" not in kept and "height" not in kept
