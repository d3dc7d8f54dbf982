"""Hand-built ONNX models in the ultralytics export contract.

These models are built node by node with the ``onnx`` package (an optional
dependency: ``pip install 'pytrickle-worker[demo]'``); they are only needed to
generate demo and test assets, never to serve. Every builder is deterministic
(same arguments, same bytes), uses opset 17 with IR version 8, and passes
``onnx.checker.check_model``.

* :func:`build_colour_detector` -- a detector that really responds to image
  content: it finds objects drawn in the class colours of
  :mod:`pytrickle_worker.devtools.synthetic`, with pixel-exact boxes, in the v8
  (``[B, 4+nc, A]``), v5 (``[B, A, 5+nc]``) or end-to-end (``[B, 300, 6]``)
  output layout.
* :func:`build_colour_classifier` -- a badge-colour classifier (``[B, nc]``
  softmax probabilities).
* :func:`build_yolov8n_like` -- the YOLOv8n graph (C2f, SPPF, FPN/PAN neck,
  DFL head) with seeded random weights, for throughput benchmarks.
* :func:`build_model_with_output_shape` -- a model with an arbitrary output
  shape, for "unsupported contract" tests.

Inputs are always ``images``: float32 ``[B, 3, H, W]``, RGB in [0, 1]
(ultralytics preprocessing: letterbox with pad 114, /255, NCHW). The output is
``output0``, ``[B, ...]``. ``B`` is the ``batch`` argument of the first three
builders: 1 by default, a fixed ``N`` for ``batch=N``, or a symbolic dim named
``"batch"`` for ``batch=None`` (a dynamic batch, as ultralytics' ``dynamic=True``
export names it; :func:`build_model_with_output_shape` takes batch 1). Every
image of a batch is computed independently and exactly as alone at batch 1, so
the worker can run frames of several streams in one session.run.
``metadata_props`` carry the keys ultralytics writes, with ``str()`` reprs as
values (``names="{0: 'person', 1: 'car', 2: 'truck'}"``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from pytrickle_worker.devtools.graph import OPSET, Graph, float_info, write_model
from pytrickle_worker.devtools.synthetic import (
    BADGE_COLOURS,
    CLASS_COLOURS,
    CLASSIFIER_NAMES,
    DETECTOR_MASK_THRESHOLD,
    DETECTOR_MIN_PIXELS,
    DETECTOR_NAMES,
    DETECTOR_TAU_UINT8,
    RGB,
)

__all__ = [
    "CLASSIFIER_SOFTMAX_GAIN",
    "COCO_NAMES",
    "DETECTOR_DUPLICATE_SCORE",
    "DETECTOR_DUPLICATE_SHIFT",
    "E2E_MAX_DET",
    "DetectorContract",
    "ModelStats",
    "build_colour_classifier",
    "build_colour_detector",
    "build_model_with_output_shape",
    "build_yolov8n_like",
]

logger = logging.getLogger(__name__)

DetectorContract = Literal["v8", "v5", "e2e"]

#: Rows of the end-to-end output (ultralytics ``max_det``).
E2E_MAX_DET = 300
#: The v8/v5 duplicate candidate of each object is shifted by (dx, dy) pixels...
DETECTOR_DUPLICATE_SHIFT = (2.0, 1.0)
#: ...and scored ``DETECTOR_DUPLICATE_SCORE * score``, so NMS has work to do.
DETECTOR_DUPLICATE_SCORE = 0.9
#: Classifier logits are ``-CLASSIFIER_SOFTMAX_GAIN * distance`` (RGB in [0, 1]).
CLASSIFIER_SOFTMAX_GAIN = 30.0

# Fixed so that builds are byte-for-byte reproducible.
_META_DATE = "2025-01-01T00:00:00.000000"
_META_VERSION = "8.3.0"  # the ultralytics export format these models follow
_META_AUTHOR = "pytrickle-worker"
_META_LICENSE = "Apache-2.0"
_META_DOCS = "https://docs.ultralytics.com/modes/export/"


_COCO_CSV = (
    "person,bicycle,car,motorcycle,airplane,bus,train,truck,boat,traffic light,"
    "fire hydrant,stop sign,parking meter,bench,bird,cat,dog,horse,sheep,cow,elephant,bear,"
    "zebra,giraffe,backpack,umbrella,handbag,tie,suitcase,frisbee,skis,snowboard,"
    "sports ball,kite,baseball bat,baseball glove,skateboard,surfboard,tennis racket,"
    "bottle,wine glass,cup,fork,knife,spoon,bowl,banana,apple,sandwich,orange,broccoli,"
    "carrot,hot dog,pizza,donut,cake,chair,couch,potted plant,bed,dining table,toilet,tv,"
    "laptop,mouse,remote,keyboard,cell phone,microwave,oven,toaster,sink,refrigerator,book,"
    "clock,vase,scissors,teddy bear,hair drier,toothbrush"
)
#: The 80 COCO class names, as in ultralytics' coco.yaml.
COCO_NAMES: list[str] = [str(name) for name in _COCO_CSV.split(",")]


@dataclass(frozen=True)
class ModelStats:
    """Size of a built model: parameter count and GFLOPs (2 x multiply-adds)."""

    params: int
    gflops: float


def _names_dict(names: Sequence[str]) -> dict[int, str]:
    return dict(enumerate(names))


#: The symbolic first dim of inputs and outputs of models built with ``batch=None``.
_BATCH_DIM = "batch"


def _batch_dim(batch: int | None) -> int | str:
    """The first dim of the input and output shapes: ``batch``, or ``"batch"`` for None."""
    if batch is None:
        return _BATCH_DIM
    if batch < 1:
        raise ValueError(f"batch must be a positive int or None (dynamic), got {batch!r}")
    return batch


def _batch_size(g: Graph) -> str:
    """The graph value ``[B]`` (int64): the batch size of ``images`` at run time."""
    return g.op("Shape", "images", start=0, end=1, hint="batch_size")


def _ultralytics_metadata(
    *,
    description: str,
    task: str,
    stride: int,
    imgsz: Sequence[int],
    names: Sequence[str] | None,
    batch: int | None = 1,
    extra: Mapping[str, object] | None = None,
) -> dict[str, str]:
    """metadata_props in ultralytics' exporter order, values as ``str(value)``."""
    # ultralytics writes its export argument ``batch`` both at the top level and in
    # ``args`` (``"batch": self.args.batch``). A fixed export traces that batch into the
    # graph, so a fixed N writes N. A dynamic export (``dynamic=True``) keeps the batch
    # argument (default 1: the dummy input it traces with) and sets ``args["dynamic"]``;
    # the graph's batch axis is then the symbolic "batch". So batch=None writes
    # ``batch=1, dynamic=True`` like ``model.export(format="onnx", dynamic=True)``.
    # (That export also makes height and width dynamic; these models keep them fixed,
    # so ``imgsz`` is still the one size to feed.)
    export_batch = 1 if batch is None else batch
    args: dict[str, object] = {
        "batch": export_batch,
        "half": False,
        "dynamic": batch is None,
        "simplify": True,
        "opset": OPSET,
        "nms": False,
    }
    meta: dict[str, object] = {
        "description": description,
        "author": _META_AUTHOR,
        "date": _META_DATE,
        "version": _META_VERSION,
        "license": _META_LICENSE,
        "docs": _META_DOCS,
        "stride": stride,
        "task": task,
        "batch": export_batch,
        "imgsz": list(imgsz),
        "names": _names_dict(names) if names is not None else None,
        "args": args,
        "channels": 3,
    }
    if names is None:
        del meta["names"]
    if extra:
        meta.update(extra)
    return {key: str(value) for key, value in meta.items()}


def _prototypes(
    names: Sequence[str], defaults: Mapping[str, RGB], colours: Mapping[str, RGB] | None
) -> npt.NDArray[np.float32]:
    rows: list[RGB] = []
    for name in names:
        if colours is not None and name in colours:
            rows.append(colours[name])
        elif name in defaults:
            rows.append(defaults[name])
        else:
            raise ValueError(f"no colour prototype for class {name!r}: pass colours={{...}}")
    return np.asarray(rows, dtype=np.float32) / np.float32(255.0)


# --------------------------------------------------------------------------- detector


def build_colour_detector(
    path: Path,
    contract: DetectorContract = "v8",
    imgsz: tuple[int, int] = (640, 640),
    names: Sequence[str] = DETECTOR_NAMES,
    with_names: bool = True,
    *,
    colours: Mapping[str, RGB] | None = None,
    batch: int | None = 1,
) -> Path:
    """Write a colour-matching detector to ``path`` and return ``path``.

    ``imgsz`` is ``(height, width)`` as in ultralytics. Per class ``c`` the graph
    computes the soft match ``m_c = clip(1 - ||pixel - proto_c|| / tau, 0, 1)``
    (``tau = 100/255``), the mask ``m_c > 0.5``, the box as the pixel-exact
    extents of the mask (x2/y2 are edges: ``max + 1``), and the confidence as
    the mean ``m_c`` over the mask (0 when the mask has fewer than 16 pixels).
    See :mod:`pytrickle_worker.devtools.synthetic` for the confidence/colour
    relation. ``colours`` overrides or adds class prototypes (RGB 0-255).

    Limitation: ONE object per class per image -- two objects of the same
    class give a single box around both.

    ``batch`` is the first dim ``B`` of ``images`` and ``output0``: an int for a
    fixed batch, None for a dynamic one (symbolic ``"batch"``). Each image of a
    batch gets exactly the output it gets alone.

    Outputs (``output0``, shown for one image; the first dim is ``B``):

    * ``v8``: ``[1, 4+nc, 2*nc]``; column ``c`` is class ``c``'s box
      (cx, cy, w, h in input pixels) with its score in row ``4+c`` (other class
      rows 0); column ``nc+c`` is a duplicate shifted by
      :data:`DETECTOR_DUPLICATE_SHIFT` with score x0.9. Undetected classes give
      all-zero columns.
    * ``v5``: ``[1, 2*nc, 5+nc]``: xywh, objectness = score, one-hot class
      probabilities; the same candidates.
    * ``e2e``: ``[1, 300, 6]``: x1, y1, x2, y2, score, class for each detected
      class (no duplicates), sorted by score, then zero rows.

    Metadata: ultralytics' keys (``end2end='True'`` added for ``e2e``); for
    ``v5`` only ``stride`` and ``names`` like ultralytics/yolov5.
    ``with_names=False`` leaves ``names`` out.
    """
    height, width = imgsz
    nc = len(names)
    if nc == 0:
        raise ValueError("a detector needs at least one class")
    if contract == "e2e" and nc > E2E_MAX_DET:
        raise ValueError(f"e2e contract supports at most {E2E_MAX_DET} classes")
    protos = _prototypes(names, CLASS_COLOURS, colours)
    batch_dim = _batch_dim(batch)

    g = Graph()
    # Shapes are written for batch B: every op below works per image (broadcasting over,
    # or reducing inside, each image; no constant carries a batch dim it could mix up).
    # Soft match per class: [B, nc, H, W], from the exact per-channel distance
    # sum_ch (x_ch - p_ch)^2 (a pixel of exactly the prototype colour gives 0).
    channels = g.op_n("Split", ["images", g.ints([1, 1, 1], "split")], 3, axis=1)
    dist2 = ""
    for ch, channel in enumerate(channels):  # channel: [B, 1, H, W]
        diff = g.op("Sub", channel, g.const(protos[:, ch].reshape(1, nc, 1, 1), "prototype"))
        sq = g.op("Mul", diff, diff)
        dist2 = sq if not dist2 else g.op("Add", dist2, sq)
    dist = g.op("Sqrt", dist2)
    inv_tau = np.float32(255.0 / DETECTOR_TAU_UINT8)
    one = g.const(np.float32(1.0), "one")
    match = g.op("Relu", g.op("Sub", one, g.op("Mul", dist, g.const(inv_tau, "inv_tau"))))
    # A hair above 0.5 so that float rounding never puts distance exactly 50
    # (match 0.5) inside the mask; integer colours cannot get closer to 50 than
    # sqrt(2499) = 49.99, whose match 0.5001 stays above it.
    threshold = g.const(np.float32(DETECTOR_MASK_THRESHOLD + 1e-5), "threshold")
    mask = g.op("Greater", match, threshold)
    maskf = g.op("Cast", mask, to=1)  # FLOAT

    # Confidence: mean soft match over the mask; 0 below the minimum pixel count.
    hw_axes = g.ints([2, 3], "axes")
    count = g.op("ReduceSum", maskf, hw_axes, keepdims=0, hint="count")  # [B, nc]
    total = g.op("ReduceSum", g.op("Mul", match, maskf), hw_axes, keepdims=0, hint="total")
    mean = g.op("Div", total, g.op("Max", count, one))
    min_pixels = g.const(np.float32(DETECTOR_MIN_PIXELS), "min_pixels")
    valid = g.op("Cast", g.op("GreaterOrEqual", count, min_pixels), to=1, hint="valid")
    score = g.op("Mul", mean, valid, hint="score")  # [B, nc]

    # Pixel-exact extents of the mask.
    def extent(axis: int, size: int) -> tuple[str, str]:
        any_on = g.op("ReduceMax", maskf, axes=[axis], keepdims=0)  # [B, nc, size]
        present = g.op("Greater", any_on, g.const(np.float32(0.5), "half"))
        coords = np.arange(size, dtype=np.float32)
        low = g.op(
            "ReduceMin",
            g.op("Where", present, g.const(coords, "coords"), g.const(np.float32(size), "big")),
            axes=[2],
            keepdims=0,
        )
        high = g.op(
            "ReduceMax",
            g.op("Where", present, g.const(coords + 1.0, "edges"), g.const(np.float32(0), "zero")),
            axes=[2],
            keepdims=0,
        )
        # Zero the box of undetected classes.
        return g.op("Mul", low, valid), g.op("Mul", high, valid)

    x1, x2 = extent(2, width)  # reduce rows -> per-column presence
    y1, y2 = extent(3, height)  # reduce columns -> per-row presence

    out_shape: list[int | str]
    if contract == "e2e":
        output = _e2e_output(g, _Boxes(x1, y1, x2, y2, score, valid, nc))
        out_shape = [batch_dim, E2E_MAX_DET, 6]
    else:
        output = _candidates_output(g, contract, _Boxes(x1, y1, x2, y2, score, valid, nc))
        per_image = [4 + nc, 2 * nc] if contract == "v8" else [2 * nc, 5 + nc]
        out_shape = [batch_dim, *per_image]
    g.rename(output, "output0")

    if contract == "v5":
        meta: dict[str, str] = {"stride": "32"}
        if with_names:
            meta["names"] = str(_names_dict(names))
    else:
        meta = _ultralytics_metadata(
            description=f"pytrickle-worker colour detector ({contract} output contract)",
            task="detect",
            stride=32,
            imgsz=[height, width],
            names=names if with_names else None,
            batch=batch,
            extra={"end2end": True} if contract == "e2e" else None,
        )
    model = g.model(
        f"colour_detector_{contract}",
        [float_info("images", [batch_dim, 3, height, width])],
        [float_info("output0", out_shape)],
        meta,
    )
    logger.debug("built colour detector %s (%s, %dx%d)", path, contract, width, height)
    return write_model(model, path)


def _row(g: Graph, value: str) -> str:
    """[B, nc] -> [B, 1, nc]."""
    return g.op("Unsqueeze", value, g.ints([1], "axes"))


@dataclass(frozen=True)
class _Boxes:
    """Graph values of the per-class boxes: each ``[B, nc]`` float."""

    x1: str
    y1: str
    x2: str
    y2: str
    score: str
    valid: str
    nc: int


def _candidates_output(g: Graph, contract: DetectorContract, boxes: _Boxes) -> str:
    x1, y1, x2, y2 = boxes.x1, boxes.y1, boxes.x2, boxes.y2
    score, valid, nc = boxes.score, boxes.valid, boxes.nc
    half = g.const(np.float32(0.5), "half")
    cx = g.op("Mul", g.op("Add", x1, x2), half)
    cy = g.op("Mul", g.op("Add", y1, y2), half)
    w = g.op("Sub", x2, x1)
    h = g.op("Sub", y2, y1)
    dx, dy = DETECTOR_DUPLICATE_SHIFT
    cx_dup = g.op("Add", cx, g.op("Mul", valid, g.const(np.float32(dx), "dx")))
    cy_dup = g.op("Add", cy, g.op("Mul", valid, g.const(np.float32(dy), "dy")))
    score_dup = g.op("Mul", score, g.const(np.float32(DETECTOR_DUPLICATE_SCORE), "dup_score"))

    def pair(primary: str, duplicate: str) -> str:
        # [B, nc] + [B, nc] -> [B, 1, 2nc]
        return _row(g, g.op("Concat", primary, duplicate, axis=1))

    rows = [pair(cx, cx_dup), pair(cy, cy_dup), pair(w, w), pair(h, h)]  # each [B, 1, 2nc]
    if contract == "v8":
        eye = g.const(np.eye(nc, dtype=np.float32), "eye")  # [nc, nc]
        # Class rows: eye[r, c] * score[b, c] -> score of candidate c in row r of image b.
        cls_primary = g.op("Mul", eye, _row(g, score))  # [nc, nc] x [B, 1, nc] -> [B, nc, nc]
        cls_dup = g.op("Mul", eye, _row(g, score_dup))
        cls = g.op("Concat", cls_primary, cls_dup, axis=2)  # [B, nc, 2nc]
        return g.op("Concat", *rows, cls, axis=1)  # [B, 4+nc, 2nc]
    objectness = pair(score, score_dup)
    onehot = g.const(np.concatenate([np.eye(nc), np.eye(nc)], axis=1)[None], "onehot")
    # The constant [1, nc, 2nc] class rows, repeated for each image (Concat does not broadcast).
    onehot_shape = g.op("Concat", _batch_size(g), g.ints([nc, 2 * nc], "shape"), axis=0)
    onehots = g.op("Expand", onehot, onehot_shape)  # [B, nc, 2nc]
    stacked = g.op("Concat", *rows, objectness, onehots, axis=1)  # [B, 5+nc, 2nc]
    return g.op("Transpose", stacked, perm=[0, 2, 1])  # [B, 2nc, 5+nc]


def _e2e_output(g: Graph, boxes: _Boxes) -> str:
    score, nc = boxes.score, boxes.nc
    classes = g.op("Mul", g.const(np.arange(nc, dtype=np.float32)[None], "class_ids"), boxes.valid)
    values = (boxes.x1, boxes.y1, boxes.x2, boxes.y2, score, classes)
    rows = [_row(g, v) for v in values]  # [B, 1, nc] each
    table = g.op("Transpose", g.op("Concat", *rows, axis=1), perm=[0, 2, 1])  # [B, nc, 6]
    # Per image: the class order by score (TopK along the class axis; ONNX breaks ties by
    # the lower index, so undetected classes keep class order), then that image's table
    # rows in that order: GatherElements along axis 1 with the order repeated over the
    # 6 columns.
    _, order = g.op_n("TopK", [score, g.ints([nc], "k")], 2, axis=-1, largest=1, sorted=1)
    index = g.op("Unsqueeze", order, g.ints([2], "axes"))  # [B, nc, 1]
    index = g.op("Expand", index, g.op("Shape", table))  # [B, nc, 6]
    ordered = g.op("GatherElements", table, index, axis=1)  # [B, nc, 6]
    pads = g.ints([0, 0, 0, 0, E2E_MAX_DET - nc, 0], "pads")
    return g.op("Pad", ordered, pads, mode="constant")  # [B, 300, 6]


# --------------------------------------------------------------------------- classifier


def build_colour_classifier(
    path: Path,
    imgsz: int = 64,
    names: Sequence[str] = CLASSIFIER_NAMES,
    *,
    colours: Mapping[str, RGB] | None = None,
    batch: int | None = 1,
) -> Path:
    """Write a badge-colour classifier to ``path`` and return ``path``.

    Input ``[B, 3, imgsz, imgsz]``; ``output0`` is ``[B, nc]`` softmax
    probabilities of ``-CLASSIFIER_SOFTMAX_GAIN * d_c``, where ``d_c`` is the
    RGB distance (in [0, 1] units) between the mean colour of the central
    region and badge prototype ``c``. The central region is the middle quarter
    of each side (pixels 24-39 at 64), so that it lies inside the badge of a
    car crop (badge side 40% of the car's short side) whether the crop is
    centre-cropped or stretched up to an aspect ratio of about 1.6; there the
    badge class wins with confidence > 0.99. A uniform badge-coloured image
    gives > 0.99 too.

    ``batch`` is ``B``: an int for a fixed batch, None for a dynamic one (symbolic
    ``"batch"``); each image is classified on its own.
    """
    nc = len(names)
    if nc == 0:
        raise ValueError("a classifier needs at least one class")
    if imgsz < 4:
        raise ValueError(f"imgsz must be at least 4, got {imgsz}")
    protos = _prototypes(names, BADGE_COLOURS, colours)
    batch_dim = _batch_dim(batch)
    side = imgsz // 4
    lo = (imgsz - side) // 2
    hi = lo + side

    g = Graph()
    starts, ends = g.ints([lo, lo], "starts"), g.ints([hi, hi], "ends")
    centre = g.op("Slice", "images", starts, ends, g.ints([2, 3], "axes"))
    mean = g.op("ReduceMean", centre, axes=[2, 3], keepdims=0)  # [B, 3]
    # [B, 1, 3] - [1, nc, 3] -> [B, nc, 3]
    diff = g.op("Sub", g.op("Unsqueeze", mean, g.ints([1], "axes")), g.const(protos[None]))
    dist = g.op("Sqrt", g.op("ReduceSum", g.op("Mul", diff, diff), g.ints([2]), keepdims=0))
    logits = g.op("Mul", dist, g.const(np.float32(-CLASSIFIER_SOFTMAX_GAIN), "gain"))
    g.rename(g.op("Softmax", logits, axis=1), "output0")

    meta = _ultralytics_metadata(
        description="pytrickle-worker badge colour classifier",
        task="classify",
        stride=1,
        imgsz=[imgsz, imgsz],
        names=names,
        batch=batch,
    )
    model = g.model(
        "colour_classifier",
        [float_info("images", [batch_dim, 3, imgsz, imgsz])],
        [float_info("output0", [batch_dim, nc])],
        meta,
    )
    return write_model(model, path)


# --------------------------------------------------------------------------- test helper


def build_model_with_output_shape(
    path: Path,
    output_shape: Sequence[int],
    imgsz: tuple[int, int] = (64, 64),
    task: str = "detect",
    names: Sequence[str] = DETECTOR_NAMES,
) -> Path:
    """Write a model whose ``output0`` has ``output_shape`` (for contract tests).

    The output is a fixed ramp in [0, 1) plus ``0 * mean(images)``, so it
    depends on the input structurally but not in value.
    """
    shape = [int(d) for d in output_shape]
    if not shape or any(d <= 0 for d in shape):
        raise ValueError(f"output_shape must be non-empty and positive, got {shape}")
    height, width = imgsz
    size = math.prod(shape)
    ramp = (np.arange(size, dtype=np.float32) / np.float32(size)).reshape(shape)

    g = Graph()
    mean = g.op("ReduceMean", "images", keepdims=0)  # scalar
    zeroed = g.op("Mul", mean, g.const(np.float32(0.0), "zero"))
    g.rename(g.op("Add", g.const(ramp, "ramp"), zeroed), "output0")
    meta = _ultralytics_metadata(
        description=f"pytrickle-worker test model with output {shape}",
        task=task,
        stride=32,
        imgsz=[height, width],
        names=names,
    )
    model = g.model(
        "fixed_output",
        [float_info("images", [1, 3, height, width])],
        [float_info("output0", shape)],
        meta,
    )
    return write_model(model, path)


# --------------------------------------------------------------------------- YOLOv8n


@dataclass(frozen=True)
class _Tensor:
    """A feature map of the YOLO graph, with its activations on the calibration batch."""

    name: str
    height: int
    width: int
    data: npt.NDArray[np.float64]  # [N, C, h, w] activations on the calibration batch

    @property
    def channels(self) -> int:
        return int(self.data.shape[1])


# Class-logit biases of the three detection levels (strides 8, 16, 32), and the
# spread of the class logits (per-channel std on the calibration batch).
# Calibrated once (seed 0) on moving_objects() frames letterboxed to 640x640,
# rendered and decoded from sample.mp4: 3-110 of the 8400 anchors score above
# 0.25 (median about 25), like a trained model; flat frames give about 1. A
# random network is very sensitive to texture: busy or noise frames give
# thousands, so benchmark on the demo scenes.
_YOLO_CLS_BIAS = (-4.0, -4.0, -4.0)
_YOLO_CLS_GAIN = 3.0
# Spread of the DFL bin logits (peakier softmax -> more varied box sizes).
_YOLO_BOX_GAIN = 3.0
# Standard deviation of the hidden pre-activations on the calibration batch.
_YOLO_BODY_GAIN = 1.0
# Side of the calibration images the weights are normalised on.
_YOLO_CALIBRATION_SIZE = 160


def _calibration_batch(size: int, seed: int) -> npt.NDArray[np.float64]:
    """Deterministic [N, 3, size, size] images in [0, 1] covering typical inputs.

    A busy image (gradient, boxes, noise), flat black, white and letterbox grey,
    uniform noise, and a flat-background scene with a few coloured boxes.
    """
    rng = np.random.default_rng(seed + 1)
    busy = _busy_image(size, rng)
    flat = [np.full((3, size, size), v) for v in (0.0, 1.0, 114.0 / 255.0)]
    noise = rng.uniform(0.0, 1.0, size=(3, size, size))
    scene = np.full((3, size, size), 90.0 / 255.0)
    for _ in range(4):
        x1, y1 = rng.integers(0, size - 16, size=2)
        w, h = rng.integers(16, size // 3, size=2)
        scene[:, y1 : y1 + h, x1 : x1 + w] = rng.uniform(0.0, 1.0, size=(3, 1, 1))
    return np.stack([busy, *flat, noise, scene])


def _busy_image(size: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """A busy [3, size, size] image in [0, 1]: gradient, boxes, noise."""
    ramp = np.linspace(0.2, 0.7, size)
    image = np.stack(
        [
            ramp[None, :] * np.ones((size, 1)),
            ramp[:, None] * np.ones((1, size)),
            np.full((size, size), 0.45),
        ]
    )
    for _ in range(40):
        x1, y1 = rng.integers(0, size - 8, size=2)
        w, h = rng.integers(8, size // 3, size=2)
        image[:, y1 : y1 + h, x1 : x1 + w] = rng.uniform(0.0, 1.0, size=(3, 1, 1))
    image += rng.normal(0.0, 0.02, size=image.shape)
    return np.clip(image, 0.0, 1.0)


def _np_conv(
    x: npt.NDArray[np.float64], weight: npt.NDArray[np.float64], stride: int
) -> npt.NDArray[np.float64]:
    """Reference Conv2d (same padding) of [N, C, H, W] by [O, C, k, k] -> [N, O, H', W']."""
    k = weight.shape[-1]
    pad = k // 2
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride]  # [N, C, H', W', k, k]
    out = np.tensordot(windows, weight, axes=([1, 4, 5], [1, 2, 3]))  # [N, H', W', O]
    result: npt.NDArray[np.float64] = np.ascontiguousarray(out.transpose(0, 3, 1, 2))
    return result


def _np_silu(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return x / (1.0 + np.exp(-x))


class _YoloBuilder:
    """Builds a YOLOv8 graph with seeded weights and counts params and MACs.

    Random weights collapse or explode through 60-odd layers unless they are
    normalised, so each conv plays the role of a folded BatchNorm: the graph is
    also run in numpy on a small busy calibration image, and each conv's weights
    and bias are set so that its pre-activations there have per-channel mean
    ``beta`` and standard deviation ``gain`` (LSUV-style initialisation).
    """

    def __init__(self, g: Graph, rng: np.random.Generator) -> None:
        self.g = g
        self.rng = rng
        self.params = 0
        self.macs = 0

    def conv(
        self,
        x: _Tensor,
        cout: int,
        k: int,
        s: int = 1,
        *,
        act: bool = True,
        beta: npt.NDArray[np.float64] | None = None,
        gain: float | None = None,
    ) -> _Tensor:
        """Conv2d (BatchNorm folded into weight and bias), then SiLU if ``act``."""
        g = self.g
        cin = x.channels
        weight = self.rng.standard_normal((cout, cin, k, k)) / math.sqrt(cin * k * k)
        if beta is None:
            beta = self.rng.standard_normal(cout) * 0.2
        pre = _np_conv(x.data, weight, s)
        mean = pre.mean(axis=(0, 2, 3))
        std = pre.std(axis=(0, 2, 3)) + 1e-6
        scale = (_YOLO_BODY_GAIN if gain is None else gain) / std
        weight = weight * scale[:, None, None, None]
        bias = beta - mean * scale
        pre = (pre - mean[:, None, None]) * scale[:, None, None] + beta[:, None, None]
        pad = k // 2
        out_h = (x.height + 2 * pad - k) // s + 1
        out_w = (x.width + 2 * pad - k) // s + 1
        y = g.op(
            "Conv",
            x.name,
            g.const(weight.astype(np.float32), "conv.weight"),
            g.const(bias.astype(np.float32), "conv.bias"),
            kernel_shape=[k, k],
            strides=[s, s],
            pads=[pad, pad, pad, pad],
            dilations=[1, 1],
            group=1,
            hint="conv",
        )
        self.params += weight.size + bias.size
        self.macs += cout * out_h * out_w * cin * k * k
        if not act:
            return _Tensor(y, out_h, out_w, pre)
        y = g.op("Mul", y, g.op("Sigmoid", y), hint="silu")  # SiLU, as ultralytics exports it
        return _Tensor(y, out_h, out_w, _np_silu(pre))

    def concat(self, *xs: _Tensor) -> _Tensor:
        name = self.g.op("Concat", *(x.name for x in xs), axis=1)
        data = np.concatenate([x.data for x in xs], axis=1)
        return _Tensor(name, xs[0].height, xs[0].width, data)

    def c2f(self, x: _Tensor, c2: int, n: int, shortcut: bool) -> _Tensor:
        c = c2 // 2
        y = self.conv(x, 2 * c, 1)
        a, b = self.g.op_n("Split", [y.name, self.g.ints([c, c], "split")], 2, axis=1)
        parts = [
            _Tensor(a, y.height, y.width, y.data[:, :c]),
            _Tensor(b, y.height, y.width, y.data[:, c:]),
        ]
        current = parts[-1]
        for _ in range(n):  # Bottleneck(c, c, shortcut, e=1.0)
            t = self.conv(self.conv(current, c, 3), c, 3)
            if shortcut:
                name = self.g.op("Add", current.name, t.name)
                t = _Tensor(name, t.height, t.width, current.data + t.data)
            parts.append(t)
            current = t
        return self.conv(self.concat(*parts), c2, 1)

    def sppf(self, x: _Tensor, c2: int, k: int = 5) -> _Tensor:
        hidden = self.conv(x, x.channels // 2, 1)
        parts = [hidden]
        pad = k // 2
        for _ in range(3):
            prev = parts[-1]
            pooled = self.g.op(
                "MaxPool", prev.name, kernel_shape=[k, k], strides=[1, 1], pads=[pad] * 4
            )
            padded = np.pad(
                prev.data, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf
            )
            windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(2, 3))
            parts.append(_Tensor(pooled, prev.height, prev.width, windows.max(axis=(4, 5))))
        return self.conv(self.concat(*parts), c2, 1)

    def upsample(self, x: _Tensor) -> _Tensor:
        scales = self.g.const([1.0, 1.0, 2.0, 2.0], "scales")
        name = self.g.op("Resize", x.name, "", scales, mode="nearest")
        data = x.data.repeat(2, axis=2).repeat(2, axis=3)
        return _Tensor(name, x.height * 2, x.width * 2, data)


def build_yolov8n_like(
    path: Path, imgsz: int = 640, nc: int = 80, seed: int = 0, *, batch: int | None = 1
) -> ModelStats:
    """Write a YOLOv8n-structured detector with seeded random weights.

    The graph follows ultralytics' yolov8n.yaml (width 0.25, depth 0.33): Conv
    (BatchNorm folded) + SiLU, C2f blocks, SPPF, the FPN/PAN neck with nearest
    Resize + Concat, and the decoupled Detect head with DFL (reg_max 16),
    dist2bbox and sigmoid class scores. ``output0`` is ``[B, 4+nc, A]`` with
    ``A = 8400`` at 640; ``B`` is ``batch`` (an int for a fixed batch, None for a
    dynamic one: symbolic ``"batch"``). Returns the parameter count (~3.2M) and GFLOPs
    (2 x multiply-adds of the convolutions, ~8.7 at 640 like ultralytics
    reports). The weights are random but scaled so activations stay finite,
    and class biases leave only a few dozen anchors above 0.25 on a synthetic
    frame: for throughput benchmarks, not for accuracy.
    """
    if imgsz % 32 != 0 or imgsz <= 0:
        raise ValueError(f"imgsz must be a positive multiple of 32, got {imgsz}")
    if nc <= 0:
        raise ValueError(f"nc must be positive, got {nc}")
    batch_dim = _batch_dim(batch)
    g = Graph()
    net = _YoloBuilder(g, np.random.default_rng(seed))
    x = _Tensor("images", imgsz, imgsz, _calibration_batch(_YOLO_CALIBRATION_SIZE, seed))

    # Backbone.
    x = net.conv(x, 16, 3, 2)  # 0 P1/2
    x = net.conv(x, 32, 3, 2)  # 1 P2/4
    x = net.c2f(x, 32, 1, True)  # 2
    x = net.conv(x, 64, 3, 2)  # 3 P3/8
    p3 = net.c2f(x, 64, 2, True)  # 4
    x = net.conv(p3, 128, 3, 2)  # 5 P4/16
    p4 = net.c2f(x, 128, 2, True)  # 6
    x = net.conv(p4, 256, 3, 2)  # 7 P5/32
    x = net.c2f(x, 256, 1, True)  # 8
    p5 = net.sppf(x, 256)  # 9

    # Neck (FPN top-down, PAN bottom-up).
    h12 = net.c2f(net.concat(net.upsample(p5), p4), 128, 1, False)  # 10-12
    out3 = net.c2f(net.concat(net.upsample(h12), p3), 64, 1, False)  # 13-15 (P3/8)
    out4 = net.c2f(net.concat(net.conv(out3, 64, 3, 2), h12), 128, 1, False)  # 16-18 (P4/16)
    out5 = net.c2f(net.concat(net.conv(out4, 128, 3, 2), p5), 256, 1, False)  # 19-21 (P5/32)

    # Detect head.
    reg_max = 16
    levels = [out3, out4, out5]
    c2 = max(16, levels[0].channels // 4, reg_max * 4)
    c3 = max(levels[0].channels, min(nc, 100))
    flat: list[str] = []
    anchors: list[npt.NDArray[np.float32]] = []
    strides: list[npt.NDArray[np.float32]] = []
    for level, cls_bias in zip(levels, _YOLO_CLS_BIAS, strict=True):
        box = net.conv(
            net.conv(net.conv(level, c2, 3), c2, 3),
            4 * reg_max,
            1,
            act=False,
            beta=np.ones(4 * reg_max),  # ultralytics' box bias init
            gain=_YOLO_BOX_GAIN,
        )
        cls_hidden = net.conv(net.conv(level, c3, 3), c3, 3)
        cls_beta = cls_bias + net.rng.standard_normal(nc) * 0.1
        cls = net.conv(cls_hidden, nc, 1, act=False, beta=cls_beta, gain=_YOLO_CLS_GAIN)
        both = net.concat(box, cls)
        count = level.height * level.width
        # Reshape dim 0 copies the input's dim: the batch passes through.
        flat.append(g.op("Reshape", both.name, g.ints([0, 4 * reg_max + nc, count])))
        stride = imgsz // level.width
        ys, xs = np.meshgrid(
            np.arange(level.height, dtype=np.float32) + 0.5,
            np.arange(level.width, dtype=np.float32) + 0.5,
            indexing="ij",
        )
        anchors.append(np.stack([xs.reshape(-1), ys.reshape(-1)]))
        strides.append(np.full((1, count), stride, dtype=np.float32))
    n_anchors = sum(a.shape[1] for a in anchors)
    x_cat = g.op("Concat", *flat, axis=2)  # [B, 64+nc, A]
    box_raw, cls_raw = g.op_n("Split", [x_cat, g.ints([4 * reg_max, nc], "split")], 2, axis=1)

    # DFL: softmax over the 16 bins, expectation via a fixed 1x1 conv.
    bins = g.op("Reshape", box_raw, g.ints([0, 4, reg_max, n_anchors]))
    bins = g.op("Softmax", g.op("Transpose", bins, perm=[0, 2, 1, 3]), axis=1)
    dfl_weight = np.arange(reg_max, dtype=np.float32).reshape(1, reg_max, 1, 1)
    dist = g.op("Conv", bins, g.const(dfl_weight, "dfl.weight"), kernel_shape=[1, 1])
    net.params += reg_max
    dist = g.op("Reshape", dist, g.ints([0, 4, n_anchors]))

    # dist2bbox (xywh) in input pixels.
    lt, rb = g.op_n("Split", [dist, g.ints([2, 2], "split")], 2, axis=1)
    anchor_points = g.const(np.concatenate(anchors, axis=1)[None], "anchors")  # [1, 2, A]
    # (the [1, ...] anchor and stride constants broadcast over the batch)
    x1y1 = g.op("Sub", anchor_points, lt)
    x2y2 = g.op("Add", anchor_points, rb)
    c_xy = g.op("Div", g.op("Add", x1y1, x2y2), g.const(np.float32(2.0), "two"))
    wh = g.op("Sub", x2y2, x1y1)
    dbox = g.op(
        "Mul",
        g.op("Concat", c_xy, wh, axis=1),
        g.const(np.concatenate(strides, axis=1)[None], "strides"),
    )
    g.rename(g.op("Concat", dbox, g.op("Sigmoid", cls_raw), axis=1), "output0")

    names = COCO_NAMES if nc == len(COCO_NAMES) else [f"class{i}" for i in range(nc)]
    meta = _ultralytics_metadata(
        description="pytrickle-worker YOLOv8n-like benchmark model (random weights)",
        task="detect",
        stride=32,
        imgsz=[imgsz, imgsz],
        names=names,
        batch=batch,
    )
    model = g.model(
        "yolov8n_like",
        [float_info("images", [batch_dim, 3, imgsz, imgsz])],
        [float_info("output0", [batch_dim, 4 + nc, n_anchors])],
        meta,
    )
    write_model(model, path)
    stats = ModelStats(params=net.params, gflops=2.0 * net.macs / 1e9)
    logger.debug("built %s: %d params, %.2f GFLOPs", path, stats.params, stats.gflops)
    return stats
