"""Registering, deploying and undeploying versions, so that nothing is ever half-deployed.

- **register**: the artifact is fetched and verified (sha256, format, trusted pickles) before
  the version is stored; a refusal leaves nothing behind.
- **deploy**: REGISTERED → DEPLOYING; the Triton model is written to the repository, loaded on
  every worker of its placement, and warmed up on each (requests built from the schema) before
  the version becomes SERVING and the router sees it. Any failure unloads what was loaded,
  removes what was written, and leaves the version FAILED with the reason.
- **undeploy**: SERVING → DRAINING (refused while traffic or an alias points at the version);
  the router stops sending it new requests, in-flight ones finish (bounded by the drain
  timeout), then it unloads and goes back to REGISTERED.
- **reconcile**: after a restart, or when a worker joins, every SERVING version is loaded where
  it belongs; operations a crash interrupted are finished (DRAINING) or failed (DEPLOYING).
- **replicas**: where a deployed version stands on each worker of its placement, and since when,
  read from the pool's last probes (what the control plane answers; no worker is called).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime

import numpy as np
from tritonclient.grpc import service_pb2

from infermesh_chassis import context as ctx
from infermesh_chassis.errors import DeadlineExceeded, FailedPrecondition, InfermeshError, InvalidArgument
from infermesh_chassis.logs import get_logger
from infermesh_model_gateway.artifacts import ArtifactStore
from infermesh_model_gateway.domain import (
    ModelVersionRecord,
    Replica,
    ReplicaState,
    TensorSchema,
    VersionState,
    WarmupSample,
    queue_delay_text,
)
from infermesh_model_gateway.pool import Worker, WorkerPool
from infermesh_model_gateway.registry import Registry
from infermesh_model_gateway.runtimes import NUMPY_TYPES
from infermesh_model_gateway.settings import DeploySettings
from infermesh_model_gateway.triton import ModelRepository
from infermesh_model_gateway.validation import RequestValidator

__all__ = ["WARMUP_PARAMETER", "Deployer", "sample_request", "warmup_request", "warmup_requests"]

WARMUP_PARAMETER = "infermesh.warmup"
"""Request parameter marking a warm-up request (the model's fault injection leaves it alone)."""

_log = get_logger("infermesh_model_gateway.deployment")

_DEPLOYED = frozenset({VersionState.DEPLOYING, VersionState.SERVING, VersionState.DRAINING})
"""States in which a version belongs on the workers of its placement."""

ANSWER_RESERVE_S = 2.0
"""Of a caller's deadline, what a deploy keeps to unload a failed version and answer with the cause."""


def _warmup_tensor(spec: TensorSchema, batching: bool) -> tuple[list[int], bytes]:
    shape = [1 if d == -1 else d for d in spec.shape]
    if batching:
        shape = [1, *shape]
    count = int(np.prod(shape)) if shape else 1
    if spec.datatype == "BYTES":
        return shape, b"".join(len(b"0").to_bytes(4, "little") + b"0" for _ in range(count))
    return shape, np.zeros(count, dtype=NUMPY_TYPES[spec.datatype]).tobytes()


def warmup_request(record: ModelVersionRecord) -> service_pb2.ModelInferRequest:
    """A well-formed request for ``record`` (zeros of the schema's shapes, batch 1)."""
    request = service_pb2.ModelInferRequest(model_name=record.triton_name)
    request.parameters[WARMUP_PARAMETER].bool_param = True
    batching = record.deployment.max_batch_size > 0
    for spec in record.inputs:
        shape, raw = _warmup_tensor(spec, batching)
        request.inputs.add(name=spec.name, datatype=spec.datatype, shape=shape)
        request.raw_input_contents.append(raw)
    return request


def sample_request(record: ModelVersionRecord, sample: WarmupSample) -> service_pb2.ModelInferRequest:
    """The recorded warm-up ``sample`` addressed to ``record``'s Triton model."""
    request = service_pb2.ModelInferRequest(model_name=record.triton_name)
    request.parameters[WARMUP_PARAMETER].bool_param = True
    for tensor in sample.inputs:
        request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        request.raw_input_contents.append(tensor.raw)
    return request


def warmup_requests(record: ModelVersionRecord) -> list[service_pb2.ModelInferRequest]:
    """What warms ``record`` up on a worker: its recorded samples, else synthetic requests."""
    samples = record.deployment.warmup_samples
    if samples:
        return [sample_request(record, s) for s in samples for _ in range(s.count)]
    return [warmup_request(record)] * record.deployment.warmup_requests


class Deployer:
    """Drives versions through their lifecycle across registry, repository and workers."""

    def __init__(
        self,
        registry: Registry,
        artifacts: ArtifactStore,
        repository: ModelRepository,
        pool: WorkerPool,
        *,
        on_change: Callable[[], Awaitable[None]],
        settings: DeploySettings,
    ) -> None:
        self._registry = registry
        self._artifacts = artifacts
        self._repository = repository
        self._pool = pool
        self._on_change = on_change
        self._settings = settings
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, record: ModelVersionRecord) -> asyncio.Lock:
        return self._locks.setdefault(record.triton_name, asyncio.Lock())

    async def register(self, record: ModelVersionRecord, *, actor: str, reason: str = "") -> ModelVersionRecord:
        """Verify the artifact, then store the version (REGISTERED)."""
        validator = RequestValidator(record, max_request_bytes=1 << 62)
        for index, sample in enumerate(record.deployment.warmup_samples):
            try:
                validator.validate(sample_request(record, sample))
            except InvalidArgument as exc:
                raise InvalidArgument(f"deployment.warmup_samples[{index}] ('{sample.name}'): {exc.message}") from None
        verified = await self._artifacts.verify(record)
        stored = await self._registry.register_version(verified, actor=actor, reason=reason)
        await self._on_change()
        return stored

    async def deploy(self, model: str, version: int, *, actor: str, reason: str = "") -> ModelVersionRecord:
        """Load, warm up and mark SERVING; on any failure roll back to nothing and mark FAILED."""
        record = await self._registry.get_version(model, version)
        async with self._lock(record):
            record = await self._registry.set_state(model, version, VersionState.DEPLOYING, actor=actor, reason=reason)
            await self._on_change()
            try:
                await self._load(record, record.deployment.placement or None)
            except InfermeshError as exc:
                _log.error("deploy_failed", model=model, version=version, actor=actor, cause=exc.message)
                await self._registry.set_state(
                    model, version, VersionState.FAILED, detail=exc.message, actor=actor, reason="deployment failed"
                )
                await self._on_change()
                raise FailedPrecondition(
                    f"deploying version {version} of model '{model}' failed: {exc.message}"
                ) from None
            record = await self._registry.set_state(model, version, VersionState.SERVING, actor=actor, reason=reason)
            await self._on_change()
        _log.info("version_deployed", model=model, version=version)
        return record

    async def _load(self, record: ModelVersionRecord, worker_ids: Iterable[str] | None) -> list[str]:
        """Write, load and warm up ``record`` on the workers; undo everything on failure."""
        loaded: list[str] = []
        asked = None if worker_ids is None else list(worker_ids)
        try:
            artifact = await self._artifacts.fetch(record)
            await asyncio.to_thread(self._repository.write, record, artifact)
            loaded = await self._pool.load(record.triton_name, asked)
            await self._warm_up(record, loaded)
        except InfermeshError:
            if loaded:
                await self._pool.unload(record.triton_name, loaded)
            # Keep the files only for workers outside this attempt that serve the version (a reload
            # on one worker); a probe racing the unload may still list it on the workers tried here.
            others = [w for w in self._pool.workers if asked is not None and w.id not in asked]
            if not any(record.triton_name in w.ready_models for w in others):
                await asyncio.to_thread(self._repository.remove, record.triton_name)
            raise
        return loaded

    async def _warm_up(self, record: ModelVersionRecord, worker_ids: list[str]) -> None:
        requests = warmup_requests(record)
        for worker_id in worker_ids:
            worker = self._pool.worker(worker_id)
            for index, request in enumerate(requests, 1):
                timeout_s, bound = self._warmup_timeout()
                where = f"warm-up request {index} of {len(requests)} on worker {worker_id}"
                if timeout_s <= 0:
                    raise DeadlineExceeded(f"{where}: {bound} left no time for it")
                started = time.monotonic()
                try:
                    await self._pool.call(worker, "ModelInfer", request, timeout_s)
                except InfermeshError as exc:
                    # a worker may end a call at its deadline with another status ("Stream removed")
                    if isinstance(exc, DeadlineExceeded) or time.monotonic() - started >= timeout_s:
                        raise DeadlineExceeded(
                            f"{where} got no answer within {timeout_s:.3g}s ({bound}){_batching_hint(record)}"
                        ) from None
                    raise type(exc)(f"{where} failed: {exc.message}") from None

    def _warmup_timeout(self) -> tuple[float, str]:
        """Deadline of one warm-up request, and what set it: the setting, or what the deploying
        caller's deadline leaves once :data:`ANSWER_RESERVE_S` is kept to undo and answer."""
        configured = self._settings.warmup_timeout_s
        left = ctx.remaining_time()
        if left is None or left - ANSWER_RESERVE_S >= configured:
            return configured, "deploy.warmup_timeout_s"
        return left - ANSWER_RESERVE_S, "what the caller's deadline left"

    def replicas(self, record: ModelVersionRecord) -> list[Replica]:
        """Where a deployed ``record`` stands on each worker of its placement, from the pool's last
        probes (no call to any worker); empty for a version that is not deployed."""
        if record.state not in _DEPLOYED:
            return []
        workers = {w.id: w for w in self._pool.workers}
        placed = record.deployment.placement or tuple(workers)
        now = time.monotonic()
        return [_replica(record, worker_id, workers.get(worker_id), now) for worker_id in placed]

    async def changed(self) -> None:
        """Tell the gateway that routing state changed (after a traffic, alias or promote call)."""
        await self._on_change()

    async def undeploy(
        self, model: str, version: int, *, actor: str, reason: str = "", drain_timeout_s: float | None = None
    ) -> ModelVersionRecord:
        """Drain (up to ``drain_timeout_s``, the settings' by default), unload, and go back to REGISTERED."""
        record = await self._registry.get_version(model, version)
        async with self._lock(record):
            await self._registry.set_state(model, version, VersionState.DRAINING, actor=actor, reason=reason)
            await self._on_change()
            await self._drain_and_unload(record)
            record = await self._registry.set_state(model, version, VersionState.REGISTERED, actor=actor, reason=reason)
            await self._on_change()
        _log.info("version_undeployed", model=model, version=version)
        return record

    async def retire(self, model: str, version: int, *, actor: str, reason: str = "") -> ModelVersionRecord:
        """Take a version out for good: drain and unload it if it serves, then RETIRED."""
        record = await self._registry.get_version(model, version)
        async with self._lock(record):
            record = await self._registry.get_version(model, version)  # the controller may have been first
            if record.state is VersionState.RETIRED:
                return record
            if record.state is VersionState.SERVING:
                await self._registry.set_state(model, version, VersionState.DRAINING, actor=actor, reason=reason)
                await self._on_change()
                await self._drain_and_unload(record)
            elif record.state is VersionState.DRAINING:
                await self._drain_and_unload(record)
            record = await self._registry.set_state(model, version, VersionState.RETIRED, actor=actor, reason=reason)
            await self._on_change()
        _log.info("version_retired", model=model, version=version)
        return record

    async def _drain_and_unload(self, record: ModelVersionRecord, timeout_s: float | None = None) -> None:
        timeout = self._settings.drain_timeout_s if timeout_s is None else timeout_s
        await asyncio.sleep(self._settings.propagation_s)
        left = await self._pool.wait_drained(record.triton_name, timeout)
        if left:
            _log.warning("drain_timeout", model=record.model, version=record.version, in_flight=left)
        await self._pool.unload(record.triton_name)
        await asyncio.to_thread(self._repository.remove, record.triton_name)

    async def catch_up(self, worker_id: str) -> None:
        """Load on a worker that just came back (restarted and reloaded, then readmitted) what was
        deployed while it was away: a deploy that ran then left it out (it was not healthy), and one
        still running may have chosen its workers before it was readmitted. Each version is looked
        at under its deploy lock, so a deploy in progress is waited for and its outcome seen."""
        for model, versions in await self._registry.snapshot():
            for record in versions:
                if record.state not in (VersionState.DEPLOYING, VersionState.SERVING):
                    continue
                if not _placed_on(record, worker_id):
                    continue
                async with self._lock(record):
                    current = await self._registry.get_version(model.name, record.version)
                    if current.state is not VersionState.SERVING:
                        continue
                    if current.triton_name in self._pool.worker(worker_id).ready_models:
                        continue
                    try:
                        await self._load(current, [worker_id])
                    except InfermeshError as exc:
                        _log.error("catch_up_load_failed", model=model.name, version=record.version, error=exc.message)
                    else:
                        _log.info("version_caught_up", model=model.name, version=record.version, worker=worker_id)

    async def reconcile(self, worker_ids: Iterable[str] | None = None, *, actor: str = "model-gateway") -> None:
        """Bring workers in line with the registry (at start, and when workers join)."""
        targets = list(worker_ids) if worker_ids is not None else None
        for model, versions in await self._registry.snapshot():
            for record in versions:
                if record.state is VersionState.SERVING:
                    placement = set(record.deployment.placement)
                    ids = targets if not placement else [i for i in (targets or placement) if i in placement]
                    if ids is not None and not ids:
                        continue
                    try:
                        await self._load(record, ids)
                    except InfermeshError as exc:
                        _log.error("reconcile_load_failed", model=model.name, version=record.version, error=exc.message)
                elif record.state is VersionState.DEPLOYING and targets is None:
                    await self._registry.set_state(
                        model.name,
                        record.version,
                        VersionState.FAILED,
                        detail="interrupted by a gateway restart; deploy again",
                        actor=actor,
                    )
                elif record.state is VersionState.DRAINING and targets is None:
                    await self._drain_and_unload(record)
                    await self._registry.set_state(
                        model.name,
                        record.version,
                        VersionState.REGISTERED,
                        actor=actor,
                        reason="undeploy finished after a gateway restart",
                    )
        await self._on_change()


def _placed_on(record: ModelVersionRecord, worker_id: str) -> bool:
    return not record.deployment.placement or worker_id in record.deployment.placement


def _batching_hint(record: ModelVersionRecord) -> str:
    deployment = record.deployment
    if not deployment.dynamic_batching:
        return ""
    return (
        f"; its dynamic batching holds a request that does not fill a batch up to "
        f"{queue_delay_text(deployment.max_queue_delay_us)} (max_queue_delay)"
    )


def _replica(record: ModelVersionRecord, worker_id: str, worker: Worker | None, now: float) -> Replica:
    if worker is None:
        return Replica(worker_id, "", ReplicaState.FAILED, "the worker is not in the pool")
    state, detail = _replica_state(record, worker, now)
    changed = datetime.fromtimestamp(worker.changed_at, UTC)
    if record.updated_at is not None:
        changed = max(changed, record.updated_at)
    return Replica(worker.id, worker.address, state, detail, changed, worker.restarts)


def _replica_state(record: ModelVersionRecord, worker: Worker, now: float) -> tuple[ReplicaState, str]:
    if worker.down and worker.reloading and record.state is VersionState.SERVING:
        loaded = record.triton_name in worker.ready_models
        return ReplicaState.LOADING, f"{'warming up' if loaded else 'loading'} on the restarted worker"
    if worker.down:
        return ReplicaState.FAILED, f"the worker is down ({worker.down}); the gateway is restarting it"
    if not worker.healthy:
        return ReplicaState.FAILED, "the worker is unhealthy"
    if not worker.available(now):
        return ReplicaState.FAILED, "the worker is ejected after failures"
    loaded = record.triton_name in worker.ready_models
    if record.state is VersionState.DEPLOYING:
        return ReplicaState.LOADING, "warming up" if loaded else "loading"
    if record.state is VersionState.DRAINING:
        return ReplicaState.UNLOADING, "draining" if loaded else "unloaded"
    if loaded:
        return ReplicaState.READY, ""
    return ReplicaState.FAILED, "not loaded on this worker"
