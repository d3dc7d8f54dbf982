"""Hypothesis profiles for the fuzz suites, chosen with ``HYPOTHESIS_PROFILE``.

- ``ci`` (default): a bounded example count that keeps ``bash scripts/test.sh`` within its
  time budget; the examples are reproducible from the printed seed.
- ``nightly``: many more examples, for a long run by hand or on a schedule::

      HYPOTHESIS_PROFILE=nightly .venv/bin/python -m pytest tests/test_*_fuzz.py

Suites that pay for a real worker per example (cameras, model loads) take a fraction of the
profile's count through :func:`heavy`.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# A fuzz example talks to real servers over loopback: its time varies with the machine's
# load, so no per-example deadline; fixtures that hold a running worker are shared by the
# examples on purpose (each example cleans up after itself and checks that it did).
_COMMON = {
    "deadline": None,
    # Huge bodies and messages are the point of some suites, not a generator problem.
    "suppress_health_check": [
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
    "print_blob": True,
}
settings.register_profile("ci", max_examples=60, **_COMMON)
settings.register_profile("nightly", max_examples=2000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def heavy(fraction: float) -> settings:
    """The current profile with ``fraction`` of its example count (at least 5)."""
    return settings(max_examples=max(5, int(settings.default.max_examples * fraction)))
