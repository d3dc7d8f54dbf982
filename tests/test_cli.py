"""The command line, run as a user runs it: a subprocess on real files and a real HTTP server."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from pytrickle_worker.devtools.assets import DemoAssets
from pytrickle_worker.devtools.synthetic import moving_objects
from tests.media_fixtures import RtspServer

SAMPLE_FPS = 15.0
SAMPLE_SIZE = (640, 360)


def cli_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PTW_CACHE_DIR": str(tmp_path / "cache"),
        "PTW_EXECUTION_PROVIDER": "cpu",
        "PTW_LOG_LEVEL": "WARNING",
    }


async def run_cli(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """``pytrickle-worker ARGS`` in a subprocess; ``env`` adds to :func:`cli_env`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pytrickle_worker",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**cli_env(tmp_path), **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def archive_server(demo_assets: DemoAssets, tmp_path: Path) -> AsyncIterator[str]:
    broken = tmp_path / "broken.mpta"
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("broken/pipeline.json", '{"pipeline": {"modelId": "x"}}')
    files = {"demo.mpta": demo_assets.mpta_path, "broken.mpta": broken}

    async def serve_file(request: web.Request) -> web.StreamResponse:
        path = files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    app = web.Application()
    app.router.add_get("/models/{name}", serve_file)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/models"
    await runner.cleanup()


async def test_mpta_run_prints_correct_detections_on_the_sample_video(
    demo_assets: DemoAssets, tmp_path: Path
) -> None:
    code, out, err = await run_cli(
        tmp_path,
        "mpta",
        "run",
        str(demo_assets.mpta_path),
        "--source",
        str(demo_assets.video_path),
        "--fps",
        "5",
        "--frames",
        "12",
        "--json",
    )
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 12
    assert [r["frame"] for r in records] == list(range(12))
    times = [r["pts_time"] for r in records]
    assert all(b - a == pytest.approx(0.2, abs=0.07) for a, b in itertools.pairwise(times))
    ids: set[int] = set()
    for record in records:
        assert set(record) == {"frame", "pts_time", "detection", "bbox", "nodes"}
        detection = record["detection"]
        assert detection is not None
        assert set(detection) == {"class", "confidence", "id"}
        # The car wins (the truck is drawn less confident) and its badge is classified.
        assert detection["class"] == "yellow"
        ids.add(detection["id"])
        index = round(record["pts_time"] * SAMPLE_FPS)
        car = moving_objects(index, *SAMPLE_SIZE, SAMPLE_FPS)[0]
        assert car.class_name == "car"
        assert np.allclose(record["bbox"], car.box, atol=4), (record, car.box)
        assert [n["modelId"] for n in record["nodes"]] == [
            "demo-vehicle-detector",
            "demo-badge-classifier",
        ]
        assert record["nodes"][0]["class"] == "car"
    assert ids == {1}


async def test_mpta_run_on_a_missing_source_fails_clearly(
    demo_assets: DemoAssets, tmp_path: Path
) -> None:
    code, _, err = await run_cli(
        tmp_path, "mpta", "run", str(demo_assets.mpta_path), "--source", str(tmp_path / "nope.mp4")
    )
    assert code == 1
    assert "nope.mp4" in err and "does not exist" in err


async def test_mpta_inspect_over_http(archive_server: str, tmp_path: Path) -> None:
    code, out, err = await run_cli(tmp_path, "mpta", "inspect", f"{archive_server}/demo.mpta")
    assert code == 0, err
    assert "demo-vehicle-detector" in out and "demo-badge-classifier" in out
    assert "contract=yolov8" in out.replace("-", "").lower() or "yolov8" in out.lower()
    assert "CPUExecutionProvider" in out
    assert "car" in out and "yellow" in out
    # The demo models have a dynamic batch; on the CPU the default max_batch is 1.
    assert out.count("batch     dynamic (up to 1)\n") == 2

    code, out, err = await run_cli(
        tmp_path, "mpta", "inspect", "--json", f"{archive_server}/demo.mpta"
    )
    assert code == 0, err
    description = json.loads(out)
    assert [n["path"] for n in description["nodes"]] == ["pipeline", "pipeline.branches[0]"]
    assert description["nodes"][1]["classes"] == ["white", "yellow", "black"]
    assert description["nodes"][0]["batch"] == {
        "dynamic": True,
        "max": 1,
        "text": "dynamic (up to 1)",
    }


async def test_mpta_inspect_shows_whether_each_model_can_batch(tmp_path: Path) -> None:
    from pytrickle_worker.devtools.assets import build_mpta  # noqa: PLC0415
    from pytrickle_worker.devtools.models import (  # noqa: PLC0415
        build_colour_classifier,
        build_colour_detector,
    )

    models = tmp_path / "models"
    models.mkdir()
    files = {
        "fixed4.onnx": build_colour_detector(models / "fixed4.onnx", "v8", (160, 224), batch=4),
        "single.onnx": build_colour_classifier(models / "single.onnx", 64, batch=1),
        "dynamic.onnx": build_colour_classifier(models / "dynamic.onnx", 64, batch=None),
    }

    def node(model_id: str, model_file: str, **extra: object) -> dict[str, object]:
        return {
            "modelId": model_id,
            "modelFile": model_file,
            "minConfidence": 0.5,
            "triggerClasses": ["car"],
            **extra,
        }

    pipeline = node(
        "det",
        "fixed4.onnx",
        branches=[node("one", "single.onnx", crop=True), node("dyn", "dynamic.onnx", crop=True)],
    )
    archive = build_mpta(tmp_path / "batches.mpta", {"pipeline": pipeline}, files)
    env = {"PTW_MAX_BATCH": "8"}
    code, out, err = await run_cli(tmp_path, "mpta", "inspect", str(archive), env=env)
    assert code == 0, err
    batch_lines = [line.strip() for line in out.splitlines() if line.strip().startswith("batch ")]
    assert batch_lines == [
        "batch     fixed 4",
        "batch     1 (cannot batch; export with dynamic=True)",
        "batch     dynamic (up to 8)",
    ]

    code, out, err = await run_cli(tmp_path, "mpta", "inspect", "--json", str(archive), env=env)
    assert code == 0, err
    batches = {n["modelId"]: n["batch"] for n in json.loads(out)["nodes"]}
    assert batches == {
        "det": {"dynamic": False, "max": 4, "text": "fixed 4"},
        "one": {
            "dynamic": False,
            "max": 1,
            "text": "1 (cannot batch; export with dynamic=True)",
        },
        "dyn": {"dynamic": True, "max": 8, "text": "dynamic (up to 8)"},
    }


async def test_mpta_inspect_reports_problems_with_exit_1(
    archive_server: str, tmp_path: Path
) -> None:
    code, _, err = await run_cli(tmp_path, "mpta", "inspect", f"{archive_server}/broken.mpta")
    assert code == 1
    assert "pipeline.modelFile" in err and "pipeline.minConfidence" in err

    code, _, err = await run_cli(tmp_path, "mpta", "inspect", f"{archive_server}/absent.mpta")
    assert code == 1
    assert "404" in err

    code, _, err = await run_cli(
        tmp_path, "mpta", "inspect", "http://user:hunter2@127.0.0.1:9/x.mpta"
    )
    assert code == 1
    assert "hunter2" not in err and "127.0.0.1:9" in err


def pt_archive(path: Path) -> Path:
    """An MPTA whose detector is a PyTorch checkpoint (``d.pt``), for ``mpta convert``."""
    pipeline = {
        "pipeline": {
            "modelId": "d",
            "modelFile": "d.pt",
            "minConfidence": 0.5,
            "triggerClasses": ["car"],
        }
    }
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("pt/pipeline.json", json.dumps(pipeline))
        archive.writestr("pt/d.pt", b"weights")
    return path


async def test_mpta_convert_without_ultralytics_explains_the_extra(
    demo_assets: DemoAssets, tmp_path: Path
) -> None:
    pt_archive(tmp_path / "pt.mpta")
    code, _, err = await run_cli(
        tmp_path, "mpta", "convert", str(tmp_path / "pt.mpta"), str(tmp_path / "out.mpta")
    )
    if "ultralytics" in sys.modules or _has_ultralytics():
        pytest.skip("ultralytics is installed here; the error path cannot be exercised")
    assert code == 1
    assert "pytrickle-worker[convert]" in err
    assert not (tmp_path / "out.mpta").exists()


#: A stand-in for ultralytics (the optional extra, not installed in the test venv): it records
#: how ``mpta convert`` calls ``YOLO(path).export(...)`` and writes a real ONNX model where
#: ultralytics would (next to the weights), as ultralytics' ``dynamic=True`` export shapes it.
FAKE_ULTRALYTICS = """
import json, os, shutil
from pathlib import Path


class YOLO:
    def __init__(self, model):
        self.model = model

    def export(self, **kwargs):
        with open(os.environ["FAKE_ULTRALYTICS_CALLS"], "a") as calls:
            calls.write(json.dumps({"model": Path(self.model).name, "kwargs": kwargs}) + "\\n")
        out = Path(self.model).with_suffix(".onnx")
        shutil.copyfile(os.environ["FAKE_ULTRALYTICS_ONNX"], out)
        return str(out)
"""


def ultralytics_dynamic_export(path: Path) -> Path:
    """A colour detector shaped like ultralytics' ``export(dynamic=True)``: input
    ``[batch, 3, height, width]`` (the size only in the metadata's ``imgsz``)."""
    import onnx  # noqa: PLC0415

    from pytrickle_worker.devtools.models import build_colour_detector  # noqa: PLC0415

    model = onnx.load(str(build_colour_detector(path, "v8", (160, 224), batch=None)))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    onnx.save(model, str(path))
    return path


async def test_mpta_convert_exports_with_a_dynamic_batch(tmp_path: Path) -> None:
    """What convert asks of ultralytics, through the real CLI (only ultralytics is a
    stand-in), and that the worker takes the result: a batchable model."""
    fake = tmp_path / "fake" / "ultralytics"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(FAKE_ULTRALYTICS)
    calls = tmp_path / "calls.jsonl"
    source = pt_archive(tmp_path / "pt.mpta")
    env = {
        "PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")]),
        "FAKE_ULTRALYTICS_CALLS": str(calls),
        "FAKE_ULTRALYTICS_ONNX": str(ultralytics_dynamic_export(tmp_path / "exported.onnx")),
        "PTW_MAX_BATCH": "4",
    }
    target = tmp_path / "out.mpta"
    code, _, err = await run_cli(tmp_path, "mpta", "convert", str(source), str(target), env=env)
    assert code == 0, err
    exports = [json.loads(line) for line in calls.read_text().splitlines()]
    assert exports == [{"model": "d.pt", "kwargs": {"format": "onnx", "dynamic": True}}]
    with zipfile.ZipFile(target) as archive:
        names = sorted(archive.namelist())
        manifest = json.loads(archive.read("out/pipeline.json"))
    assert names == ["out/d.onnx", "out/pipeline.json"]
    assert manifest["pipeline"]["modelFile"] == "d.onnx"

    code, out, err = await run_cli(tmp_path, "mpta", "inspect", "--json", str(target), env=env)
    assert code == 0, err
    (node,) = json.loads(out)["nodes"]
    assert node["input"]["size"] == [160, 224]  # dynamic H/W: the metadata's imgsz
    assert node["batch"] == {"dynamic": True, "max": 4, "text": "dynamic (up to 4)"}


def _has_ultralytics() -> bool:
    import importlib.util  # noqa: PLC0415

    return importlib.util.find_spec("ultralytics") is not None


async def test_mpta_run_on_a_still_image(demo_assets: DemoAssets, tmp_path: Path) -> None:
    from pytrickle_worker.devtools.synthetic import SceneObject, render_scene  # noqa: PLC0415
    from pytrickle_worker.media.jpeg import encode_jpeg  # noqa: PLC0415

    truck = SceneObject("truck", (300, 200, 500, 330))
    image = tmp_path / "still.jpg"
    image.write_bytes(encode_jpeg(render_scene(800, 450, [truck]), 95))
    code, out, err = await run_cli(
        tmp_path, "mpta", "run", str(demo_assets.mpta_path), "--source", str(image), "--json"
    )
    assert code == 0, err
    (record,) = [json.loads(line) for line in out.splitlines()]
    # A truck has no branch in the demo pipeline: the detector's own result is final.
    assert record["detection"]["class"] == "truck"
    assert np.allclose(record["bbox"], truck.box, atol=3)
    assert len(record["nodes"]) == 1


async def test_mpta_run_against_an_rtsp_camera(
    demo_assets: DemoAssets, tmp_path: Path, rtsp_server_factory: Callable[..., RtspServer]
) -> None:
    camera = rtsp_server_factory(source="file", file=str(demo_assets.video_path), fps=15)
    code, out, err = await run_cli(
        tmp_path,
        "mpta",
        "run",
        str(demo_assets.mpta_path),
        "--source",
        camera.url,
        "--fps",
        "5",
        "--frames",
        "6",
        "--json",
    )
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 6
    # The looping sample video: the badged car is always in view and wins.
    assert all(r["detection"]["class"] == "yellow" for r in records)
    assert {r["detection"]["id"] for r in records} == {1}
    assert camera.sessions_total == 1
