"""pipeline.json models and error reporting (pytrickle_worker.engine.mpta.spec)."""

# ruff: noqa: E501  (the pympta.md example below has a long line)

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from pytrickle_worker.core.errors import MptaError, SpecError
from pytrickle_worker.engine.mpta.spec import (
    ACTION_TYPES,
    PipelineNode,
    PipelineSpec,
    RedisPublishAction,
    RedisSaveImageAction,
    iter_nodes,
    parse_pipeline_json,
)

# The example from pympta.md, verbatim.
PYMPTA_EXAMPLE = r"""
{
  "redis": {
    "host": "redis.local",
    "port": 6379,
    "password": "your-super-secret-password"
  },
  "pipeline": {
    "modelId": "vehicle-detector",
    "modelFile": "vehicle_model.pt",
    "minConfidence": 0.6,
    "triggerClasses": ["car", "truck"],
    "actions": [
      {
        "type": "redis_save_image",
        "key": "detections:{class}:{timestamp_ms}:{uuid}",
        "expire_seconds": 3600
      },
      {
        "type": "redis_publish",
        "channel": "vehicle_events",
        "message": "{\"event\":\"new_detection\",\"class\":\"{class}\",\"confidence\":{confidence},\"image_key\":\"{image_key}\"}"
      }
    ],
    "branches": []
  }
}
"""


def _node(model_id: str = "n", **extra: Any) -> dict[str, Any]:
    node: dict[str, Any] = {
        "modelId": model_id,
        "modelFile": f"{model_id}.onnx",
        "minConfidence": 0.5,
        "triggerClasses": ["car"],
    }
    node.update(extra)
    return node


def _tree() -> dict[str, Any]:
    return {
        "pipeline": _node(
            "root",
            branches=[
                _node("plate", crop=True, branches=[_node("ocr")]),
                _node("colour"),
            ],
        )
    }


def _error(doc: object) -> str:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    with pytest.raises(SpecError) as info:
        parse_pipeline_json(text)
    return str(info.value)


def test_pympta_example_parses() -> None:
    spec = parse_pipeline_json(PYMPTA_EXAMPLE)
    assert spec.redis is not None
    assert (spec.redis.host, spec.redis.port, spec.redis.db) == ("redis.local", 6379, 0)
    assert spec.redis.password == "your-super-secret-password"
    assert "your-super-secret-password" not in repr(spec.redis)
    node = spec.pipeline
    assert node.model_id == "vehicle-detector"
    assert node.model_file == "vehicle_model.pt"
    assert node.min_confidence == pytest.approx(0.6)
    assert node.trigger_classes == ["car", "truck"]
    assert node.crop is False
    assert node.branches == []
    save, publish = node.actions
    assert isinstance(save, RedisSaveImageAction)
    assert save.key == "detections:{class}:{timestamp_ms}:{uuid}"
    assert save.expire_seconds == 3600
    assert isinstance(publish, RedisPublishAction)
    assert publish.channel == "vehicle_events"
    assert "{image_key}" in publish.message


def test_bytes_with_bom_and_defaults() -> None:
    spec = parse_pipeline_json(b"\xef\xbb\xbf" + json.dumps({"pipeline": _node()}).encode())
    assert spec.redis is None
    assert spec.pipeline.actions == []
    assert spec.pipeline.branches == []
    assert spec.pipeline.crop is False


def test_round_trip_with_aliases() -> None:
    spec = parse_pipeline_json(PYMPTA_EXAMPLE)
    dumped = spec.model_dump(by_alias=True, exclude_none=True)
    assert dumped["pipeline"]["modelId"] == "vehicle-detector"
    assert parse_pipeline_json(json.dumps(dumped)) == spec


def test_python_construction_by_field_name() -> None:
    node = PipelineNode.model_validate(
        {"model_id": "a", "model_file": "a.onnx", "min_confidence": 0.1, "trigger_classes": []}
    )
    assert node.model_id == "a"
    assert PipelineSpec(pipeline=node).pipeline is node


def test_unknown_keys_tolerated() -> None:
    doc = _tree()
    doc["version"] = 2
    doc["pipeline"]["comment"] = "hello"
    doc["pipeline"]["actions"] = [
        {"type": "redis_publish", "channel": "c", "message": "m", "qos": 1}
    ]
    spec = parse_pipeline_json(json.dumps(doc))
    assert spec.model_extra == {"version": 2}
    assert spec.pipeline.model_extra == {"comment": "hello"}
    assert spec.pipeline.actions[0].model_extra == {"qos": 1}


def test_iter_nodes_depth_first() -> None:
    spec = parse_pipeline_json(json.dumps(_tree()))
    assert [(path, node.model_id) for path, node in iter_nodes(spec.pipeline)] == [
        ("pipeline", "root"),
        ("pipeline.branches[0]", "plate"),
        ("pipeline.branches[0].branches[0]", "ocr"),
        ("pipeline.branches[1]", "colour"),
    ]


def test_expire_seconds_integral_float_accepted_fraction_rejected() -> None:
    doc = {
        "pipeline": _node(
            actions=[{"type": "redis_save_image", "key": "k", "expire_seconds": 60.0}]
        )
    }
    action = parse_pipeline_json(json.dumps(doc)).pipeline.actions[0]
    assert isinstance(action, RedisSaveImageAction)
    assert action.expire_seconds == 60
    assert isinstance(action.expire_seconds, int)
    bad = copy.deepcopy(doc)
    bad["pipeline"]["actions"][0]["expire_seconds"] = 1.5
    assert "pipeline.actions[0].expire_seconds" in _error(bad)
    bad["pipeline"]["actions"][0]["expire_seconds"] = -5
    assert "pipeline.actions[0].expire_seconds" in _error(bad)
    # 0 is "no expiry", as the original worker read it (it set EX only when truthy).
    zero = copy.deepcopy(doc)
    zero["pipeline"]["actions"][0]["expire_seconds"] = 0
    action = parse_pipeline_json(json.dumps(zero)).pipeline.actions[0]
    assert isinstance(action, RedisSaveImageAction) and action.expire_seconds is None


def test_error_names_nested_min_confidence() -> None:
    doc = _tree()
    doc["pipeline"]["branches"][0]["minConfidence"] = 1.5
    message = _error(doc)
    assert "pipeline.branches[0].minConfidence" in message
    assert "1.5" in message
    assert issubclass(SpecError, MptaError)


def test_error_names_deep_missing_field() -> None:
    doc = _tree()
    del doc["pipeline"]["branches"][0]["branches"][0]["modelFile"]
    message = _error(doc)
    assert "pipeline.branches[0].branches[0].modelFile: required field is missing" in message


def test_optional_keys_read_as_the_original_read_them() -> None:
    # The original worker read these with .get(key, default) and took any modelId: archives
    # written for it must load.
    doc = _tree()
    del doc["pipeline"]["triggerClasses"]
    doc["pipeline"]["modelId"] = 101
    doc["pipeline"]["branches"][0]["crop"] = None
    doc["pipeline"]["branches"][0]["actions"] = None
    doc["pipeline"]["branches"][1]["branches"] = None
    doc["pipeline"]["branches"][1]["modelId"] = 7.5
    spec = parse_pipeline_json(json.dumps(doc))
    assert spec.pipeline.trigger_classes == []
    assert spec.pipeline.model_id == "101"
    assert spec.pipeline.branches[0].crop is False
    assert spec.pipeline.branches[0].actions == []
    assert spec.pipeline.branches[1].branches == []
    assert spec.pipeline.branches[1].model_id == "7.5"
    doc["pipeline"]["modelId"] = True  # not a number: still refused
    assert "pipeline.modelId" in _error(doc)


def test_min_confidence_is_required() -> None:
    doc = _tree()
    del doc["pipeline"]["minConfidence"]
    assert "pipeline.minConfidence: required field is missing" in _error(doc)


def test_numeric_strings_are_accepted_but_words_are_not() -> None:
    doc = _tree()
    doc["pipeline"]["minConfidence"] = "0.5"
    doc["redis"] = {"host": "h", "port": "6379"}
    spec = parse_pipeline_json(json.dumps(doc))
    assert spec.pipeline.min_confidence == 0.5
    assert spec.redis is not None and spec.redis.port == 6379

    doc["pipeline"]["minConfidence"] = "high"
    doc["redis"] = {"host": "h", "port": "redis"}
    message = _error(doc)
    assert "pipeline.minConfidence" in message
    assert "redis.port" in message


def test_unknown_action_types_are_set_aside_not_refused() -> None:
    # The original worker skipped action types it did not know (postgresql_update_combined
    # in the archives of its time); the loader logs them.
    doc = _tree()
    doc["pipeline"]["actions"] = [
        {"type": "redis_publish", "channel": "c", "message": "m"},
        {"type": "send_email", "to": "x"},
        {"type": "postgresql_update_combined", "table": "car_frontal_info", "fields": {}},
    ]
    spec = parse_pipeline_json(json.dumps(doc))
    assert [a.type for a in spec.pipeline.actions] == ["redis_publish"]
    assert spec.pipeline.ignored_action_types == ["send_email", "postgresql_update_combined"]
    assert "ignoredActionTypes" not in spec.pipeline.model_dump(by_alias=True)
    # A known type with a bad field is still an error naming it.
    doc["pipeline"]["actions"][0]["channel"] = ""
    assert "pipeline.actions[0].channel" in _error(doc)
    for kind in ACTION_TYPES:
        assert kind in {"redis_save_image", "redis_publish"}


def test_action_without_type_and_field_error_inside_action() -> None:
    doc = _tree()
    doc["pipeline"]["branches"][1]["actions"] = [
        {"channel": "c"},
        {"type": "redis_publish", "channel": "", "message": "m"},
    ]
    message = _error(doc)
    assert "pipeline.branches[1].actions[0]: action has no 'type'" in message
    # the discriminator tag segment is dropped from the path
    assert "pipeline.branches[1].actions[1].channel:" in message
    assert "redis_publish.channel" not in message


def test_several_errors_listed_one_per_line() -> None:
    doc = _tree()
    doc["pipeline"]["minConfidence"] = -0.1
    doc["pipeline"]["branches"][1]["modelId"] = ""
    doc["redis"] = {"host": "h", "port": 70000, "db": -1}
    message = _error(doc)
    lines = message.splitlines()
    assert lines[0] == "pipeline.json: 4 spec errors:"
    assert any(line.strip().startswith("pipeline.minConfidence:") for line in lines)
    assert any(line.strip().startswith("pipeline.branches[1].modelId:") for line in lines)
    assert any(line.strip().startswith("redis.port:") for line in lines)
    assert any(line.strip().startswith("redis.db:") for line in lines)


def test_missing_pipeline() -> None:
    assert "pipeline: required field is missing" in _error({"redis": {"host": "h", "port": 1}})


def test_document_not_an_object() -> None:
    assert "expected a JSON object (got array)" in _error("[1, 2]")


def test_bad_json_reports_line_and_column() -> None:
    message = _error('{\n  "pipeline": {\n    "modelId": "a",\n  }\n}')
    assert message.startswith("pipeline.json: invalid JSON at line 4, column 3")


def test_nan_and_invalid_utf8_rejected() -> None:
    assert "NaN" in _error('{"pipeline": {"minConfidence": NaN}}')
    with pytest.raises(SpecError, match="UTF-8"):
        parse_pipeline_json(b'{"pipeline": "\xff"}')


def test_source_name_used_in_messages() -> None:
    with pytest.raises(SpecError, match=r"^demo\.mpta:pipeline\.json: invalid JSON"):
        parse_pipeline_json("{", source="demo.mpta:pipeline.json")


@pytest.mark.parametrize(
    "model_file",
    [
        "/etc/passwd",
        "../outside.onnx",
        "models/../../x.onnx",
        "C:/x.onnx",
        "a\\..\\b.onnx",
        "",
        "./",
    ],
)
def test_model_file_must_stay_inside_archive(model_file: str) -> None:
    doc = _tree()
    doc["pipeline"]["branches"][0]["modelFile"] = model_file
    message = _error(doc)
    assert "pipeline.branches[0].modelFile:" in message


def test_model_file_relative_subdir_ok() -> None:
    doc = _tree()
    doc["pipeline"]["modelFile"] = "./models/root.onnx"
    assert parse_pipeline_json(json.dumps(doc)).pipeline.model_file == "./models/root.onnx"


def test_password_value_not_echoed_in_errors() -> None:
    doc = _tree()
    doc["redis"] = {"host": "h", "port": 1, "password": 123456789}
    message = _error(doc)
    assert "redis.password" in message
    assert "123456789" not in message
