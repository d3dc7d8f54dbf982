"""Trickle: HTTP pub/sub over numbered segments; the clients the worker uses.

:mod:`~pytrickle_worker.trickle.subscriber` and :mod:`~pytrickle_worker.trickle.publisher`
are the clients. The local server (go-livepeer's ``trickle_server.go`` wire behaviour, for
``pytrickle-worker trickle-server`` and the tests) is imported from
:mod:`pytrickle_worker.trickle.server` explicitly: a running worker never loads it.
"""

from pytrickle_worker.trickle.errors import TrickleError
from pytrickle_worker.trickle.publisher import PublisherStats, SegmentWriter, TricklePublisher
from pytrickle_worker.trickle.subscriber import TrickleSegment, TrickleSubscriber

__all__ = [
    "PublisherStats",
    "SegmentWriter",
    "TrickleError",
    "TricklePublisher",
    "TrickleSegment",
    "TrickleSubscriber",
]
