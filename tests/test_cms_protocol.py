"""The CMS WebSocket protocol (worker.md) end to end, against real servers on 127.0.0.1.

The worker is the real aiohttp app (``create_app``) behind an ``aiohttp.test_utils.TestServer``;
the backend is a real WebSocket client; the MPTA archive comes from a small aiohttp file server;
the camera is the GStreamer RTSP test server playing the demo ``sample.mp4`` (640x360 at 15 fps:
a car with a yellow badge drives in the upper half, a truck in the lower half). The demo
pipeline reports the badged car as class "yellow" and the truck alone as class "truck".

Nothing of the worker is mocked; the tests read its state (queues, registry, hub) only.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import av
import numpy as np
import pytest
from aiohttp import ClientSession, TCPConnector

from pytrickle_worker.devtools.synthetic import CLASS_COLOURS
from pytrickle_worker.server.app import HUB_KEY
from tests.cms_harness import (
    ISO_MS_Z,
    LOWER,
    ONLINE_TIMEOUT_S,
    STATE_KEYS,
    UPPER,
    Message,
    ModelServer,
    Worker,
    WorkerFactory,
    connection_of,
    detection_class,
    is_detection,
    is_error,
    is_state,
    subscribe_payload,
    wait_until,
)
from tests.helpers import free_port
from tests.media_fixtures import RtspServer


def decode_jpeg(body: bytes) -> np.ndarray:
    with av.open(io.BytesIO(body), mode="r", format="image2pipe") as container:
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="rgb24")


def colour_pixels(rgb: np.ndarray, colour: tuple[int, int, int], tolerance: int = 40) -> int:
    distance = np.abs(rgb.astype(np.int32) - np.asarray(colour, dtype=np.int32)).sum(axis=2)
    return int((distance < tolerance).sum())


# ============================================================================= 1. the log


async def test_example_communication_log(
    camera: RtspServer, model_server: ModelServer, start_worker: WorkerFactory
) -> None:
    """worker.md section 6, message by message, with the right fields and values."""
    worker = await start_worker()
    backend = await worker.connect()
    identifier = "display-001;entry-cam-01"

    # 1. Connection established: the first message is a stateReport without cameras.
    first = await backend.wait_for(lambda _: True, what="first message")
    assert set(first) == STATE_KEYS, first
    assert first["type"] == "stateReport"
    assert first["cameraConnections"] == []
    for key in ("cpuUsage", "memoryUsage"):
        assert isinstance(first[key], int | float) and 0 <= first[key] <= 100, first
    for key in ("gpuUsage", "gpuMemoryUsage"):
        assert first[key] is None or 0 <= first[key] <= 100, first
    # ... and heartbeats follow on their own (every 0.5 s here).
    await backend.wait_for(is_state, after=1, timeout=2.0, what="heartbeat")

    # 2. The backend subscribes the camera.
    mark = backend.mark()
    await backend.send("subscribe", subscribe_payload(identifier, camera.url, model_server.url()))

    # 3. The worker acknowledges in its heartbeat: the camera, online.
    state = await backend.wait_online(identifier, after=mark)
    assert set(state) == STATE_KEYS
    assert state["cameraConnections"] == [
        {
            "subscriptionIdentifier": identifier,
            "modelId": 201,
            "modelName": "Vehicle Identification",
            "online": True,
        }
    ]

    # 4. The worker detects the car: exactly the protocol's fields, the scene's values.
    [detection] = await backend.detections(identifier, 1, after=mark)
    received_at = datetime.now(UTC)
    assert set(detection) == {"type", "subscriptionIdentifier", "timestamp", "data"}, detection
    assert detection["type"] == "imageDetection"
    assert detection["subscriptionIdentifier"] == identifier
    assert ISO_MS_Z.match(detection["timestamp"]), detection["timestamp"]
    captured = datetime.strptime(detection["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=UTC
    )
    assert abs((received_at - captured).total_seconds()) < 5, (received_at, captured)
    data = detection["data"]
    assert set(data) == {"detection", "modelId", "modelName"}
    assert data["modelId"] == 201
    assert data["modelName"] == "Vehicle Identification"
    flat = data["detection"]
    assert set(flat) == {"class", "confidence", "id"}, flat  # flat: no bbox, no nesting
    assert flat["class"] == "yellow"  # the car wins; its badge is classified
    assert flat["confidence"] == pytest.approx(1.0, abs=0.1)
    assert isinstance(flat["id"], int) and flat["id"] >= 1
    assert all(not isinstance(v, dict | list) for v in flat.values())

    # 5./6. The backend unsubscribes; the worker acknowledges with no cameras.
    mark = backend.mark()
    await backend.send("unsubscribe", {"subscriptionIdentifier": identifier})
    state = await backend.wait_for(
        lambda m: is_state(m) and m["cameraConnections"] == [],
        after=mark,
        what="stateReport without cameras",
    )
    assert set(state) == STATE_KEYS
    assert not [m for m in backend.since(mark) if is_error(m)]
    # The camera connection is closed, and no detection follows the acknowledgement.
    await camera.wait_for_async(lambda s: s.current_sessions == 0, timeout=10)
    after_ack = backend.messages.index(state, mark) + 1
    await asyncio.sleep(0.5)
    assert not [m for m in backend.since(after_ack) if is_detection(m)]


# ============================================================================= 2. two displays


async def test_two_displays_share_one_rtsp_session_with_separate_results(
    camera: RtspServer, model_server: ModelServer, start_worker: WorkerFactory
) -> None:
    worker = await start_worker(emission="every_frame")
    backend = await worker.connect()
    a, b = "display-A;cam-1", "display-B;cam-1"
    mark = backend.mark()
    await backend.send("subscribe", subscribe_payload(a, camera.url, model_server.url(), **UPPER))
    await backend.send("subscribe", subscribe_payload(b, camera.url, model_server.url(), **LOWER))
    # The backend names a display only: it applies to display-A's subscriptions only.
    await backend.send("setSessionId", {"displayIdentifier": "display-A", "sessionId": 12345})

    state = await backend.wait_for(
        lambda m: (
            connection_of(m, a).get("online") is True and connection_of(m, b).get("online") is True
        ),
        after=mark,
        timeout=ONLINE_TIMEOUT_S,
        what="both displays online",
    )
    # Each subscription's crop is echoed back.
    assert connection_of(state, a) == {
        "subscriptionIdentifier": a,
        "modelId": 201,
        "modelName": "Vehicle Identification",
        "online": True,
        **UPPER,
    }
    assert connection_of(state, b) == {
        "subscriptionIdentifier": b,
        "modelId": 201,
        "modelName": "Vehicle Identification",
        "online": True,
        **LOWER,
    }

    # The upper half only shows the badged car; the lower half only the truck.
    from_a = await backend.detections(a, 5, after=mark)
    from_b = await backend.detections(b, 5, after=mark)
    assert {detection_class(m) for m in from_a} == {"yellow"}, from_a
    assert {detection_class(m) for m in from_b} == {"truck"}, from_b
    assert all(m["sessionId"] == 12345 for m in from_a), from_a
    assert all("sessionId" not in m for m in from_b), from_b
    assert {m["data"]["modelId"] for m in from_a + from_b} == {201}

    # One camera, one RTSP connection and one session, for both displays.
    counters = camera.counters()
    assert counters["sessions_total"] == 1, counters
    assert counters["clients_connected_total"] == 1, counters
    assert counters["current_sessions"] == 1, counters
    assert len(worker.app[HUB_KEY].statuses()) == 1


# ============================================================================= 3. sessions


async def test_session_id_set_changed_and_cleared(
    camera: RtspServer, model_server: ModelServer, start_worker: WorkerFactory
) -> None:
    worker = await start_worker(emission="every_frame")
    backend = await worker.connect()
    identifier = "display-001;cam-1"
    await backend.send("subscribe", subscribe_payload(identifier, camera.url, model_server.url()))
    await backend.detections(identifier, 2)

    def with_session(value: object) -> Callable[[Message], bool]:
        return lambda m: m.get("sessionId") == value

    mark = backend.mark()
    await backend.send("setSessionId", {"displayIdentifier": "display-001", "sessionId": 12345})
    first = (await backend.detections(identifier, 1, after=mark, where=with_session(12345)))[0]
    following = await backend.detections(identifier, 3, after=backend.messages.index(first) + 1)
    assert all(m["sessionId"] == 12345 for m in following), following

    # A new session (a string this time) replaces the old one.
    mark = backend.mark()
    await backend.send("setSessionId", {"displayIdentifier": "display-001", "sessionId": "s-2"})
    first = (await backend.detections(identifier, 1, after=mark, where=with_session("s-2")))[0]
    following = await backend.detections(identifier, 3, after=backend.messages.index(first) + 1)
    assert all(m["sessionId"] == "s-2" for m in following), following

    # null clears it: the key disappears from every later detection.
    mark = backend.mark()
    await backend.send("setSessionId", {"displayIdentifier": "display-001", "sessionId": None})
    first = (
        await backend.detections(identifier, 1, after=mark, where=lambda m: "sessionId" not in m)
    )[0]
    following = await backend.detections(identifier, 5, after=backend.messages.index(first) + 1)
    assert all("sessionId" not in m for m in following), following
    assert all(detection_class(m) == "yellow" for m in following)
    # A payload without the key clears it too (JavaScript drops a key set to undefined;
    # the original worker read it with payload.get).
    await backend.send("setSessionId", {"displayIdentifier": "display-001", "sessionId": 9})
    await backend.detections(identifier, 1, after=backend.mark(), where=with_session(9))
    mark = backend.mark()
    await backend.send("setSessionId", {"displayIdentifier": "display-001"})
    first = (
        await backend.detections(identifier, 1, after=mark, where=lambda m: "sessionId" not in m)
    )[0]
    following = await backend.detections(identifier, 3, after=backend.messages.index(first) + 1)
    assert all("sessionId" not in m for m in following), following
    # Another display's session never leaks onto this one.
    mark = backend.mark()
    await backend.send("setSessionId", {"displayIdentifier": "display-002", "sessionId": 7})
    following = await backend.detections(identifier, 3, after=mark)
    assert all("sessionId" not in m for m in following), following
    assert not [m for m in backend.messages if is_error(m)]


async def test_a_new_session_and_a_new_backend_hear_the_object_in_view_again(
    camera: RtspServer, model_server: ModelServer, start_worker: WorkerFactory
) -> None:
    # With `changes` emission the car is announced once. The backend answers that detection
    # with setSessionId and then expects the session's detections (worker.md 5.5), so a new
    # session announces the object in view again, carrying it. So does the first backend to
    # connect after none was listening: what was detected meanwhile went nowhere.
    worker = await start_worker(disconnect_grace_s=30)
    backend = await worker.connect()
    identifier = "display-001;cam-1"
    await backend.send("subscribe", subscribe_payload(identifier, camera.url, model_server.url()))
    [first] = await backend.detections(identifier, 1)
    assert "sessionId" not in first
    mark = backend.mark()
    await asyncio.sleep(1.0)
    assert not [m for m in backend.since(mark) if is_detection(m)]  # announced once

    await backend.send("setSessionId", {"displayIdentifier": "display-001", "sessionId": 42})
    [again] = await backend.detections(identifier, 1, after=mark)
    assert again["sessionId"] == 42
    assert again["data"]["detection"] == {**first["data"]["detection"]}
    # The same session again, or another display's, announces nothing more.
    mark = backend.mark()
    await backend.send("setSessionId", {"displayIdentifier": "display-001", "sessionId": 42})
    await backend.send("setSessionId", {"displayIdentifier": "display-002", "sessionId": 7})
    await asyncio.sleep(1.0)
    assert not [m for m in backend.since(mark) if is_detection(m)]

    # The backend goes away and comes back within the grace period.
    await backend.close()
    await wait_until(lambda: not worker.cms.registry.connections, 5, "the worker noticed")
    returning = await worker.connect()
    [announced] = await returning.detections(identifier, 1)
    assert announced["sessionId"] == 42
    assert announced["data"]["detection"]["id"] == first["data"]["detection"]["id"]
    # A second backend joining one that listens does not repeat it to both.
    mark = returning.mark()
    extra = await worker.connect()
    await asyncio.sleep(1.0)
    assert not [m for m in returning.since(mark) if is_detection(m)]
    assert not [m for m in extra.messages if is_detection(m)]
    assert not [m for m in returning.messages if is_error(m)]


# ============================================================================= 4. outage


async def test_camera_outage_goes_offline_and_recovers_without_resubscribe(
    camera: RtspServer, model_server: ModelServer, start_worker: WorkerFactory
) -> None:
    worker = await start_worker(emission="every_frame")
    backend = await worker.connect()
    identifier = "display-001;cam-1"
    await backend.send("subscribe", subscribe_payload(identifier, camera.url, model_server.url()))
    await backend.wait_online(identifier)
    await backend.detections(identifier, 2)

    # The camera crashes: the heartbeat reports it offline (the subscription stays).
    camera.kill()
    mark = backend.mark()
    offline = await backend.wait_online(identifier, after=mark, online=False)
    assert connection_of(offline, identifier)["modelId"] == 201
    assert len(worker.cms.subscriptions) == 1

    # It comes back on the same port: online again and detections resume, no resubscribe.
    mark = backend.mark()
    await asyncio.to_thread(camera.restart)
    await backend.wait_online(identifier, after=mark)
    resumed = await backend.detections(identifier, 3, after=mark)
    assert all(detection_class(m) == "yellow" for m in resumed), resumed
    assert camera.counters()["sessions_total"] == 2  # one session per server run
    assert camera.starts == 2
    # The outage was also reported as an error for that subscription, naming the cause.
    errors = [m for m in backend.messages if is_error(m)]
    assert errors, "the camera outage was not reported"
    assert all(m["subscriptionIdentifier"] == identifier for m in errors), errors
    assert all(m["error"].startswith("camera offline: ") for m in errors), errors


# ============================================================================= 5. images


async def test_camera_image_route(
    camera: RtspServer, model_server: ModelServer, start_worker: WorkerFactory
) -> None:
    worker = await start_worker()
    backend = await worker.connect()
    a, b = "display-A;cam-1", "display-B;cam-1"
    percent = "display-%41;cam-1"  # a literal '%' in an identifier
    dead = "display-D;cam-dead"
    box = {"cropX1": 100, "cropY1": 200, "cropX2": 300, "cropY2": 300}
    model = model_server.url()
    await backend.send("subscribe", subscribe_payload(a, camera.url, model, **UPPER))
    await backend.send("subscribe", subscribe_payload(b, camera.url, model, **box))
    await backend.send("subscribe", subscribe_payload(percent, camera.url, model))
    nobody = f"rtsp://127.0.0.1:{free_port()}/cam"  # refuses connections: never a frame
    await backend.send("subscribe", subscribe_payload(dead, nobody, model))
    await backend.wait_for(
        lambda m: all(connection_of(m, i) for i in (a, b, percent, dead)),
        what="all four subscriptions in a stateReport",
    )

    # Unknown ids: 404 with a JSON error.
    for path in (
        "/camera/display-X;cam-1/image",
        "/camera/display-A%3Bcam-2/image",
        "/camera/nothing/image",
    ):
        status, content_type, body = await worker.get(path)
        assert status == 404, path
        assert content_type == "application/json"
        assert "not subscribed" in json.loads(body)["message"]
    # Subscribed, but the camera never delivered a frame: 404 with a JSON error.
    for path in ("/camera/display-D;cam-dead/image", "/camera/display-D%3Bcam-dead/image"):
        status, content_type, body = await worker.get(path)
        assert status == 404, path
        assert content_type == "application/json"
        assert "no frame" in json.loads(body)["message"]

    await backend.wait_online(a)
    images: dict[str, np.ndarray] = {}
    # Every subscription's image is the camera's whole frame, whatever its crop (the
    # original worker's behaviour: a CMS draws the crop on this image).
    for path, expected in (
        ("/camera/display-A;cam-1/image", (360, 640)),
        ("/camera/display-A%3Bcam-1/image", (360, 640)),
        ("/camera/display-A%3bcam-1/image", (360, 640)),
        ("/camera/display-B;cam-1/image", (360, 640)),
        ("/camera/display-B%3Bcam-1/image", (360, 640)),
        ("/camera/display-%2541;cam-1/image", (360, 640)),
        ("/camera/display-%2541%3Bcam-1/image", (360, 640)),
    ):
        status, content_type, body = await worker.get(path)
        assert status == 200, (path, body[:200])
        assert content_type == "image/jpeg"
        assert body[:2] == b"\xff\xd8"
        rgb = decode_jpeg(body)
        assert rgb.shape == (*expected, 3), path
        images[path] = rgb
    # Not cropped: the car (red, upper half) and the truck (lower half) are both there,
    # also for display-A, whose crop is the upper half.
    for path in ("/camera/display-A;cam-1/image", "/camera/display-B;cam-1/image"):
        whole = images[path]
        assert colour_pixels(whole[:180], CLASS_COLOURS["car"]) > 2000, path
        assert colour_pixels(whole[180:], CLASS_COLOURS["truck"], tolerance=60) > 2000, path
        assert colour_pixels(whole[180:], CLASS_COLOURS["car"]) < 50, path

    # After unsubscribing, the image is gone.
    mark = backend.mark()
    await backend.send("unsubscribe", {"subscriptionIdentifier": a})
    await backend.wait_for(lambda m: is_state(m) and not connection_of(m, a), after=mark)
    status, _, body = await worker.get("/camera/display-A;cam-1/image")
    assert status == 404 and json.loads(body)["status"] == "error"


# ============================================================================= 6. hostile input


def _deep_object(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {}
    root = node
    for _ in range(depth):
        node["a"] = {}
        node = node["a"]
    return root


def hostile_messages(model_server: ModelServer, count: int) -> list[tuple[str | bytes, str]]:
    """``count`` malformed or hostile messages, each with a word its error reply must hold."""
    ok = subscribe_payload("display-h;cam-h", "rtsp://127.0.0.1:1/cam", model_server.url())

    def sub(**changes: Any) -> str:
        payload = {**ok, **changes}
        return json.dumps(
            {"type": "subscribe", "payload": {k: v for k, v in payload.items() if v is not ...}}
        )

    huge_int = "9" * 5000  # past Python's int-from-string limit (4300 digits)
    cases: list[tuple[str | bytes, str]] = [
        ("not json at all", "not valid json"),
        ("", "not valid json"),
        ("{", "not valid json"),
        ("{'type': 'requestState'}", "not valid json"),
        ('{"type": "requestState",}', "not valid json"),
        ("[1, 2, 3]", "must be a json object, got list"),
        ('[{"type": "requestState"}]', "must be a json object, got list"),
        ("42", "got int"),
        ("-1.5e300", "got float"),
        ('"subscribe"', "got str"),
        ("null", "got nonetype"),
        ("true", "got bool"),
        ("{}", "type"),
        ('{"payload": {}}', "type"),
        ('{"type": 5}', "type"),
        ('{"type": null}', "type"),
        ('{"type": ["requestState"]}', "type"),
        ('{"type": {"a": 1}}', "type"),
        ('{"type": "hack"}', "unknown message type 'hack'"),
        ('{"type": "RequestState"}', "unknown message type"),
        ('{"type": "requestState", "type": "bogus"}', "unknown message type 'bogus'"),
        (json.dumps({"type": "x" * 10_000}), "unknown message type"),
        (json.dumps({"type": "nope", "payload": _deep_object(900)}), "unknown message type"),
        (json.dumps({f"k{i}": i for i in range(20_000)} | {"type": "zz"}), "unknown message"),
        ("[" * 100_000 + "]" * 100_000, "not valid json"),
        ('{"a":' * 50_000 + "1" + "}" * 50_000, "not valid json"),
        (json.dumps("x" * 2_000_000), "exceeds the limit"),
        (sub(cropX1=0) + " " * 2_000_000, "exceeds the limit"),
        ('{"type": "subscribe"}', "payload"),
        ('{"type": "subscribe", "payload": null}', "payload"),
        ('{"type": "subscribe", "payload": []}', "payload"),
        ('{"type": "subscribe", "payload": "display;cam"}', "payload"),
        (sub(subscriptionIdentifier=...), "subscriptionidentifier"),
        (sub(subscriptionIdentifier="display-no-camera"), "subscriptionidentifier"),
        (sub(subscriptionIdentifier="a;b;c"), "subscriptionidentifier"),
        (sub(subscriptionIdentifier=";cam"), "subscriptionidentifier"),
        (sub(subscriptionIdentifier="d;" + "c" * 1000), "subscriptionidentifier"),
        (sub(subscriptionIdentifier=12), "subscriptionidentifier"),
        (sub(modelUrl=...), "modelurl"),
        (sub(modelUrl=""), "modelurl"),
        (sub(modelUrl=["http://x"]), "modelurl"),
        (sub(modelId=...), "modelid"),
        (sub(modelId=None), "modelid"),
        (sub(modelId=1.5), "modelid"),
        (sub(modelId={"id": 1}), "modelid"),
        (sub(modelId="m" * 100_000), "modelid"),
        (sub(modelId=10**30), "modelid"),
        (sub(modelId=-(10**30)), "modelid"),
        (sub(modelId=0).replace('"modelId": 0', f'"modelId": {huge_int}'), "not valid json"),
        (sub(modelId=0).replace('"modelId": 0', '"modelId": NaN'), "modelid"),
        (sub(modelName="n" * 5000), "modelname"),
        (sub(modelName=42), "modelname"),
        (sub(rtspUrl=...), "rtspurl or snapshoturl"),
        (sub(rtspUrl=None), "rtspurl or snapshoturl"),
        (sub(rtspUrl=7), "rtspurl"),
        (sub(rtspUrl="rtsp://" + "h" * 5000), "rtspurl"),
        (sub(rtspUrl=None, snapshotUrl="http://127.0.0.1:1/s.jpg"), "snapshotinterval"),
        (sub(snapshotUrl="http://127.0.0.1:1/s.jpg", snapshotInterval=-5), "snapshotinterval"),
        (sub(snapshotUrl="http://127.0.0.1:1/s.jpg", snapshotInterval="often"), "snapshotinter"),
        (sub(cropX1=0), "must be given together"),
        (sub(cropX1=0, cropY1=0, cropX2=0, cropY2=10), "empty"),
        (sub(cropX1=5, cropY1=50, cropX2=100, cropY2=10), "empty"),
        (sub(cropX1=-1, cropY1=0, cropX2=10, cropY2=10), "cropx1"),
        (sub(cropX1="abc", cropY1=0, cropX2=10, cropY2=10), "cropx1"),
        (sub(cropX1=0, cropY1=0, cropX2=10**12, cropY2=10), "cropx2"),
        (
            sub(cropX1=0, cropY1=0, cropX2=10, cropY2=10).replace(
                '"cropY2": 10', '"cropY2": 1e400'
            ),
            "cropy2",
        ),
        (sub(cropX1=0.5, cropY1=0, cropX2=10, cropY2=10), "cropx1"),
        (sub(modelUrl=model_server.url("missing.mpta")), "missing.mpta"),
        (sub(modelUrl=model_server.url("notzip.mpta")), "zip"),
        (sub(modelUrl="gopher://127.0.0.1/x.mpta"), "unsupported scheme"),
        (sub(modelUrl="http://127.0.0.1:1/model.mpta"), "127.0.0.1:1"),
        ('{"type": "unsubscribe"}', "payload"),
        ('{"type": "unsubscribe", "payload": {}}', "subscriptionidentifier"),
        ('{"type": "unsubscribe", "payload": {"subscriptionIdentifier": 5}}', "subscriptionid"),
        ('{"type": "unsubscribe", "payload": {"subscriptionIdentifier": ""}}', "subscriptionid"),
        (
            json.dumps({"type": "unsubscribe", "payload": {"subscriptionIdentifier": "d;nope"}}),
            "unknown subscriptionidentifier",
        ),
        (
            # A lone surrogate is no valid string.
            '{"type": "unsubscribe", "payload": {"subscriptionIdentifier": "\\ud800;x"}}',
            "subscriptionidentifier: input should be a valid string",
        ),
        ('{"type": "setSessionId"}', "payload"),
        ('{"type": "setSessionId", "payload": {"sessionId": 1}}', "displayidentifier"),
        (
            '{"type": "setSessionId", "payload": {"displayIdentifier": "d", "sessionId": [1]}}',
            "sessionid",
        ),
        (
            json.dumps(
                {
                    "type": "setSessionId",
                    "payload": {"displayIdentifier": "d", "sessionId": "s" * 100_000},
                }
            ),
            "sessionid",
        ),
        ('{"type": "patchSessionResult", "payload": {"sessionId": 1}}', "success"),
        ('{"type": "patchSessionResult", "payload": {"success": "maybe"}}', "success"),
        ('{"type": "patchSession", "sessionId": 1, "data": [1, 2]}', "data"),
        ('{"type": "patchSession", "sessionId": {"a": 1}}', "sessionid"),
        (b"\x00\xff\xfe binary", "binary frames"),
        (b'{"type": "requestState"}', "binary frames"),
    ]
    messages: list[tuple[str | bytes, str]] = list(cases)
    rng = random.Random(4)
    alphabet = "{}[]:,\"'\\ abc0123456789-.eEtrufnl\u00e9\u4e2d\U0001f600"
    while len(messages) < count:
        kind = rng.randrange(5)
        if kind == 0:  # random garbage, never valid JSON
            text = "~" + "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 200)))
            messages.append((text, "not valid json"))
        elif kind == 1:  # random JSON that is not an object
            choices: list[object] = [rng.random(), rng.randrange(-(10**9), 10**9), "s", [], [[]]]
            value = rng.choice(choices)
            messages.append((json.dumps(value), f"got {type(value).__name__}"))
        elif kind == 2:  # unknown types
            messages.append((json.dumps({"type": f"t{rng.randrange(10**6)}"}), "unknown message"))
        elif kind == 3:  # unsubscribe of identifiers nobody subscribed
            identifier = f"display-{rng.randrange(10**6)};cam-{rng.randrange(99)}"
            text = json.dumps(
                {"type": "unsubscribe", "payload": {"subscriptionIdentifier": identifier}}
            )
            messages.append((text, "unknown subscriptionidentifier"))
        else:  # one of the hand-written cases again (the 2 MB ones only once)
            text, expected = rng.choice(cases)
            if len(text) < 100_000:
                messages.append((text, expected))
    return messages[:count]


async def test_a_thousand_hostile_messages_get_errors_and_change_nothing(
    model_server: ModelServer, start_worker: WorkerFactory
) -> None:
    worker = await start_worker()
    backend = await worker.connect()
    await backend.wait_for(is_state, what="first stateReport")
    messages = hostile_messages(model_server, 1000)
    assert len(messages) == 1000
    for number, (message, expected) in enumerate(messages):
        mark = backend.mark()
        if isinstance(message, bytes):
            await backend.ws.send_bytes(message)
        else:
            await backend.ws.send_str(message)
        reply = await backend.next_error(after=mark)
        assert set(reply) <= {"type", "error", "subscriptionIdentifier"}, reply
        assert expected in reply["error"].lower(), (number, message[:200], reply)
        assert len(reply["error"]) < 4000, reply  # a bounded reply, whatever came in
    assert sum(1 for m in backend.messages if is_error(m)) == len(messages)

    # Still connected, still answering; nothing was subscribed; the worker is healthy.
    mark = backend.mark()
    await backend.send("requestState")
    state = await backend.wait_for(is_state, after=mark, what="stateReport")
    assert state["cameraConnections"] == []
    assert len(worker.cms.subscriptions) == 0
    assert worker.service.registry.loaded_count == 0
    status, _, body = await worker.get("/health")
    assert status == 200, body
    assert json.loads(body)["status"] == "IDLE"  # StreamServer health: no stream, no error


# ============================================================================= 7. disconnect


def thread_names() -> Counter[str]:
    return Counter(t.name for t in threading.enumerate())


#: Threads that live as long as the worker, not a subscription: the pools, and the live
#: view's render thread (one per worker, started with the first stored frame).
POOL_THREADS = ("inference_", "ingest-convert_", "asyncio_", "live-render")


async def test_backend_disconnect_grace_period_then_everything_is_released(
    camera: RtspServer, model_server: ModelServer, start_worker: WorkerFactory
) -> None:
    worker = await start_worker(emission="every_frame", disconnect_grace_s=1.5)
    registry = worker.service.registry
    loaded_before = registry.loaded_count
    threads_before = thread_names()
    identifier = "display-001;cam-1"

    first = await worker.connect()
    await first.send("subscribe", subscribe_payload(identifier, camera.url, model_server.url()))
    await first.send("setSessionId", {"displayIdentifier": "display-001", "sessionId": 777})
    await first.wait_online(identifier)
    await first.detections(identifier, 3)
    assert registry.loaded_count == loaded_before + 2  # detector + classifier
    assert any(name.startswith("ingest ") for name in thread_names())

    # The backend vanishes mid-stream: no WebSocket close, the TCP connection just resets.
    sock = first.ws.get_extra_info("socket")
    assert sock is not None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await first.session.close()
    await wait_until(lambda: not worker.cms.registry.connections, 5, "the worker noticed")
    assert len(worker.cms.subscriptions) == 1  # kept for the grace period
    assert camera.current_sessions == 1
    undelivered = worker.cms.registry.detections_undelivered
    await wait_until(
        lambda: worker.cms.registry.detections_undelivered > undelivered, 3, "detections go on"
    )

    # A reconnect within the grace period finds the camera running. The detections it
    # missed carry no currentCar field (class, confidence and id only), so no patchSession:
    # its data would be merged into the display's car.
    second = await worker.connect()
    state = await second.wait_for(is_state, what="stateReport on reconnect")
    assert connection_of(state, identifier)["online"] is True
    await second.detections(identifier, 3)
    assert not [m for m in second.messages if m.get("type") == "patchSession"]
    # It subscribes again, as a backend written for the original worker does (that worker
    # forgot everything on a disconnect): the same subscription goes on, the camera is not
    # reopened, and well past the grace period all is still there.
    await second.send("subscribe", subscribe_payload(identifier, camera.url, model_server.url()))
    await asyncio.sleep(2.0)
    assert len(worker.cms.subscriptions) == 1
    assert camera.current_sessions == 1
    mark = second.mark()
    await second.detections(identifier, 2, after=mark)

    # The last backend leaves for good: after the grace period everything is freed.
    await second.close()
    await asyncio.sleep(0.5)
    assert len(worker.cms.subscriptions) == 1  # still within the grace period
    await wait_until(lambda: len(worker.cms.subscriptions) == 0, 5, "subscriptions released")
    await camera.wait_for_async(lambda s: s.current_sessions == 0, timeout=10)
    assert registry.loaded_count == loaded_before
    assert worker.app[HUB_KEY].statuses() == []
    await wait_until(
        lambda: not any(n.startswith("ingest ") for n in thread_names()), 5, "reader thread ends"
    )
    new_threads = thread_names() - threads_before
    assert all(name.startswith(POOL_THREADS) for name in new_threads), new_threads

    # A backend that arrives later finds a fresh worker: no cameras, and no session left over
    # from the old backend on the detections of a display it subscribes again.
    third = await worker.connect()
    state = await third.wait_for(is_state)
    assert state["cameraConnections"] == []
    await third.send("subscribe", subscribe_payload(identifier, camera.url, model_server.url()))
    fresh = await third.detections(identifier, 3)
    assert all("sessionId" not in m for m in fresh), fresh


async def test_subscriptions_a_reconnected_backend_does_not_claim_are_released(
    camera: RtspServer, model_server: ModelServer, start_worker: WorkerFactory
) -> None:
    # A restarted CMS reconnects within the grace period and subscribes again only the
    # cameras it still gives this worker: the others must not run on here unseen.
    worker = await start_worker(emission="every_frame", disconnect_grace_s=1.5)
    kept, dropped = "display-1;cam-kept", "display-2;cam-gone"
    loading = "display-3;cam-loading"  # its archive still downloading at the reconnect
    first = await worker.connect()
    for identifier in (kept, dropped):
        await first.send("subscribe", subscribe_payload(identifier, camera.url, model_server.url()))
    for identifier in (kept, dropped):
        await first.wait_online(identifier)
    await first.send(
        "subscribe", subscribe_payload(loading, camera.url, model_server.url("held.mpta"))
    )
    await wait_until(lambda: model_server.requests["held.mpta"] == 1, 5, "the slow download")
    await first.close()
    await wait_until(lambda: not worker.cms.registry.connections, 5, "the worker noticed")

    second = await worker.connect()
    await second.send("subscribe", subscribe_payload(kept, camera.url, model_server.url()))
    state = await second.wait_for(
        lambda m: (
            is_state(m) and [c["subscriptionIdentifier"] for c in m["cameraConnections"]] == [kept]
        ),
        timeout=10,
        what="the unclaimed subscription released",
    )
    assert state["cameraConnections"][0]["online"] is True
    assert worker.cms.subscriptions.get(dropped) is None
    # The subscribe that was still loading was not claimed either: its start is cancelled,
    # and the archive arriving late starts nothing.
    model_server.release_held.set()
    await worker.cms.subscriptions.settled()
    await asyncio.sleep(1.0)
    assert worker.cms.subscriptions.get(loading) is None and len(worker.cms.subscriptions) == 1
    mark = second.mark()
    await second.detections(kept, 2, after=mark)
    assert not [
        m for m in second.since(mark) if m.get("subscriptionIdentifier") in (dropped, loading)
    ]
    assert not [m for m in second.messages if is_error(m)]


# ============================================================================= 8. slow reader


def small_receive_buffer(addr_info: Any) -> socket.socket:
    family, kind, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=kind, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


async def test_a_backend_that_stops_reading_cannot_grow_the_workers_memory(
    camera: RtspServer, model_server: ModelServer, start_worker: WorkerFactory
) -> None:
    queue_size = 8
    worker = await start_worker(
        emission="every_frame",
        ws_queue_size=queue_size,
        target_fps=15,
        poll_interval_ms=0,
        ws_ping_interval_s=60,
    )
    # The stuck backend: a real WebSocket client whose application never reads.
    stuck_session = ClientSession(connector=TCPConnector(socket_factory=small_receive_buffer))
    try:
        await _stuck_backend_scenario(worker, stuck_session, camera, model_server, queue_size)
    finally:
        await stuck_session.close()  # else the server's shutdown waits for its handler


async def _stuck_backend_scenario(
    worker: Worker,
    stuck_session: ClientSession,
    camera: RtspServer,
    model_server: ModelServer,
    queue_size: int,
) -> None:
    stuck_ws = await stuck_session.ws_connect(worker.url("/"))
    await wait_until(lambda: len(worker.cms.registry.connections) == 1, 5, "stuck connected")
    [stuck] = worker.connection_objects()
    stats = stuck.queue.stats
    healthy = await worker.connect()
    await wait_until(lambda: len(worker.cms.registry.connections) == 2, 5, "healthy connected")

    identifier = "display-001;cam-1"
    await healthy.send("subscribe", subscribe_payload(identifier, camera.url, model_server.url()))
    await healthy.detections(identifier, 3)

    # Detections alone (a few hundred bytes, 15 a second) would take many minutes to fill the
    # socket buffers (megabytes on loopback). So the stuck backend also keeps talking: each
    # message earns an error reply of about a kilobyte, and the buffers soon fill on both
    # sides. From then on, whatever the worker has for it waits in its queue or is dropped.
    flood = json.dumps(
        {"type": "subscribe", "payload": subscribe_payload("z" * 500, camera.url, "x.mpta")}
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        assert loop.time() < deadline, f"the stuck backend never backed up: {stats}"
        for _ in range(1000):
            await stuck_ws.send_str(flood)
        await asyncio.sleep(0.2)  # the worker reads and answers them
        sent = stats.sent
        await asyncio.sleep(0.3)
        if len(stuck.queue) > 0 and stats.sent == sent:
            break  # replies are waiting, and none went out for a while: the pipe is full
    for _ in range(1500):  # more replies than the bound of pending control messages (1024)
        await stuck_ws.send_str(flood)

    bound = queue_size + 1024 + 1  # detections + control messages + the newest stateReport
    detections = stuck.queue._detections  # pyright: ignore[reportPrivateUsage] - reading only
    mark = healthy.mark()
    sub = worker.cms.subscriptions.get(identifier)
    assert sub is not None
    produced = sub.detections_sent
    dropped = stats.detections_dropped

    def bounded_and_dropping() -> bool:
        assert len(stuck.queue) <= bound, len(stuck.queue)
        assert len(detections) <= queue_size, len(detections)
        return stats.detections_dropped >= dropped + 20

    # Detections keep coming and keep being dropped for the stuck backend, its queue bounded...
    await wait_until(bounded_and_dropping, 20, f"detections dropped: {stats}")
    assert stats.control_dropped > 0, stats
    # ... while the healthy backend gets every one of them, in real time.
    produced = sub.detections_sent - produced
    await healthy.detections(identifier, produced - 1, after=mark)
    assert not [m for m in healthy.since(mark) if is_error(m)]  # errors go to the sender only
    status, _, _ = await worker.get("/health")
    assert status == 200

    # When the stuck backend finally goes away, its connection is cleaned up.
    await stuck_session.close()
    await wait_until(lambda: len(worker.cms.registry.connections) == 1, 10, "stuck removed")
    assert worker.cms.registry.detections_undelivered >= stats.detections_dropped
    await healthy.detections(identifier, 2, after=healthy.mark())


# ============================================================================= 9. resubscribe


async def test_resubscribe_replace_limits_and_broken_models(
    camera: RtspServer, model_server: ModelServer, start_worker: WorkerFactory
) -> None:
    worker = await start_worker(max_streams=2)
    backend = await worker.connect()
    registry = worker.service.registry
    a, b, c = "display-A;cam-1", "display-B;cam-1", "display-C;cam-1"
    model = model_server.url()

    await backend.send("subscribe", subscribe_payload(a, camera.url, model, **UPPER))
    [first] = await backend.detections(a, 1)
    assert detection_class(first) == "yellow"
    loads = registry.total_loads
    loaded = registry.loaded_count
    downloads = model_server.requests["demo.mpta"]
    active = worker.cms.subscriptions.get(a)
    assert active is not None

    # The same payload again changes nothing: same subscription, no reload, no download.
    mark = backend.mark()
    await backend.send("subscribe", subscribe_payload(a, camera.url, model, **UPPER))
    state = await backend.wait_for(lambda m: bool(connection_of(m, a)), after=mark)
    assert connection_of(state, a)["cropY2"] == 180
    await asyncio.sleep(0.3)
    assert worker.cms.subscriptions.get(a) is active
    assert registry.total_loads == loads
    assert model_server.requests["demo.mpta"] == downloads
    assert not [m for m in backend.since(mark) if is_error(m)]

    # Another crop replaces it: the lower half shows the truck. The models are shared (no
    # reload) and the camera connection is kept.
    mark = backend.mark()
    await backend.send("subscribe", subscribe_payload(a, camera.url, model, **LOWER))
    await backend.wait_for(lambda m: connection_of(m, a).get("cropY1") == 180, after=mark)
    await backend.detections(a, 1, after=mark, where=lambda m: detection_class(m) == "truck")
    assert worker.cms.subscriptions.get(a) is not active
    assert registry.total_loads == loads
    assert registry.loaded_count == loaded
    assert camera.counters()["sessions_total"] == 1
    assert len(worker.cms.subscriptions) == 1

    # max_streams (2): a second subscription fits, a third is refused.
    mark = backend.mark()
    await backend.send("subscribe", subscribe_payload(b, camera.url, model, **UPPER))
    await backend.wait_for(lambda m: bool(connection_of(m, b)), after=mark)
    mark = backend.mark()
    await backend.send("subscribe", subscribe_payload(c, camera.url, model))
    error = await backend.next_error(after=mark)
    assert "max_streams" in error["error"], error
    assert error["subscriptionIdentifier"] == c
    assert worker.cms.subscriptions.get(c) is None
    assert len(worker.cms.subscriptions) == 2

    # Broken models: an error naming the URL, and no subscription left behind.
    mark = backend.mark()
    await backend.send("unsubscribe", {"subscriptionIdentifier": b})
    await backend.wait_for(lambda m: is_state(m) and not connection_of(m, b), after=mark)
    sessions = camera.counters()["sessions_total"]
    for name, expected in (("missing.mpta", "404"), ("notzip.mpta", "zip")):
        mark = backend.mark()
        await backend.send("subscribe", subscribe_payload(c, camera.url, model_server.url(name)))
        error = await backend.next_error(after=mark)
        assert name in error["error"] and expected in error["error"].lower(), error
        assert error["subscriptionIdentifier"] == c
        assert worker.cms.subscriptions.get(c) is None
        mark = backend.mark()
        await backend.send("requestState")
        state = await backend.wait_for(is_state, after=mark)
        assert [e["subscriptionIdentifier"] for e in state["cameraConnections"]] == [a]
    assert registry.loaded_count == loaded
    assert camera.counters()["sessions_total"] == sessions

    # A broken replacement leaves the running subscription exactly as it was.
    running = worker.cms.subscriptions.get(a)
    mark = backend.mark()
    broken = subscribe_payload(a, camera.url, model_server.url("missing.mpta"), **UPPER)
    await backend.send("subscribe", broken)
    error = await backend.next_error(after=mark)
    assert "missing.mpta" in error["error"] and error["subscriptionIdentifier"] == a
    assert worker.cms.subscriptions.get(a) is running
    mark = backend.mark()
    await backend.send("requestState")
    state = await backend.wait_for(is_state, after=mark)
    assert connection_of(state, a) == {
        "subscriptionIdentifier": a,
        "modelId": 201,
        "modelName": "Vehicle Identification",
        "online": True,
        **LOWER,
    }
    assert running is not None and running.task is not None and not running.task.done()


# ============================================================================= 9. online first


async def test_a_camera_is_reported_online_before_its_first_detection(
    camera: RtspServer, model_server: ModelServer, start_worker: WorkerFactory
) -> None:
    """No heartbeat comes to the rescue (30 s apart): the stateReport sent when the
    subscription starts still shows the camera offline (it is connecting), so the worker must
    say it is online itself, before the first imageDetection."""
    worker = await start_worker(emission="every_frame", heartbeat_interval_s=30.0)
    backend = await worker.connect()
    await backend.wait_for(is_state)
    for number in range(3):
        identifier = f"display-{number};cam-1"
        mark = backend.mark()
        await backend.send(
            "subscribe", subscribe_payload(identifier, camera.url, model_server.url())
        )
        first = (await backend.detections(identifier, 1, after=mark))[0]
        before = backend.messages[mark : backend.messages.index(first, mark)]
        states = [connection_of(m, identifier) for m in before if is_state(m)]
        assert any(state.get("online") is True for state in states), states
        await backend.send("unsubscribe", {"subscriptionIdentifier": identifier})
        await camera.wait_for_async(lambda s: s.current_sessions == 0, timeout=10)


# ============================================================================= 10. strict types


async def test_wire_types_are_strict_and_payloads_are_validated_at_the_edge(
    camera: RtspServer, model_server: ModelServer, start_worker: WorkerFactory
) -> None:
    """Each payload here was accepted by the protocol model once and then either failed later
    with "internal error" or was silently coerced; now each is refused with the field named,
    or (an empty snapshotUrl) read as the original detector worker read it."""
    worker = await start_worker()
    backend = await worker.connect()
    await backend.wait_for(is_state)
    identifier = "display-1;cam-1"
    good = subscribe_payload(identifier, camera.url, model_server.url())
    refused: list[tuple[dict[str, Any], str]] = [
        ({"modelUrl": model_server.url() + "\x00.mpta"}, "payload.modelUrl: "),
        ({"rtspUrl": "rtsp://127.0.0.1/\x1b[2J"}, "payload.rtspUrl: "),
        ({"cropX1": True, "cropY1": 0, "cropX2": 320, "cropY2": 180}, "payload.cropX1: "),
        ({"modelId": True}, "payload.modelId: "),
        ({"modelId": 1.5}, "payload.modelId: "),
        ({"snapshotUrl": "http://127.0.0.1/x.jpg", "snapshotInterval": "5000"}, "snapshotInterval"),
        ({"rtspUrl": "/" + "a" * 300 + "/video.mp4"}, "rtspUrl is not a usable path"),
        ({"rtspUrl": "", "snapshotUrl": ""}, "one of rtspUrl or snapshotUrl is required"),
        (
            {"rtspUrl": "", "snapshotUrl": "http://127.0.0.1/x.jpg", "snapshotInterval": 0},
            "snapshotUrl needs snapshotInterval",
        ),
    ]
    for change, expected in refused:
        mark = backend.mark()
        await backend.send("subscribe", {**good, **change})
        error = await backend.next_error(after=mark)
        assert expected in error["error"], (change, error)
        assert "internal error" not in error["error"]
    mark = backend.mark()
    await backend.send("setSessionId", {"displayIdentifier": "display-1", "sessionId": 1.5})
    error = await backend.next_error(after=mark)
    assert "payload.sessionId: " in error["error"], error
    assert len(worker.cms.subscriptions) == 0

    # Accepted: an empty snapshotUrl, or one with the interval 0, beside an rtspUrl streams the
    # rtspUrl (the original tested both for truthiness), and a string modelId comes back as
    # the string it was.
    mark = backend.mark()
    await backend.send(
        "subscribe",
        {**good, "snapshotUrl": "http://127.0.0.1:9/x.jpg", "snapshotInterval": 0, "modelId": "1"},
    )
    await backend.wait_online(identifier, after=mark)
    assert worker.cms.subscriptions.get(identifier) is not None
    [status] = worker.app[HUB_KEY].statuses()
    assert status.source == camera.url and status.kind != "snapshot"  # the RTSP camera
    await backend.send("unsubscribe", {"subscriptionIdentifier": identifier})
    await wait_until(lambda: len(worker.cms.subscriptions) == 0, 5, "unsubscribed")
    mark = backend.mark()
    await backend.send("subscribe", {**good, "snapshotUrl": "", "modelId": "1"})
    await backend.send("setSessionId", {"displayIdentifier": "display-1", "sessionId": "12"})
    state = await backend.wait_online(identifier, after=mark)
    assert connection_of(state, identifier)["modelId"] == "1"
    detection = (await backend.detections(identifier, 1, after=mark))[0]
    assert detection["data"]["modelId"] == "1"
    assert not [m for m in backend.since(mark) if is_error(m)]
