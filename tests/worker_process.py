"""The worker as users run it: ``python server.py`` in a subprocess on a free loopback port."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.helpers import free_port

REPO = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """``python server.py --host 127.0.0.1 --port <free>`` with an offline, CPU-only env
    (and no access token from the developer's environment).

    stderr (the worker's log) goes to ``log_path`` so a failing test can show it.
    """

    def __init__(
        self,
        workdir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        script: Path = REPO / "server.py",
    ) -> None:
        """``script``: the entrypoint; a copy of ``server.py`` elsewhere puts its folder first
        on ``sys.path`` (a ``processors/`` package there shadows the repository's)."""
        self.port = free_port()
        self._script = script
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "worker.log"
        self._args = list(args)
        inherited = {k: v for k, v in os.environ.items() if k != "PTW_ACCESS_TOKEN"}
        self._env = {
            **inherited,
            "PTW_CACHE_DIR": str(workdir / "cache"),
            "PTW_EXECUTION_PROVIDER": "cpu",
            "PTW_MODEL_URL_HOSTS": "127.0.0.1,localhost",
            # With an allow-list, local archives are refused unless allowed: tests use them.
            "PTW_ALLOW_LOCAL_MODELS": "true",
            **(env or {}),
        }
        self._workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        command = [
            sys.executable,
            str(self._script),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [*command, *self._args],
                cwd=self._workdir,  # no stray ./config.json from the repository
                env={**self._env, "PYTHONPATH": str(REPO)},
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def wait_status(self, path: str, status: int, within_s: float = 60.0) -> None:
        """Poll ``path`` until it answers ``status``."""
        deadline = time.monotonic() + within_s
        async with aiohttp.ClientSession() as http:
            while True:
                assert self.process is not None and self.process.poll() is None, self.log()
                try:
                    async with http.get(self.base + path) as response:
                        if response.status == status:
                            return
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, f"{path} never answered {status}\n{self.log()}"
                await asyncio.sleep(0.1)

    async def wait_state(self, state: str, within_s: float = 60.0) -> None:
        """Poll ``/health`` until its body's ``status`` is ``state`` (it answers 200 in every
        state, as pytrickle's StreamServer does)."""
        deadline = time.monotonic() + within_s
        async with aiohttp.ClientSession() as http:
            while True:
                assert self.process is not None and self.process.poll() is None, self.log()
                try:
                    async with http.get(self.base + "/health") as response:
                        if (await response.json()).get("status") == state:
                            return
                except (aiohttp.ClientError, ValueError):
                    pass
                assert time.monotonic() < deadline, f"/health never said {state}\n{self.log()}"
                await asyncio.sleep(0.1)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout_s: float = 30.0) -> int:
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        return process.returncode
