"""A tiny ONNX graph builder for the hand-built demo models (needs the optional ``onnx``).

:class:`Graph` collects nodes and initializers under unique, stable names and turns them
into a checked model (opset 17, IR version 8); the same calls give the same bytes.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from pytrickle_worker.core.errors import MissingDependencyError

if TYPE_CHECKING:
    from onnx import ModelProto, NodeProto, TensorProto, ValueInfoProto

__all__ = [
    "IR_VERSION",
    "OPSET",
    "PRODUCER",
    "Graph",
    "float_info",
    "require_onnx",
    "write_model",
]

OPSET = 17
IR_VERSION = 8  # the IR version of opset 17; loadable by onnxruntime >= 1.14
PRODUCER = "pytrickle-worker-demo"


def require_onnx() -> None:
    """Raise :class:`MissingDependencyError` when the optional ``onnx`` package is missing."""
    try:
        importlib.import_module("onnx")
    except ImportError as exc:
        raise MissingDependencyError(
            "building demo models needs the 'onnx' package: pip install 'pytrickle-worker[demo]'"
        ) from exc


class Graph:
    """A tiny ONNX graph builder: nodes and initializers with unique, stable names."""

    def __init__(self) -> None:
        require_onnx()
        self.nodes: list[NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._counts: dict[str, int] = {}

    def name(self, hint: str) -> str:
        count = self._counts.get(hint, 0)
        self._counts[hint] = count + 1
        return f"{hint}_{count}"

    def const(
        self, value: npt.ArrayLike, hint: str = "const", dtype: npt.DTypeLike = np.float32
    ) -> str:
        from onnx import numpy_helper  # noqa: PLC0415

        name = self.name(hint)
        array: npt.NDArray[Any] = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def ints(self, values: Sequence[int], hint: str = "shape") -> str:
        return self.const(list(values), hint, np.int64)

    def op(self, op_type: str, *inputs: str, hint: str | None = None, **attrs: Any) -> str:
        return self.op_n(op_type, list(inputs), 1, hint=hint, **attrs)[0]

    def op_n(
        self,
        op_type: str,
        inputs: Sequence[str],
        n_outputs: int,
        hint: str | None = None,
        **attrs: Any,
    ) -> list[str]:
        from onnx import helper  # noqa: PLC0415

        base = self.name(hint or op_type.lower())
        outputs = [base] if n_outputs == 1 else [f"{base}.{i}" for i in range(n_outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=base, **attrs))
        return outputs

    def rename(self, source: str, target: str) -> None:
        """Make ``target`` (a graph output name) an Identity of ``source``."""
        from onnx import helper  # noqa: PLC0415

        self.nodes.append(helper.make_node("Identity", [source], [target], name=target))

    def model(
        self,
        graph_name: str,
        inputs: Sequence[ValueInfoProto],
        outputs: Sequence[ValueInfoProto],
        metadata: Mapping[str, str],
    ) -> ModelProto:
        import onnx  # noqa: PLC0415
        from onnx import helper  # noqa: PLC0415

        graph = helper.make_graph(
            self.nodes, graph_name, list(inputs), list(outputs), initializer=self.initializers
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name=PRODUCER,
            producer_version="1",
        )
        model.ir_version = IR_VERSION
        helper.set_model_props(model, dict(metadata))
        onnx.checker.check_model(model, full_check=True)
        return model


def float_info(name: str, shape: Sequence[int | str]) -> ValueInfoProto:
    """A float32 tensor's value info; a ``str`` dim is symbolic (e.g. ``"batch"``)."""
    from onnx import TensorProto, helper  # noqa: PLC0415

    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def write_model(model: ModelProto, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path
