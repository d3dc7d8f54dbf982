"""Frame processors: what the worker runs on each sampled frame of a stream.

Every processor implements :class:`pytrickle_worker.processing.FrameProcessor` and serves
both front doors. ``pytrickle_worker.processing.registry`` names them;
``pytrickle_worker.processing.annotate`` is the drawing step the stream door runs after a
processor.

Nothing is imported here: importing ``processors.x`` loads only what ``x`` needs.
"""
