"""The pool of Triton workers: health, load-aware balancing, one retry elsewhere, outlier ejection.

Workers are Triton servers reached over gRPC: child processes of the gateway in the embedded
default, or Triton containers found through discovery; the pool does not care which. It

- refreshes each worker's health in the background (``ServerReady``, and ``RepositoryIndex`` for
  the models it has ready), so the hot path only reads in-memory state;
- picks a worker for a model among the healthy ones that have it ready, by power of two choices
  on in-flight requests;
- retries an inference that failed for a worker-side reason (unreachable, crashed backend,
  model missing on that worker) once on another worker that has the model;
- ejects a worker after consecutive failures, for a backoff that doubles on each ejection, and
  takes it back once it answers ready again after that time;
- counts in-flight requests per model, so a version can drain before it unloads;
- stamps each worker with the time its health, ejection or set of ready models last changed (when
  a probe, a load, an unload or a worker fault changes them, never on a successful inference), so
  the control plane can say since when a version is in its state on that worker;
- holds a worker whose process died out of every choice until its owner has restarted it and
  reloaded its versions (:meth:`WorkerPool.mark_down`, then :meth:`WorkerPool.restarted`, then
  :meth:`WorkerPool.readmit_restarted`): probes cannot mark it healthy in between, so no request
  reaches a worker that lacks its versions.

This module is the one place where a Triton ``grpc.RpcError`` becomes the project's error.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterable
from typing import Any

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from infermesh_chassis.client import RECONNECT_OPTIONS
from infermesh_chassis.errors import InfermeshError, Unavailable, from_rpc_error
from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.tasks import cancel_and_wait
from infermesh_model_gateway.settings import PoolSettings

__all__ = ["MODEL_INFER", "Worker", "WorkerPool"]

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"

_log = get_logger("infermesh_model_gateway.pool")

_PROBE_FAILURES = 3
"""Consecutive slow or failed probes before a reachable worker counts as unhealthy (a worker that
refuses connections is unhealthy at once): a busy worker answering probes late is not a dead one."""

_WORKER_FAULTS = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL})
"""Statuses that say the worker (not the request) failed: retried once elsewhere, counted."""


class Worker:
    """One Triton server as the pool sees it. ``changed_at`` (wall-clock seconds) is when its health,
    its ejection or its set of ready models last changed; change them through :meth:`set_healthy`,
    :meth:`set_ready_models`, :meth:`eject` and :meth:`readmit`, which keep it."""

    __slots__ = (
        "address",
        "changed_at",
        "channel",
        "down",
        "ejected_until",
        "ejections",
        "failures",
        "healthy",
        "id",
        "in_flight",
        "model_infer",
        "probe_failures",
        "ready_models",
        "reloading",
        "restarts",
        "stub",
    )

    def __init__(self, worker_id: str, address: str, channel: grpc.aio.Channel) -> None:
        self.id = worker_id
        self.connect(address, channel)
        self.in_flight = 0
        self.healthy = False
        self.ready_models: frozenset[str] = frozenset()
        self.failures = 0
        self.probe_failures = 0
        self.ejections = 0
        self.ejected_until = 0.0
        self.down = ""
        """Why the worker's process is down and being restarted; empty while it serves."""
        self.reloading = False
        """A new process runs and its versions are being loaded (``down`` stays set until they are)."""
        self.restarts = 0
        """Times its process was restarted after it died."""
        self.changed_at = time.time()

    def connect(self, address: str, channel: grpc.aio.Channel) -> None:
        """Talk to the worker at ``address`` through ``channel`` (at start, and after a restart)."""
        self.address = address
        self.channel = channel
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        self.model_infer = channel.unary_unary(MODEL_INFER)
        """ModelInfer taking and returning serialized messages (no serializers: the bytes pass through)."""

    def available(self, now: float) -> bool:
        """Healthy and not ejected."""
        return self.healthy and now >= self.ejected_until

    def set_healthy(self, healthy: bool) -> None:
        """Record the worker's health (stamping ``changed_at`` when it differs)."""
        if healthy != self.healthy:
            self.healthy = healthy
            self.changed_at = time.time()

    def set_ready_models(self, models: frozenset[str]) -> None:
        """Record the models the worker has ready (stamping ``changed_at`` when they differ)."""
        if models != self.ready_models:
            self.ready_models = models
            self.changed_at = time.time()

    def eject(self, until: float) -> None:
        """Keep requests off the worker until the monotonic time ``until``."""
        self.ejected_until = until
        self.changed_at = time.time()

    def readmit(self) -> None:
        """End an ejection: the worker answered ready after its backoff."""
        self.ejected_until = 0.0
        self.failures = 0
        self.changed_at = time.time()


class WorkerPool:
    """The workers and how requests reach them (see the module docstring)."""

    def __init__(self, settings: PoolSettings, metrics: Metrics, rng: random.Random | None = None) -> None:
        self._settings = settings
        self._workers: dict[str, Worker] = {}
        self._model_in_flight: dict[str, int] = {}
        self._drained: dict[str, asyncio.Event] = {}
        self._rng = rng or random.Random()
        self._task: asyncio.Task[None] | None = None
        self._latency = metrics.histogram("worker_latency_seconds", "Inference latency per worker.", ("worker",))
        self._faults = metrics.counter("worker_faults", "Worker-side inference failures.", ("worker", "grpc_code"))
        self._retries = metrics.counter("worker_retries", "Inferences retried on another worker.")
        self._ejections = metrics.counter("worker_ejections", "Workers ejected after failures.", ("worker",))
        # the worker processes of an instance share its Triton workers: the instance has what one sees
        healthy = metrics.gauge("workers_available", "Workers healthy and not ejected.", multiprocess_mode="livemax")
        healthy.set_function(lambda: sum(w.available(time.monotonic()) for w in list(self._workers.values())))

    @property
    def workers(self) -> list[Worker]:
        """Every worker, healthy or not."""
        return list(self._workers.values())

    def worker(self, worker_id: str) -> Worker:
        """One worker by id (Unavailable when unknown)."""
        worker = self._workers.get(worker_id)
        if worker is None:
            raise Unavailable(f"no worker '{worker_id}' in the pool")
        return worker

    async def add(self, worker_id: str, address: str) -> Worker:
        """Add a worker and probe it once right away."""
        if worker_id in self._workers:
            return self._workers[worker_id]
        worker = Worker(worker_id, address, grpc.aio.insecure_channel(address, options=self._channel_options()))
        self._workers[worker_id] = worker
        await self._probe(worker)
        _log.info("worker_added", worker=worker_id, address=address, healthy=worker.healthy)
        return worker

    def mark_down(self, worker_id: str, reason: str) -> None:
        """The worker's process died: keep every request and probe off it until :meth:`restarted`."""
        worker = self.worker(worker_id)
        worker.down = reason
        worker.reloading = False
        worker.set_healthy(False)
        worker.set_ready_models(frozenset())

    async def restarted(self, worker_id: str, address: str) -> Worker:
        """The worker's process runs again at ``address``: a new channel; still held out of choices
        until :meth:`readmit_restarted` (its versions are loaded through :meth:`load` meanwhile)."""
        worker = self.worker(worker_id)
        old = worker.channel
        worker.connect(address, grpc.aio.insecure_channel(address, options=self._channel_options()))
        worker.reloading = True
        worker.restarts += 1
        worker.changed_at = time.time()
        await old.close()
        return worker

    async def readmit_restarted(self, worker_id: str) -> None:
        """Its versions are loaded and warm: probe it, and let it take requests again."""
        worker = self.worker(worker_id)
        worker.down = ""
        worker.reloading = False
        worker.failures = 0
        worker.ejected_until = 0.0
        await self._probe(worker)
        _log.info("worker_restarted", worker=worker_id, healthy=worker.healthy, restarts=worker.restarts)

    async def wait_healthy(self, worker_id: str, timeout_s: float) -> bool:
        """Probe a worker until it is healthy (a busy one may miss a probe's deadline) or ``timeout_s``."""
        worker = self.worker(worker_id)
        deadline = time.monotonic() + timeout_s
        while not worker.healthy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            await self._probe(worker)
        return worker.healthy

    def serving(self) -> bool:
        """Whether any worker can serve now (healthy; an ejected one still serves when no other can)."""
        return any(w.healthy for w in self._workers.values())

    async def remove(self, worker_id: str) -> None:
        """Drop a worker from the pool and close its channel."""
        worker = self._workers.pop(worker_id, None)
        if worker is not None:
            await worker.channel.close()
            _log.info("worker_removed", worker=worker_id)

    def _channel_options(self) -> list[tuple[str, Any]]:
        return [
            ("grpc.max_receive_message_length", self._settings.max_message_bytes),
            ("grpc.max_send_message_length", self._settings.max_message_bytes),
            ("grpc.enable_retries", 0),
            *RECONNECT_OPTIONS,
        ]

    def start(self) -> None:
        """Start the background health refresh."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._health_loop(), name="worker-health")

    async def stop(self) -> None:
        """Stop the health refresh and close every channel."""
        await cancel_and_wait(self._task)
        self._task = None
        for worker_id in list(self._workers):
            await self.remove(worker_id)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.health_interval_s)
            await self.refresh()

    async def refresh(self) -> None:
        """Probe every worker now."""
        await asyncio.gather(*(self._probe(w) for w in list(self._workers.values())))

    async def _probe(self, worker: Worker) -> None:
        if worker.down:
            return
        timeout = self._settings.health_timeout_s
        try:
            ready = await worker.stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=timeout)
            index = await worker.stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True), timeout=timeout)
        except grpc.RpcError as exc:
            worker.probe_failures += 1
            unreachable = exc.code() is grpc.StatusCode.UNAVAILABLE
            if worker.healthy and (unreachable or worker.probe_failures >= _PROBE_FAILURES):
                _log.warning("worker_unhealthy", worker=worker.id, code=exc.code().name, error=exc.details())
                worker.set_healthy(False)
            return
        if worker.down:  # it died while the probe was in flight
            return
        worker.probe_failures = 0
        worker.set_ready_models(frozenset(m.name for m in index.models if m.state == "READY"))
        if ready.ready and not worker.healthy:
            _log.info("worker_healthy", worker=worker.id)
        worker.set_healthy(ready.ready)
        if ready.ready and worker.ejected_until and time.monotonic() >= worker.ejected_until:
            worker.readmit()
            _log.info("worker_readmitted", worker=worker.id)

    def candidates(self, triton_name: str) -> list[Worker]:
        """Workers that can serve ``triton_name`` now (ejected ones only when no other can)."""
        now = time.monotonic()
        having = [w for w in self._workers.values() if triton_name in w.ready_models and w.healthy]
        available = [w for w in having if now >= w.ejected_until]
        return available or having

    def in_flight(self, triton_name: str) -> int:
        """Inferences of ``triton_name`` in flight through this gateway."""
        return self._model_in_flight.get(triton_name, 0)

    async def wait_drained(self, triton_name: str, timeout_s: float) -> int:
        """Wait until no inference of ``triton_name`` is in flight (or ``timeout_s``); what is left."""
        if self.in_flight(triton_name) > 0:
            event = self._drained.setdefault(triton_name, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout_s)
        return self.in_flight(triton_name)

    def _pick(self, workers: list[Worker]) -> Worker:
        if len(workers) == 1:
            return workers[0]
        a, b = self._rng.sample(workers, 2)
        return a if a.in_flight <= b.in_flight else b

    def _fault(self, worker: Worker, code: grpc.StatusCode, triton_name: str) -> None:
        self._faults.labels(worker.id, code.name).inc()
        if code is grpc.StatusCode.UNAVAILABLE:
            worker.set_healthy(False)
        worker.failures += 1
        if worker.failures >= self._settings.eject_after_failures and time.monotonic() >= worker.ejected_until:
            length = min(self._settings.max_ejection_s, self._settings.base_ejection_s * 2**worker.ejections)
            worker.ejections += 1
            worker.eject(time.monotonic() + length)
            self._ejections.labels(worker.id).inc()
            _log.warning("worker_ejected", worker=worker.id, seconds=length, model=triton_name, code=code.name)

    async def infer(
        self,
        triton_name: str,
        request: service_pb2.ModelInferRequest,
        *,
        timeout_s: float,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> service_pb2.ModelInferResponse:
        """:meth:`infer_bytes` for a message (serialized here, its answer parsed)."""
        reply = await self.infer_bytes(triton_name, request.SerializeToString(), timeout_s=timeout_s, metadata=metadata)
        return service_pb2.ModelInferResponse.FromString(reply)

    async def infer_bytes(
        self,
        triton_name: str,
        request: bytes,
        *,
        timeout_s: float,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> bytes:
        """Run the serialized ``request`` (already addressed to ``triton_name``) on a worker, retrying
        once elsewhere; the serialized ModelInferResponse, as the worker sent it."""
        workers = self.candidates(triton_name)
        if not workers:
            raise Unavailable(f"no healthy worker has model '{triton_name}' ready")
        deadline = time.monotonic() + timeout_s
        worker = self._pick(workers)
        self._model_in_flight[triton_name] = self._model_in_flight.get(triton_name, 0) + 1
        try:
            try:
                return await self._call(worker, request, timeout_s, metadata)
            except grpc.RpcError as exc:
                code = exc.code()
                if code not in _WORKER_FAULTS and not _model_missing(exc):
                    raise from_rpc_error(exc, f"worker {worker.id}") from None
                self._fault(worker, code, triton_name)
                if _model_missing(exc):
                    worker.set_ready_models(worker.ready_models - {triton_name})
                others = [w for w in self.candidates(triton_name) if w is not worker]
                remaining = deadline - time.monotonic()
                if not others or remaining <= 0:
                    raise from_rpc_error(exc, f"worker {worker.id}") from None
            self._retries.inc()
            retry = self._pick(others)
            try:
                return await self._call(retry, request, remaining, metadata)
            except grpc.RpcError as exc:
                if exc.code() in _WORKER_FAULTS:
                    self._fault(retry, exc.code(), triton_name)
                raise from_rpc_error(exc, f"worker {retry.id} (after a retry)") from None
        finally:
            left = self._model_in_flight[triton_name] = self._model_in_flight[triton_name] - 1
            if left == 0 and triton_name in self._drained:
                self._drained.pop(triton_name).set()

    async def _call(
        self,
        worker: Worker,
        request: bytes,
        timeout_s: float,
        metadata: tuple[tuple[str, str], ...],
    ) -> bytes:
        worker.in_flight += 1
        started = time.perf_counter()
        try:
            response: bytes = await worker.model_infer(request, timeout=timeout_s, metadata=metadata)
        finally:
            worker.in_flight -= 1
        self._latency.labels(worker.id).observe(time.perf_counter() - started)
        worker.failures = 0
        return response

    async def call(self, worker: Worker, method: str, request: Any, timeout_s: float = 5.0) -> Any:
        """A non-inference call on one worker (metadata, config, statistics), errors converted."""
        try:
            return await getattr(worker.stub, method)(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, f"worker {worker.id}") from None

    async def model_config(self, worker: Worker, triton_name: str) -> service_pb2.ModelConfigResponse:
        """Triton's configuration of ``triton_name`` on one worker."""
        reply: service_pb2.ModelConfigResponse = await self.call(
            worker, "ModelConfig", service_pb2.ModelConfigRequest(name=triton_name)
        )
        return reply

    async def model_statistics(self, worker: Worker, triton_name: str) -> service_pb2.ModelStatisticsResponse:
        """The statistics one worker keeps of ``triton_name``."""
        reply: service_pb2.ModelStatisticsResponse = await self.call(
            worker, "ModelStatistics", service_pb2.ModelStatisticsRequest(name=triton_name)
        )
        return reply

    async def load(self, triton_name: str, worker_ids: Iterable[str] | None = None) -> list[str]:
        """Load ``triton_name`` on the given workers (all healthy ones by default); their ids.

        Fails (and unloads what it loaded) unless it loads everywhere it was asked to.
        """
        targets = self._targets(worker_ids)
        results = await asyncio.gather(*(self._load_one(w, triton_name) for w in targets), return_exceptions=True)
        failed = [(w, r) for w, r in zip(targets, results, strict=True) if isinstance(r, BaseException)]
        if failed:
            loaded = [w.id for w, r in zip(targets, results, strict=True) if not isinstance(r, BaseException)]
            await self.unload(triton_name, loaded)
            worker, error = failed[0]
            message = error.message if isinstance(error, InfermeshError) else str(error)
            raise Unavailable(f"loading '{triton_name}' failed on worker {worker.id}: {message}")
        return [w.id for w in targets]

    def _targets(self, worker_ids: Iterable[str] | None) -> list[Worker]:
        if worker_ids is None:
            targets = [w for w in self._workers.values() if w.healthy]
        else:
            targets = [self.worker(i) for i in worker_ids]
        if not targets:
            raise Unavailable("no healthy Triton worker to load on")
        return targets

    async def _load_one(self, worker: Worker, triton_name: str) -> None:
        request = service_pb2.RepositoryModelLoadRequest(model_name=triton_name)
        await self.call(worker, "RepositoryModelLoad", request, self._settings.load_timeout_s)
        worker.set_ready_models(worker.ready_models | {triton_name})

    async def unload(self, triton_name: str, worker_ids: Iterable[str] | None = None) -> None:
        """Unload ``triton_name`` from the given workers (every worker by default); unreachable ones are skipped."""
        targets = list(self._workers.values()) if worker_ids is None else [self.worker(i) for i in worker_ids]
        for worker in targets:
            worker.set_ready_models(worker.ready_models - {triton_name})
            request = service_pb2.RepositoryModelUnloadRequest(model_name=triton_name)
            try:
                await self.call(worker, "RepositoryModelUnload", request, self._settings.load_timeout_s)
            except InfermeshError as exc:
                _log.warning("unload_failed", worker=worker.id, model=triton_name, error=exc.message)


def _model_missing(exc: grpc.RpcError) -> bool:
    """Triton answers a model it does not have ready with this message (status varies by version)."""
    details = exc.details() if hasattr(exc, "details") else ""
    return bool(details) and ("unknown model" in details or "is not ready" in details)
