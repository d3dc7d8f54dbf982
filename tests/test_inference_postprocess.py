"""Output-contract inference, detection decoding and NMS (numpy only, no sessions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from pytrickle_worker.core.errors import ModelError
from pytrickle_worker.engine.inference.postprocess import (
    MAX_WH,
    Detections,
    OutputContract,
    decode_classification,
    decode_detections,
    default_nms_iou,
    expected_anchors,
    infer_contract,
    nms,
)

Dim = int | str | None

V8 = OutputContract.YOLOV8_DETECT
V5 = OutputContract.YOLOV5_DETECT
E2E = OutputContract.END2END_DETECT
CLS = OutputContract.CLASSIFY


def reference_nms(
    boxes: npt.NDArray[np.float32], scores: npt.NDArray[np.float32], thres: float, max_det: int
) -> list[int]:
    """The textbook greedy loop, one kept box at a time."""
    order = np.argsort(-scores, kind="stable")
    b = boxes.astype(np.float64)
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    keep: list[int] = []
    while order.size and len(keep) < max_det:
        i, rest = int(order[0]), order[1:]
        keep.append(i)
        w = np.clip(np.minimum(b[i, 2], b[rest, 2]) - np.maximum(b[i, 0], b[rest, 0]), 0, None)
        h = np.clip(np.minimum(b[i, 3], b[rest, 3]) - np.maximum(b[i, 1], b[rest, 1]), 0, None)
        inter = w * h
        union = areas[i] + areas[rest] - inter
        ious = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[ious <= thres]
    return keep


def v8_output(
    rows: Sequence[tuple[float, float, float, float, int, float]], nc: int, n: int = 50
) -> npt.NDArray[np.float32]:
    """[1, 4+nc, n] with the given (cx, cy, w, h, class, score) anchors, zeros elsewhere."""
    out = np.zeros((1, 4 + nc, n), np.float32)
    for k, (cx, cy, w, h, c, s) in enumerate(rows):
        out[0, :4, k] = (cx, cy, w, h)
        out[0, 4 + c, k] = s
    return out


# ------------------------------------------------------------------ contract inference


@pytest.mark.parametrize(
    ("shape", "nc_meta", "task", "kwargs", "expected"),
    [
        ([1, 84, 8400], 80, "detect", {}, (V8, 80)),
        ([1, 84, 8400], None, None, {}, (V8, 80)),
        ([1, 8400, 85], None, None, {}, (V5, 80)),
        ([1, 25200, 85], 80, None, {}, (V5, 80)),
        (["batch", 84, "anchors"], 80, "detect", {}, (V8, 80)),
        (["batch", "anchors", 85], None, None, {}, (V5, 80)),
        ([1, 300, 6], 80, "detect", {"end2end": True}, (E2E, 80)),
        ([1, 300, 6], 80, "detect", {}, (E2E, 80)),
        ([1, 300, 6], None, None, {}, (E2E, 0)),
        (["batch", 300, 6], 3, "detect", {}, (E2E, 3)),
        # One-class v5 vs end-to-end: settled by the anchor count of the input size.
        ([1, 25200, 6], 1, None, {"input_size": (640, 640)}, (V5, 1)),
        ([1, 25200, 6], None, None, {}, (V5, 1)),
        (["b", "n", 6], 1, None, {}, (V5, 1)),
        # Tiny heads (the demo models): metadata picks v8 over end-to-end.
        ([1, 7, 6], 3, "detect", {}, (V8, 3)),
        ([1, 6, 8], 3, "detect", {}, (V5, 3)),
        ([1, 10, 12], None, None, {}, (V8, 6)),
        ([1, 12, 11], None, None, {}, (V5, 6)),
        ([1, 1000], None, "classify", {}, (CLS, 1000)),
        ([1, 3], 3, None, {}, (CLS, 3)),
        (["batch", "nc"], 5, "classify", {}, (CLS, 5)),
        # Old yolov5 exports append the raw head outputs.
        ([1, 25200, 85], 80, None, {}, (V5, 80)),
    ],
)
def test_infer_contract(
    shape: list[Dim],
    nc_meta: int | None,
    task: str | None,
    kwargs: dict[str, Any],
    expected: tuple[OutputContract, int],
) -> None:
    assert infer_contract([shape], nc_meta, task, **kwargs) == expected


def test_infer_contract_ignores_raw_yolov5_head_outputs() -> None:
    shapes = [[1, 25200, 85], [1, 3, 80, 80, 85], [1, 3, 40, 40, 85], [1, 3, 20, 20, 85]]
    assert infer_contract(shapes, 80, None) == (V5, 80)


def test_expected_anchors() -> None:
    assert expected_anchors((640, 640)) == 8400
    assert expected_anchors((384, 640)) == 48 * 80 + 24 * 40 + 12 * 20


@pytest.mark.parametrize(
    ("shapes", "nc_meta", "task", "kwargs", "fragment"),
    [
        ([[1, 3, 4, 5]], None, None, {}, "rank-4"),
        ([[1, 116, 8400], [1, 32, 160, 160]], 80, "segment", {}, "segmentation"),
        ([[1, 116, 8400], [1, 32, 160, 160]], None, None, {}, "segmentation"),
        ([[1, 56, 8400]], 1, "pose", {"kpt_shape": True}, "pose"),
        ([[1, 56, 8400]], 1, None, {"kpt_shape": True}, "pose"),
        ([[1, 20, 8400]], 15, "obb", {}, "OBB"),
        ([[1, 85, 8400]], 80, "detect", {}, "nc=81"),
        ([["b", "x", "y"]], 80, None, {}, "dynamic"),
        ([[1, 84, 8400], [1, 84, 8400]], 80, None, {}, "one output"),
        ([], None, None, {}, "no outputs"),
        ([[8400]], None, None, {}, "rank-1"),
        ([[1, 10]], 5, None, {}, "metadata names 5"),
        ([[1, 4, 8400]], None, None, {}, "at least 5 rows"),
    ],
)
def test_infer_contract_unsupported(
    shapes: list[list[Dim]],
    nc_meta: int | None,
    task: str | None,
    kwargs: dict[str, Any],
    fragment: str,
) -> None:
    with pytest.raises(ModelError) as info:
        infer_contract(shapes, nc_meta, task, **kwargs)
    message = str(info.value)
    assert fragment in message
    assert "Supported output contracts" in message
    assert "[B, 4+nc, N]" in message and "[B, nc]" in message
    if shapes:
        assert str(shapes[0][0]) in message


# ------------------------------------------------------------------ v8 decoding


def test_v8_decode_boxes_scores_and_order() -> None:
    out = v8_output([(100, 100, 20, 40, 1, 0.6), (300, 200, 50, 50, 0, 0.9)], nc=3)
    dets = decode_detections(out, V8, 0.25)
    assert isinstance(dets, Detections)
    assert dets.boxes.dtype == np.float32 and dets.scores.dtype == np.float32
    assert dets.class_ids.dtype == np.int32
    np.testing.assert_allclose(dets.boxes, [[275, 175, 325, 225], [90, 80, 110, 120]])
    np.testing.assert_allclose(dets.scores, [0.9, 0.6], rtol=1e-6)
    assert dets.class_ids.tolist() == [0, 1]


def test_confidence_filter_is_strict_and_before_nms() -> None:
    # The low box would suppress nothing anyway; what matters is that 0.25 itself is out.
    out = v8_output([(100, 100, 20, 20, 0, 0.25), (300, 300, 20, 20, 0, 0.2500001)], nc=2)
    dets = decode_detections(out, V8, 0.25)
    assert len(dets) == 1
    assert dets.scores[0] > 0.25
    # A filtered-out high-IoU box must not suppress a kept one: the filter runs first.
    out = v8_output([(100, 100, 20, 20, 0, 0.3), (100, 100, 20, 20, 0, 0.1)], nc=1)
    assert len(decode_detections(out, V8, 0.2)) == 1


def test_nms_suppresses_same_class_above_threshold() -> None:
    # IoU of two 100x100 boxes shifted by d: (100-d)/(100+d).
    rows = [
        (100, 100, 100, 100, 0, 0.9),
        (110, 100, 100, 100, 0, 0.8),  # IoU 0.818 > 0.7: suppressed
        (300, 300, 100, 100, 0, 0.7),
        (320, 300, 100, 100, 0, 0.6),  # IoU 0.667 <= 0.7: kept
    ]
    dets = decode_detections(v8_output(rows, nc=2), V8, 0.25, iou_thres=0.7)
    np.testing.assert_allclose(dets.scores, [0.9, 0.7, 0.6], rtol=1e-6)
    # A lower threshold suppresses the second pair too.
    dets = decode_detections(v8_output(rows, nc=2), V8, 0.25, iou_thres=0.5)
    np.testing.assert_allclose(dets.scores, [0.9, 0.7], rtol=1e-6)


def test_nms_is_class_aware_unless_agnostic() -> None:
    rows = [(100, 100, 100, 100, 0, 0.9), (101, 100, 100, 100, 1, 0.8)]
    dets = decode_detections(v8_output(rows, nc=2), V8, 0.25)
    assert sorted(dets.class_ids.tolist()) == [0, 1]
    dets = decode_detections(v8_output(rows, nc=2), V8, 0.25, agnostic=True)
    assert dets.class_ids.tolist() == [0]


def test_max_det_caps_results() -> None:
    rows = [(20 + 30 * k, 50, 10, 10, k % 3, 0.3 + 0.01 * k) for k in range(20)]
    dets = decode_detections(v8_output(rows, nc=3), V8, 0.25, max_det=5)
    assert len(dets) == 5
    np.testing.assert_allclose(dets.scores, [0.49, 0.48, 0.47, 0.46, 0.45], rtol=1e-5)
    assert len(decode_detections(v8_output(rows, nc=3), V8, 0.25, max_det=0)) == 0


def test_max_nms_keeps_the_best_candidates() -> None:
    rows = [(20 + 30 * k, 50, 10, 10, 0, 0.3 + 0.01 * k) for k in range(20)]
    dets = decode_detections(v8_output(rows, nc=1), V8, 0.25, max_nms=3)
    np.testing.assert_allclose(dets.scores, [0.49, 0.48, 0.47], rtol=1e-5)


def test_class_filter_uses_the_best_class_like_ultralytics() -> None:
    out = np.zeros((1, 4 + 3, 4), np.float32)
    out[0, :4, :] = [[50, 150, 250, 350], [50, 50, 50, 50], [20, 20, 20, 20], [20, 20, 20, 20]]
    out[0, 4:, 0] = [0.9, 0.0, 0.0]  # person
    out[0, 4:, 1] = [0.0, 0.8, 0.0]  # car
    out[0, 4:, 2] = [0.0, 0.0, 0.7]  # truck
    out[0, 4:, 3] = [0.6, 0.5, 0.0]  # person best, car second: dropped by classes=[1]
    dets = decode_detections(out, V8, 0.25, classes=np.array([1, 2]))
    assert dets.class_ids.tolist() == [1, 2]
    assert len(decode_detections(out, V8, 0.25, classes=np.array([], np.int64))) == 0
    assert len(decode_detections(out, V8, 0.25, classes=None)) == 4


def test_class_filter_runs_before_nms() -> None:
    # A disallowed, higher-scoring, overlapping box must not suppress an allowed one.
    rows = [(100, 100, 100, 100, 0, 0.9), (100, 100, 100, 100, 1, 0.8)]
    dets = decode_detections(v8_output(rows, nc=2), V8, 0.25, classes=np.array([1]), agnostic=True)
    assert dets.class_ids.tolist() == [1]


# ------------------------------------------------------------------ v5 / e2e decoding


def test_v5_confidence_is_objectness_times_class() -> None:
    out = np.zeros((1, 6, 5 + 2), np.float32)
    out[0, 0] = [100, 100, 20, 20, 0.9, 0.1, 0.8]  # conf 0.72, class 1
    out[0, 1] = [200, 200, 20, 20, 0.3, 1.0, 0.0]  # conf 0.30, class 0
    out[0, 2] = [300, 300, 20, 20, 0.2, 1.0, 0.0]  # obj below conf: dropped
    out[0, 3] = [400, 400, 20, 20, 0.5, 0.4, 0.4]  # conf 0.2: dropped
    dets = decode_detections(out, V5, 0.25)
    np.testing.assert_allclose(dets.scores, [0.72, 0.30], rtol=1e-5)
    assert dets.class_ids.tolist() == [1, 0]
    np.testing.assert_allclose(dets.boxes[0], [90, 90, 110, 110])
    assert decode_detections(out, V5, 0.25, classes=np.array([0])).class_ids.tolist() == [0]


def test_v5_nms() -> None:
    out = np.zeros((1, 3, 6), np.float32)
    out[0, 0] = [100, 100, 100, 100, 0.9, 1.0]
    out[0, 1] = [105, 100, 100, 100, 0.8, 1.0]
    out[0, 2] = [300, 100, 100, 100, 0.7, 1.0]
    assert len(decode_detections(out, V5, 0.25, iou_thres=0.45)) == 2


def test_end2end_filters_without_nms() -> None:
    out = np.zeros((1, 300, 6), np.float32)
    out[0, 0] = [10, 10, 50, 50, 0.5, 2]
    out[0, 1] = [10, 10, 50, 50, 0.9, 2]  # identical box: end-to-end output is not NMS-ed
    out[0, 2] = [100, 100, 150, 150, 0.2, 0]
    out[0, 3] = [100, 100, 150, 150, 0.7, 1]
    dets = decode_detections(out, E2E, 0.25)
    np.testing.assert_allclose(dets.scores, [0.9, 0.7, 0.5])
    assert dets.class_ids.tolist() == [2, 1, 2]
    np.testing.assert_allclose(dets.boxes[1], [100, 100, 150, 150])
    assert decode_detections(out, E2E, 0.25, classes=np.array([1])).class_ids.tolist() == [1]
    assert len(decode_detections(out, E2E, 0.25, max_det=2)) == 2
    assert len(decode_detections(out, E2E, 0.95)) == 0


def test_decode_rejects_classify_contract() -> None:
    with pytest.raises(ValueError, match="not a detection"):
        decode_detections(np.zeros((1, 3), np.float32), CLS, 0.25)


# ------------------------------------------------------------------ NMS


def test_nms_matches_reference_greedy() -> None:
    rng = np.random.default_rng(7)
    for trial in range(60):
        n = int(rng.integers(1, 400))
        spread = float(rng.uniform(10, 600))
        xy = rng.uniform(0, spread, (n, 2))
        wh = rng.uniform(0, 120, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        scores = rng.uniform(0, 1, n).astype(np.float32)
        if trial % 4 == 0:
            scores = np.round(scores, 1)  # ties keep input order
        thres = float(rng.uniform(0.1, 0.9))
        max_det = int(rng.integers(1, 300))
        expected = reference_nms(boxes, scores, thres, max_det)
        assert nms(boxes, scores, thres, max_det).tolist() == expected


def test_nms_pair_sweep_matches_reference_on_awkward_boxes() -> None:
    """The x-sweep (the usual path) against the textbook loop: class offsets, ties, duplicates,
    touching edges, NaN coordinates."""
    rng = np.random.default_rng(11)
    for trial in range(200):
        n = int(rng.integers(1, 300))
        xy = rng.uniform(0, float(rng.uniform(5, 700)), (n, 2))
        wh = rng.uniform(0, 150, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        if trial % 3 == 0:
            classes = rng.integers(0, int(rng.integers(1, 80)), n)
            boxes += (classes * MAX_WH).astype(np.float32)[:, None]
        if trial % 5 == 0:
            boxes[: n // 2] = boxes[0]
            touching = boxes[n // 2 :: 3]  # moved to start exactly where the first one ends
            touching[:, 2] += boxes[0, 2] - touching[:, 0]
            touching[:, 0] = boxes[0, 2]
            touching[:, 1], touching[:, 3] = boxes[0, 1], boxes[0, 3]
        if trial % 7 == 0:
            boxes[rng.integers(0, n, 2), int(rng.integers(0, 4))] = np.nan
        scores = rng.uniform(0, 1, n).astype(np.float32)
        if trial % 2 == 0:
            scores = np.round(scores, 1)
        thres = float(rng.uniform(0.1, 0.9))
        max_det = int(rng.integers(1, 300))
        with np.errstate(invalid="ignore"):
            expected = reference_nms(boxes, scores, thres, max_det)
        assert nms(boxes, scores, thres, max_det).tolist() == expected, trial


def test_nms_crowd_beyond_the_pair_budget_takes_the_blocked_path() -> None:
    """800 boxes over one another: 319,600 x-overlapping pairs, past the sweep's budget."""
    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 20, (800, 2))
    boxes = np.concatenate([xy, xy + 200], 1).astype(np.float32)
    scores = rng.uniform(0, 1, 800).astype(np.float32)
    assert nms(boxes, scores, 0.9, 300).tolist() == reference_nms(boxes, scores, 0.9, 300)


def test_nms_class_offsets_separate_classes() -> None:
    boxes = np.array([[0, 0, 100, 100], [0, 0, 100, 100]], np.float32)
    offsets = np.array([0, 1], np.float32)[:, None] * MAX_WH
    assert sorted(nms(boxes + offsets, np.array([0.9, 0.8]), 0.7).tolist()) == [0, 1]
    assert nms(boxes, np.array([0.9, 0.8]), 0.7).tolist() == [0]


def test_nms_edge_cases() -> None:
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.7).size == 0
    one = nms(np.array([[0, 0, 1, 1]], np.float32), np.array([0.5], np.float32), 0.7)
    assert one.tolist() == [0]
    # Zero-area boxes never suppress each other.
    points = np.array([[5, 5, 5, 5], [5, 5, 5, 5]], np.float32)
    assert sorted(nms(points, np.array([0.9, 0.8], np.float32), 0.5).tolist()) == [0, 1]


# ------------------------------------------------------------------ classification


def test_decode_classification_probabilities_pass_through() -> None:
    class_id, confidence, probs = decode_classification(np.array([[0.1, 0.7, 0.2]], np.float32))
    assert class_id == 1
    assert confidence == pytest.approx(0.7)
    np.testing.assert_allclose(probs, [0.1, 0.7, 0.2])


def test_decode_classification_applies_softmax_to_logits() -> None:
    logits = np.array([[2.0, -1.0, 0.5]], np.float32)
    class_id, confidence, probs = decode_classification(logits)
    expected = np.exp(logits[0]) / np.exp(logits[0]).sum()
    assert class_id == 0
    assert confidence == pytest.approx(float(expected[0]), rel=1e-5)
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="empty"):
        decode_classification(np.zeros((1, 0), np.float32))


def test_each_family_gets_its_own_nms_iou_by_default() -> None:
    # yolov5's detect.py runs NMS at 0.45, ultralytics at 0.7: two same-class boxes with an
    # IoU of 0.6 are one object for a YOLOv5 model and two for a YOLOv8 one.
    assert default_nms_iou(OutputContract.YOLOV5_DETECT) == 0.45
    for contract in (OutputContract.YOLOV8_DETECT, OutputContract.END2END_DETECT):
        assert default_nms_iou(contract) == 0.7
    # cx, cy, w, h, objectness, one class: boxes 100 wide, 25 apart (IoU 75/125 = 0.6).
    v5 = np.array([[[100, 100, 100, 100, 0.9, 1.0], [125, 100, 100, 100, 0.8, 1.0]]], np.float32)
    contract = OutputContract.YOLOV5_DETECT
    kept = decode_detections(v5, contract, 0.25, iou_thres=default_nms_iou(contract))
    assert len(kept) == 1 and kept.scores[0] == pytest.approx(0.9)
    v8 = np.ascontiguousarray(v5[0][:, [0, 1, 2, 3, 4]].T[None])  # [1, 4+1, 2]
    contract = OutputContract.YOLOV8_DETECT
    assert len(decode_detections(v8, contract, 0.25, iou_thres=default_nms_iou(contract))) == 2
