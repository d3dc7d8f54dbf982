"""Binding a listening TCP socket, with one clear error when the address cannot be used.

``pytrickle-worker serve``, ``trickle-server`` and ``demo camera`` all bind through
:func:`listen_socket`, so a taken port (or an unknown host) is reported the same way
everywhere: a :class:`~pytrickle_worker.core.errors.WorkerError` whose message names the
address, which the CLI prints as one ``error:`` line before exiting 1.
"""

from __future__ import annotations

import os
import socket

from pytrickle_worker.core.errors import WorkerError

__all__ = ["listen_socket"]


def listen_socket(host: str, port: int, *, backlog: int = 128) -> socket.socket:
    """A bound, listening, non-blocking TCP socket on ``host:port`` (SO_REUSEADDR, as aiohttp
    sets it). Raises :class:`WorkerError` naming the address when it cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise WorkerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    family, _, _, _, address = infos[0]
    try:
        sock = socket.create_server(address, family=family, backlog=backlog)
    except OSError as exc:
        # create_server appends "(while attempting to bind ...)" to strerror: use the errno's.
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise WorkerError(f"cannot listen on {host}:{port}: {reason}") from None
    sock.setblocking(False)
    return sock
