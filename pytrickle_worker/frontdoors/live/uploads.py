"""Uploads into the live view: another producer's frames beside the worker's own.

* ``POST /frames``: ``multipart/form-data`` with the fields ``label``, ``key``, ``image``
  (a JPEG or PNG file) and, optionally, ``detections`` (a JSON array of detection items in
  the image's pixels).
* ``WS /ws/frames``: binary messages ``header_json + b"--IMG--" + image`` with the header
  ``{"label", "key", "detection_items"?}``; one JSON status reply per message. A bad message
  gets an error reply and the socket stays open; a message over the size limit closes it
  with 1009 (the socket cannot skip the rest of it).

Everything is checked before anything is stored: the body is read with a hard size limit
(``live_upload_max_bytes``), the image must be a JPEG or PNG whose header declares at most
``live_upload_max_pixels`` and that really decodes (PyAV, on a worker thread), labels and
keys follow the live naming rule, detections the schema and the image's bounds. A good
upload is scaled, drawn and encoded by the live writer's renderer (the path every door's
frame takes) and stored with origin ``upload``; the answer is
``{"status": "ok", "message": "stored <label>/<key>", "id": "<entry id>"}``. Every refusal
is ``{"status": "error", "message": ...}`` naming the field and the problem.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import BodyPartReader, WSMsgType, hdrs, web
from pydantic import TypeAdapter, ValidationError

from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.frontdoors.live.model import DetectionItem, split_frame_message
from pytrickle_worker.frontdoors.live.routes import LIVE_SUBPROTOCOL, store_down
from pytrickle_worker.frontdoors.live.schemas import (
    MAX_UPLOAD_DETECTIONS,
    REFERENCE_DETECTIONS,
    UPLOAD_DETECTIONS,
    UploadDetection,
    UploadHeader,
    UploadResponse,
    check_inside,
    from_reference,
)
from pytrickle_worker.frontdoors.live.store import StoreUnavailableError
from pytrickle_worker.frontdoors.live.writer import LiveWriter, render_frame
from pytrickle_worker.media.images import (
    ImageError,
    ImageFormat,
    ImageInfo,
    UnsupportedImageError,
    decode_image,
    probe_image,
)
from pytrickle_worker.processing import format_validation_error
from pytrickle_worker.processing.sink import MAX_LIVE_NAME_CHARS, check_live_name
from pytrickle_worker.transport.apidoc import Body, Reply, RouteDoc
from pytrickle_worker.transport.body_limits import set_route_body_limit
from pytrickle_worker.transport.credentials import close_when_credentials_expire
from pytrickle_worker.transport.http_errors import ApiError, error_response

__all__ = [
    "MAX_IMAGE_SIDE",
    "UPLOAD_ROUTE_DOCS",
    "FrameUploads",
    "UploadGate",
    "UploadSettings",
]

logger = logging.getLogger(__name__)

UPLOAD_PATH = "/frames"
UPLOAD_WS_PATH = "/ws/frames"
#: The widest or tallest image accepted, whatever the pixel budget (JPEG's own limit is
#: 65535, and a 1 x 16M strip would be a valid "16 megapixel" image nobody can view).
MAX_IMAGE_SIDE = 16384
#: The whole multipart body must arrive within this (a slow sender holds a connection).
READ_TIMEOUT_S = 30.0
_FIELDS = ("label", "key", "image", "detections")
#: The reference streaming backend's form (its producers can share the viewer): ``file`` is
#: ``image``, ``detection_items_json`` its [x1, y1, x2, y2, conf, cls] rows; the rest is
#: checked (JSON, positive integers) and not stored.
_REFERENCE_EXTRAS = ("warnings_json", "cone_polygons_json", "pole_polygons_json", "width", "height")
_REFERENCE_FIELDS = ("file", "detection_items_json", *_REFERENCE_EXTRAS)
_REQUIRED = ("label", "key")
_NAME_FIELDS = ("label", "key")
#: A label or key of 128 characters is at most this many UTF-8 bytes.
_NAME_MAX_BYTES = 4 * MAX_LIVE_NAME_CHARS
_IMAGE_TYPES: dict[str, ImageFormat | None] = {
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/pjpeg": "jpeg",
    "image/png": "png",
    "application/octet-stream": None,
}
_CHUNK = 64 * 1024
#: Uploads open at once (POST bodies being received plus upload sockets) per decoding slot:
#: each holds up to ``max_bytes`` before it reaches a slot, so memory stays bounded whatever
#: the number of producers (8 x 2 x 8 MiB by default).
OPEN_PER_SLOT = 8
_WS_USAGE = (
    'send binary messages: a JSON header {"label", "key", "detection_items"?}, --IMG--, '
    "then the image"
)


#: Asked before each message of an upload socket (the upgrade alone is one request to the
#: rate limits, the uploads that follow are many): None lets it through, else why not.
UploadGate = Callable[[web.Request], Awaitable[str | None]]


@dataclass(frozen=True)
class UploadSettings:
    """The uploads' bounds and the stored JPEG's settings (WorkerConfig's ``live_*``)."""

    max_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_width: int = 960
    jpeg_quality: int = 80
    concurrency: int = 2
    ws_heartbeat_s: float = 10.0

    @classmethod
    def from_config(cls, config: WorkerConfig) -> UploadSettings:
        return cls(
            max_bytes=config.live_upload_max_bytes,
            max_pixels=config.live_upload_max_pixels,
            max_width=config.live_max_width,
            jpeg_quality=config.live_jpeg_quality,
            concurrency=config.live_upload_concurrency,
            ws_heartbeat_s=config.ws_ping_interval_s,
        )


@dataclass(frozen=True)
class _Rendered:
    jpeg: bytes
    width: int
    height: int
    items: Sequence[DetectionItem]


def _error(message: str) -> dict[str, str]:
    return {"status": "error", "message": message}


class FrameUploads:
    """The upload routes over the live writer; :meth:`attach` mounts them on an app."""

    def __init__(
        self, writer: LiveWriter, settings: UploadSettings, gate: UploadGate | None = None
    ) -> None:
        if settings.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {settings.concurrency}")
        self.writer = writer
        self.settings = settings
        self.gate = gate
        # Decoding holds up to max_pixels x 3 bytes per upload: only this many at once.
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._sockets: set[web.WebSocketResponse] = set()
        #: POST bodies being received plus upload sockets open, at most max_open.
        self._open = 0
        self.max_open = OPEN_PER_SLOT * settings.concurrency

    def routes(self) -> list[web.RouteDef]:
        return [web.post(UPLOAD_PATH, self.post_frames), web.get(UPLOAD_WS_PATH, self.ws_frames)]

    def attach(self, app: web.Application) -> None:
        """Mount the routes; ``POST /frames`` takes bodies up to ``max_bytes``; the upload
        sockets are closed when the server shuts down."""
        app.router.add_routes(self.routes())
        set_route_body_limit(app, UPLOAD_PATH, self.settings.max_bytes)
        app.on_shutdown.append(self._on_shutdown)

    async def _on_shutdown(self, app: web.Application) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Close the upload sockets with 1001 (going away), so producers reconnect elsewhere.

        On the app's shutdown, which runs before the server drops its connections: later,
        the handlers are already cancelled and the producers would see a bare disconnect.
        """
        for ws in list(self._sockets):
            await ws.close(code=1001, message=b"worker stopping")

    # ------------------------------------------------------------------ the one upload path

    async def store(
        self,
        label: str,
        key: str,
        image: bytes,
        detections: list[UploadDetection],
        *,
        declared: ImageFormat | None = None,
        detections_field: str = "detections",
    ) -> UploadResponse:
        """Validate the image against the limits and the detections against the image,
        render and store it; :class:`ApiError` naming the problem, and nothing stored, when
        anything is wrong."""
        if not image:
            raise ApiError(400, "image is empty")
        try:
            # Off the loop: walking a header is a Python loop per segment (bounded, but up
            # to tens of ms for a hostile file of the upload's size).
            info = await asyncio.to_thread(probe_image, image)
        except UnsupportedImageError as exc:
            raise ApiError(415, f"{exc}; send a JPEG or PNG") from None
        except ImageError as exc:
            raise ApiError(422, f"image: {exc}") from None
        if declared is not None and declared != info.format:
            raise ApiError(
                415, f"image is declared image/{declared} but is a {info.format.upper()}"
            )
        self._check_size(info)
        try:
            check_inside(detections, info.width, info.height)
        except ValueError as exc:
            raise ApiError(422, f"{detections_field}.{exc}") from None
        async with self._slots:
            try:
                rendered = await asyncio.to_thread(self._render, image, info, detections)
            except ImageError as exc:
                raise ApiError(422, f"image: {exc}") from None
        try:
            entry_id = await self.writer.store_upload(
                label,
                key,
                rendered.jpeg,
                rendered.items,
                rendered.width,
                rendered.height,
                source_width=info.width,
                source_height=info.height,
            )
        except StoreUnavailableError as exc:
            raise ApiError(503, store_down(exc)) from None
        return UploadResponse(message=f"stored {label}/{key}", id=entry_id)

    def _check_size(self, info: ImageInfo) -> None:
        size = f"{info.width}x{info.height}"
        if info.width < 1 or info.height < 1:
            raise ApiError(422, f"image: {info.format.upper()} is {size}: it has no pixels")
        if max(info.width, info.height) > MAX_IMAGE_SIDE:
            raise ApiError(
                422, f"image: {size} is too large (at most {MAX_IMAGE_SIDE} pixels per side)"
            )
        if info.pixels > self.settings.max_pixels:
            raise ApiError(
                422,
                f"image: {size} is {info.pixels} pixels, more than the "
                f"{self.settings.max_pixels} allowed",
            )

    def _render(
        self, image: bytes, info: ImageInfo, detections: list[UploadDetection]
    ) -> _Rendered:
        """Decode, then scale, draw and encode as the writer does (blocking)."""
        rgb = decode_image(image, info)
        jpeg, width, height, items = render_frame(
            rgb,
            [item.record() for item in detections],
            (),
            max_width=self.settings.max_width,
            quality=self.settings.jpeg_quality,
        )
        return _Rendered(jpeg, width, height, items)

    def _refused(self, request: web.Request, exc: ApiError) -> None:
        logger.info(
            "upload from %s refused (%d): %s", request.remote or "?", exc.status, exc.message
        )

    # ------------------------------------------------------------------ POST /frames

    async def _admitted(
        self, request: web.Request, handle: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """``handle(request)`` counted as an open upload; a 503 when ``max_open`` are open."""
        if self._open >= self.max_open:
            exc = ApiError(503, f"too many uploads at once (limit {self.max_open}); try later")
            self._refused(request, exc)
            response = error_response(exc.status, exc.message)
            response.force_close()  # its body is not read
            return response
        self._open += 1
        try:
            return await handle(request)
        finally:
            self._open -= 1

    async def post_frames(self, request: web.Request) -> web.StreamResponse:
        return await self._admitted(request, self._post_frames)

    async def _post_frames(self, request: web.Request) -> web.Response:
        try:
            form, form_types = await self._read_form(request)
            label, key = (_name(form, field) for field in _NAME_FIELDS)
            image_field = "image" if "image" in form else "file"
            field = "detection_items_json" if "detection_items_json" in form else "detections"
            if field == "detection_items_json":
                detections = _reference_detections(form[field])
            else:
                detections = _detections(form.get(field, b""))
            _check_reference_extras({k: v for k, v in form.items() if k in _REFERENCE_EXTRAS})
            declared = _IMAGE_TYPES[form_types.get(image_field, "application/octet-stream")]
            result = await self.store(
                label, key, form[image_field], detections, declared=declared, detections_field=field
            )
        except ApiError as exc:
            self._refused(request, exc)
            response = error_response(exc.status, exc.message)
            if exc.status == 413:
                # The rest of the body is not read; the connection cannot be reused.
                response.force_close()
            return response
        return web.json_response(result.model_dump())

    async def _read_form(self, request: web.Request) -> tuple[dict[str, bytes], dict[str, str]]:
        """The fields (bytes) and their declared content types; ApiError when the body is
        not a well-formed upload form within the limits."""
        if request.content_type != "multipart/form-data":
            declared = request.headers.get(hdrs.CONTENT_TYPE, "").strip()
            raise ApiError(
                415,
                f"POST {UPLOAD_PATH} takes multipart/form-data (fields label, key, image and "
                "optionally detections), "
                + (
                    f"not {declared[:100]!r}" if declared else "and the request has no Content-Type"
                ),
            )
        encoding = request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
        if encoding != "identity":
            # aiohttp would inflate it before the size limit sees it: a few KiB of gzip can
            # stand for gigabytes. Images are compressed already.
            raise ApiError(415, f"compressed request bodies are not accepted ({encoding[:32]})")
        limit = self.settings.max_bytes
        length = request.content_length
        if length == 0:
            raise ApiError(400, "request body is empty: send the fields label, key and image")
        if length is not None and length > limit:
            raise ApiError(413, f"request body of {length} bytes is over the limit of {limit}")
        form: dict[str, bytes] = {}
        types: dict[str, str] = {}
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                reader = await request.multipart()
                while (part := await reader.next()) is not None:
                    if not isinstance(part, BodyPartReader):
                        raise ApiError(400, "nested multipart parts are not accepted")
                    name = part.name
                    if name is None:
                        raise ApiError(400, "a part has no field name (Content-Disposition)")
                    if name not in _FIELDS and name not in _REFERENCE_FIELDS:
                        raise ApiError(
                            400,
                            f"unknown field {name[:64]!r}: the fields are label, key, image "
                            "and optionally detections (or the reference streaming backend's: "
                            "file, detection_items_json, warnings_json, cone_polygons_json, "
                            "pole_polygons_json, width, height)",
                        )
                    if name in form:
                        raise ApiError(400, f"duplicate field {name!r}")
                    types[name] = _content_type(part)
                    if name in ("image", "file") and types[name] not in _IMAGE_TYPES:
                        raise ApiError(
                            415,
                            f"image has content type {types[name][:64]!r}: send image/jpeg "
                            "or image/png",
                        )
                    form[name] = await self._read_part(request, part, name)
        except TimeoutError:
            raise ApiError(408, f"request body not received within {READ_TIMEOUT_S:g} s") from None
        except ValueError as exc:  # aiohttp's multipart parser: no boundary, broken framing
            raise ApiError(400, f"malformed multipart body: {str(exc)[:200]}") from None
        missing = [field for field in _REQUIRED if field not in form]
        if "image" not in form and "file" not in form:
            missing.append("image")
        if missing:
            raise ApiError(
                400, f"missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
            )
        for one, other in (("image", "file"), ("detections", "detection_items_json")):
            if one in form and other in form:
                raise ApiError(400, f"{one} and {other} are the same field: send one of them")
        return form, types

    async def _read_part(self, request: web.Request, part: BodyPartReader, name: str) -> bytes:
        limit = self.settings.max_bytes
        chunks: list[bytes] = []
        size = 0
        while chunk := await part.read_chunk(_CHUNK):
            # Everything received so far counts, framing and all: the limit is the body's.
            if request.content.total_bytes > limit:
                raise ApiError(413, f"request body is over the limit of {limit} bytes")
            size += len(chunk)
            if name in _NAME_FIELDS and size > _NAME_MAX_BYTES:
                raise ApiError(422, f"{name} is longer than {MAX_LIVE_NAME_CHARS} characters")
            chunks.append(chunk)
        return b"".join(chunks)

    # ------------------------------------------------------------------ WS /ws/frames

    async def ws_frames(self, request: web.Request) -> web.StreamResponse:
        return await self._admitted(request, self._ws_frames)

    async def _ws_frames(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(
            protocols=(LIVE_SUBPROTOCOL,),
            heartbeat=self.settings.ws_heartbeat_s,
            max_msg_size=self.settings.max_bytes,
        )
        await ws.prepare(request)
        self._sockets.add(ws)
        stop_expiry = close_when_credentials_expire(ws, request)
        try:
            async for message in ws:
                if message.type == WSMsgType.BINARY:
                    reply = await self._ws_upload(request, message.data)
                elif message.type == WSMsgType.TEXT:
                    reply = _error(f"text messages are not uploads: {_WS_USAGE}")
                else:  # ERROR: aiohttp has closed the socket (1009 for a message too big)
                    break
                await ws.send_json(reply)
        except ConnectionResetError:
            pass  # the producer went away mid-answer
        finally:
            stop_expiry()
            self._sockets.discard(ws)
            if not ws.closed:
                await ws.close()
        return ws

    async def _ws_upload(self, request: web.Request, data: bytes) -> dict[str, Any]:
        if self.gate is not None and (refused := await self.gate(request)) is not None:
            self._refused(request, ApiError(429, refused))
            return _error(refused)
        try:
            try:
                head, image = split_frame_message(data)
            except ValueError as exc:
                raise ApiError(400, f"{exc}; {_WS_USAGE}") from None
            header = _header(head)
            detections, field = header.detection_items, "header.detection_items"
            if header.detection_items_json is not None:
                if header.detection_items:
                    raise ApiError(
                        400,
                        "header.detection_items and header.detection_items_json are the same "
                        "field: send one of them",
                    )
                detections = _reference_detections(
                    header.detection_items_json.encode(), "header.detection_items_json"
                )
                field = "header.detection_items_json"
            _check_reference_extras(
                {
                    f"header.{name}": value.encode()
                    for name in ("warnings_json", "cone_polygons_json", "pole_polygons_json")
                    if (value := getattr(header, name)) is not None
                }
            )
            result = await self.store(
                header.label, header.key, image, detections, detections_field=field
            )
        except ApiError as exc:
            self._refused(request, exc)
            return _error(exc.message)
        return result.model_dump()


# ---------------------------------------------------------------------- field parsing


def _name(form: dict[str, bytes], field: str) -> str:
    try:
        value = form[field].decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(422, f"{field} is not valid UTF-8 text") from None
    try:
        return check_live_name(value, field)
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None


_T = TypeVar("_T")
#: Any JSON value (the reference's fields that are checked, not stored).
_ANY_JSON: TypeAdapter[object] = TypeAdapter(object)


def _validated_json(validate: Callable[[bytes], _T], raw: bytes, what: str) -> _T:
    """``validate(raw)``; a 400 naming ``what`` when it is not JSON at all, a 422 naming the
    field when the JSON does not fit."""
    try:
        return validate(raw)
    except ValidationError as exc:
        if any(error["type"] == "json_invalid" for error in exc.errors()):
            message = exc.errors()[0]["msg"].removeprefix("Invalid JSON: ")
            raise ApiError(400, f"{what} is not valid JSON: {message}") from None
        raise ApiError(422, format_validation_error(exc, what)) from None


def _detections(raw: bytes) -> list[UploadDetection]:
    if not raw.strip():
        return []
    return _validated_json(UPLOAD_DETECTIONS.validate_json, raw, "detections")


def _reference_detections(raw: bytes, what: str = "detection_items_json") -> list[UploadDetection]:
    if not raw.strip():
        return []
    rows = _validated_json(REFERENCE_DETECTIONS.validate_json, raw, what)
    try:
        return from_reference(rows)
    except ValueError as exc:
        raise ApiError(422, f"{what}.{exc}") from None


def _check_reference_extras(fields: dict[str, bytes]) -> None:
    """The reference's fields that are not stored must still be what they say: JSON for
    the ``*_json`` ones, a whole number for width and height (0, the reference's default,
    for "not given": the image's own size is used either way)."""
    for name, raw in fields.items():
        if name in ("width", "height"):
            text = raw.decode("ascii", "replace").strip()
            if not (text.isascii() and text.isdigit() and int(text) <= MAX_IMAGE_SIDE):
                raise ApiError(
                    422, f"{name} must be a whole number up to {MAX_IMAGE_SIDE}, got {text[:32]!r}"
                )
        elif raw.strip():
            _validated_json(_ANY_JSON.validate_json, raw, name)


def _header(head: bytes) -> UploadHeader:
    if not head.strip():
        raise ApiError(400, f"header is empty; {_WS_USAGE}")
    return _validated_json(UploadHeader.model_validate_json, head, "header")


def _content_type(part: BodyPartReader) -> str:
    declared = part.headers.get(hdrs.CONTENT_TYPE, "application/octet-stream")
    return declared.partition(";")[0].strip().lower()


UPLOAD_ROUTE_DOCS: tuple[RouteDoc, ...] = (
    RouteDoc(
        "POST",
        UPLOAD_PATH,
        "Upload a frame (and its detections) into the live view",
        description=(
            "Stored like a door's frame: scaled to the live width, detections drawn and moved "
            "into the stored JPEG's pixels, origin `upload`. Nothing is stored when anything "
            "is wrong."
        ),
        tags=("live",),
        request=Body(
            content_type="multipart/form-data",
            schema={
                "type": "object",
                "required": list(_REQUIRED),
                "properties": {
                    "label": {"type": "string", "minLength": 1, "maxLength": MAX_LIVE_NAME_CHARS},
                    "key": {"type": "string", "minLength": 1, "maxLength": MAX_LIVE_NAME_CHARS},
                    "image": {
                        "type": "string",
                        "contentMediaType": "image/jpeg",
                        "description": "a JPEG or PNG file",
                    },
                    "detections": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "description": "a JSON array of detections in the image's pixels "
                        f"(at most {MAX_UPLOAD_DETECTIONS}, schema `UploadDetection`)",
                    },
                },
            },
        ),
        replies=(Reply(200, "stored", Body(UploadResponse)),),
        errors={
            400: "a malformed body, a missing, unknown or repeated field",
            408: "the body did not arrive in time",
            413: "the body is over `live_upload_max_bytes`",
            415: "not multipart, or the image is not a JPEG or PNG",
            422: "an invalid label, key, detection or image (too large, does not decode)",
            503: "the live store (Redis) is unreachable",
        },
    ),
    RouteDoc(
        "GET",
        UPLOAD_WS_PATH,
        "Upload frames over a WebSocket",
        description=(
            'Binary messages: a JSON header {"label", "key", "detection_items"?} (schema '
            "`UploadHeader`), the bytes `--IMG--`, then a JPEG or PNG. One JSON reply per "
            'message: `{"status": "ok", ...}` or `{"status": "error", "message": ...}`; the '
            "socket stays open after an error, and closes with 1009 after a message over the "
            "size limit. Every message counts against `rate_limit_uploads`, like a POST; one "
            'over it is answered `{"status": "error", "message": "rate limit exceeded: ...; '
            'retry in N s"}` and not stored.'
        ),
        tags=("live",),
        websocket=True,
        replies=(Reply(101, "one reply per message", Body(UploadResponse)),),
    ),
)
