"""Demo and test assets: synthetic scenes, hand-built ONNX models, the demo MPTA.

* :mod:`~pytrickle_worker.demo.synthetic` -- coloured-object scenes with ground
  truth (numpy only).
* :mod:`~pytrickle_worker.demo.models` -- ONNX models in the ultralytics export
  contract that respond to those scenes (needs the optional ``onnx`` package).
* :mod:`~pytrickle_worker.demo.graph` -- the small ONNX graph builder those models use.
* :mod:`~pytrickle_worker.demo.assets` -- the demo MPTA and sample video.
* :mod:`~pytrickle_worker.demo.camera` -- ``pytrickle-worker demo camera``: a video served
  as a looping live MPEG-TS camera over HTTP (the compose demo's camera).

``python -m pytrickle_worker.demo OUT_DIR`` builds the assets.
"""
