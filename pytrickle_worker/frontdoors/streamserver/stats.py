"""A stream session's counters, read by status, the heartbeat and /metrics."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from pytrickle_worker.core.latency import LatencySnapshot

__all__ = ["Dimensions", "StreamStats"]


@dataclass(frozen=True, slots=True)
class Dimensions:
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class StreamStats:
    """One snapshot of a trickle stream session; :meth:`to_dict` is the JSON that
    ``/stream/status`` (``session``) shows, keys in this order."""

    kind: Literal["trickle"]
    state: str
    error: str | None
    uptime_s: float
    input_fps: float
    processing_fps: float
    output_fps: float
    input_audio_fps: float
    output_audio_fps: float
    input_dimensions: Dimensions | None
    output_dimensions: Dimensions | None
    max_framerate: int | None
    frames_decoded: int
    #: NVDEC asked for (``PTW_HW_DECODE``), the decoder in use, and why NVDEC was given up.
    try_nvdec: bool
    video_decoder: str | None
    hw_decoder: bool
    nvdec_fallback: str | None
    frames_skipped_by_rate: int
    frames_dropped_before_processing: int
    decode_queue_depth: int
    encode_queue_depth: int
    segment_queue_depth: int
    frames_processed: int
    frames_dropped_by_processor: int
    processor_errors: int
    processing_ms_avg: float
    frames_dropped_before_encoding: int
    frames_encoded: int
    segments_in: int
    segments_in_broken: int
    segments_in_dropped: int
    segments_out: int
    segments_out_failed: int
    segments_out_dropped: int
    events_sent: int
    events_dropped: int
    data_records_sent: int
    data_records_dropped: int
    control_messages: int
    control_errors: int
    control_rejected: int
    input_stalled: bool
    input_stalls: int
    seconds_since_input: float | None
    #: Capture→result latency (decode to processor result) of the frames processed. The JSON
    #: shows its recent p50/p95 (``latency_ms_p50``, ``latency_ms_p95``, null before the
    #: first frame) and ``latency_count``; /metrics also reads its buckets.
    latency: LatencySnapshot

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (dimensions as ``{"width", "height"}``, ``latency`` as
        ``latency_ms_p50``, ``latency_ms_p95`` and ``latency_count``)."""
        out: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, LatencySnapshot):
                out[f"{item.name}_ms_p50"] = _ms(value.p50_s)
                out[f"{item.name}_ms_p95"] = _ms(value.p95_s)
                out[f"{item.name}_count"] = value.count
            elif isinstance(value, Dimensions):
                out[item.name] = dataclasses.asdict(value)
            else:
                out[item.name] = value
        return out

    def final_counts(self) -> dict[str, int]:
        """The frame and segment counts (``frames_*``, ``segments_*``), for the
        ``stream_stopped`` event."""
        return {
            key: value
            for key, value in self.to_dict().items()
            if key.startswith(("frames_", "segments_"))
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 3)
