"""Trickle: HTTP pub/sub over numbered segments (server, subscriber, publisher).

See :mod:`pytrickle_worker.trickle.server` for the server's wire behaviour (go-livepeer's
``trickle_server.go``), :mod:`~pytrickle_worker.trickle.subscriber` and
:mod:`~pytrickle_worker.trickle.publisher` for the clients.
"""

from pytrickle_worker.trickle.errors import TrickleError
from pytrickle_worker.trickle.publisher import PublisherStats, SegmentWriter, TricklePublisher
from pytrickle_worker.trickle.server import TrickleServer, run_trickle_server
from pytrickle_worker.trickle.subscriber import TrickleSegment, TrickleSubscriber

__all__ = [
    "PublisherStats",
    "SegmentWriter",
    "TrickleError",
    "TricklePublisher",
    "TrickleSegment",
    "TrickleServer",
    "TrickleSubscriber",
    "run_trickle_server",
]
