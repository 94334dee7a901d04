"""A burst against the business center: how fast the calls it must refuse are refused.

The whole mesh runs as in ``bench_mesh.py`` (data gateway, model gateway with one embedded
``tritonserver``, business center, each its own process with one worker), with the example scene
bounded hard: ``max_concurrency`` 16 and a local rate limit of 200 calls/s with a burst of 50. One
grpc.aio client in this process fires ``BURST`` Predict calls at once over 8 connections, waits for
every answer, pauses (the bucket refills), and does it ``ROUNDS`` times; most calls of each burst must
be refused. Two business centers in turn, same downstreams: the chassis' bound on calls waiting for the
event loop (``grpc.max_pending_calls`` 1024, "before"), then the business center's own (128, "after"):
beyond it gRPC core refuses a call before any Python runs (CANCELLED), the scene's limits refuse the
others (RESOURCE_EXHAUSTED) once the event loop takes them up, one at a time.

Prints the calls by status with their p50/p99 latency (each from its own start, as the caller sees it),
the CPU each process spent per call of the bursts, the peak RSS (VmHWM) of every process, and ends
with one JSON line ``{"bench": "burst", ...}``: "refused" is every call not answered OK. Goal: refusals
are answered well before successes (``refused_to_ok_p50`` far below 1).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml
from bench_mesh import API_KEY, CUSTOMERS, Service, biz_settings, start_mesh
from benchkit import children, cpu_s, peak_rss_mib, process_name, spread_channels

from infermesh.bizcenter.v1 import biz_center_pb2 as bz
from infermesh.bizcenter.v1 import biz_center_pb2_grpc as bz_grpc
from infermesh_biz_center.settings import FrontGrpcSettings
from infermesh_chassis.settings import GrpcServerSettings

BURST = 600
ROUNDS = 5
PAUSE_S = 1.0
TIMEOUT_S = 10.0
MAX_CONCURRENCY = 16
RATE = {"requests_per_second": 200, "burst": 50, "mode": "RATE_LIMIT_MODE_LOCAL"}
FRONT_PENDING = FrontGrpcSettings().max_pending_calls
CHASSIS_PENDING = GrpcServerSettings().max_pending_calls
"""The chassis' default ``grpc.max_pending_calls`` (the business center's before it had its own)."""


@dataclass
class Run:
    """The bursts against one business center."""

    outcomes: dict[str, list[float]]
    """Latency (s) of every call, by status name."""
    cpu_ms: dict[str, float]
    """CPU ms per call of the bursts, by process."""
    biz_rss_mib: float


def _bounded_biz(workdir: Path, data: Service, model: Service, pending: int | None) -> Service:
    """A business center whose scene is bounded by :data:`MAX_CONCURRENCY` and :data:`RATE`, with
    ``grpc.max_pending_calls`` ``pending`` (None: its default)."""
    settings = biz_settings(workdir, data, model, f"biz-burst-{pending}.db")
    settings["grpc"] = {"host": "127.0.0.1", "port": 0, "grace_period_s": 2, "workers": 1}
    if pending is not None:
        settings["grpc"]["max_pending_calls"] = pending
    scenes_file = Path(str(settings["config"]["seed_file"]))  # type: ignore[index]
    scenes = yaml.safe_load(scenes_file.read_text())
    scenes["scenes"][0]["max_concurrency"] = MAX_CONCURRENCY
    scenes["scenes"][0]["rate_limit"] = RATE
    scenes_file.write_text(yaml.safe_dump(scenes))
    biz = Service(f"biz-center-{pending or 'default'}", "infermesh_biz_center", workdir, settings)
    biz.wait_serving()
    return biz


async def _bursts(address: str) -> dict[str, list[float]]:
    """Latency (s) of every call of every burst, by status name."""
    channels = spread_channels(address)
    predicts = [bz_grpc.BizCenterServiceStub(channel).Predict for channel in channels]
    metadata = (("x-api-key", API_KEY),)
    outcomes: dict[str, list[float]] = defaultdict(list)
    try:
        for channel in channels:
            await channel.channel_ready()

        async def call(n: int) -> None:
            request = bz.PredictRequest(scene="churn-score", unit_id=str(CUSTOMERS[n % len(CUSTOMERS)]))
            began = time.perf_counter()
            try:
                await predicts[n % len(predicts)](request, metadata=metadata, timeout=TIMEOUT_S)
                status = "OK"
            except grpc.aio.AioRpcError as exc:
                status = exc.code().name
            outcomes[status].append(time.perf_counter() - began)

        for _ in range(ROUNDS):
            await asyncio.gather(*(call(n) for n in range(BURST)))
            await asyncio.sleep(PAUSE_S)
    finally:
        for channel in channels:
            await channel.close()
    return outcomes


def _quantile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000 if ordered else float("nan")


def _figures(outcomes: dict[str, list[float]]) -> dict[str, float | int | None]:
    refused = [latency for status, latencies in outcomes.items() if status != "OK" for latency in latencies]
    ok = outcomes.get("OK", [])
    refused_p50, ok_p50 = _quantile_ms(refused, 0.5), _quantile_ms(ok, 0.5)
    return {
        "refused_p50_ms": round(refused_p50, 1),
        "refused_p99_ms": round(_quantile_ms(refused, 0.99), 1),
        "ok_p50_ms": round(ok_p50, 1),
        "ok_p99_ms": round(_quantile_ms(ok, 0.99), 1),
        "refused_to_ok_p50": round(refused_p50 / ok_p50, 3) if ok else None,
        **{f"calls_{status.lower()}": len(latencies) for status, latencies in sorted(outcomes.items())},
    }


def _run(workdir: Path, data: Service, model: Service, pending: int | None, pids: dict[str, int]) -> Run:
    """One business center with ``grpc.max_pending_calls`` ``pending``: the bursts' outcomes, CPU ms
    per call by process and the business center's peak RSS."""
    biz = _bounded_biz(workdir, data, model, pending)
    try:
        measured = pids | {"biz-center": biz.process.pid}
        before = {name: cpu_s(pid) for name, pid in measured.items()}
        outcomes = asyncio.run(_bursts(biz.address))
        calls = BURST * ROUNDS
        cpu_ms = {name: (cpu_s(pid) - before[name]) / calls * 1000 for name, pid in measured.items()}
        return Run(outcomes, cpu_ms, peak_rss_mib(biz.process.pid))
    finally:
        biz.stop()


def _print(title: str, run: Run) -> None:
    print(title)
    print(f"{'status':20} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for status, latencies in sorted(run.outcomes.items()):
        p50, p99 = _quantile_ms(latencies, 0.5), _quantile_ms(latencies, 0.99)
        print(f"{status:20} {len(latencies):>6} {p50:>8.1f} {p99:>8.1f}")
    print("CPU ms per burst call: " + ", ".join(f"{k} {v:.3f}" for k, v in run.cpu_ms.items()))


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="bench-burst-"))
    services: list[Service] = []
    try:
        data, model, biz, _ = start_mesh(workdir, services)
        biz.stop()
        services.remove(biz)
        triton_pid = next(p for p in children(model.process.pid) if process_name(p) == "tritonserver")
        pids = {s.name: s.process.pid for s in services} | {"tritonserver": triton_pid}
        before = _run(workdir, data, model, CHASSIS_PENDING, pids)
        after = _run(workdir, data, model, None, pids)
        rss = {name: peak_rss_mib(pid) for name, pid in pids.items()}
        rss["client"] = peak_rss_mib(os.getpid())
    finally:
        for service in reversed(services):
            service.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"{ROUNDS} bursts of {BURST} Predict calls at once; scene max_concurrency {MAX_CONCURRENCY}, rate {RATE}")
    _print(f"before: grpc.max_pending_calls {CHASSIS_PENDING} (the chassis' default)", before)
    _print(f"after: the business center's default grpc.max_pending_calls ({FRONT_PENDING})", after)
    print(
        "peak RSS MiB: "
        + ", ".join(f"{k} {v:.0f}" for k, v in rss.items())
        + f", biz-center {before.biz_rss_mib:.0f} before / {after.biz_rss_mib:.0f} after"
    )
    result = {
        "bench": "burst",
        "burst": BURST,
        "rounds": ROUNDS,
        "max_pending_calls": FRONT_PENDING,
        **_figures(after.outcomes),
        **{f"before_{key}": value for key, value in _figures(before.outcomes).items()},
        "cpu_ms_per_call_biz_center": round(after.cpu_ms["biz-center"], 3),
        "before_cpu_ms_per_call_biz_center": round(before.cpu_ms["biz-center"], 3),
        "cpu_ms_per_call_data_gateway": round(after.cpu_ms["data-gateway"], 3),
        "cpu_ms_per_call_model_gateway": round(after.cpu_ms["model-gateway"], 3),
        "cpu_ms_per_call_triton": round(after.cpu_ms["tritonserver"], 3),
        "biz_center_peak_rss_mib": round(after.biz_rss_mib),
        "data_gateway_peak_rss_mib": round(rss["data-gateway"]),
        "model_gateway_peak_rss_mib": round(rss["model-gateway"]),
        "tritonserver_peak_rss_mib": round(rss["tritonserver"]),
        "client_peak_rss_mib": round(rss["client"]),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
