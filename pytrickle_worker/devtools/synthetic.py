"""Synthetic coloured-object scenes with exact ground truth (numpy only).

The demo models in :mod:`pytrickle_worker.devtools.models` do not learn anything: they
recognise objects by colour. Every object class has a colour prototype, and an
object is drawn as a filled rectangle of that colour on a noisy grey background.
A car may carry a square "badge" in its centre, whose colour the demo classifier
recognises.

Detector confidence and colour
------------------------------
For a pixel of colour ``p`` and a class prototype ``q`` (both RGB, 0-255), the
detector's soft match is ``m = clip(1 - ||p - q|| / DETECTOR_TAU_UINT8, 0, 1)``
with ``DETECTOR_TAU_UINT8 = 100``. Pixels with ``m > 0.5`` (colour distance below
50) belong to the class mask, and the confidence is the mean ``m`` over the mask.
So a uniformly coloured object at Euclidean distance ``d < 50`` from its
prototype is detected with confidence ``1 - d / 100`` (1.0 for the exact
prototype, just above 0.5 at the limit), and is not detected at all when
``d >= 50`` or when it covers fewer than ``DETECTOR_MIN_PIXELS`` pixels.
:func:`colour_for_confidence` and :func:`expected_confidence` implement the
relation for tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = [
    "BACKGROUND_COLOUR",
    "BADGE_COLOURS",
    "BADGE_FRACTION",
    "CLASSIFIER_NAMES",
    "CLASS_COLOURS",
    "DETECTOR_MASK_THRESHOLD",
    "DETECTOR_MIN_PIXELS",
    "DETECTOR_NAMES",
    "DETECTOR_TAU_UINT8",
    "LETTERBOX_PAD",
    "MOVING_TRUCK_CONFIDENCE",
    "RGB",
    "SceneObject",
    "badge_box",
    "colour_for_confidence",
    "expected_confidence",
    "moving_objects",
    "render_scene",
]

RGB: TypeAlias = tuple[int, int, int]

#: Detector class names, in class-index order.
DETECTOR_NAMES: list[str] = ["person", "car", "truck"]
#: Classifier class names (badge colours), in class-index order.
CLASSIFIER_NAMES: list[str] = ["white", "yellow", "black"]

#: Colour prototype of each detector class (RGB).
CLASS_COLOURS: dict[str, RGB] = {
    "person": (40, 200, 60),
    "car": (220, 40, 40),
    "truck": (40, 60, 220),
}
#: Colour prototype of each badge class (RGB).
BADGE_COLOURS: dict[str, RGB] = {
    "white": (245, 245, 245),
    "yellow": (240, 220, 30),
    "black": (15, 15, 15),
}

#: Mean background colour. At least 117 away from every class prototype even
#: with the noise, so the detector's soft match is exactly 0 on the background.
BACKGROUND_COLOUR: RGB = (90, 90, 90)
#: Background noise amplitude: each channel gets a uniform integer offset in
#: ``[-BACKGROUND_NOISE, BACKGROUND_NOISE]``.
BACKGROUND_NOISE = 4
#: The ultralytics letterbox pad grey; also far from every class prototype.
LETTERBOX_PAD: RGB = (114, 114, 114)

#: Colour distance (0-255 units) at which the detector's soft match reaches 0.
DETECTOR_TAU_UINT8 = 100.0
#: Soft-match threshold of the detector's class mask.
DETECTOR_MASK_THRESHOLD = 0.5
#: Masks smaller than this many pixels give confidence 0 (no detection).
DETECTOR_MIN_PIXELS = 16
#: Side of a badge as a fraction of ``min(box width, box height)``.
BADGE_FRACTION = 0.4
#: Nominal detector confidence of the truck in :func:`moving_objects`.
MOVING_TRUCK_CONFIDENCE = 0.8


@dataclass(frozen=True)
class SceneObject:
    """A filled rectangle of a class colour, optionally with a centred badge.

    ``box`` is ``(x1, y1, x2, y2)`` in pixel edges: the object covers columns
    ``x1 .. x2-1`` and rows ``y1 .. y2-1``. ``colour`` overrides the class
    prototype (see :func:`colour_for_confidence` to get a lower confidence).
    """

    class_name: str
    box: tuple[int, int, int, int]
    badge: str | None = None
    colour: RGB | None = None


def badge_box(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The badge rectangle (pixel edges) drawn inside ``box``."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    side = max(1, round(BADGE_FRACTION * min(w, h)))
    bx1 = x1 + (w - side) // 2
    by1 = y1 + (h - side) // 2
    return (bx1, by1, bx1 + side, by1 + side)


def _fill(image: npt.NDArray[np.uint8], box: tuple[int, int, int, int], colour: RGB) -> None:
    height, width = image.shape[:2]
    x1, y1, x2, y2 = box
    x1, x2 = max(0, x1), min(width, x2)
    y1, y2 = max(0, y1), min(height, y2)
    if x2 > x1 and y2 > y1:
        image[y1:y2, x1:x2] = np.asarray(colour, dtype=np.uint8)


def render_scene(
    width: int, height: int, objects: Sequence[SceneObject], seed: int = 0
) -> npt.NDArray[np.uint8]:
    """Render ``objects`` (in order, later ones on top) on a noisy grey background.

    Returns an ``height x width x 3`` uint8 RGB image. The same arguments always
    give the same image. Boxes may extend past the image; they are clipped.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    rng = np.random.default_rng(seed)
    noise = rng.integers(-BACKGROUND_NOISE, BACKGROUND_NOISE + 1, size=(height, width, 3))
    image = (np.asarray(BACKGROUND_COLOUR, dtype=np.int64) + noise).astype(np.uint8)
    for obj in objects:
        if obj.colour is not None:
            colour = obj.colour
        elif obj.class_name in CLASS_COLOURS:
            colour = CLASS_COLOURS[obj.class_name]
        else:
            raise ValueError(
                f"unknown class {obj.class_name!r}: pass a colour or use one of {DETECTOR_NAMES}"
            )
        _fill(image, obj.box, colour)
        if obj.badge is not None:
            if obj.badge not in BADGE_COLOURS:
                raise ValueError(f"unknown badge {obj.badge!r}, expected one of {CLASSIFIER_NAMES}")
            _fill(image, badge_box(obj.box), BADGE_COLOURS[obj.badge])
    return image


def _shift_direction(prototype: RGB) -> tuple[float, float, float]:
    """Unit direction that moves a prototype away from its dominant channel."""
    dominant = max(range(3), key=lambda i: prototype[i])
    sign = -1.0 if prototype[dominant] >= 128 else 1.0
    direction = [0.0, 0.0, 0.0]
    direction[dominant] = sign
    return (direction[0], direction[1], direction[2])


def colour_for_confidence(class_name: str, confidence: float) -> RGB:
    """A colour the demo detector reports for ``class_name`` at about ``confidence``.

    The colour is the prototype moved by ``round((1 - confidence) * 100)`` along
    its dominant channel (at most 49), so the detector gives exactly
    ``expected_confidence(class_name, colour)``: within 0.005 of ``confidence``,
    and 0.51 for anything below 0.51. ``confidence`` must be in ``(0.5, 1.0]``:
    at 0.5 or below the object would not be detected at all.
    """
    if not DETECTOR_MASK_THRESHOLD < confidence <= 1.0:
        raise ValueError(f"confidence must be in (0.5, 1.0], got {confidence}")
    prototype = CLASS_COLOURS[class_name]
    # Distance 50 would put the colour exactly on the mask threshold: stay below.
    limit = math.ceil(DETECTOR_TAU_UINT8 * (1.0 - DETECTOR_MASK_THRESHOLD)) - 1
    distance = min(round((1.0 - confidence) * DETECTOR_TAU_UINT8), limit)
    direction = _shift_direction(prototype)
    r, g, b = (round(p + distance * d) for p, d in zip(prototype, direction, strict=True))
    return (r, g, b)


def expected_confidence(class_name: str, colour: RGB) -> float:
    """The demo detector's confidence for a uniform object of ``colour``.

    ``1 - d / 100`` where ``d`` is the Euclidean RGB distance to the class
    prototype, or 0.0 when ``d >= 50`` (the object is not in the mask).
    """
    prototype = CLASS_COLOURS[class_name]
    distance = math.dist(prototype, colour)
    match = max(0.0, 1.0 - distance / DETECTOR_TAU_UINT8)
    return match if match > DETECTOR_MASK_THRESHOLD else 0.0


def _triangle(t: float, period: float) -> float:
    """Triangle wave in [0, 1]: 0 at t=0, 1 at t=period/2, back to 0 at t=period."""
    phase = (t / period) % 1.0
    return 2.0 * phase if phase < 0.5 else 2.0 * (1.0 - phase)


def moving_objects(frame_index: int, width: int, height: int, fps: float) -> list[SceneObject]:
    """A deterministic scene: a badged car and a truck crossing the frame.

    The car (with a yellow badge, drawn in its exact class colour: detector
    confidence 1.0) drives left to right in the upper half and the truck
    (drawn off-colour: confidence ``MOVING_TRUCK_CONFIDENCE``, so the car is
    always the best detection) right to left in the lower half, each with a
    gentle vertical sway. The
    trajectory depends on the time ``frame_index / fps`` only (so any analysis
    rate sees the same motion); one crossing takes 10 s, then they drive back.
    The two objects never overlap and stay fully inside the frame. Sizes scale
    with the frame (car about 20% x 20% of a 640x360 frame).
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    t = frame_index / fps
    period = 20.0
    car_w, car_h = round(width * 0.2), round(height * 0.2)
    truck_w, truck_h = round(width * 0.275), round(height * 0.27)
    margin = round(width * 0.025)

    car_x = margin + round((width - 2 * margin - car_w) * _triangle(t, period))
    car_y = round(height * 0.12 + height * 0.03 * math.sin(2.0 * math.pi * t / 5.0))
    truck_x = (
        width - margin - truck_w - round((width - 2 * margin - truck_w) * _triangle(t, period))
    )
    truck_y = round(height * 0.58 + height * 0.03 * math.sin(2.0 * math.pi * t / 4.0 + 1.0))
    return [
        SceneObject("car", (car_x, car_y, car_x + car_w, car_y + car_h), badge="yellow"),
        SceneObject(
            "truck",
            (truck_x, truck_y, truck_x + truck_w, truck_y + truck_h),
            colour=colour_for_confidence("truck", MOVING_TRUCK_CONFIDENCE),
        ),
    ]
