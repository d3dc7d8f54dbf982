"""The session counters' JSON (``/stream/status`` ``session``, ``stream_stopped`` counts):
its keys and their order are a wire contract."""

from __future__ import annotations

import dataclasses

from processors.passthrough import PassthroughProcessor
from pytrickle_worker.frontdoors.streamserver.schemas import StartRequest
from pytrickle_worker.frontdoors.streamserver.session import StreamSession
from pytrickle_worker.frontdoors.streamserver.stats import Dimensions

WIRE_KEYS = [
    "kind", "state", "error", "uptime_s", "input_fps", "processing_fps", "output_fps",
    "input_audio_fps", "output_audio_fps", "input_dimensions", "output_dimensions",
    "max_framerate", "frames_decoded", "try_nvdec", "video_decoder", "hw_decoder",
    "nvdec_fallback", "frames_skipped_by_rate",
    "frames_dropped_before_processing", "decode_queue_depth", "encode_queue_depth",
    "segment_queue_depth", "frames_processed", "frames_dropped_by_processor",
    "processor_errors", "processing_ms_avg", "frames_dropped_before_encoding",
    "frames_encoded", "segments_in", "segments_in_broken", "segments_in_dropped",
    "segments_out", "segments_out_failed", "segments_out_dropped", "events_sent",
    "events_dropped", "data_records_sent", "data_records_dropped", "control_messages",
    "control_errors", "control_rejected", "input_stalled", "input_stalls",
    "seconds_since_input", "latency_ms_p50", "latency_ms_p95", "latency_count",
]  # fmt: skip


def test_a_new_session_reports_every_wire_key_in_order() -> None:
    session = StreamSession(StartRequest(gateway_request_id="s1"), PassthroughProcessor())
    stats = session.stats().to_dict()
    assert list(stats) == WIRE_KEYS
    assert stats["kind"] == "trickle" and stats["state"] == "new"
    assert stats["input_dimensions"] is None and stats["seconds_since_input"] is None
    assert (stats["latency_ms_p50"], stats["latency_ms_p95"], stats["latency_count"]) == (
        None,
        None,
        0,
    )


def test_dimensions_and_final_counts_keep_their_json_shape() -> None:
    session = StreamSession(StartRequest(gateway_request_id="s1"), PassthroughProcessor())
    stats = dataclasses.replace(
        session.stats(), input_dimensions=Dimensions(1280, 720), frames_encoded=7
    )
    assert stats.to_dict()["input_dimensions"] == {"width": 1280, "height": 720}
    counts = stats.final_counts()
    assert list(counts) == [key for key in WIRE_KEYS if key.startswith(("frames_", "segments_"))]
    assert counts["frames_encoded"] == 7
