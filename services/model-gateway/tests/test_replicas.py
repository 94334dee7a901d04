"""A version's replicas: its state on each worker, read from the pool's last probes.

The pool here has a worker that refuses connections (so it never probes healthy) and workers
whose probe results are set by hand; tests/test_gateway.py reads replicas from real Triton
workers through the control plane.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from infermesh.modelgateway.v1 import model_gateway_pb2 as pb
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
async def deployer(tmp_path: Path) -> AsyncIterator[Deployer]:
    """Workers ``ready`` (has churn v1), ``empty`` (healthy, without it), ``ejected`` (has it, ejected)
    and ``down`` (refuses connections)."""
    pool = WorkerPool(PoolSettings(health_timeout_s=2.0), Metrics("model-gateway-test"))
    for worker_id in ("ready", "empty", "ejected", "down"):
        await pool.add(worker_id, f"unix:{tmp_path / worker_id}.sock")
    assert not any(w.healthy for w in pool.workers)
    for worker_id, models in (("ready", {TRITON_NAME}), ("empty", set()), ("ejected", {TRITON_NAME})):
        worker = pool.worker(worker_id)
        worker.healthy = True
        worker.ready_models = frozenset(models | {"churn__2"})
    pool.worker("ejected").ejected_until = time.monotonic() + 60
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


def _version(state: VersionState, placement: tuple[str, ...] = ()) -> ModelVersionRecord:
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


async def test_a_placed_version_lists_only_its_workers_even_one_the_pool_lost(deployer: Deployer, tmp_path: Path):
    replicas = deployer.replicas(_version(VersionState.SERVING, placement=("ready", "gone")))
    assert replicas == [
        Replica("ready", f"unix:{tmp_path / 'ready'}.sock", ReplicaState.READY),
        Replica("gone", "", ReplicaState.FAILED, "the worker is not in the pool"),
    ]


async def test_replicas_become_replica_statuses(deployer: Deployer, tmp_path: Path):
    record = _version(VersionState.SERVING)
    message = version_to_proto(record, [], deployer.replicas(record))
    assert [(r.worker_id, r.address, r.state, r.detail) for r in message.replicas] == [
        ("ready", f"unix:{tmp_path / 'ready'}.sock", pb.REPLICA_STATE_READY, ""),
        ("empty", f"unix:{tmp_path / 'empty'}.sock", pb.REPLICA_STATE_FAILED, "not loaded on this worker"),
        ("ejected", f"unix:{tmp_path / 'ejected'}.sock", pb.REPLICA_STATE_FAILED, EJECTED[1]),
        ("down", f"unix:{tmp_path / 'down'}.sock", pb.REPLICA_STATE_FAILED, UNHEALTHY[1]),
    ]
    for state, expected in (
        (VersionState.DEPLOYING, pb.REPLICA_STATE_LOADING),
        (VersionState.DRAINING, pb.REPLICA_STATE_UNLOADING),
    ):
        record = _version(state)
        assert version_to_proto(record, [], deployer.replicas(record)).replicas[0].state == expected
