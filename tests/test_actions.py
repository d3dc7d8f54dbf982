"""Redis actions against a real redis-server started by the tests."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path

import av
import numpy as np
import pytest
import redis.asyncio as aioredis

from pytrickle_worker.engine.mpta.actions import (
    ActionDispatcher,
    ActionJob,
    TemplateError,
    render_template,
)
from pytrickle_worker.engine.mpta.spec import RedisConfig, RedisPublishAction, RedisSaveImageAction
from tests.helpers import RedisProcess

DETECTION = {"class": "car", "confidence": 0.91, "id": 7}


def _redis_config(server: RedisProcess) -> RedisConfig:
    return RedisConfig(host="127.0.0.1", port=server.port)


def _image(width: int = 64, height: int = 48) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = (220, 40, 40)
    return image


def _save(key: str, expire: int | None = None) -> RedisSaveImageAction:
    return RedisSaveImageAction(type="redis_save_image", key=key, expire_seconds=expire)


def _publish(channel: str, message: str) -> RedisPublishAction:
    return RedisPublishAction(type="redis_publish", channel=channel, message=message)


def test_render_template_leaves_json_braces_alone() -> None:
    rendered = render_template(
        '{"class":"{class}","confidence":{confidence},"id":{id},"x":{"y":1}}',
        {"class": "car", "confidence": 0.5, "id": None},
    )
    assert json.loads(rendered) == {"class": "car", "confidence": 0.5, "id": None, "x": {"y": 1}}


@pytest.mark.parametrize(
    ("template", "rendered"),
    [
        # str.format templates, as archives written for the original worker escape braces.
        ('{{"event":"new","class":"{class}"}}', '{"event":"new","class":"car"}'),
        ('{{"conf":{confidence:.2f},"id":{id}}}', '{"conf":0.88,"id":3}'),
        ("{class!r} at {confidence:>7.3f}", "'car' at   0.876"),
        ("x{{y}}z", "x{y}z"),
        # Plain placeholders read the same either way; values are spelled JSON-style.
        ("frame:{class}:{id}:{none}:{flag}", "frame:car:3:null:true"),
        # Unescaped JSON (the original's docs' example, on which its str.format raised).
        ('{"event":{"class":"{class}","id":{id}}}', '{"event":{"class":"car","id":3}}'),
        # Never a reach into a value, nor positional fields: left as written.
        ("{class.__class__}:{0}:{}", "{class.__class__}:{0}:{}"),
        ("a}b{class}", "a}bcar"),
    ],
)
def test_render_template_reads_format_strings_and_plain_json(template: str, rendered: str) -> None:
    context = {"class": "car", "confidence": 0.876, "id": 3, "none": None, "flag": True}
    assert render_template(template, context) == rendered


def test_render_template_a_spec_that_does_not_fit_names_it() -> None:
    with pytest.raises(TemplateError, match=r"\{class\}.*format spec '\.2f'") as info:
        render_template("{class:.2f}", {"class": "car"})
    assert info.value.key == "class"
    with pytest.raises(TemplateError, match=r"\{plate\}"):
        render_template("{{ {plate} }}", {"class": "car"})


def test_render_template_unknown_placeholder_names_the_key() -> None:
    with pytest.raises(TemplateError, match=r"\{plate\}") as info:
        render_template("det:{class}:{plate}", {"class": "car"})
    assert info.value.key == "plate"
    assert "available: class" in str(info.value)


async def test_save_with_expiry_then_publish_with_image_key(redis_server: RedisProcess) -> None:
    client = aioredis.Redis(port=redis_server.port)
    pubsub = client.pubsub()
    await pubsub.subscribe("events")
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    dispatcher = ActionDispatcher(retry_interval_s=0.1)
    try:
        job = ActionJob(
            node_path="pipeline",
            actions=[
                _save("img:{class}:{id}:{uuid}", expire=120),
                _publish(
                    "events",
                    '{"class":"{class}","id":{id},"image_key":"{image_key}","ts":{timestamp_ms}}',
                ),
            ],
            detection=DETECTION,
            image=_image(),
        )
        assert dispatcher.submit(_redis_config(redis_server), job)
        assert await dispatcher.drain(5)
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
        assert message is not None
        payload = json.loads(message["data"])
        assert payload["class"] == "car" and payload["id"] == 7
        key = payload["image_key"]
        assert key.startswith("img:car:7:")
        ttl = await client.ttl(key)
        assert 0 < ttl <= 120
        jpeg = await client.get(key)
        assert jpeg is not None and jpeg[:2] == b"\xff\xd8"
        with av.open(io.BytesIO(jpeg)) as container:
            frame = next(container.decode(video=0))
        assert (frame.width, frame.height) == (64, 48)
        assert dispatcher.stats.completed_actions == 2
    finally:
        await dispatcher.close()
        await pubsub.aclose()
        await client.aclose()


async def test_save_without_expiry_has_no_ttl(redis_server: RedisProcess) -> None:
    client = aioredis.Redis(port=redis_server.port)
    dispatcher = ActionDispatcher()
    try:
        job = ActionJob("pipeline", [_save("noexp:{uuid}")], DETECTION, _image())
        dispatcher.submit(_redis_config(redis_server), job)
        assert await dispatcher.drain(5)
        key = str(job.context["image_key"])
        assert await client.ttl(key) == -1
    finally:
        await dispatcher.close()
        await client.aclose()


async def test_unknown_placeholder_is_logged_and_skipped(
    redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    client = aioredis.Redis(port=redis_server.port)
    dispatcher = ActionDispatcher()
    try:
        job = ActionJob(
            "pipeline.branches[0]",
            [_save("bad:{licence_plate}"), _save("good:{class}:{uuid}")],
            DETECTION,
            _image(),
        )
        with caplog.at_level(logging.ERROR):
            dispatcher.submit(_redis_config(redis_server), job)
            assert await dispatcher.drain(5)
        assert dispatcher.stats.template_errors == 1
        assert dispatcher.stats.completed_actions == 1
        assert any("{licence_plate}" in r.getMessage() for r in caplog.records)
        assert await client.exists(str(job.context["image_key"])) == 1
    finally:
        await dispatcher.close()
        await client.aclose()


async def test_redis_outage_loses_no_buffered_action(private_redis: RedisProcess) -> None:
    config = _redis_config(private_redis)
    dispatcher = ActionDispatcher(retry_interval_s=0.1)
    jobs = [
        ActionJob("pipeline", [_save(f"outage:{i}:{{uuid}}")], DETECTION, _image())
        for i in range(20)
    ]
    try:
        # Warm the connection, then take the server away.
        dispatcher.submit(config, jobs[0])
        assert await dispatcher.drain(5)
        private_redis.stop()
        for job in jobs[1:]:
            dispatcher.submit(config, job)
        await asyncio.sleep(0.5)
        snapshot = dispatcher.snapshot()
        assert snapshot["pending"] == 19
        assert dispatcher.stats.redis_outages == 1
        assert next(iter(snapshot["targets"].values()))["online"] is False

        private_redis.start()
        assert await dispatcher.drain(10)
        client = aioredis.Redis(port=private_redis.port)
        try:
            for job in jobs[1:]:
                assert await client.exists(str(job.context["image_key"])) == 1
        finally:
            await client.aclose()
        assert dispatcher.stats.completed_actions == 20
        assert dispatcher.stats.dropped_overflow == 0
        assert dispatcher.snapshot()["targets"][f"redis://127.0.0.1:{private_redis.port}/0"][
            "online"
        ]
    finally:
        await dispatcher.close(drain_timeout_s=0)


async def test_overflow_drops_the_oldest_and_counts(private_redis: RedisProcess) -> None:
    config = _redis_config(private_redis)
    dispatcher = ActionDispatcher(max_pending=3, retry_interval_s=0.1)
    jobs = [ActionJob("pipeline", [_save(f"ovf:{i}")], DETECTION, _image()) for i in range(5)]
    try:
        private_redis.stop()
        for job in jobs:
            dispatcher.submit(config, job)
        assert dispatcher.stats.dropped_overflow == 2
        private_redis.start()
        assert await dispatcher.drain(10)
        client = aioredis.Redis(port=private_redis.port)
        try:
            present = [await client.exists(f"ovf:{i}") for i in range(5)]
        finally:
            await client.aclose()
        assert present == [0, 0, 1, 1, 1]
    finally:
        await dispatcher.close(drain_timeout_s=0)


async def test_retry_after_partial_job_does_not_publish_twice(private_redis: RedisProcess) -> None:
    """A job whose first action succeeded resumes at its second action after an outage."""
    config = _redis_config(private_redis)
    dispatcher = ActionDispatcher(retry_interval_s=0.1)
    job = ActionJob(
        "pipeline", [_save("part:{uuid}"), _publish("c", "{image_key}")], DETECTION, _image()
    )
    job.next_action = 1  # as if the save had already run before the outage
    job.context["image_key"] = "part:already-saved"
    try:
        private_redis.stop()
        dispatcher.submit(config, job)
        await asyncio.sleep(0.3)
        private_redis.start()
        client = aioredis.Redis(port=private_redis.port)
        pubsub = client.pubsub()
        await pubsub.subscribe("c")
        await pubsub.get_message(timeout=1)
        assert await dispatcher.drain(10)
        assert dispatcher.stats.completed_actions == 1
        assert await client.keys("part:*") == []
        await pubsub.aclose()
        await client.aclose()
    finally:
        await dispatcher.close(drain_timeout_s=0)


async def test_no_redis_configured_means_nothing_queued() -> None:
    dispatcher = ActionDispatcher()
    job = ActionJob("pipeline", [_save("x")], DETECTION, _image())
    assert dispatcher.submit(None, job) is False
    assert dispatcher.stats.submitted == 0
    await dispatcher.close()


def test_redis_url_quotes_the_password_and_masks_it() -> None:
    from pytrickle_worker.core.logutil import mask_url  # noqa: PLC0415
    from pytrickle_worker.engine.mpta.actions import redis_target_url  # noqa: PLC0415

    url = redis_target_url(RedisConfig(host="redis.local", port=6380, password="p@ss/w:rd", db=2))
    assert url == "redis://:p%40ss%2Fw%3Ard@redis.local:6380/2"
    assert "p%40ss" not in mask_url(url)


async def test_password_protected_redis(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path / "redis", extra_args=["--requirepass", "s3cr@t"])
    server.start()
    dispatcher = ActionDispatcher()
    try:
        config = RedisConfig(host="127.0.0.1", port=server.port, password="s3cr@t")
        job = ActionJob("pipeline", [_save("auth:{uuid}")], DETECTION, _image())
        dispatcher.submit(config, job)
        assert await dispatcher.drain(5)
        client = aioredis.Redis(port=server.port, password="s3cr@t")
        assert await client.exists(str(job.context["image_key"])) == 1
        await client.aclose()
    finally:
        await dispatcher.close(drain_timeout_s=0)
        server.stop()
