"""Thread scheduling helpers."""

from __future__ import annotations

import logging
import os
import sys
import threading

__all__ = ["OS_NAME_MAX_BYTES", "lower_thread_priority", "name_os_thread"]

logger = logging.getLogger(__name__)

#: The highest niceness Linux allows.
MAX_NICENESS = 19
#: Linux keeps 15 bytes of a thread's name (16 with the terminating NUL).
OS_NAME_MAX_BYTES = 15


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` in the operating system (Linux: its ``comm``, cut
    to 15 bytes), so ``top -H``, ``ps -L``, ``perf`` and ``/proc/<pid>/task`` tell the
    worker's threads apart; Python's own thread names are invisible there. A no-op
    elsewhere or when the name cannot be set.

    Pass a fixed role name, never a camera's URL: the OS name is readable by other
    processes of the same user and is not masked. Native threads a named thread starts
    (ONNX Runtime's pools, for one) inherit its name unless they set their own.
    """
    if not sys.platform.startswith("linux"):
        return
    data = name.encode("utf-8", "replace")[:OS_NAME_MAX_BYTES]
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "wb") as comm:
            comm.write(data)
    except OSError as exc:
        logger.debug("thread %r keeps its OS name: %s", name, exc)


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
