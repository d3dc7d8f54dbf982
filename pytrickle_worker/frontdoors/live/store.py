"""Where live frames are kept: in this process (:class:`MemoryFrameStore`, the default) or
in Redis Streams (:class:`RedisFrameStore`), one bounded stream per (label, key).

Both behave the same for the routes: ``add`` (or ``add_blocking``, the live writer's
thread's call) keeps the newest ``maxlen`` entries of a key
and makes the key expire ``ttl_s`` after its last write (or
:meth:`FrameStore.touch_blocking`), so
the frames of a dead worker disappear; ``labels``/``keys``/``latest`` list what is there;
``read_new`` follows new entries of a label, picking up keys that appear later.

A store that cannot be reached raises :class:`StoreUnavailableError` (never a Redis exception).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from pytrickle_worker.core.errors import WorkerError
from pytrickle_worker.core.logutil import mask_url
from pytrickle_worker.core.wakeup import resolve_waiter
from pytrickle_worker.frontdoors.live.model import (
    DEFAULT_KEY_PREFIX,
    REDIS_FIELD_NAMES,
    LiveEntry,
    StoredEntry,
    entry_id_order,
    parse_stream_name,
    stream_name,
)

__all__ = [
    "FollowCursor",
    "FrameStore",
    "MemoryFrameStore",
    "RedisFrameStore",
    "StoreUnavailableError",
]

logger = logging.getLogger(__name__)

#: How often a follower looks for new keys under its label (Redis: a read of the index).
KEY_SCAN_INTERVAL_S = 1.0
#: The most often a writer refreshes one stream's index entry (seconds; a quarter of the TTL
#: when that is shorter).
INDEX_REFRESH_S = 5.0


class StoreUnavailableError(WorkerError):
    """The store cannot be reached (Redis down or too slow); the message says why."""


@dataclass
class FollowCursor:
    """Where a follower of one label is: the last entry id it saw per key.

    A new cursor starts at the newest entries present (they are not returned again); a key
    that appears later starts at its newest entry, which is returned.
    """

    ids: dict[str, str] = field(default_factory=dict[str, str])
    primed: bool = False
    next_scan: float = 0.0


class FrameStore(abc.ABC):
    """The live view's frames; see the module docstring."""

    #: "memory" or "redis", for logs, /metrics and docs.
    kind: str = ""

    def __init__(self, *, maxlen: int, ttl_s: float) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be >= 1, got {maxlen}")
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self.maxlen = maxlen
        self.ttl_s = ttl_s

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Prepare (nothing to do for most stores)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def describe(self) -> str:
        return self.kind

    @abc.abstractmethod
    async def add(self, label: str, key: str, entry: LiveEntry) -> str:
        """Append ``entry`` (trim to ``maxlen``, expire in ``ttl_s``); its entry id."""

    @abc.abstractmethod
    def add_blocking(self, label: str, key: str, entry: LiveEntry) -> str:
        """:meth:`add` from a worker thread (never on the event loop: it may wait on the
        network); what the live writer's render thread calls."""

    @abc.abstractmethod
    def touch_blocking(self, label: str, key: str) -> bool:
        """Push the key's expiry ``ttl_s`` into the future; False when it does not exist.
        From a worker thread (the live writer's keep-alive)."""

    @abc.abstractmethod
    async def latest(self, label: str, key: str) -> StoredEntry | None:
        """The newest entry of (label, key), or None."""

    @abc.abstractmethod
    async def labels(self) -> list[str]:
        """Every label that has a key, sorted."""

    @abc.abstractmethod
    async def keys(self, label: str) -> list[StoredEntry]:
        """The newest entry of every key under ``label``, sorted by key."""

    @abc.abstractmethod
    async def entries(self, label: str, key: str) -> list[StoredEntry]:
        """Every entry of (label, key) that is kept, oldest first."""

    @abc.abstractmethod
    async def read_new(
        self, label: str, cursor: FollowCursor, timeout_s: float
    ) -> list[StoredEntry]:
        """Entries of ``label`` newer than ``cursor`` (which moves on), waiting up to
        ``timeout_s`` for one; an empty list when none came."""


# ---------------------------------------------------------------------- in memory


@dataclass
class _MemoryStream:
    entries: deque[StoredEntry]
    expires_at: float
    last_ms: int = 0
    last_seq: int = 0


class MemoryFrameStore(FrameStore):
    """The store in this process, with the Redis store's behaviour (ids, maxlen, TTL).

    The writer's thread adds while the event loop reads: one lock guards the streams. A
    follower waiting in :meth:`read_new` leaves a future that the next ``add`` resolves on the
    follower's loop; without followers an ``add`` wakes nothing.
    """

    kind = "memory"

    def __init__(self, *, maxlen: int = 10, ttl_s: float = 30.0) -> None:
        super().__init__(maxlen=maxlen, ttl_s=ttl_s)
        self._streams: dict[tuple[str, str], _MemoryStream] = {}
        self._lock = threading.Lock()
        self._waiters: list[asyncio.Future[None]] = []

    def _live(self) -> dict[tuple[str, str], _MemoryStream]:
        """The unexpired streams (the caller holds the lock)."""
        now = time.monotonic()
        expired = [name for name, s in self._streams.items() if s.expires_at <= now]
        for name in expired:
            del self._streams[name]
        return self._streams

    def add_blocking(self, label: str, key: str, entry: LiveEntry) -> str:
        with self._lock:
            streams = self._live()
            stream = streams.get((label, key))
            if stream is None:
                stream = streams[(label, key)] = _MemoryStream(deque(maxlen=self.maxlen), 0.0)
            ms = int(time.time() * 1000)
            if ms > stream.last_ms:
                stream.last_ms, stream.last_seq = ms, 0
            else:
                stream.last_seq += 1
            entry_id = f"{stream.last_ms}-{stream.last_seq}"
            stream.entries.append(StoredEntry(label, key, entry_id, entry))
            stream.expires_at = time.monotonic() + self.ttl_s
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            resolve_waiter(waiter)
        return entry_id

    async def add(self, label: str, key: str, entry: LiveEntry) -> str:
        return self.add_blocking(label, key, entry)  # memory only: it never waits

    def touch_blocking(self, label: str, key: str) -> bool:
        with self._lock:
            stream = self._live().get((label, key))
            if stream is None:
                return False
            stream.expires_at = time.monotonic() + self.ttl_s
            return True

    async def latest(self, label: str, key: str) -> StoredEntry | None:
        with self._lock:
            stream = self._live().get((label, key))
            return stream.entries[-1] if stream is not None and stream.entries else None

    async def labels(self) -> list[str]:
        with self._lock:
            return sorted({label for label, _ in self._live()})

    async def keys(self, label: str) -> list[StoredEntry]:
        with self._lock:
            found = [
                s.entries[-1] for (lab, _), s in self._live().items() if lab == label and s.entries
            ]
        return sorted(found, key=lambda e: e.key)

    async def entries(self, label: str, key: str) -> list[StoredEntry]:
        with self._lock:
            stream = self._live().get((label, key))
            return list(stream.entries) if stream is not None else []

    def _newer(self, label: str, cursor: FollowCursor) -> list[StoredEntry]:
        """Entries newer than ``cursor`` (the caller holds the lock)."""
        fresh: list[StoredEntry] = []
        streams = self._live()
        for gone in [key for key in cursor.ids if (label, key) not in streams]:
            del cursor.ids[gone]  # expired: if it comes back, it is a new key
        for (lab, key), stream in streams.items():
            if lab != label or not stream.entries:
                continue
            seen = cursor.ids.get(key)
            if seen is None:
                newest = stream.entries[-1]
                cursor.ids[key] = newest.id
                if cursor.primed:
                    fresh.append(newest)
                continue
            after = entry_id_order(seen)
            new = [e for e in stream.entries if entry_id_order(e.id) > after]
            if new:
                cursor.ids[key] = new[-1].id
                fresh.extend(new)
        cursor.primed = True
        return fresh

    async def read_new(
        self, label: str, cursor: FollowCursor, timeout_s: float
    ) -> list[StoredEntry]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            fresh = self._newer(label, cursor)
            if fresh:
                return fresh
            self._waiters.append(waiter)  # under the lock: no add slips in between
        try:
            async with asyncio.timeout(timeout_s):
                await waiter
        except TimeoutError:
            return []
        finally:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        with self._lock:
            return self._newer(label, cursor)


# ---------------------------------------------------------------------- Redis


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


_Row = tuple[str, dict[bytes, bytes]]


def _rows(reply: object) -> list[_Row]:
    """``(entry id, fields)`` of an XRANGE/XREVRANGE reply (redis-py leaves it untyped)."""
    rows: list[_Row] = []
    if not isinstance(reply, list | tuple):
        return rows
    for row in cast("Sequence[object]", reply):
        if isinstance(row, list | tuple) and len(cast("Sequence[object]", row)) == 2:
            entry_id, fields = cast("Sequence[object]", row)
            if isinstance(fields, dict):
                rows.append((_text(entry_id), cast("dict[bytes, bytes]", fields)))
    return rows


def _streams(reply: object) -> list[tuple[str, list[_Row]]]:
    """``(stream name, rows)`` of an XREAD reply."""
    found: list[tuple[str, list[_Row]]] = []
    if not isinstance(reply, list | tuple):
        return found
    for item in cast("Sequence[object]", reply):
        if isinstance(item, list | tuple) and len(cast("Sequence[object]", item)) == 2:
            name, rows = cast("Sequence[object]", item)
            found.append((_text(name), _rows(rows)))
    return found


def _bulk(arg: bytes | str | int) -> bytes:
    """One argument as a RESP bulk string."""
    if isinstance(arg, str):
        data = arg.encode()
    elif isinstance(arg, int):
        data = b"%d" % arg
    else:
        data = arg
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _resp(*commands: Sequence[bytes | str | int]) -> bytes:
    """Commands in the Redis protocol (RESP arrays of bulk strings), back to back."""
    parts: list[bytes] = []
    for command in commands:
        parts.append(b"*%d\r\n" % len(command))
        parts += (_bulk(arg) for arg in command)
    return b"".join(parts)


#: An entry's field names as RESP bulk strings, in :data:`REDIS_FIELD_NAMES` order.
_FIELD_HEADS = tuple(_bulk(name) for name in REDIS_FIELD_NAMES)
#: (label, key)s whose packed commands a store keeps (forgotten all at once past this).
_MAX_PACKED = 4096

#: Streams remembered as logged for an unreadable entry (see RedisFrameStore._stored).
MAX_UNREADABLE_LOGGED = 1024


class RedisFrameStore(FrameStore):
    """Redis Streams: ``XADD MAXLEN = maxlen`` then ``PEXPIRE ttl`` per write (one round trip).

    The streams are found through an index, a sorted set ``<prefix>index`` of stream names
    scored by their last write (milliseconds), not by SCAN: a SCAN walks every key of the
    database, which in a Redis shared with other data is thousands of round trips per
    second per viewer. A writer refreshes a stream's score at most every ``index_refresh_s``
    (in the same round trip as a write), trims names older than ``ttl + index_refresh_s``
    and keeps the index's own TTL there; readers take the names scored within that window
    and keep those whose stream still exists. Streams written without the index (by a
    worker older than it) are not listed.

    Every command is bounded by ``timeout_s`` and retried by nobody here: a failure raises
    :class:`StoreUnavailableError` at once, so the writer can drop and count.

    Two clients with the same settings: an asyncio one for the routes, uploads and followers,
    and a blocking one for the writer's thread (``add_blocking``, ``touch_blocking``), which
    writes without waking the event loop.
    """

    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        maxlen: int = 10,
        ttl_s: float = 30.0,
        prefix: str = DEFAULT_KEY_PREFIX,
        timeout_s: float = 2.0,
    ) -> None:
        super().__init__(maxlen=maxlen, ttl_s=ttl_s)
        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        self._client: aioredis.Redis = aioredis.Redis.from_url(  # pyright: ignore[reportUnknownMemberType] - untyped classmethod in redis-py
            url,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            # The asyncio client's own Retry: given redis-py's blocking one it warns at
            # every store (a UserWarning in the worker's log) and converts it.
            retry=AsyncRetry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._blocking_pool = redis.ConnectionPool.from_url(  # pyright: ignore[reportUnknownMemberType] - untyped classmethod in redis-py
            url,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        #: The writer thread's one connection, kept (never returned to the pool) and used
        #: under ``_blocking_lock``; None until the first write.
        self._blocking_conn: redis.Connection | None = None
        self._blocking_lock = threading.Lock()
        #: ``_commands_of``'s packed commands per (label, key), bounded (the writer thread's
        #: alone, like the connection).
        self._packed: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        self.index_key = f"{prefix}index"
        self.index_refresh_s = min(INDEX_REFRESH_S, max(ttl_s / 4, 0.05))
        #: When the writer thread last indexed each (label, key) (monotonic seconds);
        #: forgotten on a failed write (Redis may have lost the index), bounded like _packed.
        self._indexed: dict[tuple[str, str], float] = {}
        #: Streams with an entry this store cannot read (another producer under the same
        #: prefix): logged once each, not at every read. Bounded: cleared when full.
        self._unreadable_logged: set[tuple[str, str]] = set()

    def describe(self) -> str:
        return f"redis {mask_url(self.url)}"

    async def close(self) -> None:
        await self._client.aclose()
        # Without the writer thread's lock: a call stuck on a dead server must not hold up
        # the event loop; closing its socket ends that call with an error.
        self._blocking_conn = None
        self._blocking_pool.disconnect()  # closes the sockets: no network wait

    @property
    def _ttl_ms(self) -> int:
        return max(1, round(self.ttl_s * 1000))

    @property
    def _index_window_ms(self) -> int:
        """How far back an index score still names a live stream: its TTL, plus the longest
        a writer waits between two refreshes of it."""
        return self._ttl_ms + max(1, round(self.index_refresh_s * 1000))

    def _index_commands(self, name: str) -> tuple[tuple[bytes | str | int, ...], ...]:
        """Score ``name`` now, drop names past the window, and keep the index's TTL."""
        now_ms = round(time.time() * 1000)
        window = self._index_window_ms
        return (
            ("ZADD", self.index_key, now_ms, name),
            ("ZREMRANGEBYSCORE", self.index_key, "-inf", f"({now_ms - window}"),
            ("PEXPIRE", self.index_key, window),
        )

    def _index_due(self, label: str, key: str) -> bool:
        """Whether the writer thread should refresh (label, key)'s index entry now."""
        now = time.monotonic()
        last = self._indexed.get((label, key))
        if last is not None and now - last < self.index_refresh_s:
            return False
        if len(self._indexed) >= _MAX_PACKED:
            self._indexed.clear()
        self._indexed[(label, key)] = now
        return True

    def _failed(self, what: str, exc: BaseException) -> StoreUnavailableError:
        return StoreUnavailableError(f"{what} on {mask_url(self.url)} failed: {exc}")

    async def add(self, label: str, key: str, entry: LiveEntry) -> str:
        name = stream_name(self.prefix, label, key)
        try:
            async with asyncio.timeout(self.timeout_s):
                # One round trip without MULTI/EXEC: nothing needs the pair atomic (a reader
                # seeing the entry before its PEXPIRE loses nothing), and the transaction's
                # two extra commands and replies were a third of the write's CPU.
                async with self._client.pipeline(transaction=False) as pipe:
                    pipe.xadd(
                        name,
                        entry.redis_fields(),  # pyright: ignore[reportArgumentType] - bytes values, which redis-py sends as they are
                        maxlen=self.maxlen,
                        approximate=False,
                    )
                    pipe.pexpire(name, self._ttl_ms)
                    for command in self._index_commands(name):  # uploads: rare, always
                        pipe.execute_command(*command)
                    results: list[object] = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._failed("XADD", exc) from None
        return _text(results[0])

    def _blocking_call(self, what: str, packed: bytes, replies: int) -> list[object]:
        """Send ``packed`` (RESP commands) on the writer's connection and read ``replies``.

        redis-py's pipeline costs twice the write itself in Python per frame (command stack,
        per-argument encoding, pool checks); the commands here are packed in one join and
        sent on one kept connection, with redis-py connecting (AUTH, SELECT, TLS) and parsing
        the replies. Bounded by the socket timeouts (connect, then each send and reply).
        """
        with self._blocking_lock:
            conn = self._blocking_conn
            try:
                if conn is None:
                    conn = self._blocking_conn = self._blocking_pool.get_connection()
                conn.send_packed_command([packed], check_health=False)
                return [conn.read_response() for _ in range(replies)]  # pyright: ignore[reportUnknownMemberType] - untyped in redis-py
            except (RedisError, OSError) as exc:
                if conn is not None:
                    conn.disconnect()  # unread replies: reconnect on the next call
                self._indexed.clear()  # a restarted Redis has lost the index: write it again
                raise self._failed(what, exc) from None

    def add_blocking(self, label: str, key: str, entry: LiveEntry) -> str:
        head, pexpire = self._commands_of(label, key)
        parts = [head]
        for field_head, value in zip(_FIELD_HEADS, entry.redis_values(), strict=True):
            parts += (field_head, b"$%d\r\n" % len(value), value, b"\r\n")
        parts.append(pexpire)
        replies = 2
        if self._index_due(label, key):
            index = self._index_commands(stream_name(self.prefix, label, key))
            parts.append(_resp(*index))
            replies += len(index)
        return _text(self._blocking_call("XADD", b"".join(parts), replies)[0])

    def _commands_of(self, label: str, key: str) -> tuple[bytes, bytes]:
        """The start of a (label, key)'s ``XADD`` up to its fields, and its ``PEXPIRE``, in
        the Redis protocol: the same for every frame of a camera, so packed once."""
        found = self._packed.get((label, key))
        if found is None:
            if len(self._packed) >= _MAX_PACKED:
                self._packed.clear()
            name = stream_name(self.prefix, label, key)
            xadd = ("XADD", name, "MAXLEN", "=", self.maxlen, "*")
            head = b"*%d\r\n" % (len(xadd) + 2 * len(_FIELD_HEADS)) + b"".join(map(_bulk, xadd))
            found = self._packed[(label, key)] = (head, _resp(("PEXPIRE", name, self._ttl_ms)))
        return found

    def touch_blocking(self, label: str, key: str) -> bool:
        _, pexpire = self._commands_of(label, key)
        if not self._index_due(label, key):
            [reply] = self._blocking_call("PEXPIRE", pexpire, 1)
            return bool(reply)
        index = self._index_commands(stream_name(self.prefix, label, key))
        replies = self._blocking_call("PEXPIRE", pexpire + _resp(*index), 1 + len(index))
        return bool(replies[0])

    def _stored(
        self, label: str, key: str, entry_id: str, fields: dict[bytes, bytes]
    ) -> StoredEntry | None:
        try:
            return StoredEntry(label, key, entry_id, LiveEntry.from_redis_fields(fields))
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            if (label, key) not in self._unreadable_logged:
                if len(self._unreadable_logged) >= MAX_UNREADABLE_LOGGED:
                    self._unreadable_logged.clear()
                self._unreadable_logged.add((label, key))
                logger.warning(
                    "live: unreadable entry in %s/%s skipped (not logged again for this "
                    "stream): %s",
                    label,
                    key,
                    exc,
                )
            return None

    async def latest(self, label: str, key: str) -> StoredEntry | None:
        name = stream_name(self.prefix, label, key)
        try:
            async with asyncio.timeout(self.timeout_s):
                reply: object = await self._client.xrevrange(name, count=1)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._failed("XREVRANGE", exc) from None
        for entry_id, fields in _rows(reply):
            return self._stored(label, key, entry_id, fields)
        return None

    async def entries(self, label: str, key: str) -> list[StoredEntry]:
        name = stream_name(self.prefix, label, key)
        try:
            async with asyncio.timeout(self.timeout_s):
                reply: object = await self._client.xrange(name)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._failed("XRANGE", exc) from None
        found = (self._stored(label, key, i, f) for i, f in _rows(reply))
        return [e for e in found if e is not None]

    async def _scan(self, label: str | None) -> list[tuple[str, str, str]]:
        """``(stream name, label, key)`` of every stream (of ``label``) under the prefix that
        exists: the index's names within its window, checked with EXISTS."""
        since = round(time.time() * 1000) - self._index_window_ms
        try:
            async with asyncio.timeout(self.timeout_s):
                raw = cast(
                    "object", await self._client.zrangebyscore(self.index_key, since, "+inf")
                )
                names = cast("Sequence[object]", raw) if isinstance(raw, list | tuple) else ()
                candidates: list[tuple[str, str, str]] = []
                for item in names:
                    name = _text(item)
                    parsed = parse_stream_name(self.prefix, name)
                    if parsed is not None and (label is None or parsed[0] == label):
                        candidates.append((name, *parsed))
                if not candidates:
                    return []
                async with self._client.pipeline(transaction=False) as pipe:
                    for name, _, _ in candidates:
                        pipe.exists(name)
                    exists: list[object] = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._failed("ZRANGEBYSCORE", exc) from None
        return [row for row, alive in zip(candidates, exists, strict=True) if alive]

    async def labels(self) -> list[str]:
        return sorted({label for _, label, _ in await self._scan(None)})

    async def _newest(self, names: Iterable[tuple[str, str, str]]) -> list[StoredEntry]:
        rows = list(names)
        if not rows:
            return []
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self._client.pipeline(transaction=False) as pipe:
                    for name, _, _ in rows:
                        pipe.xrevrange(name, count=1)
                    results: list[object] = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._failed("XREVRANGE", exc) from None
        newest: list[StoredEntry] = []
        for (_, label, key), result in zip(rows, results, strict=True):
            for entry_id, fields in _rows(result):  # empty when the key expired meanwhile
                stored = self._stored(label, key, entry_id, fields)
                if stored is not None:
                    newest.append(stored)
        return newest

    async def keys(self, label: str) -> list[StoredEntry]:
        return sorted(await self._newest(await self._scan(label)), key=lambda e: e.key)

    async def read_new(
        self, label: str, cursor: FollowCursor, timeout_s: float
    ) -> list[StoredEntry]:
        fresh: list[StoredEntry] = []
        loop = asyncio.get_running_loop()
        if loop.time() >= cursor.next_scan:
            cursor.next_scan = loop.time() + KEY_SCAN_INTERVAL_S
            found = await self._scan(label)
            present = {key for _, _, key in found}
            for gone in [key for key in cursor.ids if key not in present]:
                del cursor.ids[gone]  # expired: if it comes back, it is a new key
            new = [row for row in found if row[2] not in cursor.ids]
            for stored in await self._newest(new):
                cursor.ids[stored.key] = stored.id
                if cursor.primed:
                    fresh.append(stored)
            cursor.primed = True
        if fresh:
            return fresh
        # Block no longer than until the next key scan, so new keys show up within it.
        wait_s = max(0.0, min(timeout_s, cursor.next_scan - loop.time()))
        if not cursor.ids:
            await asyncio.sleep(wait_s)
            return []
        streams: dict[str, str] = {
            stream_name(self.prefix, label, key): entry_id for key, entry_id in cursor.ids.items()
        }
        block_ms = max(1, round(wait_s * 1000))
        try:
            async with asyncio.timeout(self.timeout_s + wait_s):
                reply: object = await self._client.xread(
                    streams,  # pyright: ignore[reportArgumentType] - str names and ids are what redis-py takes
                    block=block_ms,
                )
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._failed("XREAD", exc) from None
        for name, rows in _streams(reply):
            parsed = parse_stream_name(self.prefix, name)
            if parsed is None:
                continue
            for entry_id, fields in rows:
                stored = self._stored(parsed[0], parsed[1], entry_id, fields)
                cursor.ids[parsed[1]] = entry_id
                if stored is not None:
                    fresh.append(stored)
        return fresh
