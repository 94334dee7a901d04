"""One instance served by two worker processes: one owner of the embedded Triton, changes seen by both.

The two "processes" here are two gateways in this test process, started as the chassis starts an
instance's workers (``worker_index`` 0 and 1 of 2, one ``data_dir``, one ``instance_dir``), each on
its own port so a test can say which one it calls. ``test_instance_processes.py`` runs the same
instance as real processes behind one port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from datetime import UTC
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from infermesh.modelgateway.v1 import model_gateway_pb2 as pb
from infermesh_chassis.errors import InfermeshError
from infermesh_model_gateway.instance import SharedTriton, SharedWorker, TritonState
from infermesh_model_gateway.rollouts import CONTROLLER_ACTOR
from infermesh_model_gateway.testing import (
    ChurnModels,
    GatewayHarness,
    ManualClock,
    infer_request,
    start_gateway,
    until,
)

WITHIN_S = 30.0
"""Bound on background work (a restart and its reload) on a loaded 2-core machine; the tests wait
for events, this only turns a hang into a failure."""


class RestartGate:
    """Stands in for the owner's restart backoff: records each one and holds it until opened."""

    def __init__(self) -> None:
        self.backoffs: list[float] = []
        self.waiting = asyncio.Event()
        self._open = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.backoffs.append(seconds)
        self.waiting.set()
        await self._open.wait()
        self._open.clear()
        self.waiting.clear()

    def open(self) -> None:
        self._open.set()


@contextlib.asynccontextmanager
async def instance_pair(tmp_path: Path, **settings: Any) -> AsyncIterator[tuple[GatewayHarness, GatewayHarness]]:
    """Worker processes 0 (the owner) and 1 of one instance."""
    instance_dir = tmp_path / "instance"
    instance_dir.mkdir()
    common: dict[str, Any] = {"workers": 1, "worker_count": 2, "instance_dir": instance_dir, **settings}
    async with (
        start_gateway(tmp_path, worker_index=0, **common) as owner,
        start_gateway(tmp_path, worker_index=1, **common) as follower,
    ):
        yield owner, follower


async def _health(gw: GatewayHarness) -> str:
    reply = await health_pb2_grpc.HealthStub(gw.channel).Check(health_pb2.HealthCheckRequest())
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def _replicas(gw: GatewayHarness, version: int) -> list[tuple[str, str, int]]:
    reply = await gw.control.GetModelVersion(pb.GetModelVersionRequest(model="churn", version=version))
    return [(pb.ReplicaState.Name(r.state), r.address, r.worker_restarts) for r in reply.model_version.replicas]


async def _triton_inferences(address: str, triton_name: str) -> int:
    """Inferences ``triton_name`` ran on the Triton server at ``address`` (warm-ups included)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        reply = await stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name=triton_name), timeout=10)
    return sum(s.inference_stats.success.count for s in reply.model_stats)


async def _answers(gw: GatewayHarness, x: Any) -> bool:
    try:
        return (await gw.inference.ModelInfer(infer_request("churn", x))).model_version == "1"
    except grpc.aio.AioRpcError:
        return False


async def test_a_deploy_through_any_process_loads_once_and_serves_through_every_one(
    churn_models: ChurnModels, tmp_path
):
    # no background probe in the test's time: the owner's pool must learn of the load from the deploy itself
    async with instance_pair(tmp_path, worker_settings={"pool": {"health_interval_s": 600}}) as (owner, follower):
        [triton] = owner.gateway.embedded
        assert follower.gateway.embedded == [], "only worker process 0 starts tritonserver"
        assert [w.address for w in follower.gateway.pool.workers] == [triton.grpc_address]

        await follower.register_and_deploy("churn", churn_models.v1)
        await follower.control.PromoteModelVersion(pb.PromoteModelVersionRequest(model="churn", version=1))
        # loaded and warmed up once for the instance: the deploy's 3 warm-up requests, not twice as many
        assert await _triton_inferences(triton.grpc_address, "churn__1") == 3
        # answered only once the owner routes by it too: the next call, whichever process takes it, sees it
        x = churn_models.x[:2]
        for gw in (owner, follower):
            response = await gw.inference.ModelInfer(infer_request("churn", x))
            assert response.model_version == "1"
        assert (
            await _replicas(owner, 1)
            == await _replicas(follower, 1)
            == [("REPLICA_STATE_READY", triton.grpc_address, 0)]
        )


async def test_a_killed_triton_is_restarted_and_reloaded_once_for_the_instance(churn_models: ChurnModels, tmp_path):
    async with instance_pair(tmp_path) as (owner, follower):
        await owner.register_and_deploy("churn", churn_models.v1)
        await owner.control.PromoteModelVersion(pb.PromoteModelVersionRequest(model="churn", version=1))
        gate = RestartGate()
        owner.gateway.sleep = gate.sleep
        [triton] = owner.gateway.embedded
        x = churn_models.x[:2]

        os.kill(triton.pid, signal.SIGKILL)
        await asyncio.wait_for(gate.waiting.wait(), WITHIN_S)

        async def follower_down() -> bool:
            return await _health(follower) == "NOT_SERVING"

        async def follower_knows_why() -> bool:
            reply = await follower.control.GetModelVersion(pb.GetModelVersionRequest(model="churn", version=1))
            return "tritonserver exited with -9" in reply.model_version.replicas[0].detail

        await until(follower_down, WITHIN_S, "the follower NOT_SERVING while the owner restarts Triton")
        # its own probe may see the server gone first ("unhealthy"); the owner's reason follows from triton.json
        await until(follower_knows_why, WITHIN_S, "the follower answering the owner's reason for the failure")
        down = await _replicas(follower, 1)
        assert down == await _replicas(owner, 1)
        assert down[0][0] == "REPLICA_STATE_FAILED"

        gate.open()
        for gw in (owner, follower):
            await until(lambda gw=gw: _answers(gw, x), WITHIN_S, "version 1 answering again")
        assert await _health(follower) == "SERVING"
        assert gate.backoffs == [owner.gateway.settings.workers.restart_backoff_s], "one restart, by the owner"
        assert follower.gateway.embedded == []
        restarted = [("REPLICA_STATE_READY", triton.grpc_address, 1)]
        assert await _replicas(owner, 1) == restarted
        assert await _replicas(follower, 1) == restarted
        # the new server's version was reloaded and warmed up once (3 warm-ups, then the 2 answers above)
        assert await _triton_inferences(triton.grpc_address, "churn__1") == 3 + 2


async def test_one_rollout_controller_drives_a_model_across_the_processes(churn_models: ChurnModels, tmp_path):
    clock = ManualClock()
    async with instance_pair(tmp_path, clock=clock, instance_id="mg-a", rollouts={"tick_s": 0.1}) as (owner, follower):
        await owner.register_and_deploy("churn", churn_models.v1)
        await owner.register_and_deploy("churn", churn_models.v2)
        await owner.control.PromoteModelVersion(pb.PromoteModelVersionRequest(model="churn", version=2))
        retire = pb.RetireModelVersionRequest(
            model="churn", version=1, successor_version=2, deprecation_period=duration_pb2.Duration(seconds=60)
        )
        scheduled = await follower.control.RetireModelVersion(retire)
        clock.now = scheduled.model_version.retirement.retire_time.ToDatetime(tzinfo=UTC)

        async def retired() -> bool:
            version = await owner.control.GetModelVersion(pb.GetModelVersionRequest(model="churn", version=1))
            return version.model_version.state == pb.MODEL_VERSION_STATE_RETIRED

        await until(retired, WITHIN_S, "version 1 retired by the controller")
        assert owner.gateway.registry is not None
        holder = await owner.gateway.registry.lease_holder("model:churn")
        assert holder in {"mg-a/worker-0", "mg-a/worker-1"}, "each process holds leases as itself"
        entries, _ = await owner.gateway.registry.list_audit(target_prefix="models/churn/versions/1", page_size=100)
        by_controller = [e.action for e in entries if e.actor == CONTROLLER_ACTOR]
        assert sorted(by_controller) == ["model_version.draining", "model_version.retired"], by_controller


async def test_a_follower_waits_for_a_live_owner_and_gives_up_without_one(tmp_path):
    instance_dir = tmp_path / "instance"
    shared = SharedTriton(instance_dir)
    starting = (SharedWorker("embedded-0", "", "the owner process is starting it", False, 0, ()),)
    shared.publish(TritonState(os.getpid(), False, starting))  # an owner that lives and is still starting
    follower = asyncio.create_task(_start_follower(tmp_path, instance_dir))
    for _ in range(3):  # longer than its startup timeout: a live owner is waited for
        await asyncio.sleep(0.5)
        assert not follower.done()
    gone = await asyncio.create_subprocess_exec("true")  # a process that existed and is reaped
    await gone.wait()
    shared.publish(TritonState(gone.pid, False, starting))
    with pytest.raises(InfermeshError, match="no worker process 0 of this instance started its Triton"):
        await asyncio.wait_for(follower, WITHIN_S)


async def _start_follower(tmp_path: Path, instance_dir: Path) -> None:
    async with start_gateway(
        tmp_path,
        worker_index=1,
        worker_count=2,
        instance_dir=instance_dir,
        worker_settings={"startup_timeout_s": 0.5},
    ):
        pass
