"""Definition files: every error names its file and line; the bundled example loads and serves."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import grpc
import pytest

from infermesh.common.v1 import common_pb2
from infermesh.datagateway.v1 import data_gateway_pb2 as pb
from infermesh_data_gateway.definitions import DefinitionError, load_definitions

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "churn"

BASE = """\
entities:
  customer:
    keys: {customer_id: INT64}
sources:
  store: {kind: sqlite, path: x.db}
feature_views:
  v:
    entities: [customer]
    source: store
    fields: {x: FP64, s: STRING, t: TIMESTAMP}
feature_services:
  svc:
    entities: [customer]
    features:
      - {name: f, dtype: FP32, expr: "%s"}
"""


def _load(tmp_path: Path, text: str) -> None:
    (tmp_path / "defs.yaml").write_text(text)
    load_definitions(tmp_path)


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("log(v.y)", r"defs.yaml:15: feature_services.svc.features\[0\]\(f\).expr: 'y' is not a field of view 'v'"),
        ("v.x +", r"defs.yaml:15: .*syntax error"),
        ("w.x", r"defs.yaml:15: .*unknown feature view 'w'"),
        ("frobnicate(v.x)", r"defs.yaml:15: .*unknown function frobnicate\(\)"),
        ("v.s * 2", r"defs.yaml:15: .*expected a number, got a str value"),
        ("v.t", r"defs.yaml:15: .*a timestamp is not a model input"),
        ("bucketize(v.x, [3, 1])", r"defs.yaml:15: .*strictly increasing"),
        ("standardize(v.x, 'nope')", r"defs.yaml:15: .*unknown statistics 'nope'"),
        ("request.amount", r"defs.yaml:15: .*request value 'amount' is not declared"),
    ],
)
def test_bad_expressions_name_file_and_line(tmp_path: Path, expr: str, message: str):
    with pytest.raises(DefinitionError, match=message):
        _load(tmp_path, BASE % expr)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("source: store", "source: nowhere", r"defs.yaml:9: feature_views.v.source: unknown source 'nowhere'"),
        ("{x: FP64,", "{x: FP65,", r"defs.yaml:10: feature_views.v.fields.x: unknown dtype 'FP65'"),
        (
            "[customer]\n    source",
            "[client]\n    source",
            r"defs.yaml:8: feature_views.v.entities\[0\]: unknown entity 'client'",
        ),
        ("kind: sqlite", "kind: oracle", r"defs.yaml:5: sources.store.kind: kind must be one of"),
        ("dtype: FP32", "dtype: FP33", r"defs.yaml:15: .*dtype must be one of"),
        (
            "    source: store",
            "    source: store\n    ttl: 3 days",
            r"defs.yaml:10: feature_views.v.ttl: .*not a duration",
        ),
        (
            "    source: store",
            "    source: store\n    colour: red",
            r"defs.yaml:10: feature_views.v.colour: unknown key",
        ),
        ("keys: {customer_id: INT64}", "keys: {customer_id: FP64}", r"defs.yaml:3: .*a key is INT64 or STRING"),
    ],
)
def test_bad_definitions_name_file_and_line(tmp_path: Path, old: str, new: str, message: str):
    with pytest.raises(DefinitionError, match=message):
        _load(tmp_path, (BASE % "v.x").replace(old, new, 1))


@pytest.mark.parametrize(
    ("old", "new", "problems"),
    [
        (  # a typo: the unknown key is refused, and what it should have been is missing
            "    source: store",
            "    sorce: store",
            [
                "defs.yaml:7: feature_views.v.source: required",
                "defs.yaml:9: feature_views.v.sorce: unknown key; expected one of entities, fields, ttl, owner, "
                "description, source, fallbacks, routes, offline, online_store, timestamp_field, bindings, cache, "
                "unavailable",
            ],
        ),
        (
            "dtype: FP32",
            "dtpye: FP32",
            [
                "defs.yaml:15: feature_services.svc.features[0].dtpye: unknown key; expected one of name, dtype, "
                "shape, expr, field, default, allow_missing, description"
            ],
        ),
        (  # the options a source takes depend on its kind
            "{kind: sqlite, path: x.db}",
            "{kind: sqlite, path: x.db, url: 'redis://x'}",
            [
                "defs.yaml:5: sources.store.url: unknown key; expected one of kind, timeout, pool_size, "
                "health_interval, description, path"
            ],
        ),
        (  # wrong types are refused, not converted
            "path: x.db}",
            "path: x.db, pool_size: '8'}",
            ["defs.yaml:5: sources.store.pool_size: Input should be a valid integer, not '8'"],
        ),
        (
            "expr: ",
            "allow_missing: 'yes', expr: ",
            [
                "defs.yaml:15: feature_services.svc.features[0].allow_missing: "
                "Input should be a valid boolean, not 'yes'"
            ],
        ),
        (
            "store: {kind: sqlite, path: x.db}",
            "store: [sqlite, x.db]",
            ["defs.yaml:5: sources.store: Input should be a valid dictionary, not ['sqlite', 'x.db']"],
        ),
        (  # a missing field names the field, at the line of what should hold it
            "    keys: {customer_id: INT64}",
            "    description: customers",
            ["defs.yaml:2: entities.customer.keys: required"],
        ),
        (
            "    entities: [customer]\n    features",
            "    features",
            ["defs.yaml:12: feature_services.svc.entities: required"],
        ),
    ],
)
def test_the_shape_of_a_file_is_checked_naming_file_line_and_field(
    tmp_path: Path, old: str, new: str, problems: list[str]
):
    text = (BASE % "v.x").replace(old, new, 1)
    assert text != BASE % "v.x"
    with pytest.raises(DefinitionError) as caught:
        _load(tmp_path, text)
    assert str(caught.value).splitlines() == [f"{tmp_path}/{problem}" for problem in problems]


def test_every_problem_of_every_file_is_reported_together(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(
        (BASE % "v.x").replace("{x: FP64,", "{x: FP65,").replace("dtype: FP32", "dtype: FP32, shape: [0]")
    )
    (tmp_path / "b.yaml").write_text(
        "entities:\n"
        "  merchant:\n"
        "    keys: {merchant_id: INT64}\n"
        "    colour: red\n"
        "sources:\n"
        "  cache: {kind: memcached}\n"
        "  lake: {kind: file, path: data, format: xlsx}\n"
        "  db: {path: x.db}\n"
        "feature_services:\n"
        "  svc: {entities: [customer], features: []}\n"
    )
    (tmp_path / "c.yaml").write_text("entities:\n  - [unclosed\n")
    with pytest.raises(DefinitionError) as caught:
        load_definitions(tmp_path)
    assert str(caught.value).splitlines() == [
        f"{tmp_path}/c.yaml:3: not valid YAML: expected ',' or ']', but got '<stream end>'",
        f"{tmp_path}/a.yaml:10: feature_views.v.fields.x: unknown dtype 'FP65'; expected one of BOOL, FP16, FP32, "
        "FP64, INT16, INT32, INT64, INT8, STRING, TIMESTAMP, UINT16, UINT32, UINT64, UINT8",
        f"{tmp_path}/a.yaml:15: feature_services.svc.features[0].shape[0]: Input should be greater than 0",
        f"{tmp_path}/b.yaml:4: entities.merchant.colour: unknown key; expected one of keys, description",
        f"{tmp_path}/b.yaml:6: sources.cache.kind: kind must be one of redis, postgres, sqlite, file, http, request; "
        "not 'memcached'",
        f"{tmp_path}/b.yaml:7: sources.lake.format: Input should be 'parquet' or 'csv'",
        f"{tmp_path}/b.yaml:8: sources.db.kind: kind must be one of redis, postgres, sqlite, file, http, request; "
        "required",
        f"{tmp_path}/b.yaml:10: feature_services.svc.features: "
        "List should have at least 1 item after validation, not 0",
    ]


def test_reference_problems_of_every_item_of_a_section_are_reported_together(tmp_path: Path):
    text = (BASE % "v.y").replace("source: store", "source: nowhere") + (
        "  other:\n"
        "    entities: [customer]\n"
        "    features: [{name: g, expr: 'w.x'}]\n"
        "  third:\n"
        "    entities: [client]\n"
        "    features: [{name: h, expr: '1'}]\n"
    )
    (tmp_path / "defs.yaml").write_text(text)
    with pytest.raises(DefinitionError) as caught:  # the views first: a service over a broken view would mislead
        load_definitions(tmp_path)
    assert str(caught.value).splitlines() == [
        f"{tmp_path}/defs.yaml:9: feature_views.v.source: unknown source 'nowhere' (declared: store)"
    ]
    (tmp_path / "defs.yaml").write_text(text.replace("source: nowhere", "source: store"))
    with pytest.raises(DefinitionError) as caught:
        load_definitions(tmp_path)
    problems = str(caught.value).splitlines()
    assert [p.split(": ", 2)[:2] for p in problems] == [
        [f"{tmp_path}/defs.yaml:15", "feature_services.svc.features[0](f).expr"],
        [f"{tmp_path}/defs.yaml:18", "feature_services.other.features[0](g).expr"],
        [f"{tmp_path}/defs.yaml:20", "feature_services.third.entities[0]"],
    ]
    assert "'y' is not a field of view 'v'" in problems[0] and "unknown feature view 'w'" in problems[1]
    assert problems[2].endswith("unknown entity 'client'")


def test_duplicates_across_files_name_both_places(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(BASE % "v.x")
    (tmp_path / "b.yaml").write_text("entities:\n  customer:\n    keys: {id: INT64}\n")
    with pytest.raises(DefinitionError, match=r"b.yaml:2: entities.customer: declared twice \(first at .*a.yaml:2\)"):
        load_definitions(tmp_path)


def test_invalid_yaml_and_defaults_are_refused(tmp_path: Path):
    with pytest.raises(DefinitionError, match=r"defs.yaml:3: not valid YAML"):
        _load(tmp_path, "entities:\n  - [unclosed\n")
    bad_default = (BASE % "v.x").replace('expr: "v.x"}', 'expr: "v.x", default: "high"}')
    with pytest.raises(DefinitionError, match=r"defs.yaml:15: .*default: 'high' is not a number"):
        _load(tmp_path, bad_default)


def test_version_is_declared_or_a_digest_of_the_files(tmp_path: Path):
    _load(tmp_path, BASE % "v.x")
    first = load_definitions(tmp_path).version
    assert first.startswith("sha-")
    (tmp_path / "defs.yaml").write_text((BASE % "v.x") + "project: {version: '7'}\n")
    assert load_definitions(tmp_path).version == "7"
    (tmp_path / "defs.yaml").write_text(BASE % "log1p(v.x)")
    assert load_definitions(tmp_path).version not in (first, "7")


async def test_the_example_loads_materializes_and_serves(tmp_path: Path, gateway_factory):
    definitions = load_definitions(EXAMPLE, {"DATA_GATEWAY_STATE_DIR": str(tmp_path)})
    assert definitions.sources["online"].options["path"] == f"{tmp_path}/churn-online.db"
    churn = definitions.services["churn"]
    assert sum(max(1, *f.shape) if f.shape else 1 for f in churn.features) == 10
    running = await gateway_factory(EXAMPLE, state_dir=tmp_path)  # the example's views materialize at start
    reply = await running.stub.GetFeatures(
        pb.GetFeaturesRequest(
            feature_service="churn",
            entities=[
                pb.EntityRow(
                    keys={"customer_id": common_pb2.Value(int64_value=7)},
                    request_values={"basket_amount": common_pb2.Value(double_value=20.0)},
                )
            ],
        )
    )
    row = reply.rows[0]
    assert list(row.statuses) == [pb.FEATURE_STATUS_OK] * 8
    assert {v.source for v in row.lineage.views} == {"online"}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.stub.GetFeatures(pb.GetFeaturesRequest(feature_service="churn", entities=[pb.EntityRow()]))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


RELOADABLE = """\
project: {version: "%s"}
entities: {customer: {keys: {customer_id: INT64}}}
sources:
  caller: {kind: request}
  gone: {kind: redis, url: "redis://127.0.0.1:1/0", timeout: 100ms}
feature_views:
  basket: {entities: [customer], fields: {amount: FP64}, source: caller}
  lost: {entities: [customer], fields: {x: FP64}, source: gone, unavailable: default}
feature_services:
  svc:
    entities: [customer]
    features:
      - {name: amount, dtype: FP64, expr: "%s", default: 0}
      - {name: x, dtype: FP64, field: lost.x, default: -1}
"""


def _request(version: str = "") -> pb.GetFeaturesRequest:
    return pb.GetFeaturesRequest(
        feature_service="svc",
        definition_version=version,
        entities=[
            pb.EntityRow(
                keys={"customer_id": common_pb2.Value(int64_value=1)},
                request_values={"amount": common_pb2.Value(double_value=3.0)},
            )
        ],
    )


async def test_reload_keeps_old_versions_and_refuses_broken_files(tmp_path: Path, gateway_factory):
    path = tmp_path / "defs.yaml"
    path.write_text(RELOADABLE % ("1", "basket.amount"))
    running = await gateway_factory(tmp_path)
    first = await running.stub.GetFeatures(_request())
    assert first.definition_version == "1" and first.rows[0].values[0].double_value == 3.0
    # Every source of `lost` is down, and the view says to serve defaults then.
    assert (first.rows[0].values[1].double_value, first.rows[0].statuses[1]) == (-1.0, pb.FEATURE_STATUS_DEFAULT)
    path.write_text(RELOADABLE % ("2", "basket.amount * 10"))
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert await running.gateway.reload()
    assert (await running.stub.GetFeatures(_request())).rows[0].values[0].double_value == 30.0
    assert (await running.stub.GetFeatures(_request("1"))).rows[0].values[0].double_value == 3.0
    path.write_text(RELOADABLE % ("3", "basket.nope"))
    os.utime(path, (time.time() + 10, time.time() + 10))
    assert not await running.gateway.reload()
    assert (await running.stub.GetFeatures(_request())).definition_version == "2"


async def test_versions_beyond_keep_versions_are_dropped_with_their_sources(tmp_path: Path, gateway_factory):
    path = tmp_path / "defs.yaml"
    path.write_text(RELOADABLE % ("1", "basket.amount"))
    running = await gateway_factory(tmp_path, keep_versions=1)
    old_redis, caller = running.gateway.sources()["gone"], running.gateway.sources()["caller"]
    path.write_text((RELOADABLE % ("2", "basket.amount")).replace("127.0.0.1:1/0", "127.0.0.1:2/0"))
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert await running.gateway.reload()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.stub.GetFeatures(_request("1"))
    assert (
        caught.value.code() is grpc.StatusCode.NOT_FOUND and "'1' is not loaded (loaded: 2)" in caught.value.details()
    )
    for _ in range(50):  # the source only version 1 configured is closed; the unchanged one is kept
        if old_redis._probe_task is None:
            break
        await asyncio.sleep(0.01)
    assert old_redis._probe_task is None and running.gateway.sources()["gone"] is not old_redis
    assert running.gateway.sources()["caller"] is caller and caller._probe_task is not None
    assert (await running.stub.GetFeatures(_request())).definition_version == "2"
