"""Per-subscription command ordering under bursts, against the real worker app.

The backend may send subscribe and unsubscribe for one id back to back, from several
connections. Whatever the interleaving, the worker must end in the state of the last command
for each id, never run two operations on one id at once, and leave nothing running that it
does not list: no pipeline, no camera connection, no thread, no file descriptor.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import psutil

from pytrickle_worker.server.app import HUB_KEY
from tests.cms_harness import (
    Backend,
    Message,
    ModelServer,
    Worker,
    WorkerFactory,
    is_detection,
    is_error,
    is_state,
    subscribe_payload,
    wait_until,
)
from tests.media_fixtures import RtspServer

#: Pool threads start on first use and stay; everything else must go away again.
POOL_THREADS = ("inference_", "ingest-convert_", "asyncio_")
QUIET_S = 2.0


def running_pipelines() -> set[str]:
    """Ids whose processing loop (camera → pipeline → detections) is still running."""
    return {
        task.get_name().removeprefix("subscription ")
        for task in asyncio.all_tasks()
        if task.get_name().startswith("subscription ") and not task.done()
    }


def open_fds(worker: Worker) -> Counter[str]:
    """The process's open file descriptors by what they point at (sockets and pipes by
    kind), leaving out the worker's connections to its Redis: the action dispatcher keeps one
    per Redis server once a pipeline's first action has run, which is pooling, not a leak."""
    redis_port = urlsplit(worker.config.redis_url or "").port
    pooled = {
        c.fd
        for c in psutil.Process().net_connections("inet")
        if c.raddr and c.raddr.port == redis_port
    }
    kinds: Counter[str] = Counter()
    for fd in os.listdir("/proc/self/fd"):
        if int(fd) in pooled:
            continue
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor, for one)
        kinds[target.split(":[")[0] if ":[" in target else target] += 1
    return kinds


async def steady_fds(worker: Worker, within_s: float = 10.0) -> Counter[str]:
    """``open_fds`` once two readings 0.2 s apart agree: a baseline taken while another
    thread briefly holds a descriptor (a socket being closed, a package's metadata file being
    read) would name one that is gone by the check, and fail it although nothing leaked."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    reading = open_fds(worker)
    while True:
        await asyncio.sleep(0.2)
        again = open_fds(worker)
        if again == reading or loop.time() > deadline:
            return again
        reading = again


def other_threads() -> Counter[str]:
    return Counter(t.name for t in threading.enumerate() if not t.name.startswith(POOL_THREADS))


async def settle(worker: Worker, backends: list[Backend]) -> None:
    """Every command sent so far has been carried out. The worker reads each connection's
    messages in order, so the answer to a requestState means it has read all before it."""
    for backend in backends:
        mark = backend.mark()
        await backend.send("requestState")
        await backend.wait_for(is_state, after=mark, what="stateReport")
    await asyncio.wait_for(worker.cms.subscriptions.settled(), 30)


async def listed(backend: Backend) -> dict[str, Message]:
    """The cameraConnections of a fresh stateReport, by subscriptionIdentifier."""
    mark = backend.mark()
    await backend.send("requestState")
    state = await backend.wait_for(is_state, after=mark, what="stateReport")
    return {c["subscriptionIdentifier"]: c for c in state["cameraConnections"]}


async def warm_up(worker: Worker, backend: Backend, camera: RtspServer, model: str) -> None:
    """One full subscribe → detections → unsubscribe, so pools exist before the baseline."""
    identifier = "warm;up"
    await backend.send("subscribe", subscribe_payload(identifier, camera.url, model))
    await backend.detections(identifier, 1)
    await backend.send("unsubscribe", {"subscriptionIdentifier": identifier})
    await settle(worker, [backend])
    await camera.wait_for_async(lambda s: s.current_sessions == 0, timeout=10)


async def assert_nothing_left(
    worker: Worker,
    backends: list[Backend],
    camera: RtspServer,
    *,
    fds: Counter[str],
    threads: Counter[str],
    loaded: int,
) -> None:
    await settle(worker, backends)
    for backend in backends:
        assert await listed(backend) == {}
    assert len(worker.cms.subscriptions) == 0
    assert running_pipelines() == set()
    assert worker.app[HUB_KEY].statuses() == []
    await camera.wait_for_async(lambda s: s.current_sessions == 0, timeout=10)
    await wait_until(lambda: other_threads() == threads, 10, "reader threads end")
    await wait_until(lambda: open_fds(worker) == fds, 10, "fds back to the baseline")
    await wait_until(lambda: worker.service.registry.loaded_count == loaded, 10, "models released")
    marks = [b.mark() for b in backends]
    await asyncio.sleep(QUIET_S)
    for backend, mark in zip(backends, marks, strict=True):
        late = [m for m in backend.since(mark) if is_detection(m)]
        assert late == [], late[:2]


def errors_of(backends: list[Backend]) -> list[Message]:
    return [m for b in backends for m in b.messages if is_error(m)]


async def test_a_hundred_subscribe_unsubscribe_pairs_leave_nothing_running(
    camera: RtspServer, model_server: ModelServer, start_worker: WorkerFactory
) -> None:
    worker = await start_worker(emission="every_frame")
    backend = await worker.connect()
    await backend.wait_for(is_state)
    await warm_up(worker, backend, camera, model_server.url())
    fds, threads = await steady_fds(worker), other_threads()
    loaded = worker.service.registry.loaded_count

    identifier = "display-1;cam-1"
    payload = subscribe_payload(identifier, camera.url, model_server.url())
    for _ in range(100):
        await backend.send("subscribe", payload)
        await backend.send("unsubscribe", {"subscriptionIdentifier": identifier})

    await assert_nothing_left(worker, [backend], camera, fds=fds, threads=threads, loaded=loaded)
    assert errors_of([backend]) == []


async def test_interleaved_pairs_over_three_connections_leave_nothing_running(
    camera: RtspServer, model_server: ModelServer, start_worker: WorkerFactory
) -> None:
    worker = await start_worker(emission="every_frame")
    backends = [await worker.connect() for _ in range(3)]
    for backend in backends:
        await backend.wait_for(is_state)
    await warm_up(worker, backends[0], camera, model_server.url())
    fds, threads = await steady_fds(worker), other_threads()
    loaded = worker.service.registry.loaded_count
    identifiers = [f"display-{n};cam-{n}" for n in range(5)]
    rng = random.Random(7)

    async def burst(backend: Backend) -> None:
        for _ in range(20):
            identifier = rng.choice(identifiers)
            await backend.send(
                "subscribe", subscribe_payload(identifier, camera.url, model_server.url())
            )
            if rng.random() < 0.5:
                await asyncio.sleep(rng.random() * 0.05)
            await backend.send("unsubscribe", {"subscriptionIdentifier": identifier})

    await asyncio.gather(*(burst(b) for b in backends))
    await assert_nothing_left(worker, backends, camera, fds=fds, threads=threads, loaded=loaded)
    # An unsubscribe may find its id already gone (another connection's came first); that is
    # the only error a valid burst can earn.
    for error in errors_of(backends):
        assert error["error"] == "unknown subscriptionIdentifier", error


async def test_the_last_command_wins_and_a_superseded_replacement_never_runs(
    camera: RtspServer, model_server: ModelServer, start_worker: WorkerFactory
) -> None:
    worker = await start_worker(emission="every_frame")
    backend = await worker.connect()
    await backend.wait_for(is_state)
    identifier = "display-1;cam-1"
    crops: list[dict[str, Any]] = [
        {"cropX1": 0, "cropY1": 0, "cropX2": 320 + n, "cropY2": 180} for n in range(30)
    ]
    for crop in crops:
        await backend.send(
            "subscribe", subscribe_payload(identifier, camera.url, model_server.url(), **crop)
        )
    await settle(worker, [backend])
    connections = await listed(backend)
    assert set(connections) == {identifier}
    assert connections[identifier]["cropX2"] == crops[-1]["cropX2"]
    assert running_pipelines() == {identifier}
    running = worker.cms.subscriptions.get(identifier)
    assert running is not None and running.payload.cropX2 == crops[-1]["cropX2"]
    await camera.wait_for_async(lambda s: s.current_sessions == 1, timeout=10)
    assert errors_of([backend]) == []
    # The replacement that won produces detections; the superseded ones never existed.
    mark = backend.mark()
    await backend.detections(identifier, 2, after=mark)
    assert camera.current_sessions == 1  # one reader: no superseded start left a connection


async def test_a_failing_replacement_keeps_the_running_subscription(
    camera: RtspServer, model_server: ModelServer, start_worker: WorkerFactory
) -> None:
    worker = await start_worker(emission="every_frame")
    backend = await worker.connect()
    await backend.wait_for(is_state)
    identifier = "display-1;cam-1"
    good = subscribe_payload(identifier, camera.url, model_server.url())
    await backend.send("subscribe", good)
    await backend.detections(identifier, 1)
    mark = backend.mark()
    await backend.send(
        "subscribe", subscribe_payload(identifier, camera.url, model_server.url("notzip.mpta"))
    )
    error = await backend.next_error(after=mark)
    assert error["subscriptionIdentifier"] == identifier
    assert "zip" in error["error"].lower(), error
    await settle(worker, [backend])
    assert set(await listed(backend)) == {identifier}
    running = worker.cms.subscriptions.get(identifier)
    assert running is not None and running.payload.modelUrl == good["modelUrl"]
    # The failed command left nothing to retry: a later unsubscribe finds the running one.
    await backend.send("unsubscribe", {"subscriptionIdentifier": identifier})
    await settle(worker, [backend])
    assert await listed(backend) == {}


async def test_unsubscribes_are_never_refused_in_a_flood(
    camera: RtspServer, model_server: ModelServer, start_worker: WorkerFactory
) -> None:
    """More commands than any queue would hold: unsubscribes coalesce instead of being
    refused, so the backend's last word always takes effect."""
    worker = await start_worker(emission="every_frame", max_streams=8)
    backend = await worker.connect()
    await backend.wait_for(is_state)
    identifiers = [f"display-{n};cam-1" for n in range(8)]
    for _ in range(40):
        for identifier in identifiers:
            await backend.send(
                "subscribe", subscribe_payload(identifier, camera.url, model_server.url())
            )
    for identifier in identifiers:
        await backend.send("unsubscribe", {"subscriptionIdentifier": identifier})
    await settle(worker, [backend])
    assert errors_of([backend]) == []
    assert await listed(backend) == {}
    assert running_pipelines() == set()
    await camera.wait_for_async(lambda s: s.current_sessions == 0, timeout=10)


async def test_fifty_subscriptions_are_released_within_two_seconds_of_the_grace_period(
    camera: RtspServer, model_server: ModelServer, start_worker: WorkerFactory
) -> None:
    grace_s = 1.0
    worker = await start_worker(
        emission="changes", disconnect_grace_s=grace_s, max_streams=64, target_fps=2.0
    )
    backend = await worker.connect()
    await backend.wait_for(is_state)
    identifiers = [f"display-{n};cam-1" for n in range(50)]
    for identifier in identifiers:
        await backend.send(
            "subscribe", subscribe_payload(identifier, camera.url, model_server.url())
        )
    await settle(worker, [backend])
    assert len(worker.cms.subscriptions) == 50
    await backend.wait_online(identifiers[-1])

    await backend.close()
    loop = asyncio.get_running_loop()
    await wait_until(lambda: not worker.cms.registry.connections, 5, "the worker noticed")
    left = loop.time()
    await wait_until(lambda: len(worker.cms.subscriptions) == 0, grace_s + 10, "released")
    await wait_until(lambda: running_pipelines() == set(), 10, "pipelines stopped")
    await wait_until(lambda: worker.app[HUB_KEY].statuses() == [], 10, "camera released")
    released_after = loop.time() - left
    assert released_after <= grace_s + 2.0, f"released {released_after:.2f} s after leaving"
