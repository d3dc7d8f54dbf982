"""StreamSession end to end against a local TrickleServer: real HTTP, PyAV, x264 and processors.

Each test creates the five BYOC channels of one stream on an in-process trickle server,
publishes synthetic H.264 segments to the input channel with the trickle publisher, and reads
the output, events and data channels with the trickle subscriber, as a gateway would.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import pytest

from processors.mpta_detector import MptaDetectorProcessor
from processors.passthrough import PassthroughProcessor
from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.devtools.assets import DemoAssets
from pytrickle_worker.devtools.trickle_server import TrickleServer
from pytrickle_worker.engine.mpta.service import PipelineService
from pytrickle_worker.frontdoors.streamserver.manager import (
    StreamManager,
    StreamSessionLike,
    StreamState,
)
from pytrickle_worker.frontdoors.streamserver.schemas import StartRequest
from pytrickle_worker.frontdoors.streamserver.session import (
    StreamSession,
    StreamSessionConfig,
    StreamSessionError,
)
from pytrickle_worker.processing import FrameProcessor, VideoFrame
from pytrickle_worker.transport.trickle import TricklePublisher, TrickleSubscriber
from tests.test_streaming_media import TICKS, H, N, W, synthetic_segments

MID = "stream-1"
CHANNELS = {
    "": "video/MP2T",
    "-out": "video/MP2T",
    "-control": "application/json",
    "-events": "application/json",
    "-data": "application/jsonl",
}


@contextlib.asynccontextmanager
async def trickle_channels(stream_id: str) -> AsyncIterator[str]:
    """A local trickle server holding ``stream_id``'s channels (input, -out, -control,
    -events, -data); yields the input channel's URL."""
    server = TrickleServer()
    port = await server.start("127.0.0.1", 0)
    for suffix, mime in CHANNELS.items():
        server.create_channel(stream_id + suffix, mime)
    try:
        yield f"http://127.0.0.1:{port}/{stream_id}"
    finally:
        await server.stop()


#: Big enough queues that a burst of input loses no frame (exact counts below); the
#: drop-oldest behaviour itself is covered by test_streaming_media.
LOSSLESS = StreamSessionConfig(
    start_seq=0,
    frame_queue_size=512,
    encode_queue_size=64,
    heartbeat_interval_s=0.3,
    data_interval_s=0.1,
    channel_retry_max_s=0.5,
    stop_timeout_s=3.0,
)


@dataclass
class Trickle:
    server: TrickleServer
    base: str
    sessions: list[StreamSession] = field(default_factory=list[StreamSession])

    def url(self, suffix: str = "") -> str:
        return f"{self.base}/{MID}{suffix}"

    def request(self, **params: Any) -> StartRequest:
        return StartRequest(
            gateway_request_id=MID,
            subscribe_url=self.url(),
            publish_url=self.url("-out"),
            control_url=self.url("-control"),
            events_url=self.url("-events"),
            data_url=self.url("-data"),
            params=params,
        )


@pytest.fixture
async def trickle() -> AsyncIterator[Trickle]:
    server = TrickleServer()
    port = await server.start("127.0.0.1", 0)
    for suffix, mime in CHANNELS.items():
        server.create_channel(MID + suffix, mime)
    trickle = Trickle(server, f"http://127.0.0.1:{port}")
    yield trickle
    for session in trickle.sessions:  # a failed test must not leave one running
        await session.stop()
    await server.stop()


@dataclass
class Reader:
    """Reads a channel from segment 0 until it ends, like a gateway."""

    url: str
    parse: Callable[[bytes], Any] = lambda data: data
    items: list[Any] = field(default_factory=list[Any])
    ended: bool = False
    task: asyncio.Task[None] | None = None

    def start(self) -> Reader:
        self.task = asyncio.ensure_future(self._run())
        return self

    async def _run(self) -> None:
        async with TrickleSubscriber(self.url, start_seq=0, read_timeout_s=5) as subscriber:
            while (segment := await subscriber.next_segment()) is not None:
                self.items.append(self.parse(await segment.read_all(64 * 1024 * 1024)))
        self.ended = True

    async def until(self, predicate: Callable[[list[Any]], bool], timeout: float = 10) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while not predicate(self.items):
            assert time.monotonic() < deadline, f"timed out waiting on {self.url}: {self.items}"
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


def events_of(reader: Reader, kind: str) -> list[dict[str, Any]]:
    return [item["event"] for item in reader.items if item["event"]["type"] == kind]


def jsonl(data: bytes) -> list[dict[str, Any]]:
    """The records of a data segment: one line, a JSON array of strings (pytrickle's
    format: it queues strings), each a record's JSON text."""
    assert data.endswith(b"\n")
    lines = data.splitlines()
    assert len(lines) == 1, data[:200]
    items = json.loads(lines[0])
    assert isinstance(items, list) and all(isinstance(item, str) for item in items), data[:200]
    return [json.loads(item) for item in items]


def decoded_output(segments: list[bytes]) -> list[av.VideoFrame]:
    frames: list[av.VideoFrame] = []
    for data in segments:
        with av.open(io.BytesIO(data), format="mpegts") as container:
            segment = list(container.decode(video=0))
        assert segment, "an output segment without frames"
        assert segment[0].key_frame, "each output segment starts with an IDR"
        frames.extend(segment)
    return frames


async def publish_input(trickle: Trickle, segments: tuple[bytes, ...]) -> TricklePublisher:
    publisher = TricklePublisher(trickle.url(), "video/mp2t")
    for segment in segments:
        await publisher.publish(segment)
    return publisher


async def wait_for(predicate: Callable[[], bool], timeout: float = 10) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def run_session(
    trickle: Trickle,
    processor: FrameProcessor,
    config: StreamSessionConfig = LOSSLESS,
    **params: Any,
) -> StreamSession:
    request = trickle.request(**params)
    await processor.on_stream_start(request.processor_params())  # the manager's job
    session = StreamSession(request, processor, config=config)
    trickle.sessions.append(session)
    await session.start()
    return session


# ---------------------------------------------------------------------------- tests
async def test_passthrough_stream_control_events_and_stop(trickle: Trickle) -> None:
    processor = PassthroughProcessor()
    session = await run_session(trickle, processor)
    output = Reader(trickle.url("-out")).start()
    events = Reader(trickle.url("-events"), json.loads).start()
    publisher = await publish_input(trickle, synthetic_segments())

    control = TricklePublisher(trickle.url("-control"), "application/json")
    await control.publish(b'{"keep": "alive"}')
    await control.publish(b"not json")
    await control.publish(b"[" * 100_000)  # bounded like a REST body: skipped, not fatal
    await control.publish(b'{"max_framerate": 0}')  # invalid: logged, not fatal
    await control.publish(b'{"max_framerate": "thirty"}')  # not a number, as over REST
    await control.publish(b'{"max_framerate": 60, "label": "x"}')
    await wait_for(lambda: session.stats().max_framerate == 60)
    assert processor.current_params() == {"label": "x"}
    # A gateway resending its whole params object with another size: the size, fixed at
    # start, is left out and named in the event; the rest is applied.
    await control.publish(b'{"width": 640, "height": 480, "max_framerate": 30, "label": "y"}')
    await wait_for(lambda: session.stats().max_framerate == 30)
    assert processor.current_params() == {"label": "y"}
    await control.publish(b'{"width": 800, "height": 600}')  # only a size: nothing applied
    stats = session.stats()
    await wait_for(lambda: session.stats().control_messages == 5)
    stats = session.stats()
    assert stats.control_errors == 2 and stats.control_rejected == 2

    # All but the frames still inside the demuxer/decoder (the input has not ended).
    await wait_for(lambda: session.stats().frames_encoded >= N - 8)
    # The first heartbeat may precede the first frame (dimensions 0x0 until one is seen).
    await events.until(
        lambda items: any(
            i["event"]["type"] == "heartbeat" and i["event"]["dimensions"]["width"] for i in items
        )
    )
    heartbeat = events_of(events, "heartbeat")[-1]
    assert heartbeat["dimensions"] == {"width": W, "height": H}
    assert set(heartbeat["fps"]) == {
        "ingress_video_fps",
        "ingress_audio_fps",
        "egress_video_fps",
        "egress_audio_fps",
    }
    assert isinstance(heartbeat["timestamp"], int)
    assert {i["queue_event_type"] for i in events.items} == {"stream_heartbeat", "ai_stream_events"}

    await session.stop()
    assert session.closed
    await session.wait_closed()  # no failure
    assert MID + "-out" not in trickle.server.channels  # DELETE seen
    assert MID + "-events" in trickle.server.channels  # the gateway's to remove
    await asyncio.wait_for(output.task or asyncio.sleep(0), 5)
    assert output.ended  # the output's subscriber saw the end of the stream

    frames = decoded_output(output.items)
    assert len(frames) == session.stats().frames_encoded >= N - 8
    assert {(f.width, f.height) for f in frames} == {(W, H)}
    assert [f.pts for f in frames] == [i * TICKS for i in range(len(frames))]
    assert len(output.items) == 3  # one segment per 2 s GOP

    await events.until(lambda items: bool(events_of(events, "stream_stopped")))
    kinds = [
        e["event"]["type"] for e in events.items if e["queue_event_type"] == "ai_stream_events"
    ]
    assert kinds[0] == "stream_started"
    for kind in ("receive_first_ingest_segment", "send_first_processed_segment"):
        assert kinds.count(kind) == 1
    assert kinds.count("params_updated") == 3 and kinds[-1] == "stream_stopped"
    updates = events_of(events, "params_updated")
    assert updates[0]["params"]["max_framerate"] == 60 and "ignored" not in updates[0]
    assert updates[1]["params"] == {"max_framerate": 30, "label": "y"}
    assert updates[1]["ignored"] == ["width", "height"]
    assert updates[2]["params"] == {} and updates[2]["ignored"] == ["width", "height"]
    assert all(e["event"]["request_id"] == MID for e in events.items)
    await events.close()
    await control.close(delete=False)
    await publisher.close()
    await session.stop()  # idempotent


async def test_input_end_drains_every_frame_and_ends_the_session(trickle: Trickle) -> None:
    session = await run_session(trickle, PassthroughProcessor())
    output = Reader(trickle.url("-out")).start()
    publisher = await publish_input(trickle, synthetic_segments())
    await publisher.close()  # DELETE the input channel: end of the input
    await asyncio.wait_for(session.wait_closed(), 15)
    await asyncio.wait_for(output.task or asyncio.sleep(0), 5)
    frames = decoded_output(output.items)
    assert len(frames) == N
    assert [f.pts for f in frames] == [i * TICKS for i in range(N)]
    stats = session.stats()
    assert stats.state == "stopped" and stats.error is None
    assert stats.frames_decoded == stats.frames_encoded == N
    assert stats.segments_in == 3 and stats.segments_out == 3
    assert stats.frames_dropped_before_processing == 0


class EveryOther(PassthroughProcessor):
    """Drops odd frames (returns None) and emits a data record per kept frame."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict[str, Any]] = []

    async def process_video_async(self, frame: VideoFrame) -> VideoFrame | None:
        self.frames += 1
        if (frame.pts // TICKS) % 2:
            return None
        self.records.append({"pts": frame.pts, "n": self.frames})
        return frame

    def take_data(self) -> list[dict[str, Any]]:
        records, self.records = self.records, []
        return records


async def test_processor_none_drops_frames_and_data_is_batched(trickle: Trickle) -> None:
    session = await run_session(trickle, EveryOther())
    output = Reader(trickle.url("-out")).start()
    data = Reader(trickle.url("-data"), jsonl).start()
    publisher = await publish_input(trickle, synthetic_segments())
    await publisher.close()
    await asyncio.wait_for(session.wait_closed(), 15)
    await asyncio.wait_for(output.task or asyncio.sleep(0), 5)
    frames = decoded_output(output.items)
    assert [f.pts for f in frames] == [i * TICKS for i in range(0, N, 2)]
    assert session.stats().frames_dropped_by_processor == N // 2
    await data.until(lambda batches: sum(len(b) for b in batches) >= N // 2)
    records = [r for batch in data.items for r in batch]
    assert [r["pts"] for r in records] == [i * TICKS for i in range(0, N, 2)]
    assert 1 <= len(data.items) < len(records) // 4  # batched per 0.1 s, not one per record
    await data.close()


async def test_side_channel_failures_never_stop_the_video(trickle: Trickle) -> None:
    dead = "http://127.0.0.1:9/nowhere"  # discard port: connection refused
    request = StartRequest(
        gateway_request_id=MID,
        subscribe_url=trickle.url(),
        publish_url=trickle.url("-out"),
        control_url=f"{trickle.base}/no-such-channel",  # 404: the control loop ends
        events_url=dead,
        data_url=dead + "-data",
    )
    processor = EveryOther()
    config = LOSSLESS.model_copy(update={"stop_timeout_s": 1.0})
    session = StreamSession(request, processor, config=config)
    trickle.sessions.append(session)
    await session.start()
    output = Reader(trickle.url("-out")).start()
    publisher = await publish_input(trickle, synthetic_segments())
    await publisher.close()
    await asyncio.wait_for(session.wait_closed(), 20)
    await asyncio.wait_for(output.task or asyncio.sleep(0), 5)
    assert len(decoded_output(output.items)) == N // 2
    stats = session.stats()
    assert stats.error is None and stats.events_sent == 0 and stats.data_records_sent == 0


async def test_undecodable_input_fails_the_session(trickle: Trickle) -> None:
    session = await run_session(trickle, PassthroughProcessor())
    publisher = TricklePublisher(trickle.url(), "video/mp2t")
    await publisher.publish(b"\x00" * 300_000)  # no TS sync byte anywhere
    await publisher.close()
    with pytest.raises(StreamSessionError):
        await asyncio.wait_for(session.wait_closed(), 15)
    assert MID + "-out" not in trickle.server.channels


async def test_input_over_the_pixel_limit_fails_the_session_before_decoding(
    trickle: Trickle,
) -> None:
    limited = LOSSLESS.model_copy(update={"max_video_pixels": W * H - 1})
    session = await run_session(trickle, PassthroughProcessor(), limited)
    publisher = await publish_input(trickle, synthetic_segments())
    with pytest.raises(StreamSessionError, match=f"the video is {W}x{H} .* over the limit"):
        await asyncio.wait_for(session.wait_closed(), 15)
    await publisher.close()
    assert session.stats().frames_decoded == 0


@pytest.fixture
async def detector(tmp_path: Path, demo_assets: DemoAssets) -> AsyncIterator[MptaDetectorProcessor]:
    config = WorkerConfig(cache_dir=tmp_path / "cache", execution_provider="cpu")
    async with PipelineService(config) as service:
        processor = MptaDetectorProcessor(service)
        await processor.load_model()
        yield processor
        await processor.close()


async def test_mpta_detector_stream_publishes_detections(
    trickle: Trickle, detector: MptaDetectorProcessor, demo_assets: DemoAssets
) -> None:
    session = await run_session(
        trickle, detector, model_url=str(demo_assets.mpta_path), target_fps=10
    )
    output = Reader(trickle.url("-out")).start()
    data = Reader(trickle.url("-data"), jsonl).start()
    publisher = await publish_input(trickle, synthetic_segments())
    control = TricklePublisher(trickle.url("-control"), "application/json")
    await control.publish(b'{"min_confidence": 0.9}')
    await publisher.close()
    await asyncio.wait_for(session.wait_closed(), 30)
    await asyncio.wait_for(output.task or asyncio.sleep(0), 5)
    frames = decoded_output(output.items)
    assert len(frames) == N and {(f.width, f.height) for f in frames} == {(W, H)}
    await data.until(lambda batches: sum(len(b) for b in batches) >= 10)
    records = [r for batch in data.items for r in batch]
    assert all(r["detection"] is not None for r in records)
    # The demo pipeline: car detector, then the badge classifier on the car: yellow.
    assert {r["detection"]["class"] for r in records} == {"yellow"}
    assert all(len(r["bbox"]) == 4 for r in records)
    # target_fps=10 on a 30 fps input: about every third frame is analysed
    assert 10 <= len(records) <= N // 3 + 1
    assert detector.params.min_confidence == 0.9
    assert session.stats().processing_fps >= 0
    await data.close()
    await control.close(delete=False)


async def test_stream_manager_drives_the_session(trickle: Trickle) -> None:
    """StreamSession as the API's session factory: start, params, input end → IDLE."""
    sessions: list[StreamSession] = []

    def factory(request: StartRequest, processor: FrameProcessor) -> StreamSessionLike:
        session = StreamSession(request, processor, config=LOSSLESS)
        sessions.append(session)
        trickle.sessions.append(session)
        return session

    manager = StreamManager(PassthroughProcessor(), factory)
    await manager.startup()
    await manager.wait_loaded()
    events = Reader(trickle.url("-events"), json.loads).start()
    await manager.start(trickle.request(max_framerate=30))
    assert manager.state is StreamState.OK
    await manager.update_params({"max_framerate": 15})
    assert sessions[0].stats().max_framerate == 15
    assert manager.status()["session"]["kind"] == "trickle"
    await events.until(lambda items: bool(events_of(events, "params_updated")))
    assert events_of(events, "params_updated")[0]["params"] == {"max_framerate": 15}

    publisher = await publish_input(trickle, synthetic_segments())
    await publisher.close()  # the input ends: the session ends and the manager goes IDLE
    await wait_for(lambda: manager.state is StreamState.IDLE, 15)
    stats = sessions[0].stats()
    assert stats.state == "stopped" and stats.frames_encoded == N // 2  # 15 of 30 fps
    await events.close()
    await manager.shutdown()
