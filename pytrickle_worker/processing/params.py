"""Processor params: one validated model per processor, updates applied whole or not at all."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from pytrickle_worker.core.errors import WorkerError

__all__ = [
    "NOT_BOOL",
    "STREAM_PARAM_KEYS",
    "ParamsError",
    "ParamsModel",
    "format_validation_error",
]

#: Keys of a params dict that configure the stream (decode size, frame-rate cap), not the
#: processor. The stream door validates them (its ``schemas.StreamParams``).
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
