from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from pytrickle_worker.devtools.assets import DemoAssets, build_demo_assets
from tests.helpers import RedisProcess

pytest_plugins = [
    "tests.media_fixtures",
    "tests.cms_harness",
    "tests.hypothesis_profiles",  # registers and loads the fuzz profiles
]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def demo_assets() -> DemoAssets:
    """The demo MPTA and sample video, generated once into .cache/ (reused across runs)."""
    return build_demo_assets(REPO / ".cache" / "test-demo")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A session-wide real Redis on a free port, started by the tests themselves."""
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A Redis of this test's own, which the test may stop and restart (outage tests)."""
    server = RedisProcess(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


ServeApp = Callable[[web.Application], Awaitable[tuple[TestServer, ClientSession]]]


@pytest.fixture
async def serve_app() -> AsyncIterator[ServeApp]:
    """``server, http = await serve_app(app)``: the app served on 127.0.0.1 with a client
    session; both closed after the test."""
    served: list[tuple[TestServer, ClientSession]] = []

    async def serve(app: web.Application) -> tuple[TestServer, ClientSession]:
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        served.append((server, ClientSession()))
        return served[-1]

    yield serve
    for server, http in served:
        await http.close()
        await server.close()
