"""A bounded, drop-oldest queue that threads and the event loop can share."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Generic, TypeVar

from pytrickle_worker.core.wakeup import resolve_waiter

__all__ = ["DropOldestQueue"]

T = TypeVar("T")


class DropOldestQueue(Generic[T]):
    """A FIFO of at most ``maxsize`` items: a put into a full queue evicts the oldest item.

    ``put`` never blocks and may be called from any thread. There is one consumer, either on
    an event loop (:meth:`get`) or on a thread (:meth:`get_blocking`). :meth:`close` ends
    it: consumers drain what is left, then get None. ``dropped`` counts evicted items.

    A producer that would rather wait than evict (backpressure towards an earlier drop-oldest
    queue) awaits :meth:`wait_for_room` (on an event loop) or calls
    :meth:`wait_for_room_blocking` (on a thread) before its ``put``.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        self.maxsize = maxsize
        self.dropped = 0
        self._items: deque[T] = deque()
        lock = threading.Lock()
        self._cond = threading.Condition(lock)
        self._room = threading.Condition(lock)  # a producer thread waiting for room
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._room_waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T) -> T | None:
        """Append ``item``; return the item it evicted (or ``item`` itself once closed)."""
        with self._cond:
            if self._closed:
                return item
            evicted: T | None = None
            if len(self._items) >= self.maxsize:
                evicted = self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify()
            self._wake_locked()
        return evicted

    def close(self) -> None:
        """No more puts; waiting consumers wake up and get None once the queue is empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            self._wake_locked()
            self._wake_room_locked()

    def clear(self) -> list[T]:
        """Remove and return every queued item."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            self._wake_room_locked()
        return items

    def get_nowait(self) -> T | None:
        with self._cond:
            return self._pop_locked()

    def get_blocking(self, timeout: float | None = None) -> T | None:
        """The next item, waiting on this thread; None on timeout or once closed and empty."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            return self._pop_locked()

    def wait_for_room_blocking(self, timeout: float) -> bool:
        """Wait (on a producer thread) up to ``timeout`` until a ``put`` would not evict;
        True when there is room (or the queue is closed)."""
        with self._room:
            if not self._closed and len(self._items) >= self.maxsize:
                self._room.wait(timeout)
            return self._closed or len(self._items) < self.maxsize

    async def wait_for_room(self) -> None:
        """Wait (on the event loop) until a ``put`` would not evict, or the queue is closed."""
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._closed or len(self._items) < self.maxsize:
                    return
                waiter: asyncio.Future[None] = loop.create_future()
                self._room_waiter = waiter
            try:
                await waiter
            finally:
                self._forget_room_waiter(waiter)

    def _forget_room_waiter(self, waiter: asyncio.Future[None]) -> None:
        with self._cond:
            if self._room_waiter is waiter:
                self._room_waiter = None

    def _pop_locked(self) -> T | None:
        if not self._items:
            return None
        item = self._items.popleft()
        self._wake_room_locked()
        return item

    async def get(self) -> T | None:
        """The next item, waiting on the event loop; None once closed and empty."""
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._items:
                    return self._pop_locked()
                if self._closed:
                    return None
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiter = waiter
            try:
                await waiter
            finally:
                with self._cond:
                    if self._waiter is waiter:
                        self._waiter = None

    def _wake_locked(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            resolve_waiter(waiter)

    def _wake_room_locked(self) -> None:
        self._room.notify_all()
        waiter, self._room_waiter = self._room_waiter, None
        if waiter is not None:
            resolve_waiter(waiter)
