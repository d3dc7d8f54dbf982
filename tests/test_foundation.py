"""Configuration, credential masking and the server skeleton."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.core.errors import WorkerError
from pytrickle_worker.core.logutil import MaskingFilter, mask_text, mask_url
from pytrickle_worker.devtools.assets import DemoAssets
from pytrickle_worker.server.app import create_app


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtsp://admin:hunter2@10.0.0.5:554/live", "rtsp://admin:***@10.0.0.5:554/live"),
        ("http://token@cam/x.jpg", "http://***@cam/x.jpg"),
        ("https://cdn/m.mpta?token=abc&x=1", "https://cdn/m.mpta?token=***&x=1"),
        ("rtsp://cam/live", "rtsp://cam/live"),
        ("/local/path.mpta", "/local/path.mpta"),
        ("rtsp://admin:p@ss@cam/x", "rtsp://admin:***@cam/x"),  # '@' in the password
        # Camera firmwares' query spellings (XMEye, Dahua-style CGI).
        (
            "rtsp://cam:554/user=admin&password=s3cret&channel=1.sdp?x=1&pass=s3cret",
            "rtsp://cam:554/user=admin&password=***&channel=1.sdp?x=1&pass=***",
        ),
        (
            "http://cam/cgi?loginuse=admin&loginpas=s3cret",
            "http://cam/cgi?loginuse=admin&loginpas=***",
        ),
        ("http://cam/snap.jpg?usr=a&pw=s3cret&PSW=x", "http://cam/snap.jpg?usr=a&pw=***&PSW=***"),
        (
            "http://cam/live?passenger=1&pass_through=2",
            "http://cam/live?passenger=1&pass_through=2",
        ),
        (
            "https://b.s3.amazonaws.com/m.mpta?X-Amz-Credential=AK&X-Amz-Signature=f00",
            "https://b.s3.amazonaws.com/m.mpta?X-Amz-Credential=***&X-Amz-Signature=***",
        ),
    ],
)
def test_mask_url(url: str, expected: str) -> None:
    assert mask_url(url) == expected


def test_mask_text_masks_every_url_in_a_message() -> None:
    text = "cannot open rtsp://u:p4ss@cam/1 nor http://a:b@h/x?password=zz"
    masked = mask_text(text)
    assert "p4ss" not in masked and ":b@" not in masked and "zz" not in masked
    assert "rtsp://u:***@cam/1" in masked
    masked = mask_text("open rtsp://admin:p@ss@cam/x failed; see a@b and https://h/m?sig=s1")
    assert masked == "open rtsp://admin:***@cam/x failed; see a@b and https://h/m?sig=***"


def test_masking_filter_rewrites_log_records() -> None:
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "open %s", ("rtsp://u:pw@c/s",), None
    )
    assert MaskingFilter().filter(record)
    assert record.getMessage() == "open rtsp://u:***@c/s"


def test_config_env_overrides_file(tmp_path: Path) -> None:
    config_file = tmp_path / "config.json"
    config_file.write_text('{"port": 9001, "nms_iou": 0.5}')
    config = WorkerConfig.load(config_file, environ={"PTW_PORT": "9002"})
    assert config.port == 9002
    assert config.nms_iou == 0.5


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PTW_PORT": "eighty"}, "port"),
        ({"PTW_EXECUTION_PROVIDER": "npu"}, "execution_provider"),
        ({"PTW_NMS_IOU": "2"}, "nms_iou"),
        ({"PTW_MAX_BATCH": "257"}, "max_batch"),
        ({"PTW_MAX_BATCH": "-1"}, "max_batch"),
        ({"PTW_BATCH_MAX_WAIT_MS": "1001"}, "batch_max_wait_ms"),
        ({"PTW_BATCH_SIZES": "fast"}, "batch_sizes"),
        ({"PTW_IO_BINDING": "yes"}, "io_binding"),
        ({"PTW_NVDEC_API": "nvenc"}, "nvdec_api"),
        ({"PTW_TRT_FP16": "maybe"}, "trt_fp16"),
        ({"PTW_DECODER_THREADS": "-2"}, "decoder_threads"),
        ({"PTW_MAX_VIDEO_PIXELS": "0"}, "max_video_pixels"),
        ({"PTW_MAX_BACKENDS": "0"}, "max_backends"),
        ({"PTW_CMS_INBOUND_RATE": "0"}, "cms_inbound_rate"),
    ],
)
def test_config_errors_name_the_field(env: dict[str, str], message: str) -> None:
    with pytest.raises(WorkerError, match=message):
        WorkerConfig.load(environ=env)


def test_config_file_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(WorkerError, match="cannot read config file"):
        WorkerConfig.load(bad, environ={})
    bad.write_text('{"port": "eighty"}')
    with pytest.raises(WorkerError, match="port"):
        WorkerConfig.load(bad, environ={})


def test_original_worker_config_json_keys_work_and_unknown_keys_are_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "config.json").write_text(
        '{"poll_interval_ms": 200, "max_streams": 3, "target_fps": 8,'
        ' "reconnect_interval_sec": 4, "max_retries": 2, "legacy_key": true}'
    )
    monkeypatch.chdir(tmp_path)
    config = WorkerConfig.load(environ={})
    assert (config.max_streams, config.target_fps, config.max_retries) == (3, 8.0, 2)
    assert config.analysis_fps == 5.0  # capped by poll_interval_ms
    assert config.ingest_config().reconnect_interval_sec == 4.0
    assert "legacy_key" in caplog.text


def test_camera_ingest_settings_reach_the_camera_hub() -> None:
    environ = {
        "PTW_RTSP_TRANSPORT": "udp",
        "PTW_OPEN_TIMEOUT_S": "4",
        "PTW_READ_TIMEOUT_S": "3.5",
        "PTW_SNAPSHOT_TIMEOUT_S": "2",
        "PTW_STALL_TIMEOUT_S": "6",
        "PTW_MAX_VIDEO_PIXELS": "2073600",
    }
    ingest = WorkerConfig.load(environ=environ).ingest_config()
    assert ingest.max_video_pixels == 1920 * 1080
    assert (ingest.rtsp_transport, ingest.open_timeout_s, ingest.read_timeout_s) == ("udp", 4, 3.5)
    assert (ingest.snapshot_timeout_s, ingest.stall_timeout_s) == (2, 6)
    with pytest.raises(WorkerError, match="rtsp_transport"):
        WorkerConfig.load(environ={"PTW_RTSP_TRANSPORT": "http"})


async def _health_once_loaded(client: TestClient[Any, Any]) -> tuple[int, dict[str, Any]]:
    """/health while the default pipeline loads says LOADING (200); wait for the outcome."""
    for _ in range(300):
        response = await client.get("/health")
        body: dict[str, Any] = await response.json()
        if body["status"] != "LOADING":
            return response.status, body
        assert response.status == 200
        await asyncio.sleep(0.05)
    raise AssertionError("the default pipeline never finished loading")


async def test_health_reports_the_loaded_default_pipeline(
    demo_assets: DemoAssets, tmp_path: Path
) -> None:
    config = WorkerConfig(cache_dir=tmp_path / "cache", execution_provider="cpu")
    app = create_app(config, str(demo_assets.mpta_path))
    async with TestClient(TestServer(app)) as client:
        status, body = await _health_once_loaded(client)
        ready = await client.get("/health/ready")
        assert ready.status == 200
    assert status == 200
    assert body["status"] == "IDLE"
    assert body["execution_provider"] == "CPUExecutionProvider"
    assert body["models_loaded"] == 2
    assert body["subscriptions"] == 0


async def test_health_says_error_with_200_when_the_pipeline_is_broken(tmp_path: Path) -> None:
    config = WorkerConfig(cache_dir=tmp_path / "cache", execution_provider="cpu")
    app = create_app(config, str(tmp_path / "missing.mpta"))
    async with TestClient(TestServer(app)) as client:
        status, body = await _health_once_loaded(client)
        live = await client.get("/health/live")
        assert live.status == 200
    assert status == 200  # as pytrickle's StreamServer: the state is in the body
    assert body["status"] == "ERROR" and body["healthy"] is False
    assert "missing.mpta" in body["error_message"]
