"""The front doors: thin adapters that open streams and subscribe sinks.

* :mod:`.cms` -- the CMS worker protocol (WebSocket at ``/``): camera-hub subscription ->
  processor -> ``imageDetection``.
* :mod:`.streamserver` -- pytrickle's StreamServer REST API: trickle input -> processor ->
  trickle output and data channel.
"""
