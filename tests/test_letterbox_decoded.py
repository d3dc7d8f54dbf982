"""Letterboxing the decoder's frame in one swscale call (issue 13) against the RGB path.

The CMS door hands the detector the decoded (YUV) frame; the full-resolution RGB is made only
when a crop, a classifier or an action needs it. The geometry (and so the mapping of boxes
back to the frame) must be exactly the RGB path's, and the pixels within rounding of it.
"""

from __future__ import annotations

import io
from contextlib import AbstractContextManager, nullcontext
from fractions import Fraction
from typing import cast

import av
import numpy as np
import numpy.typing as npt
import pytest

from pytrickle_worker.core.frame import VideoFrame
from pytrickle_worker.devtools.models import build_colour_detector
from pytrickle_worker.devtools.synthetic import SceneObject, colour_for_confidence, render_scene
from pytrickle_worker.engine.inference.imageops import (
    PAD_VALUE,
    LetterboxBuffer,
    letterbox,
    letterbox_pixels,
)
from pytrickle_worker.engine.inference.model import OnnxModel
from pytrickle_worker.engine.inference.providers import select_providers
from pytrickle_worker.sources.frame import DecodedFrame

CAR = SceneObject("car", (180, 140, 420, 330), badge="yellow")
PERSON = SceneObject("person", (700, 90, 820, 500), colour=colour_for_confidence("person", 0.8))
TRUCK = SceneObject("truck", (880, 380, 1240, 660), badge="white")


def decode_scene(width: int, height: int, objects: list[SceneObject]) -> av.VideoFrame:
    """``objects`` rendered, encoded with H.264 (yuv420p, near lossless) and decoded again: a
    real decoder's frame, as a camera reader publishes it."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=5)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = {"preset": "ultrafast", "qp": "4"}
        frame = av.VideoFrame.from_ndarray(render_scene(width, height, objects), format="rgb24")
        frame.pts, frame.time_base = 0, Fraction(1, 5)
        out.mux(stream.encode(frame))
        out.mux(stream.encode())
    buffer.seek(0)
    with av.open(buffer, "r") as container:
        decoded = next(container.decode(video=0))
    assert decoded.format.name == "yuv420p"
    return decoded


def rgb_of(frame: av.VideoFrame) -> npt.NDArray[np.uint8]:
    return cast(npt.NDArray[np.uint8], frame.to_ndarray(format="rgb24"))


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> OnnxModel:
    path = build_colour_detector(tmp_path_factory.mktemp("models") / "detector.onnx", "v8")
    return OnnxModel(path, select_providers("cpu"))


@pytest.mark.parametrize(
    ("source", "size"),
    [
        ((1280, 720), (320, 320)),  # 4x down: the density benchmark's case
        ((1280, 720), (640, 640)),  # 2x down
        ((1920, 1080), (640, 640)),  # 3x: both sample the centre pixel
        ((640, 480), (640, 640)),  # no scaling on the long side
        ((320, 240), (640, 480)),  # up
        ((720, 1280), (320, 256)),  # portrait into a non-square input
    ],
)
def test_same_geometry_and_pixels_within_rounding(
    source: tuple[int, int], size: tuple[int, int]
) -> None:
    width, height = source
    decoded = decode_scene(width, height, [CAR, PERSON, TRUCK])
    rgb_input, rgb_info = letterbox(rgb_of(decoded), size)
    yuv_input, yuv_info = letterbox(decoded, size, LetterboxBuffer(size))
    assert yuv_info == rgb_info
    assert yuv_input.shape == rgb_input.shape == (1, 3, *size)
    top, left = yuv_info.pad_top, yuv_info.pad_left
    rows, cols = yuv_info.resized
    pad = np.ones(yuv_input.shape, bool)
    pad[:, :, top : top + rows, left : left + cols] = False
    assert np.all(yuv_input[pad] == np.float32(PAD_VALUE / 255))
    diff = np.abs(yuv_input - rgb_input) * 255
    # Chroma is scaled from its own (half) resolution rather than upsampled first: edges of
    # saturated colours differ by some levels, the image as a whole by about one.
    assert float(diff.mean()) < 3.0
    assert float(np.percentile(diff, 99)) < 40


def test_detections_match_the_rgb_path_on_a_real_frame(detector: OnnxModel) -> None:
    decoded = decode_scene(1280, 720, [CAR, PERSON, TRUCK])
    conversions: list[int] = []
    pixels = DecodedFrame(1, 0.0, None, decoded, lambda: conversions.append(1))
    from_yuv = detector.detect(pixels, conf_thres=0.5)
    assert pixels.rgb_ready is None and conversions == []  # no full-resolution RGB made
    from_rgb = detector.detect(rgb_of(decoded), conf_thres=0.5)
    assert len(from_yuv) == len(from_rgb) == 3
    order_yuv, order_rgb = np.argsort(from_yuv.class_ids), np.argsort(from_rgb.class_ids)
    assert np.array_equal(from_yuv.class_ids[order_yuv], from_rgb.class_ids[order_rgb])
    # Boxes in source pixels: the same mapping back, within the rounding of the inputs.
    assert np.allclose(from_yuv.boxes[order_yuv], from_rgb.boxes[order_rgb], atol=4.0)
    assert np.allclose(from_yuv.scores[order_yuv], from_rgb.scores[order_rgb], atol=0.02)
    expected = np.array([CAR.box, PERSON.box, TRUCK.box], np.float32)
    names = [detector.info.names[int(i)] for i in from_yuv.class_ids[order_yuv]]
    by_name = dict(zip(names, from_yuv.boxes[order_yuv], strict=True))
    found = np.array([by_name["car"], by_name["person"], by_name["truck"]])
    assert np.allclose(found, expected, atol=8.0)


def test_a_converted_frame_still_letterboxes_from_the_decoder_frame() -> None:
    decoded = decode_scene(640, 480, [CAR])
    pixels = DecodedFrame(1, 0.0, None, decoded)
    rgb = pixels.to_rgb()
    assert not rgb.flags.writeable and pixels.rgb_ready is rgb
    buffer = LetterboxBuffer((320, 320))
    tensor, info = letterbox_pixels(pixels, (320, 320), buffer)
    expected, expected_info = letterbox(decoded, (320, 320))
    assert info == expected_info and tensor is buffer.array
    assert np.array_equal(tensor, expected)


def test_video_frame_with_lazy_pixels() -> None:
    decoded = decode_scene(320, 240, [CAR])
    conversions: list[int] = []
    pixels = DecodedFrame(7, 12.5, 0.2, decoded, lambda: conversions.append(1))
    frame = VideoFrame(pixels, 3, Fraction(1, 5), capture_time=12.5, stream_id="cam")
    assert (frame.width, frame.height) == (320, 240) and frame.time_s == pytest.approx(0.6)
    assert conversions == []
    rgb = frame.rgb
    assert rgb.shape == (240, 320, 3) and rgb.dtype == np.uint8
    assert frame.rgb is rgb and conversions == [1]  # converted once, then cached
    copy = frame.with_rgb(rgb.copy())
    assert isinstance(copy.image, np.ndarray) and copy.stream_id == "cam"
    with pytest.raises(ValueError, match="H×W×3 uint8"):
        VideoFrame(np.zeros((4, 4), np.uint8), 0, Fraction(1, 5))


class RgbOnly:
    """A ``FramePixels`` that holds no decoder's frame (only its RGB)."""

    def __init__(self, rgb: npt.NDArray[np.uint8]) -> None:
        self.rgb = rgb
        self.width, self.height = int(rgb.shape[1]), int(rgb.shape[0])
        self.conversions = 0

    def to_rgb(self) -> npt.NDArray[np.uint8]:
        self.conversions += 1
        return self.rgb

    def decoded(self) -> AbstractContextManager[av.VideoFrame | None]:
        return nullcontext(None)


def test_letterbox_pixels_falls_back_to_rgb_without_a_decoder_frame(
    detector: OnnxModel,
) -> None:
    rgb = rgb_of(decode_scene(640, 480, [CAR]))
    pixels = RgbOnly(rgb)
    tensor, info = letterbox_pixels(pixels, (320, 320), LetterboxBuffer((320, 320)))
    expected, expected_info = letterbox(rgb, (320, 320))
    assert info == expected_info and np.array_equal(tensor, expected)
    assert pixels.conversions == 1
    dets = detector.detect(pixels, conf_thres=0.5)
    assert np.array_equal(dets.boxes, detector.detect(rgb, conf_thres=0.5).boxes)
