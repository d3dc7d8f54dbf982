"""Trickle: HTTP pub/sub over numbered segments; the clients the worker uses.

:mod:`~pytrickle_worker.transport.trickle.subscriber` and
:mod:`~pytrickle_worker.transport.trickle.publisher` are the clients. The local server
(go-livepeer's ``trickle_server.go`` wire behaviour, for ``pytrickle-worker trickle-server``
and the tests) is a dev tool, :mod:`pytrickle_worker.devtools.trickle_server`: a running
worker never loads it.
"""

from pytrickle_worker.transport.trickle.errors import TrickleError
from pytrickle_worker.transport.trickle.publisher import (
    PublisherStats,
    SegmentWriter,
    TricklePublisher,
)
from pytrickle_worker.transport.trickle.subscriber import TrickleSegment, TrickleSubscriber

__all__ = [
    "PublisherStats",
    "SegmentWriter",
    "TrickleError",
    "TricklePublisher",
    "TrickleSegment",
    "TrickleSubscriber",
]
