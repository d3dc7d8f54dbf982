"""The engine: MPTA pipelines (:mod:`.mpta`) on ONNX Runtime models run by the one inference
scheduler (:mod:`.inference`), with the tracker (:mod:`.tracking`). It knows nothing of
cameras, streams or front doors: it takes RGB frames and returns detections and actions."""
