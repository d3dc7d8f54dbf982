"""Command line: ``pytrickle-worker serve | mpta inspect|run|convert | demo build|camera|publish
| trickle-server``. --config and --log-level go before or after the subcommand."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.core.errors import MissingDependencyError, WorkerError
from pytrickle_worker.core.logutil import mask_text, mask_url, setup_logging

if TYPE_CHECKING:
    from pytrickle_worker.frontdoors.cms.protocol import SubscribePayload

logger = logging.getLogger(__name__)

_DESCRIPTION = (
    "The pytrickle-worker video-analytics worker and its tools. --config FILE and "
    "--log-level LEVEL are accepted before or after the subcommand; every setting can also "
    "be given as a PTW_* environment variable (see the README)."
)


def _global_options(*, suppress: bool) -> argparse.ArgumentParser:
    """``--config`` and ``--log-level``, accepted before and after every subcommand.

    Subcommand parsers get them with ``SUPPRESS`` defaults, so an option given before the
    subcommand is not reset by the subcommand's parser."""
    default = argparse.SUPPRESS if suppress else None
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--config",
        type=Path,
        default=default,
        metavar="FILE",
        help="JSON config file (default: ./config.json when present; PTW_* env vars override)",
    )
    options.add_argument(
        "--log-level", default=default, metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR"
    )
    return options


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pytrickle-worker", description=_DESCRIPTION, parents=[_global_options(suppress=False)]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    common = [_global_options(suppress=True)]

    serve = commands.add_parser(
        "serve", parents=common, help="run the worker (HTTP/WebSocket on port 8000)"
    )
    serve.add_argument("--host", help="listen address (default 0.0.0.0; PTW_HOST)")
    serve.add_argument("--port", type=int, help="listen port (default 8000; PTW_PORT)")
    serve.add_argument(
        "--pipeline",
        metavar="SOURCE",
        help=(
            "MPTA preloaded for the stream API: path, file:// or http(s):// URL (default: the "
            "demo pipeline, generated on first start; needs the 'demo' extra)"
        ),
    )
    serve.add_argument("--no-demo", action="store_true", help="start without a preloaded pipeline")
    serve.add_argument(
        "--demo-camera",
        action=argparse.BooleanOptionalAction,
        default=False,
        help=(
            "analyse the demo sample video as camera 'demo;sample' (a local CMS subscription "
            "with the demo pipeline), so /live shows something at once; scripts/run.sh turns "
            "it on, --no-demo-camera turns it off"
        ),
    )

    mpta = commands.add_parser("mpta", parents=common, help="inspect, run or convert MPTA archives")
    mpta_commands = mpta.add_subparsers(dest="mpta_command", required=True)
    inspect = mpta_commands.add_parser(
        "inspect", parents=common, help="validate an archive and print its tree"
    )
    inspect.add_argument("archive", metavar="FILE_OR_URL", help="path, file:// or http(s):// URL")
    inspect.add_argument("--json", action="store_true", help="print the description as JSON")

    run = mpta_commands.add_parser(
        "run", parents=common, help="run a pipeline on an image or video"
    )
    run.add_argument("archive", metavar="FILE_OR_URL", help="path, file:// or http(s):// URL")
    run.add_argument(
        "--source",
        required=True,
        metavar="PATH_OR_URL",
        help="image/video path or URL (rtsp, http)",
    )
    run.add_argument("--frames", type=int, metavar="N", help="stop after N processed frames")
    run.add_argument("--fps", type=float, metavar="F", help="sample at most F frames per second")
    run.add_argument("--json", action="store_true", help="one JSON object per frame on stdout")
    run.add_argument("--actions", action="store_true", help="also run the pipeline's Redis actions")

    convert = mpta_commands.add_parser(
        "convert", parents=common, help="export .pt models inside to ONNX"
    )
    convert.add_argument("input", type=Path, metavar="IN.mpta")
    convert.add_argument("output", type=Path, metavar="OUT.mpta")

    trickle = commands.add_parser(
        "trickle-server",
        parents=common,
        help="a local trickle server (go-livepeer wire behaviour) for tests/demos",
    )
    trickle.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    trickle.add_argument("--port", type=int, default=3389, help="listen port (default 3389)")
    trickle.add_argument(
        "--autocreate-on-get",
        action="store_true",
        help="also create channels on GET (default: only POST creates, as go-livepeer)",
    )

    demo = commands.add_parser("demo", parents=common, help="demo assets")
    demo_commands = demo.add_subparsers(dest="demo_command", required=True)
    build = demo_commands.add_parser(
        "build", parents=common, help="generate demo models, MPTA and video"
    )
    build.add_argument(
        "out_dir",
        type=Path,
        nargs="?",
        metavar="OUT_DIR",
        help="default: the worker's demo folder (PTW_DEMO_DIR, else <PTW_CACHE_DIR>/demo)",
    )
    camera = demo_commands.add_parser(
        "camera",
        parents=common,
        help="serve a video as a looping live MPEG-TS camera at /stream.ts",
    )
    camera.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    camera.add_argument("--port", type=int, default=8080, help="listen port (default 8080)")
    camera.add_argument(
        "--video",
        type=Path,
        metavar="FILE",
        help="H.264/HEVC file (default: the demo sample.mp4, made if missing)",
    )
    publish = demo_commands.add_parser(
        "publish",
        parents=common,
        help="publish a video to a trickle channel as live segments (a demo gateway)",
    )
    publish.add_argument(
        "url", metavar="URL", help="trickle channel URL, e.g. http://127.0.0.1:3389/demo"
    )
    publish.add_argument(
        "--video", type=Path, metavar="FILE", help="video file (default: the demo sample.mp4)"
    )
    publish.add_argument(
        "--loops", type=int, metavar="N", help="passes over the video (default: forever)"
    )
    return parser


def _load_config(args: argparse.Namespace) -> WorkerConfig:
    config = WorkerConfig.load(args.config)
    overrides: dict[str, Any] = {}
    if args.log_level:
        overrides["log_level"] = args.log_level.upper()
    for name in ("host", "port"):
        value = getattr(args, name, None) if args.command == "serve" else None
        if value is not None:
            overrides[name] = value
    if overrides:
        config = WorkerConfig.model_validate({**config.model_dump(), **overrides})
    return config


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        config = _load_config(args)
    except WorkerError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    setup_logging(config.log_level, config.log_format)
    try:
        if args.command == "serve":
            return _serve(config, args)
        if args.command == "trickle-server":
            return _trickle_server(args)
        if args.command == "demo" and args.demo_command == "camera":
            return _demo_camera(config, args)
        if args.command == "demo" and args.demo_command == "publish":
            return _demo_publish(config, args)
        if args.command == "demo":
            return _demo_build(config, args.out_dir)
        if args.mpta_command == "inspect":
            return asyncio.run(_inspect(config, args.archive, args.json, sys.stdout))
        if args.mpta_command == "run":
            return asyncio.run(_run(config, args, sys.stdout))
        return _convert(args.input, args.output)
    except WorkerError as exc:
        sys.stderr.write(f"error: {mask_text(str(exc))}\n")
        return 1
    except KeyboardInterrupt:
        return 130


@dataclass(frozen=True)
class _Preload:
    """What ``serve`` preloads: the MPTA source, and the demo video when it is the demo's."""

    source: str | None
    demo_video: Path | None = None


def _default_pipeline(config: WorkerConfig, args: argparse.Namespace) -> _Preload:
    """The MPTA ``serve`` preloads, and one log line that says which and why.

    Without ``--pipeline`` it is the demo pipeline, generated on first start. Generating it
    needs the optional ``onnx`` package: a plain ``pip install pytrickle-worker`` serves
    without a preloaded pipeline and says how to get the demo."""
    if args.pipeline is not None:
        logger.info("preloading the pipeline %s (--pipeline)", mask_url(args.pipeline))
        return _Preload(str(args.pipeline))
    if args.no_demo:
        logger.info("no pipeline preloaded (--no-demo)")
        return _Preload(None)
    from pytrickle_worker.devtools.assets import build_demo_assets  # noqa: PLC0415

    try:
        assets = build_demo_assets(config.resolved_demo_dir)
    except MissingDependencyError:
        logger.warning(
            "no pipeline preloaded: the demo pipeline is generated with the optional 'onnx' "
            "package, which is not installed; to get the demo: pip install "
            "'pytrickle-worker[demo]' (or bash scripts/run.sh in a checkout); "
            "--pipeline SOURCE preloads your own MPTA, --no-demo silences this line"
        )
        return _Preload(None)
    logger.info(
        "preloading the demo pipeline %s (camera video %s); "
        "--pipeline SOURCE preloads your own MPTA, --no-demo starts without one",
        assets.mpta_path,
        assets.video_path,
    )
    return _Preload(str(assets.mpta_path), assets.video_path)


#: The run command's demo camera: its CMS subscription identifier (display;camera), so the
#: live page shows it as label "demo", key "sample".
DEMO_CAMERA_ID = "demo;sample"


def _demo_camera_subscriptions(
    preload: _Preload, args: argparse.Namespace
) -> list[SubscribePayload]:
    from pytrickle_worker.frontdoors.cms.protocol import SubscribePayload  # noqa: PLC0415

    if not args.demo_camera:
        return []
    if preload.source is None or preload.demo_video is None:
        logger.warning(
            "--demo-camera needs the demo pipeline (not with --pipeline or --no-demo): no "
            "demo camera"
        )
        return []
    logger.info(
        "demo camera %s: the sample video %s through the demo pipeline (--no-demo-camera "
        "turns it off)",
        DEMO_CAMERA_ID,
        preload.demo_video,
    )
    payload = SubscribePayload.model_validate(
        {
            "subscriptionIdentifier": DEMO_CAMERA_ID,
            "rtspUrl": str(preload.demo_video),
            "modelUrl": preload.source,
            "modelId": 1,
            "modelName": "demo",
        }
    )
    return [payload]


def _trickle_server(args: argparse.Namespace) -> int:
    from pytrickle_worker.devtools.trickle_server import (  # noqa: PLC0415
        TrickleServer,
        run_trickle_server,
    )

    run_trickle_server(
        args.host, args.port, server=TrickleServer(autocreate_on_get=args.autocreate_on_get)
    )
    return 0


def _demo_build(config: WorkerConfig, out_dir: Path | None) -> int:
    from pytrickle_worker.devtools.assets import build_demo_assets  # noqa: PLC0415 - needs onnx

    assets = build_demo_assets(out_dir or config.resolved_demo_dir)
    sys.stdout.write(f"demo MPTA:    {assets.mpta_path}\nsample video: {assets.video_path}\n")
    return 0


def _demo_video(config: WorkerConfig, given: Path | None) -> Path:
    """``--video``, or the demo sample video (generated when missing; PyAV only)."""
    if given is not None:
        return given
    from pytrickle_worker.devtools.assets import VIDEO_FILE, write_sample_video  # noqa: PLC0415

    video = config.resolved_demo_dir / VIDEO_FILE
    if not video.is_file():
        write_sample_video(video)
    return video


def _demo_camera(config: WorkerConfig, args: argparse.Namespace) -> int:
    from pytrickle_worker.devtools.camera import run_camera  # noqa: PLC0415

    run_camera(args.host, args.port, _demo_video(config, args.video))
    return 0


def _demo_publish(config: WorkerConfig, args: argparse.Namespace) -> int:
    from pytrickle_worker.devtools.publish import publish_video  # noqa: PLC0415

    video = _demo_video(config, args.video)
    # Ctrl-C cancels the publisher, which DELETEs its channel on the way out.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(publish_video(args.url, video, loops=args.loops))
    return 0


def _serve(config: WorkerConfig, args: argparse.Namespace) -> int:
    from pytrickle_worker.server.app import create_app  # noqa: PLC0415 - keep `mpta` light
    from pytrickle_worker.server.shutdown import serve  # noqa: PLC0415

    preload = _default_pipeline(config, args)
    app = create_app(config, preload.source, _demo_camera_subscriptions(preload, args))
    return asyncio.run(serve(app, config.host, config.port, config.shutdown_timeout_s))


async def _inspect(config: WorkerConfig, source: str, as_json: bool, out: TextIO) -> int:
    from pytrickle_worker.engine.inference.batching import describe_batch  # noqa: PLC0415
    from pytrickle_worker.engine.mpta.service import PipelineService  # noqa: PLC0415

    async with PipelineService(config) as service:
        pipeline = await service.load(source)
        try:
            description: dict[str, Any] = {
                "source": mask_url(source),
                "sha256": pipeline.sha256,
                "provider": service.providers.describe(),
                "redis": (
                    {
                        "host": pipeline.redis.host,
                        "port": pipeline.redis.port,
                        "db": pipeline.redis.db,
                    }
                    if pipeline.redis
                    else None
                ),
                "nodes": [
                    {
                        "path": node.path,
                        "modelId": node.spec.model_id,
                        "modelFile": node.spec.model_file,
                        "task": node.model.info.task,
                        "contract": node.model.info.contract.value,
                        "input": {
                            "name": node.model.info.input_name,
                            "size": list(node.model.info.input_size),
                        },
                        "classes": list(node.model.info.names),
                        # dynamic: any batch up to max (PTW_MAX_BATCH); else max is fixed.
                        "batch": {
                            "dynamic": node.model.info.batch is None,
                            "max": node.model.max_batch,
                            "text": describe_batch(node.model.info.batch, node.model.max_batch),
                        },
                        "minConfidence": node.spec.min_confidence,
                        "triggerClasses": list(node.spec.trigger_classes),
                        "crop": node.spec.crop,
                        "actions": [a.type for a in node.spec.actions],
                    }
                    for node in pipeline.nodes()
                ],
            }
        finally:
            await service.release(pipeline)
    if as_json:
        out.write(json.dumps(description, indent=2) + "\n")
        return 0
    out.write(f"archive  {description['source']}\nsha256   {pipeline.sha256}\n")
    out.write(f"provider {description['provider']}\n")
    redis = description["redis"]
    redis_text = f"{redis['host']}:{redis['port']}/{redis['db']}" if redis else "-"
    out.write(f"redis    {redis_text}\n")
    for node in description["nodes"]:
        depth = node["path"].count(".branches[")
        indent = "  " * depth
        classes: list[str] = node["classes"]
        shown = ", ".join(classes[:10]) + (
            f", … ({len(classes)} total)" if len(classes) > 10 else ""
        )
        out.write(
            f"{indent}- {node['modelId']}  [{node['path']}]\n"
            f"{indent}    model     {node['modelFile']}  task={node['task']} "
            f"contract={node['contract']}\n"
            f"{indent}    input     {node['input']['name']} {node['input']['size']}\n"
            f"{indent}    batch     {node['batch']['text']}\n"
            f"{indent}    classes   {shown}\n"
            f"{indent}    trigger   {node['triggerClasses']}  minConfidence={node['minConfidence']}"
            f"  crop={node['crop']}\n"
            f"{indent}    actions   {node['actions'] or '-'}\n"
        )
    return 0


async def _run(config: WorkerConfig, args: argparse.Namespace, out: TextIO) -> int:
    from pytrickle_worker.engine.mpta.service import PipelineService  # noqa: PLC0415
    from pytrickle_worker.engine.tracking.bytetrack import TrackerState  # noqa: PLC0415
    from pytrickle_worker.media.decode import iter_frames  # noqa: PLC0415

    async with PipelineService(config) as service:
        pipeline = await service.load(args.archive)
        try:
            frames = iter_frames(args.source, fps=args.fps, max_frames=args.frames)
            tracker = TrackerState(frame_rate=args.fps or 30.0)
            while True:
                decoded = await asyncio.to_thread(next, frames, None)
                if decoded is None:
                    break
                if decoded.index == 0 and decoded.stream_fps > 0:
                    # The tracker's lost-track timeout needs the rate frames really arrive at.
                    tracker.set_frame_rate(min(args.fps or decoded.stream_fps, decoded.stream_fps))
                result = await service.process(
                    pipeline, decoded.rgb, tracker, run_actions=args.actions
                )
                if args.json:
                    record = {"frame": decoded.index, "pts_time": round(decoded.pts_time, 4)}
                    record.update(result.to_json())
                    out.write(json.dumps(record) + "\n")
                else:
                    det = result.detection
                    summary = (
                        f"{det['class']} {det['confidence']:.3f} id={det['id']} bbox={result.bbox}"
                        if det
                        else "-"
                    )
                    out.write(f"frame {decoded.index:5d} t={decoded.pts_time:8.3f}s  {summary}\n")
                out.flush()
        finally:
            await service.release(pipeline)
    return 0


def _convert(source: Path, target: Path) -> int:
    from pytrickle_worker.engine.mpta.convert import convert_archive  # noqa: PLC0415

    convert_archive(source, target)
    sys.stdout.write(f"wrote {target}\n")
    return 0
