"""What a backend gets as ``patchSession`` for detections it missed (worker.md 4.3).

The data must be a partial ``DisplayPersistentData``, which the backend deep-merges into the
display's state: only ``currentCar``'s own fields go in, and a detection without any of them
(the pipeline's ``class``/``confidence``/``id``) patches nothing.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytrickle_worker.frontdoors.cms.backends import CURRENT_CAR_FIELDS, BackendRegistry


async def _nothing() -> None:
    return None


def _registry() -> BackendRegistry:
    return BackendRegistry(queue_size=8, grace_s=30.0, on_grace_expired=_nothing)


def _detection(detection: dict[str, Any], session: object = 12345) -> dict[str, Any]:
    wire: dict[str, Any] = {
        "type": "imageDetection",
        "subscriptionIdentifier": "display-001;cam-001",
        "timestamp": "2025-07-14T12:34:56.789Z",
        "data": {"detection": detection, "modelId": 101, "modelName": "m"},
    }
    if session is not None:
        wire["sessionId"] = session
    return wire


def test_only_current_car_fields_are_patched() -> None:
    registry = _registry()
    registry.record_undelivered(
        _detection(
            {
                "carModel": "Civic",
                "carBrand": "Honda",
                "carYear": 2023,
                "bodyType": "Sedan",
                "licensePlateText": "ABCD1234",
                "licensePlateConfidence": 0.95,
                "class": "car",
                "confidence": 0.9,
                "id": 3,
                "licensePlateType": None,
            }
        )
    )
    assert registry.detections_undelivered == 1
    assert dict(registry.pending_patches) == {
        12345: {
            "currentCar": {
                "carModel": "Civic",
                "carBrand": "Honda",
                "carYear": 2023,
                "bodyType": "Sedan",
                "licensePlateText": "ABCD1234",
            }
        }
    }
    assert set(CURRENT_CAR_FIELDS) == {
        "carModel",
        "carBrand",
        "carYear",
        "bodyType",
        "licensePlateText",
        "licensePlateType",
    }


@pytest.mark.parametrize(
    ("detection", "session"),
    [
        ({"class": "car", "confidence": 0.9, "id": 3}, 12345),
        ({"class": "none", "confidence": 1.0}, "s-1"),
        ({"carBrand": "Honda"}, None),  # no session: nothing to patch
        ({"carBrand": None}, 7),
    ],
)
def test_a_detection_without_car_fields_or_session_patches_nothing(
    detection: dict[str, Any], session: object
) -> None:
    registry = _registry()
    registry.record_undelivered(_detection(detection, session))
    assert registry.detections_undelivered == 1
    assert not registry.pending_patches


def test_the_latest_detection_of_a_session_wins_and_sessions_are_kept_apart() -> None:
    registry = _registry()
    registry.record_undelivered(_detection({"carBrand": "Honda"}, 1))
    registry.record_undelivered(_detection({"carBrand": "Ford"}, 2))
    registry.record_undelivered(_detection({"carBrand": "Kia", "carModel": "Rio"}, 1))
    registry.record_undelivered(_detection({"class": "car"}, 2))  # patches nothing
    assert list(registry.pending_patches.items()) == [
        (2, {"currentCar": {"carBrand": "Ford"}}),
        (1, {"currentCar": {"carBrand": "Kia", "carModel": "Rio"}}),
    ]
