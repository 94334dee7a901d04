"""GetFeatures and PushFeatures through a real grpc.aio server against real Redis, PostgreSQL and SQLite.

Covers: values, statuses and lineage; defaults and missing flags; routing by tenant and by key
pattern; the fallback chain when the primary source is stopped mid-test; UNAVAILABLE when
every source is down; the read-through cache; the HTTP JSON and request-value sources; and
the error statuses (NOT_FOUND, INVALID_ARGUMENT naming the field, FAILED_PRECONDITION).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import pytest
from aiohttp import web

from infermesh.common.v1 import common_pb2
from infermesh.datagateway.v1 import data_gateway_pb2 as pb

NOW = datetime.now(UTC).replace(microsecond=0)
F = pb.FeatureStatus


def _v(value: object) -> common_pb2.Value:
    if value is None:
        return common_pb2.Value(null_value=0)
    if isinstance(value, bool):
        return common_pb2.Value(bool_value=value)
    if isinstance(value, int):
        return common_pb2.Value(int64_value=value)
    if isinstance(value, float):
        return common_pb2.Value(double_value=value)
    return common_pb2.Value(string_value=str(value))


def _py(value: common_pb2.Value) -> object:
    kind = value.WhichOneof("kind")
    if kind == "double_list":
        return list(value.double_list.values)
    return None if kind in (None, "null_value") else getattr(value, kind)


DEFINITIONS = """
project: {{name: serving-test, version: "v1", online_store: online}}
entities:
  customer: {{keys: {{customer_id: INT64}}}}
sources:
  online: {{kind: redis, url: "{redis}", key_prefix: "{prefix}", timeout: 300ms, pool_size: 4, health_interval: 200ms}}
  warehouse: {{kind: postgres, dsn: "{pg}", timeout: 2s, pool_size: 2, health_interval: 200ms}}
  local: {{kind: sqlite, path: "{sqlite}", timeout: 2s, pool_size: 2}}
  api: {{kind: http, url: "{http}", timeout: 1s}}
  caller: {{kind: request}}
feature_views:
  profile:
    entities: [customer]
    ttl: 30d
    owner: growth
    fields: {{plan: STRING, tenure_days: INT64}}
    source: online
    fallbacks: [warehouse]
    bindings: {{warehouse: {{table: "{table}"}}}}
    routes:
      - when: {{tenant: acme}}
        source: warehouse
      - when: {{keys: {{customer_id: "^9"}}}}
        source: local
    cache: {{ttl: 30s}}
  score:
    entities: [customer]
    fields: {{risk: FP64}}
    source: api
    bindings: {{api: {{path: "/risk/{{customer_id}}"}}}}
  basket:
    entities: [customer]
    fields: {{amount: FP64}}
    source: caller
feature_services:
  churn:
    entities: [customer]
    features:
      - {{name: plan, dtype: FP32, expr: 'one_hot(profile.plan, ["basic", "pro"])', default: [0, 0]}}
      - {{name: tenure_years, dtype: FP32, expr: profile.tenure_days / 365.0, default: -1}}
      - {{name: tenure_raw, dtype: INT64, field: profile.tenure_days, allow_missing: true}}
  strict:
    entities: [customer]
    features:
      - {{name: tenure_days, dtype: INT64, field: profile.tenure_days}}
  risky:
    entities: [customer]
    request_values: {{amount: {{dtype: FP64, required: true}}}}
    features:
      - {{name: risk, dtype: FP64, field: score.risk, default: 0.5}}
      - {{name: basket, dtype: FP64, expr: log1p(basket.amount), default: 0}}
      - {{name: twice, dtype: FP64, expr: request.amount * 2}}
"""


async def _pg_table(dsn: str, table: str, rows: list[tuple[int, str, int, datetime]]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f"CREATE TABLE {table} (customer_id BIGINT, plan TEXT, tenure_days BIGINT, event_time TIMESTAMPTZ)"
        )
        await conn.executemany(f"INSERT INTO {table} VALUES ($1, $2, $3, $4)", rows)
    finally:
        await conn.close()


def _sqlite_table(path: Path, rows: list[tuple[int, str, int, str]]) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE profile (customer_id INTEGER, plan TEXT, tenure_days INTEGER, event_time TEXT)")
        conn.executemany("INSERT INTO profile VALUES (?, ?, ?, ?)", rows)
    conn.close()


class Api:
    """A small HTTP JSON feature endpoint on a free port."""

    def __init__(self) -> None:
        self.risk = {1: 0.25}
        self.calls = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        async def risk(request: web.Request) -> web.Response:
            self.calls += 1
            customer = int(request.match_info["customer_id"])
            if customer not in self.risk:
                raise web.HTTPNotFound()
            return web.json_response({"risk": self.risk[customer], "event_time": NOW.isoformat()})

        app = web.Application()
        app.router.add_get("/risk/{customer_id}", risk)
        self.runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def world(tmp_path: Path, postgres_server, make_redis, gateway_factory):
    redis = make_redis()  # its own server: the tests stop it
    api = Api()
    await api.start()
    table = f"profile_{uuid.uuid4().hex[:12]}"
    await _pg_table(
        postgres_server.dsn,
        table,
        [
            (1, "pro", 700, NOW - timedelta(days=2)),
            (1, "basic", 300, NOW - timedelta(days=40)),  # older: not the latest
            (2, "basic", 30, NOW - timedelta(days=1)),
            (77, "pro", 1, NOW + timedelta(days=3)),  # future-dated: not served yet
        ],
    )
    _sqlite_table(tmp_path / "local.db", [(90, "pro", 3650, (NOW - timedelta(days=1)).isoformat())])
    folder = tmp_path / "defs"
    folder.mkdir()
    (folder / "features.yaml").write_text(
        DEFINITIONS.format(
            redis=redis.url,
            prefix="t:",
            pg=postgres_server.dsn,
            sqlite=tmp_path / "local.db",
            http=f"http://127.0.0.1:{api.port}",
            table=table,
        )
    )
    running = await gateway_factory(folder)
    yield running, redis, api
    await running.stop()  # its HTTP source's keep-alive connections close before the API server stops
    await api.stop()


def _row(customer: int, **request: object) -> pb.EntityRow:
    return pb.EntityRow(keys={"customer_id": _v(customer)}, request_values={k: _v(v) for k, v in request.items()})


async def _push(running, customer: int, plan: str, tenure: int, when: datetime) -> pb.PushFeaturesResponse:
    row = pb.PushRow(keys={"customer_id": _v(customer)}, values={"plan": _v(plan), "tenure_days": _v(tenure)})
    row.event_time.FromDatetime(when)
    return await running.stub.PushFeatures(pb.PushFeaturesRequest(feature_view="profile", rows=[row]))


async def test_values_statuses_and_lineage_from_the_online_store(world):
    running, _, _ = world
    assert (await _push(running, 1, "pro", 730, NOW - timedelta(hours=1))).rows_written == 1
    reply = await running.stub.GetFeatures(pb.GetFeaturesRequest(feature_service="churn", entities=[_row(1)]))
    assert [f.name for f in reply.fields] == ["plan", "tenure_years", "tenure_raw"]
    assert list(reply.fields[0].shape) == [2] and reply.fields[1].dtype == "FP32"
    row = reply.rows[0]
    assert [_py(v) for v in row.values] == [[0.0, 1.0], pytest.approx(2.0), 730]
    assert list(row.statuses) == [F.FEATURE_STATUS_OK] * 3
    lineage = row.lineage
    assert (lineage.feature_service, lineage.definition_version) == ("churn", "v1")
    (view,) = lineage.views
    assert (view.feature_view, view.source, view.from_fallback, view.used_default) == (
        "profile",
        "online",
        False,
        False,
    )
    assert view.value_time.ToDatetime(tzinfo=UTC) == NOW - timedelta(hours=1)
    assert list(view.features) == ["plan", "tenure_years", "tenure_raw"]


async def test_defaults_and_missing_values_are_flagged(world):
    running, _, _ = world
    reply = await running.stub.GetFeatures(pb.GetFeaturesRequest(feature_service="churn", entities=[_row(12345)]))
    row = reply.rows[0]
    assert [_py(v) for v in row.values] == [[0.0, 0.0], -1.0, None]
    assert list(row.statuses) == [F.FEATURE_STATUS_DEFAULT, F.FEATURE_STATUS_DEFAULT, F.FEATURE_STATUS_MISSING]
    assert row.lineage.views[0].used_default and not row.lineage.views[0].HasField("value_time")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.stub.GetFeatures(pb.GetFeaturesRequest(feature_service="strict", entities=[_row(12345)]))
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "tenure_days" in caught.value.details() and "entities[0]" in caught.value.details()


async def test_a_stale_value_takes_the_default(world):
    running, _, _ = world
    await _push(running, 5, "pro", 100, NOW - timedelta(days=31))  # beyond the 30-day TTL: expired at write
    await _push(running, 6, "pro", 100, NOW - timedelta(days=29))
    reply = await running.stub.GetFeatures(pb.GetFeaturesRequest(feature_service="churn", entities=[_row(5), _row(6)]))
    assert reply.rows[0].statuses[1] == F.FEATURE_STATUS_DEFAULT
    assert reply.rows[1].statuses[1] == F.FEATURE_STATUS_OK


async def test_routing_by_tenant_and_by_key_pattern(world):
    running, _, _ = world
    await _push(running, 1, "basic", 1, NOW - timedelta(hours=1))
    acme = await running.stub.GetFeatures(
        pb.GetFeaturesRequest(feature_service="churn", entities=[_row(1)], routing_attributes={"tenant": "acme"})
    )
    assert acme.rows[0].lineage.views[0].source == "warehouse"
    assert _py(acme.rows[0].values[2]) == 700  # the latest PostgreSQL row, not the older one
    assert acme.rows[0].statuses[2] == F.FEATURE_STATUS_OK  # a route's primary is not a fallback
    other = await running.stub.GetFeatures(
        pb.GetFeaturesRequest(feature_service="churn", entities=[_row(1)], routing_attributes={"tenant": "zeta"})
    )
    assert other.rows[0].lineage.views[0].source == "online" and _py(other.rows[0].values[2]) == 1
    by_key = await running.stub.GetFeatures(pb.GetFeaturesRequest(feature_service="churn", entities=[_row(90)]))
    assert by_key.rows[0].lineage.views[0].source == "local" and _py(by_key.rows[0].values[2]) == 3650
    future = await running.stub.GetFeatures(
        pb.GetFeaturesRequest(feature_service="churn", entities=[_row(77)], routing_attributes={"tenant": "acme"})
    )
    assert future.rows[0].statuses[2] == F.FEATURE_STATUS_MISSING  # a future-dated row is not served


async def test_fallback_when_the_primary_is_stopped_mid_test(world):
    running, redis, _ = world
    await _push(running, 2, "pro", 999, NOW - timedelta(hours=1))
    first = await running.stub.GetFeatures(pb.GetFeaturesRequest(feature_service="strict", entities=[_row(2)]))
    assert (_py(first.rows[0].values[0]), first.rows[0].lineage.views[0].source) == (999, "online")
    running.gateway.cache.invalidate(running.gateway.view("profile")[1], [(2,)])  # read the sources again
    redis.stop()
    second = await running.stub.GetFeatures(pb.GetFeaturesRequest(feature_service="strict", entities=[_row(2)]))
    row = second.rows[0]
    assert _py(row.values[0]) == 30 and list(row.statuses) == [F.FEATURE_STATUS_FALLBACK]
    assert row.lineage.views[0].source == "warehouse" and row.lineage.views[0].from_fallback
    sources = await running.stub.DescribeFeatureService(pb.DescribeFeatureServiceRequest(name="strict"))
    health = {s.name: s.health for s in sources.feature_service.sources}
    assert health["online"] in (pb.SOURCE_HEALTH_DEGRADED, pb.SOURCE_HEALTH_UNHEALTHY)
    assert health["warehouse"] == pb.SOURCE_HEALTH_HEALTHY
    redis.start()
    request = pb.GetFeaturesRequest(feature_service="churn", entities=[_row(2)])  # the restarted store is empty
    for _ in range(50):  # the background probe notices the primary is back
        if (await running.stub.GetFeatures(request)).rows[0].lineage.views[0].source == "online":
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the restarted primary was never used again")


async def test_every_source_down_is_unavailable(world, tmp_path: Path, gateway_factory):
    _, redis, _ = world
    folder = tmp_path / "down"
    folder.mkdir()
    (folder / "d.yaml").write_text(
        f"""
entities: {{customer: {{keys: {{customer_id: INT64}}}}}}
sources:
  a: {{kind: redis, url: "{redis.url}", timeout: 200ms}}
  b: {{kind: postgres, dsn: "postgresql://postgres@127.0.0.1:1/postgres", timeout: 500ms}}
feature_views:
  v: {{entities: [customer], fields: {{x: FP64}}, source: a, fallbacks: [b]}}
feature_services:
  s: {{entities: [customer], features: [{{name: x, dtype: FP64, field: v.x, default: 0}}]}}
"""
    )
    down = await gateway_factory(folder)
    redis.stop()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await down.stub.GetFeatures(pb.GetFeaturesRequest(feature_service="s", entities=[_row(1)]))
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "'v'" in caught.value.details() and "a:" in caught.value.details() and "b:" in caught.value.details()


async def test_read_through_cache_serves_repeats_and_counts_hits(world):
    running, redis, _ = world
    await _push(running, 3, "pro", 10, NOW - timedelta(hours=1))
    request = pb.GetFeaturesRequest(feature_service="churn", entities=[_row(3)])
    first = await running.stub.GetFeatures(request)
    second = await running.stub.GetFeatures(request)
    assert not first.rows[0].lineage.views[0].from_cache and second.rows[0].lineage.views[0].from_cache
    redis.stop()  # served from the cache although the store is gone
    third = await running.stub.GetFeatures(request)
    assert _py(third.rows[0].values[2]) == 10 and third.rows[0].lineage.views[0].source == "online"
    assert running.gateway.cache.hit_rate("profile") == pytest.approx(2 / 3)
    rendered = running.metrics.render().decode()
    assert 'infermesh_data_gateway_cache_lookups_total{outcome="hit",view="profile"} 2.0' in rendered
    redis.start()
    await _push(running, 3, "max", 11, NOW)  # a push invalidates the entry
    fourth = await running.stub.GetFeatures(request)
    assert _py(fourth.rows[0].values[2]) == 11 and not fourth.rows[0].lineage.views[0].from_cache


async def test_http_and_request_value_sources(world):
    running, _, api = world
    reply = await running.stub.GetFeatures(
        pb.GetFeaturesRequest(feature_service="risky", entities=[_row(1, amount=9.0), _row(2, amount=0.0)])
    )
    first, second = reply.rows
    assert [_py(v) for v in first.values] == [0.25, pytest.approx(2.302585092994046), 18.0]
    assert first.lineage.views[0].source == "api" and first.lineage.views[1].source == "caller"
    assert second.statuses[0] == F.FEATURE_STATUS_DEFAULT  # 404: no record
    assert api.calls == 2
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.stub.GetFeatures(pb.GetFeaturesRequest(feature_service="risky", entities=[_row(1)]))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "entities[0].request_values.amount is required" in caught.value.details()


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (
            pb.GetFeaturesRequest(feature_service="nope", entities=[_row(1)]),
            "NOT_FOUND",
            "unknown feature service 'nope'",
        ),
        (
            pb.GetFeaturesRequest(feature_service="churn", definition_version="v0", entities=[_row(1)]),
            "NOT_FOUND",
            "definition version 'v0'",
        ),
        (pb.GetFeaturesRequest(feature_service="churn"), "INVALID_ARGUMENT", "entities: at least one"),
        (
            pb.GetFeaturesRequest(
                feature_service="churn", entities=[_row(1), pb.EntityRow(keys={"customer_id": _v("x1")})]
            ),
            "INVALID_ARGUMENT",
            "entities[1].keys.customer_id: 'x1' is not an integer",
        ),
        (
            pb.GetFeaturesRequest(feature_service="churn", entities=[pb.EntityRow(keys={"id": _v(1)})]),
            "INVALID_ARGUMENT",
            "entities[0].keys.customer_id is required (INT64)",
        ),
        (
            pb.GetFeaturesRequest(feature_service="risky", entities=[_row(1, amount="lots")]),
            "INVALID_ARGUMENT",
            "entities[0].request_values.amount: 'lots' is not a number",
        ),
    ],
)
async def test_get_features_errors(world, request_, code, message):
    running, _, _ = world
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.stub.GetFeatures(request_)
    assert caught.value.code().name == code
    assert message in caught.value.details()


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (" 42 ", "' 42 ' is not an integer in canonical form"),
        ("+42", "'+42' is not an integer in canonical form"),
        ("\u0664\u0662", "'\u0664\u0662' is not an integer in canonical form"),  # Arabic-Indic 42: int() reads it
        ("042", "'042' is not an integer in canonical form"),
        ("4_2", "'4_2' is not an integer in canonical form"),
        (float("nan"), "nan is not a valid key"),  # refused like 42.5, not read as a missing key
        (float("inf"), "inf is not a valid key"),
        (42.5, "42.5 is not an integer"),
    ],
)
async def test_entity_keys_have_one_spelling(world, key: object, message: str):
    running, _, _ = world
    for request_ in (
        pb.GetFeaturesRequest(feature_service="churn", entities=[pb.EntityRow(keys={"customer_id": _v(key)})]),
        pb.PushFeaturesRequest(
            feature_view="profile", rows=[pb.PushRow(keys={"customer_id": _v(key)}, values={"plan": _v("pro")})]
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await (
                running.stub.GetFeatures if isinstance(request_, pb.GetFeaturesRequest) else running.stub.PushFeatures
            )(request_)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert f"keys.customer_id: {message}" in caught.value.details()
    canonical = await running.stub.GetFeatures(
        pb.GetFeaturesRequest(
            feature_service="churn", entities=[_row(42), pb.EntityRow(keys={"customer_id": _v("42")})]
        )
    )
    assert canonical.rows[0].values == canonical.rows[1].values


async def test_push_validates_rows_and_skips_older_values(world):
    running, _, _ = world
    assert (await _push(running, 4, "pro", 50, NOW - timedelta(hours=1))).rows_written == 1
    older = await _push(running, 4, "basic", 1, NOW - timedelta(hours=2))
    assert (older.rows_written, older.rows_skipped) == (0, 1)
    reply = await running.stub.GetFeatures(pb.GetFeaturesRequest(feature_service="strict", entities=[_row(4)]))
    assert _py(reply.rows[0].values[0]) == 50
    bad = pb.PushRow(keys={"customer_id": _v(4)}, values={"tenure_days": _v("long")})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.stub.PushFeatures(pb.PushFeaturesRequest(feature_view="profile", rows=[bad]))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "rows[0].values.tenure_days: 'long' is not an integer" in caught.value.details()
    unknown = pb.PushRow(keys={"customer_id": _v(4)}, values={"color": _v("red")})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.stub.PushFeatures(pb.PushFeaturesRequest(feature_view="profile", rows=[unknown]))
    assert "rows[0].values.color is not a field of view 'profile'" in caught.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.stub.PushFeatures(pb.PushFeaturesRequest(feature_view="nope", rows=[unknown]))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


async def test_push_over_nats(world, nats_server):
    import nats  # noqa: PLC0415

    from infermesh_data_gateway.push import NatsPushSubscriber  # noqa: PLC0415
    from infermesh_data_gateway.settings import NatsSettings  # noqa: PLC0415

    running, _, _ = world
    subscriber = NatsPushSubscriber(running.gateway, NatsSettings(url=nats_server.url), running.metrics)
    subscriber.start()
    client = await nats.connect(nats_server.url)

    def count(outcome: str) -> float:
        sample = running.metrics.registry.get_sample_value(
            "infermesh_data_gateway_push_messages_total", {"outcome": outcome}
        )
        return sample or 0.0

    try:
        message = {
            "feature_view": "profile",
            "rows": [{"keys": {"customer_id": {"int64_value": 8}}, "values": {"plan": {"string_value": "pro"}}}],
        }
        for _ in range(100):  # the gateway creates the stream when it connects
            if running.metrics.registry.get_sample_value("infermesh_data_gateway_push_connected") == 1:
                break
            await asyncio.sleep(0.05)
        # a request is answered by JetStream once the push is stored; the gateway writes it afterwards
        reply = await client.request("infermesh.features.push", json.dumps(message).encode(), timeout=5)
        assert json.loads(reply.data)["stream"] == "INFERMESH_FEATURE_PUSH"
        binary = pb.PushFeaturesRequest(
            feature_view="profile", rows=[pb.PushRow(keys={"customer_id": _v(8)}, values={"tenure_days": _v("x")})]
        )
        await client.jetstream().publish("infermesh.features.push", binary.SerializeToString())
        for _ in range(200):
            if count("ok") == 1 and count("rejected") == 1:
                break
            await asyncio.sleep(0.05)
        assert (count("ok"), count("rejected"), count("retried")) == (1, 1, 0)
    finally:
        await client.close()
        await subscriber.stop()
    got = await running.stub.GetFeatures(pb.GetFeaturesRequest(feature_service="churn", entities=[_row(8)]))
    assert _py(got.rows[0].values[0]) == [0.0, 1.0]


async def test_list_and_describe(world):
    running, _, _ = world
    first = await running.stub.ListFeatureServices(
        pb.ListFeatureServicesRequest(page=common_pb2.PageRequest(page_size=2))
    )
    assert [s.name for s in first.feature_services] == ["churn", "risky"] and first.page.next_page_token
    rest = await running.stub.ListFeatureServices(
        pb.ListFeatureServicesRequest(page=common_pb2.PageRequest(page_size=2, page_token=first.page.next_page_token))
    )
    assert [s.name for s in rest.feature_services] == ["strict"] and not rest.page.next_page_token
    described = (
        await running.stub.DescribeFeatureService(pb.DescribeFeatureServiceRequest(name="churn"))
    ).feature_service
    assert described.definition_version == "v1" and described.definition_file.endswith("features.yaml")
    assert described.features[0].transform == 'one_hot(profile.plan, ["basic", "pro"])'
    assert list(described.features[0].default_value.double_list.values) == [0.0, 0.0]
    assert described.views[0].source == "online" and list(described.views[0].fallback_sources) == ["warehouse"]
    assert described.views[0].ttl.seconds == 30 * 86400
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.stub.DescribeFeatureService(pb.DescribeFeatureServiceRequest(name="nope"))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


async def test_concurrent_reads_share_redis_round_trips_and_get_their_own_values(world):
    import redis as redis_sync  # noqa: PLC0415

    from infermesh_data_gateway.gateway import EntityInput  # noqa: PLC0415

    running, redis, _ = world
    for customer in range(100, 120):
        await _push(running, customer, "pro", customer * 3, NOW - timedelta(minutes=customer))
    running.gateway.cache.invalidate(running.gateway.view("profile")[1], [(c,) for c in range(100, 120)])
    stats = redis_sync.Redis.from_url(redis.url)

    def mget_calls() -> int:
        return int(stats.info("commandstats").get("cmdstat_mget", {}).get("calls", 0))

    before = mget_calls()
    results = await asyncio.gather(
        *(running.gateway.get_features("strict", [EntityInput({"customer_id": c})]) for c in range(100, 120))
    )
    assert [r.vectors[0].values[0] for r in results] == [c * 3 for c in range(100, 120)]
    assert mget_calls() - before < 20  # twenty concurrent reads, fewer round trips
    stats.close()


async def test_postgres_as_the_online_store(tmp_path: Path, postgres_server, gateway_factory):
    table = f"online_{uuid.uuid4().hex[:12]}"
    folder = tmp_path / "pg"
    folder.mkdir()
    (folder / "d.yaml").write_text(
        f"""
project: {{online_store: pg}}
entities: {{account: {{keys: {{tenant: STRING, account_id: INT64}}}}}}
sources:
  pg: {{kind: postgres, dsn: "{postgres_server.dsn}"}}
feature_views:
  balance:
    entities: [account]
    fields: {{amount: FP64, frozen: BOOL, opened_at: TIMESTAMP}}
    source: pg
    bindings: {{pg: {{table: {table}}}}}
feature_services:
  risk:
    entities: [account]
    features:
      - {{name: amount, dtype: FP64, field: balance.amount}}
      - {{name: frozen, dtype: BOOL, field: balance.frozen, default: 0}}
      - {{name: opened_month, dtype: INT64, expr: month(balance.opened_at), default: 0}}
"""
    )
    running = await gateway_factory(folder)

    def row(amount: float, when: datetime) -> pb.PushRow:
        pushed = pb.PushRow(
            keys={"tenant": _v("acme"), "account_id": _v(7)},
            values={"amount": _v(amount), "frozen": _v(True), "opened_at": _v("2024-03-05T10:00:00Z")},
        )
        pushed.event_time.FromDatetime(when)
        return pushed

    first = await running.stub.PushFeatures(
        pb.PushFeaturesRequest(feature_view="balance", rows=[row(10.5, NOW - timedelta(hours=1))])
    )
    stale = await running.stub.PushFeatures(
        pb.PushFeaturesRequest(feature_view="balance", rows=[row(1.0, NOW - timedelta(hours=2))])
    )
    assert (first.rows_written, stale.rows_written, stale.rows_skipped) == (1, 0, 1)
    reply = await running.stub.GetFeatures(
        pb.GetFeaturesRequest(
            feature_service="risk", entities=[pb.EntityRow(keys={"tenant": _v("acme"), "account_id": _v(7)})]
        )
    )
    assert [_py(v) for v in reply.rows[0].values] == [10.5, True, 3]
    assert reply.rows[0].lineage.views[0].value_time.ToDatetime(tzinfo=UTC) == NOW - timedelta(hours=1)
    # The same table read in batch (PostgreSQL's native timestamps), as of two instants.
    entities = []
    for when in (NOW, NOW - timedelta(minutes=90)):
        entity = pb.TrainingEntityRow(keys={"tenant": _v("acme"), "account_id": _v(7)})
        entity.event_time.FromDatetime(when)
        entities.append(entity)
    request = pb.GetTrainingSetRequest(
        feature_service="risk", rows=pb.TrainingEntityRows(rows=entities), format=pb.TRAINING_SET_FORMAT_ROWS
    )
    rows = [r async for chunk in running.stub.GetTrainingSet(request) for r in chunk.rows.rows]
    assert [_py(r.values[0]) for r in rows] == [10.5, None]
    assert [r.statuses[0] for r in rows] == [F.FEATURE_STATUS_OK, F.FEATURE_STATUS_MISSING]
