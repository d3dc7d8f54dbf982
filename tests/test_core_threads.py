"""The worker's threads carry their role in the operating system's thread name, where
``top -H``, ``ps -L``, ``perf`` and ``/proc/<pid>/task`` show it (Python's own names are not
visible there)."""

from __future__ import annotations

import sys
import threading

import pytest

from pytrickle_worker.core.threads import OS_NAME_MAX_BYTES, name_os_thread
from tests.helpers import os_thread_name

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="OS thread names are read from Linux's /proc"
)


def named_in_a_thread(name: str) -> tuple[str, str]:
    """(the thread's OS name after ``name_os_thread(name)``, the caller's OS name after)."""
    seen: list[str] = []

    def run() -> None:
        name_os_thread(name)
        seen.append(os_thread_name(threading.get_native_id()))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    return seen[0], os_thread_name(threading.get_native_id())


def test_a_thread_names_itself_and_only_itself() -> None:
    caller = os_thread_name(threading.get_native_id())
    named, caller_after = named_in_a_thread("ptw-test")
    assert named == "ptw-test"
    assert caller_after == caller


def test_a_long_name_keeps_its_first_15_bytes() -> None:
    named, _ = named_in_a_thread("ptw-a-very-long-role-name")
    assert len(named.encode()) == OS_NAME_MAX_BYTES
    assert named == "ptw-a-very-long-role-name"[:OS_NAME_MAX_BYTES]
