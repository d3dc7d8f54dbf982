"""Property-based fuzzing of the StreamServer REST API (Hypothesis).

Bodies are generated from the request models' JSON schemas (StartRequest, the stream-level
StreamParams and the MPTA processor's params), then mutated: wrong types, missing and extra
fields, huge, unicode and control-character strings, deep nesting, broken or mislabelled
encodings. Each is POSTed to the real app from ``create_app`` (the demo pipeline as the
stream processor's model) behind a real server on 127.0.0.1, which runs in a thread of its
own so that Hypothesis drives plain synchronous tests.

After every example: the worker is alive (``/health/live`` answers 200), the answer is not a
5xx and says nothing of an internal error, every error is the documented shape, and a
rejected request leaves ``/health`` (and the stream's status) as it was.

Profiles (tests/hypothesis_profiles.py): ``ci`` by default, ``HYPOTHESIS_PROFILE=nightly``
for a long run.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar, cast

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st

from processors.mpta_detector import MptaDetectorParams
from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.devtools.assets import DemoAssets
from pytrickle_worker.frontdoors.streamserver.schemas import ErrorBody, StartRequest, StreamParams
from pytrickle_worker.server.app import create_app
from tests.helpers import free_port

T = TypeVar("T")
Json = Any
Schema = dict[str, Any]

#: Per request: generous, the examples must never get near it.
CALL_TIMEOUT_S = 30.0
LIMIT = 256 * 1024


# --------------------------------------------------------------------------- the worker


class ThreadedWorker:
    """The real app on 127.0.0.1, served by an event loop in a thread of its own."""

    def __init__(self, config: WorkerConfig, pipeline: str) -> None:
        self._config = config
        self._pipeline = pipeline
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: TestServer | None = None
        self._http: aiohttp.ClientSession | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(CALL_TIMEOUT_S)

    def start(self) -> None:
        self._thread.start()
        self.run(self._start())
        for _ in range(1200):
            if self.call("GET", "/health/ready")[0] == 200:
                return
            self.run(asyncio.sleep(0.05))
        raise AssertionError("the worker never became ready")

    async def _start(self) -> None:
        app = create_app(self._config, self._pipeline)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        self._http = aiohttp.ClientSession()

    def call(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, str]:
        return self.run(self._call(method, path, data, headers or {}))

    async def _call(
        self, method: str, path: str, data: bytes | None, headers: dict[str, str]
    ) -> tuple[int, str]:
        assert self._server is not None and self._http is not None
        url = str(self._server.make_url(path))
        async with self._http.request(method, url, data=data, headers=headers) as response:
            return response.status, await response.text(errors="replace")

    def close(self) -> None:
        self.run(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _close(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._server is not None:
            await self._server.close()


@pytest.fixture(scope="module")
def worker(
    tmp_path_factory: pytest.TempPathFactory, demo_assets: DemoAssets
) -> Iterator[ThreadedWorker]:
    config = WorkerConfig(
        cache_dir=tmp_path_factory.mktemp("fuzz-cache"),
        execution_provider="cpu",
        hw_decode="off",
        max_message_bytes=LIMIT,
        # A generated model_url may only name a loopback port nothing listens on.
        model_url_hosts=["127.0.0.1"],
        # Every example starts a stream from 127.0.0.1: far more than the default budget of
        # 30 a minute (the limits have their own tests, in test_auth_limits.py).
        rate_limit_stream_start="off",
    )
    threaded = ThreadedWorker(config, str(demo_assets.mpta_path))
    threaded.start()
    yield threaded
    threaded.close()


# --------------------------------------------------------------------------- strategies

#: A loopback port with nothing behind it: generated channel URLs that validate lead
#: nowhere, quickly (connection refused).
CLOSED = f"http://127.0.0.1:{free_port()}"

CONTROL = st.characters(min_codepoint=0, max_codepoint=0x1F) | st.characters(
    min_codepoint=0x7F, max_codepoint=0x9F
)


def _concat(before: str, middle: str, after: str) -> str:
    return before + middle + after


def _merged(chosen: dict[str, Json], extra: dict[str, Json]) -> dict[str, Json]:
    return {**extra, **chosen}


def _closed_url(path: str) -> str:
    return f"{CLOSED}/{path}"


HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=CONTROL, min_size=1, max_size=5),
    st.builds(_concat, st.text(max_size=10), CONTROL, st.text(max_size=10)),
    st.text(alphabet=st.characters(min_codepoint=0x80), max_size=30),  # any unicode
    st.integers(1, 8000).map(lambda n: "x" * n),  # over every max_length
    st.sampled_from(["\ud800", "\udfff", "\ufeff", "\u202e", "%00", "../../etc/passwd"]),
)
NUMBERS = st.one_of(
    st.integers(),
    st.integers(-(10**80), 10**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 60, 61, 16385, 0.5, 1e308, -0.0]),
)
JSON_LEAVES = st.one_of(st.none(), st.booleans(), NUMBERS, HOSTILE_TEXT)
ANY_JSON: st.SearchStrategy[Json] = st.recursive(
    JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(HOSTILE_TEXT, children, max_size=4)
    ),
    max_leaves=12,
)


def _bound(schema: Schema, *names: str) -> float | None:
    for name in names:
        if name in schema:
            return float(schema[name])
    return None


def from_schema(schema: Schema) -> st.SearchStrategy[Json]:
    """Values valid for a (small) JSON schema as pydantic writes them."""
    if "anyOf" in schema:
        return st.one_of([from_schema(cast(Schema, option)) for option in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        low = _bound(schema, "minimum", "ge")
        low_x = _bound(schema, "exclusiveMinimum", "gt")
        high = _bound(schema, "maximum", "le")
        minimum = int(low) if low is not None else (int(low_x) + 1 if low_x is not None else None)
        return st.integers(minimum, int(high) if high is not None else None)
    if kind == "number":
        low = _bound(schema, "minimum", "ge")
        low_x = _bound(schema, "exclusiveMinimum", "gt")
        high = _bound(schema, "maximum", "le")
        return st.floats(
            min_value=low if low is not None else low_x,
            max_value=high,
            exclude_min=low is None and low_x is not None,
            allow_nan=False,
            allow_infinity=False,
        )
    if kind == "string":
        return st.text(
            min_size=int(schema.get("minLength", 0)),
            max_size=min(int(schema.get("maxLength", 60)), 60),
        )
    if kind == "array":
        items = from_schema(cast(Schema, schema.get("items", {})))
        return st.lists(
            items,
            min_size=int(schema.get("minItems", 0)),
            max_size=min(int(schema.get("maxItems", 4)), 4),
        )
    if kind == "object":
        return st.dictionaries(st.text(max_size=10), ANY_JSON, max_size=3)
    return ANY_JSON


def mutated(valid: st.SearchStrategy[Json]) -> st.SearchStrategy[Json]:
    """Mostly valid values, often a wrong type or a hostile string instead."""
    return st.one_of(valid, valid, JSON_LEAVES, ANY_JSON)


def model_body(
    schema: Schema, overrides: dict[str, st.SearchStrategy[Json]] | None = None
) -> st.SearchStrategy[dict[str, Json]]:
    """An object from a model's schema: each field mutated, any field possibly missing
    (required ones too), and extra fields."""
    properties = cast(dict[str, Schema], schema.get("properties", {}))
    given = overrides or {}
    fields = {
        name: mutated(given[name] if name in given else from_schema(prop))
        for name, prop in properties.items()
    }
    return st.builds(
        _merged,
        st.fixed_dictionaries({}, optional=fields),
        st.dictionaries(HOSTILE_TEXT, ANY_JSON, max_size=2),
    )


URLS = st.one_of(
    st.sampled_from([None, "", CLOSED + "/in", CLOSED + "/out", "ftp://h/x", "http://", "x"]),
    st.builds(_closed_url, st.text(max_size=20)),
)
PARAMS_SCHEMA = {
    "properties": {
        **StreamParams.model_json_schema()["properties"],
        **MptaDetectorParams.model_json_schema()["properties"],
    }
}
PARAMS = model_body(
    PARAMS_SCHEMA,
    {
        "model_url": st.one_of(
            st.just(CLOSED + "/model.mpta"), st.text(max_size=30), st.just("http://evil/x")
        ),
        "trigger_classes": st.lists(st.sampled_from(["car", "truck", "bus", ""]), max_size=3),
    },
)
START_SCHEMA = StartRequest.model_json_schema()
URL_FIELDS = ("subscribe_url", "publish_url", "control_url", "events_url", "data_url")
START = model_body(
    START_SCHEMA,
    {"params": st.one_of(PARAMS, st.none()), **{name: URLS for name in URL_FIELDS}},
)


def _nest(depth: int) -> str:
    return "[" * depth + "]" * depth


@st.composite
def encoded(draw: st.DrawFn, bodies: st.SearchStrategy[Json]) -> tuple[bytes, dict[str, str]]:
    """A body on the wire: JSON text (sometimes deeply nested, with huge numbers, or not
    JSON at all), in some encoding, under some declared charset, maybe with bytes broken."""
    body = draw(bodies)
    text = json.dumps(body, allow_nan=True)  # NaN/Infinity are not JSON: refused (400)
    shape = draw(st.sampled_from(["plain", "nested", "big-number", "garbage", "top-level"]))
    if shape == "nested":
        text = json.dumps({"gateway_request_id": "n", "params": {"x": "@"}}).replace(
            '"@"', _nest(draw(st.integers(1, 60_000)))
        )
    elif shape == "big-number":
        text = '{"gateway_request_id": "n", "params": {"target_fps": %s}}' % (
            "9" * draw(st.integers(1, 9000))
        )
    elif shape == "garbage":
        text = draw(st.text(max_size=200))
    elif shape == "top-level":
        text = json.dumps(draw(ANY_JSON), allow_nan=True)
    charset = draw(st.sampled_from([None, "utf-8", "latin-1", "utf-16", "ascii", "bogus", "rot13"]))
    encoding = draw(st.sampled_from(["utf-8", "utf-16", "latin-1"]))
    data = text.encode(encoding, errors="replace")
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    if draw(st.integers(0, 9)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    content_type = draw(
        st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"])
    )
    headers = {"Content-Type": content_type + (f"; charset={charset}" if charset else "")}
    return data, headers


# --------------------------------------------------------------------------- invariants


def health(worker: ThreadedWorker) -> tuple[int, dict[str, Any]]:
    status, text = worker.call("GET", "/health")
    body = cast(dict[str, Any], json.loads(text))
    body.pop("uptime_s", None)
    return status, body


def stream_status(worker: ThreadedWorker) -> dict[str, Any]:
    status, text = worker.call("GET", "/api/stream/status")
    assert status == 200, text
    body = cast(dict[str, Any], json.loads(text))
    return {key: body[key] for key in ("state", "active_streams", "current_params", "healthy")}


def check_answer(worker: ThreadedWorker, status: int, text: str) -> None:
    assert status < 500, (status, text)
    assert "internal error" not in text.lower(), text
    if status >= 400:
        ErrorBody.model_validate_json(text)
    live, _ = worker.call("GET", "/health/live")
    assert live == 200


def ensure_idle(worker: ThreadedWorker) -> None:
    if stream_status(worker)["active_streams"]:
        status, text = worker.call("POST", "/stream/stop")
        assert status == 200, text
    assert health(worker)[1]["status"] == "IDLE"


# --------------------------------------------------------------------------- tests

START_PATHS = st.sampled_from(["/api/stream/start", "/stream/start", "/live-video-to-video"])


@given(path=START_PATHS, wire=encoded(START))
def test_fuzzed_starts(
    worker: ThreadedWorker, path: str, wire: tuple[bytes, dict[str, str]]
) -> None:
    ensure_idle(worker)
    before = health(worker)
    data, headers = wire
    status, text = worker.call("POST", path, data, headers)
    check_answer(worker, status, text)
    if status == 200:
        assert health(worker)[1]["status"] == "OK"
        ensure_idle(worker)
    else:
        assert 400 <= status < 500
        assert health(worker) == before, text


@given(wire=encoded(PARAMS))
def test_fuzzed_params_updates(worker: ThreadedWorker, wire: tuple[bytes, dict[str, str]]) -> None:
    if not stream_status(worker)["active_streams"]:
        status, text = worker.call("POST", "/stream/start", b'{"gateway_request_id": "fuzz"}')
        assert status == 200, text
    before_health, before_status = health(worker), stream_status(worker)
    data, headers = wire
    status, text = worker.call("POST", "/stream/params", data, headers)
    check_answer(worker, status, text)
    if status != 200:
        assert health(worker) == before_health, text
        assert stream_status(worker) == before_status, text


@given(wire=encoded(ANY_JSON))
def test_fuzzed_stops(worker: ThreadedWorker, wire: tuple[bytes, dict[str, str]]) -> None:
    ensure_idle(worker)
    before = health(worker)
    data, headers = wire
    status, text = worker.call("POST", "/api/stream/stop", data, headers)
    check_answer(worker, status, text)
    assert 400 <= status < 500  # nothing to stop, or a body that is refused
    assert health(worker) == before


def test_the_fuzz_app_has_the_documented_limits(worker: ThreadedWorker) -> None:
    """Not generated: the examples above must be able to reach these limits."""
    status, text = worker.call("POST", "/stream/start", b"[" * 100_000)
    assert status == 400 and "nested" in text
    status, text = worker.call("POST", "/stream/start", b"{" + b" " * LIMIT + b"}")
    assert status == 413, text
