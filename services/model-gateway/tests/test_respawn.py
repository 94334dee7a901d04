"""A dead embedded Triton worker is restarted, its versions reloaded and warm before it serves
again, and health and replica states say it is down meanwhile.

The gateway's restart backoff goes through ``ModelGateway.sleep``; these tests replace it with a
gate they open themselves, so "while it is down" lasts exactly as long as the test needs, on any
machine, and the backoffs asked for are recorded.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2

from infermesh.modelgateway.v1 import model_gateway_pb2 as pb
from infermesh_model_gateway.__main__ import CONTROL_SERVICE, INFERENCE_SERVICE
from infermesh_model_gateway.testing import ChurnModels, GatewayHarness, infer_request, start_gateway

BACK_WITHIN_S = 10.0
"""The issue's bound: the versions answer again this soon after the restart may begin."""


class RestartGate:
    """Stands in for the gateway's backoff sleep: records each backoff and holds it until opened."""

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


async def _until(check: Callable[[], Awaitable[bool]], within_s: float, what: str) -> float:
    """Poll ``check`` until it holds; seconds it took (fails after ``within_s``)."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within_s:
            pytest.fail(f"{what} not within {within_s}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def _health(gw: GatewayHarness, service: str = "") -> str:
    reply = await health_pb2_grpc.HealthStub(gw.channel).Check(health_pb2.HealthCheckRequest(service=service))
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def _replicas(gw: GatewayHarness, version: int) -> list[pb.ReplicaStatus]:
    reply = await gw.control.GetModelVersion(pb.GetModelVersionRequest(model="churn", version=version))
    return list(reply.model_version.replicas)


async def _answers(gw: GatewayHarness, x, version: str) -> bool:
    try:
        response = await gw.inference.ModelInfer(infer_request("churn", x, version), timeout=2.0)
    except grpc.aio.AioRpcError:
        return False
    return response.model_version == version


def _restarts(gw: GatewayHarness, worker: str = "embedded-0") -> float | None:
    return gw.runtime.metrics.registry.get_sample_value(
        "infermesh_model_gateway_worker_restarts_total", {"worker": worker}
    )


class Load:
    """Bounded load on the gateway's default route from a few tasks, until stopped."""

    def __init__(self, gw: GatewayHarness, x, concurrency: int = 4) -> None:
        self.answered: list[str] = []
        self.failures: list[tuple[str, float]] = []
        self._gw = gw
        self._x = x
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run()) for _ in range(concurrency)]

    async def _run(self) -> None:
        for _ in range(100_000):  # bounded: ends when stopped, or after this many calls
            if self._stop.is_set():
                return
            started = time.monotonic()
            try:
                response = await self._gw.inference.ModelInfer(infer_request("churn", self._x))
            except grpc.aio.AioRpcError as exc:
                self.failures.append((exc.code().name, time.monotonic() - started))
                await asyncio.sleep(0.01)
                continue
            self.answered.append(response.model_version)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def failed_since(self, count: int) -> bool:
        return len(self.failures) > count

    async def answered_since(self, count: int) -> bool:
        return len(self.answered) > count


async def _both_answer(gw: GatewayHarness, x) -> bool:
    return await _answers(gw, x, "1") and await _answers(gw, x, "2")


async def _assert_down(gw: GatewayHarness, load: Load, x) -> None:
    """What a gateway whose only worker is down answers."""
    assert await _health(gw) == "NOT_SERVING"
    assert await _health(gw, INFERENCE_SERVICE) == "NOT_SERVING"
    assert await _health(gw, CONTROL_SERVICE) == "SERVING"
    assert not (await gw.inference.ServerReady(service_pb2.ServerReadyRequest())).ready
    for version in (1, 2):
        [replica] = await _replicas(gw, version)
        assert replica.state == pb.REPLICA_STATE_FAILED
        assert "the worker is down (tritonserver exited with -9)" in replica.detail
        assert replica.worker_restarts == 0
    failed_before = len(load.failures)
    with pytest.raises(grpc.aio.AioRpcError) as down:
        await gw.inference.ModelInfer(infer_request("churn", x, "2"))
    assert down.value.code() is grpc.StatusCode.UNAVAILABLE
    await _until(lambda: load.failed_since(failed_before), BACK_WITHIN_S, "a failed call under load")


async def test_a_killed_worker_comes_back_with_its_versions_under_load(churn_models: ChurnModels, tmp_path):
    async with start_gateway(tmp_path, workers=1) as gw:
        await gw.register_and_deploy("churn", churn_models.v1)
        await gw.register_and_deploy("churn", churn_models.v2)
        await gw.control.PromoteModelVersion(pb.PromoteModelVersionRequest(model="churn", version=1))
        gate = RestartGate()
        gw.gateway.sleep = gate.sleep
        victim = gw.gateway.embedded[0]
        x = churn_models.x[:4]
        load = Load(gw, x)
        try:
            assert await _health(gw) == "SERVING"
            assert _restarts(gw) == 0  # exported from 0, so an alert's increase() counts the first restart
            os.kill(victim.pid, signal.SIGKILL)
            await asyncio.wait_for(gate.waiting.wait(), BACK_WITHIN_S)
            await _assert_down(gw, load, x)

            gate.open()
            await _until(lambda: _both_answer(gw, x), BACK_WITHIN_S, "versions 1 and 2 answering after the restart")
            assert await _health(gw) == "SERVING"
            assert await _health(gw, INFERENCE_SERVICE) == "SERVING"
            for version in (1, 2):
                [replica] = await _replicas(gw, version)
                assert replica.state == pb.REPLICA_STATE_READY, replica.detail
                assert replica.worker_restarts == 1
                assert replica.address == victim.grpc_address
            assert _restarts(gw) == 1
            assert gate.backoffs == [gw.gateway.settings.workers.restart_backoff_s]
            answered = len(load.answered)
            await _until(lambda: load.answered_since(answered), BACK_WITHIN_S, "answers under load again")
        finally:
            await load.stop()
        assert {code for code, _ in load.failures} == {"UNAVAILABLE"}
        timeout_s = gw.gateway.settings.inference.default_timeout_s
        assert max(seconds for _, seconds in load.failures) < timeout_s / 2, "refused at once, not at the deadline"
        assert set(load.answered) == {"1"}


async def test_a_worker_that_keeps_dying_is_restarted_with_a_capped_backoff(churn_models: ChurnModels, tmp_path):
    async with start_gateway(
        tmp_path, workers=1, worker_settings={"restart_backoff_s": 0.5, "restart_max_backoff_s": 0.75}
    ) as gw:
        await gw.register_and_deploy("churn", churn_models.v1)
        gate = RestartGate()
        gw.gateway.sleep = gate.sleep
        victim = gw.gateway.embedded[0]
        x = churn_models.x[:1]
        for deaths in range(1, 4):
            os.kill(victim.pid, signal.SIGKILL)
            await asyncio.wait_for(gate.waiting.wait(), BACK_WITHIN_S)
            gate.open()
            await _until(lambda: _answers(gw, x, "1"), BACK_WITHIN_S, f"version 1 after death {deaths}")
            assert _restarts(gw) == deaths
        assert gate.backoffs == [0.5, 0.75, 0.75]
        [replica] = await _replicas(gw, 1)
        assert replica.worker_restarts == 3


async def test_the_surviving_worker_serves_while_the_other_restarts(churn_models: ChurnModels, tmp_path):
    async with start_gateway(tmp_path, workers=2) as gw:
        await gw.register_and_deploy("churn", churn_models.v1)
        await gw.control.PromoteModelVersion(pb.PromoteModelVersionRequest(model="churn", version=1))
        gate = RestartGate()
        gw.gateway.sleep = gate.sleep
        victim = gw.gateway.embedded[0]
        os.kill(victim.pid, signal.SIGKILL)
        await asyncio.wait_for(gate.waiting.wait(), BACK_WITHIN_S)
        assert await _health(gw) == "SERVING", "one worker can still serve"
        states = {r.worker_id: r.state for r in await _replicas(gw, 1)}
        assert states == {"embedded-0": pb.REPLICA_STATE_FAILED, "embedded-1": pb.REPLICA_STATE_READY}
        for _ in range(20):
            response = await gw.inference.ModelInfer(infer_request("churn", churn_models.x[:2]))
            assert response.model_version == "1"
        gate.open()

        async def both_ready() -> bool:
            return {r.state for r in await _replicas(gw, 1)} == {pb.REPLICA_STATE_READY}

        await _until(both_ready, BACK_WITHIN_S, "both replicas ready")


async def test_a_restarted_worker_takes_no_request_until_its_versions_are_loaded(churn_models: ChurnModels, tmp_path):
    async with start_gateway(tmp_path, workers=1) as gw:
        await gw.register_and_deploy("churn", churn_models.v1)
        gate = RestartGate()
        gw.gateway.sleep = gate.sleep
        deployer = gw.gateway.deployer
        assert deployer is not None
        reconcile, reloading, reload = deployer.reconcile, asyncio.Event(), asyncio.Event()

        async def held_reconcile(worker_ids=None, **kwargs) -> None:
            reloading.set()
            await reload.wait()
            await reconcile(worker_ids, **kwargs)

        deployer.reconcile = held_reconcile  # type: ignore[method-assign]
        os.kill(gw.gateway.embedded[0].pid, signal.SIGKILL)
        await asyncio.wait_for(gate.waiting.wait(), BACK_WITHIN_S)
        gate.open()
        await asyncio.wait_for(reloading.wait(), BACK_WITHIN_S)

        [replica] = await _replicas(gw, 1)
        assert (replica.state, replica.detail) == (pb.REPLICA_STATE_LOADING, "loading on the restarted worker")
        assert replica.worker_restarts == 1
        assert await _health(gw) == "NOT_SERVING", "a new process without its versions cannot serve yet"
        with pytest.raises(grpc.aio.AioRpcError) as early:
            await gw.inference.ModelInfer(infer_request("churn", churn_models.x[:1], "1"))
        assert early.value.code() is grpc.StatusCode.UNAVAILABLE
        await gw.gateway.pool.refresh()
        assert not gw.gateway.pool.worker("embedded-0").healthy, "a probe cannot readmit it early"

        reload.set()
        await _until(lambda: _answers(gw, churn_models.x[:1], "1"), BACK_WITHIN_S, "version 1 after the reload")
        [replica] = await _replicas(gw, 1)
        assert replica.state == pb.REPLICA_STATE_READY


async def test_a_version_deployed_while_a_worker_restarts_is_loaded_on_it_too(churn_models: ChurnModels, tmp_path):
    async with start_gateway(tmp_path, workers=2) as gw:
        await gw.register_and_deploy("churn", churn_models.v1)
        gate = RestartGate()
        gw.gateway.sleep = gate.sleep
        pool = gw.gateway.pool
        readmit, readmitting, go_on = pool.readmit_restarted, asyncio.Event(), asyncio.Event()

        async def held_readmit(worker_id: str) -> None:
            readmitting.set()
            await go_on.wait()
            await readmit(worker_id)

        pool.readmit_restarted = held_readmit  # type: ignore[method-assign]
        os.kill(gw.gateway.embedded[0].pid, signal.SIGKILL)
        await asyncio.wait_for(gate.waiting.wait(), BACK_WITHIN_S)
        gate.open()
        await asyncio.wait_for(readmitting.wait(), BACK_WITHIN_S)  # reloaded what was SERVING: version 1

        assert await gw.register_and_deploy("churn", churn_models.v2) == 2  # on embedded-1 only, for now
        states = {r.worker_id: r.state for r in await _replicas(gw, 2)}
        assert states == {"embedded-0": pb.REPLICA_STATE_LOADING, "embedded-1": pb.REPLICA_STATE_READY}
        go_on.set()

        async def both_ready() -> bool:
            return {r.state for r in await _replicas(gw, 2)} == {pb.REPLICA_STATE_READY}

        await _until(both_ready, BACK_WITHIN_S, "version 2 on both workers")
        assert "churn__2" in pool.worker("embedded-0").ready_models


def test_a_worker_process_dies_with_the_gateway_however_it_dies() -> None:
    """What ``dying_with_parent`` starts is killed when its parent is SIGKILLed (no cleanup runs), and
    it is started without a ``preexec_fn`` (which would make Python fork with gRPC threads running)."""
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    child = psutil.Process(int(parent.stdout.readline()))
    assert child.cmdline()[:2] == ["sleep", "600"]  # the shim exec'd it: same process, its own command line
    parent.kill()
    parent.wait(timeout=10)
    child.wait(timeout=10)  # raises psutil.TimeoutExpired if it outlived its parent


_PARENT = """
import subprocess
import sys
import time

import psutil

from infermesh_model_gateway.triton import dying_with_parent

child = subprocess.Popen(dying_with_parent(["sleep", "600"]), start_new_session=True)
deadline = time.monotonic() + 10
while psutil.Process(child.pid).cmdline()[:1] != ["sleep"] and time.monotonic() < deadline:
    time.sleep(0.01)  # until the shim has set the signal and exec'd
print(child.pid, flush=True)
sys.stdin.read()
"""
