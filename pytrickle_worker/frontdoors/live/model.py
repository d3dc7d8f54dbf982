"""What the live view stores and sends: entries, detection items, Redis key names, framing.

The wire contract (docs/LIVE.md): one Redis Stream per (label, key) named
``{prefix}{b64(label)}|{b64(key)}`` (URL-safe base64 with padding, as the reference web
backend names them), entries with string fields, and one binary WebSocket message per frame:
``json_header_utf8 + b"--IMG--" + jpeg``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, cast

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from pytrickle_worker.core.validation import NO_CONTROL
from pytrickle_worker.processing.sink import Origin, check_live_name

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "FRAME_DELIMITER",
    "REDIS_FIELD_NAMES",
    "DetectionItem",
    "LiveEntry",
    "StoredEntry",
    "b64_name",
    "decode_b64_name",
    "entry_id_order",
    "frame_message",
    "parse_detection_items",
    "parse_stream_name",
    "split_frame_message",
    "stream_name",
]

DEFAULT_KEY_PREFIX = "stream_frame:"
FRAME_DELIMITER = b"--IMG--"
_ORIGINS: tuple[Origin, ...] = ("cms", "stream", "upload")


Box = tuple[float, float, float, float]


def check_bbox(value: Box) -> Box:
    """``value`` when it is ``[x1, y1, x2, y2]`` of finite numbers with x2 >= x1, y2 >= y1."""
    if not all(math.isfinite(v) for v in value):
        raise ValueError("bbox values must be finite numbers")
    x1, y1, x2, y2 = value
    if x2 < x1 or y2 < y1:
        raise ValueError("bbox must be [x1, y1, x2, y2] with x2 >= x1 and y2 >= y1")
    return value


class DetectionItem(BaseModel):
    """One detection as the live view shows it; ``bbox`` in pixels of the stored JPEG."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    class_name: Annotated[str, NO_CONTROL] = Field(
        alias="class", min_length=1, max_length=200, description="Class name"
    )
    confidence: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    id: int | None = Field(default=None, ge=0, description="Track id, when tracked")
    bbox: tuple[float, float, float, float] = Field(
        description="[x1, y1, x2, y2] in pixels of the stored JPEG"
    )

    @field_validator("bbox")
    @classmethod
    def _ordered(cls, value: Box) -> Box:
        return check_bbox(value)

    def wire(self) -> dict[str, Any]:
        """The JSON object of the contract (``class``, whole-pixel numbers as integers)."""
        return {
            "class": self.class_name,
            "confidence": self.confidence,
            "id": self.id,
            "bbox": [int(v) if float(v).is_integer() else v for v in self.bbox],
        }


_ITEMS = TypeAdapter(list[DetectionItem])

#: One detection as the reference streaming backend's producers give it:
#: ``[x1, y1, x2, y2, confidence, class index]``.
ReferenceDetection = tuple[float, float, float, float, float, float]
_REFERENCE_ROWS = TypeAdapter(list[ReferenceDetection])


def parse_detection_items(raw: object) -> list[DetectionItem]:
    """A JSON array (parsed) of detection items; pydantic's ValidationError when invalid."""
    return _ITEMS.validate_python(raw)


def reference_detection_fields(row: ReferenceDetection) -> dict[str, Any]:
    """A reference row as a detection's fields (the class index is the class name, no
    track id); ValueError when the class is not an index."""
    x1, y1, x2, y2, confidence, class_index = row
    if not float(class_index).is_integer() or class_index < 0:
        raise ValueError("the class must be an index (an integer >= 0)")
    return {"class": str(int(class_index)), "confidence": confidence, "bbox": (x1, y1, x2, y2)}


def stored_detection_items(text: str) -> list[DetectionItem]:
    """The ``detection_items`` field of a stream entry: ours (a JSON array of objects), or
    what the reference streaming backend stores (empty text when its producer sent none, or
    its producer's rows), so entries it wrote can be pulled here. ValueError otherwise."""
    if not text.strip():
        return []
    raw = cast("object", json.loads(text))
    if _starts_with_a_list(raw):
        rows = _REFERENCE_ROWS.validate_python(raw)
        return parse_detection_items([reference_detection_fields(row) for row in rows])
    return parse_detection_items(raw)


def _starts_with_a_list(value: object) -> bool:
    if not isinstance(value, list):
        return False
    items = cast("list[object]", value)
    return bool(items) and isinstance(items[0], list)


def items_json(items: Sequence[DetectionItem]) -> str:
    return json.dumps([item.wire() for item in items], separators=(",", ":"))


#: The fields of a stored entry, in the order the writer sends them.
REDIS_FIELD_NAMES = (
    "frame",
    "detection_items",
    "warnings",
    "width",
    "height",
    "source_width",
    "source_height",
    "capture_time",
    "worker",
    "online",
    "fps",
    "origin",
)


@dataclass(frozen=True)
class LiveEntry:
    """One stored frame with its metadata (the fields of one stream entry)."""

    frame: bytes
    detection_items: tuple[DetectionItem, ...]
    width: int
    height: int
    source_width: int
    source_height: int
    capture_time: float
    worker: str
    online: bool
    fps: float
    origin: Origin
    warnings: str = ""

    def with_online(self, online: bool) -> LiveEntry:
        return replace(self, online=online, fps=self.fps if online else 0.0)

    def redis_values(self) -> tuple[bytes, ...]:
        """The entry's field values in the order of :data:`REDIS_FIELD_NAMES`."""
        return (
            self.frame,
            items_json(self.detection_items).encode(),
            self.warnings.encode(),
            b"%d" % self.width,
            b"%d" % self.height,
            b"%d" % self.source_width,
            b"%d" % self.source_height,
            repr(float(self.capture_time)).encode(),
            self.worker.encode(),
            b"1" if self.online else b"0",
            repr(float(self.fps)).encode(),
            self.origin.encode(),
        )

    def redis_fields(self) -> dict[str, bytes]:
        return dict(zip(REDIS_FIELD_NAMES, self.redis_values(), strict=True))

    @classmethod
    def from_redis_fields(cls, fields: Mapping[bytes, bytes]) -> LiveEntry:
        """An entry read back from Redis; ValueError (or pydantic's) when it is not one."""

        def text(name: str, default: str = "") -> str:
            value = fields.get(name.encode())
            return value.decode("utf-8", "replace") if value is not None else default

        origin = text("origin", "upload")
        return cls(
            frame=fields.get(b"frame", b""),
            detection_items=tuple(stored_detection_items(text("detection_items"))),
            warnings=text("warnings"),
            width=int(text("width", "0")),
            height=int(text("height", "0")),
            source_width=int(text("source_width", "0")),
            source_height=int(text("source_height", "0")),
            capture_time=float(text("capture_time", "0")),
            worker=text("worker"),
            online=text("online", "1") == "1",
            fps=float(text("fps", "0")),
            origin=_origin(origin),
        )


def _origin(text: str) -> Origin:
    for origin in _ORIGINS:
        if origin == text:
            return origin
    return "upload"


@dataclass(frozen=True)
class StoredEntry:
    """An entry with where it is stored: its label, key and stream entry id."""

    label: str
    key: str
    id: str
    entry: LiveEntry

    def header(self) -> dict[str, Any]:
        """The JSON header of the binary framing (and the metadata of GET /labels/.../keys)."""
        e = self.entry
        return {
            "label": self.label,
            "key": self.key,
            "id": self.id,
            "detection_items": [item.wire() for item in e.detection_items],
            "warnings": e.warnings,
            "width": e.width,
            "height": e.height,
            "source_width": e.source_width,
            "source_height": e.source_height,
            "capture_time": e.capture_time,
            "worker": e.worker,
            "online": e.online,
            "fps": e.fps,
            "origin": e.origin,
        }

    def key_summary(self) -> dict[str, Any]:
        """One key of ``GET /labels/{label}/keys``: its newest entry's metadata."""
        e = self.entry
        return {
            "key": self.key,
            "worker": e.worker,
            "online": e.online,
            "fps": e.fps,
            "capture_time": e.capture_time,
            "id": self.id,
        }


#: The delimiter with its first "-" as a JSON escape: the same text to a JSON reader, but
#: not the delimiter's bytes.
_ESCAPED_DELIMITER = "\\u002d-IMG--"


def frame_message(stored: StoredEntry) -> bytes:
    """One binary WebSocket message: JSON header, the delimiter, the JPEG.

    A label, key, worker or class name may contain ``--IMG--`` (printable text); outside a
    string JSON never does. Escaping it inside the strings keeps the header's value and makes
    the first delimiter the one after the header, which is where a client that splits once
    (the reference's, :func:`split_frame_message`) looks.
    """
    header = json.dumps(stored.header(), separators=(",", ":"), ensure_ascii=False)
    while "--IMG--" in header:  # again: "--IMG--IMG--" leaves an overlapping one behind
        header = header.replace("--IMG--", _ESCAPED_DELIMITER)
    return header.encode("utf-8") + FRAME_DELIMITER + stored.entry.frame


def split_frame_message(data: bytes) -> tuple[bytes, bytes]:
    """``(header bytes, image bytes)`` of a binary message; ValueError without a delimiter.

    The header is JSON and cannot contain the raw delimiter bytes outside a string, and
    :func:`frame_message` escapes it inside strings; the first occurrence ends it (a JPEG may
    contain the delimiter anywhere). An uploader whose label contains ``--IMG--`` escapes it
    the same way (``\\u002d-IMG--``).
    """
    head, found, image = data.partition(FRAME_DELIMITER)
    if not found:
        raise ValueError("binary message has no '--IMG--' delimiter between header and image")
    return head, image


# ---------------------------------------------------------------------- key names


def b64_name(name: str) -> str:
    """URL-safe base64 of the UTF-8 name, with padding (the reference's encoding)."""
    return base64.urlsafe_b64encode(name.encode("utf-8")).decode("ascii")


def decode_b64_name(encoded: str) -> str:
    """The name back from :func:`b64_name`; ValueError when it is not one."""
    try:
        raw = base64.urlsafe_b64decode(encoded.encode("ascii"))
        name = raw.decode("utf-8")
    except (binascii.Error, UnicodeError) as exc:
        raise ValueError(f"not a base64 name: {encoded!r}") from exc
    if b64_name(name) != encoded:
        raise ValueError(f"not a canonical base64 name: {encoded!r}")
    return name


def stream_name(prefix: str, label: str, key: str) -> str:
    """The Redis Stream of (label, key)."""
    return f"{prefix}{b64_name(label)}|{b64_name(key)}"


def parse_stream_name(prefix: str, name: str) -> tuple[str, str] | None:
    """``(label, key)`` of a stream name under ``prefix``; None for another key."""
    if not name.startswith(prefix):
        return None
    encoded_label, sep, encoded_key = name[len(prefix) :].partition("|")
    if not sep:
        return None
    try:
        label, key = decode_b64_name(encoded_label), decode_b64_name(encoded_key)
        check_live_name(label)
        check_live_name(key, "key")
    except ValueError:
        return None
    return label, key


def entry_id_order(entry_id: str) -> tuple[int, int]:
    """An entry id ``<ms>-<seq>`` as a sortable pair (malformed ids sort first)."""
    ms, _, seq = entry_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return (-1, -1)
