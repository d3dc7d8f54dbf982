"""The StreamServer REST API: schemas, the StreamManager state machine and aiohttp routes.

Mount it on an aiohttp app with :func:`attach` (routes + lifecycle) or add the routes of
:func:`create_api` yourself and call ``manager.startup()`` / ``manager.shutdown()``.
"""

from pytrickle_worker.frontdoors.streamserver.manager import (
    ApiError,
    IdleSession,
    SessionFactory,
    StreamManager,
    StreamSessionLike,
    StreamState,
)
from pytrickle_worker.frontdoors.streamserver.routes import (
    MANAGER_KEY,
    attach,
    create_api,
    health_response,
)
from pytrickle_worker.frontdoors.streamserver.schemas import (
    StartRequest,
    StreamParams,
    parse_start_request,
    split_params_update,
)

__all__ = [
    "MANAGER_KEY",
    "ApiError",
    "IdleSession",
    "SessionFactory",
    "StartRequest",
    "StreamManager",
    "StreamParams",
    "StreamSessionLike",
    "StreamState",
    "attach",
    "create_api",
    "health_response",
    "parse_start_request",
    "split_params_update",
]
