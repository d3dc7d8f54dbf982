"""One WorkerConfig reaches both doors of the worker: the CMS WebSocket (``subscribe``) and
the StreamServer REST API (``/api/stream/start``).

* ``PTW_HW_DECODE`` reaches a trickle stream's segment decoder, with the software fallback
  the camera readers have: forced to ``nvdec`` on a host without a usable NVDEC, the stream
  decodes in software and says so in ``/api/stream/status`` and in the log, and so does a
  CMS camera of the same worker.
* One model-URL rule (``PTW_MODEL_URL_HOSTS``, ``PTW_ALLOW_LOCAL_MODELS``): the same URL is
  refused, with the same reason, or let through, by a CMS subscribe and by a stream start.

Real parts only: the worker as a process (``server.py``) or as the app ``create_app`` builds,
on 127.0.0.1; the project's own trickle server; the config read from environment variables.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.core.hardware import count_gpus
from pytrickle_worker.devtools.assets import DemoAssets
from pytrickle_worker.server.app import create_app
from pytrickle_worker.transport.trickle import TricklePublisher
from tests.cms_harness import BASE_CONFIG, Backend
from tests.helpers import free_port
from tests.test_streaming_e2e import trickle_channels
from tests.test_streaming_media import synthetic_segments
from tests.worker_process import WorkerProcess

MID = "doors-1"
WAIT_S = 60.0


# ------------------------------------------------------------ PTW_HW_DECODE, PTW_NVDEC_API


@pytest.fixture
async def trickle() -> AsyncIterator[str]:
    async with trickle_channels(MID) as url:
        yield url


async def _json(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> Any:
    async with http.request(method, url, **kw) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_hw_decode_nvdec_reaches_trickle_streams_and_cms_cameras(
    tmp_path: Path, demo_assets: DemoAssets, trickle: str
) -> None:
    worker = WorkerProcess(
        tmp_path,
        "--no-demo",
        "--pipeline",
        str(demo_assets.mpta_path),
        # The hwaccel API (the primary CUDA context): its setting must reach both doors.
        env={"PTW_HW_DECODE": "nvdec", "PTW_NVDEC_API": "hwaccel", "PTW_LOG_LEVEL": "INFO"},
    ).start()
    try:
        await worker.wait_status("/health/ready", 200, within_s=WAIT_S)
        async with aiohttp.ClientSession() as http:
            start = {"gateway_request_id": MID, "subscribe_url": trickle, "params": {}}
            await _json(http, "POST", worker.base + "/api/stream/start", json=start)
            publisher = TricklePublisher(trickle, "video/mp2t")
            for segment in synthetic_segments():
                await publisher.publish(segment)
            deadline = time.monotonic() + WAIT_S
            while True:
                status = await _json(http, "GET", worker.base + "/api/stream/status")
                session = status["session"]
                if session["frames_decoded"] > 0:
                    break
                assert time.monotonic() < deadline, f"no frame decoded: {status}\n{worker.log()}"
                await asyncio.sleep(0.1)
            assert session["try_nvdec"] is True, session  # the config reached the stream

            # The CMS door of the same worker: a camera on the sample video (H.264).
            ws = await http.ws_connect(worker.base + "/")
            backend = Backend(ws, http)
            await backend.send(
                "subscribe",
                {
                    "subscriptionIdentifier": "display-1;cam-1",
                    "rtspUrl": str(demo_assets.video_path),
                    "modelUrl": str(demo_assets.mpta_path),
                    "modelName": "Demo",
                    "modelId": 1,
                },
            )
            await backend.wait_for(
                lambda m: m.get("type") == "imageDetection", timeout=WAIT_S, what="a detection"
            )
            await _json(http, "POST", worker.base + "/api/stream/stop")
            await publisher.close(delete=False)
            await ws.close()
            await backend.close()
    finally:
        code = worker.stop()
    log = worker.log()
    assert code == 0, log
    if count_gpus() == 0:
        # No GPU: NVDEC cannot work; the stream says so and decodes in software.
        assert session["hw_decoder"] is False, session
        assert session["video_decoder"] == "h264", session
        assert "NVDEC hwaccel for h264" in session["nvdec_fallback"], session
        why = "NVDEC is not usable (NVDEC hwaccel for h264 cannot be created"
        assert f"{MID}: {why}" in log, log
        assert f"{demo_assets.video_path}: {why}" in log, log
    else:  # a GPU: NVDEC decodes, or the fallback is reported
        assert session["hw_decoder"] or session["nvdec_fallback"], session


async def test_hw_decode_off_never_tries_nvdec_on_a_stream(
    tmp_path: Path, demo_assets: DemoAssets, trickle: str
) -> None:
    config = WorkerConfig.load(
        environ={
            "PTW_CACHE_DIR": str(tmp_path / "cache"),
            "PTW_EXECUTION_PROVIDER": "cpu",
            "PTW_HW_DECODE": "off",
        }
    )
    server = TestServer(create_app(config, str(demo_assets.mpta_path)), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            base = str(server.make_url("")).rstrip("/")
            deadline = time.monotonic() + WAIT_S
            while (await http.get(base + "/health/ready")).status != 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            start = {"gateway_request_id": MID, "subscribe_url": trickle, "params": {}}
            await _json(http, "POST", base + "/api/stream/start", json=start)
            publisher = TricklePublisher(trickle, "video/mp2t")
            for segment in synthetic_segments():
                await publisher.publish(segment)
            while True:
                session = (await _json(http, "GET", base + "/api/stream/status"))["session"]
                if session["frames_decoded"] > 0:
                    break
                assert time.monotonic() < deadline, session
                await asyncio.sleep(0.1)
            await _json(http, "POST", base + "/api/stream/stop")
            await publisher.close(delete=False)
    finally:
        await server.close()
    assert session["try_nvdec"] is False, session
    assert session["video_decoder"] == "h264" and session["nvdec_fallback"] is None, session


# --------------------------------------------------------------------------- model URLs

#: The policy's refusals (pytrickle_worker/engine/mpta/policy.py); a fetch error has none of them.
REFUSALS = ("is not allowed", "not accepted from callers", "unsupported scheme")

CONFIGS: dict[str, dict[str, str]] = {
    "nothing set": {},
    "host allow-list": {"PTW_MODEL_URL_HOSTS": "127.0.0.1"},
    "allow-list and local": {
        "PTW_MODEL_URL_HOSTS": "127.0.0.1",
        "PTW_ALLOW_LOCAL_MODELS": "true",
    },
    "local off": {"PTW_ALLOW_LOCAL_MODELS": "false"},
}
#: url kind -> the configs that let it through (written out, not derived from the policy).
ALLOWED_IN: dict[str, set[str]] = {
    "path": {"nothing set", "allow-list and local"},
    "file": {"nothing set", "allow-list and local"},
    "listed host": set(CONFIGS),
    "other host": {"nothing set", "local off"},
    "gopher": set(),
}


def model_urls(tmp_path: Path) -> dict[str, str]:
    """Every URL fails to load (nothing is there): what differs is who refuses it."""
    missing = tmp_path / "missing.mpta"
    port = free_port()
    return {
        "path": str(missing),
        "file": missing.as_uri(),
        "listed host": f"http://127.0.0.1:{port}/model.mpta",
        "other host": f"http://localhost:{port}/model.mpta",
        "gopher": "gopher://127.0.0.1/model.mpta",
    }


@pytest.mark.parametrize("name", list(CONFIGS))
async def test_one_model_url_rule_on_both_doors(name: str, tmp_path: Path) -> None:
    environ = {
        "PTW_CACHE_DIR": str(tmp_path / "cache"),
        **{f"PTW_{k.upper()}": str(v) for k, v in BASE_CONFIG.items()},
        **CONFIGS[name],
    }
    config = WorkerConfig.load(environ=environ)
    server = TestServer(create_app(config), host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    try:
        async with aiohttp.ClientSession() as http:
            backend = Backend(await http.ws_connect(base + "/"), http)
            for kind, url in model_urls(tmp_path).items():
                after = backend.mark()
                identifier = f"display-1;{kind}"
                await backend.send(
                    "subscribe",
                    {
                        "subscriptionIdentifier": identifier,
                        "rtspUrl": f"rtsp://127.0.0.1:{free_port()}/cam",
                        "modelUrl": url,
                        "modelName": "m",
                        "modelId": 1,
                    },
                )
                reply = await backend.wait_for(
                    lambda m, i=identifier: (
                        m.get("type") == "error" and m.get("subscriptionIdentifier") == i
                    ),
                    after=after,
                    timeout=30,
                    what=f"the error for {kind}",
                )
                cms_error: str = reply["error"]
                body = {"gateway_request_id": MID, "params": {"model_url": url}}
                async with http.post(base + "/api/stream/start", json=body) as response:
                    assert response.status == 400, await response.text()
                    rest_error: str = (await response.json())["message"]
                assert rest_error.startswith("Invalid params: model_url: "), rest_error
                cms_reason = cms_error.removeprefix("modelUrl: ")
                rest_reason = rest_error.removeprefix("Invalid params: model_url: ")
                refused = {
                    "cms": any(r in cms_reason for r in REFUSALS),
                    "stream": any(r in rest_reason for r in REFUSALS),
                }
                allowed = name in ALLOWED_IN[kind]
                assert refused == {"cms": not allowed, "stream": not allowed}, (
                    kind,
                    cms_error,
                    rest_error,
                )
                if not allowed:  # the same reason, word for word
                    assert cms_error.startswith("modelUrl: "), cms_error
                    assert cms_reason == rest_reason, (cms_reason, rest_reason)
            await backend.close()
    finally:
        await server.close()


async def test_params_and_the_preloaded_pipeline_follow_the_same_rule(
    tmp_path: Path, demo_assets: DemoAssets
) -> None:
    """Local archives refused (an allow-list is set): the operator's preloaded pipeline may
    still be named at both doors; another local archive is refused by ``/api/stream/params``
    and by a CMS subscribe with the same reason."""
    environ = {
        "PTW_CACHE_DIR": str(tmp_path / "cache"),
        **{f"PTW_{k.upper()}": str(v) for k, v in BASE_CONFIG.items()},
        "PTW_MODEL_URL_HOSTS": "127.0.0.1",
    }
    preloaded, other = str(demo_assets.mpta_path), str(tmp_path / "other.mpta")
    app = create_app(WorkerConfig.load(environ=environ), preloaded)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + WAIT_S
            while (await http.get(base + "/health/ready")).status != 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            body = {"gateway_request_id": MID, "params": {"model_url": preloaded}}
            await _json(http, "POST", base + "/api/stream/start", json=body)
            async with http.post(base + "/api/stream/params", json={"model_url": other}) as r:
                assert r.status == 400, await r.text()
                rest_error: str = (await r.json())["message"]

            backend = Backend(await http.ws_connect(base + "/"), http)
            for identifier, url in (("display-1;other", other), ("display-1;own", preloaded)):
                await backend.send(
                    "subscribe",
                    {
                        "subscriptionIdentifier": identifier,
                        "rtspUrl": f"rtsp://127.0.0.1:{free_port()}/cam",
                        "modelUrl": url,
                        "modelName": "m",
                        "modelId": 1,
                    },
                )
            refused = await backend.wait_for(
                lambda m: m.get("type") == "error", timeout=30, what="the refusal"
            )
            # The preloaded one is subscribed (the camera itself is unreachable).
            await backend.wait_for(
                lambda m: (
                    m.get("type") == "stateReport"
                    and any(
                        c["subscriptionIdentifier"] == "display-1;own"
                        for c in m.get("cameraConnections", [])
                    )
                ),
                timeout=30,
                what="the preloaded pipeline's subscription",
            )
            errors = [m for m in backend.messages if m.get("type") == "error"]
            await _json(http, "POST", base + "/api/stream/stop")
            await backend.close()
    finally:
        await server.close()
    assert refused["subscriptionIdentifier"] == "display-1;other", refused
    assert "local archives" in rest_error, rest_error
    assert refused["error"].removeprefix("modelUrl: ") == rest_error.removeprefix(
        "Invalid params: model_url: "
    ), (refused, rest_error)
    assert len(errors) == 1, errors
