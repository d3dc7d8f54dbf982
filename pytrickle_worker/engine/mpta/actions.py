"""Redis actions of MPTA nodes, run asynchronously and never on the frame loop.

Each Redis server a pipeline names gets its own FIFO of pending jobs and its own sender task,
so one unreachable server never delays the actions of a pipeline that uses another. While a
server is down, jobs wait in a buffer bounded by count and by bytes of held images; when it
overflows, the oldest job is dropped and counted. A job remembers which of its actions already
ran, so a retry after an outage never publishes the same message twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import string
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pytrickle_worker.core.logutil import mask_url
from pytrickle_worker.engine.mpta.spec import Action, RedisConfig, RedisSaveImageAction
from pytrickle_worker.media.jpeg import encode_jpeg

logger = logging.getLogger(__name__)

_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class TemplateError(ValueError):
    """A template names a placeholder that the action context does not have, or formats a
    value with a spec that does not fit it."""

    def __init__(
        self, template: str, key: str, available: Sequence[str], problem: str | None = None
    ) -> None:
        if problem is None:
            super().__init__(
                f"unknown placeholder {{{key}}} in template {template!r}; "
                f"available: {', '.join(sorted(available))}"
            )
        else:
            super().__init__(f"placeholder {{{key}}} in template {template!r}: {problem}")
        self.key = key


class MissingImageError(ValueError):
    """A redis_save_image action ran for a node that has no image to save."""


def _render_value(value: object) -> str:
    # JSON-friendly spelling, so message templates that embed values in JSON stay valid JSON.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_CONVERSIONS: dict[str, Callable[[object], str]] = {"r": repr, "s": str, "a": ascii}
_FORMATTER = string.Formatter()

#: (literal, field, format spec, conversion) parts of a template.
_Parts = tuple[tuple[str, str | None, str, str | None], ...]


@functools.lru_cache(maxsize=256)
def _format_parts(template: str) -> _Parts | None:
    """``template`` read as ``str.format`` reads it, when every field is a plain name; None
    when it is not a format string of that kind (literal JSON braces, ``{0}``, ``{a.b}``)."""
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError:  # a lone brace
        return None
    parts: list[tuple[str, str | None, str, str | None]] = []
    for literal, field_name, spec, conversion in parsed:
        if field_name is not None and (
            not field_name.isidentifier()
            or "{" in (spec or "")
            or conversion not in (None, *_CONVERSIONS)
        ):
            return None
        parts.append((literal, field_name, spec or "", conversion))
    return tuple(parts)


def _value(template: str, context: Mapping[str, object], key: str) -> object:
    if key not in context:
        raise TemplateError(template, key, list(context))
    return context[key]


def render_template(template: str, context: Mapping[str, object]) -> str:
    """Fill a key or message template from the action context.

    Two readings, so both kinds of archive work:

    * a ``str.format`` template, as the original detector worker read it
      (``{{"class":"{class}","conf":"{confidence:.2f}"}}``): escaped braces, format specs and
      ``!r``/``!s``/``!a``;
    * anything ``str.format`` cannot read that way, such as JSON written without escaping
      (``{"class":"{class}"}``, the example of the original's own docs, on which its
      ``str.format`` raised): only ``{identifier}`` placeholders are filled, every other brace
      is left as written.

    A value without a format spec is spelled JSON-style (``None`` → ``null``, ``true``).
    Fields are names only: ``{a.b}`` and ``{a[0]}`` never reach into a value.
    """
    parts = _format_parts(template)
    if parts is None:
        return _PLACEHOLDER_RE.sub(
            lambda match: _render_value(_value(template, context, match.group(1))), template
        )
    out: list[str] = []
    for literal, field_name, spec, conversion in parts:
        out.append(literal)
        if field_name is None:
            continue
        value = _value(template, context, field_name)
        if conversion is not None:
            value = _CONVERSIONS[conversion](value)
        elif not spec:
            out.append(_render_value(value))
            continue
        try:
            out.append(format(value, spec))
        except (ValueError, TypeError) as exc:
            raise TemplateError(
                template, field_name, list(context), f"format spec {spec!r}: {exc}"
            ) from None
    return "".join(out)


def redis_target_url(config: RedisConfig) -> str:
    # Quote the password: characters such as '@' or '/' would otherwise end the userinfo.
    auth = f":{quote(config.password, safe='')}@" if config.password else ""
    return f"redis://{auth}{config.host}:{config.port}/{config.db}"


@dataclass
class ActionJob:
    """The actions of one node for one detection event, with the image that node saw."""

    node_path: str
    actions: Sequence[Action]
    detection: Mapping[str, object]
    image: np.ndarray | None
    context: dict[str, object] = field(default_factory=dict[str, object])
    next_action: int = 0
    jpeg: bytes | None = None

    def __post_init__(self) -> None:
        if not self.context:
            self.context = {
                **self.detection,
                "timestamp_ms": int(time.time() * 1000),
                "uuid": str(uuid.uuid4()),
            }

    @property
    def held_bytes(self) -> int:
        if self.jpeg is not None:
            return len(self.jpeg)
        return int(self.image.nbytes) if self.image is not None else 0


@dataclass
class ActionStats:
    submitted: int = 0
    completed_actions: int = 0
    dropped_overflow: int = 0
    template_errors: int = 0
    failed_actions: int = 0
    redis_outages: int = 0
    redis_errors: int = 0
    pending: int = 0
    pending_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _connect(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(  # pyright: ignore[reportUnknownMemberType] - untyped classmethod in redis-py
        url, socket_connect_timeout=2.0, socket_timeout=5.0, health_check_interval=0
    )


class _TargetQueue:
    """Pending jobs for one Redis server and the task that sends them."""

    def __init__(self, url: str, owner: ActionDispatcher) -> None:
        self.url = url
        self.owner = owner
        self.jobs: deque[ActionJob] = deque()
        self.held_bytes = 0
        self.wakeup = asyncio.Event()
        self.client: aioredis.Redis = _connect(url)
        self.down_since: float | None = None
        self.task: asyncio.Task[None] | None = None

    def push(self, job: ActionJob) -> None:
        self.jobs.append(job)
        self.held_bytes += job.held_bytes
        limits = self.owner
        while len(self.jobs) > 1 and (
            len(self.jobs) > limits.max_pending or self.held_bytes > limits.max_pending_bytes
        ):
            dropped = self.jobs.popleft()
            self.held_bytes -= dropped.held_bytes
            limits.stats.dropped_overflow += 1
            logger.warning(
                "action buffer for %s full: dropped the oldest job (%s); %d dropped so far",
                mask_url(self.url),
                dropped.node_path,
                limits.stats.dropped_overflow,
            )
        self.wakeup.set()

    async def run(self) -> None:
        while True:
            if not self.jobs:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            job = self.jobs[0]
            try:
                await self._execute(job)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self._mark_down(exc)
                await asyncio.sleep(self.owner.retry_interval_s)
                continue
            self._mark_up()
            if self.jobs and self.jobs[0] is job:
                self.jobs.popleft()
                self.held_bytes -= job.held_bytes

    def _mark_down(self, exc: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.owner.stats.redis_outages += 1
            logger.error(
                "redis %s unreachable (%s); holding %d pending action job(s) until it returns",
                mask_url(self.url),
                exc,
                len(self.jobs),
            )

    def _mark_up(self) -> None:
        if self.down_since is not None:
            logger.info(
                "redis %s is back after %.1f s; sending %d pending action job(s)",
                mask_url(self.url),
                time.monotonic() - self.down_since,
                len(self.jobs),
            )
            self.down_since = None

    async def _execute(self, job: ActionJob) -> None:
        stats = self.owner.stats
        while job.next_action < len(job.actions):
            action = job.actions[job.next_action]
            try:
                await self._execute_one(job, action)
                stats.completed_actions += 1
            except (TemplateError, MissingImageError) as exc:
                stats.template_errors += 1
                logger.error("%s: %s action skipped: %s", job.node_path, action.type, exc)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                raise
            except RedisError as exc:
                stats.redis_errors += 1
                stats.failed_actions += 1
                logger.error(
                    "%s: %s action failed on %s: %s",
                    job.node_path,
                    action.type,
                    mask_url(self.url),
                    exc,
                )
            job.next_action += 1

    async def _execute_one(self, job: ActionJob, action: Action) -> None:
        if isinstance(action, RedisSaveImageAction):
            key = render_template(action.key, job.context)
            if job.jpeg is None:
                if job.image is None:
                    raise MissingImageError(f"{job.node_path} produced no image to save")
                before = job.held_bytes
                job.jpeg = await asyncio.to_thread(encode_jpeg, job.image, self.owner.jpeg_quality)
                job.image = None
                self.held_bytes += job.held_bytes - before
            if action.expire_seconds:
                await self.client.set(key, job.jpeg, ex=action.expire_seconds)
            else:
                await self.client.set(key, job.jpeg)
            job.context["image_key"] = key
            logger.debug("%s: saved image to %s", job.node_path, key)
        else:
            message = render_template(action.message, job.context)
            await self.client.publish(action.channel, message)
            logger.debug("%s: published to %s: %s", job.node_path, action.channel, message)


class ActionDispatcher:
    """Runs MPTA node actions against Redis in the background. Owns its Redis clients."""

    def __init__(
        self,
        *,
        max_pending: int = 1000,
        max_pending_bytes: int = 256 * 1024 * 1024,
        retry_interval_s: float = 1.0,
        jpeg_quality: int = 95,  # the original's cv2.imencode default
        redis_url_override: str | None = None,
    ) -> None:
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.retry_interval_s = retry_interval_s
        self.jpeg_quality = jpeg_quality
        self.redis_url_override = redis_url_override
        self.stats = ActionStats()
        self._queues: dict[str, _TargetQueue] = {}
        self._closed = False

    def target_url(self, redis: RedisConfig | None) -> str | None:
        if self.redis_url_override:
            return self.redis_url_override
        return redis_target_url(redis) if redis is not None else None

    def submit(self, redis: RedisConfig | None, job: ActionJob) -> bool:
        """Queue ``job``; never blocks. Returns False when there is nothing to send it to."""
        if self._closed or not job.actions:
            return False
        url = self.target_url(redis)
        if url is None:
            logger.debug("%s has actions but its pipeline names no redis server", job.node_path)
            return False
        queue = self._queues.get(url)
        if queue is None:
            queue = _TargetQueue(url, self)
            queue.task = asyncio.get_running_loop().create_task(
                queue.run(), name=f"redis-actions {mask_url(url)}"
            )
            self._queues[url] = queue
        self.stats.submitted += 1
        queue.push(job)
        return True

    def snapshot(self) -> dict[str, Any]:
        self.stats.pending = sum(len(q.jobs) for q in self._queues.values())
        self.stats.pending_bytes = sum(q.held_bytes for q in self._queues.values())
        return {
            **self.stats.as_dict(),
            "targets": {
                mask_url(url): {"pending": len(q.jobs), "online": q.down_since is None}
                for url, q in self._queues.items()
            },
        }

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every queue is empty or ``timeout_s`` passes; True when all drained."""
        deadline = time.monotonic() + timeout_s
        while any(q.jobs for q in self._queues.values()):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def close(self, drain_timeout_s: float = 5.0) -> None:
        self._closed = True
        drained = await self.drain(drain_timeout_s)
        if not drained:
            lost = sum(len(q.jobs) for q in self._queues.values())
            logger.warning("shutting down with %d action job(s) still pending", lost)
        for queue in self._queues.values():
            if queue.task is not None:
                queue.task.cancel()
        for queue in self._queues.values():
            if queue.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await queue.task
            await queue.client.aclose()
        self._queues.clear()
