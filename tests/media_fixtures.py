"""Real media servers on 127.0.0.1 for the camera-ingest tests, and their pytest fixtures.

* :class:`RtspServer`: the GStreamer RTSP server of ``tests/servers/rtsp_server.py``, run as
  a subprocess under the Debian system Python, with counters fed by its JSON event lines.
* :class:`~tests.servers.media_http.MediaHttpServer`: an in-process aiohttp server with
  MPEG-TS, MJPEG, snapshot, auth, 404, stall and EOF endpoints.

Fixtures (registered from ``tests/conftest.py`` with ``pytest_plugins``):

``rtsp_server``
    A started :class:`RtspServer`: 640x360 at 15 fps test pattern at ``rtsp_server.url``.
``rtsp_server_factory``
    ``rtsp_server_factory(**kwargs) -> RtspServer`` (started; kwargs as :class:`RtspServer`);
    stops every server it started at teardown.
``media_http``
    A started :class:`MediaHttpServer` on the test's event loop (async tests only).

If the Debian GStreamer packages are missing the RTSP fixtures fail (never skip) and say that
``bash scripts/test.sh`` installs them.

What the RTSP counters mean
---------------------------
The media factory is shared: every client watches the same encoder pipeline, but each
client still makes its own TCP connection and its own RTSP session. With a client that
opens one URL once (PyAV: OPTIONS, DESCRIBE, one SETUP, PLAY on one connection):

* ``clients_connected_total`` / ``current_clients``: RTSP (TCP) connections accepted in
  total / open now. Rejected ones (401, 404) count too: they connect before they are refused.
* ``sessions_total`` / ``current_sessions``: RTSP sessions created (one per client SETUP; a
  client that sets up several tracks shares one session) / alive now. A session ends on
  TEARDOWN (PyAV sends it on close) or when the connection closes.
* ``medias_total``: encoder pipelines built. With the shared factory, N simultaneous clients
  give 1; the pipeline is torn down when its last session ends, so a client that comes back
  after everyone left makes another one.
* ``plays_total`` / ``describes_total`` / ``teardowns_total``: requests of each kind.

Hence "five subscribers on one camera open exactly one RTSP session" reads
``sessions_total == 1 and clients_connected_total == 1``; five independent PyAV clients
would give 5 and 5 (and ``medias_total == 1``). Totals add up over :meth:`RtspServer.restart`
(each process's events are counted here); ``current_*`` drop to 0 when the process exits.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_asyncio

from tests.servers.media_http import MediaHttpServer

SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER_SCRIPT = Path(__file__).resolve().parent / "servers" / "rtsp_server.py"
GSTREAMER_PACKAGES = (
    "python3-gi",
    "python3-gst-1.0",
    "gir1.2-gst-rtsp-server-1.0",
    "gir1.2-gst-plugins-base-1.0",
    "gstreamer1.0-tools",
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good",
    "gstreamer1.0-plugins-bad",
    "gstreamer1.0-plugins-ugly",
)
INSTALL_HINT = (
    "the RTSP test server needs GStreamer and its Python bindings for the Debian system "
    f"Python ({SYSTEM_PYTHON}); `bash scripts/test.sh` installs them "
    f"(apt-get install {' '.join(GSTREAMER_PACKAGES)})"
)

__all__ = [
    "INSTALL_HINT",
    "MediaHttpServer",
    "RtspServer",
    "gstreamer_problem",
    "media_http",
    "require_gstreamer",
    "rtsp_server",
    "rtsp_server_factory",
]

_problem_cache: dict[str, str | None] = {}


def gstreamer_problem(python: str = SYSTEM_PYTHON) -> str | None:
    """Why the RTSP server cannot run under ``python``, or None if it can (cached)."""
    if python not in _problem_cache:
        _problem_cache[python] = _check_gstreamer(python)
    return _problem_cache[python]


def _check_gstreamer(python: str) -> str | None:
    if not os.access(python, os.X_OK):
        return f"{python} not found"
    try:
        proc = subprocess.run(
            [python, str(RTSP_SERVER_SCRIPT), "--check"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "the GStreamer check timed out"
    if proc.returncode == 0:
        return None
    detail = (proc.stdout + proc.stderr).strip().splitlines()
    return detail[-1] if detail else f"exit status {proc.returncode}"


def require_gstreamer(python: str = SYSTEM_PYTHON) -> None:
    """Fail the test (never skip) when the GStreamer packages are missing."""
    problem = gstreamer_problem(python)
    if problem is not None:
        pytest.fail(f"{problem}: {INSTALL_HINT}", pytrace=False)


class RtspServer:
    """A real GStreamer RTSP server on 127.0.0.1 that a test can stop, kill and restart.

    The first :meth:`start` lets the server pick a free port (no race); :meth:`restart` and
    later starts reuse it, so clients can reconnect to the same URL. Counters: see the
    module docstring. Methods are synchronous and thread-safe; in an async test use
    :meth:`wait_for_async` (``wait_for`` would block the event loop) and, if the loop must keep
    running meanwhile, ``await asyncio.to_thread(server.restart)``.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        mount: str = "/cam",
        width: int = 640,
        height: int = 360,
        fps: int = 15,
        source: str = "test",
        file: str | Path | None = None,
        pattern: str = "ball",
        bitrate: int = 800,
        keyint: int = 0,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        if source not in ("test", "file"):
            raise ValueError(f"source must be 'test' or 'file', not {source!r}")
        if source == "file" and file is None:
            raise ValueError("source='file' needs file=")
        self.port = port
        self.mount = mount if mount.startswith("/") else "/" + mount
        self.width = width
        self.height = height
        self.fps = fps
        self.source = source
        self.file = None if file is None else Path(file)
        self.pattern = pattern
        self.bitrate = bitrate
        self.keyint = keyint
        self.user = user
        self.password = password

        self.proc: subprocess.Popen[str] | None = None
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self.events: list[dict[str, Any]] = []
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=60)
        self.starts = 0
        self._ready_generation = 0
        self.clients_connected_total = 0
        self.current_clients = 0
        self.sessions_total = 0
        self.current_sessions = 0
        self.medias_total = 0
        self.describes_total = 0
        self.plays_total = 0
        self.teardowns_total = 0
        self.file_loops = 0

    # -- URLs -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``rtsp://127.0.0.1:PORT/cam`` (no credentials)."""
        return f"rtsp://127.0.0.1:{self.port}{self.mount}"

    def url_with_credentials(self, user: str | None = None, password: str | None = None) -> str:
        """The URL with ``user:password@`` (the server's own credentials by default)."""
        user = self.user if user is None else user
        password = self.password if password is None else password
        if user is None or password is None:
            raise ValueError("no credentials: pass user= and password=")
        userinfo = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"rtsp://{userinfo}@127.0.0.1:{self.port}{self.mount}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- lifecycle --------------------------------------------------------------------------

    def _command(self) -> list[str]:
        cmd = [
            SYSTEM_PYTHON,
            "-u",
            str(RTSP_SERVER_SCRIPT),
            "--exit-on-stdin-eof",
            "--port",
            str(self.port),
            "--mount",
            self.mount,
            "--width",
            str(self.width),
            "--height",
            str(self.height),
            "--fps",
            str(self.fps),
            "--source",
            self.source,
            "--pattern",
            self.pattern,
            "--bitrate",
            str(self.bitrate),
            "--keyint",
            str(self.keyint),
        ]
        if self.file is not None:
            cmd += ["--file", str(self.file)]
        if self.user is not None and self.password is not None:
            cmd += ["--user", self.user, "--password", self.password]
        return cmd

    def start(self, timeout: float = 15.0) -> None:
        """Start the server and wait for its ready line.

        The server prints ``ready`` after ``gst_rtsp_server_attach()``, which binds and
        listens synchronously, so a client may connect as soon as this returns (no probe
        connection is made: it would show up in the counters). If the port is briefly not
        free again (restart), it retries until ``timeout``.
        """
        if self.running:
            raise RuntimeError("RTSP server already running")
        deadline = time.monotonic() + timeout
        while True:
            error = self._start_once(deadline)
            if error is None:
                return
            retry = "cannot listen" in error and self.port != 0
            if not retry or time.monotonic() >= deadline:
                raise RuntimeError(f"RTSP server did not start: {error}{self._stderr_text()}")
            time.sleep(0.2)

    def _start_once(self, deadline: float) -> str | None:
        proc = subprocess.Popen(
            self._command(),
            # The server exits when this pipe closes: if the test process dies, no orphan.
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        with self._cond:
            self.proc = proc
            self.starts += 1
            generation = self.starts
        self._threads = [
            threading.Thread(target=self._read_events, args=(proc, generation), daemon=True),
            threading.Thread(target=self._read_stderr, args=(proc,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

        def settled() -> bool:
            return self._ready_generation == generation or proc.poll() is not None

        with self._cond:
            self._cond.wait_for(settled, timeout=max(0.0, deadline - time.monotonic()))
            if self._ready_generation == generation:
                return None
        # Not ready: it exited (say why) or timed out.
        error = self._last_error(generation) or (
            f"exit status {proc.poll()}" if proc.poll() is not None else "no ready line in time"
        )
        self._reap(proc, signal.SIGKILL)
        return error

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: the server closes its client connections and exits."""
        if self.proc is not None:
            self._reap(self.proc, signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash; clients see their TCP connections reset/closed by the kernel."""
        if self.proc is not None:
            self._reap(self.proc, signal.SIGKILL)

    def restart(self, timeout: float = 15.0) -> None:
        """Stop (if running) and start again on the same port."""
        self.stop()
        self.start(timeout)

    def _reap(self, proc: subprocess.Popen[str], sig: int, timeout: float = 10.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        with self._cond:
            if self.proc is proc:
                self.proc = None
            self.current_clients = 0
            self.current_sessions = 0
            self._cond.notify_all()

    # -- events ---------------------------------------------------------------------------

    def _read_events(self, proc: subprocess.Popen[str], generation: int) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"event": "output", "line": line.rstrip("\n")}
            event["generation"] = generation
            with self._cond:
                self._apply(event)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _read_stderr(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.stderr_tail.append(line.rstrip("\n"))

    def _apply(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        kind = event.get("event")
        if kind == "ready":
            self.port = int(event["port"])
            self._ready_generation = int(event["generation"])
        elif kind == "client-connected":
            self.clients_connected_total += 1
            self.current_clients = int(event["clients"])
        elif kind == "client-closed":
            self.current_clients = int(event["clients"])
        elif kind == "session-new":
            self.sessions_total += 1
            self.current_sessions = int(event["sessions"])
        elif kind == "session-removed":
            self.current_sessions = int(event["sessions"])
        elif kind == "media-configured":
            self.medias_total += 1
        elif kind == "describe":
            self.describes_total += 1
        elif kind == "play":
            self.plays_total += 1
        elif kind == "teardown":
            self.teardowns_total += 1
        elif kind == "file-looped":
            self.file_loops += 1

    def _last_error(self, generation: int) -> str | None:
        with self._cond:
            for event in reversed(self.events):
                if event.get("generation") == generation and event.get("event") == "error":
                    return str(event.get("message"))
        return None

    def _stderr_text(self) -> str:
        tail = list(self.stderr_tail)[-15:]
        return ("\nserver stderr:\n" + "\n".join(tail)) if tail else ""

    def counters(self) -> dict[str, int]:
        with self._cond:
            return {
                "clients_connected_total": self.clients_connected_total,
                "current_clients": self.current_clients,
                "sessions_total": self.sessions_total,
                "current_sessions": self.current_sessions,
                "medias_total": self.medias_total,
                "describes_total": self.describes_total,
                "plays_total": self.plays_total,
                "teardowns_total": self.teardowns_total,
                "starts": self.starts,
            }

    def wait_for(self, predicate: Callable[[RtspServer], bool], timeout: float = 10.0) -> None:
        """Block until ``predicate(self)`` holds (re-checked on every event); TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    recent = [e.get("event") for e in self.events[-12:]]
                    raise TimeoutError(
                        f"RTSP server condition not met in {timeout}s; counters "
                        f"{self.counters()}; recent events {recent}"
                    )
                # Also wake now and then: a predicate may look at things beside the events.
                self._cond.wait(min(remaining, 0.1))

    async def wait_for_async(
        self,
        predicate: Callable[[RtspServer], bool],
        timeout: float = 10.0,  # noqa: ASYNC109 - the same API as wait_for
    ) -> None:
        """:meth:`wait_for` for async tests: polls every 20 ms without blocking the loop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self._cond:
                if predicate(self):
                    return
            if loop.time() >= deadline:
                recent = [e.get("event") for e in self.events[-12:]]
                raise TimeoutError(
                    f"RTSP server condition not met in {timeout}s; counters "
                    f"{self.counters()}; recent events {recent}"
                )
            await asyncio.sleep(0.02)


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def rtsp_server_factory() -> Iterator[Callable[..., RtspServer]]:
    """``rtsp_server_factory(**kwargs)`` starts an :class:`RtspServer`; all stop at teardown."""
    require_gstreamer()
    started: list[RtspServer] = []

    def make(**kwargs: Any) -> RtspServer:
        server = RtspServer(**kwargs)
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def rtsp_server(rtsp_server_factory: Callable[..., RtspServer]) -> RtspServer:
    """A started RTSP server: 640x360 at 15 fps test pattern at ``rtsp_server.url``."""
    return rtsp_server_factory(width=640, height=360, fps=15)


@pytest_asyncio.fixture
async def media_http() -> AsyncIterator[MediaHttpServer]:
    """A started :class:`MediaHttpServer` on this test's event loop (PyAV clients: threads)."""
    server = MediaHttpServer()
    await server.start()
    yield server
    await server.stop()
