"""Turn an extracted, validated archive into a tree of nodes bound to loaded models."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pytrickle_worker.core.errors import ModelError
from pytrickle_worker.engine.inference.model import OnnxModel, non_onnx_kind
from pytrickle_worker.engine.inference.postprocess import OutputContract
from pytrickle_worker.engine.inference.registry import ModelRegistry
from pytrickle_worker.engine.mpta.spec import (
    ACTION_TYPES,
    PipelineNode,
    PipelineSpec,
    RedisConfig,
    iter_nodes,
)

logger = logging.getLogger(__name__)


@dataclass
class LoadedNode:
    path: str
    spec: PipelineNode
    model: OnnxModel
    trigger_indices: np.ndarray | None
    branches: list[LoadedNode] = field(default_factory=list["LoadedNode"])

    @property
    def is_classifier(self) -> bool:
        return self.model.info.contract is OutputContract.CLASSIFY

    def walk(self) -> list[LoadedNode]:
        nodes: list[LoadedNode] = [self]
        for branch in self.branches:
            nodes.extend(branch.walk())
        return nodes


@dataclass
class LoadedPipeline:
    """A pipeline whose models are held from a :class:`ModelRegistry` until :meth:`release`."""

    source: str
    sha256: str
    root_dir: Path
    spec: PipelineSpec
    root: LoadedNode
    registry: ModelRegistry
    released: bool = False

    @property
    def redis(self) -> RedisConfig | None:
        return self.spec.redis

    @property
    def tracks(self) -> bool:
        """Whether its results carry track ids: a detector root is tracked, a classifier
        root has nothing to track."""
        return not self.root.is_classifier

    def nodes(self) -> list[LoadedNode]:
        return self.root.walk()

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        for node in self.nodes():
            self.registry.release(node.model)


def _trigger_indices(model: OnnxModel, path: str, trigger_classes: list[str]) -> np.ndarray | None:
    """The model's class indices named in ``triggerClasses``; None (every class) when it
    names none of them.

    A branch's ``triggerClasses`` usually names its *parent's* classes (a plate detector
    under ``["car"]``): they say when the branch runs, and restrict its own model only where
    they name its classes. The original worker read them the same way.
    """
    if not trigger_classes:
        return None
    names = model.info.names
    wanted = [i for i, name in enumerate(names) if name in trigger_classes]
    shown = ", ".join(names[:20]) + (" …" if len(names) > 20 else "")
    if not wanted:
        logger.info(
            "%s.triggerClasses (%s) names none of the model's classes (%s): every class is "
            "detected",
            path,
            ", ".join(trigger_classes[:20]),
            shown,
        )
        return None
    unknown = sorted(set(trigger_classes) - set(names))
    if unknown:
        logger.warning(
            "%s.triggerClasses names classes the model does not have: %s (model classes: %s)",
            path,
            ", ".join(unknown),
            shown,
        )
    return np.asarray(wanted, dtype=np.int64)


def _check_every_model_is_onnx(spec: PipelineSpec) -> None:
    """One error naming every node whose model is not ONNX (an archive made for the original
    worker holds ``.pt`` files), with the one step that fixes them all."""
    found = [
        f"{path} '{node.model_file}' ({kind})"
        for path, node in iter_nodes(spec.pipeline)
        if (kind := non_onnx_kind(node.model_file)) is not None
    ]
    if found:
        raise ModelError(
            f"this worker runs ONNX models only; not ONNX: {'; '.join(found)}. Convert the "
            "archive with `pytrickle-worker mpta convert IN.mpta OUT.mpta` (it exports every "
            "model to ONNX and points modelFile at it), or export each model yourself "
            "(`yolo export model=NAME.pt format=onnx dynamic=True`) and change its modelFile "
            "in pipeline.json"
        )


def load_pipeline_tree(
    spec: PipelineSpec, root_dir: Path, registry: ModelRegistry, source: str, sha256: str
) -> LoadedPipeline:
    """Acquire every node's model (blocking: call from a worker thread).

    On any failure the models acquired so far are released again, so a broken archive never
    leaks sessions.
    """
    _check_every_model_is_onnx(spec)
    acquired: list[OnnxModel] = []

    def build(node_spec: PipelineNode, path: str) -> LoadedNode:
        model_path = root_dir / node_spec.model_file
        try:
            model = registry.acquire(model_path)
        except ModelError as exc:
            raise ModelError(f"{path} ({node_spec.model_id}): {exc}") from exc
        acquired.append(model)
        if node_spec.model_extra:
            logger.warning(
                "%s (%s): keys %s are not read by this worker and have no effect (supported: "
                "modelId, modelFile, minConfidence, triggerClasses, crop, branches, actions)",
                path,
                node_spec.model_id,
                ", ".join(repr(key[:64]) for key in sorted(node_spec.model_extra)[:20]),
            )
        if node_spec.ignored_action_types:
            logger.warning(
                "%s (%s): actions of type %s are not supported and are skipped (the original "
                "worker skipped them too); supported: %s",
                path,
                node_spec.model_id,
                ", ".join(repr(kind) for kind in node_spec.ignored_action_types),
                ", ".join(ACTION_TYPES),
            )
        is_classifier = model.info.contract is OutputContract.CLASSIFY
        indices = (
            None
            if is_classifier
            else _trigger_indices(model, path, list(node_spec.trigger_classes))
        )
        node = LoadedNode(path, node_spec, model, indices)
        for i, child in enumerate(node_spec.branches):
            node.branches.append(build(child, f"{path}.branches[{i}]"))
        return node

    try:
        root = build(spec.pipeline, "pipeline")
    except BaseException:
        for model in acquired:
            registry.release(model)
        raise
    return LoadedPipeline(source, sha256, root_dir, spec, root, registry)
