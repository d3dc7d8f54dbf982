"""Demo assets: the demo MPTA (detector + badge classifier) and a sample video.

``build_demo_assets(out_dir)`` writes, into ``out_dir``:

* ``detector.onnx`` -- the colour detector, v8 contract, 640x640 input;
* ``classifier.onnx`` -- the badge-colour classifier, 64x64 input;
* ``demo.mpta`` -- a zip with ``demo/pipeline.json`` and both models inside a
  single top-level folder ``demo/`` (like the archives users make); its bytes
  are the same on every build;
* ``sample.mp4`` -- 10 s of :func:`~pytrickle_worker.devtools.synthetic.moving_objects`,
  H.264 (libx264, yuv420p) 640x360 at 15 fps.

Building the models needs the optional ``onnx`` package; importing this module
does not. A stamp file records the asset version, and a later call with all
outputs present and the same version returns at once.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

__all__ = [
    "ASSETS_VERSION",
    "SAMPLE_FPS",
    "SAMPLE_HEIGHT",
    "SAMPLE_SECONDS",
    "SAMPLE_WIDTH",
    "ZIP_DATE_TIME",
    "DemoAssets",
    "build_demo_assets",
    "build_mpta",
    "demo_pipeline_json",
    "write_sample_video",
]

logger = logging.getLogger(__name__)

#: Bump whenever the models, the pipeline or the video change, so that stale
#: asset folders get rebuilt. The stamp also holds a hash of the demo package's
#: sources, so a code change rebuilds the assets even if nobody bumps this.
ASSETS_VERSION = "1"
STAMP_NAME = ".demo-assets-version"
_SOURCES = ("synthetic.py", "models.py", "assets.py")

SAMPLE_WIDTH = 640
SAMPLE_HEIGHT = 360
SAMPLE_FPS = 15
SAMPLE_SECONDS = 10

#: Timestamp of every zip entry (the earliest a zip can hold), for reproducible bytes.
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
_ZIP_CREATE_SYSTEM = 3  # Unix, so that the bytes do not depend on the building OS
_FILE_MODE = 0o100644
_DIR_MODE = 0o040755
_MSDOS_DIRECTORY = 0x10

DETECTOR_FILE = "detector.onnx"
CLASSIFIER_FILE = "classifier.onnx"
MPTA_FILE = "demo.mpta"
VIDEO_FILE = "sample.mp4"
MPTA_TOP_FOLDER = "demo"


@dataclass(frozen=True)
class DemoAssets:
    """Paths of the generated demo assets."""

    root: Path
    detector_path: Path
    classifier_path: Path
    mpta_path: Path
    video_path: Path


def demo_pipeline_json() -> dict[str, Any]:
    """The demo ``pipeline.json``: vehicle detector, badge classifier on car crops.

    Message templates use ``{identifier}`` placeholders; the JSON braces around
    them are literal (the action renderer substitutes identifiers only).
    """
    return {
        "redis": {"host": "127.0.0.1", "port": 6379},
        "pipeline": {
            "modelId": "demo-vehicle-detector",
            "modelFile": DETECTOR_FILE,
            "minConfidence": 0.5,
            "triggerClasses": ["car", "truck"],
            "actions": [
                {
                    "type": "redis_publish",
                    "channel": "demo_events",
                    "message": (
                        '{"class":"{class}","confidence":{confidence},"id":{id},'
                        '"model":"demo-vehicle-detector"}'
                    ),
                }
            ],
            "branches": [
                {
                    "modelId": "demo-badge-classifier",
                    "modelFile": CLASSIFIER_FILE,
                    "minConfidence": 0.5,
                    "triggerClasses": ["car"],
                    "crop": True,
                    "actions": [
                        {
                            "type": "redis_save_image",
                            "key": "demo:{class}:{timestamp_ms}:{uuid}",
                            "expire_seconds": 600,
                        },
                        {
                            "type": "redis_publish",
                            "channel": "demo_events",
                            "message": (
                                '{"class":"{class}","confidence":{confidence},'
                                '"id":{id},"image_key":"{image_key}"}'
                            ),
                        },
                    ],
                    "branches": [],
                }
            ],
        },
    }


def _zip_info(name: str, *, directory: bool = False) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
    info.create_system = _ZIP_CREATE_SYSTEM
    if directory:
        info.external_attr = (_DIR_MODE << 16) | _MSDOS_DIRECTORY
        info.compress_type = zipfile.ZIP_STORED
    else:
        info.external_attr = _FILE_MODE << 16
        info.compress_type = zipfile.ZIP_DEFLATED
    return info


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_mpta(
    out_path: Path,
    pipeline_json: Mapping[str, Any] | str | bytes | None,
    files: Mapping[str, bytes | Path],
    top_folder: str | None = None,
) -> Path:
    """Write an MPTA (zip) archive with reproducible bytes and return ``out_path``.

    ``pipeline_json`` is serialised with :func:`json.dumps` when it is a
    mapping, written verbatim when it is ``str``/``bytes`` (to test invalid
    JSON), and left out when ``None`` (to test a missing manifest). ``files``
    maps archive names to contents or to files to read. With ``top_folder``,
    every entry sits under ``top_folder/`` (with a directory entry), as in the
    archives users zip by hand. Names are written verbatim, without any
    validation, so tests can also build hostile archives (``../x``, absolute
    names). Entries keep the given order, ``pipeline.json`` first.
    """
    prefix = f"{top_folder.strip('/')}/" if top_folder else ""
    entries: list[tuple[str, bytes]] = []
    if pipeline_json is not None:
        if isinstance(pipeline_json, bytes):
            manifest = pipeline_json
        elif isinstance(pipeline_json, str):
            manifest = pipeline_json.encode()
        else:
            manifest = (json.dumps(pipeline_json, indent=2) + "\n").encode()
        entries.append((f"{prefix}pipeline.json", manifest))
    for name, content in files.items():
        data = content if isinstance(content, bytes) else Path(content).read_bytes()
        entries.append((f"{prefix}{name}", data))

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        if prefix:
            archive.writestr(_zip_info(prefix, directory=True), b"")
        for name, data in entries:
            archive.writestr(_zip_info(name), data)
    out_path = Path(out_path)
    _atomic_write(out_path, buffer.getvalue())
    return out_path


def write_sample_video(
    path: Path,
    *,
    width: int = SAMPLE_WIDTH,
    height: int = SAMPLE_HEIGHT,
    fps: int = SAMPLE_FPS,
    seconds: float = SAMPLE_SECONDS,
) -> Path:
    """Encode :func:`moving_objects` as H.264 (libx264, yuv420p) MP4 to ``path``.

    Constant frame rate, no B-frames, a keyframe every 2 s; frame ``i`` has
    ``pts = i`` in a ``1/fps`` time base.
    """
    import av  # noqa: PLC0415 - PyAV is heavy; only needed here

    from pytrickle_worker.devtools.synthetic import moving_objects, render_scene  # noqa: PLC0415

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.mp4")
    frames = round(seconds * fps)
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.codec_context.gop_size = 2 * fps
        stream.codec_context.max_b_frames = 0
        stream.codec_context.options = {
            "preset": "veryfast",
            "crf": "20",
            "x264-params": f"keyint={2 * fps}:min-keyint={2 * fps}:scenecut=0:bframes=0",
        }
        for index in range(frames):
            rgb = render_scene(width, height, moving_objects(index, width, height, fps))
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))  # flush the encoder
    os.replace(tmp, path)
    return path


def _assets_in(out_dir: Path) -> DemoAssets:
    return DemoAssets(
        root=out_dir,
        detector_path=out_dir / DETECTOR_FILE,
        classifier_path=out_dir / CLASSIFIER_FILE,
        mpta_path=out_dir / MPTA_FILE,
        video_path=out_dir / VIDEO_FILE,
    )


def _stamp() -> str:
    digest = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in _SOURCES:
        source = here / name
        if source.is_file():
            digest.update(source.read_bytes())
    return f"{ASSETS_VERSION} {digest.hexdigest()[:16]}"


def _is_current(assets: DemoAssets) -> bool:
    stamp = assets.root / STAMP_NAME
    paths = (assets.detector_path, assets.classifier_path, assets.mpta_path, assets.video_path)
    try:
        version = stamp.read_text().strip()
    except OSError:
        return False
    return version == _stamp() and all(p.is_file() for p in paths)


def build_demo_assets(out_dir: Path, *, force: bool = False) -> DemoAssets:
    """Generate the demo models, MPTA and sample video into ``out_dir``.

    Returns at once when the assets are already there for the current
    :data:`ASSETS_VERSION` (unless ``force``). Every file is written atomically
    and the stamp last, so an interrupted build is redone on the next call.
    Raises :class:`~pytrickle_worker.core.errors.MissingDependencyError` when ``onnx`` is
    missing (unless the assets are already there).
    """
    from pytrickle_worker.devtools.graph import require_onnx  # noqa: PLC0415 - with the builders
    from pytrickle_worker.devtools.models import (  # noqa: PLC0415 - needs onnx
        build_colour_classifier,
        build_colour_detector,
    )

    out_dir = Path(out_dir)
    assets = _assets_in(out_dir)
    if not force and _is_current(assets):
        logger.debug("demo assets in %s are up to date", out_dir)
        return assets

    require_onnx()  # before anything is written or logged
    logger.info("building demo assets in %s", out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / STAMP_NAME).unlink(missing_ok=True)
    tmp_models = out_dir / f".models.{os.getpid()}.tmp"
    tmp_models.mkdir(exist_ok=True)
    try:
        # A dynamic batch, so the worker may batch frames of several streams.
        detector = build_colour_detector(tmp_models / DETECTOR_FILE, "v8", (640, 640), batch=None)
        classifier = build_colour_classifier(tmp_models / CLASSIFIER_FILE, 64, batch=None)
        build_mpta(
            assets.mpta_path,
            demo_pipeline_json(),
            {DETECTOR_FILE: detector, CLASSIFIER_FILE: classifier},
            top_folder=MPTA_TOP_FOLDER,
        )
        os.replace(detector, assets.detector_path)
        os.replace(classifier, assets.classifier_path)
    finally:
        for leftover in tmp_models.iterdir():
            leftover.unlink()
        tmp_models.rmdir()
    write_sample_video(assets.video_path)
    (out_dir / STAMP_NAME).write_text(_stamp() + "\n")
    logger.info("demo assets ready: %s, %s", assets.mpta_path, assets.video_path)
    return assets
