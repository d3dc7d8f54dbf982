"""Demo and test assets: synthetic scenes, hand-built ONNX models, the demo MPTA.

* :mod:`~pytrickle_worker.demo.synthetic` -- coloured-object scenes with ground
  truth (numpy only).
* :mod:`~pytrickle_worker.demo.models` -- ONNX models in the ultralytics export
  contract that respond to those scenes (needs the optional ``onnx`` package).
* :mod:`~pytrickle_worker.demo.assets` -- the demo MPTA and sample video.

``python -m pytrickle_worker.demo OUT_DIR`` builds the assets.
"""
