"""JPEG encoding with FFmpeg's mjpeg encoder (numpy + PyAV)."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt
import pytest

from pytrickle_worker.media.frames import resize_rgb, yuv420_planes
from pytrickle_worker.media.jpeg import (
    JpegEncoder,
    encode_jpeg,
    encode_jpeg_frame,
    jpeg_qscale,
    scale_for_jpeg,
)
from tests.test_inference_imageops import smooth_image


def decode_jpeg(data: bytes) -> npt.NDArray[np.uint8]:
    codec = av.CodecContext.create("mjpeg", "r")
    frames = codec.decode(av.Packet(data))
    return np.asarray(frames[0].to_ndarray(format="rgb24"), dtype=np.uint8)


@pytest.mark.parametrize(("height", "width"), [(360, 640), (361, 641), (1, 1), (7, 3)])
def test_encode_jpeg_decodes_to_the_same_size(height: int, width: int) -> None:
    frame = smooth_image(height, width)
    data = encode_jpeg(frame, 90)
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    decoded = decode_jpeg(data)
    assert decoded.shape == (height, width, 3)
    if height > 8:
        assert np.abs(decoded.astype(int) - frame.astype(int)).mean() < 8


def test_encode_jpeg_quality_tracks_size_and_error() -> None:
    frame = smooth_image(240, 320)
    sizes = [len(encode_jpeg(frame, q)) for q in (10, 50, 90, 100)]
    assert sizes == sorted(sizes)
    assert sizes[0] < sizes[-1] / 2
    errors = [
        np.abs(decode_jpeg(encode_jpeg(frame, q)).astype(int) - frame).mean() for q in (10, 90)
    ]
    assert errors[0] > errors[1]


def test_jpeg_qscale_mapping() -> None:
    assert jpeg_qscale(100) == 1
    assert jpeg_qscale(90) == 3
    assert jpeg_qscale(75) == 7
    assert jpeg_qscale(50) == 15
    assert jpeg_qscale(1) == 31
    values = [jpeg_qscale(q) for q in range(1, 101)]
    assert values == sorted(values, reverse=True)
    with pytest.raises(ValueError, match=r"1\.\.100"):
        jpeg_qscale(0)
    with pytest.raises(ValueError, match=r"1\.\.100"):
        encode_jpeg(np.zeros((8, 8, 3), np.uint8), 101)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ((1080, 1920), (540, 960)),
        ((720, 1280), (540, 960)),
        ((361, 641), (361, 641)),
        ((9, 7), (3, 2)),
    ],
)
def test_scale_for_jpeg_then_encode_gives_the_scaled_picture(
    source: tuple[int, int], target: tuple[int, int]
) -> None:
    frame = smooth_image(*source)
    yuv = scale_for_jpeg(frame, target[1], target[0])
    assert (yuv.format.name, yuv.height, yuv.width) == ("yuvj420p", *target)
    decoded = decode_jpeg(encode_jpeg_frame(yuv, 90))
    assert decoded.shape == (*target, 3)
    if target[0] > 8:
        # The one pass looks like scaling in RGB first, then converting and encoding.
        two_passes = decode_jpeg(encode_jpeg(resize_rgb(frame, target[1], target[0]), 90))
        assert np.abs(decoded.astype(int) - two_passes).mean() < 5


def test_scale_for_jpeg_same_size_is_what_encode_jpeg_encodes() -> None:
    frame = smooth_image(90, 160)
    assert encode_jpeg_frame(scale_for_jpeg(frame, 160, 90), 75) == encode_jpeg(frame, 75)


def test_encode_jpeg_frame_takes_only_the_jpeg_pixel_format() -> None:
    rgb = av.VideoFrame.from_ndarray(smooth_image(16, 16), format="rgb24")
    with pytest.raises(ValueError, match="expected a yuvj420p frame, got rgb24"):
        encode_jpeg_frame(rgb)
    with pytest.raises(ValueError, match=r"JPEG quality must be 1\.\.100"):
        encode_jpeg_frame(scale_for_jpeg(smooth_image(16, 16), 16, 16), 0)


@pytest.mark.parametrize(("height", "width"), [(540, 960), (9, 7), (1, 1)])
def test_yuv420_planes_are_writable_views_of_the_frame(height: int, width: int) -> None:
    frame = scale_for_jpeg(smooth_image(height, width), width, height)
    y, u, v = yuv420_planes(frame)
    chroma = ((height + 1) // 2, (width + 1) // 2)
    assert (y.shape, u.shape, v.shape) == ((height, width), chroma, chroma)
    y[:] = 200
    u[:] = 128
    v[:] = 128
    again = yuv420_planes(frame)
    assert (again[0] == 200).all() and (again[1] == 128).all() and (again[2] == 128).all()
    decoded = decode_jpeg(encode_jpeg_frame(frame, 95))
    assert np.abs(decoded.astype(int) - 200).max() <= 3  # a flat grey, as written


def test_yuv420_planes_rejects_other_formats() -> None:
    with pytest.raises(ValueError, match="expected a yuv420p or yuvj420p frame, got rgb24"):
        yuv420_planes(av.VideoFrame(8, 8, "rgb24"))


def test_a_kept_encoder_gives_the_bytes_of_a_fresh_one_and_follows_size_and_quality() -> None:
    """The live writer keeps one JpegEncoder: frame after frame its JPEGs are exactly what
    a freshly opened encoder makes; a new size or quality takes effect at once."""
    encoder = JpegEncoder()
    sizes = [(240, 320), (240, 320), (121, 163), (240, 320)]
    for index, (height, width) in enumerate(sizes):
        image = np.roll(smooth_image(height, width), index * 7, axis=1)  # a new picture
        frame = scale_for_jpeg(image, width, height)
        # As a decoder's frame carries them (a 90 kHz clock): the kept encoder must not
        # rescale them onto one another.
        frame.pts, frame.time_base = 3000 * index, Fraction(1, 90_000)
        quality = 90 if index < 3 else 40
        fresh = encode_jpeg_frame(scale_for_jpeg(image, width, height), quality)
        kept = encoder.encode(frame, quality)
        assert kept == fresh, index
        assert decode_jpeg(kept).shape == (height, width, 3)
    with pytest.raises(ValueError, match="yuvj420p"):
        encoder.encode(av.VideoFrame(16, 16, "yuv420p"), 90)
    assert decode_jpeg(encoder.encode(scale_for_jpeg(smooth_image(8, 8), 8, 8), 90)).shape == (
        8,
        8,
        3,
    )
