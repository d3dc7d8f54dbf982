"""Connections that outlive the request that authorised them.

The access check (``server/security.py``) runs once, on the WebSocket upgrade. A JWT carries
an ``exp``; without more, a socket opened a second before it would stay open for days. The
check records when the presented credentials stop being valid in the request
(:data:`CREDENTIALS_EXPIRE_AT`, unix seconds; absent for a static token, which does not
expire), and every long-lived WebSocket handler calls :func:`close_when_credentials_expire`, which
closes the socket with code 4401 at that moment.
The client reconnects with a fresh token.

Kept in ``transport`` so that the access check above the front doors and the front doors'
handlers share the key without a door importing the server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp import web

__all__ = ["CREDENTIALS_EXPIRE_AT", "WS_CREDENTIALS_EXPIRED", "close_when_credentials_expire"]

logger = logging.getLogger(__name__)

CREDENTIALS_EXPIRE_AT: web.RequestKey[float] = web.RequestKey("credentials_expire_at", float)
#: Close code of a socket whose token expired (4000-4999: the application's own; 4401 reads
#: as "unauthorized").
WS_CREDENTIALS_EXPIRED = 4401


def close_when_credentials_expire(
    ws: web.WebSocketResponse, request: web.Request
) -> Callable[[], None]:
    """Close ``ws`` with :data:`WS_CREDENTIALS_EXPIRED` when the request's credentials expire;
    returns the function that cancels this (call it when the handler ends)."""
    expires_at = request.get(CREDENTIALS_EXPIRE_AT)
    if expires_at is None:
        return _nothing

    async def close_at_expiry() -> None:
        await asyncio.sleep(max(0.0, expires_at - time.time()))
        if not ws.closed:
            logger.info(
                "closing the WebSocket %s from %s: its token expired",
                request.path,
                request.remote or "?",
            )
            await ws.close(code=WS_CREDENTIALS_EXPIRED, message=b"token expired")

    closer = asyncio.get_running_loop().create_task(close_at_expiry())

    def cancel() -> None:
        closer.cancel()

    return cancel


def _nothing() -> None:
    return None
