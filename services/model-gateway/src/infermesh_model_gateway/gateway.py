"""The model gateway assembled: registry, artifacts, Triton workers, pool, router, deployer.

:class:`ModelGateway` owns the lifecycle of everything behind the two servicers: it opens the
registry, starts the embedded Triton workers (and/or watches discovery for external ones),
loads every SERVING version onto them, keeps the router's snapshot current (after each change
made here, and by polling the registry for changes made by other gateway instances), and shuts
down in order.
"""

from __future__ import annotations

import asyncio

from infermesh_chassis.discovery import Discovery
from infermesh_chassis.errors import InfermeshError
from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.tasks import cancel_and_wait
from infermesh_model_gateway.artifacts import ArtifactStore
from infermesh_model_gateway.deployment import Deployer
from infermesh_model_gateway.pool import WorkerPool
from infermesh_model_gateway.registry import Registry, open_registry
from infermesh_model_gateway.routing import Router
from infermesh_model_gateway.settings import Settings
from infermesh_model_gateway.triton import ModelRepository, TritonServer

__all__ = ["ModelGateway"]

_log = get_logger("infermesh_model_gateway.gateway")


class ModelGateway:
    """Everything behind the gateway's RPCs (see the module docstring)."""

    def __init__(self, settings: Settings, metrics: Metrics, discovery: Discovery | None = None) -> None:
        self.settings = settings
        self._discovery = discovery
        data = settings.data_dir
        self.router = Router()
        self.pool = WorkerPool(settings.workers.pool, metrics)
        self.repository = ModelRepository(data / "repository", native_onnx=settings.workers.native_onnx)
        self.artifacts = ArtifactStore(data / "artifacts", max_bytes=settings.max_artifact_bytes)
        self.registry: Registry | None = None
        self.deployer: Deployer | None = None
        self.embedded: list[TritonServer] = []
        self._generation = -1
        self._refresh_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

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
        await asyncio.gather(*(s.start(timeout_s=settings.workers.startup_timeout_s) for s in self.embedded))
        for server in self.embedded:
            await self.pool.add(server.worker_id, server.grpc_address)
        if settings.workers.discovery_service and self._discovery is not None:
            await self._sync_external_workers()
        self.pool.start()
        await self.deployer.reconcile()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._watch_registry(), name="registry-watch"))
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
