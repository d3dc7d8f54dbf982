"""Connected CMS backends: per-connection outbound queues, broadcast, disconnect grace.

Detections and state go to every connected backend. A detection that cannot be delivered in
real time (no backend connected, or dropped from a backlog) for a display with an active
session is kept as a pending ``patchSession`` — the latest per session — and sent when a
backend can take it, as worker.md 4.3 describes. Its ``data`` is a partial
``DisplayPersistentData``: ``{"currentCar": <the flat detection>}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import WSCloseCode, web

from pytrickle_worker.frontdoors.cms.outbound import OutboundQueue
from pytrickle_worker.frontdoors.cms.protocol import (
    OutboundMessage,
    PatchSession,
    SessionId,
    StateReport,
    to_wire,
)

logger = logging.getLogger(__name__)

MAX_PENDING_PATCHES = 256
#: The fields of worker.md's ``DisplayPersistentData.currentCar``: a ``patchSession``'s data
#: must be a partial ``DisplayPersistentData``, which the backend deep-merges into its own.
CURRENT_CAR_FIELDS = (
    "carModel",
    "carBrand",
    "carYear",
    "bodyType",
    "licensePlateText",
    "licensePlateType",
)


class BackendConnection:
    """One connected backend and the task that writes to it."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        peer: str,
        registry: BackendRegistry,
        serial: int = 0,
        transport: asyncio.Transport | None = None,
    ) -> None:
        self.ws = ws
        #: The TCP connection, to abort when a close handshake cannot be written.
        self.transport = transport
        self.peer = peer
        self.registry = registry
        #: Tells apart connections from one peer (a metrics label).
        self.serial = serial
        self.queue = OutboundQueue(
            max_detections=registry.queue_size,
            on_detection_dropped=registry.record_undelivered,
        )
        self.sender: asyncio.Task[None] | None = None
        #: A message taken off the queue is being written (flush waits for it too).
        self.sending = False

    def send(self, message: OutboundMessage, wire: dict[str, Any] | None = None) -> None:
        """Queue ``message``; ``wire`` is its :func:`to_wire` form when already made (a
        broadcast makes it once for every connection; the queue never changes it)."""
        if wire is None:
            wire = to_wire(message)
        if isinstance(message, StateReport):
            self.queue.put_state(wire)
        elif wire.get("type") == "imageDetection":
            self.queue.put_detection(wire)
        else:
            self.queue.put_control(wire)

    async def run_sender(self) -> None:
        try:
            while not self.ws.closed:
                message = await self.queue.get()
                self.sending = True
                try:
                    await self.ws.send_json(message)
                finally:
                    self.sending = False
                self.queue.stats.sent += 1
                if len(self.queue) == 0:
                    self.registry.flush_patches(self)
        except (ConnectionError, RuntimeError) as exc:
            logger.info("backend %s: send failed (%s); closing", self.peer, exc)
            await self.ws.close()


class BackendRegistry:
    def __init__(
        self,
        *,
        queue_size: int,
        grace_s: float,
        on_grace_expired: Callable[[], Awaitable[None]],
    ) -> None:
        self.queue_size = queue_size
        self.grace_s = grace_s
        self._on_grace_expired = on_grace_expired
        self.connections: set[BackendConnection] = set()
        self.pending_patches: OrderedDict[SessionId, dict[str, Any]] = OrderedDict()
        self._grace_task: asyncio.Task[None] | None = None
        self.detections_undelivered = 0
        self._closing = False
        self._serials = 0

    # ------------------------------------------------------------------ membership

    def add(
        self,
        ws: web.WebSocketResponse,
        peer: str,
        transport: asyncio.Transport | None = None,
    ) -> BackendConnection:
        if self._grace_task is not None:
            self._grace_task.cancel()
            self._grace_task = None
            logger.info("backend %s reconnected within the grace period", peer)
        self._serials += 1
        connection = BackendConnection(ws, peer, self, self._serials, transport)
        connection.sender = asyncio.get_running_loop().create_task(
            connection.run_sender(), name=f"backend-sender {peer}"
        )
        self.connections.add(connection)
        return connection

    async def remove(self, connection: BackendConnection) -> None:
        self.connections.discard(connection)
        if connection.sender is not None:
            connection.sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connection.sender
        for undelivered in connection.queue.drain_detections():
            self.record_undelivered(undelivered)
        if not self.connections and self._grace_task is None and not self._closing:
            self._grace_task = asyncio.get_running_loop().create_task(
                self._grace(), name="backend-grace"
            )

    async def _grace(self) -> None:
        logger.info(
            "last backend disconnected; subscriptions kept for %.0f s for a reconnect",
            self.grace_s,
        )
        await asyncio.sleep(self.grace_s)
        self._grace_task = None
        if not self.connections:
            logger.info("grace period over with no backend: releasing every subscription")
            await self._on_grace_expired()

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every connection's outgoing queue is sent (or ``timeout_s`` passes)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while any((len(c.queue) or c.sending) and not c.ws.closed for c in self.connections):
            if loop.time() >= deadline:
                left = sum(len(c.queue) for c in self.connections)
                logger.warning("%d message(s) to backends not sent before the deadline", left)
                return False
            await asyncio.sleep(0.01)
        return True

    async def close(
        self, *, code: int = WSCloseCode.GOING_AWAY, message: bytes = b"worker stopping"
    ) -> None:
        if self._grace_task is not None:
            self._grace_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._grace_task
            self._grace_task = None
        self._closing = True
        for connection in list(self.connections):
            try:
                async with asyncio.timeout(1.0):
                    await connection.ws.close(code=code, message=message)
            except (TimeoutError, ConnectionError):
                # A peer that stopped reading: its socket buffer is full and the close frame
                # cannot be written. Drop the connection rather than wait for it.
                logger.info("backend %s: close handshake stuck; aborting", connection.peer)
                if connection.transport is not None:
                    connection.transport.abort()
            await self.remove(connection)

    # ------------------------------------------------------------------ delivery

    def broadcast(self, message: OutboundMessage) -> None:
        if not self.connections:
            if message.type == "imageDetection":
                self.record_undelivered(to_wire(message))
            return
        wire = to_wire(message)
        for connection in self.connections:
            connection.send(message, wire)

    def record_undelivered(self, wire: dict[str, Any]) -> None:
        self.detections_undelivered += 1
        session_id = wire.get("sessionId")
        data = wire.get("data")
        if session_id is None or not isinstance(data, dict):
            return
        detection = data.get("detection")  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType] - JSON
        if not isinstance(detection, dict):
            return
        # Only currentCar's own fields: a detection's other keys (class, confidence, id)
        # would be merged into the display's car by the backend. None of them, no patch.
        fields = cast("dict[str, object]", detection)
        car = {name: fields[name] for name in CURRENT_CAR_FIELDS if fields.get(name) is not None}
        if not car:
            return
        self.pending_patches[session_id] = {"currentCar": car}
        self.pending_patches.move_to_end(session_id)
        while len(self.pending_patches) > MAX_PENDING_PATCHES:
            self.pending_patches.popitem(last=False)

    def flush_patches(self, connection: BackendConnection) -> None:
        while self.pending_patches:
            session_id, data = self.pending_patches.popitem(last=False)
            connection.send(PatchSession(sessionId=session_id, data=data))
