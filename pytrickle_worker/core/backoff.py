"""Exponential backoff between attempts, with optional full jitter."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays before retries: ``min(cap, initial * 2**(n-1))`` after ``n`` consecutive
    failures, drawn as ``uniform(0, that)`` when ``jitter`` (the default).

    Full jitter spreads the reconnects of many cameras that failed together (a switch
    reboot); without it the delays are exactly the doubling sequence (a single client, like a
    trickle channel, whose logs should show the schedule). ``max_retries`` bounds
    *consecutive* failures for :meth:`next_delay` (-1 = retry forever); :meth:`reset` after a
    success starts the count again.
    """

    def __init__(
        self,
        initial_s: float,
        cap_s: float,
        max_retries: int = -1,
        rng: random.Random | None = None,
        *,
        jitter: bool = True,
    ) -> None:
        if initial_s <= 0 or cap_s <= 0:
            raise ValueError("backoff delays must be positive")
        self._initial = min(initial_s, cap_s)
        self._cap = cap_s
        self._max_retries = max_retries
        self._jitter = jitter
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - jitter, not crypto
        self._failures = 0

    @property
    def failures(self) -> int:
        """Consecutive failures since the last :meth:`reset`."""
        return self._failures

    def ceiling(self, failures: int) -> float:
        """Upper bound of the delay after ``failures`` consecutive failures (>= 1)."""
        exponent = min(max(failures - 1, 0), 62)
        return min(self._cap, self._initial * float(2**exponent))

    def next_delay(self) -> float | None:
        """Record a failure; the delay before the next attempt, or None to give up (more than
        ``max_retries`` consecutive failures)."""
        self._failures += 1
        if self._max_retries >= 0 and self._failures > self._max_retries:
            return None
        return self._delay()

    def failed(self) -> float:
        """Record a failure; the delay before the next attempt, however many failed (for
        loops that never give up)."""
        self._failures += 1
        return self._delay()

    def reset(self) -> None:
        self._failures = 0

    def _delay(self) -> float:
        ceiling = self.ceiling(self._failures)
        return self._rng.uniform(0.0, ceiling) if self._jitter else ceiling
