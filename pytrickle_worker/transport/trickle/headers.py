"""Trickle wire constants: header names, special sequence numbers and status codes.

Shared by the server (:mod:`pytrickle_worker.devtools.trickle_server`) and the clients
(:mod:`~pytrickle_worker.transport.trickle.subscriber`,
:mod:`~pytrickle_worker.transport.trickle.publisher`),
so both sides agree on the protocol go-livepeer's ``trickle_server.go`` speaks.
"""

from __future__ import annotations

from collections.abc import Mapping

SEQ_HEADER = "Lp-Trickle-Seq"
"""The segment index a response belongs to (GET and POST responses, and 470s)."""

LATEST_HEADER = "Lp-Trickle-Latest"
"""The channel's next write index; sent with 470 and when a GET is behind the live edge."""

CLOSED_HEADER = "Lp-Trickle-Closed"
"""Present (value ``terminated``) when the channel has been closed: end of stream."""

CLOSED_VALUE = "terminated"

RESET_HEADER = "Lp-Trickle-Reset"
"""Sent by a restarted publisher on its first POST: the server closes older segments."""

STATUS_SEGMENT_MISSING = 470
"""The channel exists but the asked segment does not (overwritten, or too far ahead)."""

SEQ_NEXT = -1
"""GET/POST alias for the channel's next write index (wait for the next segment)."""

SEQ_LATEST = -2
"""GET alias for the segment being written now, or the last one written."""

MAX_SEGMENTS_PER_CHANNEL = 5
"""Ring size: segment ``idx`` lives in slot ``idx % 5``."""

NEXT_PATH = "next"
"""``GET /{channel}/next`` answers the next write index."""


def parse_int_header(headers: Mapping[str, str], name: str) -> int | None:
    """The integer value of header ``name``, or ``None`` when absent or not an integer."""
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


def segment_url(channel_url: str, seq: int) -> str:
    """``{channel_url}/{seq}``, tolerating a trailing slash on the channel URL."""
    return f"{channel_url.rstrip('/')}/{seq}"
