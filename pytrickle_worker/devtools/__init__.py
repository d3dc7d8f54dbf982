"""Dev tools: demo and test assets, the demo camera and publisher, the local trickle server.

The running worker never imports this package (the import contract checks it); the CLI
loads it for ``pytrickle-worker demo ...`` and ``pytrickle-worker trickle-server``.

* :mod:`~pytrickle_worker.devtools.synthetic` -- coloured-object scenes with ground
  truth (numpy only).
* :mod:`~pytrickle_worker.devtools.models` -- ONNX models in the ultralytics export
  contract that respond to those scenes (needs the optional ``onnx`` package).
* :mod:`~pytrickle_worker.devtools.graph` -- the small ONNX graph builder those models use.
* :mod:`~pytrickle_worker.devtools.assets` -- the demo MPTA and sample video.
* :mod:`~pytrickle_worker.devtools.camera` -- ``pytrickle-worker demo camera``: a video served
  as a looping live MPEG-TS camera over HTTP (the compose demo's camera).
* :mod:`~pytrickle_worker.devtools.publish` -- ``pytrickle-worker demo publish``: a video
  published into a trickle channel.
* :mod:`~pytrickle_worker.devtools.trickle_server` -- the local trickle server (go-livepeer's
  ``trickle_server.go`` wire behaviour) for ``pytrickle-worker trickle-server`` and tests.

``python -m pytrickle_worker.devtools OUT_DIR`` builds the assets.
"""
