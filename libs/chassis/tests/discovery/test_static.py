"""StaticDiscovery, the settings model, the factory and the Instance value type."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from infermesh_chassis.discovery import (
    ConsulDiscovery,
    DiscoverySettings,
    Instance,
    StaticDiscovery,
    create_discovery,
)
from infermesh_chassis.errors import Unavailable


def _settings() -> DiscoverySettings:
    return DiscoverySettings(
        static={
            "model-gateway": ["127.0.0.1:50051", "localhost:50052", "[::1]:50053"],
            "data-gateway": ["10.0.0.7:6000"],
        }
    )


async def test_resolves_instances_from_settings():
    discovery = StaticDiscovery(_settings())

    instances = await discovery.resolve("model-gateway")

    assert [(instance.host, instance.port) for instance in instances] == [
        ("127.0.0.1", 50051),
        ("localhost", 50052),
        ("::1", 50053),
    ]
    assert [instance.address for instance in instances] == [
        "127.0.0.1:50051",
        "localhost:50052",
        "[::1]:50053",
    ]
    assert instances[0] == Instance("model-gateway", "model-gateway-127.0.0.1-50051", "127.0.0.1", 50051)
    assert len({instance.instance_id for instance in instances}) == 3


async def test_unknown_service_is_unavailable_and_names_it():
    discovery = StaticDiscovery(_settings())

    with pytest.raises(Unavailable, match=r"'monitor' in the static discovery settings") as caught:
        await discovery.resolve("monitor")

    assert "known: data-gateway, model-gateway" in str(caught.value)


async def test_service_listed_without_addresses_is_unavailable():
    discovery = StaticDiscovery(DiscoverySettings(static={"monitor": []}))

    with pytest.raises(Unavailable, match="'monitor'"):
        await discovery.resolve("monitor")


async def test_register_and_deregister_only_record():
    discovery = StaticDiscovery(_settings())
    instance = Instance("monitor", "monitor-127.0.0.1-7000", "127.0.0.1", 7000)

    await discovery.register(instance)
    assert discovery.registered == (instance,)
    with pytest.raises(Unavailable):
        await discovery.resolve("monitor")

    await discovery.deregister(instance)
    await discovery.deregister(instance)
    assert discovery.registered == ()
    await discovery.close()


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("localhost", "is not host:port"),
        ("localhost:http", "is not host:port"),
        (":50051", "is not host:port"),
        ("localhost:0", "port must be between 1 and 65535"),
        ("localhost:70000", "port must be between 1 and 65535"),
        ("::1:50051", "IPv6 host in brackets"),
        ("[]:50051", "empty or malformed host"),
        ("bad host:50051", "empty or malformed host"),
    ],
)
def test_malformed_static_address_fails_validation_with_a_clear_message(address, reason):
    with pytest.raises(ValidationError) as caught:
        DiscoverySettings(static={"model-gateway": ["127.0.0.1:50051", address]})

    message = str(caught.value)
    assert f"discovery.static['model-gateway']: {address!r}" in message
    assert reason in message


@pytest.mark.parametrize("addr", ["127.0.0.1:8500", "ftp://consul:8500", "http://:8500", "http://consul:port"])
def test_malformed_consul_addr_fails_validation(addr):
    with pytest.raises(ValidationError, match="is not an http"):
        DiscoverySettings(consul_addr=addr)


def test_settings_reject_unknown_fields_and_document_every_field():
    with pytest.raises(ValidationError, match="watch_wait"):
        DiscoverySettings(watch_wait=1)
    assert all(info.description for info in DiscoverySettings.model_fields.values())


async def test_create_discovery_picks_the_configured_backend():
    assert isinstance(create_discovery(DiscoverySettings()), StaticDiscovery)
    consul = create_discovery(DiscoverySettings(backend="consul", consul_addr="http://127.0.0.1:8500/"))
    assert isinstance(consul, ConsulDiscovery)
    await consul.close()


def test_instance_is_hashable_immutable_and_compares_by_value():
    first = Instance("model-gateway", "id", "127.0.0.1", 1, tags=("a",), meta={"version": "1"})
    same = Instance("model-gateway", "id", "127.0.0.1", 1, tags=("a",), meta={"version": "1"})
    other_meta = Instance("model-gateway", "id", "127.0.0.1", 1, tags=("a",), meta={"version": "2"})

    assert first == same
    assert hash(first) == hash(same)
    assert first != other_meta
    assert len({first, same, other_meta}) == 2
    with pytest.raises(TypeError):
        first.meta["version"] = "3"  # type: ignore[index]
