"""A burst against the business center: how fast the calls it must refuse are refused.

The whole mesh runs as in ``bench_mesh.py`` (``meshkit.py``: data gateway, model gateway with one embedded
``tritonserver``, business center, each its own process with one worker), with the example scene
bounded hard: ``max_concurrency`` 16 and a local rate limit of 200 calls/s with a burst of 50. One
grpc.aio client in this process fires ``BURST`` Predict calls at once over 8 connections, waits for
every answer, pauses (the bucket refills), and does it ``ROUNDS`` times; most calls of each burst must
be refused. Two business centers in turn, same downstreams: the chassis' bound on calls waiting for the
event loop (``grpc.max_pending_calls`` 1024, "before"), then the business center's own (128, "after"):
beyond it gRPC core refuses a call before any Python runs (CANCELLED), the scene's limits refuse the
others (RESOURCE_EXHAUSTED) once the event loop takes them up, one at a time. Then a third business
center (its own defaults again) gets the same bursts from callers that carry a short deadline
(``--deadline-ms``, 150): a call whose deadline passes while it waits in gRPC core is dropped before any
handler, and one that reaches its handler with its deadline spent (or less than ``grpc.min_deadline_ms``
left, ``--min-deadline-ms`` to override the business center's) is shed there; both end
DEADLINE_EXCEEDED, and the business center's /metrics tell them apart.

Prints the calls by status with their p50/p99 latency (each from its own start, as the caller sees it),
the CPU each process spent per call of the bursts, the peak RSS (VmHWM) of every process, and ends
with one JSON line ``{"bench": "burst", ...}``: "refused" is every call not answered OK; the deadline
run's figures are prefixed ``deadline_``, with ``deadline_shed`` (calls the interceptor shed) and
``deadline_dropped_in_core`` (calls gRPC core ended with an error that no handler saw). Goal: refusals
are answered well before successes (``refused_to_ok_p50`` far below 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml
from benchkit import cpu_s, peak_rss_mib, spread_channels
from meshkit import API_KEY, CUSTOMERS, Service, biz_settings, mesh_pids, start_mesh
from prometheus_client.parser import text_string_to_metric_families

from infermesh.bizcenter.v1 import biz_center_pb2 as bz
from infermesh.bizcenter.v1 import biz_center_pb2_grpc as bz_grpc
from infermesh_biz_center.settings import FrontGrpcSettings
from infermesh_chassis.ready import read_ready
from infermesh_chassis.settings import GrpcServerSettings

BURST = 600
ROUNDS = 5
PAUSE_S = 1.0
TIMEOUT_S = 10.0
DEADLINE_MS = 150.0
"""The deadline of the deadline run's calls (``--deadline-ms``)."""
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
    shed: int = 0
    """Calls the business center's interceptor shed (``grpc_server_shed_total``)."""
    dropped_in_core: int = 0
    """Calls gRPC core ended with an error that no handler answered (core's failed calls less the
    errors the handlers counted): those whose deadline passed while they waited for the event loop."""


def _bounded_biz(
    workdir: Path,
    data: Service,
    model: Service,
    name: str,
    *,
    pending: int | None,
    min_deadline_ms: float | None,
) -> Service:
    """A business center whose scene is bounded by :data:`MAX_CONCURRENCY` and :data:`RATE`, with
    ``grpc.max_pending_calls`` ``pending`` and ``grpc.min_deadline_ms`` ``min_deadline_ms`` (None: its
    defaults), serving /metrics."""
    settings = biz_settings(workdir, data, model, f"biz-burst-{name}.db")
    settings["grpc"] = {"host": "127.0.0.1", "port": 0, "grace_period_s": 2, "workers": 1}
    settings["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": 0}
    if pending is not None:
        settings["grpc"]["max_pending_calls"] = pending
    if min_deadline_ms is not None:
        settings["grpc"]["min_deadline_ms"] = min_deadline_ms
    scenes_file = Path(str(settings["config"]["seed_file"]))  # type: ignore[index]
    scenes = yaml.safe_load(scenes_file.read_text())
    scenes["scenes"][0]["max_concurrency"] = MAX_CONCURRENCY
    scenes["scenes"][0]["rate_limit"] = RATE
    scenes_file.write_text(yaml.safe_dump(scenes))
    biz = Service(f"biz-center-{name}", "infermesh_biz_center", workdir, settings)
    biz.wait_serving()
    return biz


async def _bursts(address: str, timeout_s: float) -> dict[str, list[float]]:
    """Latency (s) of every call of every burst (each with deadline ``timeout_s``), by status name."""
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
                await predicts[n % len(predicts)](request, metadata=metadata, timeout=timeout_s)
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


def _server_counts(biz: Service) -> tuple[int, int]:
    """The business center's calls shed by its interceptor, and those gRPC core ended with an error
    that no handler answered, from its /metrics."""
    ready = read_ready(biz.ready_file)
    assert ready is not None and ready.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{ready.metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    totals: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] += sample.value
    prefix = "infermesh_biz_center_grpc"
    handled_errors = totals[f"{prefix}_server_errors_total"]
    dropped = totals[f"{prefix}_core_calls_failed_total"] - handled_errors
    return round(totals[f"{prefix}_server_shed_total"]), max(0, round(dropped))


def _run(
    workdir: Path,
    data: Service,
    model: Service,
    pids: dict[str, int],
    name: str,
    *,
    pending: int | None = None,
    timeout_s: float = TIMEOUT_S,
    min_deadline_ms: float | None = None,
) -> Run:
    """One business center with ``grpc.max_pending_calls`` ``pending`` and ``grpc.min_deadline_ms``
    ``min_deadline_ms`` (None: its defaults), its callers' deadline ``timeout_s``: the bursts'
    outcomes, CPU ms per call by process, the business center's peak RSS and its own counts."""
    biz = _bounded_biz(workdir, data, model, name, pending=pending, min_deadline_ms=min_deadline_ms)
    try:
        measured = pids | {"biz-center": biz.process.pid}
        before = {name: cpu_s(pid) for name, pid in measured.items()}
        outcomes = asyncio.run(_bursts(biz.address, timeout_s))
        calls = BURST * ROUNDS
        cpu_ms = {name: (cpu_s(pid) - before[name]) / calls * 1000 for name, pid in measured.items()}
        shed, dropped = _server_counts(biz)
        return Run(outcomes, cpu_ms, peak_rss_mib(biz.process.pid), shed, dropped)
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deadline-ms", type=float, default=DEADLINE_MS, help="the deadline run's callers' deadline")
    parser.add_argument(
        "--min-deadline-ms", type=float, default=None, help="grpc.min_deadline_ms of the deadline run's business center"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-burst-"))
    services: list[Service] = []
    try:
        data, model, biz, _ = start_mesh(workdir, services)
        biz.stop()
        services.remove(biz)
        pids = mesh_pids(services, model)
        before = _run(workdir, data, model, pids, "before", pending=CHASSIS_PENDING)
        after = _run(workdir, data, model, pids, "after")
        deadline = _run(
            workdir,
            data,
            model,
            pids,
            "deadline",
            timeout_s=args.deadline_ms / 1000,
            min_deadline_ms=args.min_deadline_ms,
        )
        rss = {name: peak_rss_mib(pid) for name, pid in pids.items()}
        rss["client"] = peak_rss_mib(os.getpid())
    finally:
        for service in reversed(services):
            service.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"{ROUNDS} bursts of {BURST} Predict calls at once; scene max_concurrency {MAX_CONCURRENCY}, rate {RATE}")
    _print(f"before: grpc.max_pending_calls {CHASSIS_PENDING} (the chassis' default)", before)
    _print(f"after: the business center's default grpc.max_pending_calls ({FRONT_PENDING})", after)
    min_deadline = "its default" if args.min_deadline_ms is None else f"{args.min_deadline_ms:g}"
    _print(f"deadline: callers' deadline {args.deadline_ms:g} ms, grpc.min_deadline_ms {min_deadline}", deadline)
    print(f"deadline run: {deadline.shed} shed by the interceptor, {deadline.dropped_in_core} dropped in gRPC core")
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
        "deadline_ms": args.deadline_ms,
        **{f"deadline_{key}": value for key, value in _figures(deadline.outcomes).items()},
        "deadline_shed": deadline.shed,
        "deadline_dropped_in_core": deadline.dropped_in_core,
        "deadline_cpu_ms_per_call_biz_center": round(deadline.cpu_ms["biz-center"], 3),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
