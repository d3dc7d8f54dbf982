"""``GET /health``: the stream door's StreamServer status plus what the worker does for CMS
backends. Its body is built through :class:`WorkerHealth`, which ``/openapi.json`` documents."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pytrickle_worker.frontdoors.streamserver.schemas import StreamHealth
from pytrickle_worker.transport.apidoc import Body, Reply, RouteDoc

__all__ = ["HEALTH_DOCS", "WorkerHealth", "worker_health"]


class WorkerHealth(StreamHealth):
    """StreamServer semantics (``status`` LOADING, IDLE, OK or ERROR; always 200),
    plus the worker's own facts."""

    version: str
    uptime_s: float
    execution_provider: str = Field(description="the ONNX Runtime provider models run on")
    models_loaded: int
    subscriptions: int = Field(description="CMS camera subscriptions")
    backends: int = Field(description="connected CMS backends")
    actions: dict[str, Any] = Field(description="Redis action counters and targets")


def worker_health(stream_body: dict[str, Any], **worker: Any) -> dict[str, Any]:
    """The ``/health`` body: the manager's health body with the worker's fields added."""
    merged = WorkerHealth.model_validate({**stream_body, **worker})
    return merged.model_dump(mode="json", exclude_unset=True)


HEALTH_DOCS: tuple[RouteDoc, ...] = (
    RouteDoc(
        "GET",
        "/health",
        "Worker health (StreamServer semantics)",
        description=(
            "`status` is LOADING while the model loads, then IDLE, OK while a stream runs, "
            "ERROR after a failure; HTTP 200 in every state, as pytrickle's StreamServer "
            "answers. `healthy` is false in ERROR and while the stream's input is stalled."
        ),
        tags=("health",),
        auth="open",
        replies=(Reply(200, "LOADING, IDLE, OK or ERROR", Body(WorkerHealth)),),
    ),
)
