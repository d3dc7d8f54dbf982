"""ONNX Runtime inference layer: providers, preprocessing, output decoding, models, registry."""

from pytrickle_worker.engine.inference.imageops import (
    LetterboxBuffer,
    LetterboxInfo,
    crop,
    letterbox,
    resize_center_crop,
    scale_boxes_to_frame,
)
from pytrickle_worker.engine.inference.metadata import ModelMetadata, parse_metadata
from pytrickle_worker.engine.inference.model import (
    Classification,
    ModelInfo,
    OnnxModel,
    StageTimings,
)
from pytrickle_worker.engine.inference.postprocess import (
    Detections,
    OutputContract,
    decode_classification,
    decode_detections,
    infer_contract,
    nms,
)
from pytrickle_worker.engine.inference.providers import (
    ProviderChoice,
    ProviderUnavailableError,
    select_providers,
)
from pytrickle_worker.engine.inference.registry import ModelRegistry

__all__ = [
    "Classification",
    "Detections",
    "LetterboxBuffer",
    "LetterboxInfo",
    "ModelInfo",
    "ModelMetadata",
    "ModelRegistry",
    "OnnxModel",
    "OutputContract",
    "ProviderChoice",
    "ProviderUnavailableError",
    "StageTimings",
    "crop",
    "decode_classification",
    "decode_detections",
    "infer_contract",
    "letterbox",
    "nms",
    "parse_metadata",
    "resize_center_crop",
    "scale_boxes_to_frame",
    "select_providers",
]
