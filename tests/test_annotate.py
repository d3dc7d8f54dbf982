"""pytrickle_worker.processing.annotate: numpy-only boxes and bitmap-font labels."""

from __future__ import annotations

import numpy as np
import pytest

from pytrickle_worker.processing.annotate import (
    GLYPH_HEIGHT,
    PALETTE,
    Annotation,
    box_thickness,
    class_colour,
    draw_annotations,
    draw_box,
    draw_label,
    font_scale,
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
