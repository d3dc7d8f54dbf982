"""The live view's routes (docs/LIVE.md), thin over :class:`LiveView`.

* ``GET /labels``: ``{"labels": [...]}``, the labels that have frames, sorted.
* ``GET /labels/{label}/keys``: the newest entry's metadata of every key (404 unknown label).
* ``WS /ws/labels/{label}``: push: every new frame of every key of the label (binary framing:
  JSON header, ``--IMG--``, JPEG), starting with the newest frame of each key; keys that
  appear later are picked up. Unknown label: one JSON error, then close 4404.
* ``WS /ws/stream/{label}/{key}``: pull: ``{"action": "pull"}`` answers the newest frame,
  ``{"action": "ping"}`` answers ``{"action": "pong"}``; anything else gets a JSON error
  naming the problem, and the socket stays open.

Every WebSocket selects the subprotocol ``ptw.live`` when the client offers it (browsers
offer it beside the one that carries the access token).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any, cast

from aiohttp import WSMsgType, web

from pytrickle_worker.frontdoors.live.model import frame_message
from pytrickle_worker.frontdoors.live.schemas import FrameHeader, KeySummary, LabelKeys, LabelList
from pytrickle_worker.frontdoors.live.store import StoreUnavailableError
from pytrickle_worker.frontdoors.live.view import LiveView
from pytrickle_worker.processing.sink import check_live_name
from pytrickle_worker.transport.apidoc import Body, Reply, RouteDoc
from pytrickle_worker.transport.credentials import close_when_credentials_expire
from pytrickle_worker.transport.http_errors import error_response

__all__ = ["LIVE_ROUTE_DOCS", "LIVE_SUBPROTOCOL", "WS_UNKNOWN_LABEL", "LiveRoutes", "store_down"]

logger = logging.getLogger(__name__)

LIVE_SUBPROTOCOL = "ptw.live"
#: Close code of a push socket for a label without keys (4000-4999: the application's own).
WS_UNKNOWN_LABEL = 4404
WS_BAD_NAME = 4400
WS_STORE_UNAVAILABLE = 1011
#: Largest text message a live socket accepts (its messages are tiny JSON objects).
MAX_WS_MESSAGE_BYTES = 64 * 1024


def _error(message: str) -> dict[str, str]:
    # "error" too: the reference streaming backend's clients read their errors there.
    return {"status": "error", "message": message, "error": message}


def store_down(exc: StoreUnavailableError) -> str:
    """What a client is told when the store cannot be reached: not the store's address or
    Redis's error text, which name the deployment's internals (the log has them)."""
    logger.info("live: a request found the store unavailable: %s", exc)
    return "live store unavailable: Redis did not answer; try again shortly"


def _peer(request: web.BaseRequest) -> str:
    return request.remote or "?"


class LiveRoutes:
    """The handlers; ``routes()`` lists them for ``app.router.add_routes``."""

    def __init__(
        self,
        view: LiveView,
        *,
        max_viewers: int = 512,
        max_viewers_per_client: int = 0,
        max_pulls_per_s: float = 20.0,
        client_of: Callable[[web.BaseRequest], str] | None = None,
    ) -> None:
        """``client_of``: a request's client address (the rate limiter's, which honours the
        trusted proxy header); the TCP peer without one."""
        self.view = view
        self.max_viewers = max_viewers
        self.max_viewers_per_client = max_viewers_per_client
        self._client_of: Callable[[web.BaseRequest], str] = client_of or _peer
        #: Each open socket's client address.
        self._client_of_socket: dict[web.WebSocketResponse, str] = {}
        #: Shortest time between two pulls of one socket (each is a store read).
        self.min_pull_interval_s = 1.0 / max_pulls_per_s

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/labels", self.labels),
            web.get("/labels/{label}/keys", self.keys),
            web.get("/ws/labels/{label}", self.push),
            web.get("/ws/stream/{label}/{key}", self.pull),
        ]

    # ------------------------------------------------------------------ REST

    async def labels(self, request: web.Request) -> web.Response:
        try:
            labels = await self.view.store.labels()
        except StoreUnavailableError as exc:
            return error_response(503, store_down(exc))
        return web.json_response(LabelList(labels=labels).model_dump())

    async def keys(self, request: web.Request) -> web.Response:
        label = request.match_info["label"]
        try:
            check_live_name(label)
            newest = await self.view.store.keys(label)
        except ValueError as exc:
            return error_response(400, str(exc))
        except StoreUnavailableError as exc:
            return error_response(503, store_down(exc))
        if not newest:
            return error_response(404, f"unknown label '{label}'")
        keys = [KeySummary.model_validate(entry.key_summary()) for entry in newest]
        return web.json_response(LabelKeys(label=label, keys=keys).model_dump())

    # ------------------------------------------------------------------ WebSockets

    def _full(self, request: web.Request, client: str) -> web.Response | None:
        """A 503 when ``live_max_viewers`` sockets are open already, or this client holds
        ``live_max_viewers_per_client``, else None."""
        cap = self.max_viewers_per_client
        if cap and list(self._client_of_socket.values()).count(client) >= cap:
            logger.warning(
                "live: %s from %s refused: it holds %d sockets (live_max_viewers_per_client)",
                request.path,
                client,
                cap,
            )
            return error_response(
                503, f"too many live viewers from this client (limit {cap}); try later"
            )
        if self.view.open_sockets < self.max_viewers:
            return None
        logger.warning(
            "live: %s from %s refused: %d sockets open (live_max_viewers)",
            request.path,
            request.remote or "?",
            self.max_viewers,
        )
        return error_response(503, f"too many live viewers (limit {self.max_viewers}); try later")

    async def _open(
        self, request: web.Request
    ) -> tuple[web.WebSocketResponse, Callable[[], None]] | web.Response:
        """The upgraded socket, tracked, with the function that stops its token-expiry close;
        or the 503 when ``live_max_viewers`` sockets are open already."""
        client = self._client_of(request)
        if (full := self._full(request, client)) is not None:
            return full
        ws = web.WebSocketResponse(
            protocols=(LIVE_SUBPROTOCOL,),
            heartbeat=self.view.ws_heartbeat_s,
            max_msg_size=MAX_WS_MESSAGE_BYTES,
        )
        await ws.prepare(request)
        self.view.track(ws)
        self._client_of_socket[ws] = client
        return ws, close_when_credentials_expire(ws, request)

    async def _release(self, ws: web.WebSocketResponse, stop_expiry: Callable[[], None]) -> None:
        stop_expiry()
        self.view.untrack(ws)
        self._client_of_socket.pop(ws, None)
        if not ws.closed:
            await ws.close()

    async def push(self, request: web.Request) -> web.StreamResponse:
        label = request.match_info["label"]
        opened = await self._open(request)
        if isinstance(opened, web.Response):
            return opened
        ws, stop_expiry = opened
        try:
            try:
                check_live_name(label)
                current = await self.view.store.keys(label)
            except ValueError as exc:
                await ws.send_json(_error(str(exc)))
                await ws.close(code=WS_BAD_NAME)
                return ws
            except StoreUnavailableError as exc:
                await ws.send_json(_error(store_down(exc)))
                await ws.close(code=WS_STORE_UNAVAILABLE)
                return ws
            if not current:
                await ws.send_json(_error(f"unknown label '{label}'"))
                await ws.close(code=WS_UNKNOWN_LABEL)
                return ws
            async with self.view.watch(label) as queue:
                for stored in current:
                    await ws.send_bytes(frame_message(stored))
                reader = asyncio.get_running_loop().create_task(self._ignore_input(ws))
                try:
                    while not reader.done():
                        getter = asyncio.ensure_future(queue.get())
                        await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                        if not getter.done():
                            getter.cancel()
                            break
                        stored = getter.result()
                        if stored is None:
                            break
                        await ws.send_bytes(frame_message(stored))
                except (ConnectionResetError, RuntimeError):
                    pass  # the viewer went away while a frame was being sent
                finally:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
        finally:
            await self._release(ws, stop_expiry)
        return ws

    @staticmethod
    async def _ignore_input(ws: web.WebSocketResponse) -> None:
        """Read (and drop) what a push viewer sends, so its close is noticed."""
        async for _ in ws:
            pass

    async def pull(self, request: web.Request) -> web.StreamResponse:
        label, key = request.match_info["label"], request.match_info["key"]
        opened = await self._open(request)
        if isinstance(opened, web.Response):
            return opened
        ws, stop_expiry = opened
        try:
            try:
                check_live_name(label)
                check_live_name(key, "key")
            except ValueError as exc:
                await ws.send_json(_error(str(exc)))
                await ws.close(code=WS_BAD_NAME)
                return ws
            pulled_at = -math.inf
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    pulled_at = await self._answer(
                        ws, label, key, cast(str, message.data), pulled_at
                    )
                elif message.type == WSMsgType.BINARY:
                    await ws.send_json(
                        _error(
                            "binary messages are not accepted here; send "
                            '{"action": "pull"} or {"action": "ping"}'
                        )
                    )
                elif message.type == WSMsgType.ERROR:
                    break
        except (ConnectionResetError, RuntimeError):
            pass  # the viewer went away mid-answer
        finally:
            await self._release(ws, stop_expiry)
        return ws

    async def _answer(
        self, ws: web.WebSocketResponse, label: str, key: str, text: str, pulled_at: float
    ) -> float:
        """Answer one text message; returns when the socket last pulled (for the rate bound)."""
        try:
            message: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            await ws.send_json(_error(f"message is not valid JSON: {exc.msg} at {exc.pos}"))
            return pulled_at
        except (ValueError, RecursionError) as exc:
            # Well-formed but past the decoder's limits (an integer of thousands of digits,
            # nesting deeper than the recursion limit): a bad message, not a broken socket.
            problem = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:100]
            await ws.send_json(_error(f"message is not valid JSON: {problem}"))
            return pulled_at
        if not isinstance(message, dict):
            await ws.send_json(_error('message must be a JSON object like {"action": "pull"}'))
            return pulled_at
        action = cast(dict[str, Any], message).get("action")
        if action == "ping":
            await ws.send_json({"action": "pong"})
        elif action == "pull":
            now = time.monotonic()
            if now - pulled_at < self.min_pull_interval_s:
                rate = 1.0 / self.min_pull_interval_s
                await ws.send_json(_error(f"pulling too fast: at most {rate:g} pulls a second"))
                return pulled_at
            pulled_at = now
            try:
                stored = await self.view.store.latest(label, key)
            except StoreUnavailableError as exc:
                await ws.send_json(_error(store_down(exc)))
                return pulled_at
            if stored is None:
                await ws.send_json(_error(f"no frame for {label}/{key}"))
            else:
                await ws.send_bytes(frame_message(stored))
        elif action is None:
            await ws.send_json(_error('missing "action": send "pull" or "ping"'))
        else:
            shown = json.dumps(action)[:100]
            await ws.send_json(_error(f'unknown action {shown}: expected "pull" or "ping"'))
        return pulled_at


_FRAMING = (
    "Binary frame messages: a JSON header (schema `FrameHeader`), the bytes `--IMG--`, then "
    "the JPEG. The access token goes in `Authorization: Bearer`, or, from a browser, as the "
    "offered subprotocol `ptw.bearer.<base64url(token)>` beside `ptw.live` (docs/LIVE.md)."
)
_STORE_DOWN = "the live store (Redis) is unreachable"
_LABEL = "a label of `GET /labels` (1..128 printable characters, no `/`, not `.` or `..`)"
_CLOSES = (
    "A label or key that breaks the name rule gets one JSON error, then close code 4400; "
    "an unreachable store, one JSON error, then 1011 (push) or an error reply (pull)."
)

LIVE_ROUTE_DOCS: tuple[RouteDoc, ...] = (
    RouteDoc(
        "GET",
        "/labels",
        "Labels that have live frames",
        tags=("live",),
        replies=(Reply(200, "the labels, sorted", Body(LabelList)),),
        errors={503: _STORE_DOWN},
    ),
    RouteDoc(
        "GET",
        "/labels/{label}/keys",
        "The keys (cameras, streams) of a label, with their newest frame's metadata",
        tags=("live",),
        path_params={"label": _LABEL},
        replies=(Reply(200, "the label's keys", Body(LabelKeys)),),
        errors={400: "the label is not a valid name", 404: "unknown label", 503: _STORE_DOWN},
    ),
    RouteDoc(
        "GET",
        "/ws/labels/{label}",
        "Push: every new frame of every key under a label (WebSocket)",
        description=(
            f"{_FRAMING} Starts with the newest frame of each key; keys that appear later "
            "are picked up. An unknown label gets one JSON error, then close code 4404. "
            f"{_CLOSES}"
        ),
        tags=("live",),
        path_params={"label": _LABEL},
        websocket=True,
        replies=(Reply(101, "frame messages follow", Body(FrameHeader)),),
    ),
    RouteDoc(
        "GET",
        "/ws/stream/{label}/{key}",
        "Pull: the newest frame of one key on request (WebSocket)",
        description=(
            f'{_FRAMING} Send `{{"action": "pull"}}` for the newest frame, '
            '`{"action": "ping"}` for `{"action": "pong"}`; anything else gets '
            '`{"status": "error", "message": ...}` and the socket stays open (a text '
            f"message over 64 KiB closes it with 1009). {_CLOSES}"
        ),
        tags=("live",),
        path_params={"label": _LABEL, "key": "a key of `GET /labels/{label}/keys`"},
        websocket=True,
        replies=(Reply(101, "answers follow each request", Body(FrameHeader)),),
    ),
)
