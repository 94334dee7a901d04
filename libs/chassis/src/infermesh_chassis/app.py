"""The one ``main`` every service process runs.

:func:`run_service` parses ``--config`` (and ``--ready-file``), loads the service's settings (one clear line and
exit 2 when they are wrong), configures logging, builds the :class:`Runtime` (metrics,
discovery, a channel pool, the gRPC server), lets the service add its servicers, serves
until SIGTERM/SIGINT on uvloop (grpc.aio serves about half again as many calls per core on it as
on the default loop, measured here), then shuts down in order: the server drains, then the service's
own cleanups run (last registered first), then channels and discovery close.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import uvloop

from infermesh_chassis.client import ChannelPool, ServiceClient
from infermesh_chassis.discovery import Discovery, create_discovery
from infermesh_chassis.events import EventEmitter, MonitorSink, open_event_sink
from infermesh_chassis.logs import configure_logging, get_logger
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.server import GrpcServer, serve
from infermesh_chassis.settings import ServiceSettings, load_settings_or_exit
from infermesh_chassis.tracing import Tracing

__all__ = ["Runtime", "run_service"]

S = TypeVar("S", bound=ServiceSettings)
Cleanup = Callable[[], Awaitable[None]]

_log = get_logger("infermesh_chassis.app")


@dataclass
class Runtime:
    """What a service is built from: its settings and the chassis' shared pieces."""

    settings: ServiceSettings
    metrics: Metrics
    discovery: Discovery
    channels: ChannelPool
    server: GrpcServer
    tracing: Tracing | None = None
    """The service's tracing (None when ``settings.tracing.endpoint`` is empty)."""
    _cleanups: list[Cleanup] = field(default_factory=list)

    @classmethod
    def create(cls, settings: ServiceSettings) -> Runtime:
        """Build the runtime for ``settings`` (nothing is started yet)."""
        metrics = Metrics(settings.service_name)
        discovery = create_discovery(settings.discovery)
        channels = ChannelPool(metrics, max_message_bytes=settings.grpc.max_send_message_bytes)
        tracing = Tracing.create(settings.tracing, settings.service_name, metrics)
        server = GrpcServer(settings, metrics=metrics, discovery=discovery, tracing=tracing)
        return cls(settings, metrics, discovery, channels, server, tracing)

    def client(
        self, service: str, stub_factory: Callable[[grpc.aio.Channel], Any], idempotent: Iterable[str] = ()
    ) -> ServiceClient:
        """A client for another service of the mesh, found through discovery."""
        return ServiceClient(
            service,
            stub_factory,
            discovery=self.discovery,
            channels=self.channels,
            settings=self.settings.client,
            idempotent=idempotent,
            tracing=self.tracing,
        )

    def event_emitter(self, monitor_service: str = "monitor") -> EventEmitter:
        """A started emitter that reports to the monitor, flushed and stopped at shutdown.

        The transport comes from ``settings.events``: NATS JetStream, or the monitor's
        ``ReportEvents`` (found through discovery as ``monitor_service``), with a disk spool in front
        when ``events.spool_dir`` is set.
        """
        sink = open_event_sink(
            self.settings.events,
            self.settings.service_name,
            self.metrics,
            lambda: self.client(monitor_service, MonitorSink.STUB, MonitorSink.IDEMPOTENT),
        )
        close = getattr(sink, "close", None)
        if close is not None:
            self.on_stop(close)
        emitter = EventEmitter(sink, self.settings.events, self.metrics)
        emitter.start()
        self.on_stop(emitter.stop)
        return emitter

    def on_stop(self, cleanup: Cleanup) -> None:
        """Run ``cleanup`` at shutdown, after the server has drained (last registered runs first)."""
        self._cleanups.append(cleanup)

    async def close(self) -> None:
        """Stop the server if it still runs, run the cleanups, then close channels and discovery.

        A failing cleanup does not stop the rest.
        """
        await self.server.stop(0)
        for cleanup in reversed(self._cleanups):
            try:
                await cleanup()
            except Exception:
                _log.exception("cleanup_failed", cleanup=getattr(cleanup, "__qualname__", repr(cleanup)))
        self._cleanups.clear()
        await self.channels.close()
        await self.discovery.close()
        if self.tracing is not None:
            await self.tracing.shutdown()


def run_service(
    settings_cls: type[S],
    build: Callable[[S, Runtime], Awaitable[None]],
    argv: Sequence[str] | None = None,
) -> None:
    """Entry point of a service process (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog=settings_cls.model_fields["service_name"].default, description=settings_cls.__doc__
    )
    parser.add_argument("--config", help="YAML settings file (environment variables override it)")
    parser.add_argument(
        "--ready-file", help="once serving, write the ports bound here as JSON (overrides the ready_file setting)"
    )
    args = parser.parse_args(argv)
    overrides = {} if args.ready_file is None else {"ready_file": args.ready_file}
    settings = load_settings_or_exit(settings_cls, args.config, **overrides)
    configure_logging(settings.service_name, settings.logging.level, json=settings.logging.json_format)

    async def main() -> None:
        runtime = Runtime.create(settings)
        try:
            await build(settings, runtime)
            await serve(runtime.server)
        finally:
            await runtime.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
