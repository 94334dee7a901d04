"""Push over NATS JetStream against a real nats-server (JetStream on disk) and a real Redis online store.

Covers: rows published while no gateway runs (and across a NATS restart) are written once gateways
start, by exactly one of two instances sharing the durable consumer; a push whose write fails
because Redis is down is delivered again and written once Redis is back; malformed pushes are
rejected, acknowledged and logged without holding up the pushes behind them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import nats
import pytest
import redis.asyncio as aioredis
import structlog
from nats.js import JetStreamContext

from infermesh.datagateway.v1 import data_gateway_pb2 as pb
from infermesh_chassis.metrics import Metrics
from infermesh_data_gateway.push import NatsPushSubscriber
from infermesh_data_gateway.settings import NatsSettings

SUBJECT = "infermesh.features.push"
STREAM = "INFERMESH_FEATURE_PUSH"
DURABLE = "data-gateway"
NOW = datetime.now(UTC).replace(microsecond=0)

DEFINITIONS = """
project: {{name: push-test, version: "v1", online_store: online}}
entities:
  customer: {{keys: {{customer_id: INT64}}}}
sources:
  online: {{kind: redis, url: "{redis}", key_prefix: "p:", timeout: 300ms, pool_size: 4, health_interval: 200ms}}
feature_views:
  profile:
    entities: [customer]
    fields: {{plan: STRING, tenure_days: INT64}}
    source: online
"""


@pytest.fixture
async def push_world(tmp_path: Path, make_redis, gateway_factory, nats_server):
    store = make_redis()  # its own server: a test stops it
    folder = tmp_path / "defs"
    folder.mkdir()
    (folder / "features.yaml").write_text(DEFINITIONS.format(redis=store.url))
    running = await gateway_factory(folder)
    subscribers: list[NatsPushSubscriber] = []

    def subscriber(metrics: Metrics) -> NatsPushSubscriber:
        started = NatsPushSubscriber(
            running.gateway,
            NatsSettings(url=nats_server.url, retry_delay_s=0.3, fetch_timeout_s=0.3, ack_wait_s=15),
            metrics,
        )
        started.start()
        subscribers.append(started)
        return started

    yield running, store, subscriber
    for started in subscribers:
        await started.stop()


def _message(customer: int, plan: str, tenure: object) -> bytes:
    """A push of one ``profile`` row as JSON, without an event time."""
    tenure_value = {"int64_value": tenure} if isinstance(tenure, int) else {"string_value": tenure}
    row = {
        "keys": {"customer_id": {"int64_value": customer}},
        "values": {"plan": {"string_value": plan}, "tenure_days": tenure_value},
    }
    return json.dumps({"feature_view": "profile", "rows": [row]}).encode()


async def _record(redis_url: str, customer: int) -> tuple[int, dict[str, object]] | None:
    """The record of ``customer`` in the online store: its event time (µs) and fields; None when absent."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        raw = await client.get(f"p:profile:{customer}")
    finally:
        await client.aclose()
    if raw is None:
        return None
    event_us, fields = raw.split(b"|", 1)
    return int(event_us), json.loads(fields)


async def _stored(redis_url: str, customer: int) -> dict[str, object] | None:
    """The fields of ``customer`` in the online store, or None."""
    record = await _record(redis_url, customer)
    return None if record is None else record[1]


async def _until(check: Callable[[], bool | Awaitable[bool]], timeout_s: float = 20.0) -> None:
    """Wait until ``check()`` (a value or a coroutine) is true; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        met = check()
        if not isinstance(met, bool):
            met = await met
        if met:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def _count(metrics: Metrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value("infermesh_data_gateway_push_messages_total", {"outcome": outcome})
    return value or 0.0


async def _stream_holds(js: JetStreamContext, messages: int) -> bool:
    return (await js.stream_info(STREAM)).state.messages == messages


def _consuming(metrics: Metrics) -> bool:
    return metrics.registry.get_sample_value("infermesh_data_gateway_push_connected") == 1


async def test_pushes_published_while_no_gateway_runs_are_written_once_gateways_start(push_world, nats_server):
    _, store, subscriber = push_world
    metrics = Metrics("data-gateway")
    first = subscriber(metrics)
    await _until(lambda: _consuming(metrics))  # the stream and the durable consumer exist from now on
    await first.stop()
    publisher = await nats.connect(nats_server.url)
    try:
        for customer in range(20):  # plain core NATS, as before: no JetStream client, no acknowledgement
            await publisher.publish(SUBJECT, _message(customer, "pro", customer))
        await publisher.flush()
        # flush only proves the server read them: the stream stores them from a queue of its own, and
        # a NATS stop drops what is still queued. Core NATS has no acknowledgement; wait for the stream.
        js = publisher.jetstream()
        await _until(lambda: _stream_holds(js, 20))
    finally:
        await publisher.close()
    nats_server.stop()  # the stream is on disk: a NATS restart loses nothing it stored
    nats_server.start()
    await asyncio.sleep(0.5)
    assert await _stored(store.url, 0) is None  # nothing consumed them yet
    one, two = Metrics("data-gateway"), Metrics("data-gateway")
    subscriber(one)
    subscriber(two)

    async def all_written() -> bool:
        return all([await _stored(store.url, customer) is not None for customer in range(20)])

    await _until(all_written)
    assert await _stored(store.url, 7) == {"plan": "pro", "tenure_days": 7}
    client = await nats.connect(nats_server.url)
    try:
        js = client.jetstream()

        async def all_acknowledged() -> bool:
            info = await js.consumer_info(STREAM, DURABLE)
            return info.num_ack_pending == 0 and info.num_pending == 0

        await _until(all_acknowledged)
        assert (await js.consumer_info(STREAM, DURABLE)).num_redelivered == 0
        assert (await js.stream_info(STREAM)).state.messages == 0  # a work queue: written pushes leave it
    finally:
        await client.close()
    assert _count(one, "ok") + _count(two, "ok") == 20  # each push handled by exactly one instance
    assert _count(one, "rejected") + _count(two, "rejected") == 0


async def test_a_push_whose_write_fails_is_delivered_again_and_written_when_the_store_is_back(push_world, nats_server):
    running, store, subscriber = push_world
    subscriber(running.metrics)
    await _until(lambda: _consuming(running.metrics))
    store.stop()
    client = await nats.connect(nats_server.url)
    try:
        js = client.jetstream()
        stored = await js.publish(SUBJECT, _message(1, "max", 40))  # no event time: the time JetStream stored it
        published_us = time.time_ns() // 1000
        assert stored.stream == STREAM
        await _until(lambda: _count(running.metrics, "retried") >= 2)  # delivered, failed, delivered again
        assert _count(running.metrics, "ok") == 0
        store.start()
        await _until(lambda: _count(running.metrics, "ok") == 1)
        event_us, fields = await _record(store.url, 1)
        assert fields == {"plan": "max", "tenure_days": 40}
        assert published_us - 5_000_000 < event_us <= published_us  # not the time of the (later) write
        info = await js.consumer_info(STREAM, DURABLE)
        assert (info.num_ack_pending, info.num_pending) == (0, 0)
        assert (await js.stream_info(STREAM)).state.messages == 0
    finally:
        await client.close()
    assert _count(running.metrics, "rejected") == 0


async def test_malformed_pushes_are_rejected_and_do_not_hold_up_the_ones_behind_them(push_world, nats_server):
    running, store, subscriber = push_world
    client = await nats.connect(nats_server.url)
    try:
        js = client.jetstream()
        subscriber(running.metrics)
        await _until(lambda: _consuming(running.metrics))
        bad = {
            b"\xff\xfe not protobuf": "not a PushFeaturesRequest",
            b'{"feature_view": "profile", "rows": [': "not a PushFeaturesRequest",
            json.dumps({"feature_view": "nope", "rows": []}).encode(): "nope",
            _message(3, "pro", "long"): "rows[0].values.tenure_days",
        }
        with structlog.testing.capture_logs() as logs:
            for payload in bad:
                await js.publish(SUBJECT, payload)
            good = pb.PushFeaturesRequest(feature_view="profile")  # protobuf, as before
            row = good.rows.add()
            row.keys["customer_id"].int64_value = 2
            row.values["plan"].string_value = "basic"
            row.event_time.FromDatetime(NOW)
            await js.publish(SUBJECT, good.SerializeToString())
            await _until(lambda: _count(running.metrics, "ok") == 1)
            await _until(lambda: _count(running.metrics, "rejected") == len(bad))
        assert await _stored(store.url, 2) == {"plan": "basic", "tenure_days": None}
        assert await _stored(store.url, 3) is None
        rejected = [entry for entry in logs if entry["event"] == "push_rejected"]
        assert len(rejected) == len(bad)
        for entry, why in zip(rejected, bad.values(), strict=True):
            assert why in entry["error"], entry
        await asyncio.sleep(1.0)  # longer than retry_delay_s: a push left unacknowledged would be back by now
        info = await js.consumer_info(STREAM, DURABLE)
        assert (info.num_ack_pending, info.num_redelivered, info.num_pending) == (0, 0, 0)
        assert (await js.stream_info(STREAM)).state.messages == 0
        assert _count(running.metrics, "rejected") == len(bad)
    finally:
        await client.close()
    assert _count(running.metrics, "retried") == 0
