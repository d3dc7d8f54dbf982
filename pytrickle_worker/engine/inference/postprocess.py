"""Decoding of ultralytics ONNX outputs: contract detection, confidence filter, class-aware NMS.

Supported output contracts (see ``shared/reference/ultralytics-onnx-contract.md``):

* ``YOLOV8_DETECT`` -- ``[B, 4+nc, N]``: cx, cy, w, h in input pixels, then ``nc`` class
  scores (sigmoid applied), no objectness, NMS not included (YOLOv8/11, YOLOv5u).
* ``YOLOV5_DETECT`` -- ``[B, N, 5+nc]``: cx, cy, w, h, objectness, class probabilities;
  confidence = objectness × class probability (ultralytics/yolov5 exports).
* ``END2END_DETECT`` -- ``[B, K, 6]``: x1, y1, x2, y2, score, class (YOLOv10/YOLO26, or
  ``nms=True`` exports); already de-duplicated, so only filtered here.
* ``CLASSIFY`` -- ``[B, nc]`` class probabilities.

Only batch index 0 is decoded. Post-processing follows ultralytics ``non_max_suppression``:
the best class per candidate (``multi_label=False``), a confidence filter (strictly greater
than ``conf_thres``), the ``classes=`` restriction, at most ``max_nms`` candidates by score,
class-aware NMS via per-class coordinate offsets, and at most ``max_det`` results.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import numpy as np
import numpy.typing as npt

from pytrickle_worker.core.errors import ModelError

__all__ = [
    "MAX_NMS",
    "MAX_WH",
    "Detections",
    "OutputContract",
    "decode_classification",
    "decode_detections",
    "default_nms_iou",
    "expected_anchors",
    "infer_contract",
    "nms",
]

logger = logging.getLogger(__name__)

#: ultralytics' cap on the candidates that enter NMS.
MAX_NMS: Final = 30000
#: ultralytics' per-class box offset for class-aware NMS (larger than any image side).
MAX_WH: Final = 7680
#: NMS IoU defaults: ultralytics' predict (YOLOv8/11 heads), and yolov5's detect.py for the
#: objectness heads it exports (three anchors a cell leave more same-class duplicates).
ULTRALYTICS_NMS_IOU: Final = 0.7
YOLOV5_NMS_IOU: Final = 0.45

Dim = int | str | None
FloatArray = npt.NDArray[np.float32]


class OutputContract(StrEnum):
    """The layout of a model's output tensor."""

    YOLOV8_DETECT = "yolov8_detect"
    YOLOV5_DETECT = "yolov5_detect"
    END2END_DETECT = "end2end_detect"
    CLASSIFY = "classify"

    @property
    def is_detection(self) -> bool:
        return self is not OutputContract.CLASSIFY

    @property
    def layout(self) -> str:
        return _LAYOUTS[self]


_LAYOUTS: Final[dict[OutputContract, str]] = {
    OutputContract.YOLOV8_DETECT: "[B, 4+nc, N] (YOLOv8/11 detect)",
    OutputContract.YOLOV5_DETECT: "[B, N, 5+nc] (YOLOv5 detect)",
    OutputContract.END2END_DETECT: "[B, K, 6] (end-to-end detect: YOLOv10/26 or nms=True)",
    OutputContract.CLASSIFY: "[B, nc] (classify)",
}


def default_nms_iou(contract: OutputContract) -> float:
    """The NMS IoU a model family is run with by its own tools."""
    return YOLOV5_NMS_IOU if contract is OutputContract.YOLOV5_DETECT else ULTRALYTICS_NMS_IOU


def _supported() -> str:
    return "; ".join(contract.layout for contract in OutputContract)


@dataclass(frozen=True, slots=True)
class Detections:
    """Detections sorted by score, highest first.

    ``boxes`` are ``(N, 4)`` float32 xyxy (input pixels from :func:`decode_detections`,
    frame pixels from ``OnnxModel.detect``), ``scores`` ``(N,)`` float32 and ``class_ids``
    ``(N,)`` int32.
    """

    boxes: FloatArray
    scores: FloatArray
    class_ids: npt.NDArray[np.int32]

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int32)
        )


# --------------------------------------------------------------------------------------
# Contract inference
# --------------------------------------------------------------------------------------


def expected_anchors(input_size: tuple[int, int], strides: Sequence[int] = (8, 16, 32)) -> int:
    """Anchor points of a v8-style head: 8400 at 640×640 (v5 has three times as many)."""
    h, w = input_size
    return sum(math.ceil(h / s) * math.ceil(w / s) for s in strides)


def _dim(value: Dim) -> int | None:
    """A static dimension, or ``None`` for a symbolic/unknown one."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _shape_text(shape: Sequence[Dim]) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"


def infer_contract(
    output_shapes: Sequence[Sequence[Dim]],
    nc_from_metadata: int | None,
    task: str | None,
    *,
    end2end: bool | None = None,
    input_size: tuple[int, int] | None = None,
    kpt_shape: bool = False,
) -> tuple[OutputContract, int]:
    """Decide a model's output contract and class count from its output shapes.

    ``output_shapes`` are the declared shapes of every output (dims may be ``str``/``None``
    when dynamic). Metadata settles ambiguous cases: ``nc_from_metadata`` (``len(names)``),
    ``task``, ``end2end`` and ``input_size`` (to tell a v5 ``[1, N, 6]`` with one class from
    an end-to-end ``[1, 300, 6]``). Returns ``(contract, nc)``; ``nc`` is 0 when an
    end-to-end model carries no names.

    Raises :class:`ModelError` naming the shape for anything unsupported (segmentation, pose,
    OBB, several outputs, other ranks).
    """
    shapes = [list(s) for s in output_shapes]
    described = ", ".join(_shape_text(s) for s in shapes) or "none"
    task_name = (task or "").strip().lower() or None

    def unsupported(why: str) -> ModelError:
        return ModelError(
            f"unsupported model output {described}: {why}. Supported output contracts: "
            f"{_supported()}"
        )

    if task_name in ("segment", "segmentation") or (
        len(shapes) >= 2 and any(len(s) == 4 for s in shapes[1:])
    ):
        raise unsupported("segmentation models (mask prototypes) are not supported")
    if task_name == "pose" or kpt_shape:
        raise unsupported("pose models (keypoints) are not supported")
    if task_name == "obb":
        raise unsupported("oriented-box (OBB) models are not supported")
    if not shapes:
        raise unsupported("the model has no outputs")
    if len(shapes) > 1:
        # Old yolov5 exports add the raw per-level head tensors (rank 5) after the decoded one.
        if len(shapes[0]) == 3 and all(len(s) == 5 for s in shapes[1:]):
            logger.debug("ignoring %d raw head outputs after output 0", len(shapes) - 1)
        else:
            raise unsupported(f"expected one output, the model has {len(shapes)}")
    shape = shapes[0]
    nc_meta = nc_from_metadata if nc_from_metadata and nc_from_metadata > 0 else None

    if len(shape) == 2:
        if task_name not in (None, "classify"):
            raise unsupported(f"a [B, nc] output does not fit task {task_name!r}")
        nc = _dim(shape[1]) or nc_meta
        if not nc:
            raise unsupported("the class dimension is dynamic and metadata has no names")
        if nc_meta is not None and nc != nc_meta:
            raise unsupported(f"{nc} class scores but metadata names {nc_meta} classes")
        return OutputContract.CLASSIFY, nc

    if len(shape) != 3:
        raise unsupported(f"rank-{len(shape)} output")
    if task_name not in (None, "detect"):
        raise unsupported(f"task {task_name!r} is not supported")

    a, b = _dim(shape[1]), _dim(shape[2])
    v8_anchors = expected_anchors(input_size) if input_size else None
    v5_anchors = 3 * v8_anchors if v8_anchors else None

    # [B, K, 6] is end-to-end, unless metadata or the anchor count says it is a v8 head with
    # 4+nc == K rows, or a one-class v5 head ([B, 3 * anchors, 5+1]).
    v8_rows = nc_meta is not None and a is not None and a == 4 + nc_meta
    if b == 6 and (end2end is True or not v8_rows):
        if end2end is not True and nc_meta in (None, 1):
            if a is not None and v5_anchors is not None and a == v5_anchors:
                return OutputContract.YOLOV5_DETECT, 1
            if a is not None and v5_anchors is None and a > 1000:
                return OutputContract.YOLOV5_DETECT, 1
            if a is None and nc_meta == 1:
                return OutputContract.YOLOV5_DETECT, 1
        return OutputContract.END2END_DETECT, nc_meta or 0
    if end2end is True:
        logger.warning(
            "metadata says end2end but output %s is not [B, K, 6]; decoding by shape", described
        )

    def v8(nc: int) -> tuple[OutputContract, int]:
        if nc < 1:
            raise unsupported("a v8 head needs at least 5 rows (4 box + classes)")
        if nc_meta is not None and nc != nc_meta:
            raise unsupported(
                f"a [B, 4+nc, N] head with nc={nc} but metadata names {nc_meta} classes "
                "(extra rows: pose, OBB or segmentation?)"
            )
        return OutputContract.YOLOV8_DETECT, nc

    def v5(nc: int) -> tuple[OutputContract, int]:
        if nc < 1:
            raise unsupported("a v5 head needs at least 6 columns (4 box + obj + classes)")
        if nc_meta is not None and nc != nc_meta:
            raise unsupported(
                f"a [B, N, 5+nc] head with nc={nc} but metadata names {nc_meta} classes"
            )
        return OutputContract.YOLOV5_DETECT, nc

    if a is not None and b is not None:
        if a < b:
            # v8: the small dimension (4+nc) comes first...
            if nc_meta is not None and a - 4 != nc_meta and b - 5 == nc_meta:
                return v5(b - 5)
            return v8(a - 4)
        if a > b:
            # ...v5: the large dimension (anchors) comes first.
            if nc_meta is not None and b - 5 != nc_meta and a - 4 == nc_meta:
                return v8(a - 4)
            return v5(b - 5)
        if nc_meta is not None:
            if a - 4 == nc_meta:
                return v8(a - 4)
            if b - 5 == nc_meta:
                return v5(b - 5)
        if v8_anchors is not None and b == v8_anchors:
            return v8(a - 4)
        raise unsupported("a square [B, n, n] output is ambiguous without class names")
    if a is not None:
        return v8(a - 4)  # [B, 4+nc, anchors?]
    if b is not None:
        return v5(b - 5)  # [B, anchors?, 5+nc]
    raise unsupported("both output dimensions are dynamic")


# --------------------------------------------------------------------------------------
# Detection decoding
# --------------------------------------------------------------------------------------


def _xywh_to_xyxy(cx: FloatArray, cy: FloatArray, w: FloatArray, h: FloatArray) -> FloatArray:
    boxes = np.empty((cx.shape[0], 4), np.float32)
    half_w = w * np.float32(0.5)
    half_h = h * np.float32(0.5)
    np.subtract(cx, half_w, out=boxes[:, 0])
    np.subtract(cy, half_h, out=boxes[:, 1])
    np.add(cx, half_w, out=boxes[:, 2])
    np.add(cy, half_h, out=boxes[:, 3])
    return boxes


#: Candidates resolved together per step of the blocked NMS.
_NMS_BLOCK: Final = 128


def _suppression(
    coords: FloatArray,
    areas: FloatArray,
    rows: npt.NDArray[np.intp],
    cols: npt.NDArray[np.intp],
    thres: np.float32,
) -> npt.NDArray[np.bool_]:
    """``IoU(rows[a], cols[b]) > thres`` as a ``(len(rows), len(cols))`` matrix.

    Written as ``inter > thres * union`` so zero-area pairs never suppress.
    """
    x1, y1, x2, y2 = coords[0], coords[1], coords[2], coords[3]
    w = np.minimum(x2[rows][:, None], x2[cols][None, :])
    w -= np.maximum(x1[rows][:, None], x1[cols][None, :])
    np.maximum(w, 0, out=w)
    h = np.minimum(y2[rows][:, None], y2[cols][None, :])
    h -= np.maximum(y1[rows][:, None], y1[cols][None, :])
    np.maximum(h, 0, out=h)
    w *= h  # intersection
    union = areas[rows][:, None] + areas[cols][None, :]
    union -= w
    union *= thres
    return w > union


def _block_nms(
    coords: FloatArray, areas: FloatArray, block: npt.NDArray[np.intp], thres: np.float32
) -> npt.NDArray[np.intp]:
    """Greedy NMS within ``block`` (score-sorted positions) alone; returns its winners.

    Cluster-NMS (Zheng et al., 2020): "kept = suppressed by no kept, higher-scoring box",
    iterated from "all kept", reaches exactly the greedy result (after k rounds the first
    k boxes are final), usually in 1-4 matrix-vector products.
    """
    suppresses = np.triu(_suppression(coords, areas, block, block, thres), 1)
    if not suppresses.any():
        return block
    weights = suppresses.astype(np.float32)
    keep = np.ones(block.shape[0], np.float32)
    for _ in range(block.shape[0]):
        updated = (keep @ weights == 0).astype(np.float32)
        if np.array_equal(updated, keep):
            break
        keep = updated
    return block[keep > 0]


#: Up to this many x-overlapping candidate pairs, NMS tests just those pairs (a sweep over
#: x); beyond it (crowds of one class, agnostic NMS of big boxes) the blocked matrix form.
_NMS_MAX_PAIRS: Final = 1 << 18


def _x_overlapping_pairs(
    x1: FloatArray, x2: FloatArray
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]] | None:
    """Every pair ``(a, b)`` whose x extents overlap by more than zero, once each; ``None``
    when there are more than :data:`_NMS_MAX_PAIRS`.

    Sorted by ``x1``, the partners of a box that starts no later than they do are the boxes
    starting inside ``[x1, x2)``: a contiguous run found with one ``searchsorted``. Class
    offsets (``MAX_WH`` apart) keep other classes' boxes out of each run. Boxes with NaN
    coordinates only ever add pairs, whose IoU test then fails, as in the matrix form.
    """
    n = int(x1.shape[0])
    by_x = np.argsort(x1, kind="stable")
    ends = np.searchsorted(x1[by_x], x2[by_x], side="left")
    counts = np.maximum(ends - np.arange(1, n + 1), 0)
    total = int(counts.sum())
    if total > _NMS_MAX_PAIRS:
        return None
    positions = np.arange(n)
    firsts = np.repeat(positions, counts)
    # The k-th partner of position p is position p + 1 + k; pair j of p's run is its
    # (j - run start)-th partner.
    seconds = np.repeat(positions + 1 - (np.cumsum(counts) - counts), counts)
    seconds += np.arange(total)
    return by_x[firsts], by_x[seconds]


def _pairwise_nms(
    coords: FloatArray, areas: FloatArray, thres: np.float32, limit: int
) -> npt.NDArray[np.intp] | None:
    """Greedy NMS over score-sorted ``coords`` testing only x-overlapping pairs; the kept
    positions (at most ``limit``), or ``None`` when there are too many pairs for it.

    The IoU test is :func:`_suppression`'s, element by element, and the greedy result is
    reached by the same Cluster-NMS iteration, on the list of suppressing pairs.
    """
    if bool((areas < 0).any()):
        return None  # an inverted box "suppresses" boxes it does not even touch
    pairs = _x_overlapping_pairs(coords[0], coords[2])
    if pairs is None:
        return None
    a, b = pairs
    x1, y1, x2, y2 = coords[0], coords[1], coords[2], coords[3]
    w = np.minimum(x2[a], x2[b])
    w -= np.maximum(x1[a], x1[b])
    np.maximum(w, 0, out=w)
    h = np.minimum(y2[a], y2[b])
    h -= np.maximum(y1[a], y1[b])
    np.maximum(h, 0, out=h)
    w *= h  # intersection
    union = areas[a] + areas[b]
    union -= w
    union *= thres
    suppressing = w > union
    a, b = a[suppressing], b[suppressing]
    winner, loser = np.minimum(a, b), np.maximum(a, b)  # a lower position scores higher
    n = int(coords.shape[1])
    keep = np.ones(n, np.bool_)
    for _ in range(n):
        updated = np.ones(n, np.bool_)
        updated[loser[keep[winner]]] = False
        if np.array_equal(updated, keep):
            break
        keep = updated
    return np.flatnonzero(keep)[:limit]


def nms(
    boxes: npt.NDArray[np.floating],
    scores: npt.NDArray[np.floating],
    iou_thres: float,
    max_det: int | None = None,
) -> npt.NDArray[np.intp]:
    """Greedy NMS (torchvision semantics): indices of kept boxes, highest score first.

    A box is suppressed when its IoU with a kept, higher-scoring box is *greater* than
    ``iou_thres``; zero-area boxes never suppress. At most ``max_det`` indices.

    Exact greedy. Usually only the pairs whose x extents overlap are tested (a sweep over
    x; with class offsets, about n²/classes pairs instead of n²: 0.3 instead of 2 ms for a
    thousand candidates). With too many of those, vectorised a block at a time: the best
    ``_NMS_BLOCK`` remaining boxes are resolved among themselves (no other box outranks
    them), then their winners suppress all the others at once. Cost is O(kept ×
    candidates) pair tests in ~15 numpy calls per block instead of per kept box.
    """
    n = int(scores.shape[0])
    if n == 0:
        return np.zeros((0,), np.intp)
    order = np.argsort(-scores, kind="stable")
    limit = n if max_det is None else max(0, min(n, max_det))
    if n == 1 or limit == 0:
        return order[:limit]
    coords = np.ascontiguousarray(np.asarray(boxes, dtype=np.float32)[order].T)
    areas = (coords[2] - coords[0]) * (coords[3] - coords[1])
    thres = np.float32(iou_thres)
    kept_pairwise = _pairwise_nms(coords, areas, thres, limit)
    if kept_pairwise is not None:
        return order[kept_pairwise]
    parts: list[npt.NDArray[np.intp]] = []
    count = 0
    remaining = np.arange(n)
    while remaining.size and count < limit:
        head, rest = remaining[:_NMS_BLOCK], remaining[_NMS_BLOCK:]
        winners = _block_nms(coords, areas, head, thres)[: limit - count]
        parts.append(winners)
        count += int(winners.size)
        if rest.size == 0 or count >= limit:
            break
        remaining = rest[~_suppression(coords, areas, winners, rest, thres).any(axis=0)]
    kept = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return order[kept]


def _finish(
    boxes: FloatArray,
    scores: FloatArray,
    class_ids: npt.NDArray[np.integer],
    iou_thres: float,
    max_det: int,
    agnostic: bool,
    max_nms: int,
) -> Detections:
    """Cap candidates, run class-aware NMS, keep ``max_det``."""
    if scores.shape[0] > max_nms:
        top = np.argpartition(-scores, max_nms - 1)[:max_nms]
        boxes, scores, class_ids = boxes[top], scores[top], class_ids[top]
    if agnostic:
        nms_boxes = boxes
    else:
        offsets = class_ids.astype(np.float32) * np.float32(MAX_WH)
        nms_boxes = boxes + offsets[:, None]
    keep = nms(nms_boxes, scores, iou_thres, max_det)
    return Detections(
        np.ascontiguousarray(boxes[keep]),
        np.ascontiguousarray(scores[keep]),
        class_ids[keep].astype(np.int32),
    )


def _allowed(
    class_ids: npt.NDArray[np.integer], classes: npt.NDArray[np.integer] | None
) -> npt.NDArray[np.bool_] | None:
    if classes is None:
        return None
    return np.isin(class_ids, np.asarray(classes).reshape(-1))


def decode_detections(
    output: npt.NDArray[np.floating],
    contract: OutputContract,
    conf_thres: float,
    classes: npt.NDArray[np.integer] | None = None,
    iou_thres: float = 0.7,
    max_det: int = 300,
    agnostic: bool = False,
    max_nms: int = MAX_NMS,
) -> Detections:
    """Decode a detection output (batch index 0) to boxes in input pixels.

    ``classes`` restricts the result to those class indices (``None``: all; an empty array:
    none). As in ultralytics, each candidate first takes its best class over *all* classes,
    and the restriction then drops candidates whose best class is not allowed -- before NMS,
    so a disallowed object never suppresses an allowed one.
    """
    if not contract.is_detection:
        raise ValueError(f"{contract} is not a detection contract")
    pred = np.asarray(output)
    if pred.ndim == 3:
        pred = pred[0]
    if pred.ndim != 2:
        raise ValueError(f"expected a [B, a, b] detection output, got shape {output.shape}")
    if pred.dtype != np.float32:
        pred = pred.astype(np.float32)
    if max_det <= 0:
        return Detections.empty()
    conf = np.float32(conf_thres)

    if contract is OutputContract.YOLOV8_DETECT:
        cls = pred[4:]  # (nc, N)
        best = cls.max(axis=0) if cls.shape[0] > 1 else cls[0]
        idx = np.flatnonzero(best > conf)
        if idx.size == 0:
            return Detections.empty()
        scores = best[idx]
        class_ids = cls[:, idx].argmax(axis=0) if cls.shape[0] > 1 else np.zeros(idx.size, np.intp)
        mask = _allowed(class_ids, classes)
        if mask is not None:
            idx, scores, class_ids = idx[mask], scores[mask], class_ids[mask]
            if idx.size == 0:
                return Detections.empty()
        box = pred[:4, idx]
        boxes = _xywh_to_xyxy(box[0], box[1], box[2], box[3])
        return _finish(boxes, scores, class_ids, iou_thres, max_det, agnostic, max_nms)

    if contract is OutputContract.YOLOV5_DETECT:
        obj = pred[:, 4]
        idx = np.flatnonzero(obj > conf)
        if idx.size == 0:
            return Detections.empty()
        cand = pred[idx]
        cls = cand[:, 5:] * cand[:, 4:5]
        class_ids = cls.argmax(axis=1)
        scores = cls[np.arange(idx.size), class_ids]
        keep = scores > conf
        mask = _allowed(class_ids, classes)
        if mask is not None:
            keep &= mask
        if not keep.any():
            return Detections.empty()
        cand, scores, class_ids = cand[keep], scores[keep], class_ids[keep]
        boxes = _xywh_to_xyxy(cand[:, 0], cand[:, 1], cand[:, 2], cand[:, 3])
        return _finish(boxes, scores, class_ids, iou_thres, max_det, agnostic, max_nms)

    # END2END: already NMS-ed; filter only.
    if pred.shape[1] < 6:
        raise ValueError(f"expected [B, K, 6] end-to-end output, got shape {output.shape}")
    scores = pred[:, 4]
    keep = scores > conf
    class_ids = np.rint(pred[:, 5]).astype(np.int32)
    mask = _allowed(class_ids, classes)
    if mask is not None:
        keep &= mask
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        return Detections.empty()
    idx = idx[np.argsort(-scores[idx], kind="stable")][:max_det]
    return Detections(
        np.ascontiguousarray(pred[idx, :4]),
        np.ascontiguousarray(scores[idx]),
        class_ids[idx],
    )


def decode_classification(
    output: npt.NDArray[np.floating],
) -> tuple[int, float, npt.NDArray[np.float32]]:
    """``(class_id, confidence, probs)`` of a ``[B, nc]`` classification output (batch 0).

    ultralytics classifiers end in a softmax, so the output normally sums to 1. When it does
    not (non-negative and summing to 1 within 1e-3), the values are taken as logits and a
    softmax is applied, so ``confidence`` is always a probability.
    """
    probs = np.asarray(output, dtype=np.float32)
    if probs.ndim == 2:
        probs = probs[0]
    probs = probs.reshape(-1)
    if probs.size == 0:
        raise ValueError("empty classification output")
    total = float(probs.sum(dtype=np.float64))
    if not (float(probs.min()) >= 0.0 and abs(total - 1.0) <= 1e-3):
        shifted = probs.astype(np.float64) - float(probs.max())
        exp = np.exp(shifted)
        probs = (exp / exp.sum()).astype(np.float32)
    class_id = int(np.argmax(probs))
    return class_id, float(probs[class_id]), probs
