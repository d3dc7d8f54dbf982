"""FFmpeg open options for camera URLs, demuxer hints and the MJPEG content-type sniff."""

from __future__ import annotations

import base64
import http.client
import logging
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from pytrickle_worker.core.logutil import mask_text, mask_url

__all__ = ["SniffResult", "format_hint", "needs_sniff", "open_options", "sniff_format"]

logger = logging.getLogger(__name__)

#: Path suffixes whose container FFmpeg recognises by itself; no content-type sniff for them.
_KNOWN_SUFFIXES = (
    ".ts",
    ".m2ts",
    ".mts",
    ".m3u8",
    ".mp4",
    ".m4v",
    ".mkv",
    ".mov",
    ".webm",
    ".flv",
    ".h264",
    ".264",
    ".h265",
    ".hevc",
    ".avi",
)
_MULTIPART = "multipart/x-mixed-replace"


def _micros(seconds: float) -> str:
    return str(max(1, int(seconds * 1_000_000)))


def open_options(
    source: str,
    timeout_s: float = 10.0,
    rtsp_transport: str = "tcp",
    analyze_duration_s: float | None = None,
) -> dict[str, str]:
    """FFmpeg demuxer/protocol options: RTSP transport and socket timeouts for network URLs.

    ``timeout_s`` bounds every socket read or write (RTSP ``timeout``, HTTP/HLS/RTMP
    ``rw_timeout``), so a dead peer never hangs a reader. ``analyze_duration_s`` shortens
    stream probing of live network sources (FFmpeg's default, 5 s of media, costs about 2 s
    of wall time on a 15 fps camera); None keeps FFmpeg's default. Local files get no options.
    """
    lowered = source.lower()
    options: dict[str, str]
    if lowered.startswith(("rtsp://", "rtsps://")):
        # Half: FFmpeg's RTSP demuxer waits out its socket timeout twice before it fails a
        # read (measured: a camera frozen mid-stream failed after 8 s with 4 s, after 4.2 s
        # with 2 s), so a silent camera is noticed within timeout_s, as other sources are.
        options = {"rtsp_transport": rtsp_transport, "timeout": _micros(timeout_s / 2)}
    elif lowered.startswith(("http://", "https://", "rtmp://", "rtmps://", "srt://", "tcp://")):
        options = {"rw_timeout": _micros(timeout_s)}
    else:
        return {}
    if analyze_duration_s is not None:
        options["analyzeduration"] = _micros(analyze_duration_s)
    return options


def format_hint(url: str) -> str | None:
    """The FFmpeg demuxer a URL names by convention: MJPEG-over-HTTP paths, HLS playlists."""
    lowered = url.lower()
    if not lowered.startswith(("http://", "https://")):
        return None
    parts = urlsplit(lowered)
    path = parts.path
    if path.endswith(".m3u8"):
        return "hls"
    if path.endswith((".mjpg", ".mjpeg", ".cgi")) and (
        "mjpg" in path or "mjpeg" in path or "mjpg" in parts.query or "mjpeg" in parts.query
    ):
        return "mpjpeg"
    if path.endswith((".mjpg", ".mjpeg")) or "/mjpeg" in path or "/mjpg" in path:
        return "mpjpeg"
    return None


def needs_sniff(url: str) -> bool:
    """True for an http(s) URL whose path gives no hint of its container."""
    lowered = url.lower()
    if not lowered.startswith(("http://", "https://")):
        return False
    return format_hint(url) is None and not urlsplit(lowered).path.endswith(_KNOWN_SUFFIXES)


class SniffResult(NamedTuple):
    answered: bool  # the server sent response headers
    format: str | None  # the demuxer its content type implies, if any


def sniff_format(url: str, timeout_s: float) -> SniffResult:
    """GET ``url``, read only the response headers, and map the content type to a demuxer.

    ``multipart/x-mixed-replace`` (MJPEG cameras) becomes ``mpjpeg``; for anything else, or a
    failure, the format is None and FFmpeg probes the stream itself. Blocking: reader threads
    only.
    """
    parts = urlsplit(url)
    host = parts.hostname
    if host is None:
        return SniffResult(answered=False, format=None)
    headers = {"Accept": "*/*", "User-Agent": "pytrickle-worker"}
    if parts.username is not None:
        token = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode("ascii")
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    connection: http.client.HTTPConnection
    if parts.scheme.lower() == "https":
        connection = http.client.HTTPSConnection(host, parts.port, timeout=timeout_s)
    else:
        connection = http.client.HTTPConnection(host, parts.port, timeout=timeout_s)
    try:
        connection.request("GET", target, headers=headers)
        response = connection.getresponse()
        content_type = (response.getheader("Content-Type") or "").lower()
        status = response.status
    except (OSError, http.client.HTTPException) as exc:
        logger.debug("content-type sniff of %s failed: %s", mask_url(url), mask_text(str(exc)))
        return SniffResult(answered=False, format=None)
    finally:
        connection.close()
    logger.debug("content-type sniff of %s: HTTP %d %r", mask_url(url), status, content_type)
    if status < 400 and content_type.startswith(_MULTIPART):
        return SniffResult(answered=True, format="mpjpeg")
    return SniffResult(answered=True, format=None)
