"""``mpta convert``: export the PyTorch models inside an archive to ONNX.

Needs ultralytics (the optional ``convert`` extra); the worker itself never does.

Models are exported with a dynamic batch axis (:data:`EXPORT_ARGS`), so that the worker can
run the frames of several streams in one ``session.run`` (cross-stream batching). ultralytics'
``dynamic=True`` makes the input's height and width dynamic too (it has no batch-only
option); the worker then takes the input size from the ``imgsz`` ultralytics writes into the
model's metadata (the size the model was trained at, which the export keeps by default).
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Final, cast

from pytrickle_worker.core.errors import MptaError
from pytrickle_worker.engine.mpta.archive import ArchiveLimits, extract_archive
from pytrickle_worker.engine.mpta.spec import iter_nodes, parse_pipeline_json

logger = logging.getLogger(__name__)

PYTORCH_SUFFIXES = (".pt", ".pth")
#: ``YOLO(path).export(**EXPORT_ARGS)``: ONNX with a dynamic batch axis (see the module doc).
EXPORT_ARGS: Final[dict[str, object]] = {"format": "onnx", "dynamic": True}


def _load_exporter() -> Any:
    try:
        module = importlib.import_module("ultralytics")
    except ImportError as exc:
        raise MptaError(
            "mpta convert needs ultralytics to export .pt models: "
            "pip install 'pytrickle-worker[convert]' (it is not needed to serve)"
        ) from exc
    return module.YOLO


def _rewrite_model_files(node: dict[str, Any], renamed: dict[str, str]) -> None:
    model_file = node.get("modelFile")
    if isinstance(model_file, str) and model_file in renamed:
        node["modelFile"] = renamed[model_file]
    branches: object = node.get("branches")
    if isinstance(branches, list):
        for child in cast(list[object], branches):
            if isinstance(child, dict):
                _rewrite_model_files(cast(dict[str, Any], child), renamed)


def convert_archive(source: Path, target: Path, limits: ArchiveLimits | None = None) -> Path:
    if not source.is_file():
        raise MptaError(f"{source} is not a file")
    with tempfile.TemporaryDirectory(prefix="mpta-convert-") as tmp:
        root = extract_archive(
            source, Path(tmp) / "x", limits or ArchiveLimits(), archive_stem=source.stem
        )
        spec = parse_pipeline_json((root / "pipeline.json").read_bytes())
        pytorch = sorted(
            {
                node.model_file
                for _, node in iter_nodes(spec.pipeline)
                if node.model_file.lower().endswith(PYTORCH_SUFFIXES)
            }
        )
        renamed: dict[str, str] = {}
        if pytorch:
            yolo = _load_exporter()
            for model_file in pytorch:
                logger.info("exporting %s to ONNX", model_file)
                exported = Path(yolo(str(root / model_file)).export(**EXPORT_ARGS))
                onnx_name = str(Path(model_file).with_suffix(".onnx"))
                shutil.move(exported, root / onnx_name)
                renamed[model_file] = onnx_name
        else:
            logger.info("%s holds no PyTorch models; copying it unchanged", source)
        raw: dict[str, Any] = json.loads((root / "pipeline.json").read_text(encoding="utf-8"))
        _rewrite_model_files(raw["pipeline"], renamed)
        (root / "pipeline.json").write_text(json.dumps(raw, indent=2), encoding="utf-8")
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(root.rglob("*")):
                if path.is_file() and str(path.relative_to(root)) not in renamed:
                    archive.write(path, f"{target.stem}/{path.relative_to(root)}")
    return target
