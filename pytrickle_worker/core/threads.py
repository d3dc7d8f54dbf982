"""Thread scheduling helpers."""

from __future__ import annotations

import logging
import os
import sys
import threading

__all__ = ["lower_thread_priority"]

logger = logging.getLogger(__name__)

#: The highest niceness Linux allows.
MAX_NICENESS = 19


def lower_thread_priority(niceness: int, what: str) -> None:
    """Raise the calling thread's niceness by ``niceness`` (Linux: per thread; a thread it
    starts afterwards inherits it). A no-op where unsupported; ``what`` names the thread in
    the debug line that says so.

    Lowering one's own priority needs no privilege. Where the cores are short, the thread
    then gives way to the others instead of sharing with them; where they are not, it runs
    as fast as before."""
    if niceness <= 0:
        return
    if not sys.platform.startswith("linux"):
        # Elsewhere PRIO_PROCESS takes a process id: a thread id there could name another
        # process.
        logger.debug("%s keeps its priority: per-thread niceness is Linux's", what)
        return
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(MAX_NICENESS, current + niceness))
    except (AttributeError, OSError) as exc:
        logger.debug("%s keeps its priority: %s", what, exc)
