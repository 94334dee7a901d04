"""The client side: idempotent retries across instances, deadlines, one error boundary."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest

from infermesh_chassis import context as ctx
from infermesh_chassis import errors
from infermesh_chassis.client import ChannelPool, ServiceClient
from infermesh_chassis.discovery import DiscoverySettings, StaticDiscovery
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.settings import ClientSettings


async def test_idempotent_call_retries_on_another_instance(start_server, make_client):
    sick, sick_service = await start_server("sick")
    healthy, _ = await start_server("healthy")
    sick_service.unavailable_left = 1000
    client = make_client({"svc": [sick.address, healthy.address]}, "svc", idempotent={"WhoAmI"})
    for _ in range(10):
        reply = json.loads(await client.call("WhoAmI", b""))
        assert reply["name"] == "healthy"


async def test_non_idempotent_call_is_not_retried(start_server, make_client):
    sick, sick_service = await start_server("sick")
    sick_service.unavailable_left = 1
    client = make_client({"svc": [sick.address]}, "svc")
    with pytest.raises(errors.Unavailable, match=r"svc/WhoAmI at 127\.0\.0\.1:\d+: sick is unavailable"):
        await client.call("WhoAmI", b"")
    assert len(sick_service.seen_request_ids) == 1


async def test_retries_stop_after_max_attempts(start_server, make_client):
    sick, sick_service = await start_server("sick")
    sick_service.unavailable_left = 1000
    client = make_client({"svc": [sick.address]}, "svc", idempotent={"WhoAmI"}, max_attempts=3)
    with pytest.raises(errors.Unavailable):
        await client.call("WhoAmI", b"")
    assert len(sick_service.seen_request_ids) == 3


async def test_non_retryable_status_is_not_retried(start_server, make_client):
    server, _ = await start_server()
    client = make_client({"svc": [server.address]}, "svc", idempotent={"Fail"})
    with pytest.raises(errors.NotFound, match="NotFound raised on purpose"):
        await client.call("Fail", b"NotFound")


async def test_every_call_has_a_deadline(start_server, make_client):
    server, _ = await start_server()
    client = make_client({"svc": [server.address]}, "svc", default_timeout_s=0.3)
    reply = json.loads(await client.call("WhoAmI", b""))
    assert 0 < reply["remaining"] <= 0.3
    began = time.monotonic()
    with pytest.raises(errors.DeadlineExceeded):
        await client.call("Slow", b"5")
    assert time.monotonic() - began < 1.5


async def test_inbound_deadline_bounds_downstream_calls(start_server, make_client, echo_stub):
    downstream, _ = await start_server("downstream")
    front, front_service = await start_server("front")
    front_service.downstream = make_client({"downstream": [downstream.address]}, "downstream", default_timeout_s=30)
    async with grpc.aio.insecure_channel(front.address) as channel:
        stub = echo_stub(channel)
        reply = json.loads(await stub.Forward(b"WhoAmI:", timeout=0.5))
        assert 0 < reply["remaining"] <= 0.5
        began = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as exceeded:
            await stub.Forward(b"Slow:5", timeout=0.4)
        assert exceeded.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - began < 1.5


async def test_unknown_service_is_unavailable(make_client):
    client = make_client({}, "nowhere")
    with pytest.raises(errors.Unavailable, match="nowhere"):
        await client.call("Echo", b"")


async def test_channels_are_reused(start_server, make_client):
    server, _ = await start_server()
    client = make_client({"svc": [server.address]}, "svc")
    await asyncio.gather(*(client.call("Echo", b"x") for _ in range(20)))
    assert len(client._stubs) == 1


async def test_client_red_metrics(start_server, echo_stub):
    server, _ = await start_server()
    metrics = Metrics("metered-client")
    pool = ChannelPool(metrics)
    client = ServiceClient(
        "svc",
        echo_stub,
        discovery=StaticDiscovery(DiscoverySettings(static={"svc": [server.address]})),
        channels=pool,
        settings=ClientSettings(),
    )
    for _ in range(3):
        await client.call("Echo", b"x")
    with pytest.raises(errors.NotFound):
        await client.call("Fail", b"NotFound")
    await pool.close()
    sample = metrics.registry.get_sample_value
    labels = {"grpc_service": "test.Echo"}
    assert sample("infermesh_metered_client_grpc_client_requests_total", {**labels, "grpc_method": "Echo"}) == 3
    assert sample("infermesh_metered_client_grpc_client_requests_total", {**labels, "grpc_method": "Fail"}) == 1
    fail_errors = {**labels, "grpc_method": "Fail", "grpc_code": "NOT_FOUND"}
    assert sample("infermesh_metered_client_grpc_client_errors_total", fail_errors) == 1
    assert sample("infermesh_metered_client_grpc_client_latency_seconds_count", {**labels, "grpc_method": "Echo"}) == 3


async def test_the_client_passes_the_current_request_id_unless_the_caller_names_one(start_server, make_client):
    server, service = await start_server()
    client = make_client({"svc": [server.address]}, "svc")
    token = ctx.bind(ctx.CallContext("inbound-rid"))
    try:
        passed = json.loads(await client.call("WhoAmI", b""))
        named = json.loads(await client.call("WhoAmI", b"", metadata=((ctx.REQUEST_ID_METADATA_KEY, "named-rid"),)))
    finally:
        ctx.unbind(token)
    assert (passed["request_id"], named["request_id"]) == ("inbound-rid", "named-rid")
    assert service.seen_request_ids == ["inbound-rid", "named-rid"]
