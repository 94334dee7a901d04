"""Service discovery: one interface, a static backend (settings) and a Consul backend.

A service registers its own instances at start and deregisters them on shutdown; a caller
resolves the healthy instances of a downstream service and lets a :class:`Balancer` pick
one per call.
"""

from __future__ import annotations

from infermesh_chassis.discovery._balancer import Balancer
from infermesh_chassis.discovery._base import Discovery, DiscoverySettings, Instance
from infermesh_chassis.discovery._consul import ConsulDiscovery
from infermesh_chassis.discovery._static import StaticDiscovery

__all__ = [
    "Balancer",
    "ConsulDiscovery",
    "Discovery",
    "DiscoverySettings",
    "Instance",
    "StaticDiscovery",
    "create_discovery",
]


def create_discovery(settings: DiscoverySettings) -> Discovery:
    """The backend ``settings.backend`` names, configured from ``settings``."""
    if settings.backend == "consul":
        return ConsulDiscovery(settings)
    return StaticDiscovery(settings)
