"""What the model gateway costs: perf_analyzer against direct Triton and through the gateway, same run.

The gateway runs as its own process (``python -m infermesh_model_gateway``) with one embedded
``tritonserver`` worker; the churn logistic regression (ONNX, dynamic batching on, 500 us queue
delay) is registered and deployed through the control plane. Triton's perf_analyzer (2.51, from
the tritonclient wheel) then measures the same model directly on that worker (``churn__1``) and
through the gateway (``churn``, routed by its traffic policy) at concurrency 1, 8 and 32, batch 1.

Beside them, the floor of any Python gRPC hop: the same calls through a bare grpc.aio pass-through
proxy (``bare_proxy.py``: no parsing, routing or validation) in front of the same worker. The
gateway's ratio to direct Triton is the product of what a Python hop costs here (floor / direct)
and what the gateway's own work costs (gateway / floor).

Prints all three side by side with the ratios and the added latency, the CPU the gateway process
and the bare proxy spend per request at concurrency 32 (their CPU time over the requests Triton
counted for that run, from its ModelStatistics), the peak RSS (VmHWM) of the gateway,
of tritonserver and of each python-backend stub, the memory each further loaded version costs,
and ends with one JSON line ``{"bench": "gateway_overhead", ...}``.

Those runs serve the gateway from one process (``grpc.workers: 1``). Then a second instance serves
the same port from two worker processes (``grpc.workers: 2``, one shared Triton); its throughput
through the gateway at concurrency :data:`WORKERS_AT` is reported beside the one-process figure of
the same concurrency (``model_gateway_rps_workers_1`` and ``model_gateway_rps_workers_2``), with
their ratio and the cores this process may use (on 2 cores perf_analyzer, Triton and the gateway
processes share them).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import grpc
from benchkit import children, cpu_s, peak_rss_mib, process_name, rss_mib, start_bare_proxies, stop_processes
from tritonclient.grpc import service_pb2, service_pb2_grpc

from infermesh.modelgateway.v1 import model_gateway_pb2 as pb
from infermesh.modelgateway.v1 import model_gateway_pb2_grpc as pb_grpc
from infermesh_chassis.ready import wait_ready
from infermesh_model_gateway.perf_analyzer import PerfResult, run_perf_analyzer
from infermesh_model_gateway.testing import register_request, train_churn_models

CONCURRENCIES = (1, 8, 32)
CPU_AT = 32
"""The concurrency at which the CPU per request of the gateway and of the bare proxy is measured."""
MEASUREMENT_MS = 4000
EXTRA_VERSIONS = 3
WORKERS_AT = 32
"""The concurrency at which one and two gateway worker processes are compared."""


def _config(workdir: Path, workers: int) -> Path:
    config = workdir / "model-gateway.yaml"
    config.write_text(
        json.dumps(
            {
                "data_dir": str(workdir / "data"),
                "grpc": {"workers": workers},
                "workers": {"embedded": 1},
                "events": {"enabled": False},
                "metrics": {"enabled": False},
                "deploy": {"propagation_s": 0},
            }
        )
    )
    return config


def _start_gateway(workdir: Path) -> tuple[subprocess.Popen[bytes], str, int]:
    config = _config(workdir, 1)
    port_file = workdir / "gateway.log"
    log = port_file.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "infermesh_model_gateway", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    address = ""
    triton_address = ""
    while time.monotonic() < deadline and not address:
        time.sleep(0.2)
        if process.poll() is not None:
            raise SystemExit(f"the gateway exited: {port_file.read_text()[-2000:]}")
        for line in port_file.read_text().splitlines():
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            if entry.get("event") == "triton_started":
                triton_address = entry["address"]
            if entry.get("event") == "server_started":
                address = entry["address"]
    if not address:
        raise SystemExit("the gateway did not start within 120 s")
    port = int(triton_address.rsplit(":", 1)[1])
    return process, address, port


async def _deploy(address: str, models_dir: Path) -> None:
    models = train_churn_models(models_dir)
    async with grpc.aio.insecure_channel(address) as channel:
        control = pb_grpc.ModelControlServiceStub(channel)
        for _ in range(1 + EXTRA_VERSIONS):
            registered = await control.RegisterModelVersion(register_request("churn", models.v1))
            if registered.model_version.version == 1:
                await control.DeployModelVersion(pb.DeployModelVersionRequest(model="churn", version=1))
                await control.PromoteModelVersion(pb.PromoteModelVersionRequest(model="churn", version=1))


async def _deploy_extra(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        control = pb_grpc.ModelControlServiceStub(channel)
        for version in range(2, 2 + EXTRA_VERSIONS):
            await control.DeployModelVersion(pb.DeployModelVersionRequest(model="churn", version=version))


def _served(triton: str, model: str) -> int:
    """Inferences of ``model`` Triton has completed so far (its ModelStatistics)."""
    with grpc.insecure_channel(triton) as channel:
        reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
            service_pb2.ModelStatisticsRequest(name=model), timeout=10
        )
    return sum(s.inference_stats.success.count for s in reply.model_stats)


def _cpu_ms_per_request(pid: int, triton: str, run: Callable[[], PerfResult]) -> tuple[PerfResult, float]:
    """``run()``'s result and the CPU ms process ``pid`` spent per inference Triton served meanwhile."""
    cpu, served = cpu_s(pid), _served(triton, "churn__1")
    result = run()
    return result, (cpu_s(pid) - cpu) / max(1, _served(triton, "churn__1") - served) * 1000


def _triton_rss(gateway_pid: int) -> tuple[int, float, list[float]]:
    triton = next(p for p in children(gateway_pid) if process_name(p) == "tritonserver")
    stubs = [rss_mib(p) for p in children(triton)]
    return triton, rss_mib(triton), stubs


def _measure(
    triton: str, proxy_address: str, proxy_pid: int, address: str, gateway_pid: int, *, workdir: Path
) -> tuple[dict[int, PerfResult], dict[int, PerfResult], dict[int, PerfResult], dict[str, float]]:
    """perf_analyzer direct, through the bare proxy and through the gateway at each concurrency; and
    at :data:`CPU_AT` the CPU ms per request of the proxy (``floor``) and of the gateway."""
    direct: dict[int, PerfResult] = {}
    floor: dict[int, PerfResult] = {}
    through: dict[int, PerfResult] = {}
    cpu_ms: dict[str, float] = {}
    for concurrency in CONCURRENCIES:
        args = {"concurrency": concurrency, "shapes": {"X": [6]}, "measurement_ms": MEASUREMENT_MS}
        direct[concurrency] = run_perf_analyzer(triton, "churn__1", **args, workdir=workdir)
        floor_run = partial(run_perf_analyzer, proxy_address, "churn__1", **args, workdir=workdir)
        gateway_run = partial(run_perf_analyzer, address, "churn", **args, workdir=workdir)
        if concurrency != CPU_AT:
            floor[concurrency], through[concurrency] = floor_run(), gateway_run()
            continue
        floor[concurrency], cpu_ms["floor"] = _cpu_ms_per_request(proxy_pid, triton, floor_run)
        through[concurrency], cpu_ms["gateway"] = _cpu_ms_per_request(gateway_pid, triton, gateway_run)
    return direct, floor, through, cpu_ms


def _rps_with_two_workers(models_dir: Path) -> float:
    """Throughput through an instance of two gateway worker processes at :data:`WORKERS_AT`."""
    with tempfile.TemporaryDirectory(prefix="bench-gateway-workers-") as scratch:
        workdir = Path(scratch)
        ready_file = workdir / "gateway.ready"
        with (workdir / "gateway.log").open("wb") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "infermesh_model_gateway",
                    "--config",
                    str(_config(workdir, 2)),
                    "--ready-file",
                    str(ready_file),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            address = wait_ready(ready_file, process.pid, 120, exited=process.poll).address
            asyncio.run(_deploy(address, models_dir))
            args = {"concurrency": WORKERS_AT, "shapes": {"X": [6]}, "measurement_ms": MEASUREMENT_MS}
            return run_perf_analyzer(address, "churn", **args, workdir=workdir).throughput
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as scratch:
        workdir = Path(scratch)
        process, address, triton_port = _start_gateway(workdir)
        try:
            asyncio.run(_deploy(address, workdir / "models"))
            triton = f"127.0.0.1:{triton_port}"
            [(proxy, proxy_address)] = start_bare_proxies(triton)
            try:
                direct, floor, through, cpu_ms = _measure(
                    triton, proxy_address, proxy.pid, address, process.pid, workdir=workdir
                )
                proxy_peak = peak_rss_mib(proxy.pid)
            finally:
                stop_processes([proxy])
            triton_pid, triton_rss_one, stubs_one = _triton_rss(process.pid)
            before = triton_rss_one + sum(stubs_one)
            asyncio.run(_deploy_extra(address))
            _, triton_rss_more, stubs_more = _triton_rss(process.pid)
            per_version = (triton_rss_more + sum(stubs_more) - before) / EXTRA_VERSIONS
            gateway_peak = peak_rss_mib(process.pid)
            triton_peak = peak_rss_mib(triton_pid)
            stub_peak = max(peak_rss_mib(p) for p in children(triton_pid))
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        rps_workers = {1: through[WORKERS_AT].throughput, 2: _rps_with_two_workers(workdir / "models-workers")}
    cores = len(os.sched_getaffinity(0))
    print(f"{'concurrency':>11} {'direct rps':>11} {'floor rps':>10} {'gateway rps':>12} {'gw/direct':>9} "
          f"{'floor/direct':>12} {'gw/floor':>8} {'direct p99':>10} {'floor p99':>9} {'gw p99':>8} "
          f"{'added p99':>9}")  # fmt: skip
    for c in CONCURRENCIES:
        d, f, g = direct[c], floor[c], through[c]
        print(
            f"{c:>11} {d.throughput:>11.0f} {f.throughput:>10.0f} {g.throughput:>12.0f} "
            f"{g.throughput / d.throughput:>9.2f} {f.throughput / d.throughput:>12.2f} "
            f"{g.throughput / f.throughput:>8.2f} {d.p99_ms:>10.2f} {f.p99_ms:>9.2f} {g.p99_ms:>8.2f} "
            f"{g.p99_ms - d.p99_ms:>9.2f}"
        )
    print(f"CPU ms per request at c{CPU_AT}: gateway process {cpu_ms['gateway']:.3f}, bare proxy {cpu_ms['floor']:.3f}")
    print(
        f"peak RSS: gateway {gateway_peak:.0f} MiB, bare proxy {proxy_peak:.0f} MiB, "
        f"tritonserver {triton_peak:.0f} MiB, "
        f"python-backend stub {stub_peak:.0f} MiB; each further loaded version costs {per_version:.0f} MiB"
    )
    print(
        f"gateway worker processes at c{WORKERS_AT}: 1 → {rps_workers[1]:.0f} rps, 2 → {rps_workers[2]:.0f} rps "
        f"(ratio {rps_workers[2] / rps_workers[1]:.2f}; {cores} cores shared with Triton and perf_analyzer)"
    )
    best = max(CONCURRENCIES, key=lambda c: direct[c].throughput)
    figures: dict[str, object] = {
        "bench": "gateway_overhead",
        "direct_rps": round(direct[best].throughput),
        "gateway_rps": round(through[best].throughput),
        "ratio": round(through[best].throughput / direct[best].throughput, 3),
        "at_concurrency": best,
        "p99_added_ms_c1": round(through[1].p99_ms - direct[1].p99_ms, 3),
        "p50_added_ms_c1": round(through[1].p50_ms - direct[1].p50_ms, 3),
        "floor_rps": round(floor[best].throughput),
        "floor_ratio": round(floor[best].throughput / direct[best].throughput, 3),
        "gateway_vs_floor": round(through[best].throughput / floor[best].throughput, 3),
        "floor_p99_added_ms_c1": round(floor[1].p99_ms - direct[1].p99_ms, 3),
        "gateway_cpu_ms_per_request": round(cpu_ms["gateway"], 3),
        "floor_cpu_ms_per_request": round(cpu_ms["floor"], 3),
        "cpu_at_concurrency": CPU_AT,
    }
    for c in CONCURRENCIES:
        figures[f"direct_rps_c{c}"] = round(direct[c].throughput)
        figures[f"floor_rps_c{c}"] = round(floor[c].throughput)
        figures[f"gateway_rps_c{c}"] = round(through[c].throughput)
        figures[f"ratio_c{c}"] = round(through[c].throughput / direct[c].throughput, 3)
        figures[f"direct_p99_ms_c{c}"] = round(direct[c].p99_ms, 3)
        figures[f"gateway_p99_ms_c{c}"] = round(through[c].p99_ms, 3)
    figures |= {
        "gateway_peak_rss_mib": round(gateway_peak),
        "bare_proxy_peak_rss_mib": round(proxy_peak),
        "tritonserver_peak_rss_mib": round(triton_peak),
        "stub_peak_rss_mib": round(stub_peak),
        "rss_per_extra_version_mib": round(per_version, 1),
        "model_gateway_rps_workers_1": round(rps_workers[1]),
        "model_gateway_rps_workers_2": round(rps_workers[2]),
        "model_gateway_workers_ratio": round(rps_workers[2] / rps_workers[1], 3),
        "workers_at_concurrency": WORKERS_AT,
        "cores": cores,
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
