"""The demo workload: what the mesh can do today, run against the local stack.

It resolves every service through the chassis' discovery and client (the same path the
services use to call each other), sends a workload of health checks to each instance,
lists each instance's services through server reflection, reads each /metrics endpoint,
and reports latency figures and the memory of each process.
"""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.request
from dataclasses import dataclass

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from infermesh_chassis.client import ChannelPool, ServiceClient
from infermesh_chassis.discovery import DiscoverySettings, StaticDiscovery
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.settings import ClientSettings
from infermesh_cli.stack import ServiceProcess

__all__ = ["ServiceReport", "run_workload"]


@dataclass(frozen=True, slots=True)
class ServiceReport:
    """What the workload saw of one service."""

    name: str
    address: str
    health: str
    services: tuple[str, ...]
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    metrics_ok: bool
    rss_mib: float | None


def _quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _metrics_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            return b"infermesh_" in reply.read()
    except OSError:
        return False


async def _probe(
    process: ServiceProcess, pool: ChannelPool, discovery: StaticDiscovery, requests: int
) -> ServiceReport:
    settings = ClientSettings(default_timeout_s=2.0)
    health = ServiceClient(
        process.name,
        health_pb2_grpc.HealthStub,
        discovery=discovery,
        channels=pool,
        settings=settings,
        idempotent={"Check"},
    )
    latencies: list[float] = []
    errors = 0
    status = "UNREACHABLE"
    for _ in range(requests):
        began = time.perf_counter()
        try:
            reply = await health.call("Check", health_pb2.HealthCheckRequest())
        except Exception:
            errors += 1
            continue
        latencies.append((time.perf_counter() - began) * 1000)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    reflection = reflection_pb2_grpc.ServerReflectionStub(pool.get(process.address))
    listing = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = tuple(sorted([s.name async for r in listing for s in r.list_services_response.service]))
    return ServiceReport(
        name=process.name,
        address=process.address,
        health=status,
        services=names,
        requests=requests,
        errors=errors,
        p50_ms=_quantile(latencies, 0.5),
        p99_ms=_quantile(latencies, 0.99),
        metrics_ok=await asyncio.to_thread(_metrics_ok, process.metrics_port),
        rss_mib=process.rss_mib(),
    )


async def run_workload(processes: list[ServiceProcess], requests: int = 200) -> list[ServiceReport]:
    """Probe every service of the stack with ``requests`` health checks through the chassis client."""
    discovery = StaticDiscovery(DiscoverySettings(static={p.name: [p.address] for p in processes}))
    pool = ChannelPool(Metrics("infermesh-cli"))
    try:
        reports = []
        for index, process in enumerate(processes, 1):
            print(f"  [{index}/{len(processes)}] {process.name}: {requests} calls", file=sys.stderr, flush=True)
            reports.append(await _probe(process, pool, discovery, requests))
        return reports
    finally:
        await pool.close()
        await discovery.close()
