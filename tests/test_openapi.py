"""``GET /openapi.json`` and the Swagger UI at ``/docs``, against the real app from
``create_app`` behind a real server on 127.0.0.1, with an access token configured.

* the document is valid OpenAPI 3.1 (``openapi-spec-validator``);
* every route of the app's router is in the document, and every operation of the document
  is a route of the app (a route added without its ``RouteDoc`` fails here);
* the ``security`` of each operation is what the app enforces (open routes answer without
  the token, the others 401);
* the routes' answers validate against the schemas the document gives them (the models the
  handlers build their bodies with), so the document cannot drift from the wire;
* ``/docs`` and its static files are served with the right media types and reference
  nothing outside the worker.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from pydantic import BaseModel

from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.server.app import create_app
from pytrickle_worker.server.openapi import (
    SWAGGER_FILES,
    attach_api_docs,
    build_openapi,
    find_swagger_ui,
)
from pytrickle_worker.transport.apidoc import Body, Reply, RouteDoc, documented_routes
from tests.conftest import ServeApp

TOKEN = "openapi-test-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
BASE_CONFIG: dict[str, Any] = {
    "execution_provider": "cpu",
    "hw_decode": "off",
    "access_token": TOKEN,
    # No model to load: a start without channels runs an idle stream at once.
    "stream_processor": "passthrough",
}
#: Route prefixes that serve files (not operations): Swagger UI's and the live page's.
STATIC_PREFIXES = ("/docs/static/",)
#: WebSocket routes left out of the operations because the document's description covers
#: them. None today: every WebSocket route is also a GET operation answered with 101 (the
#: test below checks those are in the description too).
WEBSOCKETS_IN_TEXT_ONLY: frozenset[str] = frozenset()
HTTP_METHODS = ("get", "post", "put", "patch", "delete")


@dataclass
class Worker:
    app: web.Application
    server: TestServer
    http: ClientSession

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def document(self) -> dict[str, Any]:
        async with self.http.get(self.url("/openapi.json")) as response:
            assert response.status == 200
            assert response.content_type == "application/json"
            body: dict[str, Any] = await response.json()
            return body


StartWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def start_worker(tmp_path: Path, serve_app: ServeApp) -> StartWorker:
    async def start(**overrides: Any) -> Worker:
        config = WorkerConfig(cache_dir=tmp_path / "cache", **{**BASE_CONFIG, **overrides})
        app = create_app(config)
        return Worker(app, *await serve_app(app))

    return start


@pytest.fixture
async def worker(start_worker: StartWorker) -> Worker:
    return await start_worker()


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(METHOD, path) -> operation."""
    return {
        (method.upper(), path): op
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS
    }


def app_routes(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path as registered) of every route of the router, less HEAD (aiohttp adds
    one beside each GET) and the static file prefixes."""
    routes: set[tuple[str, str]] = set()
    for resource in app.router.resources():
        path = resource.canonical
        if path.startswith(STATIC_PREFIXES) or path in WEBSOCKETS_IN_TEXT_ONLY:
            continue
        for route in resource:
            if route.method not in ("HEAD", "OPTIONS"):
                routes.add((route.method, path))
    return routes


def concrete(path: str) -> str:
    """A requestable path: every ``{param}`` filled in."""
    return re.sub(r"\{\w+\}", "x", path)


def schema_validator(document: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    # Local $refs (#/components/schemas/...) resolve against the root: give it the components.
    return Draft202012Validator({**schema, "components": document["components"]})


def response_schema(document: dict[str, Any], method: str, path: str, status: int) -> Any:
    reply = document["paths"][path][method.lower()]["responses"][str(status)]
    return reply["content"]["application/json"]["schema"]


async def check_answer(
    worker: Worker,
    document: dict[str, Any],
    method: str,
    path: str,
    *,
    json: Any = None,
    documented_path: str | None = None,
) -> tuple[int, Any]:
    """Call the route with the token; its status must be documented and its body valid
    against the documented schema."""
    async with worker.http.request(method, worker.url(path), json=json, headers=BEARER) as r:
        status, body = r.status, await r.json()
    schema = response_schema(document, method, documented_path or path, status)
    errors = sorted(schema_validator(document, schema).iter_errors(body), key=str)
    assert not errors, f"{method} {path} -> {status}: {[e.message for e in errors]}"
    return status, body


# ---------------------------------------------------------------------- the document


async def test_document_is_valid_openapi_3_1(worker: Worker) -> None:
    document = await worker.document()  # no token: the document is open
    assert document["openapi"] == "3.1.0"
    validate_spec(document)  # raises on any violation of the 3.1 schema
    assert document["info"]["title"] == "pytrickle-worker"
    assert set(document["components"]["securitySchemes"]) == {"bearerAuth", "queryToken"}
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["status", "message"]
    assert error["properties"]["status"]["const"] == "error"


async def test_every_route_of_the_app_is_documented_and_no_more(worker: Worker) -> None:
    document = await worker.document()
    documented = set(operations(document))
    routes = app_routes(worker.app)
    assert routes - documented == set(), "routes without a RouteDoc"
    assert documented - routes == set(), "documented operations the app does not have"
    # The routes this issue names are among them.
    for expected in [
        ("POST", "/api/stream/start"),
        ("POST", "/stream/start"),
        ("POST", "/stream/stop"),
        ("POST", "/stream/params"),
        ("GET", "/stream/status"),
        ("POST", "/live-video-to-video"),
        ("GET", "/health"),
        ("GET", "/health/live"),
        ("GET", "/health/ready"),
        ("GET", "/hardware/info"),
        ("GET", "/hardware/stats"),
        ("GET", "/version"),
        ("GET", "/camera/{camera_id}/image"),
        ("GET", "/metrics"),
        ("GET", "/"),
    ]:
        assert expected in documented


async def test_every_error_refers_to_the_one_error_schema(worker: Worker) -> None:
    document = await worker.document()
    for (method, path), op in operations(document).items():
        for status, reply in op["responses"].items():
            if int(status) < 400 or path.startswith("/health"):
                continue  # the probes answer 500/503 with their own bodies
            assert reply["content"] == {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
            }, f"{method} {path} {status}"


async def test_websocket_routes_are_101_operations_and_in_the_description(
    worker: Worker,
) -> None:
    document = await worker.document()
    sockets = [key for key, op in operations(document).items() if "101" in op["responses"]]
    assert ("GET", "/") in sockets
    description = document["info"]["description"]
    assert "## WebSocket routes" in description
    for _method, path in sockets:
        assert f"- `{path}`:" in description


async def test_security_of_each_operation_is_what_the_app_enforces(worker: Worker) -> None:
    document = await worker.document()
    for (method, path), op in operations(document).items():
        async with worker.http.request(method, worker.url(concrete(path))) as response:
            status = response.status
        if op["security"] == []:
            assert status != 401, f"{method} {path} is documented open but needs the token"
        else:
            assert status == 401, f"{method} {path} is documented protected but answered {status}"
            assert "401" in op["responses"]
    assert operations(document)[("GET", "/metrics")]["security"] == []
    assert operations(document)[("GET", "/camera/{camera_id}/image")]["security"] == [
        {"bearerAuth": []},
        {"queryToken": []},
    ]


async def test_metrics_documented_protected_when_it_needs_the_token(
    start_worker: StartWorker,
) -> None:
    worker = await start_worker(metrics_require_token=True)
    document = await worker.document()
    assert operations(document)[("GET", "/metrics")]["security"] == [{"bearerAuth": []}]
    async with worker.http.get(worker.url("/metrics")) as response:
        assert response.status == 401


async def test_answers_validate_against_the_documented_schemas(worker: Worker) -> None:
    """Idle, a stream without media (start, status, params, stop) and the errors."""
    document = await worker.document()
    for path in ["/health/live", "/version", "/app-version", "/hardware/info"]:
        await check_answer(worker, document, "GET", path)
    await check_answer(worker, document, "GET", "/hardware/stats")
    async with asyncio.timeout(60):  # passthrough loads at once; generous on a loaded box
        while True:
            status, _ = await check_answer(worker, document, "GET", "/health/ready")
            if status == 200:
                break
            await asyncio.sleep(0.1)
    status, body = await check_answer(worker, document, "GET", "/health")
    assert status == 200 and body["status"] == "IDLE"
    assert "input_stalled" not in body and "error_message" not in body  # only when they apply
    await check_answer(worker, document, "GET", "/stream/status")

    status, _ = await check_answer(worker, document, "POST", "/stream/stop", json={})
    assert status == 400  # no stream: the Error schema
    status, _ = await check_answer(
        worker, document, "POST", "/api/stream/start", json={"gateway_request_id": 5}
    )
    assert status == 400
    status, body = await check_answer(
        worker, document, "POST", "/api/stream/start", json={"gateway_request_id": "doc-1"}
    )
    assert status == 200 and body["current_state"]["stream"]["gateway_request_id"] == "doc-1"
    assert "publish_url" not in body["current_state"]["stream"]  # absent when not given
    status, _ = await check_answer(
        worker, document, "POST", "/stream/start", json={"gateway_request_id": "doc-2"}
    )
    assert status == 503  # one stream at a time
    status, body = await check_answer(worker, document, "GET", "/api/stream/status")
    assert body["active_streams"] == 1
    status, body = await check_answer(
        worker, document, "POST", "/stream/params", json={"max_framerate": 12}
    )
    assert status == 200 and body["params"]["max_framerate"] == 12
    status, body = await check_answer(worker, document, "GET", "/health")
    assert body["status"] == "OK" and body["input_stalled"] is False
    status, _ = await check_answer(worker, document, "POST", "/api/stream/stop")
    assert status == 200
    status, _ = await check_answer(
        worker,
        document,
        "GET",
        "/camera/nope/image",
        documented_path="/camera/{camera_id}/image",
    )
    assert status == 404


# ---------------------------------------------------------------------- Swagger UI


SRC_OR_HREF = re.compile(r"""(?:src|href)="([^"]*)\"""")


async def test_docs_page_and_its_files_are_served_offline(worker: Worker) -> None:
    async with worker.http.get(worker.url("/docs")) as response:  # open: no token
        assert response.status == 200
        assert response.content_type == "text/html"
        html = await response.text()
    assert "http://" not in html and "https://" not in html and "//" not in html
    references = SRC_OR_HREF.findall(html)
    assert len(references) == 5  # css, two icons, the bundle, the start-up script
    media_types = {**SWAGGER_FILES, "swagger-init.js": "text/javascript"}
    for reference in references:
        assert reference.startswith("/docs/static/")
        async with worker.http.get(worker.url(reference)) as response:
            assert response.status == 200, reference
            assert response.content_type == media_types[reference.rsplit("/", 1)[1]]
            content = await response.read()
            assert content
    async with worker.http.get(worker.url("/docs/static/swagger-init.js")) as response:
        script = await response.text()
    assert 'url: "/openapi.json"' in script
    assert "validatorUrl: null" in script  # Swagger UI would otherwise call a public validator
    assert "http" not in script


async def test_docs_static_serves_only_its_list(worker: Worker) -> None:
    assert find_swagger_ui() is not None
    for name in ["swagger-editor-bundle.js", "LICENSE", "index.css", "..%2F..%2Fcore.py"]:
        async with worker.http.get(worker.url(f"/docs/static/{name}")) as response:
            assert response.status == 404, name
            body = await response.json()
        assert body["status"] == "error" and body["message"].startswith("not found: ")


async def test_without_swagger_ui_docs_answer_503_and_the_document_still_works() -> None:
    app = web.Application()
    attach_api_docs(app, title="bare", version="0", swagger_dir=None)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with ClientSession() as http:
            for path in ["/docs", "/docs/static/swagger-ui.css"]:
                async with http.get(server.make_url(path)) as response:
                    assert response.status == 503
                    body = await response.json()
                    assert body["status"] == "error" and "swagger-ui-py" in body["message"]
            async with http.get(server.make_url("/openapi.json")) as response:
                document = await response.json()
        validate_spec(document)
        assert set(document["paths"]) == {"/openapi.json", "/docs"}
    finally:
        await server.close()


# ---------------------------------------------------------------------- the builder


class Thing(BaseModel):
    name: str


class Error(BaseModel):
    detail: str


def test_documents_with_regex_params_and_query_params_validate() -> None:
    docs = [
        RouteDoc(
            "GET",
            "/things/{thing_id:[0-9]+}/parts/{part}",
            "A part",
            path_params={"thing_id": "numeric id"},
            replies=(Reply(200, "the part", Body(Thing), headers={"X-Part": "its name"}),),
        ),
        RouteDoc(
            "POST",
            "/things",
            "Upload",
            request=Body(
                content_type="multipart/form-data",
                schema={"type": "object", "properties": {"image": {"type": "string"}}},
            ),
            replies=(Reply(200, "stored", Body(Thing)),),
            errors={413: "too large", 429: "rate limited"},
        ),
    ]
    document = build_openapi(docs, title="t", version="1")
    validate_spec(document)
    item = document["paths"]["/things/{thing_id}/parts/{part}"]["get"]
    assert [p["name"] for p in item["parameters"]] == ["thing_id", "part"]
    assert item["parameters"][0]["description"] == "numeric id"
    responses = document["paths"]["/things"]["post"]["responses"]
    assert set(responses) == {"200", "401", "413", "429"}
    assert set(responses["429"]["headers"]) == {"Retry-After"}
    assert document["paths"]["/things"]["post"]["requestBody"]["content"]["multipart/form-data"]


def test_builder_refuses_duplicates_silent_routes_and_a_model_named_error() -> None:
    reply = (Reply(200, "ok", Body(Thing)),)
    twice = [RouteDoc("GET", "/a", "A", replies=reply), RouteDoc("GET", "/a", "A again")]
    with pytest.raises(ValueError, match="documented twice"):
        build_openapi(twice, title="t", version="1")
    with pytest.raises(ValueError, match="documents no response"):
        build_openapi([RouteDoc("GET", "/a", "A", auth="open")], title="t", version="1")
    clash = [RouteDoc("GET", "/a", "A", replies=(Reply(200, "ok", Body(Error)),))]
    with pytest.raises(ValueError, match="error schema"):
        build_openapi(clash, title="t", version="1")


async def test_route_docs_are_registered_on_the_app(worker: Worker) -> None:
    docs = documented_routes(worker.app)
    assert len({(doc.method, doc.path) for doc in docs}) == len(docs)


async def test_rate_limited_routes_document_their_429(worker: Worker) -> None:
    """The limiter picks routes by path (server/ratelimit.py); the document follows it."""
    document = await worker.document()
    start = document["paths"]["/api/stream/start"]["post"]["responses"]
    assert "Retry-After" in start["429"]["headers"]
    assert "429" not in document["paths"]["/api/stream/stop"]["post"]["responses"]
