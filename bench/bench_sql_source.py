"""GetFeatures from a SQL source: the data gateway's core (no gRPC) reading one view from SQLite or PostgreSQL.

A feature service of 10 features (raw, log1p/clip, standardize, arithmetic) over one view of
10 FP64 fields for 1,000 customers, written through the gateway's own push (the SQL connector's
upsert). Callers read one random customer per call, a fixed number of calls at concurrency 1
and 16, in this process; CPU per call is the process' CPU time (the event loop and the
driver's threads) over the calls. PostgreSQL is measured when ``--postgres-dsn`` is given.
Ends with one JSON line ``{"bench": "sql_source", ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path

from infermesh_chassis.metrics import Metrics
from infermesh_data_gateway.gateway import DataGateway, EntityInput, PushInput
from infermesh_data_gateway.settings import Settings

CUSTOMERS = 1000
FIELDS = [f"f{i}" for i in range(10)]
EXPRESSIONS = ["activity.{f}", "log1p(clip(activity.{f}, 0, 1e6))", "standardize(activity.{f}, 50, 20)"]


def _definitions(source: str) -> str:
    fields = ", ".join(f"{f}: FP64" for f in FIELDS)
    lines = [
        "project: {name: bench-sql, version: bench-1, online_store: db}",
        "entities: {customer: {keys: {customer_id: INT64}}}",
        f"sources: {{db: {source}}}",
        "feature_views:",
        f"  activity: {{entities: [customer], source: db, fields: {{{fields}}}}}",
        "feature_services:",
        "  bench:",
        "    entities: [customer]",
        "    features:",
    ]
    for index, field in enumerate(FIELDS):
        expr = EXPRESSIONS[index % len(EXPRESSIONS)].format(f=field)
        lines.append(f"      - {{name: {field}, dtype: FP32, expr: '{expr}', default: 0}}")
    return "\n".join(lines) + "\n"


async def _measure(gateway: DataGateway, calls: int, concurrency: int) -> dict[str, float]:
    rng = random.Random(7)
    latencies: list[float] = []

    async def caller(count: int) -> None:
        for _ in range(count):
            entity = EntityInput({"customer_id": rng.randrange(CUSTOMERS)})
            began = time.perf_counter()
            await gateway.get_features("bench", [entity])
            latencies.append(time.perf_counter() - began)

    cpu = time.process_time()
    wall = time.perf_counter()
    await asyncio.gather(*(caller(calls // concurrency) for _ in range(concurrency)))
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    latencies.sort()
    return {
        "cpu_us_per_call": round(cpu / len(latencies) * 1e6, 1),
        "rps": round(len(latencies) / wall),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 3),
    }


async def _bench(name: str, source: str, calls: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-sql-") as tmp:
        folder = Path(tmp)
        (folder / "features.yaml").write_text(_definitions(source))
        settings = Settings(
            definitions=folder, state_dir=folder / "state", definitions_reload_s=0, metrics={"enabled": False}
        )
        gateway = DataGateway(settings, Metrics(f"bench-{name}"))
        await gateway.start()
        try:
            rows = [
                PushInput({"customer_id": c}, {f: float((c * 7 + i) % 100) for i, f in enumerate(FIELDS)})
                for c in range(CUSTOMERS)
            ]
            await gateway.push("activity", rows)
            await _measure(gateway, 300, 4)  # warm up: connections, statements, caches
            figures: dict[str, float] = {}
            for concurrency in (1, 16):
                result = await _measure(gateway, calls, concurrency)
                print(f"{name:8} c={concurrency:<3} " + "  ".join(f"{k} {v}" for k, v in result.items()), flush=True)
                figures.update({f"{name}_{key}_c{concurrency}": value for key, value in result.items()})
            return figures
        finally:
            await gateway.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3200, help="calls per concurrency level")
    parser.add_argument("--postgres-dsn", default="", help="also measure a PostgreSQL source at this DSN")
    args = parser.parse_args()
    figures: dict[str, object] = {"bench": "sql_source"}
    figures.update(await _bench("sqlite", "{kind: sqlite, path: bench.db, timeout: 2s, pool_size: 16}", args.calls))
    if args.postgres_dsn:
        source = f'{{kind: postgres, dsn: "{args.postgres_dsn}", timeout: 2s, pool_size: 16}}'
        figures.update(await _bench("postgres", source, args.calls))
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
