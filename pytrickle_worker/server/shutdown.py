"""Serving until SIGTERM/SIGINT, then a graceful drain within a deadline.

On the signal, in this order (each step bounded by what is left of the deadline):

1. Readiness goes false (``/health/ready`` 503, ``draining: true`` in ``/health``), so
   Kubernetes stops routing; new CMS subscriptions and stream starts are refused. Liveness
   stays 200: a draining worker must not be restarted.
2. The trickle stream stops: its output channel gets its DELETE, the events channel its
   ``stream_stopped``; decoders and encoders end.
3. CMS subscriptions stop producing; every backend's outgoing queue is flushed, then its
   WebSocket is closed with 1001 (going away), so backends reconnect elsewhere.
4. Pending Redis actions are sent.
5. The server closes (listening socket, handlers, components) and the process exits 0.

A step that overruns the deadline is cut short and what it abandoned is logged; the
process still exits 0 within ``shutdown_timeout_s`` (a hard exit if a blocked thread would
hold it up).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable

from aiohttp import web

from pytrickle_worker.server.app import CMS_KEY, SERVICE_KEY, STREAMS_KEY
from pytrickle_worker.transport.listen import listen_socket

__all__ = ["drain", "serve"]

logger = logging.getLogger(__name__)


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())


async def _step(name: str, step: Awaitable[bool | None], timeout_s: float) -> bool:
    """Run one drain step within ``timeout_s``; a timeout or failure is logged, never raised."""
    try:
        async with asyncio.timeout(timeout_s):
            return (await step) is not False
    except TimeoutError:
        logger.warning("drain: %s did not finish before the deadline", name)
    except Exception:
        logger.exception("drain: %s failed", name)
    return False


async def drain(app: web.Application, timeout_s: float) -> bool:
    """Steps 1-4 of the module docstring; True when everything was flushed in time."""
    deadline = _Deadline(timeout_s)
    streams, cms, service = app[STREAMS_KEY], app[CMS_KEY], app[SERVICE_KEY]
    streams.begin_drain()
    cms.begin_drain()
    complete = await _step(
        "stopping the trickle stream", streams.shutdown(close_processor=False), deadline.left()
    )
    complete &= await _step(
        "flushing the CMS backends", cms.drain(deadline.left()), deadline.left()
    )
    actions_sent = await _step(
        "sending the Redis actions", service.actions.drain(deadline.left()), deadline.left()
    )
    if not actions_sent:
        logger.warning(
            "drain: %d Redis action job(s) still pending at the deadline",
            service.actions.snapshot()["pending"],
        )
    return complete and actions_sent


async def serve(
    app: web.Application,
    host: str,
    port: int,
    shutdown_timeout_s: float,
    *,
    exit_process: bool = True,
) -> int:
    """Serve ``app`` until SIGTERM or SIGINT, then drain and close within the deadline.

    With ``exit_process`` (the CLI) the process ends here with ``os._exit``: after a drain,
    nothing may keep it alive, not even a thread stuck in native code that the interpreter's
    exit would wait for (a decoder, an inference, an NVML call).
    """
    loop = asyncio.get_running_loop()
    # Handlers still running when the server closes get at most this long: the drain has
    # already closed the WebSockets, and stream requests are short.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    # Bound before the components start: a taken port is one clear WorkerError, nothing to undo.
    sock = listen_socket(host, port)
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
    except BaseException:
        await runner.cleanup()
        sock.close()
        raise
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104 - a comparison
    if ":" in shown:
        shown = f"[{shown}]"
    logger.info(
        "listening on %s:%d; try http://%s:%d/health, the CMS WebSocket ws://%s:%d/ and "
        "http://%s:%d/api/stream/status; watch the cameras at http://%s:%d/live",
        host,
        port,
        *(shown, port) * 4,
    )
    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(signum: signal.Signals) -> None:
        if received:
            logger.warning("%s again while draining: exiting now", signum.name)
            _hard_exit()
        received.append(signum.name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await stop.wait()
    started = time.monotonic()
    logger.info("%s: draining (deadline %.0f s)", received[0], shutdown_timeout_s)
    deadline = _Deadline(shutdown_timeout_s)
    complete = await drain(app, deadline.left())
    try:
        async with asyncio.timeout(deadline.left()):
            await runner.cleanup()
    except TimeoutError:
        logger.error("shutdown overran its %.0f s deadline; exiting now", shutdown_timeout_s)
        _hard_exit()
    except Exception:
        complete = False
        logger.exception("shutdown: closing the server failed")
    actions = app[SERVICE_KEY].actions.snapshot()
    actions.pop("targets", None)
    logger.info(
        "shut down in %.2f s%s; redis actions: %s",
        time.monotonic() - started,
        "" if complete else " (the deadline cut the drain short; see above)",
        json.dumps(actions, sort_keys=True),
    )
    if exit_process:
        _hard_exit()
    return 0


def _hard_exit() -> None:
    """Exit 0 now: a thread stuck in native code (a decoder, an inference) must not keep a
    pod in Terminating until the kubelet's SIGKILL."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
