"""The whole mesh against direct Triton: Predict through biz-center → data gateway → model gateway →
Triton, beside ModelInfer straight to the Triton worker on the same model, same run.

Each service runs as its own process, as in production: the data gateway serves the churn example
(services/data-gateway/examples/churn, data made fresh in a copy, materialized into an SQLite
online store at start); the model gateway runs one embedded ``tritonserver``; the business center
serves the example scene (services/biz-center/examples/churn.yaml) with its A/B experiment paused,
so every request is served by the production version, the same model the direct run calls. The
model (a logistic regression over the feature service's 10 values, ONNX) is trained on the vectors
the data gateway serves and deployed through the model gateway's control plane with dynamic
batching. Events are off in every process (no monitor runs). The mesh itself is ``meshkit.py``'s.

One grpc.aio client in this process drives each target in turn at concurrency 1 and 16, batch 1:
direct Triton with the customers' vectors; the floor of a three-hop Python mesh, the same ModelInfer
calls through three bare grpc.aio pass-through proxies chained in front of the worker
(``bare_proxy.py``: no parsing, no work); then the mesh with the customers' ids. Prints both with
the ratio, latency quantiles, the CPU each process spent per mesh request at concurrency 16 (what
costs the throughput), the peak RSS (VmHWM) of every process, and ends with one JSON line
``{"bench": "mesh_e2e", ...}``. Goal: the mesh keeps at least half of direct Triton's throughput.

Every service runs one process (``grpc.workers: 1``). Then the business center alone is started again
with 1 and then 2 workers (fresh instances, same downstreams) and the mesh driven at concurrency 16 over
8 connections, so the kernel spreads them over the workers: ``biz_center_rps_workers_1``/``_2`` and
their ratio. On a small machine the client, the gateways and Triton share the cores (``workers_cores``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from benchkit import (
    children,
    cpu_s,
    drive,
    peak_rss_mib,
    spread_channels,
    start_bare_proxies,
    stop_processes,
    workers_figures,
)
from meshkit import API_KEY, CUSTOMERS, Service, biz_settings, mesh_pids, start_mesh
from tritonclient.grpc import service_pb2, service_pb2_grpc

from infermesh.bizcenter.v1 import biz_center_pb2 as bz
from infermesh.bizcenter.v1 import biz_center_pb2_grpc as bz_grpc

CONCURRENCIES = (1, 16)
DURATION_S = 4.0
WARMUP_S = 1.0
LOAD = {"warmup_s": WARMUP_S, "duration_s": DURATION_S, "tolerate": (grpc.RpcError,)}


def _triton_address(log: Path) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("{") and (entry := json.loads(line)).get("event") == "triton_started":
                return str(entry["address"])
        time.sleep(0.2)
    raise SystemExit("no triton_started line in the model gateway's log")


async def _measure(
    triton: str, floor: str, biz: str, vectors: dict[int, np.ndarray], pids: dict[str, int]
) -> tuple[dict[str, dict[int, dict[str, float]]], dict[str, float], int]:
    figures: dict[str, dict[int, dict[str, float]]] = {"direct": {}, "floor": {}, "mesh": {}}
    requests = {c: bz.PredictRequest(scene="churn-score", unit_id=str(c)) for c in CUSTOMERS}
    direct_requests = {}
    for c in CUSTOMERS:
        request = service_pb2.ModelInferRequest(model_name="churn__1")
        request.inputs.add(name="X", datatype="FP32", shape=[1, len(vectors[c])])
        request.raw_input_contents.append(vectors[c].tobytes())
        direct_requests[c] = request
    metadata = (("x-api-key", API_KEY),)
    cpu_per_request: dict[str, float] = {}
    degraded = 0
    async with (
        grpc.aio.insecure_channel(triton) as direct_channel,
        grpc.aio.insecure_channel(floor) as floor_channel,
        grpc.aio.insecure_channel(biz) as mesh_channel,
    ):
        infer = service_pb2_grpc.GRPCInferenceServiceStub(direct_channel).ModelInfer
        floor_infer = service_pb2_grpc.GRPCInferenceServiceStub(floor_channel).ModelInfer
        predict = bz_grpc.BizCenterServiceStub(mesh_channel).Predict

        async def direct_call(n: int) -> object:
            return await infer(direct_requests[CUSTOMERS[n % len(CUSTOMERS)]], timeout=5)

        async def floor_call(n: int) -> object:
            return await floor_infer(direct_requests[CUSTOMERS[n % len(CUSTOMERS)]], timeout=5)

        async def mesh_call(n: int) -> object:
            nonlocal degraded
            reply = await predict(requests[CUSTOMERS[n % len(CUSTOMERS)]], metadata=metadata, timeout=5)
            degraded += reply.degradation.degraded
            return reply

        for concurrency in CONCURRENCIES:
            figures["direct"][concurrency] = await drive(
                direct_call, concurrency, warmup_s=WARMUP_S, duration_s=DURATION_S, tolerate=(grpc.RpcError,)
            )
        for concurrency in CONCURRENCIES:
            figures["floor"][concurrency] = await drive(floor_call, concurrency, **LOAD)
        for concurrency in CONCURRENCIES:
            before = {name: cpu_s(pid) for name, pid in pids.items()}
            figures["mesh"][concurrency] = result = await drive(mesh_call, concurrency, **LOAD)
            if concurrency == max(CONCURRENCIES):
                served = result["rps"] * (DURATION_S + WARMUP_S)
                cpu_per_request = {n: (cpu_s(p) - before[n]) / served * 1000 for n, p in pids.items()}
    return figures, cpu_per_request, degraded


async def _predict_rps(address: str) -> float:
    """Predict throughput at the highest concurrency, spread over several connections."""
    channels = spread_channels(address)
    predicts = [bz_grpc.BizCenterServiceStub(channel).Predict for channel in channels]
    requests = [bz.PredictRequest(scene="churn-score", unit_id=str(c)) for c in CUSTOMERS]
    metadata = (("x-api-key", API_KEY),)
    try:

        async def call(n: int) -> object:
            return await predicts[n % len(predicts)](requests[n % len(requests)], metadata=metadata, timeout=5)

        return (await drive(call, max(CONCURRENCIES), **LOAD))["rps"]
    finally:
        for channel in channels:
            await channel.close()


def biz_rps_by_workers(workdir: Path, data: Service, model: Service) -> dict[int, float]:
    """The mesh's throughput with the business center run with 1 and then 2 worker processes."""
    rps: dict[int, float] = {}
    for workers in (1, 2):
        settings = biz_settings(workdir, data, model, f"biz-workers-{workers}.db")
        settings["grpc"] = {"host": "127.0.0.1", "port": 0, "grace_period_s": 2, "workers": workers}
        biz = Service(f"biz-center-workers-{workers}", "infermesh_biz_center", workdir, settings)
        try:
            biz.wait_serving()
            rps[workers] = asyncio.run(_predict_rps(biz.address))
        finally:
            biz.stop()
    return rps


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="bench-mesh-"))
    services: list[Service] = []
    try:
        data, model, biz, vectors = start_mesh(workdir, services)
        triton = _triton_address(model.log)
        pids = mesh_pids(services, model)
        for stub in children(pids["tritonserver"]):
            pids[f"triton stub {stub}"] = stub
        chain = start_bare_proxies(triton, hops=3)
        try:
            figures, cpu_ms, degraded = asyncio.run(_measure(triton, chain[-1][1], biz.address, vectors, pids))
            rss = {name: peak_rss_mib(pid) for name, pid in pids.items()}
            rss["bare proxy"] = max(peak_rss_mib(process.pid) for process, _ in chain)
            rss["client"] = peak_rss_mib(os.getpid())
        finally:
            stop_processes([process for process, _ in chain])
        biz.stop()
        by_workers = biz_rps_by_workers(workdir, data, model)
    finally:
        for service in reversed(services):
            service.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"{'target':8} {'conc':>4} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for target, by_conc in figures.items():
        for conc, f in by_conc.items():
            print(f"{target:8} {conc:>4} {f['rps']:>8.0f} {f['p50_ms']:>8.2f} {f['p99_ms']:>8.2f} {f['errors']:>6.0f}")
    c_hi = max(CONCURRENCIES)
    ratio = figures["mesh"][c_hi]["rps"] / figures["direct"][c_hi]["rps"]
    floor_ratio = figures["floor"][c_hi]["rps"] / figures["direct"][c_hi]["rps"]
    vs_floor = figures["mesh"][c_hi]["rps"] / figures["floor"][c_hi]["rps"]
    print(
        f"at c{c_hi}: mesh/direct {ratio:.2f}; three bare Python hops/direct {floor_ratio:.2f}; "
        f"mesh/three bare hops {vs_floor:.2f}; degraded mesh answers: {degraded}"
    )
    print("CPU ms per mesh request at c16: " + ", ".join(f"{k} {v:.2f}" for k, v in cpu_ms.items()))
    print("peak RSS MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in rss.items()))
    scaling = workers_figures("biz_center", by_workers)
    print(
        f"mesh at c{c_hi} over 8 connections: biz-center 1 worker {by_workers[1]:.0f} rps, 2 workers "
        f"{by_workers[2]:.0f} rps (x{scaling['biz_center_workers_ratio']}) on {scaling['workers_cores']} cores "
        "shared with the client, the gateways and Triton"
    )
    stubs = [v for k, v in cpu_ms.items() if k.startswith("triton stub")]
    result = {
        "bench": "mesh_e2e",
        "direct_rps": round(figures["direct"][c_hi]["rps"]),
        "mesh_rps": round(figures["mesh"][c_hi]["rps"]),
        "ratio": round(ratio, 3),
        "mesh_p99_ms_c16": round(figures["mesh"][c_hi]["p99_ms"], 2),
        "floor_rps": round(figures["floor"][c_hi]["rps"]),
        "floor_ratio": round(floor_ratio, 3),
        "mesh_vs_floor": round(vs_floor, 3),
        "floor_p99_ms_c16": round(figures["floor"][c_hi]["p99_ms"], 2),
        "direct_p99_ms_c16": round(figures["direct"][c_hi]["p99_ms"], 2),
        "direct_rps_c1": round(figures["direct"][1]["rps"]),
        "mesh_rps_c1": round(figures["mesh"][1]["rps"]),
        "mesh_p50_ms_c1": round(figures["mesh"][1]["p50_ms"], 2),
        "direct_p50_ms_c1": round(figures["direct"][1]["p50_ms"], 2),
        "mesh_degraded": degraded,
        "cpu_ms_per_request_biz_center": round(cpu_ms["biz-center"], 3),
        "cpu_ms_per_request_data_gateway": round(cpu_ms["data-gateway"], 3),
        "cpu_ms_per_request_model_gateway": round(cpu_ms["model-gateway"], 3),
        "cpu_ms_per_request_triton": round(cpu_ms["tritonserver"] + sum(stubs), 3),
        "biz_center_peak_rss_mib": round(rss["biz-center"]),
        "data_gateway_peak_rss_mib": round(rss["data-gateway"]),
        "model_gateway_peak_rss_mib": round(rss["model-gateway"]),
        "tritonserver_peak_rss_mib": round(rss["tritonserver"]),
        **scaling,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
