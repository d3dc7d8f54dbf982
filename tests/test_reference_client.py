"""The original detector worker's own protocol client (tests/reference/protocol_client.py),
unchanged in logic, against ``python server.py`` — as the detector worker's users ran it.

The client talks to the constant ``ws://localhost:8000``; the test runs the client's own source
with only that constant replaced by the test worker's address (a free port), so the suite
passes while something else (``bash scripts/run.sh``) holds port 8000."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.worker_process import WorkerProcess

REPO = Path(__file__).resolve().parent.parent
CLIENT = REPO / "tests" / "reference" / "protocol_client.py"
CLIENT_URI = 'uri = "ws://localhost:8000"'


def client_source(port: int) -> str:
    """The reference client's source, its worker address pointed at ``port``."""
    source = CLIENT.read_text(encoding="utf-8")
    assert source.count(CLIENT_URI) == 1, "the reference client's URI line changed"
    return source.replace(CLIENT_URI, f'uri = "ws://127.0.0.1:{port}"')


@contextlib.contextmanager
def holding_port_8000() -> Iterator[None]:
    """Something listening on 127.0.0.1:8000 for the duration (unless something already is)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", 8000))
            sock.listen()
        except OSError:
            pass  # already taken: just as good
        yield


@pytest.mark.parametrize("port_8000", ["as-is", "taken"])
async def test_reference_protocol_client_passes(port_8000: str, tmp_path: Path) -> None:
    holder = holding_port_8000() if port_8000 == "taken" else contextlib.nullcontext()
    with holder:
        worker = WorkerProcess(tmp_path, "--no-demo").start()
        try:
            await worker.wait_status("/health/ready", 200)
            client = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                client_source(worker.port),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            stdout, stderr = await asyncio.wait_for(client.communicate(), 60)
        finally:
            assert worker.stop() == 0, worker.log()
    out = stdout.decode()
    assert client.returncode == 0, stderr.decode()
    assert "✗" not in out, out
    for line in (
        "✓ Connected to worker",
        "✓ Received stateReport heartbeat",
        "✓ Received stateReport response",
        "✓ Received patchSessionResult",
        "  - Success: True",
        "✓ Protocol test completed successfully!",
    ):
        assert line in out, out
    # The subscribe to example.com is refused with an error naming the reason.
    assert "Received error" in out and "not allowed" in out, out
