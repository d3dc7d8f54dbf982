"""The live view: frames and detections per (label, key), their push/pull routes, and the page."""
