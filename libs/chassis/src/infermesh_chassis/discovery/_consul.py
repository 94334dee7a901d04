"""Discovery through a Consul agent (py-consul's asyncio client)."""

from __future__ import annotations

import asyncio
import functools
import warnings
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import consul
import consul.aio
import structlog

from infermesh_chassis.discovery._base import Discovery, DiscoverySettings, Instance
from infermesh_chassis.errors import Unavailable
from infermesh_chassis.retry import Backoff, retry

_log = structlog.get_logger()

_CONSUL_ERRORS = (consul.ConsulException, aiohttp.ClientError, OSError, TimeoutError, ValueError)
"""What a Consul request raises when the agent is unreachable, slow, refuses, or answers garbage."""


def _duration(seconds: float) -> str:
    """A Go duration string as Consul parses it: whole seconds as ``30s``, anything else in ``ms``."""
    millis = max(1, round(seconds * 1000))
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def _instances(entries: list[dict[str, Any]]) -> tuple[Instance, ...]:
    """Instances from a ``/v1/health/service`` answer, ordered by instance id."""
    try:
        found = [
            Instance(
                service=entry["Service"]["Service"],
                instance_id=entry["Service"]["ID"],
                host=entry["Service"].get("Address") or entry["Node"]["Address"],
                port=int(entry["Service"]["Port"]),
                tags=tuple(entry["Service"].get("Tags") or ()),
                meta=entry["Service"].get("Meta") or {},
            )
            for entry in entries
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"unexpected /v1/health/service entry ({type(exc).__name__}: {exc})") from exc
    return tuple(sorted(found, key=lambda instance: instance.instance_id))


@dataclass(slots=True)
class _Watch:
    """The local cache of one service, fed by a background blocking-query loop."""

    settled: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once Consul has answered or the first query has failed."""
    instances: tuple[Instance, ...] | None = None
    """The last answer; ``None`` until Consul first answers."""
    error: str = ""
    """The last failure while Consul is unreachable; empty once it answers again."""
    task: asyncio.Task[None] | None = None


class ConsulDiscovery(Discovery):
    """Discovery through the local Consul agent.

    ``register`` adds the instance to the agent with a standard gRPC health check of the
    whole server and ``DeregisterCriticalServiceAfter``; ``close`` deregisters whatever is
    still registered. The first ``resolve`` of a service starts a background watch (blocking
    queries on ``/v1/health/service/<name>?passing=1``) and waits, at most
    ``request_timeout_s``, for its first answer; later calls read the local cache at once.
    While Consul is unreachable the watch retries with capped exponential backoff and the
    cache keeps serving the last instances Consul reported.
    """

    def __init__(self, settings: DiscoverySettings) -> None:
        self._settings = settings
        url = urlsplit(settings.consul_addr)
        host = url.hostname or "127.0.0.1"
        self._host = f"[{host}]" if ":" in host else host
        self._scheme = url.scheme
        self._port = url.port or (443 if url.scheme == "https" else 8500)
        self._addr = settings.consul_addr
        self._token = settings.consul_token.get_secret_value() if settings.consul_token else None
        self._client: consul.aio.Consul | None = None
        self._watches: dict[str, _Watch] = {}
        self._registered: dict[str, Instance] = {}
        self._closed = False

    async def register(self, instance: Instance) -> None:
        settings = self._settings
        check = consul.Check.grpc(
            instance.address,
            _duration(settings.check_interval_s),
            timeout=_duration(settings.check_timeout_s),
            deregister=_duration(settings.deregister_critical_after_s),
        )
        try:
            async with asyncio.timeout(settings.request_timeout_s):
                accepted = await self._consul().agent.service.register(
                    instance.service,
                    service_id=instance.instance_id,
                    address=instance.host,
                    port=instance.port,
                    tags=list(instance.tags),
                    meta=dict(instance.meta),
                    check=check,
                    token=self._token,
                )
        except _CONSUL_ERRORS as exc:
            raise Unavailable(
                f"cannot register {instance.instance_id!r} with Consul at {self._addr}: {_describe(exc)}"
            ) from exc
        if not accepted:
            raise Unavailable(f"Consul at {self._addr} refused to register {instance.instance_id!r}")
        self._registered[instance.instance_id] = instance
        _log.info("consul_registered", instance_id=instance.instance_id, address=instance.address)

    async def deregister(self, instance: Instance) -> None:
        try:
            async with asyncio.timeout(self._settings.request_timeout_s):
                known = await self._consul().agent.service.deregister(instance.instance_id, token=self._token)
        except _CONSUL_ERRORS as exc:
            raise Unavailable(
                f"cannot deregister {instance.instance_id!r} from Consul at {self._addr}: {_describe(exc)}"
            ) from exc
        self._registered.pop(instance.instance_id, None)
        _log.info("consul_deregistered", instance_id=instance.instance_id, known=known)

    async def resolve(self, service: str) -> list[Instance]:
        watch = self._watches.get(service) or self._start_watch(service)
        if not watch.settled.is_set():
            try:
                async with asyncio.timeout(self._settings.request_timeout_s):
                    await watch.settled.wait()
            except TimeoutError:
                watch.error = watch.error or f"no answer within {self._settings.request_timeout_s:g}s"
        if watch.instances is None:
            raise Unavailable(
                f"cannot resolve service {service!r}: Consul at {self._addr} has not answered ({watch.error})"
            )
        if not watch.instances:
            raise Unavailable(f"no healthy instances of service {service!r} in Consul at {self._addr}")
        return list(watch.instances)

    async def close(self) -> None:
        if self._closed:
            return
        for instance in list(self._registered.values()):
            try:
                await self.deregister(instance)
            except Unavailable as exc:
                _log.warning("consul_deregister_failed", instance_id=instance.instance_id, error=str(exc))
        self._closed = True
        tasks = [watch.task for watch in self._watches.values() if watch.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watches.clear()
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _consul(self) -> consul.aio.Consul:
        """The HTTP client, created on first use because its aiohttp session needs a running loop."""
        if self._closed:
            raise Unavailable(f"discovery through Consul at {self._addr} is closed")
        if self._client is None:
            with warnings.catch_warnings():
                # py-consul 1.8 passes aiohttp's deprecated ssl_context/verify_ssl connector arguments.
                warnings.filterwarnings(
                    "ignore", message="(ssl_context|verify_ssl) is deprecated", category=DeprecationWarning
                )
                self._client = consul.aio.Consul(
                    host=self._host, port=self._port, scheme=self._scheme, token=self._token
                )
        return self._client

    def _start_watch(self, service: str) -> _Watch:
        watch = _Watch()
        self._consul()
        watch.task = asyncio.create_task(self._run_watch(service, watch), name=f"consul-watch-{service}")
        self._watches[service] = watch
        return watch

    async def _run_watch(self, service: str, watch: _Watch) -> None:
        settings = self._settings
        index = 0
        backoff = Backoff(settings.retry_backoff_s, settings.retry_backoff_max_s, jitter=0.5)

        def failed(exc: Exception, delay_s: float) -> None:
            watch.error = _describe(exc)
            watch.settled.set()
            _log.warning(
                "consul_watch_failed",
                service=service,
                consul_addr=self._addr,
                error=watch.error,
                retry_in_s=round(delay_s, 3),
                serving_last_known=None if watch.instances is None else len(watch.instances),
            )

        while True:
            new_index, instances = await retry(
                functools.partial(self._query, service, index),
                backoff,
                retry_on=lambda exc: isinstance(exc, _CONSUL_ERRORS),
                on_failure=failed,
            )
            if watch.error and watch.instances is not None:
                _log.info("consul_watch_recovered", service=service, consul_addr=self._addr)
            if instances != watch.instances:
                _log.info(
                    "consul_instances_changed",
                    service=service,
                    addresses=[instance.address for instance in instances],
                )
            backoff.reset()
            watch.error = ""
            watch.instances = instances
            watch.settled.set()
            if new_index < index:
                # Consul's blocking-query rules: an index that goes backwards (agent restart,
                # snapshot restore) means start over with a non-blocking query.
                _log.info("consul_index_reset", service=service, index=index, new_index=new_index)
                index = 0
            else:
                # An index below 1 would make every following query return at once.
                index = max(new_index, 1)

    async def _query(self, service: str, index: int) -> tuple[int, tuple[Instance, ...]]:
        """One health query: blocking when ``index`` is set, bounded client-side in any case."""
        wait = self._settings.watch_wait_s
        limit = self._settings.request_timeout_s + (wait * 17 / 16 if index else 0)
        async with asyncio.timeout(limit):
            raw_index, entries = await self._consul().health.service(
                service, index=index, wait=_duration(wait), passing=True, token=self._token
            )
        return int(raw_index), _instances(entries or [])


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
