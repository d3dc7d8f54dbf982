"""ByteTrack-style multi-object tracker (numpy only) and per-stream tracking state.

Semantics follow ByteTrack / ultralytics ``BYTETracker`` (``bytetrack.yaml`` defaults)
with three deliberate differences, all about IDs and time:

* **Per-stream ID counter.** IDs come from an :class:`IdCounter` owned by the stream's
  :class:`TrackerState`, never from a class-level global (ultralytics issue #14841), so
  IDs are unique within a stream, independent across streams, and creating a tracker
  never resets anyone else's counter.
* **IDs without gaps.** ultralytics takes ``next_id()`` when a track is *created*; a new
  track after frame 1 is unconfirmed, and if it misses the next frame it is dropped and
  its ID is lost, leaving gaps. Here a track gets its ID when it is **confirmed**
  (activated): at creation on the tracker's first frame, otherwise when it is matched a
  second time. IDs are issued at the end of :meth:`ByteTracker.update`, after duplicate
  removal, in input-detection order, so every issued ID is returned in that frame's
  output and the sequence is 1, 2, 3, ... with no holes.
* **Real frame rate.** ``max_time_lost = round(frame_rate / 30 * track_buffer)`` is
  computed from the stream's actual rate and recomputed by :meth:`set_frame_rate`
  (ultralytics hard-codes 30 fps). A positive ``track_buffer`` never rounds to 0.

Association is class-agnostic (as in ultralytics); each track records the class of the
detection it last matched.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .assignment import (
    box_iou,
    fuse_score,
    iou_distance,
    linear_assignment,
    overlapping_pairs,
    pair_iou,
    sparse_linear_assignment,
)
from .kalman import KalmanFilterXYAH

__all__ = [
    "ByteTracker",
    "IdCounter",
    "TrackSnapshot",
    "TrackState",
    "TrackerConfig",
    "TrackerState",
]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
IndexArray = npt.NDArray[np.intp]

_SECOND_MATCH_THRESH = 0.5  # IoU distance, low-score association
_UNCONFIRMED_MATCH_THRESH = 0.7  # (fused) IoU distance, unconfirmed tracks
_DUPLICATE_IOU_DIST = 0.15  # tracked/lost pairs with IoU > 0.85 are duplicates
_MIN_BOX_SIDE = 1e-3  # pixels; keeps a = w / h finite for degenerate boxes
_REFERENCE_FPS = 30.0
# Up to this many track x detection pairs the IoU matrix is computed densely; above it
# only the pairs of overlapping boxes are scored (same values, less work).
_DENSE_MAX = 6144


@dataclass(frozen=True)
class TrackerConfig:
    """Tracker thresholds; the defaults are ultralytics' ``bytetrack.yaml``."""

    track_high_thresh: float = 0.25
    track_low_thresh: float = 0.1
    new_track_thresh: float = 0.25
    track_buffer: int = 30
    """Frames a lost track is kept, expressed at 30 fps; scaled by the real frame rate."""
    match_thresh: float = 0.8
    fuse_score: bool = True

    def __post_init__(self) -> None:
        for name in ("track_high_thresh", "track_low_thresh", "new_track_thresh", "match_thresh"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0.0:
                raise ValueError(f"TrackerConfig.{name} must be a finite number >= 0, got {value}")
        if self.track_low_thresh > self.track_high_thresh:
            raise ValueError(
                "TrackerConfig.track_low_thresh must be <= track_high_thresh, got "
                f"{self.track_low_thresh} > {self.track_high_thresh}"
            )
        if isinstance(self.track_buffer, bool) or int(self.track_buffer) != self.track_buffer:
            raise ValueError(
                f"TrackerConfig.track_buffer must be an integer, got {self.track_buffer!r}"
            )
        if self.track_buffer < 0:
            raise ValueError(f"TrackerConfig.track_buffer must be >= 0, got {self.track_buffer}")


class IdCounter:
    """Monotonic track-ID source: 1, 2, 3, ... One per stream, shared by its trackers."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next_id(self) -> int:
        with self._lock:
            self._last += 1
            return self._last

    @property
    def last_id(self) -> int:
        """The most recently issued ID (0 before the first)."""
        return self._last

    def reset(self) -> None:
        with self._lock:
            self._last = 0


class TrackState(enum.Enum):
    NEW = "new"
    TRACKED = "tracked"
    LOST = "lost"
    REMOVED = "removed"


@dataclass(frozen=True)
class TrackSnapshot:
    """Read-only view of a confirmed track (see :meth:`ByteTracker.active_tracks`)."""

    track_id: int
    box: tuple[float, float, float, float]
    """Kalman-filtered xyxy box in frame pixels."""
    score: float
    class_id: int
    start_frame: int
    last_frame: int


def _xyxy_to_xyah(boxes: FloatArray) -> FloatArray:
    """(K, 4) xyxy boxes -> (K, 4) ``(cx, cy, a, h)`` with ``a = w / h``."""
    w = np.maximum(boxes[:, 2] - boxes[:, 0], _MIN_BOX_SIDE)
    h = np.maximum(boxes[:, 3] - boxes[:, 1], _MIN_BOX_SIDE)
    out = np.empty((boxes.shape[0], 4), dtype=np.float64)
    out[:, 0] = (boxes[:, 0] + boxes[:, 2]) / 2.0
    out[:, 1] = (boxes[:, 1] + boxes[:, 3]) / 2.0
    out[:, 2] = w / h
    out[:, 3] = h
    return out


def _xyah_to_xyxy(xyah: FloatArray) -> FloatArray:
    """(K, >=4) Kalman means -> (K, 4) xyxy boxes."""
    cx = xyah[:, 0]
    cy = xyah[:, 1]
    h = xyah[:, 3]
    w = xyah[:, 2] * h
    out = np.empty((xyah.shape[0], 4), dtype=np.float64)
    out[:, 0] = cx - w / 2.0
    out[:, 1] = cy - h / 2.0
    out[:, 2] = cx + w / 2.0
    out[:, 3] = cy + h / 2.0
    return out


class _Track:
    """Internal single-object state (ultralytics ``STrack`` equivalent).

    The Kalman state lives in the tracker's stacked arrays, row ``slot`` (see
    :class:`ByteTracker`), so prediction and correction run batched. A track is created
    activated (``TRACKED``) from a Kalman-initiated state.
    """

    __slots__ = (
        "class_id",
        "det_index",
        "frame_id",
        "is_activated",
        "score",
        "slot",
        "start_frame",
        "state",
        "track_id",
        "tracklet_len",
    )

    def __init__(
        self, slot: int, *, score: float, class_id: int, det_index: int, frame_id: int
    ) -> None:
        self.slot = slot
        self.score = score
        self.class_id = class_id
        self.det_index = det_index
        self.track_id = 0  # 0 = no ID yet (unconfirmed)
        self.state = TrackState.TRACKED
        self.is_activated = frame_id == 1  # only the tracker's first frame confirms at once
        self.frame_id = frame_id
        self.start_frame = frame_id
        self.tracklet_len = 0


def _slots(tracks: list[_Track]) -> IndexArray:
    return np.fromiter((t.slot for t in tracks), dtype=np.intp, count=len(tracks))


def _validate_detections(
    boxes: npt.ArrayLike, scores: npt.ArrayLike, class_ids: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, IntArray]:
    b = np.asarray(boxes, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    c_raw = np.asarray(class_ids)
    if b.size == 0 and b.ndim in (1, 2) and (b.ndim == 1 or b.shape[1] in (0, 4)):
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) (xyxy), got {b.shape}")
    n = b.shape[0]
    if s.shape != (n,):
        raise ValueError(f"scores must have shape ({n},) to match boxes {b.shape}, got {s.shape}")
    if c_raw.shape != (n,):
        raise ValueError(
            f"class_ids must have shape ({n},) to match boxes {b.shape}, got {c_raw.shape}"
        )
    if not np.all(np.isfinite(b)):
        raise ValueError("boxes must contain only finite values")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must contain only finite values")
    if c_raw.dtype.kind in "iu":
        c = c_raw.astype(np.int64)
    elif c_raw.dtype.kind in "fb" or n == 0:
        c_float = c_raw.astype(np.float64)
        if not np.all(np.isfinite(c_float)) or not np.all(c_float == np.round(c_float)):
            raise ValueError("class_ids must be integers")
        c = c_float.astype(np.int64)
    else:
        raise ValueError(f"class_ids must be integers, got dtype {c_raw.dtype}")
    return b, s, c


def _validate_fps(frame_rate: float) -> float:
    fps = float(frame_rate)
    if not math.isfinite(fps) or fps <= 0.0:
        raise ValueError(f"frame_rate must be a finite number > 0, got {frame_rate!r}")
    return fps


class ByteTracker:
    """ByteTrack for one stream at one pipeline node.

    ``update`` is called once per analysed frame with that frame's detections and returns
    the confirmed track ID of each input detection (or -1). Not thread-safe: use one
    tracker from one thread at a time (the shared :class:`IdCounter` is thread-safe).
    """

    def __init__(
        self,
        frame_rate: float,
        config: TrackerConfig = TrackerConfig(),  # frozen, immutable
        ids: IdCounter | None = None,
    ) -> None:
        self._config = config
        self._frame_rate = _validate_fps(frame_rate)
        self._owns_ids = ids is None
        self._ids = IdCounter() if ids is None else ids
        self._kf = KalmanFilterXYAH()
        self._frame_id = 0
        self._tracked: list[_Track] = []
        self._lost: list[_Track] = []
        # Kalman states of all tracked + lost tracks, row = _Track.slot.
        self._mean: FloatArray = np.zeros((0, 8), dtype=np.float64)
        self._cov: FloatArray = np.zeros((0, 8, 8), dtype=np.float64)
        self._max_time_lost = self._compute_max_time_lost()

    # -- configuration -------------------------------------------------------------

    @property
    def config(self) -> TrackerConfig:
        return self._config

    @property
    def ids(self) -> IdCounter:
        return self._ids

    @property
    def frame_rate(self) -> float:
        return self._frame_rate

    def set_frame_rate(self, fps: float) -> None:
        """Change the real analysis rate; ``max_time_lost`` is recomputed (tracks are kept)."""
        self._frame_rate = _validate_fps(fps)
        old = self._max_time_lost
        self._max_time_lost = self._compute_max_time_lost()
        if old != self._max_time_lost:
            logger.debug(
                "tracker frame rate %.3f fps: max_time_lost %d -> %d frames",
                self._frame_rate,
                old,
                self._max_time_lost,
            )

    @property
    def max_time_lost(self) -> int:
        """Frames a lost track survives: ``round(frame_rate / 30 * track_buffer)``."""
        return self._max_time_lost

    def _compute_max_time_lost(self) -> int:
        buffer = self._config.track_buffer
        frames = round(self._frame_rate * buffer / _REFERENCE_FPS)
        return max(frames, 1) if buffer > 0 else 0

    @property
    def frame_id(self) -> int:
        """Number of ``update`` calls since creation or the last ``reset``."""
        return self._frame_id

    def reset(self) -> None:
        """Drop all tracks and restart frame counting.

        A counter the tracker created itself restarts at 1; a shared counter (passed in,
        e.g. by :class:`TrackerState`) is left alone so IDs stay unique in the stream.
        """
        self._frame_id = 0
        self._tracked = []
        self._lost = []
        self._mean = np.zeros((0, 8), dtype=np.float64)
        self._cov = np.zeros((0, 8, 8), dtype=np.float64)
        self._kf = KalmanFilterXYAH()
        if self._owns_ids:
            self._ids.reset()

    def active_tracks(self) -> list[TrackSnapshot]:
        """Confirmed tracks currently in the tracked state (seen in the latest frames)."""
        tracks = [t for t in self._tracked if t.is_activated and t.track_id > 0]
        boxes: list[list[float]] = _xyah_to_xyxy(self._mean[_slots(tracks)]).tolist()
        return [
            TrackSnapshot(
                track_id=t.track_id,
                box=(x1, y1, x2, y2),
                score=t.score,
                class_id=t.class_id,
                start_frame=t.start_frame,
                last_frame=t.frame_id,
            )
            for t, (x1, y1, x2, y2) in zip(tracks, boxes, strict=True)
        ]

    # -- tracking ------------------------------------------------------------------

    def _associate(
        self,
        track_boxes: FloatArray,
        det_boxes: FloatArray,
        det_scores: FloatArray | None,
        thresh: float,
    ) -> tuple[IntArray, IndexArray, IndexArray]:
        """Optimal matching on the (score-fused when ``det_scores``) IoU distance.

        Equal to ``linear_assignment`` of the dense cost matrix: with ``thresh <= 1`` only
        overlapping boxes can match (a pair with IoU 0 costs exactly 1), so for large
        matrices only those pairs are scored.
        """
        if (
            track_boxes.shape[0] * det_boxes.shape[0] <= _DENSE_MAX
            or thresh > 1.0
            or not np.all(np.isfinite(track_boxes))
        ):
            cost = iou_distance(track_boxes, det_boxes)
            if det_scores is not None:
                cost = fuse_score(cost, det_scores)
            return linear_assignment(cost, thresh)
        rows, cols = overlapping_pairs(track_boxes, det_boxes)
        cost = 1.0 - pair_iou(track_boxes, det_boxes, rows, cols)
        if det_scores is not None:  # the same operations as fuse_score
            cost = 1.0 - (1.0 - cost) * det_scores[cols]
        keep = cost < thresh
        return sparse_linear_assignment(
            (track_boxes.shape[0], det_boxes.shape[0]),
            rows[keep],
            cols[keep],
            cost[keep],
            thresh,
        )

    def update(
        self, boxes: npt.ArrayLike, scores: npt.ArrayLike, class_ids: npt.ArrayLike
    ) -> IntArray:
        """Advance one frame.

        ``boxes`` (N, 4) float xyxy in frame pixels, ``scores`` (N,), ``class_ids`` (N,)
        integers. Returns track IDs (N,) int64 aligned with the input detections: the ID
        of the confirmed track the detection was associated with, or -1 (score at or
        below ``track_low_thresh``, a new unconfirmed track, an unmatched low-score
        detection, ...). Raises ``ValueError`` for inconsistent shapes or non-finite
        values.
        """
        b, s, c = _validate_detections(boxes, scores, class_ids)
        cfg = self._config
        kf = self._kf
        self._frame_id += 1
        fid = self._frame_id
        tracked_state = TrackState.TRACKED
        fuse = cfg.fuse_score
        score_list: list[float] = s.tolist()
        class_list: list[int] = c.tolist()

        high = np.flatnonzero(s >= cfg.track_high_thresh)
        second = np.flatnonzero((s > cfg.track_low_thresh) & (s < cfg.track_high_thresh))

        refind: list[_Track] = []
        newly_lost: list[_Track] = []
        new_tracks: list[_Track] = []

        unconfirmed = [t for t in self._tracked if not t.is_activated]
        confirmed = [t for t in self._tracked if t.is_activated]
        pool = confirmed + self._lost  # tracked and lost are disjoint

        # Predict every track in one batch. The state rows are the tracked tracks, then
        # the lost ones (see the end of update); all tracked tracks are TRACKED and all
        # lost ones LOST.
        mean = self._mean.copy()
        mean[len(self._tracked) :, 7] = 0.0  # lost tracks: freeze the height velocity
        mean, cov = kf.multi_predict(mean, self._cov)
        pred_boxes = _xyah_to_xyxy(mean)

        # The Kalman corrections of all three stages are applied at once below: the
        # stages match disjoint tracks, and none reads the state of a track matched before.
        matched: list[int] = []  # slots
        matched_dets: list[int] = []

        def apply(tracks: list[_Track], dets: list[int]) -> None:
            for track, det in zip(tracks, dets, strict=True):  # hot: kept inline
                if track.state is tracked_state:
                    track.tracklet_len += 1
                else:  # a lost track found again
                    track.tracklet_len = 0
                    track.state = tracked_state
                    refind.append(track)
                track.is_activated = True
                track.frame_id = fid
                track.score = score_list[det]
                track.class_id = class_list[det]
                track.det_index = det
                matched.append(track.slot)
            matched_dets.extend(dets)

        # 1) high-score detections vs tracked + lost tracks (IoU fused with score)
        matches, u_track, u_det = self._associate(
            pred_boxes[_slots(pool)], b[high], s[high] if fuse else None, cfg.match_thresh
        )
        apply([pool[i] for i in matches[:, 0].tolist()], high[matches[:, 1]].tolist())

        # 2) low-score detections vs the remaining *tracked* tracks (plain IoU)
        unmatched: list[int] = u_track.tolist()
        remaining = [pool[i] for i in unmatched if pool[i].state is tracked_state]
        matches, u_remaining, _ = self._associate(
            pred_boxes[_slots(remaining)], b[second], None, _SECOND_MATCH_THRESH
        )
        apply([remaining[i] for i in matches[:, 0].tolist()], second[matches[:, 1]].tolist())
        lost_rows: list[int] = u_remaining.tolist()
        for it in lost_rows:
            track = remaining[it]
            if track.state is not TrackState.LOST:  # (always: remaining are TRACKED)
                track.state = TrackState.LOST
                newly_lost.append(track)

        # 3) unconfirmed tracks vs the high-score detections left over (unconfirmed
        #    tracks are TRACKED, so none is a reactivation)
        left = high[u_det]
        matches, u_unconfirmed, u_left = self._associate(
            pred_boxes[_slots(unconfirmed)],
            b[left],
            s[left] if fuse else None,
            _UNCONFIRMED_MATCH_THRESH,
        )
        apply([unconfirmed[i] for i in matches[:, 0].tolist()], left[matches[:, 1]].tolist())
        for it in u_unconfirmed.tolist():
            unconfirmed[it].state = TrackState.REMOVED

        # Kalman correction of every matched track, one batch
        if matched:
            rows = np.asarray(matched, dtype=np.intp)
            mean[rows], cov[rows] = kf.multi_update(
                mean[rows], cov[rows], _xyxy_to_xyah(b[matched_dets])
            )

        # 4) new tracks from unmatched high-score detections
        new_dets = left[u_left]
        new_dets = new_dets[s[new_dets] >= cfg.new_track_thresh]
        if new_dets.size:
            new_mean, new_cov = kf.multi_initiate(_xyxy_to_xyah(b[new_dets]))
            new_list: list[int] = new_dets.tolist()
            new_tracks.extend(
                _Track(
                    mean.shape[0] + k,
                    score=score_list[det],
                    class_id=class_list[det],
                    det_index=det,
                    frame_id=fid,
                )
                for k, det in enumerate(new_list)
            )
            mean = np.concatenate([mean, new_mean])
            cov = np.concatenate([cov, new_cov])

        # 5) expire lost tracks, merge lists, drop duplicates
        for track in self._lost:
            if fid - track.frame_id > self._max_time_lost:  # (never one refound now)
                track.state = TrackState.REMOVED
        # The joint/sub list algebra of ByteTrack, written out: old tracked tracks still
        # tracked (matched or not yet lost), new tracks, refound lost tracks; old lost
        # tracks neither refound nor expired, then the newly lost.
        lost_state = TrackState.LOST
        tracked = [t for t in self._tracked if t.state is tracked_state]
        tracked += new_tracks
        tracked += refind
        lost = [t for t in self._lost if t.state is lost_state]
        lost += newly_lost
        tracked, lost = self._remove_duplicates(tracked, lost, mean)

        # Keep the states of the surviving tracks only: rows = tracked, then lost.
        alive = tracked + lost
        keep = _slots(alive)
        self._mean = mean[keep]
        self._cov = cov[keep]
        for row, track in enumerate(alive):
            track.slot = row
        self._tracked = tracked
        self._lost = lost

        # 6) issue IDs to tracks confirmed this frame (input order), build the output
        out = np.full(b.shape[0], -1, dtype=np.int64)
        current = [t for t in self._tracked if t.is_activated and t.frame_id == fid]
        current.sort(key=lambda t: t.det_index)
        for track in current:
            if track.track_id == 0:
                track.track_id = self._ids.next_id()
                logger.debug("track %d confirmed at frame %d", track.track_id, fid)
        out[[t.det_index for t in current]] = [t.track_id for t in current]
        return out

    @staticmethod
    def _remove_duplicates(
        tracked: list[_Track], lost: list[_Track], mean: FloatArray
    ) -> tuple[list[_Track], list[_Track]]:
        """Of each tracked/lost pair with IoU > 0.85 keep the longer-lived track.

        ``mean``: the Kalman means, row = slot.
        """
        if not tracked or not lost:
            return tracked, lost
        tracked_boxes = _xyah_to_xyxy(mean[_slots(tracked)])
        lost_boxes = _xyah_to_xyxy(mean[_slots(lost)])
        if (
            len(tracked) * len(lost) > _DENSE_MAX
            and np.all(np.isfinite(tracked_boxes))
            and np.all(np.isfinite(lost_boxes))
        ):
            # IoU > 0.85 needs overlapping boxes: score the overlapping pairs only
            rows, cols = overlapping_pairs(tracked_boxes, lost_boxes)
            dist = 1.0 - pair_iou(tracked_boxes, lost_boxes, rows, cols)
            close = dist < _DUPLICATE_IOU_DIST
            pairs = zip(rows[close].tolist(), cols[close].tolist(), strict=True)
        else:
            dist_matrix = 1.0 - box_iou(tracked_boxes, lost_boxes)
            p_idx, q_idx = np.nonzero(dist_matrix < _DUPLICATE_IOU_DIST)
            pairs = zip(p_idx.tolist(), q_idx.tolist(), strict=True)
        drop_tracked: set[int] = set()
        drop_lost: set[int] = set()
        for ip, iq in pairs:
            age_p = tracked[ip].frame_id - tracked[ip].start_frame
            age_q = lost[iq].frame_id - lost[iq].start_frame
            if age_p > age_q:
                drop_lost.add(iq)
            else:
                drop_tracked.add(ip)
        if not drop_tracked and not drop_lost:
            return tracked, lost
        return (
            [t for i, t in enumerate(tracked) if i not in drop_tracked],
            [t for i, t in enumerate(lost) if i not in drop_lost],
        )


class TrackerState:
    """All tracking state of ONE stream.

    One :class:`ByteTracker` per pipeline node path (a key such as ``"pipeline"`` or
    ``"pipeline.branches[0]"``), created on first use, all sharing one :class:`IdCounter`:
    IDs are unique within the stream and independent across streams. The pipeline engine
    receives this object as an argument; there is no global state.
    """

    def __init__(
        self,
        frame_rate: float = 30.0,
        config: TrackerConfig = TrackerConfig(),  # frozen, immutable
    ) -> None:
        self._frame_rate = _validate_fps(frame_rate)
        self._config = config
        self._ids = IdCounter()
        self._trackers: dict[str, ByteTracker] = {}

    @property
    def frame_rate(self) -> float:
        return self._frame_rate

    @property
    def config(self) -> TrackerConfig:
        return self._config

    @property
    def ids(self) -> IdCounter:
        return self._ids

    @property
    def node_paths(self) -> list[str]:
        return list(self._trackers)

    def tracker_for(self, node_path: str) -> ByteTracker:
        tracker = self._trackers.get(node_path)
        if tracker is None:
            tracker = ByteTracker(self._frame_rate, self._config, self._ids)
            self._trackers[node_path] = tracker
        return tracker

    def set_frame_rate(self, fps: float) -> None:
        """Set the stream's real analysis rate for existing and future trackers."""
        self._frame_rate = _validate_fps(fps)
        for tracker in self._trackers.values():
            tracker.set_frame_rate(self._frame_rate)

    def reset(self) -> None:
        """Drop every node's tracks; the ID counter continues so IDs never repeat."""
        for tracker in self._trackers.values():
            tracker.reset()
