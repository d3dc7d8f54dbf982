"""Property-based fuzzing of the CMS WebSocket protocol against the real worker app.

Hypothesis writes scripts of messages over three backend connections: valid subscribes
(three variants, so replacements happen), unsubscribes, setSessionId and requestState, mixed
with hostile messages: payloads with wrong types, missing and extra fields, huge, unicode and
control-character strings, deep nesting, text that is not JSON and binary frames. After each
script the invariants below must hold; each example then unsubscribes what is left and checks
that threads, file descriptors and models are back to their baseline.

The cameras are two local video files (a camera connection is then a reader thread): an RTSP
camera per example would spend seconds on each connect; tests/test_cms_ordering.py covers the
same ordering with the RTSP server.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytrickle_worker.devtools.assets import DemoAssets
from pytrickle_worker.server.app import HUB_KEY
from tests.cms_harness import (
    Backend,
    ModelServer,
    Worker,
    WorkerFactory,
    is_detection,
    is_error,
    is_state,
    subscribe_payload,
)
from tests.hypothesis_profiles import heavy
from tests.test_cms_ordering import (
    listed,
    open_fds,
    other_threads,
    running_pipelines,
    settle,
    steady_fds,
)

IDS = ("display-1;cam-1", "display-1;cam-2", "display-2;cam-1")
FUZZ_ID = "fuzz;cam"
CONNECTIONS = 3
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
HOSTILE_STRINGS = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec="utf-8", categories=["Cc", "Cs", "Co", "Cn"]), max_size=10),
    st.integers(5_000, 300_000).map(lambda n: "x" * n),
    st.integers(1, 20).map(lambda n: "\x00" * n),
)


@dataclass(frozen=True)
class Step:
    connection: int
    text: str | bytes
    kind: Literal["subscribe", "unsubscribe", "other"] = "other"
    identifier: str | None = None
    variant: int | None = None
    pause_s: float = 0.0


@dataclass
class Fixture:
    worker: Worker
    backends: list[Backend]
    cameras: tuple[str, str]
    model_url: str
    baseline: dict[str, Any] = field(default_factory=dict[str, Any])

    def __repr__(self) -> str:  # Hypothesis prints it with every failing example
        return f"Fixture(cameras={self.cameras}, model_url={self.model_url!r})"

    def variant(self, identifier: str, number: int) -> dict[str, Any]:
        crop = {"cropX1": 0, "cropY1": 0, "cropX2": 640, "cropY2": 180} if number == 1 else {}
        camera = self.cameras[number == 2]
        return subscribe_payload(identifier, camera, self.model_url, **crop)


def _message(kind: str, payload: object) -> str:
    return json.dumps({"type": kind, "payload": payload})


def _mutate(draw: st.DrawFn, payload: dict[str, Any]) -> object:
    mutation = draw(st.sampled_from(["type", "missing", "extra", "string", "nesting"]))
    keys = sorted(payload)
    if mutation == "type":
        payload[draw(st.sampled_from(keys))] = draw(JSON_VALUES)
    elif mutation == "missing":
        del payload[draw(st.sampled_from(keys))]
    elif mutation == "extra":
        payload[draw(st.text(max_size=12))] = draw(JSON_VALUES)
    elif mutation == "string":
        payload[draw(st.sampled_from(keys))] = draw(HOSTILE_STRINGS)
    else:  # as raw JSON text: json.dumps cannot write what json.loads cannot read back
        depth = draw(st.integers(50, 50_000))
        return "[" * depth + "]" * depth
    return payload


@st.composite
def steps(draw: st.DrawFn) -> Step:
    connection = draw(st.integers(0, CONNECTIONS - 1))
    pause = draw(st.sampled_from([0.0, 0.0, 0.0, 0.01, 0.05]))
    kind = draw(
        st.sampled_from(
            ["subscribe"] * 4 + ["unsubscribe"] * 3 + ["session", "state", "hostile", "raw"]
        )
    )
    if kind == "subscribe":
        identifier, variant = draw(st.sampled_from(IDS)), draw(st.integers(0, 2))
        # The text is filled in by the test, which knows the camera and model URLs.
        return Step(connection, "", "subscribe", identifier, variant, pause)
    if kind == "unsubscribe":
        identifier = draw(st.sampled_from(IDS))
        text = _message("unsubscribe", {"subscriptionIdentifier": identifier})
        return Step(connection, text, "unsubscribe", identifier, None, pause)
    if kind == "session":
        display = draw(st.sampled_from(["display-1", "display-2"]) | HOSTILE_STRINGS)
        session = draw(st.none() | st.integers() | st.text(max_size=8) | JSON_VALUES)
        text = _message("setSessionId", {"displayIdentifier": display, "sessionId": session})
        return Step(connection, text, pause_s=pause)
    if kind == "state":
        return Step(connection, json.dumps({"type": "requestState"}), pause_s=pause)
    if kind == "hostile":
        base = {
            "subscriptionIdentifier": FUZZ_ID,
            "rtspUrl": "/nonexistent/camera.mp4",
            "modelUrl": "http://127.0.0.1:9/none.mpta",
            "modelId": 1,
            "modelName": "fuzz",
        }
        message_type = draw(st.sampled_from(["subscribe", "unsubscribe", "setSessionId"]))
        document = _mutate(draw, base)
        if isinstance(document, str):  # deep nesting, as raw JSON text
            return Step(connection, f'{{"type": "{message_type}", "payload": {document}}}')
        return Step(connection, _message(message_type, document), pause_s=pause)
    raw = draw(
        st.one_of(
            st.text(max_size=200),
            st.binary(max_size=64),
            st.integers(1, 100_000).map(lambda n: "[" * n),
            JSON_VALUES.map(json.dumps),
        )
    )
    return Step(connection, raw, pause_s=pause)


@pytest.fixture
async def fuzz(
    start_worker: WorkerFactory,
    model_server: ModelServer,
    demo_assets: DemoAssets,
    tmp_path: Path,
) -> AsyncIterator[Fixture]:
    second = tmp_path / "second-camera.mp4"
    shutil.copyfile(demo_assets.video_path, second)
    worker = await start_worker(emission="every_frame", target_fps=5.0)
    backends = [await worker.connect() for _ in range(CONNECTIONS)]
    for backend in backends:
        await backend.wait_for(is_state)
    fixture = Fixture(
        worker, backends, (str(demo_assets.video_path), str(second)), model_server.url()
    )
    # Warm up once (pools, the archive cache), so the baseline is what an idle worker holds.
    await backends[0].ws.send_str(_message("subscribe", fixture.variant(IDS[0], 0)))
    await backends[0].detections(IDS[0], 1)
    await backends[0].ws.send_str(_message("unsubscribe", {"subscriptionIdentifier": IDS[0]}))
    await settle(worker, backends)
    fixture.baseline = {
        "fds": await steady_fds(worker),
        "threads": other_threads(),
        "models": worker.service.registry.loaded_count,
    }
    yield fixture


async def _back_to(baseline: object, now: Callable[[], object], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15.0
    while (current := now()) != baseline:
        assert loop.time() < deadline, f"{what} not back to {baseline}: {current}"
        await asyncio.sleep(0.05)


@heavy(0.4)
@given(script=st.lists(steps(), min_size=1, max_size=30))
async def test_any_interleaving_keeps_the_invariants(fuzz: Fixture, script: list[Step]) -> None:
    worker, backends = fuzz.worker, fuzz.backends
    marks = [b.mark() for b in backends]
    # The last subscribe/unsubscribe per id, and which connections sent them.
    last: dict[str, int | None] = {}
    senders: dict[str, set[int]] = {}
    for step in script:
        text = step.text
        if step.kind == "subscribe":
            assert step.identifier is not None and step.variant is not None
            text = _message("subscribe", fuzz.variant(step.identifier, step.variant))
        if step.identifier is not None:
            last[step.identifier] = step.variant
            senders.setdefault(step.identifier, set()).add(step.connection)
        ws = backends[step.connection].ws
        await (ws.send_bytes(text) if isinstance(text, bytes) else ws.send_str(text))
        if step.pause_s:
            await asyncio.sleep(step.pause_s)
    await settle(worker, backends)

    # 1. Alive, answering, healthy.
    # Connection: close, so the file descriptor baseline below holds no pooled connection.
    live = worker.url("/health/live")
    async with worker.http.get(live, headers={"Connection": "close"}) as response:
        assert response.status == 200
    assert all(not b.ws.closed for b in backends)
    # 2. No reply admits a bug.
    replies = [m for b, mark in zip(backends, marks, strict=True) for m in b.since(mark)]
    internal = [m for m in replies if is_error(m) and "internal error" in m["error"]]
    assert internal == [], internal[:3]
    # 3. What runs is what is listed, and what is listed is what the manager holds.
    shown = await listed(backends[0])
    active = {sub.identifier: sub for sub in worker.cms.subscriptions.active()}
    assert set(shown) == set(active) == running_pipelines()
    # 4. No camera connection without a subscriber.
    sources = {sub.payload.source_config().key for sub in active.values()}
    statuses = worker.app[HUB_KEY].statuses()
    assert len(statuses) == len(sources)
    assert all(s.subscribers > 0 for s in statuses), statuses
    # 5. The last command wins, where the order of commands is known (one sender per id).
    for identifier, variant in last.items():
        if len(senders[identifier]) > 1:
            continue
        if variant is None:
            assert identifier not in active, (identifier, script)
        else:
            expected = fuzz.variant(identifier, variant)
            running = active.get(identifier)
            assert running is not None, (identifier, script)
            assert running.payload.rtspUrl == expected["rtspUrl"]
            assert running.payload.cropX2 == expected.get("cropX2")

    # Clean up, and check that nothing outlives its subscription.
    for identifier in active:
        await backends[0].ws.send_str(
            _message("unsubscribe", {"subscriptionIdentifier": identifier})
        )
    await settle(worker, backends)
    assert await listed(backends[0]) == {}
    assert running_pipelines() == set()
    await _back_to([], worker.app[HUB_KEY].statuses, "camera readers")
    baseline = fuzz.baseline
    await _back_to(baseline["threads"], other_threads, "threads")
    await _back_to(baseline["fds"], lambda: open_fds(worker), "file descriptors")
    await _back_to(baseline["models"], lambda: worker.service.registry.loaded_count, "models")
    marks = [b.mark() for b in backends]
    await asyncio.sleep(0.3)
    late = [m for b, mark in zip(backends, marks, strict=True) for m in b.since(mark)]
    assert not any(is_detection(m) for m in late), late[:2]
