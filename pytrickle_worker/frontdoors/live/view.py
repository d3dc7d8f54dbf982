"""LiveView: the live view's store, writer and label feeds, with one start/stop lifecycle.

The server creates it from the config (:meth:`LiveView.from_config`), hands
:attr:`LiveView.sinks` to both doors and mounts :meth:`LiveView.routes`
(:mod:`pytrickle_worker.frontdoors.live.routes`). Viewers of one label share one
:class:`LabelFeed`: a single follower of the store per label, fanned out into a bounded
drop-oldest queue per viewer, so a slow viewer only loses its own oldest frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator

from aiohttp import web

from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.core.queues import DropOldestQueue
from pytrickle_worker.frontdoors.live.model import StoredEntry
from pytrickle_worker.frontdoors.live.store import (
    FollowCursor,
    FrameStore,
    MemoryFrameStore,
    RedisFrameStore,
    StoreUnavailableError,
)
from pytrickle_worker.frontdoors.live.writer import LiveWriter, LiveWriterSettings
from pytrickle_worker.processing.sink import ResultSink

__all__ = ["LabelFeed", "LiveView"]

logger = logging.getLogger(__name__)

#: How long one store read of a feed waits for new entries before it looks again.
FOLLOW_WAIT_S = 1.0


class LabelFeed:
    """One follower of a label's entries in the store, fanned out to its viewers' queues."""

    def __init__(self, store: FrameStore, label: str, *, retry_interval_s: float) -> None:
        self.store = store
        self.label = label
        self.retry_interval_s = retry_interval_s
        self.viewers: set[DropOldestQueue[StoredEntry]] = set()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._follow(), name=f"live-feed {self.label}"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for queue in self.viewers:
            queue.close()

    async def _follow(self) -> None:
        cursor = FollowCursor()
        unavailable = False
        while True:
            try:
                fresh = await self.store.read_new(self.label, cursor, FOLLOW_WAIT_S)
            except StoreUnavailableError as exc:
                if not unavailable:
                    logger.warning("live: following %r paused: %s", self.label, exc)
                unavailable = True
                await asyncio.sleep(self.retry_interval_s)
                continue
            if unavailable:
                logger.info("live: following %r again", self.label)
                unavailable = False
            for stored in fresh:
                for queue in self.viewers:
                    if queue.put(stored) is not None:
                        self.dropped += 1


class LiveView:
    """The live view of this worker; see the module docstring."""

    def __init__(
        self,
        store: FrameStore,
        writer: LiveWriter,
        *,
        push_queue_size: int = 8,
        ws_heartbeat_s: float = 10.0,
        doors_feed: bool = True,
    ) -> None:
        self.store = store
        self.writer = writer
        #: False (``live_enabled`` off): the doors render and store nothing; the routes stay
        #: (empty, unless a producer uploads).
        self.doors_feed = doors_feed
        self.push_queue_size = push_queue_size
        self.ws_heartbeat_s = ws_heartbeat_s
        self._feeds: dict[str, LabelFeed] = {}
        self._dropped_by_stopped_feeds = 0
        self._sockets: set[web.WebSocketResponse] = set()

    @classmethod
    def from_config(cls, config: WorkerConfig) -> LiveView:
        """Redis Streams when ``live_redis_url`` or ``redis_url`` is set, else in memory."""
        url = config.resolved_live_redis_url()
        store: FrameStore
        if url is not None:
            store = RedisFrameStore(
                url,
                maxlen=config.live_maxlen,
                ttl_s=config.live_ttl_s,
                prefix=config.live_key_prefix,
            )
        else:
            store = MemoryFrameStore(maxlen=config.live_maxlen, ttl_s=config.live_ttl_s)
        writer = LiveWriter(
            store,
            LiveWriterSettings(
                worker_id=config.resolved_worker_id(),
                fps=config.live_fps,
                max_width=config.live_max_width,
                jpeg_quality=config.live_jpeg_quality,
                queue_size=config.live_queue_size,
                retry_interval_s=config.live_retry_interval_s,
                render_niceness=config.live_render_niceness,
            ),
        )
        return cls(
            store,
            writer,
            push_queue_size=config.live_push_queue_size,
            ws_heartbeat_s=config.ws_ping_interval_s,
            doors_feed=config.live_enabled,
        )

    @property
    def sinks(self) -> tuple[ResultSink, ...]:
        """What the doors feed: the writer (nothing when ``live_enabled`` is off)."""
        return (self.writer,) if self.doors_feed else ()

    def describe(self) -> str:
        if not self.doors_feed:
            return (
                f"live view: {self.store.describe()} store, the doors' frames not stored "
                "(PTW_LIVE_ENABLED=false; uploads only)"
            )
        return (
            f"live view: {self.store.describe()} store, {self.writer.settings.fps:g} fps per "
            f"key, worker {self.writer.settings.worker_id!r}"
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.store.start()
        self.writer.start()
        logger.info("%s", self.describe())

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1001, message=b"worker stopping")
        feeds = list(self._feeds.values())
        self._feeds.clear()
        for feed in feeds:
            await feed.stop()
        await self.writer.stop()
        await self.store.close()

    # ------------------------------------------------------------------ viewers

    @contextlib.asynccontextmanager
    async def watch(self, label: str) -> AsyncGenerator[DropOldestQueue[StoredEntry]]:
        """A queue of the label's new entries while the context is open (bounded, the
        oldest dropped); the label's feed runs while anyone watches it."""
        queue: DropOldestQueue[StoredEntry] = DropOldestQueue(self.push_queue_size)
        feed = self._feeds.get(label)
        if feed is None:
            feed = self._feeds[label] = LabelFeed(
                self.store, label, retry_interval_s=self.writer.settings.retry_interval_s
            )
            feed.start()
        feed.viewers.add(queue)
        try:
            yield queue
        finally:
            feed.viewers.discard(queue)
            queue.close()
            if not feed.viewers and self._feeds.get(label) is feed:
                del self._feeds[label]
                self._dropped_by_stopped_feeds += feed.dropped
                await feed.stop()

    def track(self, ws: web.WebSocketResponse) -> None:
        self._sockets.add(ws)

    def untrack(self, ws: web.WebSocketResponse) -> None:
        self._sockets.discard(ws)

    @property
    def open_sockets(self) -> int:
        """Push and pull sockets open now."""
        return len(self._sockets)

    @property
    def viewers(self) -> int:
        return sum(len(feed.viewers) for feed in self._feeds.values())

    @property
    def push_dropped(self) -> int:
        """Frames a slow push viewer lost (its queue full), since the start."""
        running = sum(feed.dropped for feed in self._feeds.values())
        return self._dropped_by_stopped_feeds + running
