"""Camera-ingest tunables (``IngestConfig``); the worker config embeds this model."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pytrickle_worker.media.nvdec import MAX_VIDEO_PIXELS, HwDecode, NvdecApi

__all__ = ["HwDecode", "IngestConfig", "RtspTransport"]

RtspTransport = Literal["tcp", "udp"]


class IngestConfig(BaseModel):
    """How the camera hub opens, reads, watches and reconnects its sources."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    rtsp_transport: RtspTransport = Field(
        default="tcp", description="RTSP lower transport; TCP survives NAT and packet loss"
    )
    analyze_duration_s: float = Field(
        default=1.0,
        gt=0,
        description="Media probed at open on network sources (FFmpeg analyzeduration)",
    )
    open_timeout_s: float = Field(
        default=10.0, gt=0, description="Connect, handshake and stream probing"
    )
    read_timeout_s: float = Field(
        default=10.0, gt=0, description="Longest wait for one packet (socket and interrupt)"
    )
    stall_timeout_s: float = Field(
        default=10.0, gt=0, description="No decoded frame for this long: close and reconnect"
    )
    reconnect_interval_sec: float = Field(
        default=10.0, gt=0, description="Upper bound of the reconnect backoff (seconds)"
    )
    backoff_initial_s: float = Field(
        default=0.5, gt=0, description="First reconnect backoff; doubles per failure"
    )
    max_retries: int = Field(
        default=-1, ge=-1, description="Consecutive failed reconnects before giving up; -1 = never"
    )
    hw_decode: HwDecode = Field(
        default="auto",
        description=(
            "auto: NVDEC for H.264/HEVC when NVML reports a GPU and PyAV's FFmpeg can reach "
            "it (the cuvid decoder, or the CUDA device for nvdec_api=hwaccel); nvdec: always "
            "try it (falls back to software); off: software only"
        ),
    )
    nvdec_api: NvdecApi = Field(
        default="cuvid",
        description=(
            "How NVDEC is reached: cuvid (FFmpeg's h264_cuvid/hevc_cuvid, a CUDA context per "
            "decoder) or hwaccel (FFmpeg's NVDEC hwaccel on the primary CUDA context, shared "
            "with inference); media/nvdec.py"
        ),
    )
    decoder_threads: int = Field(
        default=0,
        ge=0,
        description=(
            "Software decoder threads per camera; 0 = automatic: one once the hub runs as "
            "many cameras as the process has cores, FFmpeg's choice below that"
        ),
    )
    max_video_pixels: int = Field(
        default=MAX_VIDEO_PIXELS,
        ge=1,
        description="The largest picture a camera or stream may send (media/nvdec.py)",
    )
    snapshot_timeout_s: float = Field(default=10.0, gt=0, description="One snapshot HTTP GET")
    convert_threads: int = Field(
        default=0,
        ge=0,
        description=(
            "Worker threads for RGB conversion and image decoding; 0 = min(4, the cores "
            "this process may use: affinity and cgroup CPU quota)"
        ),
    )
