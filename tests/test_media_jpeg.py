"""JPEG encoding with FFmpeg's mjpeg encoder (numpy + PyAV)."""

from __future__ import annotations

import av
import numpy as np
import numpy.typing as npt
import pytest

from pytrickle_worker.media.jpeg import encode_jpeg, jpeg_qscale
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
