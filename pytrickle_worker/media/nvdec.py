"""NVDEC decoding through PyAV (cuvid decoders or FFmpeg's NVDEC hwaccel), with automatic
fallback to software.

``auto`` uses NVDEC only when NVML reports a GPU *and* PyAV's FFmpeg can reach it (the
codec's cuvid decoder, or the CUDA hardware device for the hwaccel), so a CPU host never
tries it (and never logs about it). ``nvdec`` always tries; if the hardware decoder cannot
be opened or fails to decode, :class:`VideoDecoder` switches to the software decoder and
reports it once through ``on_fallback``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final, Literal

import av
from av.codec.hwaccel import HWAccel, hwdevices_available
from av.error import FFmpegError, InvalidDataError
from av.packet import Packet
from av.video.codeccontext import VideoCodecContext
from av.video.stream import VideoStream

from pytrickle_worker.core.hardware import count_gpus

__all__ = [
    "MAX_VIDEO_PIXELS",
    "NVDEC_DECODERS",
    "HwDecode",
    "NvdecApi",
    "VideoDecoder",
    "VideoTooLargeError",
    "check_video_size",
    "nvdec_decoder_name",
    "nvdec_in_ffmpeg",
    "pixel_limit_options",
    "resolve_nvdec",
]

logger = logging.getLogger(__name__)

#: The hardware-decode setting: ``auto`` (NVDEC when a GPU and a cuvid decoder are there),
#: ``nvdec`` (always try it) or ``off``.
HwDecode = Literal["auto", "nvdec", "off"]

#: How NVDEC is reached (``PTW_NVDEC_API``). ``cuvid``: FFmpeg's ``h264_cuvid``/``hevc_cuvid``
#: decoders, each creating a CUDA context of its own. ``hwaccel``: the stream's own decoder
#: with FFmpeg's NVDEC hwaccel on the device's primary CUDA context, the one onnxruntime's
#: CUDA provider uses, so decoders and inference share one context instead of the GPU
#: time-slicing between one per camera (bench/RESULTS.md, "GPU": runs 10x slower than bare
#: with 32 cuvid cameras). ``cuvid`` stays the default until ``hwaccel`` is measured on a GPU.
NvdecApi = Literal["cuvid", "hwaccel"]

#: The largest picture a camera or stream may send (DCI 8K): FFmpeg's own ceiling is ~268 M
#: pixels, a 768 MB RGB frame, which a hostile peer can ask for with a few kB of skipped
#: macroblocks. Checked on the stream's header, and FFmpeg's ``max_pixels`` refuses a larger
#: frame mid-stream before allocating it.
MAX_VIDEO_PIXELS: Final = 8192 * 4320


class VideoTooLargeError(ValueError):
    """The video's pictures are larger than :data:`MAX_VIDEO_PIXELS`."""


def check_video_size(
    width: int, height: int, limit: int = MAX_VIDEO_PIXELS, what: str = "video"
) -> None:
    """:class:`VideoTooLargeError` naming ``what`` and its size when it is over ``limit``
    pixels."""
    if width * height > limit:
        raise VideoTooLargeError(
            f"the {what} is {width}x{height} ({width * height} pixels), over the limit of "
            f"{limit} pixels (PTW_MAX_VIDEO_PIXELS)"
        )


#: Software codec name -> PyAV/FFmpeg NVDEC (cuvid) decoder.
NVDEC_DECODERS: dict[str, str] = {"h264": "h264_cuvid", "hevc": "hevc_cuvid"}


def nvdec_decoder_name(codec: str) -> str | None:
    """The cuvid decoder for ``codec`` when PyAV's FFmpeg has one, else None."""
    name = NVDEC_DECODERS.get(codec)
    return name if name is not None and name in av.codecs_available else None


def nvdec_in_ffmpeg(api: NvdecApi) -> bool:
    """Whether PyAV's FFmpeg can reach NVDEC through ``api``: a cuvid decoder, or the CUDA
    hardware device the hwaccel needs."""
    if api == "hwaccel":
        return "cuda" in hwdevices_available()
    return any(name in av.codecs_available for name in NVDEC_DECODERS.values())


def resolve_nvdec(
    mode: HwDecode, gpu_count: Callable[[], int] = count_gpus, api: NvdecApi = "cuvid"
) -> bool:
    """Whether readers should try NVDEC. Blocking (NVML): call it once, off the event loop."""
    if mode == "off":
        return False
    if mode == "nvdec":
        return True
    if not nvdec_in_ffmpeg(api):
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
        api: NvdecApi = "cuvid",
        max_pixels: int = MAX_VIDEO_PIXELS,
    ) -> None:
        """:class:`VideoTooLargeError` when the stream's header declares pictures of more
        than ``max_pixels``, and from :meth:`decode` for a larger picture later in the
        stream (FFmpeg refuses one well over it before allocating it)."""
        self._stream = stream
        self._software: VideoCodecContext = stream.codec_context
        self._max_pixels = max_pixels
        check_video_size(self._software.width, self._software.height, max_pixels)
        _limit_pixels(self._software, max_pixels)
        self._software.thread_type = "AUTO"
        if threads > 0:
            self._software.thread_count = threads
        self._on_fallback = on_fallback
        self._hardware: VideoCodecContext | None = None
        self._hw_frames = 0
        self._await_keyframe = False
        self.codec = self._software.name
        self._api: NvdecApi = api
        if try_nvdec and self.codec in NVDEC_DECODERS:
            self._hardware = self._create_nvdec() if api == "cuvid" else self._create_hwaccel()

    def _create_hwaccel(self) -> VideoCodecContext | None:
        """The stream's codec with FFmpeg's NVDEC hwaccel on the primary CUDA context;
        frames come back in host memory (NV12), as from a cuvid decoder."""
        accel = HWAccel("cuda", allow_software_fallback=False, options={"primary_ctx": "1"})
        try:
            context = av.CodecContext.create(self.codec, "r", hwaccel=accel)
        except (FFmpegError, ValueError, NotImplementedError) as exc:
            self._fall_back(f"NVDEC hwaccel for {self.codec} cannot be created: {exc}")
            return None
        # A property in PyAV 18, a method in its stubs and in earlier releases.
        flag: Any = getattr(context, "is_hwaccel", False)
        accelerated = bool(flag() if callable(flag) else flag)
        if not isinstance(context, VideoCodecContext) or not accelerated:
            self._fall_back(f"this FFmpeg has no CUDA hwaccel for {self.codec}")
            return None
        return self._with_extradata(context)

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
        return self._with_extradata(context)

    def _with_extradata(self, context: VideoCodecContext) -> VideoCodecContext:
        """``context`` given the stream's extradata (SPS/PPS, avcC/hvcC), if any, and the
        pixel limit."""
        extradata = self._software.extradata
        if extradata:
            context.extradata = extradata
        _limit_pixels(context, self._max_pixels)
        return context

    def _fall_back(self, reason: str) -> None:
        self._hardware = None
        if self._on_fallback is not None:
            self._on_fallback(reason)

    @property
    def name(self) -> str:
        """The decoder in use (``h264_cuvid``, ``h264/nvdec`` for the hwaccel, ``h264``, …)."""
        if self._hardware is None:
            return self._software.name
        return self._hardware.name if self._api == "cuvid" else f"{self.codec}/nvdec"

    @property
    def hardware(self) -> bool:
        return self._hardware is not None

    def decode(self, packet: Packet[VideoStream]) -> list[av.VideoFrame]:
        """Frames for ``packet``; raises :class:`av.error.InvalidDataError` for corrupt data
        and :class:`VideoTooLargeError` for a picture over the pixel limit."""
        frames = self._decode(packet)
        for frame in frames:
            check_video_size(frame.width, frame.height, self._max_pixels)
        return frames

    def _decode(self, packet: Packet[VideoStream]) -> list[av.VideoFrame]:
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


def pixel_limit_options(limit: int) -> dict[str, str]:
    """FFmpeg's option that refuses pictures over about ``limit`` pixels before allocating
    them: for a codec context, and for ``av.open``, whose stream probing decodes a few
    pictures before any check of ours can run. FFmpeg counts coded pixels, rounded up to
    whole macroblocks or coding units (160x120 is coded as 160x128), hence the slack; the
    exact limit is checked on the header and on each decoded picture (:func:`check_video_size`)."""
    return {"max_pixels": str(limit + limit // 4)}


def _limit_pixels(context: VideoCodecContext, limit: int) -> None:
    """``context`` refuses pictures over about ``limit`` pixels (set before it opens)."""
    context.options = {**context.options, **pixel_limit_options(limit)}
