"""A version's replicas: its state on each worker, and since when, read from the pool's last probes.

The pool here has a worker that refuses connections (so it never probes healthy) and workers
whose probe results are set by hand, or a fake Triton whose answers the test changes;
tests/test_gateway.py reads replicas from real Triton workers through the control plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from tritonclient.grpc import service_pb2, service_pb2_grpc

from infermesh.modelgateway.v1 import model_gateway_pb2 as pb
from infermesh_chassis.errors import InfermeshError
from infermesh_chassis.metrics import Metrics
from infermesh_model_gateway.artifacts import ArtifactStore
from infermesh_model_gateway.converters import version_to_proto
from infermesh_model_gateway.deployment import Deployer
from infermesh_model_gateway.domain import (
    DeploymentConfig,
    ModelFormat,
    ModelVersionRecord,
    Replica,
    ReplicaState,
    TensorSchema,
    VersionState,
)
from infermesh_model_gateway.pool import WorkerPool
from infermesh_model_gateway.registry import open_registry
from infermesh_model_gateway.settings import DeploySettings, PoolSettings
from infermesh_model_gateway.triton import ModelRepository

TRITON_NAME = "churn__1"


async def _noop() -> None:
    return None


@pytest_asyncio.fixture
async def pool(tmp_path: Path) -> WorkerPool:
    """Workers ``ready`` (has churn v1), ``empty`` (healthy, without it), ``ejected`` (has it, ejected)
    and ``down`` (refuses connections); the deployer fixture stops it."""
    pool = WorkerPool(PoolSettings(health_timeout_s=2.0), Metrics("model-gateway-test"))
    for worker_id in ("ready", "empty", "ejected", "down"):
        await pool.add(worker_id, f"unix:{tmp_path / worker_id}.sock")
    assert not any(w.healthy for w in pool.workers)
    for worker_id, models in (("ready", {TRITON_NAME}), ("empty", set()), ("ejected", {TRITON_NAME})):
        worker = pool.worker(worker_id)
        worker.set_healthy(True)
        worker.set_ready_models(frozenset(models | {"churn__2"}))
    pool.worker("ejected").eject(time.monotonic() + 60)
    return pool


@pytest_asyncio.fixture
async def deployer(pool: WorkerPool, tmp_path: Path) -> AsyncIterator[Deployer]:
    async with _deployer(pool, tmp_path) as deployer:
        yield deployer


@contextlib.asynccontextmanager
async def _deployer(pool: WorkerPool, tmp_path: Path) -> AsyncIterator[Deployer]:
    registry = await open_registry(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        yield Deployer(
            registry,
            ArtifactStore(tmp_path / "artifacts", max_bytes=1 << 20),
            ModelRepository(tmp_path / "repository"),
            pool,
            on_change=_noop,
            settings=DeploySettings(),
        )
    finally:
        await registry.close()
        await pool.stop()


def _version(
    state: VersionState, placement: tuple[str, ...] = (), updated_at: datetime | None = None
) -> ModelVersionRecord:
    return ModelVersionRecord(
        model="churn",
        version=1,
        format=ModelFormat.ONNX,
        artifact_uri="file:///models/churn.onnx",
        artifact_sha256="a" * 64,
        inputs=(TensorSchema("X", "FP32", (6,)),),
        outputs=(TensorSchema("probabilities", "FP32", (2,)),),
        deployment=DeploymentConfig(placement=placement),
        state=state,
        updated_at=updated_at,
    )


def _states(replicas: list[Replica]) -> dict[str, tuple[ReplicaState, str]]:
    return {r.worker_id: (r.state, r.detail) for r in replicas}


UNHEALTHY = (ReplicaState.FAILED, "the worker is unhealthy")
EJECTED = (ReplicaState.FAILED, "the worker is ejected after failures")


async def test_a_serving_version_is_ready_only_where_a_healthy_worker_has_it(deployer: Deployer):
    assert _states(deployer.replicas(_version(VersionState.SERVING))) == {
        "ready": (ReplicaState.READY, ""),
        "empty": (ReplicaState.FAILED, "not loaded on this worker"),
        "ejected": EJECTED,
        "down": UNHEALTHY,
    }


@pytest.mark.parametrize(
    ("state", "ready", "empty"),
    [
        (VersionState.DEPLOYING, (ReplicaState.LOADING, "warming up"), (ReplicaState.LOADING, "loading")),
        (VersionState.DRAINING, (ReplicaState.UNLOADING, "draining"), (ReplicaState.UNLOADING, "unloaded")),
    ],
)
async def test_deploying_and_draining_versions_are_loading_and_unloading(
    deployer: Deployer, state: VersionState, ready: tuple[ReplicaState, str], empty: tuple[ReplicaState, str]
):
    replicas = deployer.replicas(_version(state))
    assert _states(replicas) == {"ready": ready, "empty": empty, "ejected": EJECTED, "down": UNHEALTHY}


@pytest.mark.parametrize("state", [VersionState.REGISTERED, VersionState.FAILED, VersionState.RETIRED])
async def test_a_version_that_is_not_deployed_has_no_replicas(deployer: Deployer, state: VersionState):
    assert deployer.replicas(_version(state)) == []


async def test_a_placed_version_lists_only_its_workers_even_one_the_pool_lost(
    deployer: Deployer, pool: WorkerPool, tmp_path: Path
):
    replicas = deployer.replicas(_version(VersionState.SERVING, placement=("ready", "gone")))
    assert replicas == [
        Replica("ready", f"unix:{tmp_path / 'ready'}.sock", ReplicaState.READY, "", _changed(pool, "ready")),
        Replica("gone", "", ReplicaState.FAILED, "the worker is not in the pool"),
    ]


def _changed(pool: WorkerPool, worker_id: str) -> datetime:
    return datetime.fromtimestamp(pool.worker(worker_id).changed_at, UTC)


async def test_a_replica_changed_when_its_worker_or_its_version_last_did(deployer: Deployer, pool: WorkerPool):
    ready, ejected = pool.worker("ready"), pool.worker("ejected")
    assert ejected.changed_at > ready.changed_at
    old = _version(VersionState.SERVING, updated_at=datetime(2026, 11, 1, tzinfo=UTC))
    times = {r.worker_id: r.updated_at for r in deployer.replicas(old)}
    assert times == {w: _changed(pool, w) for w in ("ready", "empty", "ejected", "down")}
    recent = dataclasses.replace(old, updated_at=datetime.now(UTC) + timedelta(seconds=1))
    assert {r.updated_at for r in deployer.replicas(recent)} == {recent.updated_at}
    stamped = ready.changed_at
    ready.set_healthy(True)
    ready.set_ready_models(ready.ready_models)
    assert ready.changed_at == stamped


class _FakeTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    """A worker that is ``ready`` with ``models`` loaded, and answers inferences with ``infer_code``
    and ``infer_details`` (OK when the code is None)."""

    def __init__(self) -> None:
        self.ready = True
        self.models: set[str] = set()
        self.infer_code: grpc.StatusCode | None = None
        self.infer_details = "the backend crashed"

    async def ServerReady(
        self, request: service_pb2.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ServerReadyResponse:
        return service_pb2.ServerReadyResponse(ready=self.ready)

    async def RepositoryIndex(
        self, request: service_pb2.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RepositoryIndexResponse:
        models = [service_pb2.RepositoryIndexResponse.ModelIndex(name=m, state="READY") for m in sorted(self.models)]
        return service_pb2.RepositoryIndexResponse(models=models)

    async def RepositoryModelLoad(
        self, request: service_pb2.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RepositoryModelLoadResponse:
        self.models.add(request.model_name)
        return service_pb2.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: service_pb2.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RepositoryModelUnloadResponse:
        self.models.discard(request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()

    async def ModelInfer(
        self, request: service_pb2.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelInferResponse:
        if self.infer_code is not None:
            await context.abort(self.infer_code, self.infer_details)
        return service_pb2.ModelInferResponse(model_name=request.model_name)


@pytest_asyncio.fixture
async def fake(tmp_path: Path) -> AsyncIterator[tuple[_FakeTriton, str]]:
    """A fake Triton listening on a unix socket, and its address."""
    servicer = _FakeTriton()
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    address = f"unix:{tmp_path / 'fake'}.sock"
    server.add_insecure_port(address)
    await server.start()
    try:
        yield servicer, address
    finally:
        await server.stop(None)


async def test_probes_loads_and_faults_stamp_the_worker_and_successful_inferences_do_not(
    fake: tuple[_FakeTriton, str], tmp_path: Path
):
    triton, address = fake
    pool = WorkerPool(PoolSettings(eject_after_failures=2, base_ejection_s=0.05), Metrics("model-gateway-test"))
    async with _deployer(pool, tmp_path) as deployer:
        worker = await pool.add("fake", address)
        record = _version(VersionState.SERVING, updated_at=datetime(2026, 11, 1, tzinfo=UTC))
        seen = [worker.changed_at]

        def moved() -> bool:
            """Whether the worker's stamp moved since the last look; the replica's update_time is the stamp."""
            (replica,) = deployer.replicas(record)
            assert replica.updated_at == datetime.fromtimestamp(worker.changed_at, UTC)
            seen.append(worker.changed_at)
            return seen[-1] != seen[-2]

        def state() -> tuple[ReplicaState, str]:
            (replica,) = deployer.replicas(record)
            return replica.state, replica.detail

        async def infer() -> None:
            await pool.infer(TRITON_NAME, service_pb2.ModelInferRequest(model_name=TRITON_NAME), timeout_s=2)

        await pool.refresh()
        assert worker.healthy and not moved()
        await pool.load(TRITON_NAME)
        assert moved() and state() == (ReplicaState.READY, "")
        await pool.refresh()
        for _ in range(3):
            await infer()
        assert not moved()
        triton.infer_code = grpc.StatusCode.INTERNAL
        with pytest.raises(InfermeshError):
            await infer()
        assert not moved()
        with pytest.raises(InfermeshError):
            await infer()
        assert moved() and state() == (ReplicaState.FAILED, "the worker is ejected after failures")
        triton.infer_code = None
        await asyncio.sleep(0.06)
        await pool.refresh()
        assert moved() and state() == (ReplicaState.READY, "")
        await pool.unload(TRITON_NAME)
        assert moved() and state() == (ReplicaState.FAILED, "not loaded on this worker")
        triton.models.add(TRITON_NAME)
        await pool.refresh()
        assert moved() and state() == (ReplicaState.READY, "")
        triton.infer_code, triton.infer_details = (
            grpc.StatusCode.NOT_FOUND,
            f"Request for unknown model '{TRITON_NAME}'",
        )
        with pytest.raises(InfermeshError):
            await infer()
        assert moved() and state() == (ReplicaState.FAILED, "not loaded on this worker")
        await pool.refresh()
        assert moved() and state() == (ReplicaState.READY, "")
        triton.ready = False
        await pool.refresh()
        assert moved() and state() == (ReplicaState.FAILED, "the worker is unhealthy")


async def test_replicas_become_replica_statuses(deployer: Deployer, pool: WorkerPool, tmp_path: Path):
    record = _version(VersionState.SERVING, placement=("ready", "empty", "ejected", "down", "gone"))
    message = version_to_proto(record, [], deployer.replicas(record))
    assert [(r.worker_id, r.address, r.state, r.detail) for r in message.replicas] == [
        ("ready", f"unix:{tmp_path / 'ready'}.sock", pb.REPLICA_STATE_READY, ""),
        ("empty", f"unix:{tmp_path / 'empty'}.sock", pb.REPLICA_STATE_FAILED, "not loaded on this worker"),
        ("ejected", f"unix:{tmp_path / 'ejected'}.sock", pb.REPLICA_STATE_FAILED, EJECTED[1]),
        ("down", f"unix:{tmp_path / 'down'}.sock", pb.REPLICA_STATE_FAILED, UNHEALTHY[1]),
        ("gone", "", pb.REPLICA_STATE_FAILED, "the worker is not in the pool"),
    ]
    stamps = [r.update_time.ToDatetime(UTC) if r.HasField("update_time") else None for r in message.replicas]
    assert stamps == [*(_changed(pool, w) for w in ("ready", "empty", "ejected", "down")), None]
    for state, expected in (
        (VersionState.DEPLOYING, pb.REPLICA_STATE_LOADING),
        (VersionState.DRAINING, pb.REPLICA_STATE_UNLOADING),
    ):
        record = _version(state)
        assert version_to_proto(record, [], deployer.replicas(record)).replicas[0].state == expected
