"""The stream FrameProcessor interface: what a trickle stream session drives per video frame.

A processor lives as long as the server; streams come and go around it::

    await processor.load_model()                 # once, at server start (state LOADING)
    await processor.on_stream_start(params)      # per stream; raises ParamsError on bad params
    out = await processor.process_video_async(frame)   # per frame, never concurrently
    processor.update_params(params)              # at any time; raises ParamsError
    detections = processor.take_data()           # whenever the data channel flushes
    await processor.on_stream_stop()             # per stream

Params are validated by a :class:`ParamsModel` per processor. The stream-level keys
(:data:`STREAM_PARAM_KEYS`: output size and frame rate) belong to the session, not to the
processor: :meth:`ParamsModel.parse` drops them, so a session may hand a whole control
message to :meth:`FrameProcessor.update_params`.

This is the trickle/StreamServer interface. The CMS camera path keeps its own, older
interface in :mod:`processors.base`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from pytrickle_worker.errors import WorkerError

__all__ = [
    "NOT_BOOL",
    "STREAM_PARAM_KEYS",
    "FrameProcessor",
    "ParamsError",
    "ParamsModel",
    "VideoFrame",
    "format_validation_error",
]

#: Keys of a params dict that configure the stream (decode size, frame-rate cap), not the
#: processor. The API validates them (``pytrickle_worker.api.schemas.StreamParams``).
STREAM_PARAM_KEYS: frozenset[str] = frozenset(
    {"width", "height", "max_framerate", "detect_out_resolution"}
)


def _reject_bool(value: object) -> object:
    # pydantic's lax mode reads True as 1: a JSON true where a number belongs is a mistake.
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    return value


#: ``Annotated[int, NOT_BOOL]``: a number field that refuses ``true``/``false``.
NOT_BOOL = BeforeValidator(_reject_bool)


class ParamsError(WorkerError):
    """Parameters are invalid, unknown, or cannot be changed now. The message names the field.

    The REST API answers it with 400; nothing of the rejected update has been applied.
    """


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem, each naming the field: ``"params.width: Input should be ..."``."""
    problems: list[str] = []
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"])
        if prefix:
            loc = f"{prefix}.{loc}" if loc else prefix
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown parameter"
        problems.append(f"{loc}: {message}" if loc else message)
    return "; ".join(problems) or str(exc)


@dataclass
class VideoFrame:
    """One decoded video frame: ``rgb`` is ``(H, W, 3)`` uint8, ``pts`` in ``time_base`` units."""

    rgb: npt.NDArray[np.uint8]
    pts: int
    time_base: Fraction

    def __post_init__(self) -> None:
        rgb = self.rgb
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(
                f"VideoFrame.rgb must be an H×W×3 uint8 array, got {rgb.shape} {rgb.dtype}"
            )
        if self.time_base <= 0:
            raise ValueError(f"VideoFrame.time_base must be positive, got {self.time_base}")

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def time_s(self) -> float:
        """Presentation time in seconds."""
        return float(self.pts * self.time_base)

    def with_rgb(self, rgb: npt.NDArray[np.uint8]) -> VideoFrame:
        """The same timing with other pixels."""
        return VideoFrame(rgb, self.pts, self.time_base)


class ParamsModel(BaseModel):
    """Base of every processor's params model: unknown keys are errors, values are checked
    on assignment too, and :attr:`runtime_immutable` fields may only be set at stream start.
    """

    # strict: JSON types as sent; "1" is not a number and 1 is not true (the REST API and
    # the control channel validate with these models).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)

    #: Fields that cannot change while a stream runs (an update that changes one: ParamsError).
    runtime_immutable: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def normalize(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Rename aliases to field names before merging; override to add aliases."""
        return dict(raw)

    @classmethod
    def processor_keys(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        """``raw`` without the stream-level keys, which are not the processor's business."""
        for key in raw:
            if not isinstance(key, str):  # pyright: ignore[reportUnnecessaryIsInstance]
                raise ParamsError(f"parameter names must be strings, got {key!r}")
        return cls.normalize({k: v for k, v in raw.items() if k not in STREAM_PARAM_KEYS})

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Self:
        """Validate a complete params dict (stream start); raises :class:`ParamsError`."""
        try:
            return cls.model_validate(cls.processor_keys(raw))
        except ValidationError as exc:
            raise ParamsError(format_validation_error(exc)) from None

    def merged(self, update: Mapping[str, Any]) -> Self:
        """A new model with ``update`` applied on top of this one (a runtime update).

        Raises :class:`ParamsError` for invalid values, unknown keys, and changes to
        :attr:`runtime_immutable` fields.
        """
        changes = self.processor_keys(update)
        current = self.model_dump()
        for name in sorted(self.runtime_immutable & changes.keys()):
            if changes[name] != current.get(name):
                raise ParamsError(
                    f"{name}: cannot be changed while a stream runs; set it at stream start"
                )
        try:
            return type(self).model_validate({**current, **changes})
        except ValidationError as exc:
            raise ParamsError(format_validation_error(exc)) from None


class FrameProcessor(abc.ABC):
    """Per-frame work of a trickle stream. One instance serves one stream at a time.

    ``process_video_async`` is awaited once per frame, never concurrently, and must not block
    the event loop (run inference and large-array work in a thread). Returning ``None`` drops
    the frame.
    """

    params_model: ClassVar[type[ParamsModel]] = ParamsModel

    @abc.abstractmethod
    async def load_model(self) -> None:
        """Load what every stream needs (called once at server start; may be retried)."""

    @abc.abstractmethod
    async def process_video_async(self, frame: VideoFrame) -> VideoFrame | None:
        """Process one frame; the result is published, ``None`` drops the frame."""

    @abc.abstractmethod
    def update_params(self, params: dict[str, Any]) -> None:
        """Validate and apply a (partial) params update; raises :class:`ParamsError`.

        Either the whole update is applied or none of it.
        """

    def validate_params(self, params: Mapping[str, Any]) -> ParamsModel:
        """Check a complete params dict without applying it; raises :class:`ParamsError`."""
        return self.params_model.parse(params)

    async def apply_params(self, params: dict[str, Any]) -> None:
        """Apply an update and return once it is in effect (the REST API awaits this).

        The default applies it synchronously with :meth:`update_params`; processors whose
        updates need I/O (loading another model) override it so that a failure is reported
        to the caller instead of after a 200.
        """
        self.update_params(params)

    async def on_stream_start(self, params: dict[str, Any]) -> None:
        """A stream starts with ``params`` (complete, not partial); raises ParamsError."""
        self.update_params(params)

    async def on_stream_stop(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """The stream ended; drop per-stream state."""

    def take_data(self) -> list[dict[str, Any]]:
        """Data-channel records produced since the previous call (oldest first)."""
        return []

    def current_params(self) -> dict[str, Any]:
        """The params in effect, for the status route."""
        return {}

    async def close(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Release everything (server shutdown)."""
