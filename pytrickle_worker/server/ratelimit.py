"""Per-client rate limits on the costly routes, with the ``limits`` library (docs/SECURITY.md).

One budget per setting and client address, shared by the routes the setting covers (aliases
of one operation must not multiply it):

- ``rate_limit_labels``: ``GET /labels`` and ``GET /labels/{label}/keys``;
- ``rate_limit_uploads``: ``POST /frames`` and ``WS /ws/frames`` (its upgrade and each upload
  message on it, see :meth:`RateLimiter.message_gate`);
- ``rate_limit_stream_start``: ``/api/stream/start``, ``/stream/start`` and their alias
  ``/live-video-to-video``.

Routes are matched by their canonical (registered) path, so ``/labels/a/keys`` and
``/labels/b/keys`` count against the same budget, and a route counts once it exists.

The strategy is the moving window: at most N hits in any window of the period (a fixed
window would allow 2N across a boundary), and the time until the oldest hit leaves the
window is exactly when the next request may come, which ``Retry-After`` tells the client.

Counters live in this process (``memory://``) or in Redis (``redis://``), so that every pod
behind a Service shares one budget per client. When Redis cannot be reached the limits fail
open: requests pass, a warning is logged once per outage, and limiting resumes when Redis
answers again (a rate limiter must not turn a Redis outage into a worker outage).

The client address is the TCP peer, or, only when ``rate_limit_trusted_header`` names one,
the right-most entry of that header: the right-most is the one the proxy in front of the
worker appended, while everything left of it came from the client and can be forged.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

import limits
import redis.asyncio
from aiohttp import web
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from redis.exceptions import RedisError

from pytrickle_worker.config import RATE_LIMIT_GROUPS, WorkerConfig
from pytrickle_worker.core.logutil import mask_url

logger = logging.getLogger(__name__)

__all__ = ["LIMITED_ROUTES", "RateLimiter", "Refusal"]

#: Canonical route path (pattern) -> the setting (without ``rate_limit_``) that limits it.
LIMITED_ROUTES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"/labels(/\{[^}/]+\}/keys)?"), "labels"),
    (re.compile(r"/(frames|ws/frames)"), "uploads"),
    (re.compile(r"/(api/stream/start|stream/start|live-video-to-video)"), "stream_start"),
)
#: Redis key prefix, so that other applications using ``limits`` on the same Redis never
#: share a counter with the worker.
REDIS_KEY_PREFIX = "ptw-ratelimit"
#: A rate-limit check must not hold a request up for long when Redis is slow: after this
#: the request passes (fail open).
STORAGE_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class Refusal:
    limit: str  # "60 per 1 minute"
    retry_after_s: int


def route_group(route_path: str | None) -> str | None:
    if route_path is None:
        return None
    for pattern, group in LIMITED_ROUTES:
        if pattern.fullmatch(route_path):
            return group
    return None


def _parse_address(entry: str) -> str | None:
    """An IP address from a forwarding header entry (``1.2.3.4``, ``1.2.3.4:5678``,
    ``[2001:db8::1]:443``, ``2001:db8::1``), normalised; None when it is none."""
    text = entry.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


class RateLimiter:
    """Owns the counter storage (``start``/``stop``) and answers: may this client go on?"""

    def __init__(
        self,
        storage_url: str,
        group_limits: Mapping[str, tuple[limits.RateLimitItem, ...]],
        trusted_header: str | None = None,
    ) -> None:
        self._storage_url = storage_url
        self._limits = dict(group_limits)
        self._trusted_header = trusted_header
        self._storage: Storage | None = None
        self._pool: redis.asyncio.ConnectionPool | None = None
        self._strategy: MovingWindowRateLimiter | None = None
        self._storage_down = False
        self._missing_header_logged = False

    @classmethod
    def from_config(cls, config: WorkerConfig) -> RateLimiter | None:
        """None when every limit is off."""
        group_limits: dict[str, tuple[limits.RateLimitItem, ...]] = {}
        for group in RATE_LIMIT_GROUPS:
            setting = config.rate_limit(group)
            if setting is not None:
                group_limits[group] = tuple(limits.parse_many(setting))
        if not group_limits:
            return None
        return cls(config.rate_limit_storage, group_limits, config.rate_limit_trusted_header)

    @property
    def uses_redis(self) -> bool:
        return not self._storage_url.startswith("memory://")

    def describe(self) -> str:
        parts = [f"{group} {'; '.join(map(str, items))}" for group, items in self._limits.items()]
        where = mask_url(self._storage_url) if self.uses_redis else "in memory"
        client = (
            f"client from {self._trusted_header} (right-most)"
            if self._trusted_header
            else "client = peer address"
        )
        return f"rate limits ({where}, {client}): {', '.join(parts)}"

    def limited(self, group: str | None) -> bool:
        return group is not None and group in self._limits

    async def start(self) -> None:
        if self.uses_redis:
            # Our own pool, so stop() can close it; short socket timeouts so that a Redis that
            # does not answer fails open quickly instead of holding requests.
            self._pool = redis.asyncio.ConnectionPool.from_url(
                self._storage_url,
                socket_connect_timeout=STORAGE_TIMEOUT_S,
                socket_timeout=STORAGE_TIMEOUT_S,
            )
            self._storage = RedisStorage(
                f"async+{self._storage_url}",
                wrap_exceptions=True,
                implementation="redispy",
                key_prefix=REDIS_KEY_PREFIX,
                # limits hands it on to redis.asyncio.Redis(connection_pool=...); its options
                # are typed as scalars only.
                connection_pool=self._pool,  # pyright: ignore[reportArgumentType]
            )
        else:
            self._storage = MemoryStorage()
        self._strategy = MovingWindowRateLimiter(self._storage)
        logger.info("%s", self.describe())

    async def stop(self) -> None:
        storage, self._storage, self._strategy = self._storage, None, None
        if isinstance(storage, MemoryStorage):
            await storage.reset()  # also cancels its expiry task
        if self._pool is not None:
            await self._pool.disconnect()
            self._pool = None

    async def lifecycle(self, _app: web.Application) -> AsyncIterator[None]:
        """For ``app.cleanup_ctx``."""
        await self.start()
        yield
        await self.stop()

    def client_address(self, request: web.BaseRequest) -> str:
        peer = request.remote or "unknown"
        if self._trusted_header is None:
            return peer
        entries = [
            entry
            for value in request.headers.getall(self._trusted_header, [])
            for entry in value.split(",")
            if entry.strip()
        ]
        address = _parse_address(entries[-1]) if entries else None
        if address is None:
            if not self._missing_header_logged:
                self._missing_header_logged = True
                logger.warning(
                    "rate limits: %s %s from %s has no usable %s header; counting the peer "
                    "address (is the proxy setting it?); logged once",
                    request.method,
                    request.path,
                    peer,
                    self._trusted_header,
                )
            return peer
        return address

    async def check(self, group: str, client: str) -> Refusal | None:
        """Counts one request of ``client`` against ``group``'s limits; a :class:`Refusal`
        when one of them is exhausted, None to let it pass."""
        strategy = self._strategy
        items = self._limits.get(group)
        if strategy is None or not items:
            return None
        try:
            async with asyncio.timeout(STORAGE_TIMEOUT_S * 2):
                for item in items:
                    if not await strategy.hit(item, group, client):
                        stats = await strategy.get_window_stats(item, group, client)
                        retry = max(1, math.ceil(stats.reset_time - time.time()))
                        self._storage_recovered()
                        return Refusal(str(item), retry)
        except (StorageError, RedisError, OSError, TimeoutError) as exc:
            if not self._storage_down:
                self._storage_down = True
                logger.warning(
                    "rate limits off: storage %s unavailable (%s); requests pass unlimited "
                    "until it answers again",
                    mask_url(self._storage_url),
                    type(exc).__name__,
                )
            return None
        self._storage_recovered()
        return None

    def message_gate(self, group: str) -> Callable[[web.BaseRequest], Awaitable[str | None]] | None:
        """Counts each message of a socket that ``group``'s route opened, like a request of
        its own (the upgrade is one request; the uploads over the socket are many). The gate
        answers None to let a message through, else the refusal with the seconds to wait.
        None when ``group`` is not limited."""
        if not self.limited(group):
            return None

        async def admit(request: web.BaseRequest) -> str | None:
            refusal = await self.check(group, self.client_address(request))
            if refusal is None:
                return None
            return f"rate limit exceeded: {refusal.limit}; retry in {refusal.retry_after_s} s"

        return admit

    def _storage_recovered(self) -> None:
        if self._storage_down:
            self._storage_down = False
            logger.warning("rate limits on again: storage %s answers", mask_url(self._storage_url))
