"""The live page (``GET /live``) in a real headless Chromium, against the real worker.

Debian's ``chromium`` (``/usr/bin/chromium``; scripts/test.sh installs it) driven by
Playwright for Python, never a browser Playwright downloads. The worker runs as users run it
(``server.py`` in a subprocess) with the demo camera (``pytrickle-worker demo camera``, the
sample video as a live MPEG-TS stream) subscribed over the CMS WebSocket as
``display-001;cam-001``, as examples/cms_client.py does:

* a tile shows a decoded frame (``naturalWidth > 0``) within 10 s of loading the page;
* its detection text is what the worker sent for that frame (the header of the same frame,
  read by this test from ``/ws/labels/display-001``);
* a click opens the camera in pull mode; pause holds the frame, resume moves on, back returns;
* the camera stopped, the tile turns offline; the worker stopped, the page says it reconnects;
* with an access token, a wrong token shows an error and no frame, the right one shows frames;
* ``/docs`` (Swagger UI) renders its operation list in the same Chromium.

Screenshots go to the test's tmp dir. ``PTW_UPDATE_SCREENSHOT=1`` also writes
``docs/live-view.png`` (the README's picture) from the grid test's single-camera view.

The routes themselves (content types, the CSP, ETags, unknown files) are checked first
without a browser, on the app ``create_app`` builds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from playwright.async_api import Browser, Locator, Page, async_playwright

from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.devtools.assets import DemoAssets
from pytrickle_worker.server.app import create_app
from tests.cms_harness import Backend, subscribe_payload
from tests.test_demo_camera import Camera, _start_camera, _stop
from tests.worker_process import WorkerProcess

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
LABEL = "display-001"
KEY = "cam-001"
IDENTIFIER = f"{LABEL};{KEY}"
DELIMITER = b"--IMG--"
WAIT_S = 60.0
TILE = f'[data-testid="tile"][data-key="{KEY}"]'

# ----------------------------------------------------------------------------- routes


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    config = WorkerConfig(cache_dir=tmp_path / "cache", execution_provider="cpu")
    async with TestClient(TestServer(create_app(config), host="127.0.0.1")) as client:
        yield client


@pytest.mark.parametrize(
    ("path", "content_type", "marker"),
    [
        ("/live", "text/html", b'data-testid="label-picker"'),
        ("/live/static/live.js", "text/javascript", b"ptw.bearer."),
        ("/live/static/live.css", "text/css", b".tile"),
        ("/live/static/favicon.svg", "image/svg+xml", b"<svg"),
    ],
)
async def test_the_page_and_its_files_are_served_from_the_package(
    client: TestClient[Any, Any], path: str, content_type: str, marker: bytes
) -> None:
    async with client.get(path) as response:
        body = await response.read()
        assert response.status == 200, body
        assert response.content_type == content_type
        assert marker in body
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp, csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-cache"
        etag = response.headers["ETag"]
    async with client.get(path, headers={"If-None-Match": etag}) as again:
        assert again.status == 304
        assert await again.read() == b""
    async with client.head(path) as head:
        assert head.status == 200


async def test_the_page_loads_nothing_from_another_origin(client: TestClient[Any, Any]) -> None:
    async with client.get("/live") as response:
        html = await response.text()
    async with client.get("/live/static/live.js") as response:
        script = await response.text()
    for text in (html, script):
        assert not re.search(r"https?://", text), "the page must work offline (no CDN)"
    # Every file the page names is one the server has.
    for name in re.findall(r'"/live/static/([^"]+)"', html):
        async with client.get(f"/live/static/{name}") as response:
            assert response.status == 200, name


async def test_the_page_is_open_when_the_data_needs_a_token(tmp_path: Path) -> None:
    """The page holds no data: it loads without the token, then asks for it."""
    config = WorkerConfig(
        cache_dir=tmp_path / "cache", execution_provider="cpu", access_token="page-secret"
    )
    async with TestClient(TestServer(create_app(config), host="127.0.0.1")) as client:
        for path in ("/live", "/live/static/live.js", "/live/static/live.css"):
            async with client.get(path) as response:
                assert response.status == 200, path
        async with client.get("/labels") as response:
            assert response.status == 401


@pytest.mark.parametrize("name", ["nope.js", "live.html", "..%2Fpage.py", "live.js.map"])
async def test_an_unknown_static_file_is_a_json_404(
    client: TestClient[Any, Any], name: str
) -> None:
    async with client.get(f"/live/static/{name}") as response:
        assert response.status == 404
        body = await response.json()
    assert body["status"] == "error"
    assert "no static file" in body["message"] and "live.js" in body["message"], body


# ----------------------------------------------------------------------------- browser


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium. Missing is a failure, not a skip: CI installs it (scripts/test.sh)."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: the live page test needs Debian's chromium "
            "(apt-get install chromium; scripts/test.sh installs it)"
        )
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(chromium), headless=True)
        yield browser
        await browser.close()


#: Counts the page's Blob URLs, made and revoked (injected before the page's own script).
COUNT_BLOB_URLS = """
(() => {
  const made = URL.createObjectURL.bind(URL);
  const revoke = URL.revokeObjectURL.bind(URL);
  window.blobUrls = { made: 0, revoked: 0 };
  URL.createObjectURL = (blob) => { window.blobUrls.made += 1; return made(blob); };
  URL.revokeObjectURL = (url) => { window.blobUrls.revoked += 1; revoke(url); };
})();
"""


async def _new_page(browser: Browser) -> tuple[Page, list[str]]:
    """A page and the list its JavaScript errors are collected in (asserted empty at the end)."""
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    await page.add_init_script(COUNT_BLOB_URLS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return page, errors


async def _blob_urls(page: Page) -> tuple[int, int]:
    counts = await page.evaluate("() => window.blobUrls")
    return int(counts["made"]), int(counts["revoked"])


async def _until(
    check: Callable[[], Awaitable[bool]],
    what: str,
    within_s: float = WAIT_S,
    log: str = "",
    every_s: float = 0.1,
) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not within {within_s} s\n{log}"
        await asyncio.sleep(every_s)


async def _decoded(image: Locator) -> bool:
    if await image.count() == 0:
        return False
    return bool(await image.first.evaluate("img => img.complete && img.naturalWidth > 0"))


async def _frame_id(image: Locator) -> str:
    return str(await image.evaluate("img => img.dataset.frameId || ''"))


# ----------------------------------------------------------------------------- the worker


@dataclass
class LiveFrames:
    """Every header pushed on ``/ws/labels/{label}``, by entry id (what the page was sent)."""

    headers: dict[str, dict[str, Any]] = field(default_factory=dict[str, dict[str, Any]])


@dataclass
class LiveWorker:
    worker: WorkerProcess
    camera: Camera
    backend: Backend
    http: aiohttp.ClientSession
    token: str | None

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def log(self) -> str:
        return f"--- worker\n{self.worker.log()[-6000:]}\n--- camera\n{self.camera.log()[-2000:]}"

    async def labels(self) -> list[str]:
        async with self.http.get(self.worker.base + "/labels", headers=self.auth) as response:
            if response.status != 200:
                return []
            return list((await response.json())["labels"])

    @contextlib.asynccontextmanager
    async def follow(self, label: str) -> AsyncIterator[LiveFrames]:
        """Read the label's push socket in the background, as the page does."""
        frames = LiveFrames()
        ws = await self.http.ws_connect(
            f"{self.worker.base}/ws/labels/{label}", protocols=("ptw.live",), headers=self.auth
        )

        async def read() -> None:
            async for message in ws:
                if message.type is WSMsgType.BINARY:
                    head, _, jpeg = bytes(message.data).partition(DELIMITER)
                    header = json.loads(head)
                    assert jpeg[:2] == b"\xff\xd8", "not a JPEG after the delimiter"
                    frames.headers[str(header["id"])] = header

        reader = asyncio.create_task(read())
        try:
            yield frames
        finally:
            await ws.close()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


@contextlib.asynccontextmanager
async def _live_worker(
    tmp_path: Path, demo_assets: DemoAssets, token: str | None = None
) -> AsyncIterator[LiveWorker]:
    """The worker process, the demo camera, and a CMS backend that subscribed the camera;
    returns once the worker lists the label (it stores the camera's frames)."""
    camera = _start_camera(tmp_path, "--video", str(demo_assets.video_path))
    env = {"PTW_ACCESS_TOKEN": token} if token else {}
    worker = WorkerProcess(
        tmp_path, "--no-demo", "--pipeline", str(demo_assets.mpta_path), env=env
    ).start()
    http = aiohttp.ClientSession()
    try:
        await worker.wait_status("/health/ready", 200, within_s=WAIT_S)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        ws = await http.ws_connect(worker.base + "/", headers=headers)
        backend = Backend(ws, aiohttp.ClientSession())
        live = LiveWorker(worker, camera, backend, http, token)
        await backend.send(
            "subscribe", subscribe_payload(IDENTIFIER, camera.url, str(demo_assets.mpta_path))
        )

        async def listed() -> bool:
            return LABEL in await live.labels()

        # Once a second: /labels is rate limited (60 a minute), and the page needs it too.
        await _until(listed, f"/labels never listed {LABEL}", log=live.log(), every_s=1.0)
        try:
            yield live
        finally:
            await backend.close()
    finally:
        await http.close()
        _stop(camera)
        worker.stop()


def _expected_rows(header: dict[str, Any]) -> list[tuple[str, float, int | None]]:
    return [
        (str(item["class"]), float(item["confidence"]), item["id"])
        for item in header["detection_items"]
    ]


def _parse_rows(texts: list[str]) -> list[tuple[str, float, int | None]]:
    """The page's detection rows, ``car 0.87 #3`` (``–`` for no track id), parsed back."""
    rows: list[tuple[str, float, int | None]] = []
    for text in texts:
        match = re.fullmatch(r"(.+) (\d+\.\d{2}) (?:#(\d+)|–)", text)
        assert match, f"unexpected detection row {text!r}"
        track = match.group(3)
        rows.append((match.group(1), float(match.group(2)), None if track is None else int(track)))
    return rows


def _same_rows(
    shown: list[tuple[str, float, int | None]], sent: list[tuple[str, float, int | None]]
) -> bool:
    return len(shown) == len(sent) and all(
        a[0] == b[0] and a[2] == b[2] and math.isclose(a[1], b[1], abs_tol=0.0051)
        for a, b in zip(shown, sent, strict=True)
    )


pytestmark = pytest.mark.timeout(300)


async def test_the_grid_shows_the_camera_its_detections_and_its_state(
    browser: Browser, tmp_path: Path, demo_assets: DemoAssets
) -> None:
    async with _live_worker(tmp_path, demo_assets) as live, live.follow(LABEL) as pushed:
        page, errors = await _new_page(browser)
        await page.goto(f"{live.worker.base}/live")
        tile = page.locator(TILE)
        image = tile.locator('[data-testid="tile-image"]')
        # A decoded frame within 10 s of loading the page (the worker already stores frames).
        await _until(lambda: _decoded(image), "no decoded frame in the tile", 10.0, live.log())
        assert await page.locator('[data-testid="label-picker"]').input_value() == LABEL
        assert f"#label={LABEL}" in page.url  # the view is in the URL; no token ever is
        assert await tile.locator('[data-testid="tile-status"]').inner_text() == "online"

        # The detection text is the one the worker sent with the frame the tile shows.
        matched: list[dict[str, Any]] = []

        async def shows_what_was_sent() -> bool:
            frame_id = await tile.get_attribute("data-frame-id")
            texts = await tile.locator('[data-testid="detection"]').all_inner_texts()
            header = pushed.headers.get(frame_id or "")
            if header is None or not header["detection_items"]:
                return False  # not read here yet, or a frame without detections
            assert _same_rows(_parse_rows(texts), _expected_rows(header)), (texts, header)
            matched.append(header)
            return True

        await _until(shows_what_was_sent, "no frame with detections shown", log=live.log())

        # Each frame gets a Blob URL, and every one but the one on screen is revoked.
        async def frames_shown(count: int) -> bool:
            return (await _blob_urls(page))[0] >= count

        await _until(lambda: frames_shown(3), "fewer than 3 frames shown", log=live.log())
        made, revoked = await _blob_urls(page)
        assert made - revoked == 1, (made, revoked)
        header = matched[0]
        assert header["label"] == LABEL and header["key"] == KEY
        fps_text = await tile.locator('[data-testid="tile-fps"]').inner_text()
        assert re.fullmatch(r"\d+\.\d fps", fps_text), fps_text
        worker_name = await tile.locator('[data-testid="tile-worker"]').inner_text()
        assert worker_name == header["worker"] and worker_name
        await page.screenshot(path=tmp_path / "live-grid.png")

        # One camera, pulled: frames move, pause holds the frame, resume moves on.
        await tile.click()
        single = page.locator('[data-testid="single-image"]')
        await _until(lambda: _decoded(single), "no frame in the single view", log=live.log())
        assert f"key={KEY}" in page.url
        assert await page.locator('[data-testid="grid-view"]').is_hidden()
        first = await _frame_id(single)

        async def moved_on(since: str) -> bool:
            return await _frame_id(single) not in ("", since)

        await _until(lambda: moved_on(first), "the pulled frame never changed", log=live.log())
        if os.environ.get("PTW_UPDATE_SCREENSHOT") == "1":  # the README's picture
            await page.set_viewport_size({"width": 1040, "height": 560})
            await page.screenshot(path=REPO / "docs" / "live-view.png")
            await page.set_viewport_size({"width": 1280, "height": 800})
        await page.locator('[data-testid="pause"]').click()
        assert await page.locator('[data-testid="pause"]').inner_text() == "Resume"
        assert await page.locator('[data-testid="single-status"]').inner_text() == "paused"
        held = await _frame_id(single)
        await asyncio.sleep(2.0)  # 4 pull periods, ~4 new frames at the default live_fps
        assert await _frame_id(single) == held
        await page.locator('[data-testid="pause"]').click()
        await _until(lambda: moved_on(held), "resume did not move on", log=live.log())
        await page.screenshot(path=tmp_path / "live-single.png")
        await page.locator('[data-testid="back"]').click()
        await _until(lambda: _decoded(image), "the grid did not come back", log=live.log())
        made, revoked = await _blob_urls(page)
        assert made - revoked == 1, (made, revoked)  # the single view's were revoked too

        # The camera stops: its tile is marked offline.
        _stop(live.camera)
        status = tile.locator('[data-testid="tile-status"]')

        async def offline() -> bool:
            return await status.inner_text() == "offline"

        await _until(offline, "the tile never went offline", log=live.log())
        assert await tile.get_attribute("data-online") == "false"
        await page.screenshot(path=tmp_path / "live-offline.png")

        # The worker goes away: the page says it is reconnecting (and keeps trying).
        live.worker.stop()
        connection = page.locator('[data-testid="connection"]')

        async def reconnecting() -> bool:
            return await connection.get_attribute("data-state") == "reconnecting"

        await _until(reconnecting, "the page never said it was reconnecting", 30.0)
        assert "reconnecting" in await connection.inner_text()
        assert errors == []


async def test_a_wrong_token_shows_an_error_and_no_frames(
    browser: Browser, tmp_path: Path, demo_assets: DemoAssets
) -> None:
    token = "page-test-token-0123456789"
    async with _live_worker(tmp_path, demo_assets, token=token) as live:
        page, errors = await _new_page(browser)
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        await page.goto(f"{live.worker.base}/live")  # the page itself is open
        form = page.locator('[data-testid="token-form"]')
        await form.wait_for(state="visible", timeout=WAIT_S * 1000)
        await page.locator('[data-testid="token-input"]').fill(token + "-wrong")
        await page.locator('[data-testid="token-submit"]').click()
        auth_error = page.locator('[data-testid="auth-error"]')
        await auth_error.wait_for(state="visible", timeout=WAIT_S * 1000)
        assert "refused" in await auth_error.inner_text()
        await asyncio.sleep(2.0)  # what would have arrived by now: nothing
        assert await page.locator('[data-testid="tile"]').count() == 0
        assert await page.locator("img[src]").count() == 0
        assert await page.evaluate("() => sessionStorage.getItem('ptw.live.token')") is None
        await page.screenshot(path=tmp_path / "live-wrong-token.png")

        # The right token: frames, over the WebSocket subprotocol; never in the URL.
        await page.locator('[data-testid="token-input"]').fill(token)
        await page.locator('[data-testid="token-submit"]').click()
        image = page.locator(TILE).locator('[data-testid="tile-image"]')
        await _until(lambda: _decoded(image), "no frame with the right token", log=live.log())
        assert await form.is_hidden()
        assert token not in page.url
        assert sockets and all("?" not in url and token not in url for url in sockets), sockets
        assert await page.evaluate("() => sessionStorage.getItem('ptw.live.token')") == token
        assert errors == []


async def test_swagger_ui_renders_the_operation_list(
    browser: Browser, client: TestClient[Any, Any]
) -> None:
    async with client.get("/docs") as response:
        assert response.status == 200
    page, errors = await _new_page(browser)
    await page.goto(str(client.make_url("/docs")))
    operations = page.locator(".opblock")
    await operations.first.wait_for(state="visible", timeout=WAIT_S * 1000)
    summaries = await page.locator(".opblock-summary-path").all_inner_texts()
    assert any("/api/stream/start" in text for text in summaries), summaries
    assert any(text.endswith("/live") for text in summaries), summaries
    assert any("/ws/labels/{label}" in text for text in summaries), summaries
    assert errors == []
