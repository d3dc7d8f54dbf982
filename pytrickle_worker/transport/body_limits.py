"""Per-route request-body limits.

The app's ``client_max_size`` (``max_message_bytes``) bounds every body; a route that takes
bigger ones (image uploads) and reads them itself with its own hard limit registers that
limit here, and the body-size middleware applies it to that route instead.
"""

from __future__ import annotations

from aiohttp import web

__all__ = ["ROUTE_BODY_LIMITS", "route_body_limit", "set_route_body_limit"]

#: Route (as registered, e.g. ``/frames``) -> its body limit in bytes.
ROUTE_BODY_LIMITS = web.AppKey("route_body_limits", dict[str, int])


def set_route_body_limit(app: web.Application, route_path: str, limit: int) -> None:
    """Let ``route_path`` take bodies of up to ``limit`` bytes (call before the app starts)."""
    if limit < 1:
        raise ValueError(f"body limit must be >= 1, got {limit}")
    limits = app.get(ROUTE_BODY_LIMITS)
    if limits is None:
        limits = app[ROUTE_BODY_LIMITS] = {}
    limits[route_path] = limit


def route_body_limit(request: web.Request) -> int:
    """The body limit of the request's route: its own, else the app's ``client_max_size``."""
    limits = request.app.get(ROUTE_BODY_LIMITS)
    resource = request.match_info.route.resource
    if limits and resource is not None:
        own = limits.get(resource.canonical)
        if own is not None:
            return own
    return request.client_max_size
