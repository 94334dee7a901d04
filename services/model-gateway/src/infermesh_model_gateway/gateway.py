"""The model gateway assembled: registry, artifacts, Triton workers, pool, router, deployer.

:class:`ModelGateway` owns the lifecycle of everything behind the two servicers: it opens the
registry, starts the embedded Triton workers (and/or watches discovery for external ones),
loads every SERVING version onto them, keeps the router's snapshot current (after each change
made here, and by polling the registry for changes made by other gateway instances), and shuts
down in order.

It also heals its embedded workers: a supervisor waits on each ``tritonserver`` process, and when
one dies (a crash, an OOM kill, ``kill -9``) it marks the worker down in the pool at once (requests
go to the other workers, or fail fast with UNAVAILABLE so that callers fall back), then starts a
new process, reloads and warms up every SERVING version placed on that worker, and only then lets
the worker take requests again. Restarts back off (``restart_backoff_s``, doubling up to
``restart_max_backoff_s`` while a worker keeps dying, back to the start once it stayed up
``restart_reset_s``), and are counted
(``infermesh_model_gateway_worker_restarts_total`` and each replica's ``worker_restarts``).

Health follows the workers: the gateway reports itself (``""``) and its inference service
NOT_SERVING while no worker can serve, SERVING again once one can (see :meth:`serving`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

from infermesh_chassis.discovery import Discovery
from infermesh_chassis.errors import InfermeshError
from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.tasks import cancel_and_wait
from infermesh_model_gateway.artifacts import ArtifactStore
from infermesh_model_gateway.deployment import Deployer
from infermesh_model_gateway.domain import utc_now
from infermesh_model_gateway.pool import WorkerPool
from infermesh_model_gateway.registry import Registry, open_registry
from infermesh_model_gateway.routing import Router
from infermesh_model_gateway.settings import Settings
from infermesh_model_gateway.triton import ModelRepository, TritonServer

__all__ = ["ModelGateway"]

_log = get_logger("infermesh_model_gateway.gateway")


class ModelGateway:
    """Everything behind the gateway's RPCs (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        discovery: Discovery | None = None,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.settings = settings
        self._discovery = discovery
        data = settings.data_dir
        self.router = Router(clock=clock)
        self.pool = WorkerPool(settings.workers.pool, metrics)
        self.repository = ModelRepository(data / "repository", native_onnx=settings.workers.native_onnx)
        self.artifacts = ArtifactStore(data / "artifacts", max_bytes=settings.max_artifact_bytes)
        self.registry: Registry | None = None
        self.deployer: Deployer | None = None
        self.embedded: list[TritonServer] = []
        self._generation = -1
        self._refresh_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        """How a restart waits out its backoff (a test injects one it controls)."""
        self.on_health: Callable[[bool], Awaitable[None]] | None = None
        """Called with :meth:`serving` whenever it may have changed (and at every health interval)."""
        self._restarts = metrics.counter(
            "worker_restarts", "Embedded Triton workers restarted after their process died.", ("worker",)
        )

    async def start(self) -> None:
        """Open the registry, start workers, reconcile, and start watching for changes."""
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        url = settings.registry_url or f"sqlite:///{(settings.data_dir / 'registry.db').resolve()}"
        self.registry = await open_registry(url)
        self.deployer = Deployer(
            self.registry,
            self.artifacts,
            self.repository,
            self.pool,
            on_change=self.refresh,
            settings=settings.deploy,
        )
        self.repository.root.mkdir(parents=True, exist_ok=True)
        for index in range(settings.workers.embedded):
            server = TritonServer(
                model_repository=self.repository.root,
                workdir=settings.data_dir / "workers" / f"worker-{index}",
                worker_id=f"embedded-{index}",
            )
            self.embedded.append(server)
            self._restarts.labels(server.worker_id)  # exported from 0: increase() in an alert sees the first one
        await asyncio.gather(*(s.start(timeout_s=settings.workers.startup_timeout_s) for s in self.embedded))
        for server in self.embedded:
            await self.pool.add(server.worker_id, server.grpc_address)
            # it answered ready; a first probe that was merely slow must not leave it out of the reconcile
            await self.pool.wait_healthy(server.worker_id, settings.workers.startup_timeout_s)
        if settings.workers.discovery_service and self._discovery is not None:
            await self._sync_external_workers()
        self.pool.start()
        await self.deployer.reconcile()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._watch_registry(), name="registry-watch"))
        self._tasks.append(loop.create_task(self._watch_health(), name="health-watch"))
        for server in self.embedded:
            self._tasks.append(loop.create_task(self._supervise(server), name=f"supervise-{server.worker_id}"))
        if settings.workers.discovery_service and self._discovery is not None:
            self._tasks.append(loop.create_task(self._watch_workers(), name="worker-watch"))
        _log.info("gateway_started", workers=[w.id for w in self.pool.workers], models=self.router.models())

    async def refresh(self) -> None:
        """Reload the router from the registry.

        Serialized, so a snapshot read earlier can never replace one read later.
        """
        assert self.registry is not None
        async with self._refresh_lock:
            generation = await self.registry.generation()
            self.router.load(await self.registry.snapshot())
            self._generation = generation

    async def _watch_registry(self) -> None:
        assert self.registry is not None
        while True:
            await asyncio.sleep(self.settings.registry_poll_s)
            try:
                if await self.registry.generation() != self._generation:
                    await self.refresh()
            except Exception:  # keep routing on the last snapshot; the next poll tries again
                _log.exception("registry_poll_failed")

    def serving(self) -> bool:
        """Whether the gateway can serve inferences: at least one worker is healthy.

        A gateway without one answers every inference UNAVAILABLE, so it says so in its health
        (callers and discovery move to other instances, or fall back at once); its control plane
        still answers, and an idle gateway with a healthy worker and no version is SERVING (it
        can serve whatever is deployed next).
        """
        return self.pool.serving()

    async def _report_health(self) -> None:
        if self.on_health is not None:
            await self.on_health(self.serving())

    async def _watch_health(self) -> None:
        while True:
            await self._report_health()
            await asyncio.sleep(self.settings.workers.pool.health_interval_s)

    async def _supervise(self, server: TritonServer) -> None:
        """Restart ``server`` each time its process dies (see the module docstring)."""
        settings = self.settings.workers
        failures = 0
        up_since = time.monotonic()
        while True:
            code = await server.wait()
            if time.monotonic() - up_since >= settings.restart_reset_s:
                failures = 0
            self.pool.mark_down(server.worker_id, f"tritonserver exited with {code}")
            _log.error("triton_worker_died", worker=server.worker_id, code=code, log=server.log_tail())
            await self._report_health()
            while True:
                backoff = settings.restart_backoff_s * 2 ** min(failures, 32)
                await self.sleep(min(settings.restart_max_backoff_s, backoff))
                failures += 1
                try:
                    await self._restart(server)
                except InfermeshError as exc:
                    _log.error("triton_worker_restart_failed", worker=server.worker_id, error=exc.message)
                    continue
                except Exception:  # the supervisor must outlive any one failed restart
                    _log.exception("triton_worker_restart_failed", worker=server.worker_id)
                    continue
                break
            up_since = time.monotonic()
            await self._report_health()
            await self._catch_up(server.worker_id)

    async def _catch_up(self, worker_id: str) -> None:
        assert self.deployer is not None
        try:
            await self.deployer.catch_up(worker_id)
        except Exception:  # the worker serves what it has; a later restart or deploy tries again
            _log.exception("catch_up_failed", worker=worker_id)

    async def _restart(self, server: TritonServer) -> None:
        """A new process for ``server``; its versions loaded and warm before it takes requests."""
        assert self.deployer is not None
        await server.stop(grace_s=0)
        await server.start(timeout_s=self.settings.workers.startup_timeout_s)
        await self.pool.restarted(server.worker_id, server.grpc_address)
        self._restarts.labels(server.worker_id).inc()
        await self.deployer.reconcile([server.worker_id])
        await self.pool.readmit_restarted(server.worker_id)

    async def _sync_external_workers(self) -> None:
        assert self._discovery is not None and self.deployer is not None
        try:
            instances = await self._discovery.resolve(self.settings.workers.discovery_service)
        except InfermeshError as exc:
            _log.warning("worker_discovery_failed", error=exc.message)
            return
        known = {w.id for w in self.pool.workers}
        wanted = {f"external-{i.address}": i.address for i in instances}
        for worker_id, address in wanted.items():
            if worker_id not in known:
                await self.pool.add(worker_id, address)
                await self.deployer.reconcile([worker_id])
        for worker_id in known:
            if worker_id.startswith("external-") and worker_id not in wanted:
                await self.pool.remove(worker_id)

    async def _watch_workers(self) -> None:
        while True:
            await asyncio.sleep(self.settings.workers.discovery_interval_s)
            await self._sync_external_workers()

    async def stop(self) -> None:
        """Stop watching, stop the pool and the embedded workers, close the registry."""
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks.clear()
        await self.pool.stop()
        await asyncio.gather(*(s.stop() for s in self.embedded), return_exceptions=True)
        if self.registry is not None:
            await self.registry.close()
