"""The grpc.aio server bootstrap every service uses, with an explicit lifecycle.

:class:`GrpcServer` builds the server from settings (message size limits, keepalive, a cap
on concurrent calls), installs the chassis interceptor, the standard health service
(``grpc.health.v1``, a status per service) and server reflection, and serves /metrics.
``start()`` binds (a free port when 0 is asked for), serves, marks every service SERVING,
registers the instance in discovery and, when ``ready_file`` is set, writes the ports it bound
there (with those the service reported through :meth:`GrpcServer.report_port`; see
:mod:`infermesh_chassis.ready`). ``stop()`` removes the ready file, marks everything NOT_SERVING,
deregisters, stops accepting calls and lets in-flight calls finish within the grace period.
:func:`serve` runs a server until SIGTERM or SIGINT. gRPC core's own counts of the server's calls
(channelz: calls it refused beyond ``max_pending_calls`` before any Python included) go to /metrics,
and a warning to the log when calls go unanswered (:mod:`infermesh_chassis.corecalls`).

As one of several worker processes of an instance (``worker``, see :mod:`infermesh_chassis.workers`)
the server binds with ``SO_REUSEPORT``, leaves /metrics, discovery and the ready file to the parent,
and reports NOT_SERVING while any worker of the instance is down.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from infermesh_chassis.corecalls import CHECK_EVERY_S, CoreCalls, server_ids
from infermesh_chassis.discovery import Discovery, Instance
from infermesh_chassis.interceptors import DeadlineShedding, ServerInterceptor
from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics, MetricsHttpServer
from infermesh_chassis.ready import Ready, remove_ready, write_ready
from infermesh_chassis.settings import ServiceSettings
from infermesh_chassis.tasks import cancel_and_wait
from infermesh_chassis.tracing import Tracing
from infermesh_chassis.workers import WorkerSlot

__all__ = ["GrpcServer", "advertised_host", "serve"]

_log = get_logger("infermesh_chassis.server")

AddServicer = Callable[[Any, grpc.aio.Server], None]

_ANY_HOST = frozenset({"0.0.0.0", "::", "[::]", ""})
_GATE_POLL_S = 0.05
"""How often a worker looks whether every worker of its instance serves."""


def advertised_host(settings: ServiceSettings) -> str:
    """The host others dial (see :attr:`GrpcServer.advertised_host`)."""
    cfg = settings.grpc
    if cfg.advertise_host:
        return cfg.advertise_host
    return socket.gethostname() if cfg.host in _ANY_HOST else cfg.host


class GrpcServer:
    """One service's gRPC server (see the module docstring)."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        metrics: Metrics | None = None,
        discovery: Discovery | None = None,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        worker: WorkerSlot | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self._worker = worker
        self.metrics = metrics or Metrics(settings.service_name)
        self._discovery = discovery
        cfg = settings.grpc
        options = [
            ("grpc.max_receive_message_length", cfg.max_receive_message_bytes),
            ("grpc.max_send_message_length", cfg.max_send_message_bytes),
            ("grpc.keepalive_time_ms", int(cfg.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(cfg.keepalive_timeout_s * 1000)),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ("grpc.so_reuseport", 0 if worker is None else 1),
            ("grpc.server.max_pending_requests", cfg.max_pending_calls),
            ("grpc.server.max_pending_requests_hard_limit", cfg.max_pending_calls),
        ]
        shedding = DeadlineShedding(self.metrics, cfg.min_deadline_ms / 1000)
        interceptor = ServerInterceptor(self.metrics.server, shedding, tracing)
        known = server_ids()
        self._server = grpc.aio.server(
            interceptors=[interceptor, *interceptors],
            options=options,
            maximum_concurrent_rpcs=cfg.max_concurrent_rpcs,
        )
        self.core_calls = CoreCalls.created_since(
            known, lambda: interceptor.held, max_pending_calls=cfg.max_pending_calls
        )
        """gRPC core's counts of this server's calls (None where channelz shows none)."""
        if self.core_calls is not None:
            self.core_calls.register(self.metrics)
        self._core_task: asyncio.Task[None] | None = None
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self._service_names: list[str] = []
        self._metrics_http: MetricsHttpServer | None = None
        self._instance: Instance | None = None
        self._stopped = False
        self._reported: dict[str, int] = {}
        self._wanted: dict[str, bool] = {}
        self._gate_open = worker is None
        self._gate_task: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def service_names(self) -> tuple[str, ...]:
        """Full names of the services added (health and reflection excluded)."""
        return tuple(self._service_names)

    @property
    def address(self) -> str:
        """``host:port`` clients dial, once started."""
        return f"{self.advertised_host}:{self.port}"

    @property
    def advertised_host(self) -> str:
        """The host others dial: ``advertise_host``, else the bound host, else (bound to every
        interface) this machine's host name, so scaled replicas register distinct addresses."""
        return advertised_host(self.settings)

    @property
    def metrics_port(self) -> int | None:
        """Port of /metrics once started (None when disabled)."""
        return None if self._metrics_http is None else self._metrics_http.port

    def report_port(self, name: str, port: int) -> None:
        """Name another listener the service bound (reported in the ready file); before :meth:`start`."""
        self._reported[name] = port

    def add_servicer(self, add: AddServicer, servicer: Any, service_name: str) -> None:
        """Register a servicer with its generated ``add_*Servicer_to_server`` and its full name."""
        add(servicer, self._server)
        self._service_names.append(service_name)

    def add_generic_handlers(self, handlers: Sequence[grpc.GenericRpcHandler], service_name: str) -> None:
        """Register hand-built handlers (e.g. a proxy) under a full service name."""
        self._server.add_generic_rpc_handlers(tuple(handlers))
        self._service_names.append(service_name)

    async def set_serving(self, names: Sequence[str], serving: bool) -> None:
        """Report the health names ``names`` (``""``: the server as a whole) SERVING or NOT_SERVING.

        For what the service itself knows, e.g. that nothing behind it can serve; ignored once a
        graceful shutdown began (everything stays NOT_SERVING then).
        """
        for name in names:
            self._wanted[name] = serving
            await self._apply(name)

    async def _apply(self, name: str) -> None:
        serving = self._wanted.get(name, False) and self._gate_open
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set(name, status)

    async def _watch_workers(self, worker: WorkerSlot) -> None:
        """Keep every health name NOT_SERVING while any worker of the instance is down."""
        while True:
            gate = worker.all_up()
            if gate != self._gate_open:
                self._gate_open = gate
                _log.info("instance_workers", all_up=gate, worker=worker.index)
                for name in self._wanted:
                    await self._apply(name)
            await asyncio.sleep(_GATE_POLL_S)

    @staticmethod
    async def _watch_core(core_calls: CoreCalls) -> None:
        """Warn when calls go unanswered in gRPC core (see :mod:`infermesh_chassis.corecalls`)."""
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            core_calls.check()

    async def start(self) -> None:
        """Bind, serve, mark SERVING, expose /metrics and register in discovery."""
        cfg = self.settings.grpc
        reflection.enable_server_reflection(
            (*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self.port = self._server.add_insecure_port(f"{cfg.host}:{cfg.port}")
        if self.port == 0:
            raise OSError(f"could not bind {cfg.host}:{cfg.port}")
        await self._server.start()
        if self.core_calls is not None:
            self._core_task = asyncio.create_task(self._watch_core(self.core_calls))
        if self._worker is not None:
            await self.set_serving(("", *self._service_names), True)
            self._worker.write_ports(self._reported)
            self._worker.mark_up(True)
            self._gate_task = asyncio.create_task(self._watch_workers(self._worker))
            _log.info("server_started", address=self.address, worker=self._worker.index)
            return
        if self.settings.metrics.enabled:
            self._metrics_http = MetricsHttpServer(self.metrics, self.settings.metrics.host, self.settings.metrics.port)
            self._metrics_http.start()
        await self.set_serving(("", *self._service_names), True)
        if self._discovery is not None:
            host = self.advertised_host
            self._instance = Instance(
                service=self.settings.service_name,
                instance_id=self.settings.instance_id or f"{self.settings.service_name}-{host}-{self.port}",
                host=host,
                port=self.port,
                meta={"metrics_port": str(self.metrics_port or "")},
            )
            await self._discovery.register(self._instance)
        if self.settings.ready_file is not None:
            ready = Ready(
                self.settings.service_name,
                os.getpid(),
                self.advertised_host,
                self.port,
                self.metrics_port,
                self._reported,
            )
            write_ready(self.settings.ready_file, ready)
        _log.info(
            "server_started",
            address=self.address,
            metrics_port=self.metrics_port,
            services=list(self._service_names),
        )

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful shutdown: NOT_SERVING, deregister, stop accepting, drain in-flight calls.

        Safe to call more than once, and on a server that never started (the grpc.aio server
        must be shut down inside the event loop either way, or its finalizer runs without one).
        """
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.grpc.grace_period_s if grace_s is None else grace_s
        if self._worker is not None:
            self._worker.mark_up(False)
        if self._gate_task is not None:
            self._gate_task.cancel()
            self._gate_task = None
        await cancel_and_wait(self._core_task)
        self._core_task = None
        if self.settings.ready_file is not None and self._worker is None:
            remove_ready(self.settings.ready_file, os.getpid())
        await self.health.enter_graceful_shutdown()
        if self._discovery is not None and self._instance is not None:
            try:
                await self._discovery.deregister(self._instance)
            except Exception as exc:  # shutdown goes on; Consul drops a dead instance by itself
                _log.warning("deregister_failed", error=str(exc))
            self._instance = None
        _log.info("server_draining", grace_s=grace)
        await self._server.stop(grace)
        if self._metrics_http is not None:
            self._metrics_http.stop()
            self._metrics_http = None
        _log.info("server_stopped")

    async def wait_for_termination(self) -> None:
        """Return when the server has stopped."""
        await self._server.wait_for_termination()


async def serve(server: GrpcServer, *, on_stop: Callable[[], Awaitable[None]] | None = None) -> None:
    """Start ``server``, run until SIGTERM or SIGINT, then stop it gracefully and call ``on_stop``.

    A repeated signal during the shutdown changes nothing (the drain goes on); once this returns,
    further SIGTERM/SIGINT are ignored so the process can finish closing: SIGKILL is the escalation.
    """
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stopping.set)
    try:
        await server.start()
        await stopping.wait()
    finally:
        await server.stop()
        if on_stop is not None:
            await on_stop()
        for sig in signals:
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
