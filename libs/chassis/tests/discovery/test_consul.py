"""ConsulDiscovery against the fake Consul in conftest.py: registration, watch, cache, outages."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from infermesh_chassis.discovery import Instance
from infermesh_chassis.errors import Unavailable

SERVICE = "model-gateway"


def _instance(port: int, **kwargs) -> Instance:
    return Instance(SERVICE, f"{SERVICE}-127.0.0.1-{port}", "127.0.0.1", port, **kwargs)


def _ports(instances: list[Instance]) -> list[int]:
    return sorted(instance.port for instance in instances)


async def test_register_sends_grpc_check_with_settings_and_deregister_removes(fake_consul, make_discovery):
    discovery = make_discovery(
        fake_consul.addr,
        consul_token="s3cret",
        check_interval_s=5,
        check_timeout_s=0.5,
        deregister_critical_after_s=90,
    )
    instance = _instance(50051, tags=("v1", "cpu"), meta={"version": "1.2.3"})

    await discovery.register(instance)

    [payload] = fake_consul.registrations
    body = {key.lower(): value for key, value in payload.items()}
    assert body["name"] == SERVICE
    assert body["id"] == "model-gateway-127.0.0.1-50051"
    assert body["address"] == "127.0.0.1"
    assert body["port"] == 50051
    assert body["tags"] == ["v1", "cpu"]
    assert body["meta"] == {"version": "1.2.3"}
    [check] = body["checks"]
    check = {key.lower(): value for key, value in check.items()}
    assert check == {
        "grpc": "127.0.0.1:50051",
        "interval": "5s",
        "timeout": "500ms",
        "deregistercriticalserviceafter": "90s",
    }
    assert fake_consul.tokens == ["s3cret"]

    await discovery.deregister(instance)
    await discovery.deregister(instance)

    assert fake_consul.deregistrations == [instance.instance_id, instance.instance_id]


async def test_close_deregisters_instances_still_registered(fake_consul, make_discovery):
    discovery = make_discovery(fake_consul.addr)
    kept, withdrawn = _instance(50051), _instance(50052)
    await discovery.register(kept)
    await discovery.register(withdrawn)
    await discovery.deregister(withdrawn)

    await discovery.close()

    assert fake_consul.deregistrations == [withdrawn.instance_id, kept.instance_id]
    with pytest.raises(Unavailable, match="closed"):
        await discovery.resolve(SERVICE)


async def test_register_raises_unavailable_when_consul_is_down(make_discovery, free_port):
    discovery = make_discovery(f"http://127.0.0.1:{free_port()}")

    with pytest.raises(Unavailable, match=r"cannot register 'model-gateway-127\.0\.0\.1-50051' with Consul"):
        await discovery.register(_instance(50051))


async def test_resolve_returns_passing_instances_only(fake_consul, make_discovery):
    fake_consul.add(SERVICE, "a", 50051, tags=["v1"], meta={"zone": "z1"})
    fake_consul.add(SERVICE, "b", 50052)
    fake_consul.add(SERVICE, "c", 50053, status="critical")
    fake_consul.add("other", "d", 50054)
    discovery = make_discovery(fake_consul.addr)

    instances = await discovery.resolve(SERVICE)

    assert instances == [
        Instance(SERVICE, "a", "127.0.0.1", 50051, tags=("v1",), meta={"zone": "z1"}),
        Instance(SERVICE, "b", "127.0.0.1", 50052),
    ]
    assert instances[0].address == "127.0.0.1:50051"
    assert fake_consul.health_queries[0] == {"passing": "1"}


async def test_no_healthy_instance_is_unavailable(fake_consul, make_discovery):
    fake_consul.add(SERVICE, "a", 50051, status="critical")
    discovery = make_discovery(fake_consul.addr)

    with pytest.raises(Unavailable, match=r"no healthy instances of service 'model-gateway' in Consul at http"):
        await discovery.resolve(SERVICE)


async def test_registered_instance_resolves_once_its_check_passes(fake_consul, make_discovery, eventually):
    discovery = make_discovery(fake_consul.addr)
    instance = _instance(50051)
    await discovery.register(instance)
    with pytest.raises(Unavailable):
        await discovery.resolve(SERVICE)

    fake_consul.set_status(instance.instance_id, "passing")

    assert await eventually(lambda: discovery.resolve(SERVICE)) == [instance]


async def test_changes_reach_the_cache_through_blocking_queries(fake_consul, make_discovery, eventually):
    fake_consul.add(SERVICE, "a", 50051)
    discovery = make_discovery(fake_consul.addr, watch_wait_s=10)
    assert _ports(await discovery.resolve(SERVICE)) == [50051]

    async def ports_are(expected: list[int]) -> bool:
        return _ports(await discovery.resolve(SERVICE)) == expected

    loop = asyncio.get_running_loop()
    started = loop.time()
    fake_consul.add(SERVICE, "b", 50052)
    await eventually(lambda: ports_are([50051, 50052]), within=1)
    fake_consul.set_status("a", "critical")
    await eventually(lambda: ports_are([50052]), within=1)
    fake_consul.set_status("a", "passing")
    await eventually(lambda: ports_are([50051, 50052]), within=1)
    fake_consul.remove("b")
    await eventually(lambda: ports_are([50051]), within=1)
    assert loop.time() - started < 2

    await asyncio.sleep(0.3)
    first, *blocking = fake_consul.health_queries
    assert first == {"passing": "1"}
    # One blocking query per change plus the one now waiting: no polling faster than that.
    assert len(blocking) == 5
    assert all(query["wait"] == "10s" and int(query["index"]) >= 1 for query in blocking)
    assert [int(query["index"]) for query in blocking] == sorted(int(q["index"]) for q in blocking)


async def test_keeps_serving_last_known_instances_while_consul_is_down(fake_consul, make_discovery, eventually):
    fake_consul.add(SERVICE, "a", 50051)
    fake_consul.add(SERVICE, "b", 50052)
    discovery = make_discovery(fake_consul.addr, watch_wait_s=10)
    assert _ports(await discovery.resolve(SERVICE)) == [50051, 50052]

    with structlog.testing.capture_logs() as logs:
        await fake_consul.stop()
        await asyncio.sleep(0.8)
        assert _ports(await discovery.resolve(SERVICE)) == [50051, 50052]

        fake_consul.remove("b")
        await fake_consul.start()

        async def only_a() -> bool:
            return _ports(await discovery.resolve(SERVICE)) == [50051]

        await eventually(only_a, within=2)

    failures = [log for log in logs if log["event"] == "consul_watch_failed"]
    assert failures, logs
    assert all(log["log_level"] == "warning" and log["service"] == SERVICE for log in failures)
    assert all(log["serving_last_known"] == 2 for log in failures)
    # Backoff from 0.05 s doubling to 0.2 s: a handful of retries in 0.8 s, not a busy loop.
    assert len(failures) <= 16
    assert any(log["event"] == "consul_watch_recovered" for log in logs)

    fake_consul.add(SERVICE, "c", 50053)

    async def a_and_c() -> bool:
        return _ports(await discovery.resolve(SERVICE)) == [50051, 50053]

    await eventually(a_and_c, within=1)


async def test_unavailable_naming_service_and_address_when_consul_never_answered(make_discovery, free_port):
    addr = f"http://127.0.0.1:{free_port()}"
    discovery = make_discovery(addr)

    with pytest.raises(Unavailable) as caught:
        await discovery.resolve(SERVICE)

    message = str(caught.value)
    assert f"cannot resolve service 'model-gateway': Consul at {addr} has not answered" in message
    assert "ClientConnectorError" in message


async def test_unavailable_when_consul_accepts_but_never_answers(make_discovery):
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    discovery = make_discovery(f"http://127.0.0.1:{port}", request_timeout_s=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(Unavailable, match=r"'model-gateway'.*has not answered"):
            await discovery.resolve(SERVICE)
        assert loop.time() - started < 1
        await discovery.close()
    finally:
        server.close()


async def test_index_going_backwards_restarts_from_zero(fake_consul, make_discovery, eventually):
    fake_consul.add(SERVICE, "a", 50051)
    discovery = make_discovery(fake_consul.addr, watch_wait_s=0.3)
    assert _ports(await discovery.resolve(SERVICE)) == [50051]
    await eventually(lambda: asyncio.sleep(0, len(fake_consul.health_queries) >= 2))
    high = fake_consul.index_of(SERVICE)

    with structlog.testing.capture_logs() as logs:
        fake_consul.reset_index(SERVICE, 3)
        before = len(fake_consul.health_queries)
        await eventually(lambda: asyncio.sleep(0, any(log["event"] == "consul_index_reset" for log in logs)))
        await eventually(lambda: asyncio.sleep(0, len(fake_consul.health_queries) >= before + 2))

    [reset] = [log for log in logs if log["event"] == "consul_index_reset"]
    assert (reset["index"], reset["new_index"]) == (high, 3)
    after_reset = fake_consul.health_queries[before:]
    assert after_reset[0] == {"passing": "1"}
    assert after_reset[1]["index"] == "3"

    fake_consul.add(SERVICE, "b", 50052)

    async def both() -> bool:
        return _ports(await discovery.resolve(SERVICE)) == [50051, 50052]

    await eventually(both, within=0.25)
