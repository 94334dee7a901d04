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

An instance served by several worker processes (the chassis' ``grpc.workers``) shares one set of
embedded Triton workers (:mod:`.instance`): worker process 0 owns them (starts, supervises,
restarts, reconciles and publishes them), the others follow what it publishes and never start,
load at start or restart them; a change made through any process is routed by all of them before
it is answered.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

from infermesh_chassis.discovery import Discovery
from infermesh_chassis.errors import InfermeshError
from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.tasks import cancel_and_wait
from infermesh_model_gateway.artifacts import ArtifactStore
from infermesh_model_gateway.deployment import Deployer
from infermesh_model_gateway.domain import utc_now
from infermesh_model_gateway.instance import RouterSync, SharedTriton, SharedWorker, TritonState, pid_alive
from infermesh_model_gateway.pool import Worker, WorkerPool
from infermesh_model_gateway.registry import Registry, open_registry
from infermesh_model_gateway.routing import Router
from infermesh_model_gateway.settings import Settings
from infermesh_model_gateway.triton import ModelRepository, TritonServer

__all__ = ["ModelGateway"]

_log = get_logger("infermesh_model_gateway.gateway")

OWNER_GONE = "the worker process that owns the instance's Triton workers exited; its parent starts it again"
STARTING = "the owner process is starting it"


class ModelGateway:
    """Everything behind the gateway's RPCs (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        discovery: Discovery | None = None,
        *,
        clock: Callable[[], datetime] = utc_now,
        worker_index: int = 0,
        worker_count: int = 1,
        instance_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.owner = worker_index == 0
        """Whether this process owns the embedded Triton workers of its instance (see :mod:`.instance`)."""
        self._shared: SharedTriton | None = None
        self._sync: RouterSync | None = None
        if instance_dir is not None and worker_count > 1:  # one process alone shares nothing
            self._shared = SharedTriton(instance_dir)
            self._sync = RouterSync(instance_dir, worker_index, worker_count)
        if not self.owner and self._shared is None:
            raise ValueError("a gateway worker process other than the first needs the instance directory")
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
            on_change=self.changed,
            settings=settings.deploy,
        )
        self.repository.root.mkdir(parents=True, exist_ok=True)
        if self.owner:
            await self._start_embedded()
        else:
            await self._follow_owner()
        if settings.workers.discovery_service and self._discovery is not None:
            await self._sync_external_workers()
        self.pool.start()
        if self.owner:
            await self.deployer.reconcile()
            self._publish(started=True)
        else:
            await self.refresh()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._watch_registry(), name="registry-watch"))
        self._tasks.append(loop.create_task(self._watch_health(), name="health-watch"))
        if self._shared is not None:
            self._tasks.append(loop.create_task(self._watch_instance(), name="instance-watch"))
        for server in self.embedded:
            self._tasks.append(loop.create_task(self._supervise(server), name=f"supervise-{server.worker_id}"))
        if settings.workers.discovery_service and self._discovery is not None:
            self._tasks.append(loop.create_task(self._watch_workers(), name="worker-watch"))
        _log.info("gateway_started", workers=[w.id for w in self.pool.workers], models=self.router.models())

    async def _start_embedded(self) -> None:
        """Start the embedded Triton workers (the owner's part; see :mod:`.instance`).

        A previous owner of this instance that died took its Triton children with it: their restart
        counts go on from what it published, one more each.
        """
        settings = self.settings
        previous = self._shared.read() if self._shared is not None else None
        carried = {}
        if previous is not None and previous.owner_pid != os.getpid():
            carried = {w.id: w.restarts + 1 for w in previous.workers}
        for index in range(settings.workers.embedded):
            server = TritonServer(
                model_repository=self.repository.root,
                workdir=settings.data_dir / "workers" / f"worker-{index}",
                worker_id=f"embedded-{index}",
            )
            self.embedded.append(server)
            self._restarts.labels(server.worker_id)  # exported from 0: increase() in an alert sees the first one
        if self._shared is not None:
            starting = tuple(
                SharedWorker(s.worker_id, "", STARTING, False, carried.get(s.worker_id, 0), ()) for s in self.embedded
            )
            self._shared.publish(TritonState(os.getpid(), False, starting))
        await asyncio.gather(*(s.start(timeout_s=settings.workers.startup_timeout_s) for s in self.embedded))
        for server in self.embedded:
            worker = await self.pool.add(server.worker_id, server.grpc_address)
            if carried.get(server.worker_id):
                worker.restarts = carried[server.worker_id]
                self._restarts.labels(server.worker_id).inc()
            # it answered ready; a first probe that was merely slow must not leave it out of the reconcile
            await self.pool.wait_healthy(server.worker_id, settings.workers.startup_timeout_s)

    def _publish(self, *, started: bool = True) -> None:
        """Publish the embedded workers as this owner sees them now (see :mod:`.instance`)."""
        if not self.owner or self._shared is None:
            return
        workers = []
        for server in self.embedded:
            worker = self.pool.worker(server.worker_id)
            reloading = tuple(sorted(worker.ready_models)) if worker.reloading else ()
            shared = SharedWorker(worker.id, worker.address, worker.down, worker.reloading, worker.restarts, reloading)
            workers.append(shared)
        self._shared.publish(TritonState(os.getpid(), started, tuple(workers)))

    async def _follow_owner(self) -> None:
        """Wait until the owner has started the instance's Triton workers and reconciled them; add
        them to this process' pool as it publishes them.

        As long as the owner process lives this waits (its reconcile of many versions may take a
        while); without a live owner for ``workers.startup_timeout_s`` it gives up.
        """
        assert self._shared is not None
        timeout_s = self.settings.workers.startup_timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            state = self._shared.read()
            owner_alive = state is not None and pid_alive(state.owner_pid)
            if state is not None and state.started and owner_alive:
                break
            if owner_alive:
                deadline = time.monotonic() + timeout_s
            elif time.monotonic() >= deadline:
                raise InfermeshError(f"no worker process 0 of this instance started its Triton within {timeout_s:.0f}s")
            await asyncio.sleep(self.settings.instance_poll_s)
        for shared in state.workers:
            await self.pool.add(shared.id, shared.address)
        await self._apply(state)

    async def _apply(self, state: TritonState) -> None:
        """Make this follower's pool say what the owner published about each embedded worker."""
        owner_alive = pid_alive(state.owner_pid)
        for shared in state.workers:
            worker = self.pool.worker(shared.id)
            if not owner_alive:
                if not worker.down:
                    self.pool.mark_down(shared.id, OWNER_GONE)
                continue
            moved = bool(shared.address) and shared.address != worker.address
            if shared.down or moved:
                if not worker.down:
                    self.pool.mark_down(shared.id, shared.down or "the owner restarted it")
                worker.down = shared.down or worker.down
                if moved:
                    await self.pool.restarted(shared.id, shared.address)
                worker.reloading = shared.reloading
                if shared.reloading:
                    worker.set_ready_models(frozenset(shared.ready_models))
            if not shared.down and worker.down:
                await self.pool.readmit_restarted(shared.id)
            _set_restarts(worker, shared.restarts)

    async def _watch_instance(self) -> None:
        """Follow the owner (a follower), publish what changed (the owner), and route by the newest
        generation another process announced (both)."""
        assert self._shared is not None and self._sync is not None
        while True:
            await asyncio.sleep(self.settings.instance_poll_s)
            try:
                if self.owner:
                    self._publish()
                else:
                    state = self._shared.read()
                    if state is not None:
                        before = self.serving()
                        await self._apply(state)
                        if self.serving() != before:
                            await self._report_health()
                if self._sync.announced() > self._generation:
                    # probe first: a version the sibling just loaded is ready in this pool before it routes here
                    await self.pool.refresh()
                    await self.refresh()
            except Exception:  # keep serving on what is known; the next look tries again
                _log.exception("instance_watch_failed")

    async def refresh(self) -> None:
        """Reload the router from the registry.

        Serialized, so a snapshot read earlier can never replace one read later.
        """
        assert self.registry is not None
        async with self._refresh_lock:
            generation = await self.registry.generation()
            self.router.load(await self.registry.snapshot())
            self._generation = generation
            if self._sync is not None:
                self._sync.acknowledge(generation)

    async def changed(self) -> None:
        """A change was made through this process: route by it, and answer only once the other
        worker processes of the instance route by it too (bounded by ``instance_sync_timeout_s``)."""
        await self.refresh()
        if self._sync is not None:
            await self._sync.announce(
                self._generation, self.settings.instance_sync_timeout_s, self.settings.instance_poll_s
            )

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
            self._publish()
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
        self._publish()
        await self.deployer.reconcile([server.worker_id])
        await self.pool.readmit_restarted(server.worker_id)
        self._publish()

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
                if self.owner:  # once per instance; the other processes see the loads in their probes
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


def _set_restarts(worker: Worker, restarts: int) -> None:
    """Take the owner's restart count (a follower's pool counted only the restarts it saw)."""
    if worker.restarts != restarts:
        worker.restarts = restarts
        worker.changed_at = time.time()
