"""Real servers the tests start on loopback: Redis here; HTTP servers live beside their tests."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from pathlib import Path

from pytrickle_worker.sources.frame import CameraFrame
from pytrickle_worker.sources.hub import Subscription


async def collect(sub: Subscription, seconds: float) -> list[CameraFrame]:
    """Every frame ``sub`` delivers within ``seconds``."""
    frames: list[CameraFrame] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (remaining := end - loop.time()) > 0:
        frame = await sub.next_frame(timeout=remaining)
        if frame is not None:
            frames.append(frame)
    return frames


def os_thread_name(native_id: int) -> str:
    """The OS name (Linux ``comm``) of one of this process's threads; OSError once it ended."""
    return Path(f"/proc/self/task/{native_id}/comm").read_text().rstrip("\n")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisProcess:
    """A real redis-server on 127.0.0.1 that a test can stop and start again on the same port."""

    def __init__(
        self, workdir: Path, port: int | None = None, extra_args: list[str] | None = None
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed; scripts/test.sh installs it")
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra_args = extra_args or []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    # "-NOAUTH" also proves the server is up when it requires a password.
                    if sock.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None
