"""Discovery from settings: the embedded local stack's backend."""

from __future__ import annotations

from infermesh_chassis.discovery._base import Discovery, DiscoverySettings, Instance, parse_address
from infermesh_chassis.errors import Unavailable


class StaticDiscovery(Discovery):
    """Resolves services from ``DiscoverySettings.static``; every listed instance counts as healthy.

    ``register`` and ``deregister`` announce nothing: they only record the instance in
    :attr:`registered`, so a service runs unchanged whichever backend it is given.
    """

    def __init__(self, settings: DiscoverySettings) -> None:
        self._instances: dict[str, tuple[Instance, ...]] = {
            service: tuple(
                Instance(service=service, instance_id=f"{service}-{host}-{port}", host=host, port=port)
                for host, port in map(parse_address, addresses)
            )
            for service, addresses in settings.static.items()
        }
        self._registered: dict[str, Instance] = {}

    @property
    def registered(self) -> tuple[Instance, ...]:
        """Instances registered and not deregistered since, in registration order."""
        return tuple(self._registered.values())

    async def register(self, instance: Instance) -> None:
        self._registered[instance.instance_id] = instance

    async def deregister(self, instance: Instance) -> None:
        self._registered.pop(instance.instance_id, None)

    async def resolve(self, service: str) -> list[Instance]:
        instances = self._instances.get(service)
        if not instances:
            known = ", ".join(sorted(name for name, found in self._instances.items() if found)) or "none"
            raise Unavailable(f"no instances of service {service!r} in the static discovery settings (known: {known})")
        return list(instances)

    async def close(self) -> None:
        self._registered.clear()
