"""core/bucket.py: the token bucket behind the CMS connections' inbound rate limit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytrickle_worker.core.bucket import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@given(
    rate=st.floats(0.5, 1000),
    burst=st.floats(1, 5000),
    steps=st.lists(st.tuples(st.floats(0, 2), st.floats(0.5, 50)), max_size=60),
)
def test_what_is_granted_never_exceeds_the_burst_plus_the_rate(
    rate: float, burst: float, steps: list[tuple[float, float]]
) -> None:
    clock = Clock()
    bucket = TokenBucket(rate, burst, clock)
    granted = elapsed = 0.0
    for wait, units in steps:
        clock.now += wait
        elapsed += wait
        if bucket.take(units):
            granted += units
        assert granted <= burst + rate * elapsed + 1e-6


def test_a_full_bucket_grants_its_burst_then_refills_at_its_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=5, clock=clock)
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]
    assert not bucket.take(2)  # a refused take spends nothing…
    clock.now += 0.15
    assert bucket.take() and not bucket.take()  # …and 0.15 s gives 1.5 back
    clock.now += 60
    assert bucket.take(5) and not bucket.take()  # never more than the burst
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0, 1)
