"""Hypothesis profiles of the REST fuzz tests (tests/test_api_fuzz.py).

``ci`` (the default) keeps the fuzz tests well under a minute; ``nightly`` runs many more
examples. Choose with ``HYPOTHESIS_PROFILE=nightly``. Imported by tests/conftest.py.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

__all__ = ["PROFILE_ENV", "register_profiles"]

PROFILE_ENV = "HYPOTHESIS_PROFILE"

#: The examples drive a real server: a slow example is normal, and huge bodies are the point.
_SUPPRESSED = (HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example)


def register_profiles() -> None:
    """Register ``ci`` and ``nightly`` and load the one ``HYPOTHESIS_PROFILE`` names (``ci``
    when unset; another name registered elsewhere is loaded as well)."""
    settings.register_profile(
        "ci", max_examples=60, deadline=None, suppress_health_check=_SUPPRESSED
    )
    settings.register_profile(
        "nightly", max_examples=2000, deadline=None, suppress_health_check=_SUPPRESSED
    )
    settings.load_profile(os.environ.get(PROFILE_ENV, "ci"))
