"""Worker configuration: defaults, an optional JSON file, then ``PTW_*`` environment overrides."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal, cast

import limits
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from redis.connection import parse_url as parse_redis_url  # pyright: ignore[reportUnknownVariableType] - redis-py leaves url and the result untyped

from pytrickle_worker.core.errors import WorkerError
from pytrickle_worker.core.validation import reject_control_characters
from pytrickle_worker.engine.mpta.policy import ModelUrlPolicy
from pytrickle_worker.media.nvdec import MAX_VIDEO_PIXELS
from pytrickle_worker.processing.sink import check_live_name
from pytrickle_worker.sources.config import IngestConfig, RtspTransport

ENV_PREFIX = "PTW_"
DEFAULT_CONFIG_FILE = "config.json"
#: Conventional unprefixed variables, read too; the ``PTW_`` form wins when both are set.
ENV_ALIASES: tuple[tuple[str, str], ...] = (
    ("log_level", "LOG_LEVEL"),
    ("log_format", "LOG_FORMAT"),
)
#: The fields of the live view's name templates, with sample values to check a template.
_CMS_TEMPLATE_FIELDS = {
    "display": "display-1",
    "camera": "camera-1",
    "subscription": "display-1;camera-1",
}
_STREAM_TEMPLATE_FIELDS = {"request_id": "request-1"}
_ORIGIN_RE = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s]+")
#: JWT algorithms verified with the HMAC secret (``jwt_secret``); all others need a public key.
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
#: Every algorithm a JWT may be signed with here; ``none`` is never one of them.
JWT_ALGORITHMS = HMAC_ALGORITHMS | frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    | {"ES256", "ES384", "ES512", "ES256K", "EdDSA"}
)
#: RFC 7518 section 3.2: an HMAC key at least as long as the hash output (HS256: 32 bytes).
JWT_SECRET_MIN_BYTES = 32
RATE_LIMIT_OFF = frozenset({"", "off"})
RateLimitGroup = Literal["labels", "uploads", "stream_start"]
RATE_LIMIT_GROUPS: tuple[RateLimitGroup, ...] = ("labels", "uploads", "stream_start")
RATE_LIMIT_STORAGE_SCHEMES = ("memory://", "redis://", "rediss://")

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "pytrickle-worker"


class WorkerConfig(BaseModel):
    """Every tunable of the worker. Each field can be set by ``PTW_<FIELD_NAME_UPPER>``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    host: str = "0.0.0.0"  # noqa: S104 - a worker pod must accept connections from the CMS
    port: int = Field(default=8000, ge=1, le=65535)
    shutdown_timeout_s: float = Field(
        default=20.0,
        gt=0,
        le=3600,
        description=(
            "SIGTERM drain deadline: stop streams, flush WebSocket messages and Redis "
            "actions, then exit 0 within this many seconds (keep it below Kubernetes' "
            "terminationGracePeriodSeconds)"
        ),
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Also LOG_LEVEL (PTW_LOG_LEVEL wins); case-insensitive"
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="text, or json: one JSON object per line; also LOG_FORMAT (PTW_ wins)",
    )

    cache_dir: Path = Field(default_factory=default_cache_dir)
    demo_dir: Path | None = Field(
        default=None, description="Where demo assets live; defaults to <cache_dir>/demo"
    )

    max_archive_bytes: int = Field(default=2 * 1024**3, gt=0)
    max_uncompressed_bytes: int = Field(default=4 * 1024**3, gt=0)
    max_archive_files: int = Field(default=2000, gt=0)
    download_connect_timeout_s: float = Field(default=10.0, gt=0)
    download_read_timeout_s: float = Field(default=60.0, gt=0)

    execution_provider: Literal["auto", "tensorrt", "cuda", "cpu"] = "auto"
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        description="onnxruntime threads per run; 0 = the thread budget's (inference/budget.py)",
    )
    inference_workers: int = Field(
        default=0,
        ge=0,
        description="inference runs at once; 0 = the thread budget's (inference/budget.py)",
    )
    max_batch: int = Field(
        default=0,
        ge=0,
        le=256,
        description=(
            "Most frames (of any streams, either door) one run of a model with a dynamic "
            "batch axis takes; 0 = the provider's default (engine/inference/batching.py)"
        ),
    )
    trt_fp16: bool = Field(
        default=True,
        description="TensorRT builds fp16 engines (detection accuracy holds; about 2x the speed)",
    )
    cudnn_conv_algo_search: Literal["heuristic", "exhaustive", "default"] = Field(
        default="heuristic",
        description=(
            "How the CUDA provider picks each convolution's cuDNN algorithm. exhaustive "
            "benchmarks them at every new input shape, which stalls the first run of each "
            "batch size the scheduler forms; heuristic asks cuDNN's heuristics"
        ),
    )
    io_binding: Literal["auto", "on", "off"] = Field(
        # Off until it measures faster: on an H200 host (bench/RESULTS.md, "GPU") plain
        # session.run gave 1.2-2.5x the images/s of the bound runs, before a redundant host
        # copy of the outputs was removed; the fixed path has not been measured on a GPU yet.
        default="off",
        description=(
            "Run models through ONNX Runtime IO binding with input/output buffers preallocated "
            "on the device per batch size; auto = on for CUDA/TensorRT"
        ),
    )
    batch_sizes: Literal["auto", "padded", "exact"] = Field(
        default="auto",
        description=(
            "The sizes a dynamic batch runs at. padded: the next of 1, 2, 4, 8, then every "
            "multiple of 8, up to max_batch, "
            "each warmed up when the model loads (a GPU's first run of a new shape stalls "
            "for 0.2-1 s); exact: the batch's own size; auto = padded where a model's session "
            "runs on a GPU, "
            "exact on the CPU (where padding rows cost their whole compute)"
        ),
    )
    batch_max_wait_ms: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description="How long a run may wait for a fuller batch; 0 = run as soon as a slot frees",
    )
    ort_allow_spinning: bool = Field(
        default=False,
        description=(
            "Let onnxruntime's intra-op threads busy-wait between runs. Off by default: on a "
            "shared multi-stream host the spinning steals the cores that decode and "
            "preprocessing need (measured: letterbox 6 ms with spinning vs 1.3 ms without)."
        ),
    )

    #: None: the model family's own default (:func:`default_nms_iou`: 0.45 for YOLOv5
    #: objectness heads, as yolov5's detect.py; 0.7 otherwise, as ultralytics).
    nms_iou: float | None = Field(default=None, gt=0, le=1)
    max_detections: int = Field(default=300, ge=1)
    tracker_low_conf: float = Field(
        default=0.1, ge=0, le=1, description="Detections above this feed the tracker"
    )

    # --- CMS protocol (the original detector worker's config.json keys) ----------------------
    target_fps: float = Field(
        default=10.0, gt=0, le=120, description="Analysis rate per subscription"
    )
    poll_interval_ms: int = Field(
        default=100, ge=0, description="Also caps the rate at 1000/poll_interval_ms"
    )
    max_streams: int = Field(default=16, ge=1, description="Most subscriptions at once")
    reconnect_interval_sec: float = Field(
        default=10.0, gt=0, description="Upper bound of the camera reconnect backoff"
    )
    max_retries: int = Field(
        default=-1,
        ge=-1,
        description="Consecutive failed camera reconnects before giving up; -1 = never",
    )
    heartbeat_interval_s: float = Field(default=2.0, gt=0, description="stateReport period")
    emission: Literal["changes", "every_frame"] = Field(
        default="changes",
        description="changes: send on a new track or a changed result; every_frame: as before",
    )
    disconnect_grace_s: float = Field(
        default=30.0, ge=0, description="Keep subscriptions this long after the last backend leaves"
    )
    ws_queue_size: int = Field(default=256, ge=1, description="Pending imageDetections per backend")
    ws_ping_interval_s: float = Field(default=10.0, gt=0, description="WebSocket ping period")
    max_message_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Largest inbound message"
    )
    cms_inbound_rate: float = Field(
        default=200.0,
        gt=0,
        description=(
            "Inbound messages a second one CMS connection may send on average (a message "
            "counts one, plus one per 16 KiB); past it and its burst the connection is closed "
            "(1008): parsing is the event loop's work, which every other camera shares"
        ),
    )
    cms_inbound_burst: float = Field(
        default=5000.0,
        gt=0,
        description="Messages one CMS connection may send at once (a backend subscribing "
        "every camera on connect)",
    )
    max_backends: int = Field(
        default=64,
        ge=1,
        description=(
            "CMS WebSocket connections at once; past it an upgrade gets 503 (each connection "
            "gets every detection and state report, so their number multiplies that work)"
        ),
    )
    model_url_hosts: list[str] | None = Field(
        default=None,
        description=(
            "When set, modelUrl may only name these hosts (SSRF guard); env: comma-separated"
        ),
    )
    allow_local_models: bool | None = Field(
        default=None,
        description=(
            "Whether callers (CMS modelUrl, stream model_url) may name file:// URLs and local "
            "paths; unset: allowed exactly when model_url_hosts is unset"
        ),
    )
    stall_timeout_s: float = Field(
        default=10.0, gt=0, description="No frame for this long: reconnect"
    )
    rtsp_transport: RtspTransport = Field(
        default="tcp",
        description="RTSP lower transport: tcp (survives NAT and loss) or udp (cameras "
        "without TCP interleaving)",
    )
    open_timeout_s: float = Field(
        default=10.0, gt=0, description="A camera's connect, handshake and stream probing"
    )
    read_timeout_s: float = Field(
        default=10.0, gt=0, description="Longest wait for one packet from a camera"
    )
    snapshot_timeout_s: float = Field(default=10.0, gt=0, description="One snapshot HTTP GET")
    hw_decode: Literal["auto", "nvdec", "off"] = "auto"
    nvdec_api: Literal["cuvid", "hwaccel"] = Field(
        default="cuvid",
        description=(
            "How NVDEC is reached: cuvid (a CUDA context per decoder) or hwaccel (the primary "
            "CUDA context, shared with inference; not yet measured on a GPU)"
        ),
    )
    decoder_threads: int = Field(
        default=0,
        ge=0,
        le=64,
        description=(
            "Software decoder threads per camera; 0 = automatic: one once the worker runs as "
            "many cameras as it has cores, FFmpeg's frame+slice threads below that"
        ),
    )
    max_video_pixels: int = Field(
        default=MAX_VIDEO_PIXELS,
        ge=1,
        description=(
            "The largest picture (width x height) a camera or input stream may send; a larger "
            "one is refused before it is decoded (default 8192x4320)"
        ),
    )
    stream_processor: str = Field(
        default="mpta",
        min_length=1,
        description=(
            "The processor the StreamServer door runs, by its registry name "
            "(pytrickle_worker/processing/registry.py): mpta, passthrough, brightness, or your own"
        ),
    )
    stream_input_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description=(
            "StreamServer stream: no input frame for this long after the start, or since the "
            "last frame, reports input_stalled (events channel, status, /health)"
        ),
    )

    redis_url: str | None = Field(
        default=None, description="Overrides the redis block of every pipeline.json when set"
    )
    action_buffer_size: int = Field(default=1000, ge=1)
    action_retry_interval_s: float = Field(default=1.0, gt=0)

    # --- live view (docs/LIVE.md) ------------------------------------------------------------
    worker_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description=(
            "This worker's name in the live view's entries (which worker serves a camera); "
            "unset: env POD_NAME, else the hostname"
        ),
    )
    live_redis_url: str | None = Field(
        default=None,
        description=(
            "Redis of the live view's frame store; unset: redis_url; neither: in memory "
            "(this process only)"
        ),
    )
    live_key_prefix: str = Field(
        default="stream_frame:",
        min_length=1,
        max_length=64,
        description="Prefix of the live view's Redis Stream names (two deployments, one Redis)",
    )
    live_maxlen: int = Field(
        default=10, ge=1, le=1000, description="Entries kept per (label, key) (exact trim)"
    )
    live_ttl_s: float = Field(
        default=30.0,
        gt=0,
        le=86400,
        description="A (label, key) nobody writes disappears after this many seconds",
    )
    live_enabled: bool = Field(
        default=True,
        description=(
            "Store the doors' analysed frames for the live view; off: no frame is scaled, "
            "drawn, encoded or stored (the live routes stay, empty unless a producer uploads)"
        ),
    )
    live_fps: float = Field(
        default=2.0, gt=0, le=30, description="Frames stored per second per (label, key)"
    )
    live_max_width: int = Field(
        default=960, ge=16, le=7680, description="Stored frames are scaled down to this width"
    )
    live_jpeg_quality: int = Field(default=80, ge=1, le=100, description="Stored JPEG quality")
    live_queue_size: int = Field(
        default=32, ge=1, le=4096, description="Frames waiting for the live writer (oldest dropped)"
    )
    live_render_niceness: int = Field(
        default=10,
        ge=0,
        le=19,
        description=(
            "Niceness added to the live view's render thread, so that where the cores are "
            "short its JPEGs give way to decoding and inference (0: same priority)"
        ),
    )
    live_retry_interval_s: float = Field(
        default=2.0,
        gt=0,
        le=300,
        description="While the live store is down, try one write per this many seconds",
    )
    live_max_viewers: int = Field(
        default=512,
        ge=1,
        le=100_000,
        description=(
            "Push and pull sockets open at once; more are refused with 503 (each holds a "
            "connection, a queue and, for push, a share of the store follower)"
        ),
    )
    live_max_viewers_per_client: int = Field(
        default=128,
        ge=0,
        le=100_000,
        description=(
            "Push and pull sockets one client address may hold (0: no limit of its own), so "
            "one client cannot take every place; behind a proxy set "
            "rate_limit_trusted_header, or every viewer is the proxy's address"
        ),
    )
    live_max_pulls_per_s: float = Field(
        default=20.0,
        gt=0,
        le=1000,
        description="Pulls one /ws/stream socket may ask per second; faster ones get an error",
    )
    live_push_queue_size: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="Frames waiting per push WebSocket (a slow viewer loses the oldest)",
    )
    live_cms_label_template: str = Field(
        default="{display}",
        description="Live label of a CMS subscription; fields {display}, {camera}, {subscription}",
    )
    live_cms_key_template: str = Field(
        default="{camera}",
        description="Live key of a CMS subscription; fields {display}, {camera}, {subscription}",
    )
    live_stream_label_template: str = Field(
        default="streams", description="Live label of a StreamServer stream; field {request_id}"
    )
    live_stream_key_template: str = Field(
        default="{request_id}",
        description="Live key of a StreamServer stream; field {request_id}",
    )
    live_upload_max_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        le=256 * 1024 * 1024,
        description=(
            "Largest upload (POST /frames body, WS /ws/frames message); reading stops past it"
        ),
    )
    live_upload_max_pixels: int = Field(
        default=4096 * 4096,
        ge=1,
        le=16384 * 16384,
        description="Largest uploaded image (width x height, from its header, before decoding)",
    )
    live_upload_concurrency: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Uploads decoded and encoded at the same time (the others wait)",
    )

    # --- access control and CORS (docs/SECURITY.md) ---------------------------------------
    access_token: SecretStr | None = Field(
        default=None,
        description="When set, required (Bearer) on the WebSocket and every route but probes",
    )
    access_token_file: Path | None = Field(
        default=None,
        description="Read the access token from this file at start (a mounted Secret)",
    )
    metrics_require_token: bool = Field(
        default=False, description="Also require the access token on /metrics"
    )
    cors_origins: list[str] = Field(
        default_factory=list[str],
        description="Origins allowed cross-origin (none: no CORS headers); env: JSON or a,b",
    )
    # JWT: an alternative to the static token; either is accepted (docs/SECURITY.md, "JWT").
    jwt_secret: SecretStr | None = Field(
        default=None,
        description=f"HMAC secret for HS256/384/512 JWTs (at least {JWT_SECRET_MIN_BYTES} bytes)",
    )
    jwt_secret_file: Path | None = Field(
        default=None, description="Read the JWT HMAC secret from this file at start"
    )
    jwt_public_key_file: Path | None = Field(
        default=None,
        description="PEM public key (or certificate), RSA/EC/Ed25519, verifying RS*/PS*/ES* JWTs",
    )
    jwt_jwks_file: Path | None = Field(
        default=None,
        description="JWKS document on disk; a JWT's kid picks the key",
    )
    jwt_algorithms: list[str] | None = Field(
        default=None,
        description=(
            "Accepted JWT algorithms (never none); unset: what the configured keys can verify. "
            "env: comma-separated"
        ),
    )
    jwt_audience: str | None = Field(
        default=None, description="When set, a JWT's aud must contain it"
    )
    jwt_issuer: str | None = Field(default=None, description="When set, a JWT's iss must equal it")
    jwt_leeway_s: float = Field(
        default=30.0, ge=0, le=3600, description="Clock skew allowed on exp, nbf and iat"
    )
    jwt_require_exp: bool = Field(default=True, description="Refuse JWTs without an exp claim")
    # Rate limits per client (docs/SECURITY.md, "Rate limits"): "N/second|minute|hour|day",
    # several joined by ';', or "" / "off".
    rate_limit_storage: str = Field(
        default="memory://",
        description=(
            "Where rate-limit counters live: memory:// (per process) or redis://host:port/db "
            "(shared by every pod; fails open while Redis is down)"
        ),
    )
    rate_limit_trusted_header: str | None = Field(
        default=None,
        description=(
            "Header the proxy in front sets to the client address (e.g. X-Forwarded-For; its "
            "right-most entry is used); unset: the TCP peer address"
        ),
    )
    rate_limit_labels: str = Field(
        default="60/minute", description="Per client on GET /labels and /labels/{label}/keys"
    )
    rate_limit_uploads: str = Field(
        default="600/minute", description="Per client on POST /frames and WS /ws/frames"
    )
    rate_limit_stream_start: str = Field(
        default="30/minute", description="Per client on /api/stream/start and /stream/start"
    )

    @field_validator("live_key_prefix", "worker_id")
    @classmethod
    def _no_control(cls, value: str | None) -> str | None:
        return reject_control_characters(value) if value is not None else None

    @field_validator(
        "live_cms_label_template",
        "live_cms_key_template",
        "live_stream_label_template",
        "live_stream_key_template",
    )
    @classmethod
    def _check_live_template(cls, value: str, info: ValidationInfo) -> str:
        name = info.field_name or ""
        fields = _CMS_TEMPLATE_FIELDS if name.startswith("live_cms") else _STREAM_TEMPLATE_FIELDS
        try:
            sample = value.format_map(fields)
        except (KeyError, ValueError, IndexError, AttributeError) as exc:
            known = ", ".join("{" + f + "}" for f in fields)
            raise ValueError(f"not a template of {known}: {exc!r}") from None
        check_live_name(sample, "the name it makes")
        return value

    def live_cms_names(self, subscription: str) -> tuple[str, str]:
        """The live view's (label, key) of a CMS ``subscriptionIdentifier`` (display;camera)."""
        display, sep, camera = subscription.partition(";")
        fields = {
            "display": display,
            "camera": camera if sep else subscription,
            "subscription": subscription,
        }
        return (
            self.live_cms_label_template.format_map(fields),
            self.live_cms_key_template.format_map(fields),
        )

    def live_stream_names(self, request_id: str) -> tuple[str, str]:
        """The live view's (label, key) of a StreamServer stream (its gateway request id)."""
        fields = {"request_id": request_id}
        return (
            self.live_stream_label_template.format_map(fields),
            self.live_stream_key_template.format_map(fields),
        )

    def resolved_worker_id(self) -> str:
        """``worker_id``, else env POD_NAME, else the hostname."""
        if self.worker_id:
            return self.worker_id
        pod = os.environ.get("POD_NAME", "").strip()
        return pod or socket.gethostname() or "worker"

    def resolved_live_redis_url(self) -> str | None:
        """The live store's Redis: ``live_redis_url``, else ``redis_url``; None: in memory."""
        return self.live_redis_url or self.redis_url

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _normalise_log_setting(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        value = value.strip()
        if info.field_name == "log_format":
            return value.lower()
        value = value.upper()
        return "WARNING" if value == "WARN" else value

    @field_validator("access_token", mode="before")
    @classmethod
    def _strip_token(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip()
            if not value:
                raise ValueError("must not be empty")
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"not a JSON list: {exc}") from None
            return text.split(",")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        origins: list[str] = []
        for entry in value:
            origin = entry.strip().rstrip("/").lower()
            if not origin:
                continue
            if not _ORIGIN_RE.fullmatch(origin):
                raise ValueError(f"{entry!r} is not an origin (scheme://host[:port])")
            origins.append(origin)
        return origins

    @field_validator("jwt_secret", mode="before")
    @classmethod
    def _check_jwt_secret(cls, value: object) -> object:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            value = value.strip()
            if len(value.encode("utf-8")) < JWT_SECRET_MIN_BYTES:
                raise ValueError(f"must be at least {JWT_SECRET_MIN_BYTES} bytes (RFC 7518 3.2)")
        return value

    @field_validator("jwt_algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value: object) -> object:
        if isinstance(value, str):
            return [a.strip() for a in value.split(",") if a.strip()]
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _check_algorithms(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("must name at least one algorithm (or be unset)")
        for name in value:
            if name.lower() == "none":
                raise ValueError("'none' (unsigned tokens) is never accepted")
            if name not in JWT_ALGORITHMS:
                raise ValueError(
                    f"unknown algorithm {name!r} (one of {', '.join(sorted(JWT_ALGORITHMS))})"
                )
        return sorted(set(value))

    @field_validator("jwt_audience", "jwt_issuer", "rate_limit_trusted_header", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip()
            return value or None
        return value

    @field_validator("redis_url", "live_redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        # At load, with the setting's name, rather than as a traceback from redis-py when the
        # store or the actions connect. redis-py's messages never repeat the URL (a password).
        if value is None:
            return None
        try:
            parse_redis_url(value)
        except ValueError as exc:
            raise ValueError(
                f"not a Redis URL ({exc}): use redis://[:password@]host:port/db "
                "(rediss:// for TLS, unix:///path/to/socket)"
            ) from None
        return value

    @field_validator("rate_limit_trusted_header")
    @classmethod
    def _check_header_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", value):
            raise ValueError(f"{value!r} is not an HTTP header name")
        return value

    @field_validator("rate_limit_labels", "rate_limit_uploads", "rate_limit_stream_start")
    @classmethod
    def _check_rate_limit(cls, value: str) -> str:
        value = value.strip()
        if value.lower() in RATE_LIMIT_OFF:
            return "off"
        try:
            items = limits.parse_many(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a rate limit: use N/second, N/minute, N/hour or N/day "
                "(several joined by ';'), or off"
            ) from None
        if any(item.amount < 1 for item in items):
            raise ValueError(f"{value!r}: a limit of 0 refuses everything; use off to disable")
        return value

    @field_validator("rate_limit_storage")
    @classmethod
    def _check_rate_limit_storage(cls, value: str) -> str:
        value = value.strip()
        if not value.startswith(RATE_LIMIT_STORAGE_SCHEMES):
            raise ValueError("use memory:// or redis://host:port/db (rediss:// for TLS)")
        return value

    @model_validator(mode="after")
    def _one_token_source(self) -> WorkerConfig:
        if self.access_token is not None and self.access_token_file is not None:
            raise ValueError("set access_token or access_token_file, not both")
        if self.jwt_secret is not None and self.jwt_secret_file is not None:
            raise ValueError("set jwt_secret or jwt_secret_file, not both")
        return self

    @property
    def jwt_configured(self) -> bool:
        return any(
            v is not None
            for v in (
                self.jwt_secret,
                self.jwt_secret_file,
                self.jwt_public_key_file,
                self.jwt_jwks_file,
            )
        )

    def resolved_jwt_secret(self) -> SecretStr | None:
        """The JWT HMAC secret: ``jwt_secret``, or the content of ``jwt_secret_file``
        (surrounding whitespace stripped), read now."""
        if self.jwt_secret_file is None:
            return self.jwt_secret
        try:
            text = self.jwt_secret_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise WorkerError(
                f"cannot read jwt_secret_file {self.jwt_secret_file}: {exc}"
            ) from None
        if len(text.encode("utf-8")) < JWT_SECRET_MIN_BYTES:
            raise WorkerError(
                f"jwt_secret_file {self.jwt_secret_file}: the secret must be at least "
                f"{JWT_SECRET_MIN_BYTES} bytes (RFC 7518 3.2)"
            )
        return SecretStr(text)

    def rate_limit(self, name: RateLimitGroup) -> str | None:
        """A rate-limit setting, None when it is off."""
        value = getattr(self, f"rate_limit_{name}")
        return None if value == "off" else cast(str, value)

    def resolved_access_token(self) -> SecretStr | None:
        """The access token: ``access_token``, or the content of ``access_token_file``
        (surrounding whitespace stripped), read now. None: access control is off."""
        if self.access_token_file is None:
            return self.access_token
        try:
            text = self.access_token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise WorkerError(
                f"cannot read access_token_file {self.access_token_file}: {exc}"
            ) from None
        if not text:
            raise WorkerError(f"access_token_file {self.access_token_file} is empty")
        return SecretStr(text)

    @field_validator("model_url_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [h.strip().lower() for h in value.split(",") if h.strip()]
        return value

    @property
    def analysis_fps(self) -> float:
        """target_fps, capped by poll_interval_ms (as the original detector worker did)."""
        if self.poll_interval_ms <= 0:
            return self.target_fps
        return min(self.target_fps, 1000.0 / self.poll_interval_ms)

    def model_url_policy(self, trusted: Iterable[str] = ()) -> ModelUrlPolicy:
        """The one rule both doors apply to a caller's model URL (docs/SECURITY.md);
        ``trusted``: the operator's own sources (the preloaded pipeline), always allowed."""
        return ModelUrlPolicy.create(self.model_url_hosts, self.allow_local_models, trusted)

    def ingest_config(self) -> IngestConfig:
        return IngestConfig(
            reconnect_interval_sec=self.reconnect_interval_sec,
            max_retries=self.max_retries,
            stall_timeout_s=self.stall_timeout_s,
            rtsp_transport=self.rtsp_transport,
            open_timeout_s=self.open_timeout_s,
            read_timeout_s=self.read_timeout_s,
            snapshot_timeout_s=self.snapshot_timeout_s,
            hw_decode=self.hw_decode,
            nvdec_api=self.nvdec_api,
            decoder_threads=self.decoder_threads,
            max_video_pixels=self.max_video_pixels,
        )

    @property
    def resolved_demo_dir(self) -> Path:
        return self.demo_dir if self.demo_dir is not None else self.cache_dir / "demo"

    @classmethod
    def load(
        cls, config_file: Path | None = None, environ: Mapping[str, str] | None = None
    ) -> WorkerConfig:
        """Build the config from an optional JSON file, then environment overrides.

        Without ``config_file``, ``./config.json`` is read when it exists, as the original
        detector worker did.
        """
        values: dict[str, object] = {}
        if config_file is None and Path(DEFAULT_CONFIG_FILE).is_file():
            config_file = Path(DEFAULT_CONFIG_FILE)
        if config_file is not None:
            try:
                loaded: object = json.loads(config_file.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise WorkerError(f"cannot read config file {config_file}: {exc}") from exc
            if not isinstance(loaded, dict):
                raise WorkerError(f"config file {config_file} must hold a JSON object")
            document = cast(dict[str, object], loaded)
            unknown = sorted(set(document) - set(cls.model_fields))
            if unknown:
                # The original detector worker's config.json may carry keys this worker does
                # not use: warn, don't fail.
                logger.warning("config file %s: ignoring unknown keys %s", config_file, unknown)
            values.update({k: v for k, v in document.items() if k in cls.model_fields})
        env = os.environ if environ is None else environ
        for name, alias in ENV_ALIASES:
            raw = env.get(alias)
            if raw is not None and raw != "":
                values[name] = raw
        for name in cls.model_fields:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None and raw != "":
                values[name] = raw
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise WorkerError(f"invalid configuration: {problems}") from exc
