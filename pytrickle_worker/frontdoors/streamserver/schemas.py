"""Wire models of the StreamServer REST API (pydantic v2).

Validation follows pytrickle's StreamServer where it is right and is stricter where it was
not (see docs in ``trickle-and-streamserver.md``):

* ``gateway_request_id`` is required; the channel URLs are optional, as in pytrickle's
  StreamServer code (its API reference calls ``publish_url`` required; the code, PR #92,
  does not): no ``subscribe_url``: a generative stream; no ``publish_url``: frames are
  analysed (data and events flow) but no video is encoded or published; no URL at all: a
  stream with no media yet;
* the stream-level params are read as pytrickle reads them, since a gateway's params are
  its user's JSON: ``width``/``height``/``max_framerate`` also as a decimal string or an
  integral number (``"512"``, ``512.0``; pytrickle's ``int()``), ``detect_out_resolution``
  also as ``"true"``/``"1"``/``"yes"``, ``"false"``/``"0"``/``"no"`` or 0/1. Beyond that
  wire types are strict: ``true`` is not 1, ``30.5`` is not an integer, other text is not a
  number (pytrickle's ``int()`` would truncate or raise a 500); every string refuses
  control characters;
* ``width``/``height`` come together and are positive integers, ``max_framerate`` is 1..60;
  ``true``/``false`` are not numbers;
* unknown top-level keys of a start request (``manifest_id``, ``stream_id`` …) are ignored,
  as go-livepeer sends them; params keys other than the stream-level ones belong to the
  processor, whose own model validates them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from pytrickle_worker.core.logutil import mask_url
from pytrickle_worker.core.validation import NO_CONTROL
from pytrickle_worker.processing import (
    STREAM_PARAM_KEYS,
    ParamsError,
    format_validation_error,
)

__all__ = [
    "CHANNEL_FIELDS",
    "RUNTIME_IMMUTABLE",
    "AppVersion",
    "ErrorBody",
    "GpuInfo",
    "GpuStats",
    "HardwareInfo",
    "HardwareStats",
    "Liveness",
    "ParamsUpdated",
    "Readiness",
    "StartRequest",
    "StreamFps",
    "StreamHealth",
    "StreamInfo",
    "StreamParams",
    "StreamStarted",
    "StreamState",
    "StreamStatus",
    "StreamStopped",
    "VersionInfo",
    "parse_start_request",
    "split_params_update",
    "without_fixed_changes",
]

#: The trickle channel URL fields of a start request.
CHANNEL_FIELDS: tuple[str, ...] = (
    "subscribe_url",
    "publish_url",
    "control_url",
    "events_url",
    "data_url",
)

#: Stream-level params fixed at stream start (the decoder and encoder are set up with them).
#: ``max_framerate`` is not among them: the session applies it live.
RUNTIME_IMMUTABLE: tuple[str, ...] = ("width", "height", "detect_out_resolution")
SIZE: tuple[str, ...] = ("width", "height")

_MAX_URL = 4096
_MAX_SIDE = 16384

#: A decimal integer as text (bounded: ``int()`` of a long string is quadratic).
_INTEGER_TEXT = re.compile(r"[ \t]*[+-]?[0-9]{1,9}[ \t]*")
_TRUE_TEXT = frozenset({"true", "1", "yes"})
_FALSE_TEXT = frozenset({"false", "0", "no"})


def _integer_like(value: object) -> object:
    """pytrickle's ``int()`` on a stream-level number, where it is exact: a decimal string
    or an integral float is its integer; a boolean, a fraction or other text stay errors."""
    if isinstance(value, bool):
        raise ValueError("expected an integer, not a boolean")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value):
        return int(value)
    return value


def _boolean_like(value: object) -> object:
    """pytrickle's reading of ``detect_out_resolution``: a boolean, ``"true"/"1"/"yes"``,
    ``"false"/"0"/"no"`` (any case), or the integers 0 and 1."""
    if isinstance(value, str):
        text = value.strip(" \t").lower()
        if text in _TRUE_TEXT or text in _FALSE_TEXT:
            return text in _TRUE_TEXT
        raise ValueError("expected a boolean: true/false, or 'true'/'1'/'yes', 'false'/'0'/'no'")
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
        return bool(value)
    return value


_AS_INT = "also as ASCII decimal text or an integral number, as pytrickle's int() reads it"
INTEGER_LIKE = BeforeValidator(_integer_like)
BOOLEAN_LIKE = BeforeValidator(_boolean_like)
Side = Annotated[int, INTEGER_LIKE, Field(gt=0, le=_MAX_SIDE)]
Url = Annotated[str, NO_CONTROL, Field(max_length=_MAX_URL)]
Framerate = Annotated[int, INTEGER_LIKE, Field(ge=1, le=60)]


class ErrorBody(BaseModel):
    """The body of every error answer of every route (4xx and 5xx):
    ``{"status": "error", "message": "..."}``, nothing else.

    The health probes are not errors: ``/health`` answers 200 with its StreamServer status
    body in every state, ``/health/ready`` 503 with its readiness body.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    status: Literal["error"]
    message: str = Field(min_length=1)


class StreamParams(BaseModel):
    """The stream-level part of a params dict; other keys are left to the processor."""

    model_config = ConfigDict(extra="ignore", strict=True)

    width: Side | None = Field(default=None, description=_AS_INT)
    height: Side | None = Field(default=None, description=_AS_INT)
    max_framerate: Framerate | None = Field(default=None, description=_AS_INT)
    detect_out_resolution: Annotated[bool, BOOLEAN_LIKE] | None = Field(
        default=None,
        description="also 'true'/'1'/'yes', 'false'/'0'/'no' or 0/1, as pytrickle reads it",
    )

    @model_validator(mode="after")
    def _size_together(self) -> StreamParams:
        if (self.width is None) != (self.height is None):
            missing = "height" if self.height is None else "width"
            given = "width" if missing == "height" else "height"
            raise ValueError(f"{missing}: required when {given} is given (they come together)")
        return self

    def given(self) -> dict[str, Any]:
        """The fields that were set (for status and for the session)."""
        return self.model_dump(exclude_none=True)


def _stream_params(params: Mapping[str, Any], prefix: str) -> StreamParams:
    dot = f"{prefix}." if prefix else ""
    has_width, has_height = params.get("width") is not None, params.get("height") is not None
    if has_width != has_height:
        missing, given = ("height", "width") if has_width else ("width", "height")
        raise ParamsError(f"{dot}{missing}: required when {given} is given (they come together)")
    try:
        return StreamParams.model_validate(
            {k: v for k, v in params.items() if k in STREAM_PARAM_KEYS}
        )
    except ValidationError as exc:
        raise ParamsError(format_validation_error(exc, prefix)) from None


class StartRequest(BaseModel):
    """``POST /stream/start`` (and ``/live-video-to-video``)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    gateway_request_id: Annotated[str, NO_CONTROL] = Field(min_length=1, max_length=256)
    subscribe_url: Url | None = None
    publish_url: Url | None = None
    control_url: Url | None = None
    events_url: Url | None = None
    data_url: Url | None = None
    params: dict[str, Any] = Field(default_factory=dict[str, Any])

    _stream: StreamParams = PrivateAttr(default_factory=StreamParams)

    @field_validator("subscribe_url", "publish_url", "control_url", "events_url", "data_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http(s) URL")
        return value

    @field_validator("params", mode="before")
    @classmethod
    def _params_null(cls, value: object) -> object:
        return {} if value is None else value

    @model_validator(mode="after")
    def _check_stream_params(self) -> StartRequest:
        try:
            self._stream = _stream_params(self.params, "params")
        except ParamsError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def stream_params(self) -> StreamParams:
        return self._stream

    def processor_params(self) -> dict[str, Any]:
        """``params`` without the stream-level keys."""
        return {k: v for k, v in self.params.items() if k not in STREAM_PARAM_KEYS}

    def channel_urls(self) -> dict[str, str]:
        """The channel URLs that were given, by field name."""
        urls = {name: getattr(self, name) for name in CHANNEL_FIELDS}
        return {name: url for name, url in urls.items() if url}

    @property
    def has_channels(self) -> bool:
        return bool(self.channel_urls())

    def masked(self) -> dict[str, Any]:
        """Ids and URLs for status and logs, with credentials in URLs masked."""
        info: dict[str, Any] = {"gateway_request_id": self.gateway_request_id}
        info.update({name: mask_url(url) for name, url in self.channel_urls().items()})
        return info


def parse_start_request(body: object) -> StartRequest:
    """Validate a start request body; :class:`ParamsError` names every bad field."""
    if not isinstance(body, dict):
        raise ParamsError("request body must be a JSON object")
    try:
        return StartRequest.model_validate(body)
    except ValidationError as exc:
        raise ParamsError(format_validation_error(exc)) from None


def without_fixed_changes(
    update: Mapping[str, Any], current: StreamParams
) -> tuple[dict[str, Any], list[str]]:
    """``update`` without the :data:`RUNTIME_IMMUTABLE` keys whose value differs from the
    stream's, and their names. For the control channel, which has nobody to answer: a
    gateway that resends its whole params object with a new size still gets the rest
    applied (pytrickle passes runtime sizes to the processor and leaves the stream's)."""
    dropped = [
        name
        for name in RUNTIME_IMMUTABLE
        if name in update and _fixed_value(name, update[name]) != getattr(current, name)
    ]
    if "width" in dropped or "height" in dropped:  # they come together, so they go together
        dropped = [n for n in RUNTIME_IMMUTABLE if n in update and (n in dropped or n in SIZE)]
    return {k: v for k, v in update.items() if k not in dropped}, dropped


def _fixed_value(name: str, value: object) -> object:
    """``value`` of a :data:`RUNTIME_IMMUTABLE` key as the stream holds it (``"512"`` is
    512), or as given where it is not valid (it then differs, and is left out)."""
    try:
        return _boolean_like(value) if name == "detect_out_resolution" else _integer_like(value)
    except ValueError:
        return value


def split_params_update(
    update: Mapping[str, Any], current: StreamParams
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a runtime params update into (stream-level changes, processor params).

    Raises :class:`ParamsError` for invalid stream-level values and for any change of a
    :data:`RUNTIME_IMMUTABLE` field (the same value again is accepted, as gateways resend
    whole params objects). The session may use this for control-channel messages too.
    """
    stream = _stream_params(update, "")
    given = stream.model_dump(exclude_unset=True)
    for name in RUNTIME_IMMUTABLE:
        if name in given and given[name] != getattr(current, name):
            raise ParamsError(
                f"{name}: cannot be changed while a stream runs (it is fixed at stream start)"
            )
    changes = {k: v for k, v in given.items() if k not in RUNTIME_IMMUTABLE}
    processor = {k: v for k, v in update.items() if k not in STREAM_PARAM_KEYS}
    return changes, processor


# ---------------------------------------------------------------------- response bodies
# The handlers build their answers through these models (``model_dump(exclude_unset=True)``:
# a field that is only sometimes present is set only then), so /openapi.json, which is
# generated from them, says what the routes send.


class StreamState(StrEnum):
    """The StreamServer state (``/health``, ``/stream/status``); see the manager."""

    LOADING = "LOADING"
    IDLE = "IDLE"
    OK = "OK"
    ERROR = "ERROR"


class StreamHealth(BaseModel):
    """The StreamServer part of ``GET /health`` (200 in every state)."""

    status: StreamState
    healthy: bool = Field(
        description="false in ERROR and while the active stream's input is stalled"
    )
    input_stalled: bool = Field(
        default=False,
        description="present while a stream runs: no input frame for the input timeout",
    )
    draining: bool = Field(default=False, description="present (true) while shutting down")
    error_message: str | None = Field(default=None, description="present in ERROR")


class Readiness(BaseModel):
    """``GET /health/ready``: 200 once the model is loaded, 503 while loading or draining."""

    status: StreamState
    ready: bool
    draining: bool = Field(default=False, description="present (true) while shutting down")


class Liveness(BaseModel):
    """``GET /health/live``: the process answers."""

    status: Literal["alive"]


class VersionInfo(BaseModel):
    pipeline: str = Field(description="$PIPELINE, else byoc")
    model_id: str = Field(description="$CAPABILITY_NAME, else $MODEL_ID, else pytrickle-worker")
    version: str


class AppVersion(BaseModel):
    version: str


class GpuInfo(BaseModel):
    id: str = Field(description="NVML UUID, else the index")
    name: str
    memory_total: int = Field(description="bytes")
    memory_free: int = Field(description="bytes")
    major: int | None = Field(description="CUDA compute capability (null when NVML cannot tell)")
    minor: int | None


class GpuStats(BaseModel):
    id: str = Field(description="NVML UUID, else the index")
    name: str
    memory_total: int = Field(description="bytes")
    memory_free: int = Field(description="bytes")
    utilization_compute: int = Field(description="percent")
    utilization_memory: int | None = Field(description="percent (null when NVML cannot tell)")


class HardwareInfo(BaseModel):
    """``GET /hardware/info`` (pytrickle's shape); ``gpu_info`` is empty without a GPU."""

    pipeline: str
    model_id: str
    gpu_info: dict[str, GpuInfo] = Field(description="by GPU index")


class HardwareStats(BaseModel):
    """``GET /hardware/stats`` (pytrickle's shape); ``gpu_stats`` is empty without a GPU."""

    pipeline: str
    model_id: str
    gpu_stats: dict[str, GpuStats] = Field(description="by GPU index")


class StreamFps(BaseModel):
    input_fps: float
    output_fps: float
    processing_fps: float


class DrainInfo(BaseModel):
    draining: bool


class StreamInfo(BaseModel):
    """The running stream: its ids and channel URLs (credentials masked)."""

    gateway_request_id: str
    subscribe_url: str | None = Field(default=None, description="present when given")
    publish_url: str | None = Field(default=None, description="present when given")
    control_url: str | None = Field(default=None, description="present when given")
    events_url: str | None = Field(default=None, description="present when given")
    data_url: str | None = Field(default=None, description="present when given")
    started_at: float = Field(description="unix seconds")
    uptime_s: float


class StreamStatus(BaseModel):
    """``GET /stream/status``: pytrickle's ``get_pipeline_state()`` fields, then ours."""

    status: StreamState
    state: StreamState
    pipeline_state: StreamState
    additional_info: DrainInfo
    pipeline_ready: bool = Field(
        description="the model is loaded and the state is not ERROR (as pytrickle's)"
    )
    startup_complete: bool
    active_streams: int = Field(ge=0, le=1)
    active_client: bool
    client_active: bool
    client_running: bool
    error_message: str | None
    healthy: bool
    input_stalled: bool
    fps: StreamFps
    current_params: dict[str, Any] = Field(
        description="the running stream's ids, masked URLs and params in effect ({} when idle)"
    )
    stream: StreamInfo | None
    session: dict[str, Any] = Field(description="the media session's counters ({} when idle)")


class StreamStarted(BaseModel):
    status: Literal["success"]
    message: str
    request_id: str
    current_state: StreamStatus


class StreamStopped(BaseModel):
    status: Literal["success"]
    message: str


class ParamsUpdated(BaseModel):
    status: Literal["success"]
    message: str
    params: dict[str, Any] = Field(description="every param in effect after the update")
