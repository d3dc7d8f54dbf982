"""NVDEC decoding through PyAV's cuvid decoders, with automatic fallback to software.

``auto`` uses NVDEC only when NVML reports a GPU *and* PyAV's FFmpeg has the codec's cuvid
decoder, so a CPU host never tries it (and never logs about it). ``nvdec`` always tries; if
the cuvid decoder cannot be opened or fails to decode, :class:`VideoDecoder` switches to the
software decoder and reports it once through ``on_fallback``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import av
from av.error import FFmpegError, InvalidDataError
from av.packet import Packet
from av.video.codeccontext import VideoCodecContext
from av.video.stream import VideoStream

from pytrickle_worker.core.hardware import count_gpus

__all__ = [
    "NVDEC_DECODERS",
    "HwDecode",
    "VideoDecoder",
    "nvdec_decoder_name",
    "resolve_nvdec",
]

logger = logging.getLogger(__name__)

#: The hardware-decode setting: ``auto`` (NVDEC when a GPU and a cuvid decoder are there),
#: ``nvdec`` (always try it) or ``off``.
HwDecode = Literal["auto", "nvdec", "off"]

#: Software codec name -> PyAV/FFmpeg NVDEC (cuvid) decoder.
NVDEC_DECODERS: dict[str, str] = {"h264": "h264_cuvid", "hevc": "hevc_cuvid"}


def nvdec_decoder_name(codec: str) -> str | None:
    """The cuvid decoder for ``codec`` when PyAV's FFmpeg has one, else None."""
    name = NVDEC_DECODERS.get(codec)
    return name if name is not None and name in av.codecs_available else None


def resolve_nvdec(mode: HwDecode, gpu_count: Callable[[], int] = count_gpus) -> bool:
    """Whether readers should try NVDEC. Blocking (NVML): call it once, off the event loop."""
    if mode == "off":
        return False
    if mode == "nvdec":
        return True
    if not any(name in av.codecs_available for name in NVDEC_DECODERS.values()):
        return False
    return gpu_count() > 0


class VideoDecoder:
    """Decodes the packets of one video stream: NVDEC when asked and possible, else software.

    The software decoder is the stream's own codec context with frame+slice threading
    (``thread_type = "AUTO"``). A cuvid decoder is a separate codec context fed the same
    packets, with the stream's extradata (SPS/PPS, avcC/hvcC). When it fails to open or to
    decode, ``on_fallback(reason)`` is called once and the software decoder takes over; after
    a mid-stream switch it waits for the next key frame.
    """

    def __init__(
        self,
        stream: VideoStream,
        *,
        try_nvdec: bool,
        threads: int = 0,
        on_fallback: Callable[[str], None] | None = None,
    ) -> None:
        self._stream = stream
        self._software: VideoCodecContext = stream.codec_context
        self._software.thread_type = "AUTO"
        if threads > 0:
            self._software.thread_count = threads
        self._on_fallback = on_fallback
        self._hardware: VideoCodecContext | None = None
        self._hw_frames = 0
        self._await_keyframe = False
        self.codec = self._software.name
        if try_nvdec and self.codec in NVDEC_DECODERS:
            self._hardware = self._create_nvdec()

    def _create_nvdec(self) -> VideoCodecContext | None:
        name = nvdec_decoder_name(self.codec)
        if name is None:
            self._fall_back(f"no NVDEC decoder for codec {self.codec!r} in this FFmpeg build")
            return None
        try:
            context = av.CodecContext.create(name, "r")
        except (FFmpegError, ValueError) as exc:
            self._fall_back(f"{name} cannot be created: {exc}")
            return None
        if not isinstance(context, VideoCodecContext):
            self._fall_back(f"{name} is not a video decoder")
            return None
        extradata = self._software.extradata
        if extradata:
            context.extradata = extradata
        return context

    def _fall_back(self, reason: str) -> None:
        self._hardware = None
        if self._on_fallback is not None:
            self._on_fallback(reason)

    @property
    def name(self) -> str:
        """The decoder in use (``h264_cuvid``, ``h264``, …)."""
        return self._hardware.name if self._hardware is not None else self._software.name

    @property
    def hardware(self) -> bool:
        return self._hardware is not None

    def decode(self, packet: Packet[VideoStream]) -> list[av.VideoFrame]:
        """Frames for ``packet``; raises :class:`av.error.InvalidDataError` for corrupt data."""
        hardware = self._hardware
        if hardware is not None:
            try:
                frames = hardware.decode(packet)
            except InvalidDataError:
                if self._hw_frames > 0:
                    raise  # a corrupt packet, not a broken decoder
                self._fall_back(f"{hardware.name} rejected the stream")
            except FFmpegError as exc:
                self._await_keyframe = self._hw_frames > 0
                self._fall_back(f"{hardware.name} failed: {exc}")
            else:
                self._hw_frames += len(frames)
                return frames
        if self._await_keyframe:
            if not packet.is_keyframe:
                return []
            self._await_keyframe = False
        return self._software.decode(packet)

    def flush(self) -> None:
        """Forget buffered state (after a seek, e.g. a looping file restarting)."""
        if self._hardware is not None:
            self._hardware.flush_buffers()
        else:
            self._software.flush_buffers()
