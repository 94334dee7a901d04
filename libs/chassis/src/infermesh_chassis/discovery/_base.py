"""The discovery interface: what an instance is, how discovery is configured, what a backend does."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

_MAX_PORT = 65535


def parse_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) into host and port.

    Raises ``ValueError`` with a message that quotes the address and says what is wrong.
    """
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"{address!r} is not host:port (e.g. 127.0.0.1:50051)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{address!r}: write an IPv6 host in brackets, e.g. [::1]:50051")
    if not host or any(char.isspace() for char in host):
        raise ValueError(f"{address!r} has an empty or malformed host")
    port = int(port_text)
    if not 0 < port <= _MAX_PORT:
        raise ValueError(f"{address!r}: port must be between 1 and {_MAX_PORT}")
    return host, port


@dataclass(frozen=True, slots=True)
class Instance:
    """One reachable process of a service, as discovery reports it.

    ``meta`` is copied into a read-only mapping and left out of the hash, so instances can be
    set members and dict keys while still comparing equal only when their metadata matches.
    """

    service: str
    instance_id: str
    host: str
    port: int
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict, hash=False)
    address: str = field(init=False, repr=False, compare=False, hash=False)
    """``host:port``, with an IPv6 host in brackets: what a gRPC channel target expects (built once:
    every downstream call reads it several times)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", tuple(self.tags))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))
        host = f"[{self.host}]" if ":" in self.host else self.host
        object.__setattr__(self, "address", f"{host}:{self.port}")


class DiscoverySettings(BaseModel):
    """How a service announces itself and finds its peers; nested in each service's settings."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    backend: Literal["static", "consul"] = "static"
    """``static``: addresses from ``static`` (the embedded default); ``consul``: a Consul agent."""

    static: dict[str, list[str]] = Field(default_factory=dict)
    """Static backend: service name -> its instances as ``host:port`` (``[v6]:port`` for IPv6)."""

    consul_addr: str = "http://127.0.0.1:8500"
    """Consul backend: HTTP address of the local Consul agent, ``http(s)://host:port``."""

    consul_token: SecretStr | None = None
    """Consul backend: ACL token sent with every request (falls back to ``CONSUL_HTTP_TOKEN``)."""

    check_interval_s: float = Field(5.0, gt=0)
    """Consul backend: how often the agent runs the gRPC health check of a registered instance."""

    check_timeout_s: float = Field(2.0, gt=0)
    """Consul backend: how long one gRPC health check may take before it counts as failed."""

    deregister_critical_after_s: float = Field(60.0, gt=0)
    """Consul backend: an instance critical for this long is removed by Consul (Consul's minimum is 1 min)."""

    watch_wait_s: float = Field(30.0, gt=0, le=600)
    """Consul backend: how long one blocking query on a service's health waits for a change (max 10 min)."""

    retry_backoff_s: float = Field(1.0, gt=0)
    """Consul backend: first delay before retrying when Consul is unreachable; doubles on each failure."""

    retry_backoff_max_s: float = Field(30.0, gt=0)
    """Consul backend: cap of the doubling retry delay."""

    request_timeout_s: float = Field(2.0, gt=0)
    """Consul backend: limit of one non-blocking request (register, deregister, a service's first
    resolve); a blocking query gets ``watch_wait_s`` on top."""

    @field_validator("static")
    @classmethod
    def _check_static(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for service, addresses in value.items():
            if not service:
                raise ValueError("discovery.static has an empty service name")
            for address in addresses:
                try:
                    parse_address(address)
                except ValueError as exc:
                    raise ValueError(f"discovery.static[{service!r}]: {exc}") from None
        return value

    @field_validator("consul_addr")
    @classmethod
    def _check_consul_addr(cls, value: str) -> str:
        parts = urlsplit(value)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
            raise ValueError(f"{value!r} is not an http(s)://host:port address")
        return value.rstrip("/")


class Discovery(abc.ABC):
    """Announces this process's instances and finds healthy instances of other services."""

    @abc.abstractmethod
    async def register(self, instance: Instance) -> None:
        """Announce ``instance`` so that other services can resolve it."""

    @abc.abstractmethod
    async def deregister(self, instance: Instance) -> None:
        """Withdraw ``instance``; deregistering an unknown instance is not an error."""

    @abc.abstractmethod
    async def resolve(self, service: str) -> list[Instance]:
        """Healthy instances of ``service``; raises ``errors.Unavailable`` naming it when none are known."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop background work and release connections; the object is unusable afterwards."""
