"""Pydantic models of ``pipeline.json`` (the MPTA manifest), see ``pympta.md``.

Attributes are snake_case in Python; the JSON keys are the camelCase aliases
(``modelId``, ``minConfidence``, ...).  Models accept both spellings when
constructed from Python (``populate_by_name``), tolerate unknown keys
(``extra="allow"``, the extra values are kept in ``model_extra``) and are frozen.

``parse_pipeline_json`` validates in pydantic's lax mode on purpose: hand-written
manifests in the wild spell numbers as strings (``"port": "6379"``), which the
original detector worker accepted, so a numeric string is converted; anything that is not a number
(``"minConfidence": "high"``) is an error naming the field. ``expire_seconds``
accepts an integral float such as ``3600.0`` (stored as the ``int`` 3600);
``1.5`` is rejected.

Every validation error is reported with the path of the offending field written
with the JSON names, e.g. ``pipeline.branches[0].minConfidence`` or
``pipeline.actions[1]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, Literal, cast, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from pytrickle_worker.core.errors import SpecError

__all__ = [
    "ACTION_TYPES",
    "Action",
    "PipelineNode",
    "PipelineSpec",
    "RedisConfig",
    "RedisPublishAction",
    "RedisSaveImageAction",
    "iter_nodes",
    "parse_pipeline_json",
]

_MODEL_CONFIG = ConfigDict(populate_by_name=True, extra="allow", frozen=True)


class RedisConfig(BaseModel):
    """The optional top-level ``redis`` object."""

    model_config = _MODEL_CONFIG

    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    # repr=False keeps the password out of reprs and therefore out of logs.
    password: str | None = Field(default=None, repr=False)
    db: int = Field(default=0, ge=0)


class RedisSaveImageAction(BaseModel):
    """Saves the (cropped) frame as JPEG to a Redis key."""

    model_config = _MODEL_CONFIG

    type: Literal["redis_save_image"]
    key: str = Field(min_length=1)
    expire_seconds: int | None = Field(default=None, gt=0)

    @field_validator("expire_seconds", mode="before")
    @classmethod
    def _integral_float(cls, value: object) -> object:
        # 3600.0 is accepted as 3600; 1.5 is left alone and rejected by the int check.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        # 0 is "no expiry", as the original worker read it (it set EX only when truthy).
        if value == 0 and not isinstance(value, bool):
            return None
        return value


class RedisPublishAction(BaseModel):
    """Publishes a (templated) message to a Redis channel."""

    model_config = _MODEL_CONFIG

    type: Literal["redis_publish"]
    channel: str = Field(min_length=1)
    message: str


Action = Annotated[RedisSaveImageAction | RedisPublishAction, Discriminator("type")]

ACTION_TYPES: tuple[str, ...] = (
    *get_args(RedisSaveImageAction.model_fields["type"].annotation),
    *get_args(RedisPublishAction.model_fields["type"].annotation),
)


def _check_relative_model_file(value: str) -> str:
    if not value:
        raise ValueError("modelFile must not be empty")
    if "\\" in value:
        raise ValueError(f"modelFile {value!r} must use '/' as the path separator")
    if value.startswith("/") or (len(value) >= 2 and value[1] == ":" and value[0].isalpha()):
        raise ValueError(f"modelFile {value!r} must be a relative path inside the archive")
    parts = [part for part in value.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"modelFile {value!r} must not contain '..'")
    if not parts:
        raise ValueError(f"modelFile {value!r} does not name a file")
    return value


class PipelineNode(BaseModel):
    """One model node of the pipeline tree."""

    model_config = _MODEL_CONFIG

    model_id: str = Field(alias="modelId", min_length=1)
    model_file: str = Field(alias="modelFile")
    min_confidence: float = Field(alias="minConfidence", ge=0.0, le=1.0)
    #: Missing or empty: every class of the model (at the root; a branch with none is
    #: never triggered), as the original worker read it.
    trigger_classes: list[str] = Field(alias="triggerClasses", default_factory=list[str])
    crop: bool = False
    branches: list[PipelineNode] = Field(default_factory=list["PipelineNode"])
    actions: list[Action] = Field(default_factory=list[Action])
    #: The ``type`` of each action this worker does not know, dropped from ``actions`` at
    #: load (the original worker skipped them too, e.g. ``postgresql_update_combined``).
    ignored_action_types: list[str] = Field(
        alias="ignoredActionTypes", default_factory=list[str], exclude=True
    )

    @model_validator(mode="before")
    @classmethod
    def _as_the_original_read_it(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        node = dict(cast("dict[str, object]", data))
        # null is "not given" for the optional keys, as the original's .get(key, default).
        for key in ("crop", "branches", "actions", "triggerClasses"):
            if key in node and node[key] is None:
                del node[key]
        # A numeric modelId (the original took any value) is its decimal text.
        model_id = node.get("modelId")
        if isinstance(model_id, int | float) and not isinstance(model_id, bool):
            node["modelId"] = str(model_id)
        actions = node.get("actions")
        if isinstance(actions, list):
            known: list[object] = []
            ignored: list[str] = []
            for action in cast("list[object]", actions):
                fields = cast("dict[str, object]", action) if isinstance(action, dict) else {}
                kind = fields.get("type")
                if isinstance(kind, str) and kind not in ACTION_TYPES:
                    ignored.append(kind[:64])
                else:
                    known.append(cast("object", action))
            node["actions"] = known
            node["ignoredActionTypes"] = ignored
        return node

    @field_validator("model_file")
    @classmethod
    def _model_file_is_relative(cls, value: str) -> str:
        return _check_relative_model_file(value)


class PipelineSpec(BaseModel):
    """The whole ``pipeline.json`` document."""

    model_config = _MODEL_CONFIG

    pipeline: PipelineNode
    redis: RedisConfig | None = None


def iter_nodes(node: PipelineNode, path: str = "pipeline") -> Iterator[tuple[str, PipelineNode]]:
    """Yield ``(path, node)`` depth-first, pre-order: ``pipeline``, ``pipeline.branches[0]``, ..."""
    yield path, node
    for index, branch in enumerate(node.branches):
        yield from iter_nodes(branch, f"{path}.branches[{index}]")


# --------------------------------------------------------------------------- parsing


def _format_loc(loc: Sequence[int | str]) -> str:
    """Render a pydantic error location with JSON names.

    ``('pipeline', 'actions', 1, 'redis_publish', 'channel')`` becomes
    ``pipeline.actions[1].channel``.
    """
    out = ""
    for index, segment in enumerate(loc):
        if isinstance(segment, int):
            out += f"[{segment}]"
            continue
        # Drop the tag segment pydantic inserts for discriminated unions.
        if (
            segment in ACTION_TYPES
            and index >= 2
            and isinstance(loc[index - 1], int)
            and loc[index - 2] == "actions"
        ):
            continue
        out += f".{segment}" if out else segment
    return out or "(document root)"


def _short_repr(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def _format_error(error: ErrorDetails) -> str:
    loc = error["loc"]
    path = _format_loc(loc)
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    allowed = ", ".join(ACTION_TYPES)
    if kind == "missing":
        return f"{path}: required field is missing"
    if kind == "union_tag_invalid":
        return f"{path}: unknown action type {ctx.get('tag')!r} (allowed types: {allowed})"
    if kind == "union_tag_not_found":
        return f"{path}: action has no 'type' (allowed types: {allowed})"
    if kind in ("model_type", "dict_type"):
        return f"{path}: expected a JSON object (got {_json_type(error.get('input'))})"
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    secret = bool(loc) and loc[-1] == "password"
    if kind != "value_error" and not secret and not isinstance(value, dict | list):
        message += f" (got {_short_repr(value)})"
    return f"{path}: {message}"


def parse_pipeline_json(data: bytes | str, source: str = "pipeline.json") -> PipelineSpec:
    """Parse and validate a ``pipeline.json`` document.

    Raises ``SpecError`` for invalid JSON (with line and column) or for any
    spec violation; all violations are listed, one per line, each naming the
    path of the offending field.
    """
    try:
        text = data.decode("utf-8-sig") if isinstance(data, bytes) else data.removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{source}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None

    def _reject_constant(name: str) -> object:
        raise ValueError(f"{name} is not valid JSON")

    try:
        document: object = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise SpecError(
            f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except ValueError as exc:
        raise SpecError(f"{source}: invalid JSON: {exc}") from None

    try:
        return PipelineSpec.model_validate(document)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        lines = [_format_error(error) for error in errors]
        plural = "s" if len(lines) != 1 else ""
        header = f"{source}: {len(lines)} spec error{plural}:"
        raise SpecError("\n".join([header, *(f"  {line}" for line in lines)])) from None
