"""pytrickle-worker: a video-analytics worker running MPTA pipelines on ONNX Runtime."""

__version__ = "0.1.0"
