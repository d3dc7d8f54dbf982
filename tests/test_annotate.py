"""pytrickle_worker.processing.annotate: numpy-only boxes and bitmap-font labels."""

from __future__ import annotations

import av
import numpy as np
import numpy.typing as npt
import pytest
from av.video.reformatter import Interpolation
from hypothesis import given
from hypothesis import strategies as st

from pytrickle_worker.media.frames import yuv420_planes
from pytrickle_worker.processing.annotate import (
    GLYPH_HEIGHT,
    PALETTE,
    Annotation,
    box_thickness,
    class_colour,
    detection_label,
    draw_annotations,
    draw_annotations_yuv420,
    draw_box,
    draw_label,
    font_scale,
    jpeg_ycbcr,
    text_mask,
)

GREY = (90, 90, 90)


def grey(height: int = 120, width: int = 160) -> np.ndarray:
    image = np.empty((height, width, 3), np.uint8)
    image[:] = GREY
    return image


def test_text_mask_shape_scale_and_unknown_characters() -> None:
    mask = text_mask("car 0.98 #1")
    assert mask.shape == (GLYPH_HEIGHT, 6 * len("car 0.98 #1") - 1)
    assert mask.any()
    assert text_mask("ab", scale=3).shape == (GLYPH_HEIGHT * 3, (6 * 2 - 1) * 3)
    # Lower case is drawn as upper case; characters without a glyph as "?".
    assert np.array_equal(text_mask("car"), text_mask("CAR"))
    assert np.array_equal(text_mask("é"), text_mask("?"))
    assert not text_mask(" ").any()
    assert text_mask("").shape == (GLYPH_HEIGHT, 0)
    with pytest.raises(ValueError, match="scale"):
        text_mask("x", scale=0)


def test_every_glyph_is_distinct() -> None:
    chars = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ.,:-_#/%()<>+=!'?"
    seen = {text_mask(c).tobytes(): c for c in chars}
    assert len(seen) == len(chars)


def test_draw_box_outline_only() -> None:
    image = grey()
    draw_box(image, (20, 30, 100, 90), (255, 0, 255), 3)
    magenta = np.array([255, 0, 255], np.uint8)
    for y, x in [(30, 60), (32, 60), (89, 60), (87, 60), (60, 20), (60, 22), (60, 99), (60, 97)]:
        assert np.array_equal(image[y, x], magenta), (y, x)
    # Inside and outside the outline nothing changed.
    for y, x in [(33, 60), (86, 60), (60, 23), (60, 96), (29, 60), (90, 60), (60, 19), (60, 100)]:
        assert tuple(image[y, x]) == GREY, (y, x)


def test_draw_box_clips_to_the_frame() -> None:
    image = grey(50, 50)
    draw_box(image, (-10, -10, 70, 70), (0, 255, 255), 2)
    assert tuple(image[25, 0]) == (0, 255, 255)
    assert tuple(image[49, 25]) == (0, 255, 255)
    assert tuple(image[25, 25]) == GREY
    draw_box(image, (60, 60, 80, 80), (255, 0, 0), 2)  # fully outside: nothing happens
    assert not (image == np.array([255, 0, 0], np.uint8)).all(axis=2).any()


def test_label_above_the_box_or_inside_at_the_top() -> None:
    image = grey(200, 300)
    tag = draw_label(image, "car 1.00", (50, 100, 150, 180), (255, 255, 0), 2)
    assert tag is not None
    left, top, right, bottom = tag
    assert bottom == 100 and left == 50 and top >= 0
    assert bottom - top == GLYPH_HEIGHT * 2 + 2 * 2
    region = image[top:bottom, left:right]
    yellow = (region == np.array([255, 255, 0], np.uint8)).all(axis=2)
    black = (region == 0).all(axis=2)
    assert yellow.any() and black.any()  # dark text on a light tag
    assert yellow.sum() + black.sum() == region.shape[0] * region.shape[1]

    top_image = grey(200, 300)
    tag = draw_label(top_image, "x", (250, 0, 300, 50), (128, 0, 255), 1)
    assert tag is not None
    assert tag[1] == 0  # no room above: inside the box
    assert tag[2] <= 300  # shifted left to stay inside the frame
    # White text on a dark tag.
    region = top_image[tag[1] : tag[3], tag[0] : tag[2]]
    assert (region == 255).all(axis=2).any()


def test_draw_annotations_copies_unless_told_otherwise() -> None:
    image = grey(360, 640)
    before = image.copy()
    items = [Annotation((100, 100, 200, 200), "truck", class_colour("truck"))]
    out = draw_annotations(image, items)
    assert np.array_equal(image, before)
    assert not np.array_equal(out, before)
    assert tuple(out[150, 100]) == class_colour("truck")
    same = draw_annotations(image, items, copy=False)
    assert same is image and np.array_equal(image, out)
    assert np.array_equal(draw_annotations(before, []), before)
    with pytest.raises(ValueError, match="uint8"):
        draw_annotations(np.zeros((4, 4, 3), np.float32), items)  # pyright: ignore[reportArgumentType]


def test_sizes_and_palette() -> None:
    assert box_thickness(360, 640) == 2
    assert box_thickness(1080, 1920) == 6
    assert font_scale(200, 300) == 1
    assert font_scale(360, 640) == 2
    assert font_scale(1080, 1920) == 4
    assert class_colour("car") == class_colour("car")
    assert class_colour("car") in PALETTE


# ---------------------------------------------------------------------- 4:2:0 planes

Planes = tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8], npt.NDArray[np.uint8]]


def to_jpeg_yuv(rgb: npt.NDArray[np.uint8]) -> av.VideoFrame:
    """``rgb`` as swscale converts it for the JPEG encoder (full-range 4:2:0)."""
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return frame.reformat(format="yuvj420p", interpolation=Interpolation.BILINEAR)


def planes_copy(frame: av.VideoFrame) -> Planes:
    y, u, v = yuv420_planes(frame)
    return y.copy(), u.copy(), v.copy()


@pytest.mark.parametrize("colour", [*PALETTE, (0, 0, 0), (255, 255, 255), GREY, (12, 200, 77)])
def test_jpeg_ycbcr_is_what_swscale_makes_of_a_colour(colour: tuple[int, int, int]) -> None:
    rgb = np.empty((4, 4, 3), np.uint8)
    rgb[:] = colour
    y, u, v = planes_copy(to_jpeg_yuv(rgb))
    expected = jpeg_ycbcr(colour)
    for plane, want in zip((y, u, v), expected, strict=True):
        assert np.abs(plane.astype(int) - want).max() <= 1, (colour, plane, expected)


def draw_both_ways(
    height: int, width: int, annotations: list[Annotation]
) -> tuple[Planes, Planes, Planes]:
    """(untouched, drawn in RGB then converted, converted then drawn on the planes)."""
    image = grey(height, width)
    untouched = planes_copy(to_jpeg_yuv(image))
    via_rgb = planes_copy(to_jpeg_yuv(draw_annotations(image, annotations)))
    frame = to_jpeg_yuv(image)
    draw_annotations_yuv420(yuv420_planes(frame), annotations)
    return untouched, via_rgb, planes_copy(frame)


def assert_same_drawing(via_rgb: Planes, on_planes: Planes) -> None:
    # Luma is per pixel: the same picture. Chroma is per 2 x 2 block: it may differ only
    # where a block straddles an edge of a box, a tag or a dot of text.
    assert np.abs(via_rgb[0].astype(int) - on_planes[0]).max() <= 2
    for rgb_plane, plane in zip(via_rgb[1:], on_planes[1:], strict=True):
        differs = np.abs(rgb_plane.astype(int) - plane) > 2
        assert differs.mean() < 0.1, differs.mean()


def test_yuv420_drawing_matches_drawing_in_rgb() -> None:
    annotations = [
        Annotation((40, 60, 200, 150), "car 0.87 #12", class_colour("car")),
        Annotation((121, 7, 233, 99), "truck 0.51", class_colour("truck")),  # odd edges
    ]
    untouched, via_rgb, on_planes = draw_both_ways(180, 320, annotations)
    assert_same_drawing(via_rgb, on_planes)
    # Drawn where the RGB drawing draws, untouched inside the box.
    luma, _, _ = jpeg_ycbcr(class_colour("car"))
    assert abs(int(on_planes[0][100, 40]) - luma) <= 1
    assert np.array_equal(on_planes[0][100:140, 60:110], untouched[0][100:140, 60:110])
    assert np.array_equal(on_planes[1][55:68, 35:50], untouched[1][55:68, 35:50])


def test_yuv420_labels_keep_their_ink_grey() -> None:
    # White ink on a dark tag: the ink's chroma is neutral, not the tag's tint.
    colour = (128, 0, 255)
    label = [Annotation((20, 60, 300, 170), "WWW", colour)]
    _, _, on_planes = draw_both_ways(180, 320, label)
    ink = text_mask("WWW", font_scale(180, 320))
    pad = font_scale(180, 320)
    top = 60 - (ink.shape[0] + 2 * pad) + pad
    rows, cols = np.nonzero(ink)
    luma = on_planes[0][top + rows, 20 + pad + cols]
    assert (luma >= 250).all()
    u = on_planes[1][(top + rows) // 2, (20 + pad + cols) // 2]
    assert np.abs(u.astype(int) - 128).max() <= 1


@given(
    size=st.sampled_from([(180, 320), (540, 960), (1080, 1920)]),  # font scale 1, 2, 4
    x1=st.integers(0, 120),
    y1=st.integers(0, 120),
    text=st.text(alphabet="ABCXYZ0189 .#%", min_size=1, max_size=10),
)
def test_yuv420_ink_chroma_is_grey_exactly_under_the_dots(
    size: tuple[int, int], x1: int, y1: int, text: str
) -> None:
    """Every chroma sample under a dot of the text is the ink's grey; every other sample of
    the tag keeps the tag's colour. Even and odd tag positions, odd and even font scales
    (an even scale at an even origin takes every other dot instead of pooling)."""
    height, width = size
    colour = (128, 0, 255)  # white ink
    y_plane = np.full((height, width), 80, np.uint8)
    u_plane = np.full(((height + 1) // 2, (width + 1) // 2), 128, np.uint8)
    v_plane = u_plane.copy()
    box = (x1, y1 + 60, x1 + 300, y1 + 160)
    draw_annotations_yuv420((y_plane, u_plane, v_plane), [Annotation(box, text, colour)])
    scale = font_scale(height, width)
    mask = text_mask(text, scale)
    pad = scale
    top, left = box[1] - (mask.shape[0] + 2 * pad), x1  # above the box: there is room
    ink = np.zeros((height, width), np.bool_)
    ink[top + pad : top + pad + mask.shape[0], left + pad : left + pad + mask.shape[1]] = mask
    under_ink = ink.reshape(height // 2, 2, width // 2, 2).any(axis=(1, 3))
    _, tag_cb, _ = jpeg_ycbcr(colour)
    tag = np.zeros_like(under_ink)
    tag[
        top // 2 : (top + mask.shape[0] + 2 * pad + 1) // 2,
        left // 2 : (left + mask.shape[1] + 2 * pad + 1) // 2,
    ] = True
    assert (np.abs(u_plane[under_ink].astype(int) - 128) <= 1).all()
    assert (np.abs(u_plane[tag & ~under_ink].astype(int) - tag_cb) <= 1).all()


def test_yuv420_drawing_without_annotations_changes_nothing() -> None:
    untouched, _, on_planes = draw_both_ways(9, 11, [])
    for before, after in zip(untouched, on_planes, strict=True):
        assert np.array_equal(before, after)


def test_yuv420_drawing_rejects_planes_that_are_not_4_2_0() -> None:
    y = np.zeros((10, 10), np.uint8)
    with pytest.raises(ValueError, match="4:2:0 planes"):
        draw_annotations_yuv420((y, np.zeros((10, 10), np.uint8), np.zeros((5, 5), np.uint8)), [])
    with pytest.raises(ValueError, match="4:2:0 planes"):
        draw_annotations_yuv420((y, y[:5, :4], y[:5, :4]), [])


boxes = st.tuples(
    st.integers(-50, 250), st.integers(-50, 250), st.integers(-50, 250), st.integers(-50, 250)
).map(lambda b: (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])))


@given(
    height=st.integers(1, 140),
    width=st.integers(1, 200),
    marks=st.lists(st.tuples(boxes, st.text(max_size=12), st.sampled_from(PALETTE)), max_size=4),
)
def test_yuv420_drawing_of_any_boxes_matches_rgb_luma(
    height: int,
    width: int,
    marks: list[tuple[tuple[int, int, int, int], str, tuple[int, int, int]]],
) -> None:
    """Any frame size (odd ones too), boxes partly or wholly outside the frame, any text."""
    annotations = [Annotation(box, text, colour) for box, text, colour in marks]
    _, via_rgb, on_planes = draw_both_ways(height, width, annotations)
    assert np.abs(via_rgb[0].astype(int) - on_planes[0]).max() <= 2


def test_detection_label_names_class_confidence_and_track() -> None:
    """The one tag format the MPTA processor and the live view draw."""
    assert detection_label("car", 0.8749, 12) == "car 0.87 #12"
    assert detection_label("car/sedan", 1, None) == "car/sedan 1.00"
    assert detection_label("car", None, 3) == "car #3"
    assert detection_label("car", None) == "car"
