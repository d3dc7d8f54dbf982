"""A minimal CMS backend: subscribe one camera to one MPTA and print what the worker sends.

    python examples/cms_client.py [--worker ws://127.0.0.1:8000/] [--camera URL_OR_PATH]
                                  [--model URL_OR_PATH] [--seconds 20] [--session 42]

Defaults use the demo assets that `pytrickle-worker serve` builds on first start, in the
folder the worker uses (PTW_DEMO_DIR, else $PTW_CACHE_DIR/demo, else
$XDG_CACHE_HOME/pytrickle-worker/demo, else ~/.cache/pytrickle-worker/demo; ./config.json's
demo_dir/cache_dir too, as the worker reads them): the sample video as the camera, the demo
MPTA as the model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

import aiohttp

from pytrickle_worker.config import WorkerConfig


def demo_dir() -> Path:
    """The worker's own demo folder, resolved exactly as `pytrickle-worker serve` does."""
    return WorkerConfig.load().resolved_demo_dir


async def run(args: argparse.Namespace) -> int:
    identifier = "display-001;cam-001"
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(args.worker, headers=headers) as ws,
    ):
        await ws.send_json(
            {
                "type": "subscribe",
                "payload": {
                    "subscriptionIdentifier": identifier,
                    "rtspUrl": args.camera,
                    "modelUrl": args.model,
                    "modelId": 101,
                    "modelName": "Demo vehicles",
                },
            }
        )
        if args.session is not None:
            await ws.send_json(
                {
                    "type": "setSessionId",
                    "payload": {"displayIdentifier": "display-001", "sessionId": args.session},
                }
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.seconds
        while (remaining := deadline - loop.time()) > 0:
            try:
                message = await ws.receive(timeout=remaining)
            except TimeoutError:
                break
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if data["type"] == "stateReport":
                cams = [
                    (c["subscriptionIdentifier"], c["online"]) for c in data["cameraConnections"]
                ]
                print(f"stateReport cpu={data['cpuUsage']}% cameras={cams}")
            else:
                print(json.dumps(data))
        await ws.send_json(
            {"type": "unsubscribe", "payload": {"subscriptionIdentifier": identifier}}
        )
        await asyncio.sleep(0.5)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    demo = demo_dir()
    parser.add_argument("--worker", default="ws://127.0.0.1:8000/")
    parser.add_argument("--camera", default=str(demo / "sample.mp4"))
    parser.add_argument("--model", default=str(demo / "demo.mpta"))
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--session", type=int)
    parser.add_argument(
        "--token",
        default=os.environ.get("PTW_ACCESS_TOKEN"),
        help="the worker's access token, when it requires one (default: $PTW_ACCESS_TOKEN)",
    )
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
