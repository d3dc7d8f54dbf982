"""Orchestrator mode end to end, the way a gateway drives it.

The worker runs as users run it (``python server.py`` with the demo MPTA as its stream
processor's pipeline); the trickle server is the project's own, on loopback. The test
publishes a synthetic H.264 scene as live MPEG-TS segments, starts the stream over REST,
tunes params live with curl-shaped POSTs, and reads the output, data and events channels as
a gateway would.

The scene: a red car with a yellow badge, drawn off-colour so the demo detector scores it
0.85, and a truck at 0.8. The pipeline reports the car (badge classifier: "yellow").
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt
import pytest

from pytrickle_worker.devtools.assets import DemoAssets
from pytrickle_worker.devtools.synthetic import (
    SceneObject,
    colour_for_confidence,
    moving_objects,
    render_scene,
)
from pytrickle_worker.devtools.trickle_server import TrickleServer
from pytrickle_worker.media.mpegts import TS_TIME_BASE
from pytrickle_worker.media.segment_encoder import encode_segments
from pytrickle_worker.processing import VideoFrame
from pytrickle_worker.processing.annotate import class_colour
from pytrickle_worker.transport.trickle import TricklePublisher
from tests.test_streaming_e2e import CHANNELS, Reader, decoded_output, events_of, jsonl
from tests.worker_process import WorkerProcess

W, H, FPS = 320, 180, 30
TICKS = 90_000 // FPS
SEGMENT_FRAMES = 2 * FPS  # the encoder cuts a segment per 2 s GOP
PHASES = 4
N = PHASES * SEGMENT_FRAMES
CAR_CONFIDENCE = 0.85
MID = "e2e-stream"
#: What the MPTA processor draws a car's box and label in.
BOX_COLOUR = np.array(class_colour("car"), dtype=np.float32)

Image = npt.NDArray[np.uint8]


def scene_objects(index: int) -> list[SceneObject]:
    car, truck = moving_objects(index, W, H, FPS)
    return [dataclasses.replace(car, colour=colour_for_confidence("car", CAR_CONFIDENCE)), truck]


@functools.cache
def scene_rgb(index: int) -> Image:
    return render_scene(W, H, scene_objects(index), seed=index)


@functools.cache
def input_segments() -> tuple[bytes, ...]:
    frames = (VideoFrame(scene_rgb(i), i * TICKS, TS_TIME_BASE) for i in range(N))
    segments = tuple(encode_segments(frames))
    assert len(segments) == PHASES
    return segments


def annotation_mask(output: Image) -> npt.NDArray[np.bool_]:
    """Pixels in the car's annotation colour (nothing in the scene comes close to it)."""
    distance = np.linalg.norm(output.astype(np.float32) - BOX_COLOUR, axis=2)
    return distance < 70


def box_drawn_around(mask: npt.NDArray[np.bool_], box: tuple[int, int, int, int]) -> bool:
    """Each side of the object's box has a drawn line within 3 px of it, and nothing is
    drawn away from the box but its label tag above it."""
    x1, y1, x2, y2 = box
    inner_x, inner_y = slice(x1 + 4, x2 - 4), slice(y1 + 4, y2 - 4)
    sides = (
        [mask[y, inner_x].mean() for y in range(y1 - 3, y1 + 4)],  # top
        [mask[y, inner_x].mean() for y in range(y2 - 4, y2 + 3)],  # bottom
        [mask[inner_y, x].mean() for x in range(x1 - 3, x1 + 4)],  # left
        [mask[inner_y, x].mean() for x in range(x2 - 4, x2 + 3)],  # right
    )
    near = np.zeros_like(mask)
    near[max(y1 - 24, 0) : y2 + 4, max(x1 - 4, 0) : x2 + 80] = True  # box, label tag, slack
    return all(max(side) > 0.9 for side in sides) and not mask[~near].any()


@dataclasses.dataclass
class Rig:
    worker: WorkerProcess
    trickle: TrickleServer
    trickle_base: str
    http: aiohttp.ClientSession

    def url(self, suffix: str = "") -> str:
        return f"{self.trickle_base}/{MID}{suffix}"

    async def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        """A request as ``curl -X METHOD -d BODY`` sends it (form content type and all)."""
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
        async with self.http.request(
            method, self.worker.base + path, data=body, headers=headers
        ) as response:
            return response.status, await response.json()


@pytest.fixture
async def rig(tmp_path: Path, demo_assets: DemoAssets) -> AsyncIterator[Rig]:
    trickle = TrickleServer()
    port = await trickle.start("127.0.0.1", 0)
    for suffix, mime in CHANNELS.items():  # the gateway creates the channels first
        trickle.create_channel(MID + suffix, mime)
    worker = WorkerProcess(tmp_path, "--pipeline", str(demo_assets.mpta_path)).start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Rig(worker, trickle, f"http://127.0.0.1:{port}", http)
    finally:
        code = worker.stop()
        await trickle.stop()
    assert code == 0, worker.log()


async def publish_live(publisher: TricklePublisher, segment: bytes) -> None:
    """One segment streamed as a live encoder produces it: over its 2 s of media time."""
    writer = await publisher.next_segment()
    pieces = 20
    step = -(-len(segment) // pieces)
    for offset in range(0, len(segment), step):
        await writer.write(segment[offset : offset + step])
        await asyncio.sleep(2.0 / pieces)
    await writer.close()


async def processed_through(rig: Rig, frames: int, within_s: float = 20.0) -> dict[str, Any]:
    """Wait until the worker has taken ``frames`` input frames (processed or dropped)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        status, body = await rig.call("GET", "/api/stream/status")
        assert status == 200
        session = body["session"]
        taken = session["frames_processed"] + session["frames_dropped_before_processing"]
        if taken >= frames:
            return body
        assert loop.time() < deadline, f"stuck at {taken} < {frames}: {session}"
        await asyncio.sleep(0.1)


async def test_orchestrator_session_over_rest_and_trickle(rig: Rig) -> None:
    await rig.worker.wait_status("/health/ready", 200)
    status, health = await rig.call("GET", "/health")
    assert (status, health["status"]) == (200, "IDLE")

    output = Reader(rig.url("-out")).start()
    data = Reader(rig.url("-data"), jsonl).start()
    events = Reader(rig.url("-events"), json.loads).start()
    start = {
        "gateway_request_id": MID,
        "subscribe_url": rig.url(),
        "publish_url": rig.url("-out"),
        "control_url": rig.url("-control"),
        "events_url": rig.url("-events"),
        "data_url": rig.url("-data"),
        "params": {},
    }
    status, body = await rig.call("POST", "/api/stream/start", json.dumps(start).encode())
    assert status == 200, body
    assert body["status"] == "success" and body["request_id"] == MID
    status, again = await rig.call("POST", "/api/stream/start", json.dumps(start).encode())
    assert (status, again["status"]) == (503, "error")  # one stream at a time

    segments = input_segments()
    publisher = TricklePublisher(rig.url(), "video/mp2t")
    # Phase 0: the pipeline's own settings, annotation on.
    await publish_live(publisher, segments[0])
    await processed_through(rig, SEGMENT_FRAMES - 10)
    # Phase 1: annotation off; detections go on.
    status, body = await rig.call("POST", "/api/stream/params", b'{"annotate": false}')
    assert status == 200 and body["params"]["annotate"] is False, body
    await publish_live(publisher, segments[1])
    await processed_through(rig, 2 * SEGMENT_FRAMES - 10)
    # Phase 2: annotation on, but minConfidence above the car's 0.85 and the truck's 0.8.
    update = b'{"annotate": true, "min_confidence": 0.9}'
    status, body = await rig.call("POST", "/stream/params", update)  # go-livepeer's path
    assert status == 200 and body["params"]["min_confidence"] == 0.9, body
    await publish_live(publisher, segments[2])
    await processed_through(rig, 3 * SEGMENT_FRAMES - 10)
    # Phase 3: null gives the pipeline's own minConfidence back.
    status, body = await rig.call("POST", "/api/stream/params", b'{"min_confidence": null}')
    assert status == 200 and body["params"]["min_confidence"] is None, body
    await publish_live(publisher, segments[3])
    live = await processed_through(rig, N - 10)

    assert live["state"] == "OK" and live["stream"]["gateway_request_id"] == MID
    assert live["current_params"]["params"]["annotate"] is True
    assert live["fps"]["input_fps"] > 0 and live["fps"]["output_fps"] > 0
    assert live["session"]["input_dimensions"] == {"width": W, "height": H}

    status, body = await rig.call("POST", "/api/stream/stop")
    assert (status, body["status"]) == (200, "success")
    assert MID + "-out" not in rig.trickle.channels  # the worker DELETEd its output
    status, after = await rig.call("GET", "/api/stream/status")
    assert (status, after["state"], after["active_streams"]) == (200, "IDLE", 0)
    status, health = await rig.call("GET", "/health")
    assert (status, health["status"]) == (200, "IDLE")
    status, body = await rig.call("POST", "/api/stream/stop")
    assert (status, body["status"]) == (400, "error")  # nothing to stop
    await publisher.close()

    # -- events: started, params, heartbeat, stopped with the final counts
    await events.until(lambda items: bool(events_of(events, "stream_stopped")))
    heartbeat = events_of(events, "heartbeat")[-1]
    assert heartbeat["dimensions"] == {"width": W, "height": H}
    assert heartbeat["fps"]["ingress_video_fps"] > 0
    updates = [e["params"] for e in events_of(events, "params_updated")]
    assert updates == [
        {"annotate": False},
        {"annotate": True, "min_confidence": 0.9},
        {"min_confidence": None},
    ]
    final = events_of(events, "stream_stopped")[-1]["stats"]
    await events.close()

    # -- output: every processed frame, at its input size and timestamps, boxes as set
    await asyncio.wait_for(output.task or asyncio.sleep(0), 10)
    frames = decoded_output(output.items)
    assert len(frames) == final["frames_encoded"] == final["frames_processed"]
    assert N - 10 <= final["frames_decoded"] <= N
    dropped = final["frames_dropped_before_processing"] + final["frames_dropped_by_processor"]
    assert len(frames) <= final["frames_decoded"] - dropped
    assert len(frames) >= N - 40  # live pacing: the CPU keeps up with all but a few
    assert {(f.width, f.height) for f in frames} == {(W, H)}
    indices = [f.pts // TICKS for f in frames]
    assert indices == sorted(set(indices)) and all(f.pts % TICKS == 0 for f in frames)
    margin = 12  # frames around a params change may be processed on either side of it
    boxed = {phase: 0 for phase in range(PHASES)}
    plain = {phase: 0 for phase in range(PHASES)}
    for frame, index in zip(frames, indices, strict=True):
        phase, offset = divmod(index, SEGMENT_FRAMES)
        if offset < margin or offset >= SEGMENT_FRAMES - margin:
            continue
        mask = annotation_mask(frame.to_ndarray(format="rgb24"))
        if box_drawn_around(mask, scene_objects(index)[0].box):
            boxed[phase] += 1
        elif not mask.any():
            plain[phase] += 1
    checked = SEGMENT_FRAMES - 2 * margin
    assert boxed[0] >= 0.9 * checked and plain[0] == 0, (boxed, plain)
    assert plain[1] >= 0.9 * checked and boxed[1] == 0, (boxed, plain)
    assert plain[2] >= 0.9 * checked and boxed[2] == 0, (boxed, plain)
    assert boxed[3] >= 0.9 * checked and plain[3] == 0, (boxed, plain)

    # -- data: the car's detections, none while minConfidence was above it
    # The session flushed its data channel before the stop answered: wait for the last phase.
    await data.until(
        lambda batches: any(r["pts"] // TICKS >= N - 2 * margin for b in batches for r in b)
    )
    records = [r for batch in data.items for r in batch]
    await data.close()
    assert {r["detection"]["class"] for r in records} == {"yellow"}
    by_phase = {phase: 0 for phase in range(PHASES)}
    for record in records:
        index = record["pts"] // TICKS
        phase, offset = divmod(index, SEGMENT_FRAMES)
        if margin <= offset < SEGMENT_FRAMES - margin:
            by_phase[phase] += 1
        x1, y1, x2, y2 = scene_objects(index)[0].box
        bx1, by1, bx2, by2 = record["bbox"]
        assert max(abs(bx1 - x1), abs(by1 - y1), abs(bx2 - x2), abs(by2 - y2)) <= 4, record
    assert by_phase[0] >= 0.9 * checked and by_phase[1] >= 0.9 * checked, by_phase
    assert by_phase[2] == 0 and by_phase[3] >= 0.9 * checked, by_phase
