"""Tests for the numpy ByteTrack tracker, its assignment solver and per-stream state."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random

import numpy as np
import numpy.typing as npt
import pytest

from pytrickle_worker.engine.tracking import (
    ByteTracker,
    TrackerConfig,
    TrackerState,
    box_iou,
    linear_assignment,
    min_cost_assignment,
)
from pytrickle_worker.engine.tracking import assignment as assignment_module
from pytrickle_worker.engine.tracking import bytetrack as bytetrack_module
from pytrickle_worker.engine.tracking.assignment import (
    overlapping_pairs,
    pair_iou,
    sparse_linear_assignment,
)
from pytrickle_worker.engine.tracking.kalman import KalmanFilterXYAH

FloatArray = npt.NDArray[np.float64]


# -- helpers -----------------------------------------------------------------------


def box(cx: float, cy: float, w: float = 40.0, h: float = 80.0) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def step(
    tracker: ByteTracker,
    boxes: list[list[float]],
    scores: list[float] | None = None,
    classes: list[int] | None = None,
) -> list[int]:
    n = len(boxes)
    b = np.asarray(boxes, dtype=np.float64).reshape(n, 4)
    s = np.full(n, 0.9) if scores is None else np.asarray(scores, dtype=np.float64)
    c = np.zeros(n, dtype=np.int64) if classes is None else np.asarray(classes, dtype=np.int64)
    out = tracker.update(b, s, c)
    assert out.dtype == np.int64
    assert out.shape == (n,)
    return [int(x) for x in out]


def run_gap(fps: float, gap: int) -> tuple[int, list[int]]:
    """A stationary object tracked 5 frames, absent ``gap`` frames, then back for 2 frames.

    Returns the id before the gap and the ids of the two frames after it.
    """
    tracker = ByteTracker(fps)
    obj = box(200, 200)
    ids = [step(tracker, [obj])[0] for _ in range(5)]
    assert ids == [1] * 5
    for _ in range(gap):
        assert step(tracker, []) == []
    return ids[0], [step(tracker, [obj])[0], step(tracker, [obj])[0]]


# -- tracking behaviour ----------------------------------------------------------


def test_steady_motion_keeps_one_id_for_100_frames() -> None:
    tracker = ByteTracker(30.0)
    ids = [step(tracker, [box(50 + 4.0 * f, 100 + 1.5 * f)])[0] for f in range(100)]
    assert ids == [1] * 100
    (snap,) = tracker.active_tracks()
    assert snap.track_id == 1
    # The Kalman state follows the object (constant velocity is learnt).
    np.testing.assert_allclose(snap.box, box(50 + 4.0 * 99, 100 + 1.5 * 99), atol=1.0)


def test_crossing_objects_keep_distinct_stable_ids() -> None:
    tracker = ByteTracker(30.0)
    rng = np.random.default_rng(1)
    seen_a: set[int] = set()
    seen_b: set[int] = set()
    for f in range(80):
        a = box(100 + 5.0 * f, 200)  # left -> right
        b = box(500 - 5.0 * f, 240)  # right -> left, half overlapping vertically
        order = [int(i) for i in rng.permutation(2)]  # detections arrive in any order
        dets = [[a, b][i] for i in order]
        ids = step(tracker, dets, scores=[0.9, 0.8])
        by_obj = {order[k]: ids[k] for k in range(2)}
        seen_a.add(by_obj[0])
        seen_b.add(by_obj[1])
    assert len(seen_a) == 1
    assert len(seen_b) == 1
    assert seen_a != seen_b
    assert seen_a | seen_b == {1, 2}


def test_neighbouring_objects_moving_together_keep_ids() -> None:
    tracker = ByteTracker(30.0)
    history: list[list[int]] = []
    for f in range(60):
        dets = [box(100 + 3.0 * f + 45.0 * k, 200 + 0.5 * f) for k in range(4)]
        history.append(step(tracker, dets))
    assert all(ids == [1, 2, 3, 4] for ids in history)


def test_gap_within_max_time_lost_recovers_old_id() -> None:
    assert ByteTracker(30.0).max_time_lost == 30
    old, after = run_gap(30.0, 30)
    assert after == [old, old]


def test_gap_longer_than_max_time_lost_gets_new_id() -> None:
    old, after = run_gap(30.0, 31)
    # A new track after frame 1 is unconfirmed for one frame, then takes the next id.
    assert after == [-1, old + 1]


def test_moving_object_recovers_after_short_occlusion() -> None:
    tracker = ByteTracker(30.0)
    for f in range(20):
        assert step(tracker, [box(100 + 6.0 * f, 150)]) == [1]
    for _ in range(8):
        step(tracker, [])
    # Reappears where constant velocity puts it; the Kalman prediction matches.
    assert step(tracker, [box(100 + 6.0 * 28, 150)]) == [1]


@pytest.mark.parametrize(("fps", "buffer"), [(5.0, 30), (10.0, 30), (15.0, 10), (60.0, 30)])
def test_max_time_lost_scales_with_frame_rate(fps: float, buffer: int) -> None:
    expected = round(fps / 30 * buffer)
    tracker = ByteTracker(fps, TrackerConfig(track_buffer=buffer))
    assert tracker.max_time_lost == expected


def test_five_fps_gap_boundary() -> None:
    # round(5 / 30 * 30) = 5 frames (one second), not 30 frames (six seconds).
    old, after = run_gap(5.0, 5)
    assert after == [old, old]
    old, after = run_gap(5.0, 6)
    assert after == [-1, old + 1]


def test_set_frame_rate_recomputes_max_time_lost() -> None:
    tracker = ByteTracker(30.0)
    tracker.set_frame_rate(5.0)
    assert tracker.frame_rate == 5.0
    assert tracker.max_time_lost == 5
    state = TrackerState(frame_rate=10.0)
    existing = state.tracker_for("pipeline")
    assert existing.max_time_lost == 10
    state.set_frame_rate(2.0)
    assert existing.max_time_lost == 2
    assert state.tracker_for("pipeline.branches[0]").max_time_lost == 2
    # A positive buffer never rounds down to zero frames.
    assert ByteTracker(0.2).max_time_lost == 1


def test_tracker_states_have_independent_counters() -> None:
    s1 = TrackerState()
    assert step(s1.tracker_for("pipeline"), [box(100, 100), box(300, 100)]) == [1, 2]
    s2 = TrackerState()  # must not reset s1's counter
    assert step(s2.tracker_for("pipeline"), [box(100, 100)]) == [1]
    t1 = s1.tracker_for("pipeline")
    assert t1 is s1.tracker_for("pipeline")
    step(t1, [box(100, 100), box(300, 100), box(500, 100)])
    assert step(t1, [box(100, 100), box(300, 100), box(500, 100)]) == [1, 2, 3]
    assert step(s2.tracker_for("pipeline"), [box(100, 100)]) == [1]


def test_node_paths_share_the_stream_counter() -> None:
    state = TrackerState()
    root = state.tracker_for("pipeline")
    branch = state.tracker_for("pipeline.branches[0]")
    assert root is not branch
    assert step(root, [box(100, 100)]) == [1]
    assert step(branch, [box(100, 100)]) == [2]  # same box, different node: own track
    assert step(root, [box(100, 100)]) == [1]
    assert sorted(state.node_paths) == ["pipeline", "pipeline.branches[0]"]
    state.reset()  # tracks dropped, counter continues: ids never repeat in a stream
    assert step(root, [box(100, 100)]) == [3]


def test_low_score_detection_continues_but_never_starts_a_track() -> None:
    tracker = ByteTracker(30.0)
    # Low (0.1 < s < 0.25) on the very first frame: no track.
    assert step(tracker, [box(100, 100)], scores=[0.2]) == [-1]
    for _ in range(5):
        assert step(tracker, [box(100, 100)], scores=[0.2]) == [-1]
    assert tracker.active_tracks() == []
    # A high-score object, then only low-score detections of it: the track continues.
    assert step(tracker, [box(300, 100)], scores=[0.9]) == [-1]  # unconfirmed (not frame 1)
    assert step(tracker, [box(300, 100)], scores=[0.9]) == [1]
    for _ in range(10):
        assert step(tracker, [box(300, 100)], scores=[0.15]) == [1]
    # At or below track_low_thresh a detection is ignored (the track goes lost) ...
    assert step(tracker, [box(300, 100)], scores=[0.05]) == [-1]
    # ... and a low-score detection does not revive a lost track (only tracked ones).
    assert step(tracker, [box(300, 100)], scores=[0.2]) == [-1]
    assert step(tracker, [box(300, 100)], scores=[0.9]) == [1]
    assert tracker.ids.last_id == 1


def test_unconfirmed_track_gets_id_on_second_frame() -> None:
    tracker = ByteTracker(30.0)
    a = box(100, 100)
    b = box(400, 100)
    assert step(tracker, [a]) == [1]  # frame 1: confirmed at once
    assert step(tracker, [b, a]) == [-1, 1]  # frame 2: b is new -> unconfirmed
    assert step(tracker, [a, b]) == [1, 2]  # frame 3: b matched again -> confirmed
    assert step(tracker, [b, a]) == [2, 1]


def test_unconfirmed_track_that_misses_consumes_no_id() -> None:
    tracker = ByteTracker(30.0)
    a = box(100, 100)
    assert step(tracker, [a]) == [1]
    assert step(tracker, [a, box(400, 100)]) == [1, -1]  # flicker, never seen again
    assert step(tracker, [a]) == [1]
    assert step(tracker, [a, box(600, 300)]) == [1, -1]
    assert step(tracker, [a, box(600, 300)]) == [1, 2]  # no gap: 2, not 3
    assert tracker.ids.last_id == 2


def test_ids_have_no_gaps_with_flickering_detections() -> None:
    rng = np.random.default_rng(7)
    tracker = ByteTracker(30.0)
    seen: set[int] = set()
    for f in range(150):
        dets: list[list[float]] = []
        scores: list[float] = []
        for k in range(6):
            # object k is visible during a window of frames
            if 20 * k <= f < 20 * k + 60:
                dets.append(box(80 + 150.0 * k + 1.5 * (f - 20 * k), 300))
                scores.append(0.9)
        # One-frame false positives (not on frame 1, where every new track is confirmed).
        for _ in range(int(rng.integers(0, 3)) if f > 0 else 0):
            cx, cy = rng.uniform(50, 1200), rng.uniform(500, 700)
            dets.append(box(float(cx), float(cy), 30, 30))
            scores.append(float(rng.uniform(0.3, 0.9)))
        ids = step(tracker, dets, scores=scores)
        seen.update(i for i in ids if i >= 0)
        confirmed = [i for i in ids if i >= 0]
        assert len(confirmed) == len(set(confirmed))  # one detection per id per frame
    # Six real objects, one id each; dozens of one-frame false positives consumed none.
    assert seen == {1, 2, 3, 4, 5, 6}
    assert tracker.ids.last_id == 6


def test_empty_detections() -> None:
    tracker = ByteTracker(30.0)
    out = tracker.update(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))
    assert out.shape == (0,)
    assert out.dtype == np.int64
    assert tracker.update([], [], []).shape == (0,)
    assert tracker.update(np.zeros(0), np.zeros(0), np.zeros(0)).shape == (0,)
    # Frame 4 is not the first frame: the new object is unconfirmed first.
    assert step(tracker, [box(100, 100)]) == [-1]
    assert step(tracker, [box(100, 100)]) == [1]
    assert step(tracker, []) == []
    assert step(tracker, [box(100, 100)]) == [1]


def test_class_of_latest_match_is_recorded_association_is_class_agnostic() -> None:
    tracker = ByteTracker(30.0)
    assert step(tracker, [box(100, 100)], classes=[2]) == [1]
    assert step(tracker, [box(101, 100)], classes=[7]) == [1]
    (snap,) = tracker.active_tracks()
    assert snap.class_id == 7
    assert snap.score == pytest.approx(0.9)


def test_float_class_ids_are_accepted_when_integral() -> None:
    tracker = ByteTracker(30.0)
    out = tracker.update(np.array([box(100, 100)]), np.array([0.9]), np.array([3.0]))
    assert out.tolist() == [1]
    with pytest.raises(ValueError, match="class_ids must be integers"):
        tracker.update(np.array([box(100, 100)]), np.array([0.9]), np.array([3.5]))


def test_reset_restarts_own_counter_and_first_frame() -> None:
    tracker = ByteTracker(30.0)
    step(tracker, [box(100, 100), box(300, 100)])
    tracker.reset()
    assert tracker.frame_id == 0
    assert tracker.active_tracks() == []
    assert step(tracker, [box(500, 100)]) == [1]  # first frame again: confirmed at once


# -- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("boxes", "scores", "classes", "message"),
    [
        (np.zeros(4), np.zeros(1), np.zeros(1, dtype=np.int64), r"boxes must have shape \(N, 4\)"),
        (np.zeros((2, 5)), np.zeros(2), np.zeros(2, dtype=np.int64), r"boxes must have shape"),
        (np.zeros((2, 4)), np.zeros(3), np.zeros(2, dtype=np.int64), r"scores must have shape"),
        (np.zeros((2, 4)), np.zeros((2, 1)), np.zeros(2, dtype=np.int64), r"scores must"),
        (np.zeros((2, 4)), np.zeros(2), np.zeros(1, dtype=np.int64), r"class_ids must have"),
        (np.full((1, 4), np.nan), np.zeros(1), np.zeros(1, dtype=np.int64), r"finite"),
        (np.zeros((1, 4)), np.array([np.inf]), np.zeros(1, dtype=np.int64), r"finite"),
        (np.zeros((1, 4)), np.zeros(1), np.array(["a"]), r"class_ids must be integers"),
    ],
)
def test_invalid_detections_raise_value_error(
    boxes: FloatArray, scores: FloatArray, classes: npt.NDArray[np.generic], message: str
) -> None:
    tracker = ByteTracker(30.0)
    with pytest.raises(ValueError, match=message):
        tracker.update(boxes, scores, classes)
    assert tracker.frame_id == 0  # a rejected call does not advance the tracker


@pytest.mark.parametrize("fps", [0.0, -5.0, math.nan, math.inf])
def test_invalid_frame_rate_raises(fps: float) -> None:
    with pytest.raises(ValueError, match="frame_rate"):
        ByteTracker(fps)
    with pytest.raises(ValueError, match="frame_rate"):
        TrackerState(frame_rate=fps)
    with pytest.raises(ValueError, match="frame_rate"):
        ByteTracker(30.0).set_frame_rate(fps)


def test_invalid_config_raises() -> None:
    with pytest.raises(ValueError, match="track_low_thresh"):
        TrackerConfig(track_low_thresh=0.5, track_high_thresh=0.3)
    with pytest.raises(ValueError, match="track_buffer"):
        TrackerConfig(track_buffer=-1)
    with pytest.raises(ValueError, match="match_thresh"):
        TrackerConfig(match_thresh=math.nan)


def test_cost_matrix_validation() -> None:
    with pytest.raises(ValueError, match="2-D"):
        min_cost_assignment(np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        linear_assignment(np.array([[np.nan]]), 0.5)


# -- assignment solver ---------------------------------------------------------------


def brute_force_full(cost: FloatArray) -> float:
    n, m = int(cost.shape[0]), int(cost.shape[1])
    if n <= m:
        return min(
            float(sum(cost[i, p[i]] for i in range(n))) for p in itertools.permutations(range(m), n)
        )
    return brute_force_full(cost.T)


def brute_force_partial(cost: FloatArray, thresh: float) -> float:
    """Minimum of sum(cost - thresh) over partial matchings using pairs with cost <= thresh."""
    n, m = int(cost.shape[0]), int(cost.shape[1])

    def best(i: int, used: frozenset[int]) -> float:
        if i == n:
            return 0.0
        value = best(i + 1, used)  # row i unmatched
        for j in range(m):
            if j not in used and cost[i, j] <= thresh:
                value = min(value, cost[i, j] - thresh + best(i + 1, used | {j}))
        return value

    return best(0, frozenset())


def test_min_cost_assignment_equals_brute_force() -> None:
    rng = np.random.default_rng(42)
    for trial in range(300):
        n, m = int(rng.integers(1, 7)), int(rng.integers(1, 7))
        if trial % 3 == 0:  # many ties
            cost = rng.integers(0, 4, size=(n, m)).astype(np.float64)
        else:
            cost = rng.uniform(-2.0, 5.0, size=(n, m))
        rows, cols = min_cost_assignment(cost)
        assert len(rows) == min(n, m)
        assert len(set(rows.tolist())) == len(rows)
        assert len(set(cols.tolist())) == len(cols)
        assert cost[rows, cols].sum() == pytest.approx(brute_force_full(cost), abs=1e-9)


def test_linear_assignment_with_threshold_equals_brute_force() -> None:
    rng = np.random.default_rng(3)
    for _ in range(300):
        n, m = int(rng.integers(1, 7)), int(rng.integers(1, 7))
        cost = rng.uniform(0.0, 1.0, size=(n, m))
        thresh = float(rng.choice([0.3, 0.5, 0.8, 1.0]))
        matches, u_rows, u_cols = linear_assignment(cost, thresh)
        assert matches.dtype == np.int64
        r, c = matches[:, 0], matches[:, 1]
        assert np.all(cost[r, c] <= thresh)
        assert len(set(r.tolist())) == len(r)
        assert len(set(c.tolist())) == len(c)
        assert sorted([*r.tolist(), *u_rows.tolist()]) == list(range(n))
        assert sorted([*c.tolist(), *u_cols.tolist()]) == list(range(m))
        got = float((cost[r, c] - thresh).sum())
        assert got == pytest.approx(brute_force_partial(cost, thresh), abs=1e-9)


def test_linear_assignment_is_not_greedy() -> None:
    cost = np.array([[0.1, 0.2], [0.15, 0.9]])
    matches, u_rows, u_cols = linear_assignment(cost, 0.5)
    # Greedy would take (0, 0) and leave row 1 unmatched; the optimum matches both.
    assert matches.tolist() == [[0, 1], [1, 0]]
    assert u_rows.size == 0
    assert u_cols.size == 0


def test_linear_assignment_empty() -> None:
    matches, u_rows, u_cols = linear_assignment(np.zeros((0, 3)), 0.5)
    assert matches.shape == (0, 2)
    assert u_rows.tolist() == []
    assert u_cols.tolist() == [0, 1, 2]
    matches, u_rows, u_cols = linear_assignment(np.zeros((2, 0)), 0.5)
    assert matches.shape == (0, 2)
    assert u_rows.tolist() == [0, 1]
    assert u_cols.tolist() == []


def test_min_cost_assignment_large_matrix_is_fast_and_valid() -> None:
    rng = np.random.default_rng(0)
    cost = rng.uniform(size=(250, 280))
    rows, cols = min_cost_assignment(cost)
    assert len(rows) == 250
    assert len(set(cols.tolist())) == 250
    # The optimum can be no worse than the identity-like or row-wise-best-feasible picks.
    assert cost[rows, cols].sum() <= cost[np.arange(250), np.arange(250)].sum()


def test_box_iou_vectorised_matches_scalar() -> None:
    rng = np.random.default_rng(5)
    a = rng.uniform(0, 100, size=(7, 2))
    a = np.concatenate([a, a + rng.uniform(0, 50, size=(7, 2))], axis=1)
    b = rng.uniform(0, 100, size=(5, 2))
    b = np.concatenate([b, b + rng.uniform(0, 50, size=(5, 2))], axis=1)
    b[0] = [10, 10, 10, 30]  # degenerate (zero width)
    got = box_iou(a, b)
    assert got.shape == (7, 5)
    for i in range(7):
        for j in range(5):
            iw = max(0.0, min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0]))
            ih = max(0.0, min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]))
            inter = iw * ih
            area_a = (a[i, 2] - a[i, 0]) * (a[i, 3] - a[i, 1])
            area_b = (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1])
            union = area_a + area_b - inter
            expected = inter / union if union > 0 else 0.0
            assert got[i, j] == pytest.approx(expected)
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 5)
    assert box_iou([[0, 0, 10, 10]], [[0, 0, 10, 10]])[0, 0] == pytest.approx(1.0)


# -- decomposed assignment -----------------------------------------------------------


def undecomposed_assignment(cost: FloatArray, thresh: float) -> tuple[list[int], list[int]]:
    """The pre-decomposition algorithm: one complete assignment of the clipped matrix."""
    rows, cols = min_cost_assignment(np.minimum(cost - thresh, 0.0))
    keep = cost[rows, cols] < thresh
    return rows[keep].tolist(), cols[keep].tolist()


def check_partial(
    cost: FloatArray,
    thresh: float,
    result: tuple[npt.NDArray[np.int64], npt.NDArray[np.intp], npt.NDArray[np.intp]],
) -> float:
    """Assert ``result`` is a valid partial assignment; return its objective."""
    matches, u_rows, u_cols = result
    n, m = cost.shape
    assert matches.dtype == np.int64
    assert matches.shape == (matches.shape[0], 2)
    r, c = matches[:, 0], matches[:, 1]
    assert np.all(np.diff(r) > 0)  # sorted by row, rows distinct
    assert len(set(c.tolist())) == len(c)
    assert np.all(cost[r, c] < thresh)
    assert sorted([*r.tolist(), *u_rows.tolist()]) == list(range(n))
    assert sorted([*c.tolist(), *u_cols.tolist()]) == list(range(m))
    return float((cost[r, c] - thresh).sum())


def block_diagonal_cost(rng: np.random.Generator, thresh: float, *, ties: bool) -> FloatArray:
    """Random independent blocks of admissible pairs, rows and columns shuffled.

    Entries outside the blocks (and the block entries left out) are ``>= thresh``; some
    are exactly ``thresh``.
    """
    sizes = [(int(rng.integers(1, 6)), int(rng.integers(1, 6))) for _ in range(rng.integers(1, 13))]
    extra_rows, extra_cols = int(rng.integers(0, 4)), int(rng.integers(0, 4))
    n = sum(h for h, _ in sizes) + extra_rows
    m = sum(w for _, w in sizes) + extra_cols
    cost = rng.uniform(thresh, thresh + 1.0, size=(n, m))
    cost[rng.uniform(size=(n, m)) < 0.1] = thresh
    r0 = c0 = 0
    for h, w in sizes:
        if ties:
            block = rng.integers(0, 4, size=(h, w)) * (thresh / 4.0)
        else:
            block = rng.uniform(0.0, thresh, size=(h, w))
        admissible = rng.uniform(size=(h, w)) < rng.uniform(0.3, 1.0)
        cost[r0 : r0 + h, c0 : c0 + w] = np.where(admissible, block, cost[r0 : r0 + h, c0 : c0 + w])
        r0 += h
        c0 += w
    return cost[rng.permutation(n)][:, rng.permutation(m)]


@pytest.mark.parametrize("ties", [False, True])
def test_linear_assignment_many_components_equals_undecomposed(ties: bool) -> None:
    rng = np.random.default_rng(17 if ties else 18)
    for _ in range(300):
        thresh = float(rng.choice([0.5, 0.8]))
        cost = block_diagonal_cost(rng, thresh, ties=ties)
        result = linear_assignment(cost, thresh)
        got = check_partial(cost, thresh, result)
        rows, cols = undecomposed_assignment(cost, thresh)
        assert got == pytest.approx(float((cost[rows, cols] - thresh).sum()), abs=1e-9)
        if not ties:  # a unique optimum: the very same pairs
            assert result[0].tolist() == [[r, c] for r, c in zip(rows, cols, strict=True)]


def test_linear_assignment_sparse_small_equals_brute_force() -> None:
    rng = np.random.default_rng(23)
    for trial in range(300):
        n, m = int(rng.integers(1, 7)), int(rng.integers(1, 7))
        thresh = 0.6
        if trial % 2:
            # ties, and entries == thresh
            cost = rng.integers(0, 5, size=(n, m)).astype(np.float64) / 5.0
        else:
            cost = rng.uniform(0.0, 1.0, size=(n, m))
        cost[rng.uniform(size=(n, m)) < 0.5] = 1.0  # sparse: several components
        got = check_partial(cost, thresh, linear_assignment(cost, thresh))
        assert got == pytest.approx(brute_force_partial(cost, thresh), abs=1e-9)


def test_linear_assignment_large_sparse_equals_undecomposed() -> None:
    # Tracker-like: each row touches a few neighbouring columns (small components),
    # plus one dense 70 x 75 block that goes to the vectorised exact solver.
    rng = np.random.default_rng(29)
    n, m = 260, 280
    cost = np.ones((n, m))
    for i in range(n):
        j = int(rng.integers(0, m - 3))
        k = int(rng.integers(1, 4))
        cost[i, j : j + k] = rng.uniform(0.0, 1.0, size=k)
    cost[:70, 200:275] = rng.uniform(0.0, 1.1, size=(70, 75))
    result = linear_assignment(cost, 0.8)
    got = check_partial(cost, 0.8, result)
    rows, cols = undecomposed_assignment(cost, 0.8)
    assert got == pytest.approx(float((cost[rows, cols] - 0.8).sum()), abs=1e-9)
    assert result[0].tolist() == [[r, c] for r, c in zip(rows, cols, strict=True)]


def test_linear_assignment_pairs_at_the_threshold_stay_unmatched() -> None:
    matches, u_rows, u_cols = linear_assignment(np.array([[0.5]]), 0.5)
    assert matches.shape == (0, 2)
    assert u_rows.tolist() == [0]
    assert u_cols.tolist() == [0]
    matches, _, u_cols = linear_assignment(np.array([[0.5, 0.49], [0.5, 0.5]]), 0.5)
    assert matches.tolist() == [[0, 1]]
    assert u_cols.tolist() == [0]


def test_sparse_linear_assignment_equals_dense_in_any_pair_order() -> None:
    rng = np.random.default_rng(31)
    for trial in range(200):
        thresh = 0.8
        cost = block_diagonal_cost(rng, thresh, ties=trial % 2 == 1)
        rows, cols = np.nonzero(cost < thresh)
        order = rng.permutation(rows.size)
        got = sparse_linear_assignment(
            (cost.shape[0], cost.shape[1]),
            rows[order],
            cols[order],
            cost[rows[order], cols[order]],
            thresh,
        )
        want = linear_assignment(cost, thresh)
        for g, w in zip(got, want, strict=True):
            assert g.tolist() == w.tolist()


def test_sparse_linear_assignment_without_pairs() -> None:
    empty = np.zeros(0, dtype=np.intp)
    matches, u_rows, u_cols = sparse_linear_assignment((2, 3), empty, empty, np.zeros(0), 0.5)
    assert matches.shape == (0, 2)
    assert u_rows.tolist() == [0, 1]
    assert u_cols.tolist() == [0, 1, 2]


def test_plain_python_and_vectorised_solvers_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(37)
    matrices: list[FloatArray] = []
    for trial in range(150):
        n, m = int(rng.integers(1, 12)), int(rng.integers(1, 12))
        if trial % 2:
            matrices.append(rng.integers(0, 3, size=(n, m)).astype(np.float64))  # ties
        else:
            matrices.append(np.minimum(rng.uniform(-1.0, 0.5, size=(n, m)), 0.0))
    plain = [min_cost_assignment(c) for c in matrices]
    monkeypatch.setattr(assignment_module, "_SMALL_PROBLEM", 0)
    for cost, (rows, cols) in zip(matrices, plain, strict=True):
        v_rows, v_cols = min_cost_assignment(cost)
        assert v_rows.tolist() == rows.tolist()
        assert v_cols.tolist() == cols.tolist()


def random_boxes(rng: np.random.Generator, count: int, *, extent: float = 300.0) -> FloatArray:
    centre = rng.uniform(0.0, extent, size=(count, 2))
    size = rng.uniform(-10.0, 80.0, size=(count, 2))  # a few inverted / degenerate boxes
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    boxes[::4] = np.round(boxes[::4], -1)  # shared edges and coordinates
    return boxes


def test_overlapping_pairs_cover_every_positive_iou_and_pair_iou_matches() -> None:
    rng = np.random.default_rng(41)
    for trial in range(300):
        a = random_boxes(rng, int(rng.integers(0, 40)))
        b = random_boxes(rng, int(rng.integers(0, 40)))
        if trial % 3 == 0 and len(a) and len(b):
            half = len(b) // 2
            b[:half] = a[rng.integers(0, len(a), size=half)]  # identical boxes
        dense = box_iou(a, b)
        rows, cols = overlapping_pairs(a, b)
        pairs = set(zip(rows.tolist(), cols.tolist(), strict=True))
        assert len(pairs) == rows.size  # each pair once
        assert {(int(i), int(j)) for i, j in np.argwhere(dense > 0.0)} <= pairs
        assert np.array_equal(pair_iou(a, b, rows, cols), dense[rows, cols])
    rows, cols = overlapping_pairs(np.zeros((0, 4)), random_boxes(rng, 3))
    assert rows.size == 0
    assert cols.size == 0


def test_min_cost_assignment_empty() -> None:
    rows, cols = min_cost_assignment(np.zeros((0, 3)))
    assert rows.size == 0
    assert cols.size == 0


def test_duplicate_tracks_keep_the_longer_lived() -> None:
    # Two near-identical objects, both tracked; one vanishes and its track goes lost on
    # top of the other (IoU > 0.85): the younger lost duplicate is dropped, so the
    # object coming back gets a new id instead of the old one.
    tracker = ByteTracker(30.0)
    a, b = box(200, 200), box(201, 201)
    for _ in range(4):
        assert step(tracker, [a, b], scores=[0.9, 0.8]) == [1, 2]
    assert step(tracker, [a]) == [1]
    assert step(tracker, [a, b], scores=[0.9, 0.8]) == [1, -1]
    assert step(tracker, [a, b], scores=[0.9, 0.8]) == [1, 3]
    # The younger track still tracked while the older one is lost on top of it: the
    # tracked one is dropped (its detection reports -1) and the older lost one survives.
    tracker = ByteTracker(30.0)
    a, b = box(200, 200), box(202, 202)
    assert step(tracker, [a]) == [1]
    assert step(tracker, [a]) == [1]
    assert step(tracker, [a, b], scores=[0.9, 0.8]) == [1, -1]
    assert step(tracker, [a, b], scores=[0.9, 0.8]) == [1, 2]
    assert step(tracker, [a, b], scores=[0.9, 0.8]) == [1, 2]
    assert step(tracker, [b]) == [-1]
    assert step(tracker, [b]) == [1]


# -- batched Kalman filter -----------------------------------------------------------


def random_kalman_states(rng: np.random.Generator, count: int) -> tuple[FloatArray, FloatArray]:
    kf = KalmanFilterXYAH()
    measurement = np.column_stack(
        [
            rng.uniform(0, 1920, count),
            rng.uniform(0, 1080, count),
            rng.uniform(0.2, 3.0, count),
            rng.uniform(5.0, 500.0, count),
        ]
    )
    mean, cov = kf.multi_initiate(measurement)
    mean[:, 4:] = rng.normal(0.0, 3.0, size=(count, 4))
    noise = rng.normal(size=(count, 8, 8))
    cov = cov + 0.1 * noise @ noise.transpose(0, 2, 1)  # random SPD covariances
    return mean, cov


def test_kalman_multi_initiate_equals_initiate() -> None:
    rng = np.random.default_rng(43)
    kf = KalmanFilterXYAH()
    measurement = np.column_stack(
        [
            rng.uniform(0, 1920, 50),
            rng.uniform(0, 1080, 50),
            rng.uniform(0.2, 3, 50),
            rng.uniform(1e-3, 500, 50),
        ]
    )
    mean, cov = kf.multi_initiate(measurement)
    for k in range(50):
        m1, p1 = kf.initiate(measurement[k])
        assert np.array_equal(mean[k], m1)
        assert np.array_equal(cov[k], p1)


def test_kalman_multi_predict_equals_matrix_form() -> None:
    rng = np.random.default_rng(47)
    kf = KalmanFilterXYAH()
    mean, cov = random_kalman_states(rng, 40)
    motion = np.eye(8)
    motion[:4, 4:] = np.eye(4)
    for _ in range(3):
        new_mean, new_cov = kf.multi_predict(mean, cov)
        h = mean[:, 3]
        pos, vel = h / 20, h / 160
        std = np.stack(
            [pos, pos, np.full_like(h, 1e-2), pos, vel, vel, np.full_like(h, 1e-5), vel], axis=1
        )
        q = np.zeros_like(cov)
        q[:, np.arange(8), np.arange(8)] = np.square(std)
        np.testing.assert_array_equal(new_mean, mean @ motion.T)
        np.testing.assert_allclose(new_cov, motion @ cov @ motion.T + q, rtol=1e-12)
        mean, cov = new_mean, new_cov
    empty_mean, empty_cov = kf.multi_predict(np.zeros((0, 8)), np.zeros((0, 8, 8)))
    assert empty_mean.shape == (0, 8)
    assert empty_cov.shape == (0, 8, 8)


def test_kalman_batched_update_equals_single_updates() -> None:
    rng = np.random.default_rng(53)
    kf = KalmanFilterXYAH()
    mean, cov = kf.multi_predict(*random_kalman_states(rng, 64))
    measurement = mean[:, :4] + rng.normal(0.0, 4.0, size=(64, 4))
    measurement[:, 2] = np.abs(measurement[:, 2]) + 0.1
    new_mean, new_cov = kf.multi_update(mean, cov, measurement)
    mean_before, cov_before = mean.copy(), cov.copy()
    for k in range(64):
        m1, p1 = kf.update(mean[k], cov[k], measurement[k])
        np.testing.assert_allclose(new_mean[k], m1, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(new_cov[k], p1, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(mean, mean_before)  # inputs untouched
    np.testing.assert_array_equal(cov, cov_before)
    empty_mean, empty_cov = kf.multi_update(np.zeros((0, 8)), np.zeros((0, 8, 8)), np.zeros((0, 4)))
    assert empty_mean.shape == (0, 8)
    assert empty_cov.shape == (0, 8, 8)


# -- busy scenes -----------------------------------------------------------------------


Frame = tuple[FloatArray, FloatArray, npt.NDArray[np.int64]]


def busy_scene(
    frames: int = 12, clutter: int = 150, stable: int = 20, seed: int = 11
) -> list[Frame]:
    """Smoothly moving objects plus drifting, jittering, flickering low-score clutter."""
    rnd = random.Random(seed)
    objects: list[tuple[bool, float, float, float, float, float, float, float]] = []
    for _ in range(stable):
        objects.append(
            (
                True,
                rnd.uniform(100, 1800),
                rnd.uniform(100, 980),
                rnd.uniform(-6, 6),
                rnd.uniform(-4, 4),
                rnd.uniform(30, 120),
                rnd.uniform(60, 200),
                0.0,
            )
        )
    for _ in range(clutter):
        objects.append(
            (
                False,
                rnd.uniform(0, 1920),
                rnd.uniform(0, 1080),
                rnd.uniform(-2, 2),
                rnd.uniform(-2, 2),
                rnd.uniform(15, 90),
                rnd.uniform(15, 110),
                rnd.uniform(0.1, 0.5),
            )
        )
    out: list[Frame] = []
    for f in range(frames):
        boxes: list[list[float]] = []
        scores: list[float] = []
        classes: list[int] = []
        for is_stable, x, y, vx, vy, w, h, base in objects:
            if not is_stable and rnd.random() < 0.1:
                continue
            jitter = 0.0 if is_stable else 1.0
            cx = x + vx * f + jitter * rnd.gauss(0, 1.5)
            cy = y + vy * f + jitter * rnd.gauss(0, 1.5)
            ww = w * (1 + jitter * rnd.gauss(0, 0.04))
            hh = h * (1 + jitter * rnd.gauss(0, 0.04))
            boxes.append([cx - ww / 2, cy - hh / 2, cx + ww / 2, cy + hh / 2])
            if is_stable:
                scores.append(min(max(rnd.gauss(0.8, 0.08), 0.3), 1.0))
            else:
                scores.append(min(max(base + rnd.gauss(0, 0.05), 0.1), 0.95))
            classes.append(rnd.randrange(3))
        out.append((np.array(boxes), np.array(scores), np.array(classes, dtype=np.int64)))
    return out


def test_busy_scene_ids_equal_the_per_track_implementation() -> None:
    # Per frame: (confirmed detections, sum of their ids) as produced by the original
    # per-track tracker (dense Hungarian, one Kalman solve per track) on this scene.
    expected = [
        (113, 6441),
        (96, 5101),
        (108, 6330),
        (92, 5260),
        (100, 5884),
        (102, 6102),
        (106, 6343),
        (107, 6486),
        (104, 6266),
        (108, 6405),
        (109, 6429),
        (99, 5719),
    ]
    tracker = ByteTracker(30.0)
    got: list[tuple[int, int]] = []
    for boxes, scores, classes in busy_scene():
        ids = tracker.update(boxes, scores, classes)
        confirmed = ids[ids >= 0]
        assert len(set(confirmed.tolist())) == confirmed.size
        got.append((int(confirmed.size), int(confirmed.sum())))
    assert got == expected
    assert tracker.ids.last_id == 121


@pytest.mark.parametrize(
    "config",
    [TrackerConfig(), TrackerConfig(fuse_score=False), TrackerConfig(match_thresh=1.2)],
)
def test_sparse_and_dense_association_give_identical_tracks(
    monkeypatch: pytest.MonkeyPatch, config: TrackerConfig
) -> None:
    scene = busy_scene(frames=10, clutter=120, seed=5)

    def replay(dense_max: int) -> list[list[object]]:
        monkeypatch.setattr(bytetrack_module, "_DENSE_MAX", dense_max)
        tracker = ByteTracker(30.0, config)
        history: list[list[object]] = []
        for f, (boxes, scores, classes) in enumerate(scene):
            keep = 0 if f in (4, 5) else len(scores)  # occlusion: tracks go lost, come back
            history.append(tracker.update(boxes[:keep], scores[:keep], classes[:keep]).tolist())
            history.append([dataclasses.astuple(t) for t in tracker.active_tracks()])
        return history

    sparse = replay(0)
    dense = replay(10**9)
    assert sparse == dense
    assert any(len(frame) > 50 for frame in sparse)
