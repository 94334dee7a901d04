"""YAML documents checked by pydantic models: every problem named by file, line and field, all at once."""

from __future__ import annotations

import pytest
from google.protobuf import json_format
from pydantic import BaseModel, ConfigDict, Field

from infermesh.bizcenter.v1 import biz_center_pb2 as pb
from infermesh_chassis.documents import DocumentError, load_yaml, proto_json_model


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Port(_Strict):
    number: int = Field(gt=0)
    name: str = ""


class Server(_Strict):
    host: str
    ports: list[Port] = []
    labels: dict[str, Port] = {}


TEXT = """\
defaults: &defaults
  host: a.example
servers:
  - <<: *defaults
    ports:
      - {number: 80}
      - number: 0
        nmae: http
  - host: 7
    labels:
      web: {number: x}
"""


def _problems(text: str, model: type[BaseModel], loc: tuple[str | int, ...] = ()) -> list[str]:
    with pytest.raises(DocumentError) as caught:
        load_yaml(text, "f.yaml").validate(model, loc)
    assert str(caught.value).splitlines() == list(caught.value.problems)
    return list(caught.value.problems)


def test_lines_of_keys_and_items_follow_merges_and_flow_style():
    document = load_yaml(TEXT, "f.yaml")
    assert document.data["servers"][0]["host"] == "a.example"
    assert document.line(("servers", 0, "ports", 1, "nmae")) == 8
    assert document.line(("servers", 1, "labels", "web", "number")) == 11
    assert document.line(("servers", 1, "missing", "deeper")) == 9  # the nearest parent in the file
    assert document.line(()) == 1


def test_every_problem_is_one_line_in_line_order():
    class Config(_Strict):
        defaults: dict[str, str]
        servers: list[Server]

    assert _problems(TEXT, Config) == [
        "f.yaml:7: servers[0].ports[1].number: Input should be greater than 0",
        "f.yaml:8: servers[0].ports[1].nmae: unknown key; expected one of number, name",
        "f.yaml:9: servers[1].host: Input should be a valid string, not 7",
        "f.yaml:11: servers[1].labels.web.number: Input should be a valid integer, not 'x'",
    ]


def test_a_part_of_a_document_is_checked_under_its_own_path():
    assert _problems("a:\n  b:\n    - {port: 1}\n", Server, ("a", "b", 0)) == [
        "f.yaml:3: a.b[0].host: required",
        "f.yaml:3: a.b[0].port: unknown key; expected one of host, ports, labels",
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a: 1\na: 2\n", "f.yaml:2: duplicate key 'a'"),
        ("? [1, 2]\n: x\n", "f.yaml:1: keys must be text"),
        ("a: &x [*x]\n", "f.yaml:1: a[0]: an alias refers to itself"),
        ("a: [1,\n", "f.yaml:2: not valid YAML: expected the node content, but found '<stream end>'"),
    ],
)
def test_what_is_not_a_plain_yaml_document_is_refused_with_its_line(text: str, problem: str):
    with pytest.raises(DocumentError) as caught:
        load_yaml(text, "f.yaml")
    assert caught.value.problems == (problem,)


def test_a_protobuf_json_model_takes_what_the_json_parser_takes():
    text = """\
name: s
sloDeadline: 0.25s
model_routing: {model: {model: churn, version: "12"}}
rate_limit: {mode: 1, burst: 200.0}
gray_release: {ramp: [{start_time: "2026-12-01T00:00:00Z", percentage: 10}]}
fallback_chain: [{rule_default: {default_prediction: {scores: {stay: 1}}}}]
"""
    document = load_yaml(text, "f.yaml")
    document.validate(proto_json_model(pb.Scene.DESCRIPTOR))
    scene = json_format.ParseDict(document.data, pb.Scene())
    assert (scene.model_routing.model.version, scene.rate_limit.burst) == (12, 200)


def test_a_protobuf_json_model_names_each_wrong_field():
    text = """\
name: s
slo_deadline: 250ms
model_routing: {model: {model: churn, version: 2, alias: prod}}
rate_limit: {mode: LOCAL, burst: 1.5, requests_per_second: fast}
gray_release: {ramp: [{start_time: "2026-13-01"}], allowlist_unit_ids: [9001]}
fallback_chain: [{rule_default: {default_prediction: {scores: {stay: high}}}}]
enabeld: true
"""
    assert _problems(text, proto_json_model(pb.Scene.DESCRIPTOR)) == [
        "f.yaml:2: slo_deadline: a duration is text such as '0.25s' or '3600s', not '250ms'",
        "f.yaml:3: model_routing.model: give only one of version, alias, not version and alias",
        "f.yaml:4: rate_limit.requests_per_second: expected a number, not 'fast'",
        "f.yaml:4: rate_limit.burst: expected an integer, not 1.5",
        "f.yaml:4: rate_limit.mode: expected one of RATE_LIMIT_MODE_UNSPECIFIED, RATE_LIMIT_MODE_LOCAL, "
        "RATE_LIMIT_MODE_GLOBAL, not 'LOCAL'",
        "f.yaml:5: gray_release.allowlist_unit_ids[0]: Input should be a valid string, not 9001",
        "f.yaml:5: gray_release.ramp[0].start_time: a time is RFC 3339 text such as '2026-12-01T00:00:00Z', "
        "not '2026-13-01'",
        "f.yaml:6: fallback_chain[0].rule_default.default_prediction.scores.stay: expected a number, not 'high'",
        "f.yaml:7: enabeld: unknown key; expected one of name, description, config_version, feature_service, "
        "feature_definition_version, unit_id_key, model_routing, response_mapping, slo_deadline, max_concurrency, "
        "rate_limit, fallback_chain, gray_release, enabled, owner, update_time, updated_by, stream_bindings",
    ]
