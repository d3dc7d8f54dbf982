"""``pip install pytrickle-worker`` with no extras, then ``pytrickle-worker serve``: it must serve.

Marked ``install``: it builds the wheel (build isolation fetches setuptools), installs it into a
fresh virtualenv from the package index (the runtime dependencies, no extras: ~20-40 s with
network) and runs the installed command, away from the checkout. ``-m 'not install'`` skips
it on a machine without network access.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import free_port

REPO = Path(__file__).resolve().parent.parent
#: What the wheel is built from (pyproject's packages.find, its readme); nothing else.
SOURCES = ("pyproject.toml", "README.md", "pytrickle_worker", "processors")

pytestmark = [pytest.mark.install, pytest.mark.timeout(300)]


def _run(*command: str | Path, cwd: Path, timeout: float = 180) -> str:
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _clean_env() -> dict[str, str]:
    """The environment without anything that would make the checkout or the dev venv
    importable, or change the worker's settings."""
    return {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not key.startswith("PTW_")
    }


@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel installed without extras; returns its bin folder."""
    root = tmp_path_factory.mktemp("plain-install")
    source = root / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            shutil.copy2(path, source / name)
    wheels = root / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, source, cwd=root)
    (wheel,) = wheels.glob("pytrickle_worker-*.whl")
    venv = root / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=root)
    _run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel, cwd=root)
    return venv / "bin"


def test_the_plain_install_has_no_onnx(plain_venv: Path, tmp_path: Path) -> None:
    probe = subprocess.run(
        [str(plain_venv / "python"), "-c", "import onnx"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode != 0 and "No module named 'onnx'" in probe.stderr, probe.stderr
    where = _run(
        plain_venv / "python", "-c", "import pytrickle_worker as p; print(p.__file__)", cwd=tmp_path
    )
    assert Path(where.strip()).is_relative_to(plain_venv.parent), where  # not the checkout


async def test_a_plain_install_serves(plain_venv: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "worker.log"
    env = {**_clean_env(), "PTW_CACHE_DIR": str(tmp_path / "cache")}
    with log.open("wb") as sink:
        worker = await asyncio.create_subprocess_exec(
            str(plain_venv / "pytrickle-worker"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=sink,
        )
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 60
            while True:
                assert worker.returncode is None, _read(log)
                try:
                    async with http.get(f"http://127.0.0.1:{port}/health") as reply:
                        health = await reply.json()
                        status = reply.status
                    break
                except aiohttp.ClientError:
                    assert time.monotonic() < deadline, _read(log)
                    await asyncio.sleep(0.2)
            assert status == 200 and health["status"] == "IDLE", health
            # The live page's files are package data: the wheel must carry them.
            async with http.get(f"http://127.0.0.1:{port}/live/static/live.js") as reply:
                assert reply.status == 200, await reply.text()
            async with http.ws_connect(f"ws://127.0.0.1:{port}/") as ws:
                first = json.loads(await ws.receive_str(timeout=10))
            assert first["type"] == "stateReport", first
    finally:
        worker.terminate()
        await asyncio.wait_for(worker.wait(), 30)
    text = _read(log)
    assert worker.returncode == 0, text
    assert "Traceback" not in text, text
    lines = text.splitlines()
    # The first line says what runs and how to get the demo.
    assert "no pipeline preloaded" in lines[0], text
    assert "pip install 'pytrickle-worker[demo]'" in lines[0] and "--no-demo" in lines[0], text


def _read(path: Path) -> str:
    return path.read_text(errors="replace")
