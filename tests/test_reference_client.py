"""The seed's own protocol client (tests/reference/protocol_client.py), unchanged in logic,
against ``python server.py`` on port 8000 — as the detector worker's users ran it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_reference_protocol_client_passes(tmp_path: Path) -> None:
    if not _port_free(8000):
        pytest.fail("port 8000 is taken; the reference client only talks to localhost:8000")
    env = {
        **os.environ,
        "PTW_CACHE_DIR": str(tmp_path / "cache"),
        "PTW_EXECUTION_PROVIDER": "cpu",
        # The client subscribes with example.com URLs; refuse them without any network I/O.
        "PTW_MODEL_URL_HOSTS": "127.0.0.1,localhost",
    }
    server = subprocess.Popen(
        [sys.executable, "server.py", "--no-demo", "--port", "8000"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while _port_free(8000):
            assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
            assert time.monotonic() < deadline, "server.py did not start listening"
            time.sleep(0.1)
        client = subprocess.run(
            [sys.executable, str(REPO / "tests" / "reference" / "protocol_client.py")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        server.terminate()
        server.wait(timeout=20)
    out = client.stdout
    assert client.returncode == 0, client.stderr
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
