"""Frame-rate sampling: which frames to take so that at most ``fps`` are taken per second."""

from __future__ import annotations

__all__ = ["RateSampler"]

#: Slack for float clock values (pts seconds): a frame this close before its due time is due.
_EPSILON_S = 1e-4


class RateSampler:
    """Takes at most ``fps`` frames per second of a clock: media time (pts in seconds) or a
    monotonic clock. ``fps`` None (or not positive) takes every frame.

    By default frames are due on a fixed grid of ``1/fps`` from the first one taken, so the
    rate does not sag when frames arrive a little after their due time (a 30 fps input at a
    10 fps cap takes exactly every third frame). With ``on_grid=False`` the next frame is due
    ``1/fps`` after the last one taken: a strict minimum spacing. After a gap longer than an
    interval the grid restarts at the frame taken (no catching up), and so does a clock that
    goes backwards (a new segment, a restarted encoder). Not thread-safe.
    """

    def __init__(self, fps: float | None = None, *, on_grid: bool = True) -> None:
        self.fps = fps
        self.on_grid = on_grid
        self._next_due: float | None = None
        self._last_seen: float | None = None

    @property
    def next_due(self) -> float | None:
        """When the next frame is due (clock seconds); None when any frame is."""
        return self._next_due

    def reset(self) -> None:
        """Forget the grid: the next frame is due at once."""
        self._next_due = None
        self._last_seen = None

    def wait_s(self, t: float) -> float:
        """Seconds from ``t`` until a frame is due; 0.0 when one is due at ``t``."""
        if self._last_seen is not None and t < self._last_seen:
            self.reset()  # the clock went backwards: start over
        self._last_seen = t
        due = self._next_due
        if not self._limited() or due is None or t >= due - _EPSILON_S:
            return 0.0
        return due - t

    def take(self, t: float) -> None:
        """Record a frame taken at ``t``: the next one is due an interval later."""
        fps = self.fps
        if fps is None or fps <= 0:
            self._next_due = None
            return
        interval = 1.0 / fps
        due = self._next_due
        following = t + interval if due is None or not self.on_grid else due + interval
        # After a gap (or a slow start) do not try to catch up: keep the pace from now.
        self._next_due = following if following > t else t + interval

    def due(self, t: float) -> bool:
        """Whether the frame at ``t`` is taken (and if so, record it)."""
        if self.wait_s(t) > 0.0:
            return False
        self.take(t)
        return True

    def _limited(self) -> bool:
        return self.fps is not None and self.fps > 0
