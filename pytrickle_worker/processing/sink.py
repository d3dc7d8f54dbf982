"""Result sinks: where a front door hands each analysed frame besides its own protocol.

A door calls its sinks after processing a frame (the live view's frame store is one). A sink
must never slow down or break the frame path: :meth:`ResultSink.offer` returns at once and
does its work (scaling, drawing, encoding, storing) elsewhere, or drops the frame. The door
talks to the sinks of one stream through :class:`StreamSinks`, which also shields it from a
sink that raises anyway.

Frames are named by a *label* (a group: a CMS display, or "streams") and a *key* (one
stream in it: a camera, or a gateway request id); :func:`check_live_name` is the rule both
must follow.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pytrickle_worker.core.frame import VideoFrame
from pytrickle_worker.processing.annotate import Annotation
from pytrickle_worker.processing.processor import ProcessResult

__all__ = [
    "MAX_LIVE_NAME_CHARS",
    "Origin",
    "ResultSink",
    "SinkFrame",
    "StreamSinks",
    "check_live_name",
]

logger = logging.getLogger(__name__)

Origin = Literal["cms", "stream", "upload"]

MAX_LIVE_NAME_CHARS = 128
_DOT_SEGMENTS = frozenset({".", ".."})
#: A sink that raised is reported at most this often (per stream).
_SINK_ERROR_REPORT_S = 30.0


def check_live_name(value: str, what: str = "label") -> str:
    """``value`` when it is a valid label or key, else ValueError naming the problem.

    1..128 characters, printable (``str.isprintable``: no control, format or separator
    characters but the plain space), no ``/`` and not ``.`` or ``..``: routes put labels and
    keys in a URL path, where browsers and HTTP clients resolve dot segments (``%2E%2E``
    too) before the request is sent, so such a name could never be viewed.
    """
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > MAX_LIVE_NAME_CHARS:
        raise ValueError(f"{what} is longer than {MAX_LIVE_NAME_CHARS} characters")
    if "/" in value:
        raise ValueError(f"{what} must not contain '/'")
    if value in _DOT_SEGMENTS:
        raise ValueError(f"{what} must not be {value!r} (a URL path cannot carry it)")
    if not value.isprintable():
        char = next(char for char in value if not char.isprintable())
        raise ValueError(f"{what} must be printable text (U+{ord(char):04X} is not)")
    return value


@dataclass(frozen=True)
class SinkFrame:
    """One analysed frame as a sink receives it.

    ``frame``: the analysed pixels (not drawn on); ``records``: the processor's records
    (a record with ``"detection"`` ``{"class", "confidence", "id"}`` and ``"bbox"``
    ``[x1, y1, x2, y2]`` in ``frame``'s pixels is a detection); ``annotations``: what the
    processor suggests drawing, in ``frame``'s pixels. ``fps``: the stream's analysed
    frames per second.
    """

    label: str
    key: str
    frame: VideoFrame
    records: Sequence[dict[str, Any]] = ()
    annotations: Sequence[Annotation] = ()
    origin: Origin = "cms"
    fps: float = 0.0
    online: bool = True


class ResultSink(Protocol):
    """What a door calls per analysed frame and per stream state change.

    Every method returns at once (no I/O, no pixel work on the caller's loop turn beyond a
    queue put) and must not raise; :class:`StreamSinks` logs it when one does anyway.
    """

    def offer(self, item: SinkFrame) -> None:
        """An analysed frame; the sink may drop it (rate limit, full queue, outage)."""
        ...

    def set_online(self, label: str, key: str, online: bool) -> None:
        """The stream's source went offline or came back (a camera's state)."""
        ...

    def end(self, label: str, key: str) -> None:
        """The stream ended (unsubscribed, stopped): offline, and no longer kept alive."""
        ...


class StreamSinks:
    """The sinks of one stream of a door, named by its label and key.

    The door calls :meth:`offer` after each analysed frame, :meth:`set_online` whenever it
    learns the source's state (only changes reach the sinks) and :meth:`end` once. Nothing
    here raises.
    """

    def __init__(self, sinks: Sequence[ResultSink], label: str, key: str, origin: Origin) -> None:
        self.sinks = tuple(sinks)
        self.label = label
        self.key = key
        self.origin: Origin = origin
        self._online: bool | None = None
        self._last_error_report = float("-inf")

    def __bool__(self) -> bool:
        return bool(self.sinks)

    def offer(self, frame: VideoFrame, result: ProcessResult, fps: float) -> None:
        if not self.sinks:
            return
        self._online = True
        item = SinkFrame(
            label=self.label,
            key=self.key,
            frame=result.frame if result.frame is not None else frame,
            records=result.records,
            annotations=result.annotations,
            origin=self.origin,
            fps=fps,
        )
        for sink in self.sinks:
            try:
                sink.offer(item)
            except Exception:
                self._report(sink)

    def set_online(self, online: bool) -> None:
        if online is self._online:
            return
        self._online = online
        for sink in self.sinks:
            try:
                sink.set_online(self.label, self.key, online)
            except Exception:
                self._report(sink)

    def end(self) -> None:
        self._online = False
        for sink in self.sinks:
            try:
                sink.end(self.label, self.key)
            except Exception:
                self._report(sink)

    def _report(self, sink: ResultSink) -> None:
        now = time.monotonic()
        if now - self._last_error_report >= _SINK_ERROR_REPORT_S:
            self._last_error_report = now
            logger.exception("%s/%s: result sink %r failed", self.label, self.key, sink)
