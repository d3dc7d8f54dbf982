"""Waking the event loop from a worker thread.

Decoder, encoder, reader and queue threads tell a coroutine that something happened by
scheduling a callback on its loop. The loop may already be closed (the worker is shutting
down, a test ended): then nobody waits any more, and the wake-up is dropped instead of
raising ``RuntimeError`` in the thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["call_on_loop", "resolve_waiter"]


def call_on_loop(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> bool:
    """Run ``callback`` on ``loop`` soon (from any thread); False when the loop is closed."""
    try:
        loop.call_soon_threadsafe(callback)
    except RuntimeError:  # the loop is closed: nobody waits any more
        return False
    return True


def resolve_waiter(waiter: asyncio.Future[None]) -> bool:
    """Wake the coroutine awaiting ``waiter`` (from any thread): its result is set to None on
    its own loop, unless it is already done (cancelled, or woken twice). False when that
    loop is closed."""
    return call_on_loop(waiter.get_loop(), lambda: _resolve(waiter))


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
