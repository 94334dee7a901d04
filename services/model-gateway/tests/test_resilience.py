"""What must not fail under load: a worker killed, a version swapped, a shadow that is slow or
failing, and a gateway restarted (registrations and deployments survive it)."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from infermesh.modelgateway.v1 import model_gateway_pb2 as pb
from infermesh_chassis.testing import free_port as any_free_port
from infermesh_model_gateway import triton
from infermesh_model_gateway.testing import ChurnModels, infer_request, run_load, start_gateway, until
from infermesh_model_gateway.triton import TritonServer


def _deadline(seconds: float):
    end = time.monotonic() + seconds
    return lambda: time.monotonic() >= end


async def test_a_worker_killed_under_load_costs_no_request(churn_models: ChurnModels, tmp_path):
    async with start_gateway(tmp_path, workers=2) as gw:
        await gw.register_and_deploy("churn", churn_models.v1)
        await gw.control.PromoteModelVersion(pb.PromoteModelVersionRequest(model="churn", version=1))
        x = churn_models.x[:4]
        victim = gw.gateway.embedded[0]
        restart = asyncio.Event()

        async def held_restart(_: float) -> None:  # the worker stays down until the load is over
            await restart.wait()

        gw.gateway.sleep = held_restart

        async def killer() -> None:
            await asyncio.sleep(1.0)
            victim.kill()

        load, _ = await asyncio.gather(
            run_load(lambda _: gw.inference.ModelInfer(infer_request("churn", x)), concurrency=8, until=_deadline(3.0)),
            killer(),
        )
        assert load.errors == []
        assert load.ok > 100
        worker = gw.gateway.pool.worker(victim.worker_id)
        assert not worker.healthy
        assert worker.down
        restart.set()


async def test_a_version_swap_under_load_loses_no_request(churn_models: ChurnModels, tmp_path):
    async with start_gateway(tmp_path, workers=1) as gw:
        await gw.register_and_deploy("churn", churn_models.v1)
        await gw.control.PromoteModelVersion(pb.PromoteModelVersionRequest(model="churn", version=1))
        x = churn_models.x[:4]
        done = asyncio.Event()

        async def swap() -> None:
            await asyncio.sleep(0.5)
            await gw.register_and_deploy("churn", churn_models.v2)
            await gw.control.PromoteModelVersion(pb.PromoteModelVersionRequest(model="churn", version=2))
            await gw.control.UndeployModelVersion(pb.UndeployModelVersionRequest(model="churn", version=1))
            await asyncio.sleep(0.5)
            done.set()

        load, _ = await asyncio.gather(
            run_load(lambda _: gw.inference.ModelInfer(infer_request("churn", x)), concurrency=8, until=done.is_set),
            swap(),
        )
        assert load.errors == []
        assert load.versions.get("1", 0) > 0 and load.versions.get("2", 0) > 0
        version = await gw.control.GetModelVersion(pb.GetModelVersionRequest(model="churn", version=1))
        assert version.model_version.state == pb.MODEL_VERSION_STATE_REGISTERED
        assert all("churn__1" not in w.ready_models for w in gw.gateway.pool.workers)


@pytest.mark.parametrize(
    ("fault", "shadow_error"),
    [({"infermesh.fault.delay_ms": "1500"}, ""), ({"infermesh.fault.error_rate": "1.0"}, "injected fault")],
    ids=["slow-shadow", "failing-shadow"],
)
async def test_a_slow_or_failing_shadow_never_slows_or_fails_the_primary(
    churn_models: ChurnModels, tmp_path, fault, shadow_error
):
    async with start_gateway(tmp_path, workers=1, inference={"shadow_timeout_s": 3.0}) as gw:
        await gw.register_and_deploy("churn", churn_models.v1)
        await gw.register_and_deploy("churn", churn_models.v2, backend_parameters=fault)
        await gw.control.PromoteModelVersion(pb.PromoteModelVersionRequest(model="churn", version=1))
        x = churn_models.x[:2]
        baseline = await run_load(
            lambda _: gw.inference.ModelInfer(infer_request("churn", x)), concurrency=4, until=_deadline(1.0)
        )
        await gw.control.SetTrafficPolicy(
            pb.SetTrafficPolicyRequest(
                model="churn", policy=pb.TrafficPolicy(mirror=pb.Mirror(shadow_version=2, fraction=1.0))
            )
        )
        mirrored = await run_load(
            lambda _: gw.inference.ModelInfer(infer_request("churn", x)), concurrency=4, until=_deadline(2.0)
        )
        assert mirrored.errors == []
        assert set(mirrored.versions) == {"1"}
        p99_base = float(np.percentile(baseline.latencies_ms, 99))
        p99_mirrored = float(np.percentile(mirrored.latencies_ms, 99))
        assert p99_mirrored < max(3 * p99_base, p99_base + 50), (p99_base, p99_mirrored)
        await until(lambda: gw.events("shadow"), what="a shadow event")
        shadows = gw.events("shadow")
        if shadow_error:
            assert all(shadow_error in s.shadow_error.message for s in shadows)
        skipped = gw.runtime.metrics.registry.get_sample_value(
            "infermesh_model_gateway_shadow_skipped_total", {"model": "churn"}
        )
        if fault.get("infermesh.fault.delay_ms"):
            assert skipped and skipped > 0, "a slow shadow is shed, not queued"


async def test_registrations_and_deployments_survive_a_restart(churn_models: ChurnModels, tmp_path):
    async with start_gateway(tmp_path, workers=1) as gw:
        await gw.register_and_deploy("churn", churn_models.v1)
        await gw.register_and_deploy("churn", churn_models.v2)
        await gw.control.PromoteModelVersion(pb.PromoteModelVersionRequest(model="churn", version=2))
    async with start_gateway(tmp_path, workers=1) as gw:
        response = await gw.inference.ModelInfer(infer_request("churn", churn_models.x[:1]))
        assert response.model_version == "2"
        pinned = await gw.inference.ModelInfer(infer_request("churn", churn_models.x[:1], "1"))
        assert pinned.model_version == "1"
        model = (await gw.control.GetModel(pb.GetModelRequest(model="churn"))).model
        assert list(model.serving_versions) == [1, 2]


async def test_external_workers_found_through_discovery_serve_like_embedded_ones(churn_models: ChurnModels, tmp_path):
    external = TritonServer(tmp_path / "repository", tmp_path / "external", "external-triton")
    (tmp_path / "repository").mkdir()
    await external.start()
    try:
        async with start_gateway(
            tmp_path,
            workers=0,
            discovery={"static": {"triton": [external.grpc_address]}},
            worker_settings={"discovery_service": "triton", "discovery_interval_s": 0.5},
        ) as gw:
            assert [w.id for w in gw.gateway.pool.workers] == [f"external-{external.grpc_address}"]
            await gw.register_and_deploy("churn", churn_models.v1)
            await gw.control.PromoteModelVersion(pb.PromoteModelVersionRequest(model="churn", version=1))
            response = await gw.inference.ModelInfer(infer_request("churn", churn_models.x[:2]))
            assert response.model_version == "1"
    finally:
        await external.stop()


async def test_a_version_at_its_in_flight_limit_refuses_more_at_once(churn_models: ChurnModels, tmp_path):
    async with start_gateway(tmp_path, workers=1, inference={"max_in_flight_per_version": 2}) as gw:
        await gw.register_and_deploy("churn", churn_models.v1, backend_parameters={"infermesh.fault.delay_ms": "1500"})
        await gw.control.PromoteModelVersion(pb.PromoteModelVersionRequest(model="churn", version=1))
        x = churn_models.x[:1]
        held = [asyncio.ensure_future(gw.inference.ModelInfer(infer_request("churn", x))) for _ in range(2)]
        await until(lambda: gw.gateway.pool.in_flight("churn__1") == 2, what="two inferences in flight")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gw.inference.ModelInfer(infer_request("churn", x))
        assert not any(h.done() for h in held), "refused at once, not queued behind the held inferences"
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "version 1 already has 2 inferences in flight" in refused.value.details()
        assert "max_in_flight_per_version" in refused.value.details()
        assert dict(refused.value.trailing_metadata() or ())["retry-after-ms"] == "50"
        answers = await asyncio.gather(*held)
        assert [a.model_version for a in answers] == ["1", "1"]
        after = await gw.inference.ModelInfer(infer_request("churn", x))
        assert after.model_version == "1"
        refusals = gw.runtime.metrics.registry.get_sample_value(
            "infermesh_model_gateway_inferences_refused_total", {"model": "churn"}
        )
        assert refusals == 1


async def test_a_port_taken_before_triton_binds_it_starts_it_on_fresh_ports(tmp_path, monkeypatch):
    """tritonserver cannot bind port 0, so its ports are picked just before it starts: when another
    process binds one first, it starts again on fresh ports instead of failing the gateway."""
    taker = socket.socket()
    taker.bind(("127.0.0.1", 0))
    taker.listen()
    taken = taker.getsockname()[1]
    picks = iter([taken])  # the first start's HTTP port is the taken one
    monkeypatch.setattr(triton, "_free_port", lambda: next(picks, None) or any_free_port())
    (tmp_path / "repository").mkdir()
    server = TritonServer(tmp_path / "repository", tmp_path / "worker", "port-race")
    try:
        await server.start()
        assert server.grpc_port not in (0, taken)
        assert "already in use" in server.log_path.read_text()
    finally:
        await server.stop()
        taker.close()


async def test_what_a_dead_gateways_triton_left_running_is_killed_at_the_next_start(tmp_path):
    """A killed gateway takes its tritonserver with it, but not the python-backend stubs that server
    forked: the next start of the same worker kills what is left of the old server's process group."""
    worker_dir = tmp_path / "worker"
    worker_dir.mkdir()

    async def hold(where: Path) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import time; time.sleep(120)", str(where), start_new_session=True
        )

    leftover, bystander = await hold(worker_dir / "backends"), await hold(tmp_path / "elsewhere")
    (worker_dir / "tritonserver.pgid").write_text(str(leftover.pid))
    (tmp_path / "repository").mkdir()
    server = TritonServer(tmp_path / "repository", worker_dir, "leftovers")
    try:
        await server.start()
        assert await asyncio.wait_for(leftover.wait(), 10) == -signal.SIGKILL
        assert bystander.returncode is None
        assert (worker_dir / "tritonserver.pgid").read_text() == str(server.pid)
    finally:
        await server.stop()
        for process in (leftover, bystander):
            if process.returncode is None:
                process.kill()
            await process.wait()
