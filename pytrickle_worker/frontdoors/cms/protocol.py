"""The CMS worker protocol (``worker.md``): every message in and out, as pydantic models.

Field names are the wire names (camelCase) on purpose: these models *are* the contract.
Inbound models tolerate unknown extra keys (the backend may add fields); outbound models are
serialised with :func:`to_wire`, which drops optional keys the protocol marks as optional
(crop fields, ``sessionId``) when they are unset, and keeps explicit ``null`` values inside a
detection.

Inbound validation happens here, once, at the edge: a message this module accepts is valid for
every later step (camera, archive fetch, pipeline), so a backend hears what was wrong with the
field named, never "internal error". Types are strict: a number where a string belongs, a
string where a number belongs, or a boolean where a number belongs is an error (``modelId:
"1"`` stays the string ``"1"``; ``cropX1: true`` is refused, not read as 1). Strings may not
hold control characters. One leniency is kept for the original detector worker's backends:
an empty ``rtspUrl``/``snapshotUrl`` means "not given" (the original tested them for
truthiness), so ``snapshotUrl: ""`` beside an ``rtspUrl`` streams the ``rtspUrl``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, cast
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from pytrickle_worker.core.validation import NO_CONTROL
from pytrickle_worker.sources.source import SourceConfig, is_local_path, local_path

ModelId = int | str
SessionId = int | str


def _empty_as_absent(value: object) -> object:
    return None if value == "" else value


#: A wire string: exactly a JSON string (strict), without control characters.
WireStr = Annotated[str, Strict(), NO_CONTROL]
WireInt = Annotated[int, Strict()]
#: An optional URL where ``""`` means "not given", as the original detector worker read it.
OptionalUrl = Annotated[WireStr | None, BeforeValidator(_empty_as_absent)]

#: What the worker accepts as a modelId or sessionId. Both are echoed in every stateReport
#: and detection, so they are bounded: a 64-bit integer or a string of at most 1024 characters.
#: Strict, so each comes back exactly as it was sent (``"1"`` stays a string).
MAX_ID_CHARS = 1024
InboundId = (
    Annotated[int, Strict(), Field(ge=-(2**63), le=2**63 - 1)]
    | Annotated[WireStr, Field(max_length=MAX_ID_CHARS)]
)

_INBOUND = ConfigDict(extra="allow", frozen=True)
_OUTBOUND = ConfigDict(extra="forbid")

#: Upper bound for a crop coordinate; no camera is wider or taller than this.
MAX_COORDINATE = 32768


def split_subscription_identifier(identifier: str) -> tuple[str, str]:
    """``"display-001;cam-002"`` → ``("display-001", "cam-002")``."""
    display, sep, camera = identifier.partition(";")
    if not sep or not display or not camera or ";" in camera:
        raise ValueError(
            "subscriptionIdentifier must be 'displayIdentifier;cameraIdentifier', "
            f"got {identifier!r}"
        )
    return display, camera


#: POSIX's usual limit on one path component (NAME_MAX); a longer one fails every open.
MAX_PATH_COMPONENT = 255


def _check_url(name: str, value: str) -> None:
    try:
        urlsplit(value)
    except ValueError as exc:
        raise ValueError(f"{name} is not a valid URL: {exc}") from None
    if is_local_path(value):
        # Checked here rather than met later as an OSError from deep inside a reader.
        longest = max(len(part.encode()) for part in local_path(value).parts) if value else 0
        if longest > MAX_PATH_COMPONENT:
            raise ValueError(
                f"{name} is not a usable path: a component of {longest} bytes exceeds "
                f"{MAX_PATH_COMPONENT}"
            )


class Crop(BaseModel):
    model_config = ConfigDict(frozen=True)

    x1: int
    y1: int
    x2: int
    y2: int


# --------------------------------------------------------------------------- inbound


class SubscribePayload(BaseModel):
    model_config = _INBOUND

    subscriptionIdentifier: WireStr = Field(min_length=3, max_length=512)
    rtspUrl: OptionalUrl = Field(default=None, max_length=4096)
    snapshotUrl: OptionalUrl = Field(default=None, max_length=4096)
    snapshotInterval: WireInt | None = Field(default=None, gt=0, le=86_400_000)
    modelUrl: WireStr = Field(min_length=1, max_length=4096)
    modelId: InboundId
    modelName: WireStr = Field(default="", max_length=1024)
    cropX1: WireInt | None = Field(default=None, ge=0, le=MAX_COORDINATE)
    cropY1: WireInt | None = Field(default=None, ge=0, le=MAX_COORDINATE)
    cropX2: WireInt | None = Field(default=None, ge=0, le=MAX_COORDINATE)
    cropY2: WireInt | None = Field(default=None, ge=0, le=MAX_COORDINATE)

    @model_validator(mode="before")
    @classmethod
    def _zero_interval_is_not_given(cls, data: object) -> object:
        # The original tested the interval for truthiness (snapshot mode needs url and
        # interval): a backend's default 0 beside an rtspUrl streams the rtspUrl.
        if not isinstance(data, dict):
            return data
        fields = cast("dict[str, object]", data)
        interval = fields.get("snapshotInterval")
        if type(interval) is int and interval == 0:
            return {**fields, "snapshotInterval": None}
        return fields

    @model_validator(mode="after")
    def _check(self) -> SubscribePayload:
        split_subscription_identifier(self.subscriptionIdentifier)
        for name in ("rtspUrl", "snapshotUrl", "modelUrl"):
            value: str | None = getattr(self, name)
            if value:
                _check_url(name, value)
        if not self.rtspUrl and not self.snapshotUrl:
            raise ValueError("one of rtspUrl or snapshotUrl is required")
        if self.snapshotUrl and not self.rtspUrl and self.snapshotInterval is None:
            raise ValueError("snapshotUrl needs snapshotInterval (milliseconds)")
        try:
            self.source_config()
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            raise ValueError(f"camera source: {first['msg']}") from None
        coords = (self.cropX1, self.cropY1, self.cropX2, self.cropY2)
        given = [c is not None for c in coords]
        if any(given) and not all(given):
            raise ValueError("cropX1, cropY1, cropX2 and cropY2 must be given together")
        if all(given):
            x1, y1, x2, y2 = (int(c or 0) for c in coords)
            if x2 <= x1 or y2 <= y1:
                raise ValueError(
                    f"crop ({x1}, {y1}, {x2}, {y2}) is empty: cropX2 must exceed cropX1 "
                    "and cropY2 must exceed cropY1"
                )
        return self

    @property
    def display_identifier(self) -> str:
        return split_subscription_identifier(self.subscriptionIdentifier)[0]

    @property
    def camera_identifier(self) -> str:
        return split_subscription_identifier(self.subscriptionIdentifier)[1]

    @property
    def uses_snapshot(self) -> bool:
        """The original detector worker's rule: a snapshotUrl with an interval wins over rtspUrl."""
        return bool(self.snapshotUrl) and self.snapshotInterval is not None

    @property
    def source_url(self) -> str:
        url = self.snapshotUrl if self.uses_snapshot else self.rtspUrl
        assert url is not None  # guaranteed by _check
        return url

    def source_config(self) -> SourceConfig:
        """The camera this subscription reads, as the camera hub takes it."""
        return SourceConfig(
            url=self.rtspUrl,
            snapshot_url=self.snapshotUrl,
            snapshot_interval_ms=self.snapshotInterval,
            # A local file standing in for a camera (demos, tests) plays in a loop, at its
            # native rate, like a camera that never ends.
            loop=bool(self.rtspUrl) and is_local_path(self.rtspUrl or ""),
        )

    @property
    def crop(self) -> Crop | None:
        if self.cropX1 is None or self.cropY1 is None or self.cropX2 is None:
            return None
        if self.cropY2 is None:
            return None
        return Crop(x1=self.cropX1, y1=self.cropY1, x2=self.cropX2, y2=self.cropY2)

    def same_subscription(self, other: SubscribePayload) -> bool:
        """Equal in every field the protocol defines (extra keys are ignored)."""
        return self.model_dump(exclude=set(self.model_extra or {})) == other.model_dump(
            exclude=set(other.model_extra or {})
        )


class SubscribeMessage(BaseModel):
    model_config = _INBOUND
    type: Literal["subscribe"]
    payload: SubscribePayload


class UnsubscribePayload(BaseModel):
    model_config = _INBOUND
    subscriptionIdentifier: WireStr = Field(min_length=1, max_length=512)


class UnsubscribeMessage(BaseModel):
    model_config = _INBOUND
    type: Literal["unsubscribe"]
    payload: UnsubscribePayload


class RequestStateMessage(BaseModel):
    model_config = _INBOUND
    type: Literal["requestState"]


class SetSessionIdPayload(BaseModel):
    model_config = _INBOUND
    displayIdentifier: WireStr = Field(min_length=1, max_length=512)
    #: Absent means null (no session), as the original worker read it: a backend in
    #: JavaScript that sets it to ``undefined`` drops the key from its JSON.
    sessionId: InboundId | None = None


class SetSessionIdMessage(BaseModel):
    model_config = _INBOUND
    type: Literal["setSessionId"]
    payload: SetSessionIdPayload


class PatchSessionResultPayload(BaseModel):
    model_config = _INBOUND
    sessionId: InboundId | None = None
    success: Annotated[bool, Strict()]
    message: Annotated[str, Strict()] | None = None


class PatchSessionResultMessage(BaseModel):
    model_config = _INBOUND
    type: Literal["patchSessionResult"]
    payload: PatchSessionResultPayload


class InboundPatchSessionMessage(BaseModel):
    """A ``patchSession`` sent *to* the worker (the original detector worker's
    ``test_protocol.py`` client does this).

    The original detector worker answered it with a ``patchSessionResult``; kept for
    compatibility. The fields sit
    at the top level (as in ``test_protocol.py``) or inside ``payload``.
    """

    model_config = _INBOUND
    type: Literal["patchSession"]
    sessionId: SessionId | None = None
    data: dict[str, Any] | None = None
    payload: dict[str, Any] | None = None

    @property
    def session_id(self) -> SessionId | None:
        if self.sessionId is not None:
            return self.sessionId
        value = (self.payload or {}).get("sessionId")
        return value if isinstance(value, int | str) else None


InboundMessage = Annotated[
    Annotated[SubscribeMessage, Tag("subscribe")]
    | Annotated[UnsubscribeMessage, Tag("unsubscribe")]
    | Annotated[RequestStateMessage, Tag("requestState")]
    | Annotated[SetSessionIdMessage, Tag("setSessionId")]
    | Annotated[PatchSessionResultMessage, Tag("patchSessionResult")]
    | Annotated[InboundPatchSessionMessage, Tag("patchSession")],
    Discriminator("type"),
]
INBOUND_TYPES = (
    "subscribe",
    "unsubscribe",
    "requestState",
    "setSessionId",
    "patchSessionResult",
    "patchSession",
)
_INBOUND_ADAPTER: TypeAdapter[InboundMessage] = TypeAdapter(InboundMessage)


class ProtocolError(ValueError):
    """An inbound message that cannot be accepted; ``str()`` says why, naming the field."""

    def __init__(self, message: str, subscription_identifier: str | None = None) -> None:
        super().__init__(message)
        self.subscription_identifier = subscription_identifier


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in INBOUND_TYPES or not part.isidentifier():
            # The discriminator tag, or a union member's tag ("constrained-int",
            # "function-after[…]"): neither is a field.
            continue
        else:
            path += f".{part}" if path else str(part)
    return path or "message"


def describe_validation_error(exc: ValidationError, limit: int = 10) -> str:
    """One line naming each wrong field; a union's alternatives are joined with "or"."""
    by_field: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False, include_input=False):
        messages = by_field.setdefault(_field_path(error["loc"]), [])
        if error["msg"] not in messages:
            messages.append(error["msg"])
    problems: list[str] = []
    for path, messages in list(by_field.items())[:limit]:
        text = messages[0]
        for other in messages[1:]:
            text += " or " + other.removeprefix("Input should be ")
        problems.append(f"{path}: {text}")
    return "; ".join(problems)


def _identifier_hint(document: dict[str, Any]) -> str | None:
    payload = document.get("payload")
    if isinstance(payload, dict):
        value = payload.get("subscriptionIdentifier")  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType] - untyped JSON
        if isinstance(value, str) and len(value) <= 512:
            return value
    return None


def parse_inbound(document: object) -> InboundMessage:
    """Validate one decoded JSON message; raise :class:`ProtocolError` naming what was wrong."""
    if not isinstance(document, dict):
        raise ProtocolError(f"a message must be a JSON object, got {type(document).__name__}")
    typed: dict[str, Any] = {str(k): v for k, v in document.items()}  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType] - untyped JSON
    kind = typed.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("type: required string field is missing")
    if kind not in INBOUND_TYPES:
        shown = kind if len(kind) <= 64 else kind[:64] + "…"
        raise ProtocolError(
            f"type: unknown message type {shown!r} (expected one of {', '.join(INBOUND_TYPES)})"
        )
    try:
        return _INBOUND_ADAPTER.validate_python(typed)
    except ValidationError as exc:
        raise ProtocolError(
            f"invalid {kind} message: {describe_validation_error(exc)}",
            _identifier_hint(typed),
        ) from None


# --------------------------------------------------------------------------- outbound


class CameraConnection(BaseModel):
    model_config = _OUTBOUND
    subscriptionIdentifier: str
    modelId: ModelId
    modelName: str
    online: bool
    cropX1: int | None = None
    cropY1: int | None = None
    cropX2: int | None = None
    cropY2: int | None = None


class StateReport(BaseModel):
    """``gpuUsage`` is GPU utilisation in percent, ``gpuMemoryUsage`` the share of GPU memory
    in use, in percent (both ``null`` without a GPU); ``cpuUsage``/``memoryUsage`` likewise."""

    model_config = _OUTBOUND
    type: Literal["stateReport"] = "stateReport"
    cpuUsage: float
    memoryUsage: float
    gpuUsage: float | None
    gpuMemoryUsage: float | None
    cameraConnections: list[CameraConnection]


class DetectionData(BaseModel):
    model_config = _OUTBOUND
    detection: dict[str, Any] | None
    modelId: ModelId
    modelName: str


class ImageDetection(BaseModel):
    model_config = _OUTBOUND
    type: Literal["imageDetection"] = "imageDetection"
    subscriptionIdentifier: str
    timestamp: str
    data: DetectionData
    sessionId: SessionId | None = None


class PatchSession(BaseModel):
    model_config = _OUTBOUND
    type: Literal["patchSession"] = "patchSession"
    sessionId: SessionId
    data: dict[str, Any]


class PatchSessionResultReply(BaseModel):
    model_config = _OUTBOUND
    type: Literal["patchSessionResult"] = "patchSessionResult"
    payload: dict[str, Any]


class ErrorMessage(BaseModel):
    model_config = _OUTBOUND
    type: Literal["error"] = "error"
    subscriptionIdentifier: str | None = None
    error: str


OutboundMessage = (
    StateReport | ImageDetection | PatchSession | PatchSessionResultReply | ErrorMessage
)


def to_wire(message: OutboundMessage) -> dict[str, Any]:
    """The JSON object to send. Optional protocol keys are left out when unset."""
    if isinstance(message, StateReport):
        wire = message.model_dump()
        wire["cameraConnections"] = [
            c.model_dump(exclude_none=True) for c in message.cameraConnections
        ]
        return wire
    if isinstance(message, ImageDetection | ErrorMessage):
        wire = message.model_dump()
        for key in ("sessionId", "subscriptionIdentifier"):
            if key in wire and wire[key] is None:
                del wire[key]
        return wire
    return message.model_dump()


def iso_timestamp(epoch_seconds: float) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``: ``2025-07-14T12:34:56.789Z``."""
    moment = datetime.fromtimestamp(epoch_seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
