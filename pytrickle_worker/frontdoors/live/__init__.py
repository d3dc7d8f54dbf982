"""The live view: analysed frames with their detections in a bounded store (memory or Redis
Streams), pushed and pulled over WebSockets (docs/LIVE.md), and the page that shows them.

:class:`~pytrickle_worker.frontdoors.live.writer.LiveWriter` is the result sink both doors
feed; :class:`~pytrickle_worker.frontdoors.live.store.FrameStore` keeps the frames;
:mod:`~pytrickle_worker.frontdoors.live.page` serves ``GET /live``.
"""
