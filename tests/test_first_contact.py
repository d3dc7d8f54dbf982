"""A new user's first commands, run as they run them: ``pytrickle-worker ...`` subprocesses on
loopback. Global options after the subcommand, a taken port, the trickle server's start line,
a missing local ``--pipeline`` (a permanent error, where an unreachable URL is retried)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from processors.mpta_detector import MptaDetectorProcessor
from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.devtools.assets import DemoAssets
from pytrickle_worker.engine.mpta.service import PipelineService
from pytrickle_worker.frontdoors.streamserver.manager import StreamManager
from tests.helpers import RedisProcess, free_port
from tests.worker_process import WorkerProcess

REPO = Path(__file__).resolve().parent.parent


def _env(tmp_path: Path) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if k != "PTW_ACCESS_TOKEN"}
    return {
        **inherited,
        "PTW_CACHE_DIR": str(tmp_path / "cache"),
        "PTW_EXECUTION_PROVIDER": "cpu",
        "PYTHONPATH": str(REPO),
    }


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytrickle_worker", *args]


def _run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``pytrickle-worker ARGS`` to its end, in ``tmp_path`` with the test environment."""
    return subprocess.run(
        _cli(*args),
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize(
    "command",
    [
        ["serve", "--no-demo", "--host", "127.0.0.1"],
        ["trickle-server", "--host", "127.0.0.1"],
        ["demo", "camera", "--host", "127.0.0.1"],
    ],
    ids=["serve", "trickle-server", "demo-camera"],
)
def test_a_taken_port_is_one_clear_line_and_exit_1(
    command: list[str], taken_port: int, tmp_path: Path, demo_assets: DemoAssets
) -> None:
    if command[0] == "demo":
        command = [*command, "--video", str(demo_assets.video_path)]
    result = _run_cli(tmp_path, *command, "--port", str(taken_port))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if not line[:2].isdigit()]
    assert errors == [f"error: cannot listen on 127.0.0.1:{taken_port}: Address already in use"], (
        result.stderr
    )


def _text(path: Path) -> str:
    return path.read_text(errors="replace")


async def _wait_health(
    url: str, proc: asyncio.subprocess.Process, log: Path, within_s: float = 30.0
) -> dict[str, object]:
    deadline = time.monotonic() + within_s
    async with aiohttp.ClientSession() as http:
        while True:
            assert proc.returncode is None, _text(log)
            try:
                async with http.get(url) as response:
                    return await response.json()
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, f"{url} never answered\n{_text(log)}"
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("entry", ["cli", "server.py"])
async def test_config_and_log_level_are_accepted_after_the_subcommand(
    entry: str, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "worker.json"
    config.write_text(json.dumps({"port": port, "host": "127.0.0.1"}))
    options = ["--no-demo", "--config", str(config), "--log-level", "debug"]
    command = (
        _cli("serve", *options)
        if entry == "cli"
        else [sys.executable, str(REPO / "server.py"), *options]
    )
    log = tmp_path / "worker.log"
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            *command, cwd=tmp_path, env=_env(tmp_path), stdout=sink, stderr=sink
        )
    try:
        body = await _wait_health(f"http://127.0.0.1:{port}/health", proc, log)
        assert body["status"] == "IDLE"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
    err = _text(log)
    assert proc.returncode == 0, err
    assert " DEBUG " in err, err  # --log-level debug after the subcommand took effect
    assert f"try http://127.0.0.1:{port}/health, the CMS WebSocket ws://127.0.0.1:{port}/" in err
    assert f"watch the cameras at http://127.0.0.1:{port}/live" in err


def test_global_options_before_the_subcommand_still_work(tmp_path: Path) -> None:
    config = tmp_path / "worker.json"
    config.write_text(json.dumps({"port": 0}))  # invalid: proves the file was read
    result = _run_cli(
        tmp_path, "--config", str(config), "--log-level", "info", "serve", "--no-demo"
    )
    assert result.returncode == 2, result.stderr
    assert "invalid configuration: port" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("flags", "expected"),
    [([], "channels are created on POST)"), (["--autocreate-on-get"], "on POST and GET)")],
)
def test_trickle_server_start_line_says_when_channels_are_created(
    flags: list[str], expected: str, tmp_path: Path
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        _cli("trickle-server", "--port", str(port), *flags),
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert f"trickle server on http://127.0.0.1:{port}/ (" in line, line
    assert line.rstrip().endswith(expected), line


async def _load_failures(
    source: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> tuple[list[str], tuple[int, dict[str, Any]], int]:
    """Start a StreamManager whose default pipeline is ``source`` with a 20 ms first retry
    delay; after 0.4 s: the ERROR log lines, ``/health`` and ``/health/ready``'s code."""
    config = WorkerConfig(cache_dir=tmp_path / "cache", execution_provider="cpu")
    async with PipelineService(config) as service:
        manager = StreamManager(MptaDetectorProcessor(service, default_model_url=source))
        manager.load_retry_initial_s = 0.02
        with caplog.at_level(
            logging.ERROR, logger="pytrickle_worker.frontdoors.streamserver.manager"
        ):
            await manager.startup()
            await manager.wait_loaded()
            await asyncio.sleep(0.4)
            health, ready = manager.health(), manager.ready()[0]
            await manager.shutdown()
    errors = [r.getMessage() for r in caplog.records if "stream server ERROR" in r.getMessage()]
    return errors, health, ready


@pytest.mark.parametrize("form", ["path", "file-url"])
async def test_a_missing_local_pipeline_is_a_permanent_error(
    form: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "nowhere" / "model.mpta"
    source = str(missing) if form == "path" else missing.as_uri()
    errors, (code, body), ready = await _load_failures(source, tmp_path, caplog)
    assert len(errors) == 1, errors  # logged once, no retry loop
    assert source in errors[0] and "not found" in errors[0] and "not retried" in errors[0]
    assert code == 200 and body["status"] == "ERROR"
    assert source in body["error_message"], body
    assert ready == 503


async def test_an_unreachable_pipeline_url_keeps_retrying(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = f"http://127.0.0.1:{free_port()}/model.mpta"  # nothing listens there
    errors, (code, _), ready = await _load_failures(source, tmp_path, caplog)
    assert len(errors) >= 3, errors  # the first attempt and retries at 20, 40, 80 ms...
    assert all("not retried" not in error for error in errors)
    assert (code, ready) == (200, 503)


async def test_serve_with_a_missing_pipeline_path_is_not_ready_and_says_why(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "typo.mpta"
    worker = WorkerProcess(tmp_path, "--pipeline", str(missing)).start()
    try:
        await worker.wait_state("ERROR", within_s=30)
        await worker.wait_status("/health/ready", 503)
        async with aiohttp.ClientSession() as http, http.get(worker.base + "/health") as reply:
            body = await reply.json()
        assert f"archive {missing} not found" in body["error_message"], body
    finally:
        assert worker.stop() == 0, worker.log()
    assert worker.log().count("stream server ERROR") == 1, worker.log()


async def test_cms_client_finds_the_demo_where_the_worker_put_it(
    tmp_path: Path, demo_assets: DemoAssets, private_redis: RedisProcess
) -> None:
    """examples/cms_client.py's default camera and model follow PTW_CACHE_DIR as the worker's
    do (HOME points elsewhere, so ~/.cache cannot be what it finds). The demo pipeline's
    actions go to the test's Redis (PTW_REDIS_URL), never to whatever listens on :6379."""
    cache = tmp_path / "elsewhere"
    shutil.copytree(demo_assets.root, cache / "demo")  # as `serve` builds it, made faster
    env = {
        "PTW_CACHE_DIR": str(cache),
        "HOME": str(tmp_path / "home"),
        "XDG_CACHE_HOME": "",
        "PTW_REDIS_URL": private_redis.url,
    }
    worker = WorkerProcess(tmp_path, env=env).start()
    try:
        await worker.wait_status("/health/ready", 200)
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            str(REPO / "examples" / "cms_client.py"),
            "--worker",
            f"ws://127.0.0.1:{worker.port}/",
            "--seconds",
            "12",
            cwd=tmp_path,
            env={**_env(tmp_path), **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(client.communicate(), 60)
    finally:
        assert worker.stop() == 0, worker.log()
    text = out.decode()
    assert client.returncode == 0, err.decode()
    detections = [json.loads(line) for line in text.splitlines() if '"imageDetection"' in line]
    assert detections, f"{text}\n{err.decode()}\n{worker.log()}"
    assert all(d["subscriptionIdentifier"] == "display-001;cam-001" for d in detections)
    assert not [line for line in text.splitlines() if '"error"' in line], text
    assert f"Redis actions go to {private_redis.url} (PTW_REDIS_URL)" in worker.log()
    async with aioredis.from_url(private_redis.url) as redis:
        assert await redis.keys("demo:*"), worker.log()  # the demo's redis_save_image


async def test_serve_without_onnx_starts_with_no_pipeline_and_says_how_to_get_the_demo(
    tmp_path: Path,
) -> None:
    """The offline twin of tests/test_plain_install.py: ``onnx`` made unimportable by a
    package of that name first on sys.path that raises ImportError, as a missing one does."""
    shim = tmp_path / "no-onnx" / "onnx"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError(\"No module named 'onnx'\")\n")
    port = free_port()
    log = tmp_path / "worker.log"
    env = {**_env(tmp_path), "PYTHONPATH": f"{shim.parent}{os.pathsep}{REPO}"}
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            *_cli("serve", "--host", "127.0.0.1", "--port", str(port)),
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=sink,
        )
    try:
        body = await _wait_health(f"http://127.0.0.1:{port}/health", proc, log)
        assert body["status"] == "IDLE", body
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
    lines = _text(log).splitlines()
    assert proc.returncode == 0, lines
    assert "no pipeline preloaded" in lines[0], lines
    assert "pip install 'pytrickle-worker[demo]'" in lines[0] and "--no-demo" in lines[0]
    assert not (tmp_path / "cache" / "demo").exists()  # nothing half-built


async def test_the_run_commands_demo_camera_is_live_at_once(
    tmp_path: Path, demo_assets: DemoAssets, private_redis: RedisProcess
) -> None:
    """``bash scripts/run.sh`` passes ``--demo-camera``: with no CMS backend at all, the live
    view has the sample video, analysed by the demo pipeline, as label demo / key sample."""
    assert "serve --demo-camera" in (REPO / "scripts" / "run.sh").read_text(encoding="utf-8")
    cache = tmp_path / "cache"
    shutil.copytree(demo_assets.root, cache / "demo")
    env = {"PTW_CACHE_DIR": str(cache), "PTW_REDIS_URL": private_redis.url}
    worker = WorkerProcess(tmp_path, "--demo-camera", env=env).start()
    try:
        await worker.wait_status("/health/ready", 200)
        deadline = time.monotonic() + 60
        keys: list[dict[str, Any]] = []
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                async with http.get(f"{worker.base}/labels/demo/keys") as reply:
                    if reply.status == 200:
                        keys = (await reply.json())["keys"]
                        if keys and keys[0]["online"]:
                            break
                await asyncio.sleep(0.5)
            assert [k["key"] for k in keys] == ["sample"], worker.log()
            assert keys[0]["online"] is True
            async with http.ws_connect(
                f"{worker.base.replace('http', 'ws')}/ws/stream/demo/sample"
            ) as ws:
                await ws.send_json({"action": "pull"})
                message = await ws.receive_bytes(timeout=30)
        header = json.loads(message.split(b"--IMG--", 1)[0])
        assert header["origin"] == "cms" and header["width"] > 0
        # The demo video's moving boxes are detected: the stored frame carries them.
        assert header["detection_items"], header
    finally:
        assert worker.stop() == 0, worker.log()
    assert "demo camera demo;sample" in worker.log()


async def test_demo_camera_without_the_demo_pipeline_says_so_and_starts(
    tmp_path: Path,
) -> None:
    worker = WorkerProcess(tmp_path, "--no-demo", "--demo-camera").start()
    try:
        await worker.wait_status("/health", 200)
    finally:
        assert worker.stop() == 0, worker.log()
    assert "--demo-camera needs the demo pipeline" in worker.log()


async def test_a_failing_local_subscription_is_logged_and_the_worker_serves_on(
    tmp_path: Path, demo_assets: DemoAssets, caplog: pytest.LogCaptureFixture
) -> None:
    """A local subscription (the demo camera) has no backend to tell: its error is a log
    line naming it, and the worker keeps serving."""
    from aiohttp.test_utils import TestServer  # noqa: PLC0415

    from pytrickle_worker.frontdoors.cms.protocol import SubscribePayload  # noqa: PLC0415
    from pytrickle_worker.server.app import create_app  # noqa: PLC0415

    missing = tmp_path / "missing.mpta"
    payload = SubscribePayload.model_validate(
        {
            "subscriptionIdentifier": "demo;sample",
            "rtspUrl": str(demo_assets.video_path),
            "modelUrl": str(missing),
            "modelId": 1,
        }
    )
    config = WorkerConfig(
        cache_dir=tmp_path / "cache", execution_provider="cpu", allow_local_models=True
    )
    server = TestServer(create_app(config, local_subscriptions=[payload]), host="127.0.0.1")
    with caplog.at_level("WARNING", logger="pytrickle_worker.frontdoors.cms.endpoint"):
        await server.start_server()
        try:
            deadline = time.monotonic() + 30
            while not any(
                "local subscription demo;sample" in r.getMessage() for r in caplog.records
            ):
                assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
                await asyncio.sleep(0.1)
            async with (
                aiohttp.ClientSession() as http,
                http.get(str(server.make_url("/health"))) as reply,
            ):
                assert reply.status == 200
        finally:
            await server.close()
    [line] = [r.getMessage() for r in caplog.records if "local subscription" in r.getMessage()]
    assert str(missing) in line or "not found" in line, line
