"""The live view's store and writer on their own: names, entries, maxlen, TTL, following a
label, and the writer's rate limit, scaling and drawing. Real Redis (a server of the test's
own), real PyAV encode; nothing mocked."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from fractions import Fraction

import av
import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import example, given
from hypothesis import strategies as st

from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.core.errors import WorkerError
from pytrickle_worker.core.frame import VideoFrame
from pytrickle_worker.frontdoors.live.model import (
    FRAME_DELIMITER,
    DetectionItem,
    LiveEntry,
    StoredEntry,
    b64_name,
    decode_b64_name,
    frame_message,
    parse_stream_name,
    split_frame_message,
    stream_name,
)
from pytrickle_worker.frontdoors.live.schemas import FrameHeader
from pytrickle_worker.frontdoors.live.store import (
    FollowCursor,
    FrameStore,
    MemoryFrameStore,
    RedisFrameStore,
    StoreUnavailableError,
)
from pytrickle_worker.frontdoors.live.writer import LiveWriter, LiveWriterSettings, render_frame
from pytrickle_worker.processing.sink import SinkFrame, check_live_name
from pytrickle_worker.sources.frame import DecodedFrame
from tests.helpers import RedisProcess, os_thread_name
from tests.test_cms_protocol import decode_jpeg

PREFIX = "test_frame:"

#: Any label or key the contract allows: 1..128 printable characters without "/", and not
#: the dot segments "." and "..".
#: Drawn from printable characters (str.isprintable: no category C or Z but the space)
#: rather than filtered down to them: most random texts hold one that is not, and four such
#: names in one example failed Hypothesis's filter_too_much health check now and then.
names = (
    st.text(
        alphabet=st.characters(
            exclude_characters="/",
            exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"),
            include_characters=" ",
        ),
        min_size=1,
        max_size=128,
    )
    .filter(str.isprintable)
    .filter(lambda name: name not in (".", ".."))
)


@given(label=names, key=names)
def test_label_and_key_round_trip_through_the_stream_name(label: str, key: str) -> None:
    check_live_name(label)
    check_live_name(key, "key")
    name = stream_name(PREFIX, label, key)
    assert name == f"{PREFIX}{b64_name(label)}|{b64_name(key)}"
    assert parse_stream_name(PREFIX, name) == (label, key)
    assert decode_b64_name(b64_name(label)) == label


def test_the_encoding_is_the_references() -> None:
    # URL-safe alphabet, padding kept: what the reference backend's keys look like.
    assert b64_name("display-1") == "ZGlzcGxheS0x"
    assert b64_name("cam?>") == "Y2FtPz4="
    assert b64_name("ÿÿ~") == "w7_Dv34="
    assert stream_name("stream_frame:", "a", "b") == "stream_frame:YQ==|Yg=="


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "must not be empty"),
        ("x" * 129, "longer than 128"),
        ("a/b", "must not contain '/'"),
        (".", "must not be '.'"),
        ("..", "must not be '..'"),
        ("a\nb", "U+000A"),
        ("a\x00", "U+0000"),
        ("zero\u200bwidth", "U+200B"),
    ],
)
def test_bad_names_are_refused_with_the_reason(value: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("+", r"\+")):
        check_live_name(value)


def test_foreign_or_broken_stream_names_are_not_parsed() -> None:
    assert parse_stream_name(PREFIX, "other:YQ==|Yg==") is None
    assert parse_stream_name(PREFIX, PREFIX + "YQ==") is None  # no separator
    assert parse_stream_name(PREFIX, PREFIX + "!!!|Yg==") is None  # not base64
    assert parse_stream_name(PREFIX, PREFIX + "YQ|Yg==") is None  # padding missing
    assert parse_stream_name(PREFIX, PREFIX + b64_name("a/b") + "|Yg==") is None


@pytest.mark.parametrize(
    ("field", "template", "problem"),
    [
        ("live_cms_label_template", "{nope}", "KeyError"),
        ("live_cms_key_template", "{camera", "expected '}'"),
        ("live_stream_label_template", "{display}", "KeyError"),
        ("live_stream_key_template", "x/{request_id}", "must not contain '/'"),
        ("live_cms_label_template", "{display}\t", "U+0009"),
    ],
)
def test_bad_name_templates_fail_the_config(field: str, template: str, problem: str) -> None:
    with pytest.raises(WorkerError, match=field) as caught:
        WorkerConfig.load(environ={"PTW_" + field.upper(): template})
    assert problem in str(caught.value)


@pytest.mark.parametrize("field", ["live_redis_url", "redis_url"])
@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://:s3cret@redis:6379/0", "must specify one of the following schemes"),
        ("redis://:s3cret@redis:port/0", "not a Redis URL"),
    ],
)
def test_a_malformed_redis_url_fails_the_config_without_its_password(
    field: str, url: str, problem: str
) -> None:
    with pytest.raises(WorkerError, match=field) as caught:
        WorkerConfig.load(environ={"PTW_" + field.upper(): url})
    assert problem in str(caught.value) and "s3cret" not in str(caught.value)


def test_names_from_the_templates() -> None:
    config = WorkerConfig()
    assert config.live_cms_names("display-1;cam-2") == ("display-1", "cam-2")
    assert config.live_cms_names("no-separator") == ("no-separator", "no-separator")
    assert config.live_stream_names("req-9") == ("streams", "req-9")
    custom = WorkerConfig(
        live_cms_label_template="site {display}",
        live_cms_key_template="{subscription}",
        live_stream_label_template="gw",
        live_stream_key_template="job {request_id}",
    )
    assert custom.live_cms_names("d;c") == ("site d", "d;c")
    assert custom.live_stream_names("r") == ("gw", "job r")


def test_worker_id_comes_from_the_setting_then_pod_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "pod-7")
    assert WorkerConfig().resolved_worker_id() == "pod-7"
    assert WorkerConfig(worker_id="w-1").resolved_worker_id() == "w-1"
    monkeypatch.delenv("POD_NAME")
    assert WorkerConfig().resolved_worker_id()  # the hostname


def test_live_redis_url_falls_back_to_redis_url() -> None:
    assert WorkerConfig().resolved_live_redis_url() is None
    assert WorkerConfig(redis_url="redis://a:1/0").resolved_live_redis_url() == "redis://a:1/0"
    both = WorkerConfig(redis_url="redis://a:1/0", live_redis_url="redis://b:2/0")
    assert both.resolved_live_redis_url() == "redis://b:2/0"


def test_frame_message_framing() -> None:
    stored = StoredEntry("d", "k", "5-0", _entry(frame=b"\xff\xd8--IMG--\xff\xd9"))
    message = frame_message(stored)
    head, image = split_frame_message(message)
    assert image == b"\xff\xd8--IMG--\xff\xd9"  # the delimiter inside the JPEG survives
    header = json.loads(head)
    assert header["detection_items"] == [
        {"class": "car", "confidence": 0.5, "id": 4, "bbox": [1, 2, 30, 40]}
    ]
    assert header["online"] is True and header["fps"] == 2.0 and header["width"] == 64
    assert set(header) == {
        "label", "key", "id", "detection_items", "warnings", "width", "height",
        "source_width", "source_height", "capture_time", "worker", "online", "fps", "origin",
    }  # fmt: skip
    with pytest.raises(ValueError, match="--IMG--"):
        split_frame_message(b'{"label": "x"}')
    assert FRAME_DELIMITER == b"--IMG--"


@given(label=names, key=names, worker=st.text(max_size=40), cls=names)
@example(label="--IMG", key="IMG--", worker="--IMG--IMG--", cls="--IMG")
def test_the_first_delimiter_ends_the_header_whatever_the_names(
    label: str, key: str, worker: str, cls: str
) -> None:
    """A label, key, worker or class may contain "--IMG--" (printable text): the header must
    still end at the first delimiter, as a client splitting once (the reference's) expects."""
    item = DetectionItem.model_validate(
        {"class": cls + "--IMG--", "confidence": 0.5, "id": None, "bbox": [0, 0, 1, 1]}
    )
    entry = replace(_entry(frame=b"--IMG--"), worker=worker, detection_items=(item,))
    stored = StoredEntry(label + "--IMG--", "--IMG--" + key, "1-0", entry)
    head, image = split_frame_message(frame_message(stored))
    assert image == b"--IMG--"
    header = json.loads(head)
    assert (header["label"], header["key"], header["worker"]) == (
        label + "--IMG--",
        "--IMG--" + key,
        worker,
    )
    assert header["detection_items"][0]["class"] == cls + "--IMG--"


# ---------------------------------------------------------------------- stores


def _entry(frame: bytes = b"jpeg", online: bool = True) -> LiveEntry:
    item = DetectionItem.model_validate(
        {"class": "car", "confidence": 0.5, "id": 4, "bbox": [1, 2, 30, 40]}
    )
    return LiveEntry(
        frame=frame,
        detection_items=(item,),
        width=64,
        height=36,
        source_width=128,
        source_height=72,
        capture_time=time.time(),
        worker="w-test",
        online=online,
        fps=2.0,
        origin="cms",
    )


@pytest.fixture(params=["memory", "redis"])
async def store(
    request: pytest.FixtureRequest, private_redis: RedisProcess
) -> AsyncIterator[FrameStore]:
    made: FrameStore
    if request.param == "memory":
        made = MemoryFrameStore(maxlen=3, ttl_s=1.0)
    else:
        made = RedisFrameStore(private_redis.url, maxlen=3, ttl_s=1.0, prefix=PREFIX)
    await made.start()
    yield made
    await made.close()


async def _eventually(check: object, within: float = 10.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_store_keeps_maxlen_entries_and_forgets_a_key_after_its_ttl(
    store: FrameStore,
) -> None:
    ids = [await store.add("display-1", "cam 1", _entry(frame=bytes([i]))) for i in range(5)]
    await store.add("display-1", "cam 2", _entry())
    await store.add("other", "cam 9", _entry())
    kept = await store.entries("display-1", "cam 1")
    assert [e.id for e in kept] == ids[-3:]  # exact trim to maxlen
    assert [e.entry.frame for e in kept] == [b"\x02", b"\x03", b"\x04"]
    assert sorted(ids, key=lambda i: tuple(map(int, i.split("-")))) == ids  # increasing
    latest = await store.latest("display-1", "cam 1")
    assert latest is not None and latest.id == ids[-1]
    expected = _entry(frame=b"\x04")
    assert latest.entry == LiveEntry(
        **{**expected.__dict__, "capture_time": latest.entry.capture_time}
    )
    assert latest.entry.detection_items[0].wire()["bbox"] == [1, 2, 30, 40]
    assert await store.labels() == ["display-1", "other"]
    assert [e.key for e in await store.keys("display-1")] == ["cam 1", "cam 2"]
    assert await store.keys("nobody") == []
    assert await store.latest("display-1", "nope") is None
    # Nobody writes: everything expires after ttl_s.
    await _eventually(lambda: _empty(store), within=10.0)
    assert await asyncio.to_thread(store.touch_blocking, "display-1", "cam 1") is False


async def _empty(store: FrameStore) -> bool:
    return await store.labels() == []


async def test_blocking_writes_from_a_thread_are_the_same_entries(store: FrameStore) -> None:
    # The writer's render thread writes with add_blocking/touch_blocking: same ids, trim,
    # TTL and fields as the async calls the routes and uploads use.
    ids = [
        await asyncio.to_thread(store.add_blocking, "d", "k", _entry(frame=bytes([i])))
        for i in range(4)
    ]
    ids.append(await store.add("d", "k", _entry(frame=b"\x04")))  # mixed with the async call
    kept = await store.entries("d", "k")
    assert [e.id for e in kept] == ids[-3:]
    assert [e.entry.frame for e in kept] == [b"\x02", b"\x03", b"\x04"]
    assert kept[0].entry == LiveEntry(
        **{**_entry(frame=b"\x02").__dict__, "capture_time": kept[0].entry.capture_time}
    )
    for _ in range(4):
        await asyncio.sleep(0.4)
        assert await asyncio.to_thread(store.touch_blocking, "d", "k") is True
    assert await store.latest("d", "k") is not None  # 1.6 s after the write, ttl 1 s
    assert await asyncio.to_thread(store.touch_blocking, "d", "nope") is False
    await _eventually(lambda: _empty(store), within=10.0)
    assert await asyncio.to_thread(store.touch_blocking, "d", "k") is False


async def test_a_follower_waiting_on_the_memory_store_wakes_for_a_thread_write() -> None:
    store = MemoryFrameStore()
    await store.add("d", "k", _entry(frame=b"old"))
    cursor = FollowCursor()
    assert await store.read_new("d", cursor, 0.01) == []  # primed at the newest entry
    waiting = asyncio.create_task(store.read_new("d", cursor, 60.0))
    await asyncio.sleep(0.1)  # it waits on the store now
    await asyncio.to_thread(store.add_blocking, "d", "k", _entry(frame=b"new"))
    async with asyncio.timeout(30):  # woken by the write, not by its 60 s timeout
        fresh = await waiting
    assert [e.entry.frame for e in fresh] == [b"new"]
    # A follower that timed out leaves nothing behind for the next write to wake.
    assert await store.read_new("d", cursor, 0.05) == []
    assert store.add_blocking("d", "k", _entry()) != ""


async def test_touch_keeps_a_key_alive(store: FrameStore) -> None:
    await store.add("d", "k", _entry())
    for _ in range(4):
        await asyncio.sleep(0.4)
        assert await asyncio.to_thread(store.touch_blocking, "d", "k") is True
    assert await store.latest("d", "k") is not None  # 1.6 s after the write, ttl 1 s


async def test_redis_entries_have_the_contract_fields_ttl_and_exact_maxlen(
    private_redis: RedisProcess,
) -> None:
    store = RedisFrameStore(private_redis.url, maxlen=3, ttl_s=30.0, prefix=PREFIX)
    client = aioredis.Redis.from_url(private_redis.url)
    try:
        for _ in range(4):
            await store.add("display-1", "cam-1", _entry())
        for _ in range(3):  # the writer thread's packed write: the same command
            await asyncio.to_thread(store.add_blocking, "display-1", "cam-1", _entry())
        name = stream_name(PREFIX, "display-1", "cam-1")
        assert await client.xlen(name) == 3
        assert 0 < await client.pttl(name) <= 30_000
        [(_, fields)], [(_, async_fields)] = (
            await client.xrevrange(name, count=1),
            await client.xrange(name, count=1),
        )
        assert {k: v for k, v in fields.items() if k != b"capture_time"} == {
            k: v for k, v in async_fields.items() if k != b"capture_time"
        }
        assert set(fields) == {
            b"frame", b"detection_items", b"warnings", b"width", b"height", b"source_width",
            b"source_height", b"capture_time", b"worker", b"online", b"fps", b"origin",
        }  # fmt: skip
        assert fields[b"online"] == b"1" and fields[b"worker"] == b"w-test"
        assert fields[b"origin"] == b"cms" and fields[b"warnings"] == b""
        assert json.loads(fields[b"detection_items"])[0]["class"] == "car"
    finally:
        await client.aclose()
        await store.close()


async def test_following_a_label_sees_new_entries_and_new_keys(store: FrameStore) -> None:
    await store.add("d", "old", _entry())
    cursor = FollowCursor()
    assert await store.read_new("d", cursor, 0.05) == []  # existing entries are not replayed
    collected: list[StoredEntry] = []

    async def follow() -> None:
        while len({e.key for e in collected}) < 2 or len(collected) < 3:
            collected.extend(await store.read_new("d", cursor, 0.5))

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.1)
    await store.add("d", "old", _entry(frame=b"1"))
    await store.add("d", "new", _entry(frame=b"2"))  # a key that appears later
    await store.add("d", "old", _entry(frame=b"3"))
    await store.add("elsewhere", "old", _entry(frame=b"x"))
    async with asyncio.timeout(10):
        await follower
    assert {(e.key, e.entry.frame) for e in collected} >= {("old", b"1"), ("new", b"2")}
    assert all(e.label == "d" for e in collected)


async def test_redis_streams_are_listed_from_the_index_without_a_scan(
    private_redis: RedisProcess,
) -> None:
    """In a Redis shared with other data, listing reads the store's index, never SCANs the
    keyspace; a stream written without the index is not listed; an expired stream is not
    listed although the index still names it, and later writes trim it from the index."""
    store = RedisFrameStore(private_redis.url, maxlen=3, ttl_s=1.0, prefix=PREFIX)
    raw = aioredis.Redis.from_url(private_redis.url)  # pyright: ignore[reportUnknownMemberType] - untyped classmethod in redis-py
    try:
        async with raw.pipeline(transaction=False) as pipe:
            for i in range(2000):
                pipe.set(f"unrelated:{i}", "x")
            await pipe.execute()
        foreign = stream_name(PREFIX, "old", "cam")
        await raw.xadd(foreign, {"frame": b"x"})  # another producer, no index entry
        await raw.execute_command("CONFIG", "RESETSTAT")
        await asyncio.to_thread(store.add_blocking, "d", "k1", _entry())
        await store.add("d", "k2", _entry())
        assert await store.labels() == ["d"]
        assert [e.key for e in await store.keys("d")] == ["k1", "k2"]
        cursor = FollowCursor()
        await store.read_new("d", cursor, 0.1)
        assert set(cursor.ids) == {"k1", "k2"}
        stats = await raw.info("commandstats")
        assert "cmdstat_scan" not in stats and "cmdstat_keys" not in stats, stats
        indexed = {n.decode() for n in await raw.zrange(store.index_key, 0, -1)}
        assert indexed == {stream_name(PREFIX, "d", "k1"), stream_name(PREFIX, "d", "k2")}
        window_ms = 1000 + round(store.index_refresh_s * 1000)
        assert 0 < await raw.pttl(store.index_key) <= window_ms
        # The streams expire (TTL 1 s): listed no more, though the index still names them.
        await _eventually(lambda: _empty(store), within=10.0)
        assert await raw.zcard(store.index_key) == 2
        # Past the window, a write of another stream trims their names.
        await asyncio.sleep(store.index_refresh_s + 0.1)
        await asyncio.to_thread(store.add_blocking, "e", "k3", _entry())
        assert [n.decode() for n in await raw.zrange(store.index_key, 0, -1)] == [
            stream_name(PREFIX, "e", "k3")
        ]
        assert await store.labels() == ["e"]
    finally:
        await raw.aclose()
        await store.close()


async def test_a_redis_store_warns_nothing(private_redis: RedisProcess) -> None:
    # redis-py warns (UserWarning, in the worker's log at every start) when its asyncio
    # client is given the blocking client's Retry.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store = RedisFrameStore(private_redis.url, prefix=PREFIX, timeout_s=1.0)
        try:
            await store.add("d", "k", _entry())
            assert [e.key for e in await store.keys("d")] == ["k"]
        finally:
            await store.close()


async def test_a_stopped_redis_raises_store_unavailable(private_redis: RedisProcess) -> None:
    store = RedisFrameStore(private_redis.url, prefix=PREFIX, timeout_s=1.0)
    await store.add("d", "k", _entry())
    await asyncio.to_thread(store.add_blocking, "d", "k", _entry())  # connects the thread's
    private_redis.stop()
    try:
        for call in (
            store.add("d", "k", _entry()),
            store.latest("d", "k"),
            store.labels(),
            store.keys("d"),
            store.read_new("d", FollowCursor(), 0.1),
            asyncio.to_thread(store.add_blocking, "d", "k", _entry()),
            asyncio.to_thread(store.touch_blocking, "d", "k"),
        ):
            with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{private_redis.port}"):
                await call
    except BaseException:
        await store.close()
        raise
    finally:
        private_redis.start()
    try:
        # The blocking calls connect again by themselves.
        entry_id = await asyncio.to_thread(store.add_blocking, "d", "k", _entry(frame=b"back"))
        latest = await store.latest("d", "k")
        assert latest is not None and latest.id == entry_id and latest.entry.frame == b"back"
        # The restarted Redis lost the index; the first write after the failure wrote it
        # again (not up to index_refresh_s later).
        assert [e.key for e in await store.keys("d")] == ["k"]
        assert await asyncio.to_thread(store.touch_blocking, "d", "k") is True
    finally:
        await store.close()


# ---------------------------------------------------------------------- writer


def _frame(width: int = 1920, height: int = 1080) -> VideoFrame:
    rgb = np.full((height, width, 3), 60, dtype=np.uint8)
    return VideoFrame(rgb, 0, Fraction(1, 25), capture_time=time.time())


SMALL_CAR = {"detection": {"class": "car", "confidence": 0.5, "id": 1}, "bbox": [40, 20, 120, 80]}
CAR = {"detection": {"class": "car", "confidence": 0.87, "id": 12}, "bbox": [400, 200, 1200, 800]}


def test_render_scales_to_max_width_draws_and_encodes_once() -> None:
    jpeg, width, height, items = render_frame(
        _frame().rgb, [CAR, {"no": "detection"}], (), max_width=960, quality=80
    )
    assert (width, height) == (960, 540)
    assert [item.wire() for item in items] == [
        {"class": "car", "confidence": 0.87, "id": 12, "bbox": [200, 100, 600, 400]}
    ]
    image = decode_jpeg(jpeg)
    assert image.shape == (540, 960, 3)
    # The box is drawn in the class colour on the grey frame, at the scaled place.
    assert np.abs(image[250, 200].astype(int) - 60).sum() > 100
    assert np.abs(image[250, 400].astype(int) - 60).sum() < 30  # inside: untouched


def test_render_takes_a_decoded_frame_without_making_its_rgb() -> None:
    """A camera's decoded frame is scaled from the decoder's pixels: the same picture as from
    its RGB, and the full-resolution RGB is never converted for the live view."""
    rgb = np.zeros((720, 1280, 3), np.uint8)
    rgb[:, :640] = (200, 40, 40)
    rgb[:, 640:] = (40, 40, 200)
    conversions: list[int] = []
    decoded = DecodedFrame(
        0,
        time.time(),
        None,
        av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p"),
        on_convert=lambda: conversions.append(1),
    )
    from_decoded = render_frame(decoded, [CAR], (), max_width=960, quality=90)
    from_rgb = render_frame(rgb, [CAR], (), max_width=960, quality=90)
    assert conversions == []
    assert from_decoded[1:] == from_rgb[1:]  # size and detection items
    a, b = decode_jpeg(from_decoded[0]).astype(int), decode_jpeg(from_rgb[0]).astype(int)
    assert np.abs(a - b).mean() < 3.0, np.abs(a - b).mean()  # 4:2:0 on the way, not RGB
    assert a[100, 100, 0] > 150 and a[100, 900, 2] > 150  # the colours where they were


class _ReleasedPixels:
    """A FramePixels whose source no longer holds the decoder's frame (the protocol allows
    it): the renderer falls back to the RGB."""

    def __init__(self, rgb: np.ndarray) -> None:
        self.rgb = rgb
        self.width, self.height = int(rgb.shape[1]), int(rgb.shape[0])

    def to_rgb(self) -> np.ndarray:
        return self.rgb

    @contextlib.contextmanager
    def decoded(self) -> Iterator[None]:
        yield None


def test_render_falls_back_to_rgb_when_the_decoded_frame_is_gone() -> None:
    rgb = _frame().rgb
    released = render_frame(_ReleasedPixels(rgb), [CAR], (), max_width=960, quality=80)
    assert released == render_frame(rgb, [CAR], (), max_width=960, quality=80)


def test_render_never_upscales() -> None:
    _, width, height, _ = render_frame(_frame(320, 180).rgb, [], (), max_width=960, quality=80)
    assert (width, height) == (320, 180)


async def test_writer_stores_at_most_fps_frames_per_key_and_drops_before_work() -> None:
    store = MemoryFrameStore(maxlen=100, ttl_s=30)
    writer = LiveWriter(store, LiveWriterSettings(worker_id="w", fps=4.0))
    writer.start()
    try:
        frame = _frame(320, 180)
        loop = asyncio.get_running_loop()
        end = loop.time() + 2.0
        offered = 0
        while loop.time() < end:
            writer.offer(SinkFrame("d", "k", frame, [SMALL_CAR], fps=25.0))
            offered += 1
            await asyncio.sleep(0.01)
        await _eventually(lambda: _queue_empty(writer))
        stored = await store.entries("d", "k")
        assert 6 <= len(stored) <= 10, len(stored)  # 4 fps over 2 s, give or take the edges
        assert writer.dropped["rate_limit"] == offered - len(stored)
        assert writer.stored == len(stored)
        header = stored[-1].header()
        assert header["fps"] == 25.0 and header["origin"] == "cms" and header["worker"] == "w"
        assert header["detection_items"][0]["bbox"] == [40, 20, 120, 80]
        # The documented header (/openapi.json) is exactly what is sent.
        assert FrameHeader.model_validate(header).model_dump(mode="json", by_alias=True) == header
    finally:
        await writer.stop()


async def test_stop_joins_the_render_thread() -> None:
    store = MemoryFrameStore()
    writer = LiveWriter(store, LiveWriterSettings(worker_id="w", fps=100.0))
    writer.start()
    writer.offer(SinkFrame("d", "k", _frame(64, 36)))
    await _eventually(lambda: _has(store, 1))
    [thread] = [t for t in threading.enumerate() if t is writer._thread]  # pyright: ignore[reportPrivateUsage] - the thread stop() must end
    await writer.stop()
    assert not thread.is_alive()
    writer.offer(SinkFrame("d", "k2", _frame(64, 36)))  # after stop: nothing runs, no error
    assert writer.queue_depth == 0


async def _queue_empty(writer: LiveWriter) -> bool:
    await asyncio.sleep(0.2)
    return writer.queue_depth == 0


async def test_writer_marks_offline_and_forgets_an_ended_key() -> None:
    store = MemoryFrameStore(maxlen=10, ttl_s=30)
    writer = LiveWriter(store, LiveWriterSettings(worker_id="w", fps=100.0))
    writer.start()
    try:
        writer.offer(SinkFrame("d", "k", _frame(64, 36)))
        await _eventually(lambda: _has(store, 1))
        writer.set_online("d", "k", False)
        await _eventually(lambda: _has(store, 2))
        latest = await store.latest("d", "k")
        assert latest is not None and latest.entry.online is False and latest.entry.fps == 0.0
        writer.offer(SinkFrame("d", "k", _frame(64, 36)))  # frames again: online
        await _eventually(lambda: _has(store, 3))
        latest = await store.latest("d", "k")
        assert latest is not None and latest.entry.online is True
        writer.end("d", "k")
        await _eventually(lambda: _has(store, 4))
        latest = await store.latest("d", "k")
        assert latest is not None and latest.entry.online is False
        assert writer.keys_tracked == 0
        writer.offer(SinkFrame("d", "bad/key", _frame(64, 36)))
        assert writer.dropped["invalid"] == 1
    finally:
        await writer.stop()


async def _has(store: MemoryFrameStore, count: int) -> bool:
    return len(await store.entries("d", "k")) >= count


async def test_store_upload_stores_the_jpeg_as_given() -> None:
    store = MemoryFrameStore()
    writer = LiveWriter(store, LiveWriterSettings(worker_id="w"))
    item = DetectionItem.model_validate({"class": "cat", "confidence": 1, "bbox": [0, 0, 5, 5]})
    entry_id = await writer.store_upload("up", "k", b"\xff\xd8\xff\xd9", [item], 10, 8)
    latest = await store.latest("up", "k")
    assert latest is not None and latest.id == entry_id
    assert latest.entry.origin == "upload" and latest.entry.frame == b"\xff\xd8\xff\xd9"
    assert (latest.entry.source_width, latest.entry.source_height) == (10, 8)
    assert latest.header()["detection_items"] == [
        {"class": "cat", "confidence": 1.0, "id": None, "bbox": [0, 0, 5, 5]}
    ]


async def test_an_offline_camera_stays_listed_until_its_stream_ends() -> None:
    store = MemoryFrameStore(maxlen=10, ttl_s=1.0)
    writer = LiveWriter(store, LiveWriterSettings(worker_id="w", fps=100.0))
    writer.start()
    try:
        writer.offer(SinkFrame("d", "k", _frame(64, 36)))
        await _eventually(lambda: _has(store, 1))
        writer.set_online("d", "k", False)
        await asyncio.sleep(2.5)  # 2.5 TTLs without a frame: kept alive, shown offline
        latest = await store.latest("d", "k")
        assert latest is not None and latest.entry.online is False
        writer.end("d", "k")
        await _eventually(lambda: _empty(store), within=10.0)  # then it expires
        assert writer.keys_tracked == 0
    finally:
        await writer.stop()


async def test_writer_outage_one_warning_counted_drops_and_resumes(
    private_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisFrameStore(private_redis.url, prefix=PREFIX, timeout_s=1.0)
    writer = LiveWriter(store, LiveWriterSettings(worker_id="w", fps=20.0, retry_interval_s=0.3))
    writer.start()

    async def offer_for(seconds: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            writer.offer(SinkFrame("d", "k", _frame(64, 36)))
            await asyncio.sleep(0.02)

    try:
        await offer_for(0.5)
        assert writer.stored > 0 and writer.store_online
        private_redis.stop()
        with caplog.at_level("WARNING", logger="pytrickle_worker.frontdoors.live.writer"):
            await offer_for(2.0)
        assert not writer.store_online and writer.outages == 1
        assert writer.dropped["store_unavailable"] >= 20  # dropped before any work, mostly
        warnings = [r for r in caplog.records if "frame store unavailable" in r.getMessage()]
        assert len(warnings) == 1  # one per outage, not per frame
        stored = writer.stored
        private_redis.start()
        await offer_for(1.0)  # resumes within one retry interval (0.3 s), with margin
        assert writer.store_online and writer.stored > stored
        assert await store.latest("d", "k") is not None
    finally:
        await writer.stop()
        await store.close()


async def test_an_unreadable_entry_is_skipped_and_logged_once_per_stream(
    private_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """Another producer under the same prefix (the reference backend's own fields, say)
    writes entries this store cannot read: reads skip them, the newest readable one still
    answers, and the warning is logged once for the stream, not at every read."""
    store = RedisFrameStore(private_redis.url, prefix=PREFIX)
    client = aioredis.Redis.from_url(private_redis.url)
    try:
        await store.add("d", "k", _entry(frame=b"good"))
        await client.xadd(stream_name(PREFIX, "d", "k"), {"frame": b"x", "width": b"wide"})
        with caplog.at_level("WARNING", logger="pytrickle_worker.frontdoors.live.store"):
            for _ in range(3):
                assert [e.entry.frame for e in await store.entries("d", "k")] == [b"good"]
        warnings = [r for r in caplog.records if "unreadable entry in d/k" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    finally:
        await client.aclose()
        await store.close()


async def test_entries_the_reference_backend_writes_are_read(private_redis: RedisProcess) -> None:
    """The reference streaming backend stores its producer's fields as given: detection
    items as [x1, y1, x2, y2, confidence, class index] rows, or empty text when it sent
    none, width and height as text, and its polygon fields. A viewer here pulls them."""
    store = RedisFrameStore(private_redis.url, prefix=PREFIX)
    client = aioredis.Redis.from_url(private_redis.url)
    name = stream_name(PREFIX, "site", "cam")
    common = {"frame": b"jpeg", "warnings": b"[]", "width": b"640", "height": b"480"}
    try:
        await client.xadd(name, {**common, "detection_items": b"", "cone_polygons": b"[]"})
        [empty] = await store.entries("site", "cam")
        assert empty.entry.detection_items == () and empty.entry.width == 640
        rows = b"[[10, 20, 30, 40, 0.9, 2], [0, 0, 5, 5, 0.5, 0.0]]"
        await client.xadd(name, {**common, "detection_items": rows})
        newest = await store.latest("site", "cam")
        assert newest is not None
        assert [i.wire() for i in newest.entry.detection_items] == [
            {"class": "2", "confidence": 0.9, "id": None, "bbox": [10, 20, 30, 40]},
            {"class": "0", "confidence": 0.5, "id": None, "bbox": [0, 0, 5, 5]},
        ]
        # Rows that are not the reference's (a class that is no index, a short row) stay
        # unreadable: skipped, the readable entries still answer.
        for bad in (b"[[10, 20, 30, 40, 0.9, 2.5]]", b"[[10, 20, 30]]", b'[["a"]]'):
            await client.xadd(name, {**common, "detection_items": bad})
        assert [len(e.entry.detection_items) for e in await store.entries("site", "cam")] == [0, 2]
    finally:
        await client.aclose()
        await store.close()


@given(
    label=names,
    key=names,
    frame=st.binary(max_size=64),
    worker=st.text(max_size=40),
    cls=names,
    online=st.booleans(),
    fps=st.floats(0, 1000, allow_nan=False),
)
@example(  # RESP's own delimiters in every value
    label="\r\n$3",
    key="*2\r\n",
    frame=b"\r\n$-1\r\n",
    worker="$5\r\n",
    cls="$3 *2",
    online=False,
    fps=0.0,
)
def test_the_writers_packed_xadd_stores_what_redis_py_would(
    redis_server: RedisProcess,
    label: str,
    key: str,
    frame: bytes,
    worker: str,
    cls: str,
    online: bool,
    fps: float,
) -> None:
    """The render thread packs its XADD itself (per (label, key) once, then the values):
    whatever the names and values, the entry reads back as what redis-py's own XADD of
    the same fields stores."""
    item = DetectionItem.model_validate(
        {"class": cls, "confidence": 0.25, "id": 3, "bbox": [0, 1, 2, 3]}
    )
    entry = replace(
        _entry(frame=frame, online=online), worker=worker, fps=fps, detection_items=(item,)
    )
    store = RedisFrameStore(redis_server.url, maxlen=2, ttl_s=5.0, prefix="packed:")
    client = redis.Redis.from_url(redis_server.url)
    try:
        packed_id = store.add_blocking(label, key, entry)
        name = stream_name("packed:", label, key)
        reference_id = client.xadd(name, entry.redis_fields())  # pyright: ignore[reportArgumentType] - bytes values
        stored = dict(client.xrange(name))  # pyright: ignore[reportUnknownArgumentType]
        assert stored[packed_id.encode()] == stored[reference_id]  # pyright: ignore[reportUnknownMemberType]
        assert LiveEntry.from_redis_fields(stored[packed_id.encode()]) == entry  # pyright: ignore[reportUnknownArgumentType]
        assert 0 < client.pttl(name) <= 5000  # pyright: ignore[reportOperatorIssue]
        client.delete(name)
    finally:
        client.close()
        asyncio.run(store.close())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
@pytest.mark.parametrize("niceness", [0, 7])
async def test_the_render_thread_gives_way_by_its_niceness(niceness: int) -> None:
    """Where the cores are short the live view's JPEGs must not slow decoding and
    inference: its render thread runs ``render_niceness`` nicer than the worker."""
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    writer = LiveWriter(
        MemoryFrameStore(), LiveWriterSettings(worker_id="w", render_niceness=niceness)
    )
    writer.start()
    try:
        thread = writer.render_thread
        assert thread is not None and thread.native_id is not None
        expected = min(19, own + niceness)
        deadline = time.monotonic() + 10
        while os.getpriority(os.PRIO_PROCESS, thread.native_id) != expected:
            assert time.monotonic() < deadline, os.getpriority(os.PRIO_PROCESS, thread.native_id)
            await asyncio.sleep(0.01)
        # The worker's own threads keep theirs.
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own
        # And top -H / perf tell it apart from the other threads.
        while (name := os_thread_name(thread.native_id)) != "ptw-live-render":
            assert time.monotonic() < deadline, name
            await asyncio.sleep(0.01)
    finally:
        await writer.stop()
