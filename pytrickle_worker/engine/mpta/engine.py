"""Pure pipeline execution: one RGB frame in, one typed result out.

Semantics follow the original detector worker's final ``run_pipeline`` (pympta.py):

* a detection node detects (restricted to its triggerClasses), drops detections below its
  minConfidence and keeps the most confident one;
* the branches whose triggerClasses hold that class and whose minConfidence is at or below its
  confidence run in order until one finds something, each on the bbox region when it sets
  ``crop``, else on the full frame;
* a classification node returns its top-1 class and confidence;
* the final result is the deepest result found, with the bbox of the root detection; when no
  branch matches, or the branch finds nothing, the parent's detection is the result.

Choices that differ from the original detector worker, on purpose:

* tracking is explicit: the caller passes the stream's :class:`TrackerState`; nothing is global;
* a classification result keeps the parent's track id instead of ``None``, so the CMS can tell
  one tracked object's events from another's;
* a crop is passed to the branch as it is; the model's own preprocessing resizes it (the original
  detector worker first squashed every crop to 224x224, which distorted its aspect ratio);
* the actions of every branch on the result's path run once each, with the final detection, on
  the image each saw (the original ran them too, a classifier's twice); the root's only when it
  produced the result.

This module never touches Redis or the event loop: the result names the node whose actions
should run and the image that node saw, and the caller dispatches them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pytrickle_worker.core.frame import FramePixels
from pytrickle_worker.engine.inference.imageops import crop
from pytrickle_worker.engine.inference.model import StageTimings
from pytrickle_worker.engine.inference.postprocess import default_nms_iou
from pytrickle_worker.engine.mpta.loader import LoadedNode, LoadedPipeline
from pytrickle_worker.engine.tracking.bytetrack import TrackerState

BBox = tuple[int, int, int, int]
#: A frame as the runner takes it: an RGB array, or a decoded frame whose RGB is made only
#: when a crop, a classifier or an action's image needs it (detectors scale it directly).
Image = np.ndarray | FramePixels


def _rgb(image: Image) -> np.ndarray:
    return image if isinstance(image, np.ndarray) else image.to_rgb()


@dataclass(frozen=True)
class EngineSettings:
    #: None: the model family's default (:func:`default_nms_iou`).
    iou_threshold: float | None = None
    max_detections: int = 300
    tracker_low_conf: float = 0.1


@dataclass(frozen=True)
class RootOverrides:
    """Per-stream overrides of the root node's ``minConfidence`` and ``triggerClasses``.

    ``None`` keeps the pipeline's own value. ``trigger_classes`` names classes of the root
    model; names the model does not have are ignored (the caller validates them).
    Branch nodes are never overridden.
    """

    min_confidence: float | None = None
    trigger_classes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class NodeResult:
    """What one node of the chain found, and how long it took (milliseconds)."""

    model_id: str
    node_path: str
    class_name: str | None
    confidence: float | None
    bbox: BBox | None
    track_id: int | None
    ms: float

    def to_json(self) -> dict[str, Any]:
        return {
            "modelId": self.model_id,
            "class": self.class_name,
            "confidence": self.confidence,
            "bbox": list(self.bbox) if self.bbox is not None else None,
            "ms": round(self.ms, 3),
        }


@dataclass
class PipelineResult:
    """The outcome of one frame.

    ``detection`` is exactly what goes into an ``imageDetection`` message (``class``,
    ``confidence``, ``id``), or ``None`` when nothing qualified. ``bbox`` is in source-frame
    pixels. ``action_node``/``action_image`` name whose actions to run, on what image;
    ``path_actions`` the branches between the root and that node that have actions, deepest
    first, each with the image it saw: theirs run too, with the same detection.
    """

    detection: dict[str, Any] | None
    bbox: BBox | None
    nodes: list[NodeResult] = field(default_factory=list[NodeResult])
    timings: StageTimings = field(default_factory=StageTimings)
    tracking_ms: float = 0.0
    action_node: LoadedNode | None = None
    action_image: np.ndarray | None = None
    path_actions: list[tuple[LoadedNode, np.ndarray]] = field(
        default_factory=list[tuple[LoadedNode, np.ndarray]]
    )
    #: Whether the frame was run with a tracker (then ``detection["id"]`` None means the
    #: track is not confirmed yet).
    tracked: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "detection": self.detection,
            "bbox": list(self.bbox) if self.bbox is not None else None,
            "nodes": [node.to_json() for node in self.nodes],
        }


@dataclass
class _Found:
    node: LoadedNode
    class_name: str
    confidence: float
    track_id: int | None
    bbox: BBox | None
    image: Image


def _to_bbox(box: np.ndarray) -> BBox:
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    return (x1, y1, x2, y2)


class PipelineRunner:
    """Runs a loaded pipeline on frames. Stateless apart from its settings: safe to share."""

    def __init__(self, settings: EngineSettings | None = None) -> None:
        self.settings = settings or EngineSettings()

    def run(
        self,
        pipeline: LoadedPipeline,
        frame: Image,
        tracker: TrackerState | None = None,
        overrides: RootOverrides | None = None,
    ) -> PipelineResult:
        if isinstance(frame, np.ndarray) and (
            frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8
        ):
            raise ValueError(
                f"frame must be an H×W×3 uint8 RGB array, got shape {frame.shape} {frame.dtype}"
            )
        tracked = tracker is not None and pipeline.tracks
        result = PipelineResult(detection=None, bbox=None, tracked=tracked)
        if overrides is not None and pipeline.tracks:
            found = self._detect(pipeline.root, frame, (0, 0), tracker, result, overrides)
        else:
            found = self._run_node(pipeline.root, frame, (0, 0), tracker, result)
        if found is None:
            return result
        result.detection = {
            "class": found.class_name,
            "confidence": found.confidence,
            "id": found.track_id,
        }
        result.bbox = found.bbox
        result.action_node = found.node
        image = found.image
        if isinstance(image, np.ndarray):
            result.action_image = image
        elif found.node.spec.actions:
            # Converted here, on the inference thread, and only for a node with actions.
            result.action_image = image.to_rgb()
        return result

    def _run_node(
        self,
        node: LoadedNode,
        image: Image,
        offset: tuple[int, int],
        tracker: TrackerState | None,
        result: PipelineResult,
        parent_track_id: int | None = None,
        *,
        cropped: bool = False,
    ) -> _Found | None:
        if node.is_classifier:
            return self._classify(node, image, result, parent_track_id, squash=cropped)
        return self._detect(node, image, offset, tracker, result)

    def _classify(
        self,
        node: LoadedNode,
        image: Image,
        result: PipelineResult,
        parent_track_id: int | None,
        *,
        squash: bool,
    ) -> _Found | None:
        started = time.perf_counter()
        # A crop is squashed to the classifier's input, as the original resized every crop
        # to 224x224: the archive's classifiers were made for the whole object, and a centre
        # crop of an elongated one (a 4:1 plate) would show them a quarter of it.
        top1 = node.model.classify(image, timings=result.timings, squash=squash)
        ms = (time.perf_counter() - started) * 1000
        result.nodes.append(
            NodeResult(
                node.spec.model_id,
                node.path,
                top1.class_name,
                top1.confidence,
                None,
                parent_track_id,
                ms,
            )
        )
        return _Found(node, top1.class_name, top1.confidence, parent_track_id, None, image)

    def _detect(
        self,
        node: LoadedNode,
        image: Image,
        offset: tuple[int, int],
        tracker: TrackerState | None,
        result: PipelineResult,
        overrides: RootOverrides | None = None,
    ) -> _Found | None:
        settings = self.settings
        started = time.perf_counter()
        min_confidence = node.spec.min_confidence
        trigger_indices = node.trigger_indices
        if overrides is not None:
            if overrides.min_confidence is not None:
                min_confidence = overrides.min_confidence
            if overrides.trigger_classes is not None:
                wanted = set(overrides.trigger_classes)
                trigger_indices = np.asarray(
                    [i for i, name in enumerate(node.model.info.names) if name in wanted],
                    dtype=np.int64,
                )
        # Detections below minConfidence still feed the tracker (ByteTrack's low-score stage
        # keeps tracks alive through brief confidence dips); only qualified ones are reported.
        floor = min(settings.tracker_low_conf, min_confidence)
        dets = node.model.detect(
            image,
            conf_thres=floor if tracker is not None else min_confidence,
            classes=trigger_indices,
            iou_thres=(
                settings.iou_threshold
                if settings.iou_threshold is not None
                else default_nms_iou(node.model.info.contract)
            ),
            max_det=settings.max_detections,
            timings=result.timings,
        )
        boxes = dets.boxes
        if offset != (0, 0) and len(boxes):
            boxes = boxes + np.array([offset[0], offset[1], offset[0], offset[1]], np.float32)
        track_ids: np.ndarray | None = None
        if tracker is not None:
            track_started = time.perf_counter()
            track_ids = tracker.tracker_for(node.path).update(boxes, dets.scores, dets.class_ids)
            result.tracking_ms += (time.perf_counter() - track_started) * 1000
        qualified = np.flatnonzero(dets.scores >= min_confidence)
        if track_ids is not None and bool((track_ids >= 0).any()):
            # The original's track() replaced a frame's detections by its tracker's confirmed
            # tracks whenever there were any, so its best box was the best confirmed object: a
            # newcomer scoring higher must not hide the car already followed (its result,
            # without an id, would be sent nowhere). Only a frame with no confirmed track keeps
            # its raw, id-less detections.
            qualified = qualified[track_ids[qualified] >= 0]
        if len(qualified) == 0:
            ms = (time.perf_counter() - started) * 1000
            result.nodes.append(
                NodeResult(node.spec.model_id, node.path, None, None, None, None, ms)
            )
            return None
        best = int(qualified[np.argmax(dets.scores[qualified])])
        class_name = node.model.info.names[int(dets.class_ids[best])]
        confidence = float(dets.scores[best])
        track_id = int(track_ids[best]) if track_ids is not None and track_ids[best] >= 0 else None
        bbox = _to_bbox(boxes[best])
        ms = (time.perf_counter() - started) * 1000
        result.nodes.append(
            NodeResult(node.spec.model_id, node.path, class_name, confidence, bbox, track_id, ms)
        )
        own = _Found(node, class_name, confidence, track_id, bbox, image)

        # Every branch that the detection triggers is tried in order until one finds
        # something, as the original worker's run_pipeline did; none: this detection.
        for branch in node.branches:
            if class_name not in branch.spec.trigger_classes:
                continue
            if confidence < branch.spec.min_confidence:
                continue
            sub_image, sub_offset = image, offset
            if branch.spec.crop:
                local = dets.boxes[best]
                cropped = crop(_rgb(image), local)
                if cropped is None:
                    continue
                sub_image = cropped
                sub_offset = (
                    offset[0] + max(0, int(local[0])),
                    offset[1] + max(0, int(local[1])),
                )
            deeper = self._run_node(
                branch, sub_image, sub_offset, tracker, result, track_id, cropped=branch.spec.crop
            )
            if deeper is not None:
                deeper.bbox = bbox
                if deeper.node is not branch and branch.spec.actions:
                    # A branch between this node and the result: the original ran its
                    # actions too, with the deeper detection, on the image it was given.
                    result.path_actions.append((branch, _rgb(sub_image)))
                return deeper
        return own
