"""Fetching and caching of ``.mpta`` archives.

``ArchiveCache`` accepts ``http://``/``https://`` URLs, ``file://`` URLs and
plain local paths.

Layout of ``cache_dir``::

    blobs/<sha256>.mpta          downloaded archives, content-addressed
    blobs/.download-*.part       downloads in progress (removed on failure)
    urls/<sha256 of url>.json    per-URL metadata: sha256, size, ETag, Last-Modified
    extracted/<sha256>/          extracted archives (see ``archive.extract_archive``)

Caching rules for http(s) URLs:

* When the server sent an ``ETag`` and/or ``Last-Modified`` header, every fetch
  (also in a later process, the metadata is on disk) sends ``If-None-Match`` /
  ``If-Modified-Since``; a ``304 Not Modified`` reuses the blob without
  transferring the body (``from_cache=True``).
* When the server sent neither, there is no cheap way to revalidate: a repeat
  fetch of the same URL *within this process* reuses the blob without any
  request (``from_cache=True``); a new process downloads it again.
* ``fetch(url, force=True)`` always downloads (no conditional headers).

Local files are not copied: they are hashed in place (the hash is remembered
per path, size, mtime and inode for the life of the cache object).

Concurrent ``fetch()`` calls for the same source share one in-flight task; all
awaiters get its result or the same error, and cancelling one awaiter does not
cancel the shared work.  Blocking work (file I/O, hashing, extraction, JSON)
runs in worker threads.  Credentials in URLs are masked in every log line and
error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import stat
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Protocol, Self, TypeVar, cast
from urllib.parse import urlsplit
from urllib.request import url2pathname

import aiohttp
from aiohttp import hdrs

from pytrickle_worker.core.errors import ArchiveError, ArchiveNotFoundError, FetchError
from pytrickle_worker.core.logutil import mask_text, mask_url
from pytrickle_worker.engine.mpta.archive import PIPELINE_JSON, ArchiveLimits, extract_archive
from pytrickle_worker.engine.mpta.spec import PipelineSpec, iter_nodes, parse_pipeline_json

__all__ = ["ArchiveCache", "ExtractedArchive", "FetchedArchive"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_K = TypeVar("_K")

_CHUNK = 1024 * 1024
_PROGRESS_INTERVAL_S = 5.0
_PROGRESS_MIN_BYTES = 4 * 1024 * 1024  # no 10 % progress lines for small downloads
_WINDOWS_DRIVE_RE = re.compile(r"^[A-Za-z]:[\\/]")


@dataclass(frozen=True)
class FetchedArchive:
    """A verified local copy of an archive."""

    source: str  # as given to fetch()
    path: Path  # the cached blob (http) or the local file itself (file:// / path)
    sha256: str
    size: int
    from_cache: bool  # True when no bytes were transferred / hashed for this call


@dataclass(frozen=True)
class ExtractedArchive:
    """An archive extracted to the cache with its validated ``pipeline.json``."""

    source: str
    sha256: str
    root: Path  # directory holding pipeline.json
    spec: PipelineSpec


@dataclass(frozen=True)
class _UrlMeta:
    sha256: str
    size: int
    etag: str | None
    last_modified: str | None


def _open_new(path: Path) -> BinaryIO:
    return path.open("xb")


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...


def _write_and_hash(fh: BinaryIO, hasher: _Hasher, data: bytes) -> None:
    hasher.update(data)
    fh.write(data)


def _hash_file(path: Path, limit: int, shown: str) -> tuple[str, int]:
    hasher = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise FetchError(f"archive {shown} is larger than the limit of {limit} bytes")
            hasher.update(chunk)
    return hasher.hexdigest(), size


def _scheme(source: str) -> str:
    if _WINDOWS_DRIVE_RE.match(source):
        return ""
    try:
        return urlsplit(source).scheme.lower()
    except ValueError as exc:
        raise FetchError(f"invalid archive source {mask_text(source)!r}: {exc}") from None


def _file_url_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise FetchError(
            f"file:// URL {mask_url(url)} names a remote host; only local files are supported"
        )
    return Path(url2pathname(parts.path))


def archive_stem(source: str) -> str | None:
    """The archive's own name without its extension, from its URL or path (``vehicle`` for
    ``https://host/m/vehicle.mpta?token=x``); None when it has none."""
    path = source
    if "://" in source and not _WINDOWS_DRIVE_RE.match(source):
        try:
            path = urlsplit(source).path
        except ValueError:
            return None
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return stem or None


class ArchiveCache:
    """Fetches archives into a content-addressed cache and extracts them (see module docs)."""

    def __init__(
        self,
        cache_dir: Path,
        limits: ArchiveLimits = ArchiveLimits(),  # noqa: B008 - frozen dataclass, immutable
        connect_timeout_s: float = 10,
        read_timeout_s: float = 60,
        total_timeout_s: float = 600,
    ) -> None:
        self.cache_dir = cache_dir
        self.limits = limits
        self._timeouts = (connect_timeout_s, read_timeout_s, total_timeout_s)
        self._client_timeout = aiohttp.ClientTimeout(
            total=total_timeout_s,
            connect=connect_timeout_s,
            sock_connect=connect_timeout_s,
            sock_read=read_timeout_s,
        )
        self._session: aiohttp.ClientSession | None = None
        self._downloads: dict[tuple[str, bool], asyncio.Task[FetchedArchive]] = {}
        self._extractions: dict[str, asyncio.Task[Path]] = {}
        self._fresh: dict[str, FetchedArchive] = {}  # http(s) URLs fetched by this object
        self._local_hashes: dict[tuple[str, int, int, int], str] = {}

    # ------------------------------------------------------------------ layout

    @property
    def blobs_dir(self) -> Path:
        return self.cache_dir / "blobs"

    @property
    def urls_dir(self) -> Path:
        return self.cache_dir / "urls"

    @property
    def extracted_dir(self) -> Path:
        return self.cache_dir / "extracted"

    def _blob_path(self, sha256: str) -> Path:
        return self.blobs_dir / f"{sha256}.mpta"

    def _meta_path(self, url: str) -> Path:
        return self.urls_dir / f"{hashlib.sha256(url.encode()).hexdigest()}.json"

    # --------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Cancel in-flight work and close the HTTP session."""
        tasks: list[asyncio.Task[Any]] = [*self._downloads.values(), *self._extractions.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._client_timeout)
        return self._session

    # ---------------------------------------------------------------- sharing

    @staticmethod
    def _share(
        registry: dict[_K, asyncio.Task[_T]],
        key: _K,
        make: Callable[[], Coroutine[Any, Any, _T]],
        name: str,
    ) -> asyncio.Task[_T]:
        """Return the in-flight task for ``key``, starting ``make()`` when there is none."""
        task = registry.get(key)
        if task is not None:
            return task
        task = asyncio.create_task(make(), name=name)
        registry[key] = task

        def _done(done: asyncio.Task[_T]) -> None:
            if registry.get(key) is done:
                del registry[key]
            if not done.cancelled():
                done.exception()  # mark retrieved: every awaiter may have been cancelled

        task.add_done_callback(_done)
        return task

    # ------------------------------------------------------------------ fetch

    async def fetch(self, source: str, *, force: bool = False) -> FetchedArchive:
        """Return a verified local copy of ``source`` (downloading it when needed).

        ``force=True`` bypasses the cache for http(s) URLs.  Raises ``FetchError``.
        """
        task = self._share(
            self._downloads,
            (source, force),
            lambda: self._fetch(source, force),
            f"mpta-fetch {mask_url(source)}",
        )
        return await asyncio.shield(task)

    async def _fetch(self, source: str, force: bool) -> FetchedArchive:
        if not source.strip():
            raise FetchError("empty archive source")
        scheme = _scheme(source)
        if scheme in ("http", "https"):
            return await self._fetch_http(source, force)
        if scheme == "file":
            return await self._fetch_local(source, _file_url_path(source))
        if scheme == "":
            return await self._fetch_local(source, Path(source))
        raise FetchError(
            f"unsupported scheme {scheme!r} in archive source {mask_url(source)} "
            "(supported: http://, https://, file:// and local paths)"
        )

    async def _fetch_local(self, source: str, path: Path) -> FetchedArchive:
        shown = mask_url(source)
        try:
            path = await asyncio.to_thread(lambda: path.expanduser().resolve())
            st = await asyncio.to_thread(path.stat)
        except FileNotFoundError:
            raise ArchiveNotFoundError(f"archive {shown} not found") from None
        except OSError as exc:
            raise FetchError(f"cannot read archive {shown}: {exc.strerror or exc}") from None
        if not stat.S_ISREG(st.st_mode):
            raise ArchiveNotFoundError(f"archive {shown} is not a regular file")
        limit = self.limits.max_archive_bytes
        if st.st_size > limit:
            raise FetchError(
                f"archive {shown} is {st.st_size} bytes, larger than the limit of {limit} bytes"
            )
        key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
        sha = self._local_hashes.get(key)
        if sha is not None:
            return FetchedArchive(source, path, sha, st.st_size, from_cache=True)
        try:
            sha, size = await asyncio.to_thread(_hash_file, path, limit, shown)
        except OSError as exc:
            raise FetchError(f"cannot read archive {shown}: {exc.strerror or exc}") from None
        self._local_hashes[key] = sha
        logger.info("using local archive %s (%d bytes, sha256 %s)", shown, size, sha[:12])
        return FetchedArchive(source, path, sha, size, from_cache=False)

    # ------------------------------------------------------------------- http

    def _read_meta(self, url: str) -> _UrlMeta | None:
        path = self._meta_path(url)
        try:
            raw: object = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable cache metadata %s: %s", path, exc)
            return None
        if not isinstance(raw, dict):
            return None
        data = cast("dict[str, object]", raw)
        sha, size = data.get("sha256"), data.get("size")
        etag, modified = data.get("etag"), data.get("last_modified")
        if not isinstance(sha, str) or not isinstance(size, int):
            return None
        blob = self._blob_path(sha)
        try:
            if blob.stat().st_size != size:
                return None
        except OSError:
            return None
        return _UrlMeta(
            sha,
            size,
            etag if isinstance(etag, str) else None,
            modified if isinstance(modified, str) else None,
        )

    def _write_meta(self, url: str, meta: _UrlMeta) -> None:
        path = self._meta_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "url": mask_url(url),  # for humans only; never store credentials
            "sha256": meta.sha256,
            "size": meta.size,
            "etag": meta.etag,
            "last_modified": meta.last_modified,
            "checked_at": time.time(),
        }
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        tmp.replace(path)

    async def _fetch_http(self, url: str, force: bool) -> FetchedArchive:
        shown = mask_url(url)
        meta = None if force else await asyncio.to_thread(self._read_meta, url)
        validators = meta is not None and (meta.etag is not None or meta.last_modified is not None)
        if not force and not validators:
            fresh = self._fresh.get(url)
            if fresh is not None and await asyncio.to_thread(fresh.path.is_file):
                logger.info(
                    "reusing %s fetched earlier by this process "
                    "(no ETag/Last-Modified to revalidate)",
                    shown,
                )
                return replace(fresh, from_cache=True)
        headers: dict[str, str] = {}
        if meta is not None:
            if meta.etag is not None:
                headers[hdrs.IF_NONE_MATCH] = meta.etag
            if meta.last_modified is not None:
                headers[hdrs.IF_MODIFIED_SINCE] = meta.last_modified
        connect_s, read_s, total_s = self._timeouts
        try:
            async with self._get_session().get(url, headers=headers) as resp:
                return await self._handle_response(url, resp, meta)
        except FetchError:
            raise
        except TimeoutError:
            raise FetchError(
                f"timed out fetching {shown} (timeouts: connect {connect_s:g}s, "
                f"read {read_s:g}s, total {total_s:g}s)"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or str(exc.os_error) or type(exc).__name__
            raise FetchError(f"cannot connect to {shown}: {mask_text(reason)}") from None
        except aiohttp.InvalidURL:
            raise FetchError(f"invalid URL {shown}") from None
        except aiohttp.ClientError as exc:
            detail = mask_text(str(exc)) or type(exc).__name__
            raise FetchError(f"error fetching {shown}: {detail}") from None
        except OSError as exc:
            raise FetchError(f"cannot store {shown} in the cache: {exc}") from None

    async def _handle_response(
        self, url: str, resp: aiohttp.ClientResponse, meta: _UrlMeta | None
    ) -> FetchedArchive:
        shown = mask_url(url)
        if resp.status == 304:
            if meta is None:
                raise FetchError(f"{shown} answered 304 Not Modified to an unconditional request")
            meta = _UrlMeta(
                meta.sha256,
                meta.size,
                resp.headers.get(hdrs.ETAG, meta.etag),
                resp.headers.get(hdrs.LAST_MODIFIED, meta.last_modified),
            )
            await asyncio.to_thread(self._write_meta, url, meta)
            logger.info("%s not modified; using cached sha256 %s", shown, meta.sha256[:12])
            result = FetchedArchive(url, self._blob_path(meta.sha256), meta.sha256, meta.size, True)
            self._fresh[url] = result
            return result
        if not 200 <= resp.status < 300:
            reason = f" {resp.reason}" if resp.reason else ""
            raise FetchError(f"HTTP {resp.status}{reason} fetching {shown}")
        limit = self.limits.max_archive_bytes
        length = resp.content_length
        if length is not None and length > limit:
            raise FetchError(
                f"archive at {shown} is {length} bytes (Content-Length), "
                f"larger than the limit of {limit} bytes"
            )
        await asyncio.to_thread(self.blobs_dir.mkdir, parents=True, exist_ok=True)
        tmp = self.blobs_dir / f".download-{uuid.uuid4().hex}.part"
        try:
            sha, size = await self._download_body(resp, tmp, shown, length)
            blob = self._blob_path(sha)
            await asyncio.to_thread(tmp.replace, blob)
        finally:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(tmp.unlink)
        meta = _UrlMeta(
            sha, size, resp.headers.get(hdrs.ETAG), resp.headers.get(hdrs.LAST_MODIFIED)
        )
        await asyncio.to_thread(self._write_meta, url, meta)
        result = FetchedArchive(url, blob, sha, size, from_cache=False)
        self._fresh[url] = result
        return result

    async def _download_body(
        self, resp: aiohttp.ClientResponse, tmp: Path, shown: str, length: int | None
    ) -> tuple[str, int]:
        limit = self.limits.max_archive_bytes
        hasher = hashlib.sha256()
        received = 0
        buffer = bytearray()
        started = last_log = time.monotonic()
        next_percent = 10
        fh = await asyncio.to_thread(_open_new, tmp)
        try:
            async for chunk in resp.content.iter_chunked(_CHUNK):
                received += len(chunk)
                if received > limit:
                    raise FetchError(
                        f"download of {shown} exceeds the limit of {limit} bytes "
                        f"(aborted after {received} bytes)"
                    )
                buffer += chunk
                if len(buffer) >= _CHUNK:
                    data = bytes(buffer)
                    buffer.clear()
                    await asyncio.to_thread(_write_and_hash, fh, hasher, data)
                now = time.monotonic()
                percent = received * 100 // length if length else None
                due_percent = (
                    percent is not None
                    and length is not None
                    and length >= _PROGRESS_MIN_BYTES
                    and percent >= next_percent
                    and received < length  # completion is logged below
                )
                if due_percent or now - last_log >= _PROGRESS_INTERVAL_S:
                    last_log = now
                    if percent is not None:
                        next_percent = (percent // 10 + 1) * 10
                        logger.info(
                            "downloading %s: %d/%d bytes (%d%%)", shown, received, length, percent
                        )
                    else:
                        logger.info("downloading %s: %d bytes so far", shown, received)
            if buffer:
                await asyncio.to_thread(_write_and_hash, fh, hasher, bytes(buffer))
        finally:
            await asyncio.to_thread(fh.close)
        sha = hasher.hexdigest()
        logger.info(
            "downloaded %s: %d bytes in %.1fs, sha256 %s",
            shown,
            received,
            time.monotonic() - started,
            sha[:12],
        )
        return sha, received

    # -------------------------------------------------------------------- open

    async def open(self, source: str, *, force: bool = False) -> ExtractedArchive:
        """Fetch, extract (once per sha256) and validate an archive.

        Raises ``FetchError``, ``ArchiveError`` or ``SpecError``.
        """
        fetched = await self.fetch(source, force=force)
        dest = self.extracted_dir / fetched.sha256
        task = self._share(
            self._extractions,
            fetched.sha256,
            lambda: asyncio.to_thread(
                extract_archive,
                fetched.path,
                dest,
                self.limits,
                display_name=mask_url(source),
                archive_stem=archive_stem(source),
            ),
            f"mpta-extract {fetched.sha256[:12]}",
        )
        root = await asyncio.shield(task)
        spec = await asyncio.to_thread(_load_spec, root, mask_url(source))
        return ExtractedArchive(source, fetched.sha256, root, spec)


def _load_spec(root: Path, shown: str) -> PipelineSpec:
    try:
        data = (root / PIPELINE_JSON).read_bytes()
    except OSError as exc:
        raise ArchiveError(f"{shown}: cannot read {PIPELINE_JSON}: {exc.strerror or exc}") from None
    spec = parse_pipeline_json(data, source=f"{PIPELINE_JSON} in {shown}")
    resolved_root = root.resolve()
    problems: list[str] = []
    for path, node in iter_nodes(spec.pipeline):
        candidate = (root / node.model_file).resolve()
        if not candidate.is_relative_to(resolved_root) or not candidate.is_file():
            problems.append(f"{path}.modelFile {node.model_file!r} not found in archive")
    if len(problems) == 1:
        raise ArchiveError(f"{shown}: {problems[0]}")
    if problems:
        raise ArchiveError(
            "\n  ".join([f"{shown}: {len(problems)} model files missing:", *problems])
        )
    return spec
