"""Fetching, caching and opening archives (pytrickle_worker.engine.mpta.fetch).

Uses real aiohttp servers on 127.0.0.1 and real zip files.
"""

# Small blocking filesystem checks inside async tests are fine.
# ruff: noqa: ASYNC240

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import socket
import time
import zipfile
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from pytrickle_worker.core.errors import ArchiveError, FetchError, SpecError
from pytrickle_worker.engine.mpta.archive import ArchiveLimits
from pytrickle_worker.engine.mpta.fetch import (
    ArchiveCache,
    ExtractedArchive,
    FetchedArchive,
    archive_stem,
)


def _node(model_id: str, **extra: Any) -> dict[str, Any]:
    node: dict[str, Any] = {
        "modelId": model_id,
        "modelFile": f"{model_id}.onnx",
        "minConfidence": 0.5,
        "triggerClasses": ["car"],
    }
    node.update(extra)
    return node


PIPELINE: dict[str, Any] = {"pipeline": _node("root", branches=[_node("plate", crop=True)])}


def make_mpta(
    pipeline: dict[str, Any] | str = PIPELINE,
    models: tuple[str, ...] = ("root.onnx", "plate.onnx"),
    folder: str = "demo/",
    filler: int = 0,
) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        text = pipeline if isinstance(pipeline, str) else json.dumps(pipeline)
        zf.writestr(f"{folder}pipeline.json", text)
        for name in models:
            zf.writestr(f"{folder}{name}", b"onnx-" + name.encode())
        if filler:
            zf.writestr(f"{folder}filler.bin", os.urandom(filler))  # incompressible
    return buffer.getvalue()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Server:
    """A tiny archive server that counts requests and body transfers per path."""

    def __init__(self) -> None:
        self.payload = make_mpta(filler=300_000)
        self.etag = '"v1"'
        self.last_modified = "Wed, 21 Oct 2015 07:28:00 GMT"
        self.hits: Counter[str] = Counter()
        self.bodies: Counter[str] = Counter()
        self.release = asyncio.Event()
        self.slow_started = asyncio.Event()
        self.port = 0
        self.routes: dict[str, Handler] = {
            "/plain.mpta": self.plain,
            "/etag.mpta": self.with_etag,
            "/lastmod.mpta": self.with_last_modified,
            "/slow.mpta": self.slow,
            "/slow-404.mpta": self.slow_404,
            "/error.mpta": self.error,
            "/big-cl.mpta": self.plain,
            "/chunked.mpta": self.chunked,
            "/stall-body.mpta": self.stall_body,
            "/stall-headers.mpta": self.stall_headers,
        }

    def url(self, path: str, userinfo: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.port}{path}"

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] += 1
        handler = self.routes.get(request.path)
        if handler is None:
            raise web.HTTPNotFound()
        return await handler(request)

    def _body(self, request: web.Request, **headers: str) -> web.Response:
        self.bodies[request.path] += 1
        return web.Response(body=self.payload, headers=headers)

    async def plain(self, request: web.Request) -> web.StreamResponse:
        return self._body(request)

    async def with_etag(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("If-None-Match") == self.etag:
            return web.Response(status=304, headers={"ETag": self.etag})
        return self._body(request, ETag=self.etag)

    async def with_last_modified(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("If-Modified-Since") == self.last_modified:
            return web.Response(status=304)
        return self._body(request, **{"Last-Modified": self.last_modified})

    async def slow(self, request: web.Request) -> web.StreamResponse:
        self.bodies[request.path] += 1
        response = web.StreamResponse(headers={"Content-Length": str(len(self.payload))})
        await response.prepare(request)
        self.slow_started.set()
        step = len(self.payload) // 5 + 1
        for start in range(0, len(self.payload), step):
            await asyncio.sleep(0.05)
            await response.write(self.payload[start : start + step])
        await response.write_eof()
        return response

    async def slow_404(self, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.2)
        raise web.HTTPNotFound()

    async def error(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPInternalServerError()

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(self.payload), 4096):
            await response.write(self.payload[start : start + 4096])
        await response.write_eof()
        return response

    async def stall_body(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100000"})
        await response.prepare(request)
        await response.write(b"x" * 100)
        await asyncio.wait_for(self.release.wait(), 10)
        return response

    async def stall_headers(self, request: web.Request) -> web.StreamResponse:
        await asyncio.wait_for(self.release.wait(), 10)
        return web.Response(body=b"late")


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", srv.dispatch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    srv.port = runner.addresses[0][1]
    yield srv
    srv.release.set()
    await runner.cleanup()


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[ArchiveCache]:
    async with ArchiveCache(tmp_path / "cache") as archive_cache:
        yield archive_cache


def _leftovers(cache_dir: Path) -> list[str]:
    """Temporary files or directories anywhere in the cache."""
    return [
        str(path.relative_to(cache_dir))
        for path in cache_dir.rglob("*")
        if path.name.startswith(".") or path.suffix in (".part", ".tmp")
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------ http cache


async def test_http_download_then_etag_304(server: Server, cache: ArchiveCache) -> None:
    url = server.url("/etag.mpta")
    first = await cache.fetch(url)
    assert isinstance(first, FetchedArchive)
    assert first.source == url
    assert not first.from_cache
    assert first.sha256 == hashlib.sha256(server.payload).hexdigest()
    assert first.size == len(server.payload)
    assert first.path == cache.cache_dir / "blobs" / f"{first.sha256}.mpta"
    assert first.path.read_bytes() == server.payload

    second = await cache.fetch(url)
    assert second.from_cache
    assert (second.sha256, second.path) == (first.sha256, first.path)
    assert server.hits["/etag.mpta"] == 2  # revalidated ...
    assert server.bodies["/etag.mpta"] == 1  # ... without transferring the body
    assert _leftovers(cache.cache_dir) == []


async def test_etag_cache_survives_a_new_process(server: Server, tmp_path: Path) -> None:
    url = server.url("/etag.mpta")
    async with ArchiveCache(tmp_path / "cache") as first_cache:
        await first_cache.fetch(url)
    async with ArchiveCache(tmp_path / "cache") as second_cache:
        again = await second_cache.fetch(url)
    assert again.from_cache
    assert server.bodies["/etag.mpta"] == 1
    meta_files = list((tmp_path / "cache" / "urls").glob("*.json"))
    assert len(meta_files) == 1
    meta = json.loads(meta_files[0].read_text())
    assert meta["etag"] == '"v1"'
    assert meta["sha256"] == again.sha256


async def test_last_modified_304(server: Server, cache: ArchiveCache) -> None:
    url = server.url("/lastmod.mpta")
    await cache.fetch(url)
    again = await cache.fetch(url)
    assert again.from_cache
    assert (server.hits["/lastmod.mpta"], server.bodies["/lastmod.mpta"]) == (2, 1)


async def test_changed_etag_downloads_new_content(server: Server, cache: ArchiveCache) -> None:
    url = server.url("/etag.mpta")
    first = await cache.fetch(url)
    server.payload = make_mpta(folder="")
    server.etag = '"v2"'
    second = await cache.fetch(url)
    assert not second.from_cache
    assert second.sha256 != first.sha256
    assert second.sha256 == hashlib.sha256(server.payload).hexdigest()


async def test_no_validators_reused_within_process(server: Server, cache: ArchiveCache) -> None:
    url = server.url("/plain.mpta")
    first = await cache.fetch(url)
    second = await cache.fetch(url)
    assert second.from_cache
    assert second.sha256 == first.sha256
    assert server.hits["/plain.mpta"] == 1  # no request at all
    forced = await cache.fetch(url, force=True)
    assert not forced.from_cache
    assert server.hits["/plain.mpta"] == 2


async def test_force_ignores_etag(server: Server, cache: ArchiveCache) -> None:
    url = server.url("/etag.mpta")
    await cache.fetch(url)
    forced = await cache.fetch(url, force=True)
    assert not forced.from_cache
    assert server.bodies["/etag.mpta"] == 2


async def test_concurrent_fetches_share_one_download(server: Server, cache: ArchiveCache) -> None:
    url = server.url("/slow.mpta")
    results = await asyncio.gather(*(cache.fetch(url) for _ in range(8)))
    assert server.hits["/slow.mpta"] == 1
    assert len({result.sha256 for result in results}) == 1
    assert _leftovers(cache.cache_dir) == []


async def test_cancelled_awaiter_does_not_cancel_shared_download(
    server: Server, cache: ArchiveCache
) -> None:
    url = server.url("/slow.mpta")
    first = asyncio.create_task(cache.fetch(url))
    second = asyncio.create_task(cache.fetch(url))
    await asyncio.wait_for(server.slow_started.wait(), 5)
    first.cancel()
    result = await second
    with pytest.raises(asyncio.CancelledError):
        await first
    assert result.path.read_bytes() == server.payload
    assert server.hits["/slow.mpta"] == 1


async def test_concurrent_fetches_share_the_error(server: Server, cache: ArchiveCache) -> None:
    url = server.url("/slow-404.mpta")
    results = await asyncio.gather(*(cache.fetch(url) for _ in range(4)), return_exceptions=True)
    assert all(isinstance(result, FetchError) for result in results)
    assert all("404" in str(result) for result in results)
    assert server.hits["/slow-404.mpta"] == 1


# ------------------------------------------------------------------ http errors


@pytest.mark.parametrize(("path", "status"), [("/nothing-here.mpta", 404), ("/error.mpta", 500)])
async def test_http_status_errors(
    server: Server, cache: ArchiveCache, path: str, status: int
) -> None:
    url = server.url(path)
    with pytest.raises(FetchError, match=f"HTTP {status}") as info:
        await cache.fetch(url)
    assert url in str(info.value)


async def test_too_large_by_content_length(server: Server, tmp_path: Path) -> None:
    limits = ArchiveLimits(max_archive_bytes=100_000)
    async with ArchiveCache(tmp_path / "cache", limits) as small:
        with pytest.raises(
            FetchError, match=r"\(Content-Length\), larger than the limit of 100000"
        ):
            await small.fetch(server.url("/big-cl.mpta"))
        assert _leftovers(small.cache_dir) == []
        assert not list((small.cache_dir / "blobs").glob("*.mpta"))


async def test_too_large_streamed_body(server: Server, tmp_path: Path) -> None:
    limits = ArchiveLimits(max_archive_bytes=100_000)
    async with ArchiveCache(tmp_path / "cache", limits) as small:
        with pytest.raises(FetchError, match="exceeds the limit of 100000 bytes"):
            await small.fetch(server.url("/chunked.mpta"))
        assert _leftovers(small.cache_dir) == []
        assert not list((small.cache_dir / "blobs").glob("*.mpta"))


async def test_chunked_download_without_content_length(server: Server, cache: ArchiveCache) -> None:
    fetched = await cache.fetch(server.url("/chunked.mpta"))
    assert fetched.sha256 == hashlib.sha256(server.payload).hexdigest()


@pytest.mark.parametrize("path", ["/stall-body.mpta", "/stall-headers.mpta"])
async def test_read_timeout(server: Server, tmp_path: Path, path: str) -> None:
    async with ArchiveCache(tmp_path / "cache", read_timeout_s=0.3) as impatient:
        started = time.monotonic()
        with pytest.raises(FetchError, match="timed out fetching") as info:
            await impatient.fetch(server.url(path))
        assert time.monotonic() - started < 3
        assert server.url(path) in str(info.value)
        assert _leftovers(impatient.cache_dir) == []


async def test_unreachable_port(cache: ArchiveCache) -> None:
    url = f"http://127.0.0.1:{_free_port()}/x.mpta"
    with pytest.raises(FetchError, match="cannot connect to") as info:
        await cache.fetch(url)
    assert url in str(info.value)


async def test_credentials_masked_in_errors_and_logs(
    server: Server, cache: ArchiveCache, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    not_found = server.url("/nothing-here.mpta?token=tok3n", userinfo="user:secret@")
    with pytest.raises(FetchError) as info:
        await cache.fetch(not_found)
    message = str(info.value)
    assert "HTTP 404" in message
    assert "secret" not in message and "tok3n" not in message
    assert "user:***@" in message

    unreachable = f"http://user:secret@127.0.0.1:{_free_port()}/x.mpta"
    with pytest.raises(FetchError) as info:
        await cache.fetch(unreachable)
    assert "secret" not in str(info.value)
    assert info.value.__cause__ is None

    ok = await cache.fetch(server.url("/plain.mpta", userinfo="user:secret@"))
    assert not ok.from_cache
    assert "secret" not in caplog.text
    assert "user:***@" in caplog.text
    for meta in (cache.cache_dir / "urls").glob("*.json"):
        assert "secret" not in meta.read_text()


async def test_progress_and_completion_logged(
    server: Server, cache: ArchiveCache, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pytrickle_worker.engine.mpta.fetch")
    await cache.fetch(server.url("/plain.mpta"))
    assert any("downloaded" in record.getMessage() for record in caplog.records)


# ------------------------------------------------------------------ local files


async def test_local_path_and_file_url(tmp_path: Path, cache: ArchiveCache) -> None:
    data = make_mpta()
    archive = tmp_path / "local.mpta"
    archive.write_bytes(data)
    by_path = await cache.fetch(str(archive))
    assert by_path.path == archive.resolve()
    assert by_path.sha256 == hashlib.sha256(data).hexdigest()
    assert by_path.size == len(data)
    assert not by_path.from_cache
    by_url = await cache.fetch(archive.as_uri())
    assert by_url.sha256 == by_path.sha256
    assert by_url.from_cache  # same file, same size/mtime: the hash is remembered
    assert by_url.source == archive.as_uri()
    assert not (cache.cache_dir / "blobs").exists()  # no copy made


async def test_local_errors(tmp_path: Path) -> None:
    archive = tmp_path / "local.mpta"
    archive.write_bytes(make_mpta(filler=20_000))
    async with ArchiveCache(tmp_path / "cache", ArchiveLimits(max_archive_bytes=1000)) as small:
        with pytest.raises(FetchError, match="larger than the limit of 1000 bytes"):
            await small.fetch(str(archive))
        with pytest.raises(FetchError, match="not found"):
            await small.fetch(str(tmp_path / "missing.mpta"))
        with pytest.raises(FetchError, match="not a regular file"):
            await small.fetch(str(tmp_path))
        with pytest.raises(FetchError, match="remote host"):
            await small.fetch("file://fileserver/share/x.mpta")


@pytest.mark.parametrize("source", ["ftp://example.com/x.mpta", "s3://bucket/x.mpta"])
async def test_unknown_scheme(cache: ArchiveCache, source: str) -> None:
    scheme = source.split(":", 1)[0]
    with pytest.raises(FetchError, match=f"unsupported scheme '{scheme}'"):
        await cache.fetch(source)


@pytest.mark.parametrize(
    ("source", "match"), [("", "empty archive source"), ("http://[::1/x.mpta", "invalid")]
)
async def test_malformed_sources(cache: ArchiveCache, source: str, match: str) -> None:
    with pytest.raises(FetchError, match=match):
        await cache.fetch(source)


async def test_unknown_scheme_masks_credentials(cache: ArchiveCache) -> None:
    with pytest.raises(FetchError) as info:
        await cache.fetch("ftp://bob:hunter2@example.com/x.mpta")
    assert "hunter2" not in str(info.value)


# ------------------------------------------------------------------------ open


async def test_open_http_archive(server: Server, cache: ArchiveCache) -> None:
    url = server.url("/etag.mpta")
    opened = await cache.open(url)
    assert isinstance(opened, ExtractedArchive)
    assert opened.source == url
    assert opened.root == cache.cache_dir / "extracted" / opened.sha256 / "demo"
    assert (opened.root / "pipeline.json").is_file()
    assert opened.spec.pipeline.model_id == "root"
    assert opened.spec.pipeline.branches[0].model_id == "plate"

    marker = opened.root / "marker"
    marker.write_text("extracted once")
    again = await cache.open(url)
    assert again.root == opened.root
    assert marker.exists()  # not re-extracted
    assert _leftovers(cache.cache_dir) == []


async def test_concurrent_opens_extract_once(tmp_path: Path, cache: ArchiveCache) -> None:
    archive = tmp_path / "local.mpta"
    archive.write_bytes(make_mpta(filler=200_000))
    results = await asyncio.gather(*(cache.open(str(archive)) for _ in range(6)))
    assert len({result.root for result in results}) == 1
    assert [p.name for p in (cache.cache_dir / "extracted").iterdir()] == [results[0].sha256]


async def test_open_missing_model_file(tmp_path: Path, cache: ArchiveCache) -> None:
    archive = tmp_path / "broken.mpta"
    archive.write_bytes(make_mpta(models=("root.onnx",)))
    with pytest.raises(ArchiveError) as info:
        await cache.open(str(archive))
    assert "pipeline.branches[0].modelFile 'plate.onnx' not found in archive" in str(info.value)


async def test_the_folder_named_like_the_archive_wins_over_other_pipelines(
    tmp_path: Path, cache: ArchiveCache
) -> None:
    # The original looked for pipeline.json in the folder named after the archive first.
    def pipeline_of(root_id: str) -> str:
        other = json.loads(json.dumps(PIPELINE))
        other["pipeline"]["modelId"] = root_id
        return json.dumps(other)

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for folder in ("old", "vehicle"):
            zf.writestr(f"{folder}/pipeline.json", pipeline_of(f"{folder}-root"))
            for name in ("root.onnx", "plate.onnx"):
                zf.writestr(f"{folder}/{name}", b"onnx")
    named = tmp_path / "vehicle.mpta"
    named.write_bytes(buffer.getvalue())
    opened = await cache.open(str(named))
    assert opened.spec.pipeline.model_id == "vehicle-root"
    assert opened.root.name == "vehicle"
    assert (await cache.open(named.as_uri() + "?v=2")).spec.pipeline.model_id == "vehicle-root"
    # The same bytes under another name: no folder is named like it, so it is ambiguous.
    unnamed = tmp_path / "other.mpta"
    unnamed.write_bytes(buffer.getvalue())
    with pytest.raises(
        ArchiveError, match=r"exactly one top-level folder \(found: old/, vehicle/\)"
    ):
        await cache.open(str(unnamed))


def test_archive_stem_is_the_name_without_its_extension() -> None:
    assert archive_stem("https://h/m/vehicle.mpta?token=x#f") == "vehicle"
    assert archive_stem("file:///tmp/x/car.v2.mpta") == "car.v2"
    assert archive_stem("/srv/models/plates.mpta") == "plates"
    assert archive_stem("C:\\models\\w.mpta") == "w"
    assert archive_stem("http://h/") is None
    assert archive_stem("http://[::1") is None


async def test_open_invalid_spec(tmp_path: Path, cache: ArchiveCache) -> None:
    bad = json.loads(json.dumps(PIPELINE))
    bad["pipeline"]["branches"][0]["minConfidence"] = 2
    archive = tmp_path / "bad.mpta"
    archive.write_bytes(make_mpta(pipeline=bad))
    with pytest.raises(SpecError, match=r"pipeline\.branches\[0\]\.minConfidence"):
        await cache.open(str(archive))


async def test_open_corrupt_archive_leaves_no_leftovers(
    tmp_path: Path, cache: ArchiveCache
) -> None:
    archive = tmp_path / "corrupt.mpta"
    data = make_mpta(filler=50_000)
    archive.write_bytes(data[: len(data) - 200])
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ArchiveError, match="not a valid zip archive"):
        await cache.open(str(archive))
    extracted = cache.cache_dir / "extracted"
    assert not extracted.exists() or list(extracted.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before


async def test_open_unsafe_archive_over_http(server: Server, cache: ArchiveCache) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("pipeline.json", json.dumps(PIPELINE))
        zf.writestr("../../evil.onnx", b"pwned")
    server.payload = buffer.getvalue()
    url = server.url("/plain.mpta", userinfo="user:secret@")
    with pytest.raises(ArchiveError, match="zip-slip") as info:
        await cache.open(url)
    assert "user:***@" in str(info.value)
    assert "secret" not in str(info.value)
    extracted = cache.cache_dir / "extracted"
    assert not extracted.exists() or list(extracted.iterdir()) == []
    assert _leftovers(cache.cache_dir) == []
    assert not (cache.cache_dir.parent / "evil.onnx").exists()
