"""Media servers the camera-ingest tests run on 127.0.0.1 (see tests/media_fixtures.py).

``rtsp_server.py`` runs under the Debian system Python (GStreamer bindings) as a subprocess;
do not import it from the test process. ``media_http.py`` is an in-process aiohttp server.
"""
