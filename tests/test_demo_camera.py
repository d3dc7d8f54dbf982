"""``pytrickle-worker demo camera``: the compose demo's camera, run as a subprocess on a free
loopback port and read with PyAV the way the worker's camera hub reads a camera."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import pytest

from pytrickle_worker.devtools.assets import SAMPLE_FPS, write_sample_video
from tests.helpers import free_port

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Camera:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PTW_CACHE_DIR": str(tmp_path / "cache")}


def _start_camera(tmp_path: Path, *args: str) -> Camera:
    port = free_port()
    log_path = tmp_path / "camera.log"
    command = [sys.executable, "-m", "pytrickle_worker", "demo", "camera", "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, *args],
            cwd=tmp_path,
            env=_env(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    camera = Camera(f"http://127.0.0.1:{port}/stream.ts", process, log_path)
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, f"the camera exited\n{camera.log()}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                if reply.status == 200:
                    return camera
        except (urllib.error.URLError, OSError):
            pass
        assert time.monotonic() < deadline, f"the camera never listened\n{camera.log()}"
        time.sleep(0.1)


def _stop(camera: Camera) -> None:
    camera.process.terminate()
    try:
        camera.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        camera.process.kill()
        camera.process.wait(timeout=10)


@pytest.fixture
def default_camera(tmp_path: Path) -> Iterator[Camera]:
    camera = _start_camera(tmp_path)
    yield camera
    _stop(camera)


@pytest.fixture
def short_clip_camera(tmp_path: Path) -> Iterator[Camera]:
    clip = write_sample_video(tmp_path / "clip.mp4", seconds=1)
    camera = _start_camera(tmp_path, "--video", str(clip))
    yield camera
    _stop(camera)


def _decode(url: str, count: int) -> list[Any]:
    frames: list[Any] = []
    container: Any = av.open(url, options={"rw_timeout": "10000000"}, timeout=10)
    with container:
        for frame in container.decode(video=0):
            frames.append(frame)
            if len(frames) == count:
                break
    return frames


def test_default_camera_serves_the_demo_sample_video(
    default_camera: Camera, tmp_path: Path
) -> None:
    frames = _decode(default_camera.url, 10)
    assert len(frames) == 10
    assert {(f.width, f.height) for f in frames} == {(640, 360)}
    # Without --video it made the demo sample video in the demo folder of PTW_CACHE_DIR.
    assert (tmp_path / "cache" / "demo" / "sample.mp4").is_file()


def test_camera_loops_with_continuous_timestamps(short_clip_camera: Camera) -> None:
    """A 1 s clip read for 25 frames crosses the loop: time keeps going up, frame by frame."""
    started = time.monotonic()
    frames = _decode(short_clip_camera.url, 25)
    elapsed = time.monotonic() - started
    assert len(frames) == 25
    times = [float(f.time) for f in frames]
    steps = [b - a for a, b in itertools.pairwise(times)]
    assert all(step == pytest.approx(1 / SAMPLE_FPS, abs=1e-3) for step in steps), times
    # Live pacing: 25 frames at 15 fps take most of 1.6 s (the first ones come at once).
    assert elapsed > 0.8, elapsed


def test_camera_refuses_a_file_that_is_not_a_video(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not a video\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytrickle_worker", "demo", "camera", "--video", str(bogus)],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "cannot open demo camera video" in result.stderr
