"""``GET /camera/{id}/image``'s JPEGs: one encode per camera frame, however many ask.

A CMS polls the image of every camera it shows, several viewers may ask at once, and a
camera's frame can be large (up to ``PTW_MAX_VIDEO_PIXELS``). Each request used to convert
and encode the whole frame again. Here the newest JPEG of each camera is kept with its frame
number: requests for a frame already encoded (or being encoded) share that encode, and at
most ``concurrency`` encodes run at once. A failed encode is tried again by the next request.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable

__all__ = ["FrameJpegs"]


class FrameJpegs:
    """The newest JPEG per camera, made at most once per frame (see the module docs)."""

    def __init__(self, *, max_cameras: int = 64, concurrency: int = 2) -> None:
        if max_cameras < 1 or concurrency < 1:
            raise ValueError("max_cameras and concurrency must be at least 1")
        self._max_cameras = max_cameras
        self._slots = asyncio.Semaphore(concurrency)
        self._entries: OrderedDict[str, tuple[Hashable, asyncio.Future[bytes]]] = OrderedDict()
        self.encodes = 0

    async def get(
        self, camera: str, frame: Hashable, encode: Callable[[], Awaitable[bytes]]
    ) -> bytes:
        """``frame`` of ``camera`` as JPEG; ``encode`` makes it when nobody has. ``encode``
        may give a newer frame than ``frame`` (the camera moved on meanwhile), never an
        older one."""
        entry = self._entries.get(camera)
        if entry is None or entry[0] != frame or _failed(entry[1]):
            entry = self._entries[camera] = (frame, asyncio.ensure_future(self._encode(encode)))
            while len(self._entries) > self._max_cameras:
                self._entries.popitem(last=False)
        self._entries.move_to_end(camera)
        # Shielded: one caller leaving must not cancel the encode the others wait for.
        return await asyncio.shield(entry[1])

    async def _encode(self, encode: Callable[[], Awaitable[bytes]]) -> bytes:
        async with self._slots:
            self.encodes += 1
            return await encode()


def _failed(future: asyncio.Future[bytes]) -> bool:
    """Done without a JPEG: the next request tries again."""
    return future.done() and (future.cancelled() or future.exception() is not None)
