"""Uploads into the live view: ``POST /frames`` and ``WS /ws/frames`` (docs/LIVE.md).

The real app from ``create_app`` behind a real server on 127.0.0.1, with the frame store in
memory and in a real Redis; real multipart bodies (built byte by byte, so that hostile ones
can be sent as they are), real WebSocket clients, real JPEG/PNG encoding and decoding.
Good uploads are read back over the pull socket; every hostile one must be refused with its
status and a message naming the problem, and leave the store exactly as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import struct
import uuid
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiohttp import ClientSession, ClientWebSocketResponse, WSMsgType, WSServerHandshakeError, web
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st

from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.frontdoors.live.model import FRAME_DELIMITER, split_frame_message
from pytrickle_worker.media.images import (
    MAX_JPEG_SCANS,
    ImageError,
    UnsupportedImageError,
    probe_image,
)
from pytrickle_worker.media.jpeg import encode_jpeg
from pytrickle_worker.server.app import LIVE_KEY, create_app
from tests.helpers import RedisProcess
from tests.test_cms_protocol import decode_jpeg

TOKEN = "upl0ad-T0ken-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
#: Small enough that "over the limit" bodies are quick to send.
MAX_BYTES = 1024 * 1024
MAX_WIDTH = 160
BOUNDARY = "ptw-upload-boundary-7d3f"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


# --------------------------------------------------------------------------- images


def picture(width: int, height: int) -> np.ndarray:
    """A smooth gradient (compresses well, decodes the same at any quality)."""
    ys, xs = np.mgrid[0:height, 0:width]
    rgb = np.stack([xs * 255 // max(1, width - 1), ys * 255 // max(1, height - 1), xs * 0 + 90])
    return np.ascontiguousarray(rgb.transpose(1, 2, 0).astype(np.uint8))


def make_jpeg(width: int, height: int) -> bytes:
    return encode_jpeg(picture(width, height), 90)


def make_png(width: int, height: int) -> bytes:
    codec = av.CodecContext.create("png", "w")
    assert isinstance(codec, av.VideoCodecContext)
    codec.width, codec.height, codec.pix_fmt = width, height, "rgb24"
    codec.time_base = Fraction(1, 25)
    frame = av.VideoFrame.from_ndarray(picture(width, height), format="rgb24")
    return b"".join(bytes(p) for p in [*codec.encode(frame), *codec.encode(None)])


def encode_still(codec_name: str, pix_fmt: str, width: int, height: int) -> bytes:
    """``picture`` encoded by FFmpeg in another pixel format (grey, alpha, 16 bit, palette,
    4:4:4 chroma) than the common one."""
    codec = av.CodecContext.create(codec_name, "w")
    assert isinstance(codec, av.VideoCodecContext)
    codec.width, codec.height, codec.pix_fmt = width, height, pix_fmt
    codec.time_base = Fraction(1, 25)
    frame = av.VideoFrame.from_ndarray(picture(width, height), format="rgb24").reformat(
        format=pix_fmt
    )
    return b"".join(bytes(p) for p in [*codec.encode(frame), *codec.encode(None)])


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def handmade_png(width: int, height: int, idat: bytes | None = None) -> bytes:
    """A PNG declaring ``width`` x ``height`` with a tiny (or given) IDAT: a "bomb" when the
    declared size is huge."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = idat if idat is not None else zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


JPEG = make_jpeg(320, 240)
PNG = make_png(64, 48)


# --------------------------------------------------------------------------- multipart


@dataclass(frozen=True)
class Part:
    name: str | None
    data: bytes
    filename: str | None = None
    content_type: str | None = None

    def encode(self) -> bytes:
        disposition = "form-data"
        if self.name is not None:
            disposition += f'; name="{self.name}"'
        if self.filename is not None:
            disposition += f'; filename="{self.filename}"'
        head = f"Content-Disposition: {disposition}\r\n"
        if self.content_type is not None:
            head += f"Content-Type: {self.content_type}\r\n"
        return f"--{BOUNDARY}\r\n{head}\r\n".encode() + self.data + b"\r\n"


def form(*parts: Part) -> bytes:
    return b"".join(p.encode() for p in parts) + f"--{BOUNDARY}--\r\n".encode()


def text(name: str, value: str | bytes) -> Part:
    return Part(name, value.encode() if isinstance(value, str) else value)


def image(data: bytes = JPEG, content_type: str | None = "image/jpeg") -> Part:
    return Part("image", data, "frame.jpg", content_type)


def detections(items: object) -> Part:
    return text("detections", json.dumps(items))


def good_form(label: str = "lobby", key: str = "cam-1", *extra: Part) -> bytes:
    return form(text("label", label), text("key", key), image(), *extra)


def item(bbox: Sequence[float], cls: str = "person", conf: float = 0.9, id_: object = 7) -> Any:
    return {"class": cls, "confidence": conf, "id": id_, "bbox": list(bbox)}


# --------------------------------------------------------------------------- the worker


@dataclass
class Worker:
    app: web.Application
    server: TestServer
    http: ClientSession
    sockets: list[ClientWebSocketResponse] = field(default_factory=list[ClientWebSocketResponse])

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def post(
        self, body: bytes, content_type: str = MULTIPART, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        sent = {"Content-Type": content_type, **BEARER, **(headers or {})}
        async with self.http.post(self.url("/frames"), data=body, headers=sent) as response:
            assert response.content_type == "application/json", await response.text()
            return response.status, await response.json()

    async def uploader(self) -> ClientWebSocketResponse:
        ws = await self.http.ws_connect(
            self.url("/ws/frames"), headers=BEARER, protocols=("ptw.live",)
        )
        self.sockets.append(ws)
        return ws

    async def send(
        self, ws: ClientWebSocketResponse, header: object, picture: bytes = JPEG
    ) -> dict[str, Any]:
        head = header if isinstance(header, bytes) else json.dumps(header).encode()
        await ws.send_bytes(head + FRAME_DELIMITER + picture)
        return await reply(ws)

    async def pull(self, label: str, key: str) -> tuple[dict[str, Any], bytes]:
        path = f"/ws/stream/{label}/{key}"
        async with self.http.ws_connect(self.url(path), headers=BEARER) as ws:
            await ws.send_json({"action": "pull"})
            message = await ws.receive(timeout=10)
            assert message.type == WSMsgType.BINARY, message.data
            head, jpeg = split_frame_message(message.data)
            return json.loads(head), jpeg

    async def stored(self) -> dict[tuple[str, str], list[str]]:
        """Every (label, key) in the store with its entry ids."""
        store = self.app[LIVE_KEY].store
        found: dict[tuple[str, str], list[str]] = {}
        for label in await store.labels():
            for newest in await store.keys(label):
                entries = await store.entries(label, newest.key)
                found[(label, newest.key)] = [e.id for e in entries]
        return found


async def reply(ws: ClientWebSocketResponse) -> dict[str, Any]:
    message = await ws.receive(timeout=15)
    assert message.type == WSMsgType.TEXT, (message.type, message.data)
    return json.loads(message.data)


@pytest.fixture(params=["memory", "redis"])
async def worker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Worker]:
    overrides: dict[str, Any] = {}
    if request.param == "redis":
        redis: RedisProcess = request.getfixturevalue("redis_server")
        # A prefix of this test's own: the session's Redis is shared.
        overrides = {"live_redis_url": redis.url, "live_key_prefix": f"up-{uuid.uuid4().hex}:"}
    config = WorkerConfig(
        cache_dir=tmp_path / "cache",
        execution_provider="cpu",
        hw_decode="off",
        access_token=TOKEN,
        live_max_width=MAX_WIDTH,
        live_upload_max_bytes=MAX_BYTES,
        # Every upload message counts against it (tests/test_auth_limits.py): the fuzz suite
        # sends more than a minute's budget over one socket.
        rate_limit_uploads="off",
        **overrides,
    )
    app = create_app(config)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    worker = Worker(app, server, ClientSession())
    yield worker
    for ws in worker.sockets:
        await ws.close()
    await worker.http.close()
    await server.close()


# --------------------------------------------------------------------------- good uploads


async def test_a_jpeg_upload_with_detections_appears_on_pull(worker: Worker) -> None:
    sent = [item([20, 40, 100, 200]), item([0, 0, 320, 240], "car", 0.25, None)]
    status, body = await worker.post(good_form("lobby", "cam-1", detections(sent)))
    assert status == 200, body
    assert body["status"] == "ok" and body["message"] == "stored lobby/cam-1"
    assert await worker.stored() == {("lobby", "cam-1"): [body["id"]]}

    header, jpeg = await worker.pull("lobby", "cam-1")
    assert header["id"] == body["id"]
    assert header["origin"] == "upload" and header["online"] is True
    assert header["worker"] == worker.app[LIVE_KEY].writer.settings.worker_id
    # Scaled to the live view's width (320 -> 160), boxes in the stored picture's pixels.
    assert (header["width"], header["height"]) == (160, 120)
    assert (header["source_width"], header["source_height"]) == (320, 240)
    assert header["detection_items"] == [
        {"class": "person", "confidence": 0.9, "id": 7, "bbox": [10, 20, 50, 100]},
        {"class": "car", "confidence": 0.25, "id": None, "bbox": [0, 0, 160, 120]},
    ]
    assert decode_jpeg(jpeg).shape == (120, 160, 3)


async def test_a_png_upload_is_stored_as_a_jpeg(worker: Worker) -> None:
    body = form(text("label", "Hall ü 2"), text("key", "door cam"), image(PNG, "image/png"))
    status, answer = await worker.post(body)
    assert status == 200, answer
    header, jpeg = await worker.pull("Hall ü 2", "door cam")
    assert header["id"] == answer["id"] and header["detection_items"] == []
    assert (header["width"], header["height"]) == (64, 48)  # narrower than max: not scaled
    stored = decode_jpeg(jpeg)
    assert stored.shape == (48, 64, 3)
    # The picture itself, re-encoded: the gradient's corners survive.
    assert np.abs(stored.astype(int) - picture(64, 48).astype(int)).mean() < 8


async def test_uploads_over_the_websocket_appear_on_pull(worker: Worker) -> None:
    ws = await worker.uploader()
    assert ws.protocol == "ptw.live"
    first = await worker.send(
        ws, {"label": "dock", "key": "a", "detection_items": [item([32, 24, 64, 48])]}
    )
    second = await worker.send(ws, {"label": "dock", "key": "b"}, PNG)
    third = await worker.send(ws, {"label": "dock", "key": "a"})
    assert [r["status"] for r in (first, second, third)] == ["ok", "ok", "ok"]
    assert second["message"] == "stored dock/b"
    assert await worker.stored() == {
        ("dock", "a"): [first["id"], third["id"]],
        ("dock", "b"): [second["id"]],
    }
    header, _ = await worker.pull("dock", "b")
    assert header["id"] == second["id"] and (header["width"], header["height"]) == (64, 48)
    header, _ = await worker.pull("dock", "a")
    assert header["id"] == third["id"] and header["detection_items"] == []
    oldest = (await worker.app[LIVE_KEY].store.entries("dock", "a"))[0]
    assert [i.wire() for i in oldest.entry.detection_items] == [
        {"class": "person", "confidence": 0.9, "id": 7, "bbox": [16, 12, 32, 24]}
    ]
    assert oldest.entry.origin == "upload"


def reference_form(label: str, key: str, rows: object, **extra: str) -> bytes:
    """A POST /frames body as the reference streaming backend's producers send it."""
    fields = {
        "warnings_json": json.dumps(["no helmet"]),
        "cone_polygons_json": json.dumps([[[0, 0], [10, 0], [5, 5]]]),
        "pole_polygons_json": "[]",
        "detection_items_json": json.dumps(rows),
        "width": "320",
        "height": "240",
        **extra,
    }
    parts = [text("label", label), text("key", key), Part("file", JPEG, "frame.jpg", "image/jpeg")]
    return form(*parts, *(text(name, value) for name, value in fields.items() if value != "-"))


async def test_a_producer_written_for_the_reference_backend_can_upload(worker: Worker) -> None:
    # Its form (file, detection_items_json as [x1, y1, x2, y2, conf, cls] rows, and fields
    # that are checked but not stored) and its WebSocket header.
    rows = [[20, 40, 100, 200, 0.9, 0], [0, 0, 320, 240, 0.25, 5.0]]
    status, body = await worker.post(reference_form("site-a", "cam-1", rows))
    assert status == 200 and body["status"] == "ok", body
    header, _ = await worker.pull("site-a", "cam-1")
    assert header["id"] == body["id"]
    assert header["detection_items"] == [
        {"class": "0", "confidence": 0.9, "id": None, "bbox": [10, 20, 50, 100]},
        {"class": "5", "confidence": 0.25, "id": None, "bbox": [0, 0, 160, 120]},
    ]
    ws = await worker.uploader()
    reply = await worker.send(
        ws,
        {
            "label": "site-a",
            "key": "cam-2",
            "warnings_json": "[]",
            "cone_polygons_json": "[]",
            "pole_polygons_json": "[]",
            "detection_items_json": json.dumps([[32, 24, 64, 48, 0.5, 2]]),
            "width": 320,
            "height": 240,
        },
    )
    assert reply["status"] == "ok", reply
    header, _ = await worker.pull("site-a", "cam-2")
    assert header["detection_items"] == [
        {"class": "2", "confidence": 0.5, "id": None, "bbox": [16, 12, 32, 24]}
    ]
    # Width and height 0 are the reference's defaults: the image's own size is used.
    status, body = await worker.post(reference_form("site-a", "cam-3", [], width="0", height="0"))
    assert status == 200 and body["status"] == "ok", body
    header, _ = await worker.pull("site-a", "cam-3")
    assert (header["source_width"], header["source_height"]) == (320, 240)
    reply = await worker.send(ws, {"label": "site-a", "key": "cam-4", "width": 0, "height": 0})
    assert reply["status"] == "ok", reply


@pytest.mark.parametrize(
    ("rows", "extra", "problem"),
    [
        ([[0, 0, 10]], {}, "detection_items_json.0"),
        ([[0, 0, 10, 10, 0.5, 1.5]], {}, "detection_items_json.0.5: the class must be an index"),
        ([[0, 0, 10, 10, 0.5, -1]], {}, "the class must be an index"),
        ([[0, 0, 10, 10, 1.5, 1]], {}, "detection_items_json.0: "),
        ([[0, 0, 400, 10, 0.5, 1]], {}, "detection_items_json.0.bbox"),
        ([], {"warnings_json": "{oops"}, "warnings_json is not valid JSON"),
        ([], {"width": "wide"}, "width must be a whole number"),
        ([], {"height": "-1"}, "height must be a whole number"),
        ([], {"height": "\u0663"}, "height must be a whole number"),
        ([], {"detections": "[]"}, "detections and detection_items_json are the same field"),
    ],
)
async def test_a_bad_reference_upload_is_refused_and_stores_nothing(
    worker: Worker, rows: object, extra: dict[str, str], problem: str
) -> None:
    before = await worker.stored()
    status, body = await worker.post(reference_form("site-b", "cam", rows, **extra))
    assert status in (400, 422) and body["status"] == "error", body
    assert problem in body["message"], body["message"]
    assert await worker.stored() == before


@pytest.mark.parametrize(
    ("codec", "pix_fmt"),
    [
        ("png", "rgba"),
        ("png", "gray"),
        ("png", "rgb48be"),
        ("png", "monob"),
        ("mjpeg", "yuvj444p"),
        ("mjpeg", "yuvj422p"),
    ],
)
@pytest.mark.parametrize("worker", ["memory"], indirect=True)
async def test_every_common_pixel_format_is_accepted(
    worker: Worker, codec: str, pix_fmt: str
) -> None:
    data = encode_still(codec, pix_fmt, 200, 100)
    kind = "image/png" if codec == "png" else "image/jpeg"
    status, body = await worker.post(
        form(text("label", "f"), text("key", pix_fmt), image(data, kind))
    )
    assert status == 200, body
    header, jpeg = await worker.pull("f", pix_fmt)
    assert (header["width"], header["height"]) == (160, 80)
    assert decode_jpeg(jpeg).shape == (80, 160, 3)


@pytest.mark.parametrize("worker", ["memory"], indirect=True)
def paletted_png(width: int, height: int) -> bytes:
    """A colour-type-3 PNG (a palette of three colours), which FFmpeg decodes as pal8."""
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    # Stripes of 16 pixels: wide enough to keep their colour through 4:2:0 JPEG.
    rows = b"".join(b"\x00" + bytes(x // 16 % 3 for x in range(width)) for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"PLTE", bytes([255, 0, 0, 0, 255, 0, 0, 0, 255]))
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("worker", ["memory"], indirect=True)
async def test_a_paletted_png_is_accepted(worker: Worker) -> None:
    body = form(text("label", "f"), text("key", "pal8"), image(paletted_png(48, 16), "image/png"))
    status, answer = await worker.post(body)
    assert status == 200, answer
    _, jpeg = await worker.pull("f", "pal8")
    stored = decode_jpeg(jpeg)
    assert stored.shape == (16, 48, 3)
    red, green, blue = stored[8, 8], stored[8, 24], stored[8, 40]
    assert red[0] > 200 > 60 > max(red[1], red[2]), red
    assert green[1] > 200 > 60 > max(green[0], green[2]), green
    assert blue[2] > 200 > 60 > max(blue[0], blue[1]), blue


async def test_many_uploads_at_once_are_all_stored(worker: Worker) -> None:
    # More than live_upload_concurrency: the others wait their turn, none is lost.
    results = await asyncio.gather(*(worker.post(good_form("many", f"k{i}")) for i in range(12)))
    assert [status for status, _ in results] == [200] * 12
    stored = await worker.stored()
    assert sorted(stored) == sorted(("many", f"k{i}") for i in range(12))


@pytest.mark.parametrize("worker", ["memory"], indirect=True)
async def test_open_uploads_are_bounded_and_the_others_are_refused(worker: Worker) -> None:
    # Each open upload (a socket, a body being received) may hold up to the size limit
    # before it is decoded: at most 8 per decoding slot are open at once.
    limit = 8 * 2  # live_upload_concurrency 2
    sockets = [await worker.uploader() for _ in range(limit)]
    with pytest.raises(WSServerHandshakeError) as refused:
        await worker.uploader()
    assert refused.value.status == 503
    status, body = await worker.post(good_form("busy", "k"))
    assert status == 503 and f"too many uploads at once (limit {limit})" in body["message"]
    # The open ones still work, and a closed one frees its place.
    assert (await worker.send(sockets[0], _HEADER))["status"] == "ok"
    await sockets[-1].close()
    await asyncio.sleep(0.2)
    status, body = await worker.post(good_form("busy", "k"))
    assert status == 200, body


@pytest.mark.parametrize("worker", ["memory"], indirect=True)
async def test_stopping_the_worker_closes_upload_sockets(worker: Worker) -> None:
    ws = await worker.uploader()
    assert (await worker.send(ws, _HEADER))["status"] == "ok"
    # Read while the server stops: its close waits for this side's answer.
    stopping = asyncio.get_running_loop().create_task(worker.server.close())
    message = await ws.receive(timeout=15)
    assert (message.type, message.data) == (WSMsgType.CLOSE, 1001), message
    await stopping


async def test_labels_lists_an_uploaded_label(worker: Worker) -> None:
    status, _ = await worker.post(good_form("yard", "k"))
    assert status == 200
    async with worker.http.get(worker.url("/labels"), headers=BEARER) as response:
        assert (await response.json())["labels"] == ["yard"]


# --------------------------------------------------------------------------- hostile POSTs


@dataclass(frozen=True)
class Hostile:
    name: str
    body: bytes
    status: int
    problem: str
    content_type: str = MULTIPART


def _with_image(data: bytes, content_type: str | None = "image/jpeg") -> bytes:
    return form(text("label", "lobby"), text("key", "cam-1"), image(data, content_type))


def _with_detections(raw: bytes) -> bytes:
    return form(text("label", "lobby"), text("key", "cam-1"), image(), text("detections", raw))


def _named(label: str | bytes, key: str = "cam-1") -> bytes:
    return form(text("label", label), text("key", key), image())


_BAD_IDAT = handmade_png(16, 16, zlib.compress(b"\x07" * 7))
HOSTILE_POSTS = [
    Hostile("empty body", b"", 400, "request body is empty"),
    Hostile(
        "wrong content type", b'{"label": "a"}', 415, "multipart/form-data", "application/json"
    ),
    Hostile(
        "form-urlencoded",
        b"label=a",
        415,
        "not 'application/x-www-form-urlencoded'",
        "application/x-www-form-urlencoded",
    ),
    Hostile("not multipart at all", b"hello there\r\n", 400, "malformed multipart body"),
    Hostile("no fields", form(), 400, "missing fields label, key, image"),
    Hostile(
        "missing image", form(text("label", "a"), text("key", "b")), 400, "missing field image"
    ),
    Hostile(
        "duplicate label",
        form(text("label", "a"), text("label", "b"), text("key", "k"), image()),
        400,
        "duplicate field 'label'",
    ),
    Hostile(
        "unknown field",
        form(text("label", "a"), text("key", "b"), image(), text("extra", "x")),
        400,
        "unknown field 'extra'",
    ),
    Hostile("part without a name", form(Part(None, b"x")), 400, "no field name"),
    Hostile("empty image", _with_image(b""), 400, "image is empty"),
    Hostile("not an image", _with_image(b"GIF89a" + b"\x00" * 64, None), 415, "not a JPEG or PNG"),
    Hostile("image declared text/plain", _with_image(JPEG, "text/plain"), 415, "'text/plain'"),
    Hostile("PNG declared as JPEG", _with_image(PNG), 415, "declared image/jpeg but is a PNG"),
    Hostile("truncated JPEG", _with_image(JPEG[: len(JPEG) // 2]), 422, "JPEG is truncated"),
    Hostile("JPEG header only", _with_image(JPEG[:120]), 422, "image: JPEG is truncated"),
    Hostile("truncated PNG", _with_image(PNG[:-30], "image/png"), 422, "PNG is truncated"),
    Hostile("corrupt PNG data", _with_image(_BAD_IDAT, "image/png"), 422, "PNG does not decode"),
    Hostile(
        "image bomb",
        _with_image(handmade_png(100_000, 100_000), "image/png"),
        422,
        "100000x100000 is too large",
    ),
    Hostile(
        "too many pixels",
        _with_image(handmade_png(5000, 5000), "image/png"),
        422,
        "5000x5000 is 25000000 pixels, more than the 16777216 allowed",
    ),
    Hostile("0-size image", _with_image(handmade_png(0, 48), "image/png"), 422, "no pixels"),
    Hostile("label with /", _named("a/b"), 422, "label must not contain '/'"),
    Hostile(
        "label with a control", _named("bell\x07"), 422, "label must be printable text (U+0007"
    ),
    Hostile("empty label", _named(""), 422, "label must not be empty"),
    Hostile("label '..'", _named(".."), 422, "label must not be '..'"),
    Hostile("key '.'", _named("a", "."), 422, "key must not be '.'"),
    Hostile("label of 129", _named("x" * 129), 422, "label is longer than 128 characters"),
    Hostile("label of 4 KiB", _named("x" * 4096), 422, "label is longer than 128 characters"),
    Hostile("label not UTF-8", _named(b"\xff\xfe"), 422, "label is not valid UTF-8"),
    Hostile("key with newline", _named("a", "k\n"), 422, "key must be printable text (U+000A"),
    Hostile("detections not JSON", _with_detections(b"[{"), 400, "detections is not valid JSON"),
    Hostile(
        "detections NaN",
        _with_detections(b'[{"class": "a", "confidence": NaN, "bbox": [0, 0, 1, 1]}]'),
        422,
        "detections.0.confidence: Input should be a finite number",
    ),
    Hostile(
        "bbox Infinity",
        _with_detections(b'[{"class": "a", "confidence": 1, "bbox": [0, 0, Infinity, 1]}]'),
        422,
        "detections.0.bbox: bbox values must be finite",
    ),
    Hostile(
        "bbox outside the image",
        _with_detections(json.dumps([item([0, 0, 10, 10]), item([300, 200, 321, 240])]).encode()),
        422,
        "detections.1.bbox [300, 200, 321, 240] is outside the 320x240 image",
    ),
    Hostile(
        "1001 detections",
        _with_detections(json.dumps([item([0, 0, 1, 1])] * 1001).encode()),
        422,
        "at most 1000 items",
    ),
    Hostile(
        "detections not an array",
        _with_detections(b'{"class": "a"}'),
        422,
        "detections: Input should be a valid array",
    ),
    Hostile(
        "detection of the wrong types",
        _with_detections(json.dumps([item([0, 0, 1, 1], conf="0.5", id_=True)]).encode()),  # pyright: ignore[reportArgumentType] - the point
        422,
        "detections.0.confidence: Input should be a valid number",
    ),
    Hostile(
        "class of 65 characters",
        _with_detections(json.dumps([item([0, 0, 1, 1], "c" * 65)]).encode()),
        422,
        "detections.0.class: String should have at most 64 characters",
    ),
    Hostile(
        "track id past 2**53",
        _with_detections(json.dumps([item([0, 0, 1, 1], id_=2**53)]).encode()),
        422,
        "detections.0.id: Input should be less than or equal to 9007199254740991",
    ),
    Hostile(
        "confidence above 1",
        _with_detections(json.dumps([item([0, 0, 1, 1], conf=1.5)]).encode()),
        422,
        "detections.0.confidence: Input should be less than or equal to 1",
    ),
    Hostile(
        "unknown detection field",
        _with_detections(b'[{"class": "a", "confidence": 1, "bbox": [0,0,1,1], "x": 1}]'),
        422,
        "detections.0.x",
    ),
]


@pytest.mark.parametrize("case", HOSTILE_POSTS, ids=[c.name for c in HOSTILE_POSTS])
async def test_a_hostile_post_is_refused_and_stores_nothing(worker: Worker, case: Hostile) -> None:
    await worker.post(good_form("before", "k"))  # something there, which must stay as it is
    before = await worker.stored()
    status, body = await worker.post(case.body, case.content_type)
    assert (status, body["status"]) == (case.status, "error"), body
    assert case.problem in body["message"], body["message"]
    assert await worker.stored() == before


# --------------------------------------------------------------------------- bodies over the limit


async def raw_post(
    worker: Worker,
    head: dict[str, str],
    chunks: Sequence[bytes],
    *,
    chunked: bool,
    content_type: str | None = MULTIPART,
) -> tuple[int, dict[str, Any]]:
    """POST /frames over a plain socket: headers as given (a lying Content-Length, chunked
    bodies), the body written while the answer is read."""
    assert worker.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.server.port)
    lines = ["POST /frames HTTP/1.1", "Host: 127.0.0.1"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines += [f"Authorization: Bearer {TOKEN}"]
    lines += [f"{name}: {value}" for name, value in head.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    async def send() -> None:
        try:
            for chunk in chunks:
                writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk)
                await writer.drain()
            if chunked:
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except ConnectionError:
            pass  # the server stopped listening: that is the point

    sender = asyncio.get_running_loop().create_task(send())
    try:
        async with asyncio.timeout(30):
            status = int((await reader.readline()).split()[1])
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers["content-length"]))
    finally:
        sender.cancel()
        writer.close()
    return status, json.loads(body)


async def test_a_post_without_content_type_or_compressed_is_refused(worker: Worker) -> None:
    status, body = await raw_post(
        worker, {"Content-Length": "5"}, [b"hello"], chunked=False, content_type=None
    )
    assert status == 415 and "the request has no Content-Type" in body["message"], body
    squeezed = gzip.compress(good_form())
    status, body = await raw_post(
        worker,
        {"Content-Length": str(len(squeezed)), "Content-Encoding": "gzip"},
        [squeezed],
        chunked=False,
    )
    assert status == 415 and "compressed request bodies are not accepted" in body["message"]
    assert await worker.stored() == {}


async def test_a_huge_declared_length_is_refused_before_reading(worker: Worker) -> None:
    status, body = await raw_post(
        worker, {"Content-Length": str(10**12)}, [good_form()[:100]], chunked=False
    )
    assert status == 413 and str(MAX_BYTES) in body["message"], body
    assert await worker.stored() == {}


async def test_a_chunked_body_over_the_limit_is_cut_off(worker: Worker) -> None:
    start = Part("label", b"lobby").encode() + Part("key", b"k").encode()
    start += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"\r\n\r\n'.encode()
    filler = [b"\xff" * 65536] * (MAX_BYTES // 65536 + 8)
    status, body = await raw_post(
        worker, {"Transfer-Encoding": "chunked"}, [start, JPEG, *filler], chunked=True
    )
    assert status == 413, body
    assert body["message"] == f"request body is over the limit of {MAX_BYTES} bytes"
    assert await worker.stored() == {}


async def test_a_body_just_under_the_limit_is_read(worker: Worker) -> None:
    padding = text("detections", b" " * (MAX_BYTES - len(good_form()) - 300) + b"[]")
    status, body = await worker.post(good_form("lobby", "cam-1", padding))
    assert status == 200, body


# --------------------------------------------------------------------------- hostile messages


@dataclass(frozen=True)
class HostileMessage:
    name: str
    data: bytes | str
    problem: str


def _message(header: object, picture: bytes = JPEG) -> bytes:
    return json.dumps(header).encode() + FRAME_DELIMITER + picture


_HEADER = {"label": "dock", "key": "a"}
HOSTILE_MESSAGES = [
    HostileMessage("text message", '{"label": "a"}', "text messages are not uploads"),
    HostileMessage("no delimiter", json.dumps(_HEADER).encode() + JPEG, "no '--IMG--' delimiter"),
    HostileMessage("empty message", b"", "no '--IMG--' delimiter"),
    HostileMessage("empty header", FRAME_DELIMITER + JPEG, "header is empty"),
    HostileMessage(
        "header not JSON", b"{label: a}" + FRAME_DELIMITER + JPEG, "header is not valid JSON"
    ),
    HostileMessage(
        "header not UTF-8", b"\xff\xfe" + FRAME_DELIMITER + JPEG, "header is not valid JSON"
    ),
    HostileMessage("header an array", _message([1, 2]), "header: Input should be an object"),
    HostileMessage("header a string", _message("dock/a"), "header: Input should be an object"),
    HostileMessage("header without key", _message({"label": "a"}), "header.key: Field required"),
    HostileMessage(
        "label a number",
        _message({"label": 1, "key": "a"}),
        "header.label: Input should be a valid string",
    ),
    HostileMessage("unknown header field", _message({**_HEADER, "x": 1}), "header.x"),
    HostileMessage(
        "label with /", _message({"label": "a/b", "key": "a"}), "header.label: must not contain '/'"
    ),
    HostileMessage(
        "key of 129", _message({"label": "a", "key": "k" * 129}), "header.key: is longer than 128"
    ),
    HostileMessage(
        "key with a control",
        _message({"label": "a", "key": "\x1b[31m"}),
        "header.key: must be printable text (U+001B",
    ),
    HostileMessage("empty image", _message(_HEADER, b""), "image is empty"),
    HostileMessage("not an image", _message(_HEADER, b"%PDF-1.7\n"), "not a JPEG or PNG"),
    HostileMessage("truncated JPEG", _message(_HEADER, JPEG[:-400]), "JPEG is truncated"),
    HostileMessage(
        "image bomb", _message(_HEADER, handmade_png(70000, 70000)), "70000x70000 is too large"
    ),
    HostileMessage(
        "detection_items a string",
        _message({**_HEADER, "detection_items": "[]"}),
        "header.detection_items: Input should be a valid array",
    ),
    HostileMessage(
        "bbox outside",
        _message({**_HEADER, "detection_items": [item([-1, 0, 5, 5])]}),
        "header.detection_items.0.bbox [-1, 0, 5, 5] is outside the 320x240 image",
    ),
    HostileMessage(
        "1001 items",
        _message({**_HEADER, "detection_items": [item([0, 0, 1, 1])] * 1001}),
        "at most 1000 items",
    ),
    HostileMessage(
        "NaN confidence",
        json.dumps({**_HEADER, "detection_items": [item([0, 0, 1, 1], conf=float("nan"))]}).encode()
        + FRAME_DELIMITER
        + JPEG,
        "header.detection_items.0.confidence: Input should be a finite number",
    ),
]


async def test_hostile_messages_get_errors_on_a_socket_that_stays_open(worker: Worker) -> None:
    ws = await worker.uploader()
    before = await worker.send(ws, {"label": "before", "key": "k"})
    assert before["status"] == "ok"
    stored = await worker.stored()
    for case in HOSTILE_MESSAGES:
        if isinstance(case.data, str):
            await ws.send_str(case.data)
        else:
            await ws.send_bytes(case.data)
        answer = await reply(ws)
        assert answer["status"] == "error", (case.name, answer)
        assert case.problem in answer["message"], (case.name, answer["message"])
        assert await worker.stored() == stored, case.name
    # Still open and still working after all of that.
    after = await worker.send(ws, _HEADER)
    assert after["status"] == "ok" and after["message"] == "stored dock/a"


async def test_a_message_over_the_limit_closes_the_socket_with_1009(worker: Worker) -> None:
    ws = await worker.uploader()
    await ws.send_bytes(_message(_HEADER, JPEG + b"\x00" * MAX_BYTES))
    message = await ws.receive(timeout=15)
    assert message.type == WSMsgType.CLOSE, message
    assert ws.close_code == 1009
    assert await worker.stored() == {}


@contextlib.asynccontextmanager
async def worker_on_store(
    tmp_path: Path, redis_url: str, *, retry_interval_s: float
) -> AsyncIterator[tuple[web.Application, TestServer]]:
    """A worker whose live store is the Redis at ``redis_url``, served on a free port."""
    config = WorkerConfig(
        cache_dir=tmp_path / "cache",
        execution_provider="cpu",
        hw_decode="off",
        live_redis_url=redis_url,
        live_retry_interval_s=retry_interval_s,
    )
    app = create_app(config)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield app, server
    finally:
        await server.close()


async def test_a_store_outage_answers_503_and_uploads_resume(
    tmp_path: Path, private_redis: RedisProcess
) -> None:
    async with (
        worker_on_store(tmp_path, private_redis.url, retry_interval_s=0.2) as (app, server),
        ClientSession() as http,
    ):
        url = str(server.make_url("/frames"))

        async def upload() -> tuple[int, dict[str, Any]]:
            headers = {"Content-Type": MULTIPART}
            async with http.post(url, data=good_form(), headers=headers) as response:
                return response.status, await response.json()

        assert (await upload())[0] == 200
        private_redis.stop()
        status, body = await upload()
        assert status == 503 and body["message"].startswith("live store unavailable"), body
        # Not the store's address or Redis's error text: they name the deployment's insides.
        assert "redis://" not in body["message"] and str(private_redis.port) not in body["message"]
        private_redis.start()  # answers PING when it returns
        # Uploads are refused without a try until the retry interval (0.2 s) is over;
        # the first one after it probes the store and is stored.
        deadline = asyncio.get_running_loop().time() + 10
        while (result := await upload())[0] == 503:
            assert asyncio.get_running_loop().time() < deadline, result
            await asyncio.sleep(0.05)
        assert result[0] == 200, result
        assert await app[LIVE_KEY].store.entries("lobby", "cam-1") != []
        ws = await http.ws_connect(str(server.make_url("/ws/frames")))
        await ws.send_bytes(_message(_HEADER))
        assert (await reply(ws))["status"] == "ok"
        await ws.close()


async def test_uploads_do_not_each_wait_out_a_hanging_store(tmp_path: Path) -> None:
    """A Redis that accepts connections and never answers (a partition, a stuck server):
    the first upload waits for the store's timeout and gets 503; the next ones, within the
    retry interval, get 503 without the store being tried (nothing more reaches it)."""
    received = bytearray()

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            received.extend(chunk)
        writer.close()

    black_hole = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = black_hole.sockets[0].getsockname()[1]
    try:
        async with (
            worker_on_store(tmp_path, f"redis://127.0.0.1:{port}/0", retry_interval_s=300) as (
                app,
                server,
            ),
            ClientSession() as http,
        ):
            url = str(server.make_url("/frames"))
            headers = {"Content-Type": MULTIPART}
            async with http.post(url, data=good_form(), headers=headers) as response:
                assert response.status == 503, await response.text()
            assert received  # that upload reached the store and timed out
            tried = len(received)
            for _ in range(5):
                async with http.post(url, data=good_form(), headers=headers) as response:
                    body = await response.json()
                    assert response.status == 503, body
                    assert body["message"].startswith("live store unavailable"), body
            await asyncio.sleep(0.2)
            assert len(received) == tried  # none of them was sent to the store
            assert app[LIVE_KEY].writer.dropped["store_unavailable"] == 6
    finally:
        black_hole.close()
        await black_hole.wait_closed()


# --------------------------------------------------------------------------- access control


async def test_uploads_need_the_token(worker: Worker) -> None:
    url = worker.url("/frames")
    async with worker.http.post(url, data=good_form(), headers={"Content-Type": MULTIPART}) as r:
        assert r.status == 401 and (await r.json())["message"] == "unauthorized"
    wrong = {"Content-Type": MULTIPART, "Authorization": "Bearer nope"}
    async with worker.http.post(url, data=good_form(), headers=wrong) as r:
        assert r.status == 401
    with pytest.raises(WSServerHandshakeError) as refused:
        await worker.http.ws_connect(worker.url("/ws/frames"))
    assert refused.value.status == 401
    assert await worker.stored() == {}


# --------------------------------------------------------------------------- the image probe


def test_the_probe_reads_the_declared_size_without_decoding() -> None:
    assert probe_image(JPEG).format == "jpeg" and (
        probe_image(JPEG).width,
        probe_image(JPEG).height,
    ) == (320, 240)
    assert probe_image(PNG).format == "png" and probe_image(PNG).pixels == 64 * 48
    assert probe_image(handmade_png(2**31 - 1, 7)).width == 2**31 - 1
    with pytest.raises(UnsupportedImageError):
        probe_image(b"BM" + b"\x00" * 60)
    with pytest.raises(ImageError, match="IHDR"):
        probe_image(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IDAT", b""))
    with pytest.raises(ImageError, match="no frame header"):
        probe_image(b"\xff\xd8\xff\xd9")


def many_scans(jpeg: bytes, scans: int) -> bytes:
    """``jpeg`` with its scan (SOS header and entropy-coded data) repeated ``scans`` times."""
    start, end = jpeg.index(b"\xff\xda"), jpeg.rindex(b"\xff\xd9")
    return jpeg[:start] + jpeg[start:end] * scans + jpeg[end:]


def test_the_probe_bounds_the_work_a_small_file_can_ask_for() -> None:
    # Scans: FFmpeg decodes each one whole, so a few kB of scans is minutes of CPU.
    assert probe_image(many_scans(JPEG, MAX_JPEG_SCANS)).width == 320
    with pytest.raises(ImageError, match=f"JPEG has {MAX_JPEG_SCANS + 1} scans"):
        probe_image(many_scans(JPEG, MAX_JPEG_SCANS + 1))
    # Segments and chunks: walking them is a Python loop each.
    comments = b"\xff\xfe\x00\x02" * 600
    with pytest.raises(ImageError, match="more than 512 segments before its frame header"):
        probe_image(JPEG[:2] + comments + JPEG[2:])
    empty_chunks = png_chunk(b"tEXt", b"") * 70_000
    bloated = PNG[:33] + empty_chunks + PNG[33:]  # after the 8-byte signature and IHDR
    with pytest.raises(ImageError, match="PNG has more than 65536 chunks"):
        probe_image(bloated)


# --------------------------------------------------------------------------- fuzzing


def _valid_header() -> st.SearchStrategy[bytes]:
    return st.fixed_dictionaries(
        {"label": st.sampled_from(["fz", "a/b", ""]), "key": st.sampled_from(["k", "k2"])},
        optional={"detection_items": st.lists(st.builds(item, st.just([0, 0, 1, 1])), max_size=2)},
    ).map(lambda h: json.dumps(h).encode())


def _mutated(data: bytes) -> st.SearchStrategy[bytes]:
    return st.tuples(st.integers(0, len(data) - 1), st.binary(min_size=1, max_size=8)).map(
        lambda cut: data[: cut[0]] + cut[1] + data[cut[0] + len(cut[1]) :]
    )


MESSAGES = st.one_of(
    st.binary(max_size=512),
    st.tuples(st.binary(max_size=64), st.binary(max_size=256)).map(
        lambda hi: hi[0] + FRAME_DELIMITER + hi[1]
    ),
    st.tuples(
        _valid_header(), st.sampled_from([JPEG, PNG, b""]) | _mutated(JPEG) | _mutated(PNG)
    ).map(lambda hi: hi[0] + FRAME_DELIMITER + hi[1]),
)


@pytest.fixture
async def fuzz_socket(worker: Worker) -> tuple[Worker, ClientWebSocketResponse]:
    return worker, await worker.uploader()


@pytest.mark.parametrize("worker", ["memory"], indirect=True)
@given(data=MESSAGES)
async def test_any_bytes_never_break_the_socket_or_store_unless_valid(
    fuzz_socket: tuple[Worker, ClientWebSocketResponse], data: bytes
) -> None:
    worker, ws = fuzz_socket
    before = await worker.stored()
    await ws.send_bytes(data)
    answer = await reply(ws)
    after = await worker.stored()
    if answer["status"] == "ok":
        label, _, key = answer["message"].removeprefix("stored ").partition("/")
        assert after[(label, key)][-1] == answer["id"]
        assert answer["id"] not in before.get((label, key), [])
        assert {k: v for k, v in after.items() if k != (label, key)} == {
            k: v for k, v in before.items() if k != (label, key)
        }
    else:
        assert answer["status"] == "error" and answer["message"]
        assert after == before
    assert not ws.closed


# --------------------------------------------------------------------------- the pull socket


async def test_the_pull_socket_answers_hostile_json_and_stays_open(worker: Worker) -> None:
    """JSON the decoder refuses beyond its syntax (an integer of more digits than Python
    converts, nesting deeper than its recursion limit) is an error reply like any other."""
    status, _ = await worker.post(good_form("lobby", "cam-1"))
    assert status == 200
    hostile = [
        ('{"action": "pull", "n": ' + "7" * 5000 + "}", "message is not valid JSON"),
        ("[" * 30000, "message is not valid JSON"),
        ('{"action": ' + "1" * 5000 + "}", "message is not valid JSON"),
    ]
    async with worker.http.ws_connect(worker.url("/ws/stream/lobby/cam-1"), headers=BEARER) as ws:
        for text, problem in hostile:
            await ws.send_str(text)
            answer = await reply(ws)
            assert answer["status"] == "error" and problem in answer["message"], answer
        await ws.send_json({"action": "pull"})
        pulled = await ws.receive(timeout=10)
        assert pulled.type == WSMsgType.BINARY, pulled.data
        assert json.loads(split_frame_message(pulled.data)[0])["key"] == "cam-1"


async def test_a_label_containing_the_delimiter_round_trips(worker: Worker) -> None:
    """Uploaded with the delimiter escaped in the header (docs/LIVE.md, "Framing"), read back
    over pull whose header ends at the first delimiter, as a client splitting once expects."""
    ws = await worker.uploader()
    escaped = b'{"label": "\\u002d-IMG--cam", "key": "k\\u002d-IMG--"}'
    answer = await worker.send(ws, escaped)
    assert answer["status"] == "ok", answer
    assert answer["message"] == "stored --IMG--cam/k--IMG--"
    header, jpeg = await worker.pull("--IMG--cam", "k--IMG--")
    assert (header["label"], header["key"]) == ("--IMG--cam", "k--IMG--")
    assert decode_jpeg(jpeg).shape[:2] == (header["height"], header["width"])
