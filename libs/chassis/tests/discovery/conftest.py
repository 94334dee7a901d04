"""A small fake of the Consul HTTP endpoints ConsulDiscovery uses, and helpers shared by the tests."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from infermesh_chassis import testing
from infermesh_chassis.discovery import ConsulDiscovery, DiscoverySettings
from infermesh_chassis.errors import InfermeshError

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0}


def _parse_duration(text: str) -> float:
    match = _DURATION.match(text)
    if match is None:
        raise web.HTTPBadRequest(text=f"invalid wait {text!r}")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


@dataclass
class _Entry:
    service: str
    instance_id: str
    host: str
    port: int
    status: str
    tags: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "Node": {"Node": "fake-node", "Address": "127.0.0.1"},
            "Service": {
                "ID": self.instance_id,
                "Service": self.service,
                "Address": self.host,
                "Port": self.port,
                "Tags": self.tags,
                "Meta": self.meta,
            },
            "Checks": [{"CheckID": f"service:{self.instance_id}", "Status": self.status}],
        }


class FakeConsul:
    """``/v1/agent/service/register``, ``/v1/agent/service/deregister/<id>`` and
    ``/v1/health/service/<name>`` with Consul's blocking-query semantics: ``index`` plus ``wait``
    blocks while the service's index is not above ``index``, for at most ``wait``.

    Registered services start critical, as in Consul; tests move them with :meth:`set_status`.
    The state survives :meth:`stop` and :meth:`start`, like a restarted agent with its data.
    """

    def __init__(self) -> None:
        self.port = 0
        self.registrations: list[dict[str, Any]] = []
        self.deregistrations: list[str] = []
        self.health_queries: list[dict[str, str]] = []
        self.tokens: list[str | None] = []
        self._entries: dict[str, _Entry] = {}
        self._raft_index = 10
        self._service_index: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_put("/v1/agent/service/register", self._register)
        app.router.add_put("/v1/agent/service/deregister/{service_id}", self._deregister)
        app.router.add_get("/v1/health/service/{service}", self._health)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        if self.port == 0:
            self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def add(
        self,
        service: str,
        instance_id: str,
        port: int,
        *,
        status: str = "passing",
        tags: list[str] | None = None,
        meta: dict[str, str] | None = None,
    ) -> None:
        entry = _Entry(service, instance_id, "127.0.0.1", port, status, tags or [], meta or {})
        self._entries[instance_id] = entry
        self._bump(service)

    def set_status(self, instance_id: str, status: str) -> None:
        entry = self._entries[instance_id]
        entry.status = status
        self._bump(entry.service)

    def remove(self, instance_id: str) -> None:
        entry = self._entries.pop(instance_id)
        self._bump(entry.service)

    def index_of(self, service: str) -> int:
        return self._service_index.get(service, 1)

    def reset_index(self, service: str, index: int) -> None:
        """Make the service's index go backwards, as after a restore or a cluster rebuild."""
        self._raft_index = index
        self._service_index[service] = index
        self._wake()

    def _bump(self, service: str) -> None:
        self._raft_index += 1
        self._service_index[service] = self._raft_index
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _register(self, request: web.Request) -> web.Response:
        payload = json.loads(await request.text())
        self.registrations.append(payload)
        self.tokens.append(request.headers.get("X-Consul-Token"))
        body = {key.lower(): value for key, value in payload.items()}
        self.add(
            body["name"],
            body.get("id", body["name"]),
            body["port"],
            status="critical",
            tags=body.get("tags"),
            meta=body.get("meta"),
        )
        return web.Response()

    async def _deregister(self, request: web.Request) -> web.Response:
        service_id = request.match_info["service_id"]
        self.deregistrations.append(service_id)
        self.tokens.append(request.headers.get("X-Consul-Token"))
        if service_id not in self._entries:
            return web.Response(status=404, text=f'Unknown service ID "{service_id}"')
        self.remove(service_id)
        return web.Response()

    async def _health(self, request: web.Request) -> web.Response:
        service = request.match_info["service"]
        self.health_queries.append(dict(request.query))
        self.tokens.append(request.headers.get("X-Consul-Token"))
        if "index" in request.query:
            index = int(request.query["index"])
            wait = _parse_duration(request.query.get("wait", "5m"))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            while self.index_of(service) <= index and loop.time() < deadline:
                try:
                    async with asyncio.timeout(deadline - loop.time()):
                        await self._changed.wait()
                except TimeoutError:
                    break
        entries = [entry for entry in self._entries.values() if entry.service == service]
        if "passing" in request.query:
            entries = [entry for entry in entries if entry.status == "passing"]
        return web.json_response(
            [entry.to_json() for entry in entries],
            headers={"X-Consul-Index": str(self.index_of(service))},
        )


@pytest.fixture
async def fake_consul() -> AsyncIterator[FakeConsul]:
    fake = FakeConsul()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def make_discovery() -> AsyncIterator[Callable[..., ConsulDiscovery]]:
    """Build ConsulDiscovery objects with test-sized timings; all are closed at teardown."""
    made: list[ConsulDiscovery] = []

    def make(consul_addr: str, **overrides: Any) -> ConsulDiscovery:
        options: dict[str, Any] = {
            "backend": "consul",
            "consul_addr": consul_addr,
            "watch_wait_s": 5.0,
            "retry_backoff_s": 0.05,
            "retry_backoff_max_s": 0.2,
            "request_timeout_s": 1.0,
        }
        options.update(overrides)
        discovery = ConsulDiscovery(DiscoverySettings(**options))
        made.append(discovery)
        return discovery

    yield make
    for discovery in made:
        await discovery.close()


@pytest.fixture
def free_port() -> Callable[[], int]:
    return testing.free_port


@pytest.fixture
def eventually() -> Callable[..., Awaitable[Any]]:
    """Re-run an async probe until it returns something truthy or the timeout passes."""

    async def wait_for(probe: Callable[[], Awaitable[Any]], *, within: float = 2.0, interval: float = 0.01) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        last: Any = None
        while True:
            try:
                last = await probe()
            except InfermeshError as exc:
                last = exc
            else:
                if last:
                    return last
            if loop.time() >= deadline:
                raise AssertionError(f"condition not met within {within}s; last result: {last!r}")
            await asyncio.sleep(interval)

    return wait_for
