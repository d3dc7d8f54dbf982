"""``GET /camera/{id}/image``'s JPEGs: one encode per camera frame, however many ask.

A CMS polls the image of every camera it shows, several viewers may ask at once, and a
camera's frame can be large (up to ``PTW_MAX_VIDEO_PIXELS``). Each request used to convert
and encode the whole frame again. Here the newest JPEG of each camera is kept with its frame
number: requests for a frame already encoded (or being encoded) share that encode, and at
most ``concurrency`` encodes run at once.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable

__all__ = ["FrameJpegs"]


class FrameJpegs:
    """The newest JPEG per camera key, made at most once per frame (see the module docs)."""

    def __init__(self, *, max_cameras: int = 256, concurrency: int = 2) -> None:
        if max_cameras < 1 or concurrency < 1:
            raise ValueError("max_cameras and concurrency must be at least 1")
        self._max_cameras = max_cameras
        self._slots = asyncio.Semaphore(concurrency)
        self._entries: OrderedDict[str, tuple[int, asyncio.Future[bytes]]] = OrderedDict()
        self.encodes = 0

    async def get(self, key: str, seq: int, encode: Callable[[], Awaitable[bytes]]) -> bytes:
        """Frame ``seq`` of camera ``key`` as JPEG; ``encode`` makes it when nobody has."""
        entry = self._entries.get(key)
        if entry is None or entry[0] != seq:
            future = asyncio.ensure_future(self._encode(encode))
            entry = self._entries[key] = (seq, future)
            while len(self._entries) > self._max_cameras:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        try:
            # Shielded: one caller leaving must not cancel the encode the others wait for.
            return await asyncio.shield(entry[1])
        except Exception:
            if self._entries.get(key) is entry:
                del self._entries[key]  # the next request tries again
            raise

    async def _encode(self, encode: Callable[[], Awaitable[bytes]]) -> bytes:
        async with self._slots:
            self.encodes += 1
            return await encode()
