"""What to open (``SourceConfig``) and the key that lets subscribers share one reader."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import av
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from pytrickle_worker.sources.config import RtspTransport

__all__ = [
    "SourceConfig",
    "SourceKind",
    "is_local_path",
    "is_trickle_url",
    "local_path",
    "normalise_source_url",
    "trickle_channel_url",
]

SourceKind = Literal["stream", "snapshot", "trickle"]

_DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443, "rtmp": 1935}

#: Schemes that name a trickle channel (MPEG-TS segments) instead of a URL FFmpeg opens:
#: ``trickle://host:port/channel`` is plain HTTP, ``trickle+https://`` is HTTPS.
TRICKLE_SCHEMES = {"trickle": "http", "trickle+http": "http", "trickle+https": "https"}


def _scheme(url: str) -> str:
    head, sep, _ = url.partition("://")
    return head.lower() if sep else ""


def is_trickle_url(url: str) -> bool:
    return _scheme(url.strip()) in TRICKLE_SCHEMES


def trickle_channel_url(url: str) -> str:
    """The HTTP(S) URL of the trickle channel a ``trickle://`` source names."""
    text = url.strip()
    scheme, _, rest = text.partition("://")
    return f"{TRICKLE_SCHEMES[scheme.lower()]}://{rest}"


def is_local_path(url: str) -> bool:
    """``file://…``, or an absolute or relative path (no ``scheme://``)."""
    return _scheme(url) in ("", "file")


def local_path(url: str) -> Path:
    """The file a local source names (``file://`` stripped)."""
    target = url.strip()
    if target.lower().startswith("file://"):
        target = target[len("file://") :]
    return Path(target).expanduser()


def normalise_source_url(url: str) -> str:
    """A canonical spelling of ``url``, so that equivalent spellings share one reader.

    Network URLs get a lower-case scheme and host, lose a default port, an empty path becomes
    ``/`` and the fragment goes; credentials, path case and the query are kept (they select
    what the camera serves). Local files become absolute paths.
    """
    text = url.strip()
    if is_local_path(text):
        return os.path.abspath(local_path(text))
    if is_trickle_url(text):
        text = trickle_channel_url(text)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    userinfo, at, hostport = parts.netloc.rpartition("@")
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
        host = hostport.lower()
    netloc = host
    if port is not None and _DEFAULT_PORTS.get(scheme) != port:
        netloc = f"{host}:{port}"
    if at:
        netloc = f"{userinfo}@{netloc}"
    path = parts.path or "/"
    return urlunsplit((scheme, netloc, path, parts.query, ""))


class SourceConfig(BaseModel):
    """One camera or file. CMS spellings (``rtspUrl``, ``snapshotUrl``, ``snapshotInterval``)
    are accepted as input aliases.

    The original detector worker's rule decides the kind: ``snapshot_url`` with
    ``snapshot_interval_ms`` wins over
    ``url``; otherwise ``url`` is streamed: ``trickle://host:port/channel`` (or
    ``trickle+https://``) subscribes to a trickle channel of MPEG-TS segments, anything else
    (``rtsp://``, ``http(s)://`` MPEG-TS/MJPEG/HLS, a local file) is opened by FFmpeg.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = Field(
        default=None, min_length=1, validation_alias=AliasChoices("url", "rtspUrl")
    )
    snapshot_url: str | None = Field(
        default=None, min_length=1, validation_alias=AliasChoices("snapshot_url", "snapshotUrl")
    )
    snapshot_interval_ms: int | None = Field(
        default=None,
        gt=0,
        validation_alias=AliasChoices("snapshot_interval_ms", "snapshotInterval"),
    )
    format: str | None = Field(
        default=None,
        description="FFmpeg demuxer to force (e.g. 'mpjpeg', 'mpegts', 'hls'); None = probe",
    )
    loop: bool = Field(default=False, description="Local files: start again at the end")
    realtime: bool = Field(
        default=True, description="Local files: pace frames at their native rate, like a camera"
    )
    rtsp_transport: RtspTransport | None = Field(
        default=None, description="Overrides IngestConfig.rtsp_transport for this source"
    )

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str | None) -> str | None:
        if value is not None and value not in av.formats_available:
            raise ValueError(f"FFmpeg has no demuxer named {value!r}")
        return value

    @model_validator(mode="after")
    def _check(self) -> SourceConfig:
        if not self.url and not self.snapshot_url:
            raise ValueError("a source needs url (rtspUrl) or snapshot_url (snapshotUrl)")
        if self.snapshot_url and not self.url and self.snapshot_interval_ms is None:
            raise ValueError("snapshot_url needs snapshot_interval_ms (snapshotInterval)")
        return self

    @property
    def kind(self) -> SourceKind:
        if self.snapshot_url and self.snapshot_interval_ms:
            return "snapshot"
        return "trickle" if self.url and is_trickle_url(self.url) else "stream"

    @property
    def target_url(self) -> str:
        """The URL (or path) the reader opens."""
        target = self.snapshot_url if self.kind == "snapshot" else self.url
        assert target is not None  # guaranteed by _check
        return target

    @property
    def key(self) -> str:
        """The hub's sharing key: kind and normalised URL."""
        return f"{self.kind}:{normalise_source_url(self.target_url)}"

    @property
    def reader_settings(self) -> tuple[object, ...]:
        """What, beside the URL, shapes the reader; subscribers that share one should agree.
        Not the snapshot interval: each subscriber's own counts (the reader fetches at the
        shortest)."""
        return (self.format, self.loop, self.realtime, self.rtsp_transport)

    @property
    def snapshot_interval_s(self) -> float:
        return (self.snapshot_interval_ms or 1000) / 1000.0

    @property
    def is_file(self) -> bool:
        return self.kind == "stream" and is_local_path(self.target_url)
