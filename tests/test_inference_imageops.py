"""Letterbox, classification resize and crops (numpy + PyAV, no sessions)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from pytrickle_worker.engine.inference.imageops import (
    PAD_VALUE,
    LetterboxBuffer,
    LetterboxInfo,
    crop,
    letterbox,
    letterbox_geometry,
    resize_center_crop,
    scale_boxes_to_frame,
)

PAD = PAD_VALUE / 255.0


def ultralytics_letterbox_padding(
    shape: tuple[int, int], new_shape: tuple[int, int]
) -> tuple[float, tuple[int, int], tuple[int, int, int, int]]:
    """ultralytics ``LetterBox.__call__`` (auto=False, scaleup=True, center=True) arithmetic."""
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    new_unpad = int(round(shape[1] * r)), int(round(shape[0] * r))  # noqa: RUF046 (verbatim)
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    dw /= 2
    dh /= 2
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))  # noqa: RUF046
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))  # noqa: RUF046
    return r, new_unpad, (top, bottom, left, right)


def cv2_inter_linear(
    image: npt.NDArray[np.uint8], width: int, height: int
) -> npt.NDArray[np.uint8]:
    """``cv2.resize(..., interpolation=INTER_LINEAR)`` in float (half-pixel centres)."""

    def taps(
        n_out: int, n_in: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        i0 = np.floor(pos).astype(int)
        frac = pos - i0
        frac = np.where(i0 < 0, 0.0, frac)
        i0 = np.clip(i0, 0, n_in - 1)
        return i0, np.clip(i0 + 1, 0, n_in - 1), frac

    y0, y1, fy = taps(height, image.shape[0])
    x0, x1, fx = taps(width, image.shape[1])
    a = image.astype(np.float64)
    rows = a[y0] * (1 - fy)[:, None, None] + a[y1] * fy[:, None, None]
    out = rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def smooth_image(height: int, width: int, seed: int = 0) -> npt.NDArray[np.uint8]:
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    return cv2_inter_linear(low, width, height)


SHAPES = [
    *[(1080, 1920), (720, 1280), (480, 640), (640, 480), (300, 1000), (240, 320), (1, 1)],
    *[(333, 777), (777, 333), (641, 640), (100, 101), (17, 1000), (1000, 17)],
]


@pytest.mark.parametrize("frame_hw", SHAPES)
@pytest.mark.parametrize("new_shape", [(640, 640), (384, 640), (320, 320)])
def test_letterbox_geometry_matches_ultralytics(
    frame_hw: tuple[int, int], new_shape: tuple[int, int]
) -> None:
    r, new_unpad, (top, bottom, left, right) = ultralytics_letterbox_padding(frame_hw, new_shape)
    info, t, b, lft, rgt = letterbox_geometry(frame_hw, new_shape)
    assert info.ratio == r
    assert info.resized == (new_unpad[1], new_unpad[0])
    assert (t, b, lft, rgt) == (top, bottom, left, right)
    assert (info.pad_top, info.pad_left) == (top, left)
    assert new_unpad[1] + top + bottom == new_shape[0]
    assert new_unpad[0] + left + right == new_shape[1]


@pytest.mark.parametrize("frame_hw", [(1080, 1920), (480, 640), (640, 480), (300, 1000), (7, 5)])
def test_letterbox_tensor_layout_and_padding(frame_hw: tuple[int, int]) -> None:
    h, w = frame_hw
    frame = np.empty((h, w, 3), np.uint8)
    frame[...] = (200, 100, 50)
    tensor, info = letterbox(frame, (640, 640))
    assert tensor.shape == (1, 3, 640, 640)
    assert tensor.dtype == np.float32
    new_h, new_w = info.resized
    top, left = info.pad_top, info.pad_left
    inside = tensor[0, :, top : top + new_h, left : left + new_w]
    np.testing.assert_allclose(inside[0], 200 / 255, atol=1e-6)
    np.testing.assert_allclose(inside[1], 100 / 255, atol=1e-6)
    np.testing.assert_allclose(inside[2], 50 / 255, atol=1e-6)
    outside = np.ones((640, 640), bool)
    outside[top : top + new_h, left : left + new_w] = False
    np.testing.assert_allclose(tensor[0][:, outside], PAD, atol=1e-6)


def test_letterbox_buffer_is_reused_and_repadded_when_the_region_moves() -> None:
    buffer = LetterboxBuffer((640, 640))
    wide = np.full((360, 640, 3), 255, np.uint8)
    tall = np.full((640, 360, 3), 0, np.uint8)
    first, _ = letterbox(wide, (640, 640), buffer)
    assert first is buffer.array
    second, info = letterbox(tall, (640, 640), buffer)
    assert second is buffer.array
    # The rows the wide frame filled are padding again outside the tall frame's columns.
    np.testing.assert_allclose(second[0, :, 300, :100], PAD, atol=1e-6)
    np.testing.assert_allclose(second[0, :, 300, info.pad_left + 10], 0.0)
    third, _ = letterbox(wide, (640, 640), buffer)
    np.testing.assert_allclose(third[0, :, :140], PAD, atol=1e-6)
    np.testing.assert_allclose(third[0, :, 140:500], 1.0, atol=1e-6)


def test_letterbox_into_plain_array_pads_every_call() -> None:
    out = np.zeros((1, 3, 64, 64), np.float32)
    tensor, _ = letterbox(np.zeros((32, 64, 3), np.uint8), (64, 64), out)
    assert tensor is out
    np.testing.assert_allclose(out[0, :, :16], PAD, atol=1e-6)
    np.testing.assert_allclose(out[0, :, 16:48], 0.0)
    with pytest.raises(ValueError, match="shape"):
        letterbox(np.zeros((32, 64, 3), np.uint8), (64, 64), np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="buffer"):
        letterbox(np.zeros((32, 64, 3), np.uint8), (64, 64), LetterboxBuffer((32, 32)))


def test_letterbox_float16_buffer() -> None:
    buffer = LetterboxBuffer((64, 64), dtype=np.float16)
    tensor, _ = letterbox(np.full((64, 64, 3), 255, np.uint8), (64, 64), buffer)
    assert tensor.dtype == np.float16
    np.testing.assert_allclose(tensor.astype(np.float32), 1.0, atol=1e-3)


def test_letterbox_rejects_bad_frames() -> None:
    with pytest.raises(ValueError, match="uint8"):
        letterbox(np.zeros((10, 10, 3), np.float32), (64, 64))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        letterbox(np.zeros((10, 10), np.uint8), (64, 64))


@pytest.mark.parametrize(
    ("frame_hw", "max_mean", "max_abs"),
    [
        ((240, 320), 0.1, 1),  # 2x upscale: bilinear, like INTER_LINEAR
        ((360, 500), 0.1, 1),  # non-integer upscale
        ((1280, 1280), 0.2, 1),  # exact 2x downscale: INTER_LINEAR averages 2x2 as well
        ((1080, 1920), 0.0, 0),  # exact 3x: INTER_LINEAR samples one pixel, so do we
        ((2160, 3840), 6.0, 60),  # 6x: swscale low-passes, INTER_LINEAR aliases
        ((300, 1000), 3.0, 40),  # 1.5625x
    ],
)
def test_letterbox_resize_is_close_to_cv2_inter_linear(
    frame_hw: tuple[int, int], max_mean: float, max_abs: float
) -> None:
    h, w = frame_hw
    frame = smooth_image(h, w)
    tensor, info = letterbox(frame, (640, 640))
    new_h, new_w = info.resized
    top, left = info.pad_top, info.pad_left
    ours = np.rint(tensor[0, :, top : top + new_h, left : left + new_w] * 255).transpose(1, 2, 0)
    reference = cv2_inter_linear(frame, new_w, new_h).astype(np.float64)
    diff = np.abs(ours - reference)
    assert diff.mean() <= max_mean
    assert diff.max() <= max_abs


def test_letterbox_accepts_views_with_row_padding_and_non_contiguous_frames() -> None:
    base = smooth_image(200, 300)
    view = base[10:110, 20:220]  # rows contiguous, stride of the parent
    strided = base[::2, ::2]  # pixels not contiguous: copied first
    expected_view, _ = letterbox(np.ascontiguousarray(view), (64, 64))
    np.testing.assert_array_equal(letterbox(view, (64, 64))[0], expected_view)
    expected_strided, _ = letterbox(np.ascontiguousarray(strided), (64, 64))
    np.testing.assert_array_equal(letterbox(strided, (64, 64))[0], expected_strided)


def test_scale_boxes_round_trip_and_clip() -> None:
    info, *_ = letterbox_geometry((720, 1280), (640, 640))
    frame_boxes = np.array([[100, 200, 300, 400], [0, 0, 1280, 720]], np.float32)
    input_boxes = frame_boxes * info.ratio + [info.pad_left, info.pad_top] * 2
    back = scale_boxes_to_frame(input_boxes, info, (720, 1280, 3))
    np.testing.assert_allclose(back, frame_boxes, atol=1e-3)
    outside = np.array([[-50, -50, 700, 700]], np.float32)
    np.testing.assert_allclose(
        scale_boxes_to_frame(outside, info, (720, 1280)), [[0, 0, 1280, 720]]
    )
    assert scale_boxes_to_frame(np.zeros((0, 4), np.float32), info, (720, 1280)).shape == (0, 4)
    assert isinstance(info, LetterboxInfo)


def test_resize_center_crop_geometry() -> None:
    # A 200x100 frame: left half red, right half blue, a green centre column band.
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:, :100] = (255, 0, 0)
    frame[:, 100:] = (0, 0, 255)
    frame[:, 90:110] = (0, 255, 0)
    tensor = resize_center_crop(frame, 50)
    assert tensor.shape == (1, 3, 50, 50)
    # Shorter side 100 -> 50, so 200 -> 100 wide; the centre 50 columns are 25..75 of it,
    # i.e. frame columns 50..150: red, green band at 90..110 (cols 20..30), blue.
    np.testing.assert_allclose(tensor[0, :, 25, 5], [1, 0, 0], atol=0.02)
    np.testing.assert_allclose(tensor[0, :, 25, 25], [0, 1, 0], atol=0.02)
    np.testing.assert_allclose(tensor[0, :, 25, 45], [0, 0, 1], atol=0.02)
    tall = resize_center_crop(np.full((300, 30, 3), 128, np.uint8), 16)
    assert tall.shape == (1, 3, 16, 16)
    np.testing.assert_allclose(tall, 128 / 255, atol=1e-6)
    exact = resize_center_crop(np.full((30, 30, 3), 10, np.uint8), (20, 40))
    assert exact.shape == (1, 3, 20, 40)
    out = np.empty((1, 3, 16, 16), np.float32)
    assert resize_center_crop(np.zeros((5, 9, 3), np.uint8), 16, out) is out


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ((10.2, 5.5, 20.7, 15.1), (5, 16, 10, 21)),  # floor / ceil
        ((10.2, 5.5, 10.4, 5.6), (5, 6, 10, 11)),  # sub-pixel box: 1x1
        ((-5, -5, 30, 30), (0, 30, 0, 30)),  # clipped to the frame
        ((90, 40, 150, 80), (40, 50, 90, 100)),
    ],
)
def test_crop(box: tuple[float, float, float, float], expected: tuple[int, int, int, int]) -> None:
    frame = np.arange(50 * 100 * 3, dtype=np.uint32).astype(np.uint8).reshape(50, 100, 3)
    original = frame.copy()
    got = crop(frame, np.array(box, np.float32))
    assert got is not None
    y1, y2, x1, x2 = expected
    np.testing.assert_array_equal(got, frame[y1:y2, x1:x2])
    assert got.flags.c_contiguous
    got[...] = 77  # a copy: the frame is untouched
    np.testing.assert_array_equal(frame, original)


@pytest.mark.parametrize(
    "box",
    [(100, 0, 120, 10), (0, 50, 10, 60), (-20, -20, -1, -1), (10, 10, 10, 20), (20, 5, 10, 8)],
)
def test_crop_empty_is_none(box: tuple[float, float, float, float]) -> None:
    assert crop(np.zeros((50, 100, 3), np.uint8), box) is None


def test_crop_rejects_non_finite() -> None:
    assert crop(np.zeros((50, 100, 3), np.uint8), (np.nan, 0, 10, 10)) is None
