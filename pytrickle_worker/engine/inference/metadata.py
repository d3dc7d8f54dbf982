"""The ``metadata_props`` ultralytics writes into an exported ONNX model, parsed safely.

Names, task, stride, imgsz, batch, end2end, kpt_shape: values are Python reprs and are
parsed with :func:`ast.literal_eval`, never ``eval``; malformed values are logged and
ignored.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, cast

__all__ = ["ModelMetadata", "parse_metadata"]

logger = logging.getLogger(__name__)

#: Longest metadata value parsed; anything larger is ignored (literal_eval is not free).
_MAX_METADATA_CHARS: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """The ultralytics ``metadata_props`` this worker uses, parsed; ``None`` when absent/bad."""

    names: dict[int, str] | None = None
    task: str | None = None
    stride: int | None = None
    imgsz: tuple[int, int] | None = None
    batch: int | None = None
    end2end: bool | None = None
    kpt_shape: bool = False


def _literal(key: str, text: str, source: str) -> object | None:
    """``ast.literal_eval(text)``, or ``None`` (with a warning) when it is not a literal."""
    if len(text) > _MAX_METADATA_CHARS:
        logger.warning("%s: metadata %r is %d chars long; ignored", source, key, len(text))
        return None
    try:
        return cast("object", ast.literal_eval(text.strip()))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        logger.warning(
            "%s: metadata %r is not a Python literal (%s); ignored: %.80r",
            source,
            key,
            type(exc).__name__,
            text,
        )
        return None


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _parse_names(value: object, source: str) -> dict[int, str] | None:
    names: dict[int, str] = {}
    if isinstance(value, Mapping):
        for key, name in cast("Mapping[object, object]", value).items():
            index = _as_int(key)
            if index is None and isinstance(key, str) and key.strip().isdigit():
                index = int(key)
            if index is None or index < 0 or index > 100_000:
                logger.warning("%s: metadata names has a bad class index %.40r", source, key)
                return None
            names[index] = str(name)
    elif isinstance(value, list | tuple):
        names = {i: str(name) for i, name in enumerate(cast("Sequence[object]", value))}
    else:
        logger.warning("%s: metadata names is %s, not a dict or list", source, type(value).__name__)
        return None
    return names or None


def _parse_imgsz(value: object) -> tuple[int, int] | None:
    single = _as_int(value)
    if single is not None:
        return (single, single) if single > 0 else None
    if isinstance(value, list | tuple):
        dims = [_as_int(v) for v in cast("Sequence[object]", value)]
        if len(dims) == 1 and dims[0] is not None and dims[0] > 0:
            return dims[0], dims[0]
        if len(dims) == 2 and all(d is not None and d > 0 for d in dims):
            return cast("int", dims[0]), cast("int", dims[1])
    return None


def parse_metadata(props: Mapping[str, str], source: str = "model") -> ModelMetadata:
    """Parse ultralytics ``metadata_props`` (``str()`` reprs) safely.

    Values are parsed with :func:`ast.literal_eval` only; anything that is not a literal of
    the expected type is logged as a warning and treated as absent.
    """
    names: dict[int, str] | None = None
    task: str | None = None
    stride: int | None = None
    imgsz: tuple[int, int] | None = None
    batch: int | None = None
    end2end: bool | None = None

    if "names" in props:
        raw = _literal("names", props["names"], source)
        names = _parse_names(raw, source) if raw is not None else None
    if "task" in props:
        text = props["task"].strip()
        if text[:1] in ("'", '"'):
            parsed = _literal("task", text, source)
            text = parsed if isinstance(parsed, str) else ""
        if text.isidentifier():
            task = text.lower()
        elif text:
            logger.warning("%s: metadata task %.40r is not a task name; ignored", source, text)
    if "stride" in props:
        raw = _literal("stride", props["stride"], source)
        if isinstance(raw, list | tuple):
            ints = [_as_int(v) for v in cast("Sequence[object]", raw)]
            raw = max((v for v in ints if v is not None), default=None)
        stride = _as_int(raw)
        if stride is not None and stride <= 0:
            stride = None
        if stride is None and raw is not None:
            logger.warning("%s: metadata stride %.40r is not a positive int", source, raw)
    if "imgsz" in props:
        raw = _literal("imgsz", props["imgsz"], source)
        imgsz = _parse_imgsz(raw) if raw is not None else None
        if imgsz is None and raw is not None:
            logger.warning("%s: metadata imgsz %.40r is not [h, w] or an int", source, raw)
    if "batch" in props:
        batch = _as_int(_literal("batch", props["batch"], source))
    if "end2end" in props:
        raw = _literal("end2end", props["end2end"], source)
        end2end = raw if isinstance(raw, bool) else None
    return ModelMetadata(
        names=names,
        task=task,
        stride=stride,
        imgsz=imgsz,
        batch=batch,
        end2end=end2end,
        kpt_shape="kpt_shape" in props,
    )
