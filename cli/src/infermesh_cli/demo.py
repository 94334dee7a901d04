"""The demo: churn scoring through the whole mesh, from training to a summary of what happened.

:func:`deploy_churn_models` reads a point-in-time training set of the churn feature service from
the data gateway (the same definitions that serve online), labels it with a known synthetic churn
rule, trains a logistic regression (version 1) and gradient-boosted trees (version 2), converts
both to ONNX, registers and deploys them on the model gateway (Triton), makes version 1
``production``, points ``canary`` at version 2 and mirrors half of version 1's traffic to
version 2 as a shadow. The business center's churn scene splits customers between the two
versions in an A/B experiment.

:func:`run_workload` then sends Predict calls for random customers to the business center, with
a progress bar, and :func:`summarize` reports the requests, the split per variant, p50/p99 per
hop, errors, degraded answers, the shadow agreement the monitor computed from the events it
received through NATS, and the slowest request with the id of its trace (``infermesh trace ID``).

Last, :func:`run_stream_burst` binds the churn scene to a stream (a JSON transaction per message on
``demo.transactions``, results on ``demo.transactions.scored``), publishes a burst of transactions
to it and reports how many were scored, their p99 end-to-end time (publication to result) and the
binding's lag once the burst is through.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import nats
import numpy as np
from nats.js import api as js_api
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from tqdm import tqdm

from infermesh.bizcenter.v1 import biz_center_pb2 as biz
from infermesh.bizcenter.v1 import biz_center_pb2_grpc as biz_grpc
from infermesh.common.v1 import common_pb2
from infermesh.datagateway.v1 import data_gateway_pb2 as dg
from infermesh.datagateway.v1 import data_gateway_pb2_grpc as dg_grpc
from infermesh.modelgateway.v1 import model_gateway_pb2 as mg
from infermesh.modelgateway.v1 import model_gateway_pb2_grpc as mg_grpc
from infermesh.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from infermesh_cli.commands._output import ms, percent, print_fields, print_json, print_table
from infermesh_cli.stack import DEMO_API_KEY, LocalStack
from infermesh_model_gateway.onnx_export import TrainedModel, to_onnx_file

__all__ = [
    "DemoSummary",
    "demo_command",
    "deploy_churn_models",
    "print_summary",
    "run_stream_burst",
    "run_workload",
    "summarize",
    "up_command",
]

MODEL = "churn"
SCENE = "churn-score"
FEATURE_SERVICE = "churn"
CUSTOMERS = range(1, 201)
STREAM = "DEMO_TRANSACTIONS"
STREAM_SUBJECT = "demo.transactions"
STREAM_BINDING = "transactions"
STREAM_WAIT_S = 30.0
"""Longest the demo waits for the burst's results."""


def _values(value: common_pb2.Value) -> list[float]:
    """A feature as the numbers it contributes to the model's input (a one-hot vector gives several)."""
    kind = value.WhichOneof("kind")
    if kind in ("double_list", "int64_list"):
        return [float(v) for v in getattr(value, kind).values]
    raw = getattr(value, kind) if kind is not None else None
    return [float(raw) if isinstance(raw, int | float | bool) else float("nan")]


async def _training_set(channel: grpc.aio.Channel) -> tuple[list[str], np.ndarray]:
    stub = dg_grpc.DataGatewayServiceStub(channel)
    rows = dg.TrainingEntityRows()
    now = datetime.now(UTC)
    for customer in CUSTOMERS:
        row = rows.rows.add()
        row.keys["customer_id"].int64_value = customer
        row.event_time.FromDatetime(now)
    request = dg.GetTrainingSetRequest(feature_service=FEATURE_SERVICE, rows=rows, format=dg.TRAINING_SET_FORMAT_ROWS)
    names: list[str] = []
    matrix: list[list[float]] = []
    async for chunk in stub.GetTrainingSet(request, timeout=60):
        if chunk.fields:
            names = [f.name for f in chunk.fields]
        matrix.extend([x for v in row.values for x in _values(v)] for row in chunk.rows.rows)
    return names, np.nan_to_num(np.asarray(matrix, dtype=np.float32))


def churn_labels(x: np.ndarray, seed: int = 11) -> np.ndarray:
    """The synthetic ground truth: support tickets, recent logins and low spend drive churn."""
    rng = np.random.default_rng(seed)
    z = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    logits = 1.2 * z[:, -3] + 0.9 * z[:, -2] - 0.8 * z[:, 4] - 0.6 * z[:, 3] + 0.4 * rng.normal(size=len(x))
    return (logits > 0).astype(np.int64)


def _train(x: np.ndarray, y: np.ndarray, models_dir: Path) -> list[TrainedModel]:
    models_dir = models_dir.resolve()  # the model gateway reads artifacts from its own working directory
    models_dir.mkdir(parents=True, exist_ok=True)
    lr = LogisticRegression(max_iter=1000).fit(x, y)
    gb = GradientBoostingClassifier(n_estimators=40, max_depth=3, random_state=0).fit(x, y)
    return [to_onnx_file(lr, x, models_dir / "churn_lr.onnx"), to_onnx_file(gb, x, models_dir / "churn_gb.onnx")]


async def deploy_churn_models(stack: LocalStack, models_dir: Path) -> dict[str, Any]:
    """Train, register and deploy the two churn models and set their traffic (see the module docstring)."""
    async with (
        grpc.aio.insecure_channel(stack.process("data-gateway").address) as data,
        grpc.aio.insecure_channel(stack.process("model-gateway").address) as models,
    ):
        names, x = await _training_set(data)
        y = churn_labels(x)
        trained = await asyncio.to_thread(_train, x, y, models_dir)
        control = mg_grpc.ModelControlServiceStub(models)
        existing = await control.ListModels(mg.ListModelsRequest(name_prefix=MODEL))
        if not any(m.name == MODEL and m.serving_versions for m in existing.models):
            for model in trained:
                registered = await control.RegisterModelVersion(
                    mg.RegisterModelVersionRequest(
                        model=MODEL,
                        format=mg.MODEL_FORMAT_ONNX,
                        artifact=mg.Artifact(uri=str(model.path), sha256=model.sha256),
                        inputs=[common_pb2.TensorSpec(name="X", datatype="FP32", shape=[x.shape[1]])],
                        outputs=[
                            common_pb2.TensorSpec(name="label", datatype="INT64", shape=[1]),
                            common_pb2.TensorSpec(name="probabilities", datatype="FP32", shape=[2]),
                        ],
                        deployment=mg.DeploymentConfig(
                            max_batch_size=64, dynamic_batching=mg.DynamicBatching(enabled=True)
                        ),
                        owner="churn-model@example.com",
                        description=f"{model.name}: trained on {len(x)} rows of feature service '{FEATURE_SERVICE}'",
                        actor="infermesh-demo",
                    )
                )
                version = registered.model_version.version
                await control.DeployModelVersion(
                    mg.DeployModelVersionRequest(model=MODEL, version=version, actor="infermesh-demo"), timeout=180
                )
            await control.PromoteModelVersion(
                mg.PromoteModelVersionRequest(model=MODEL, version=1, actor="infermesh-demo")
            )
            await control.SetAlias(mg.SetAliasRequest(model=MODEL, alias="canary", version=2, actor="infermesh-demo"))
            await control.SetTrafficPolicy(
                mg.SetTrafficPolicyRequest(
                    model=MODEL,
                    policy=mg.TrafficPolicy(mirror=mg.Mirror(shadow_version=2, fraction=0.5)),
                    actor="infermesh-demo",
                    reason="shadow the gradient-boosted model on half of version 1's traffic",
                )
            )
        return {"features": names, "rows": len(x), "churn_rate": float(y.mean())}


@dataclass
class DemoSummary:
    """What the demo workload saw, and what the monitor made of it."""

    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    degraded: dict[str, int] = field(default_factory=dict)
    variants: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    hops_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    total_ms: dict[str, float] = field(default_factory=dict)
    shadow: dict[str, float] = field(default_factory=dict)
    events_stored: int = 0
    training: dict[str, Any] = field(default_factory=dict)
    rss_mib: dict[str, float] = field(default_factory=dict)
    slowest: dict[str, Any] = field(default_factory=dict)
    """The slowest answered request: its ``request_id``, ``latency_ms`` and ``trace_id`` (empty if not stored)."""
    stream: dict[str, Any] = field(default_factory=dict)
    """The stream burst: ``published``, ``scored``, ``degraded``, ``p50_ms``/``p99_ms`` end to end, ``lag``
    (pending and unacknowledged messages at the end), ``seconds``."""


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p99": 0.0}
    array = np.asarray(values)
    return {"p50": round(float(np.percentile(array, 50)), 3), "p99": round(float(np.percentile(array, 99)), 3)}


async def run_workload(stack: LocalStack, requests: int, concurrency: int = 8, seed: int = 3) -> DemoSummary:
    """Send ``requests`` Predict calls for random customers to the business center."""
    rng = random.Random(seed)
    summary = DemoSummary()
    hops: dict[str, list[float]] = {}
    totals: list[float] = []
    errors: Counter[str] = Counter()
    degraded: Counter[str] = Counter()
    variants: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    slowest = (0.0, "")
    progress = tqdm(total=requests, desc="demo workload", unit="req", leave=True)
    remaining = requests
    async with grpc.aio.insecure_channel(stack.process("biz-center").address) as channel:
        predict = biz_grpc.BizCenterServiceStub(channel).Predict

        async def worker() -> None:
            nonlocal remaining, slowest
            while remaining > 0:
                remaining -= 1
                customer = rng.choice(CUSTOMERS)
                request = biz.PredictRequest(scene=SCENE, unit_id=str(customer))
                request.attributes["region"] = rng.choice(["eu-west", "us-east", "ap-south"])
                request_id = uuid.uuid4().hex
                metadata = (("x-api-key", DEMO_API_KEY), ("x-request-id", request_id))
                started = time.perf_counter()
                try:
                    response = await predict(request, metadata=metadata, timeout=5)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] += 1
                else:
                    totals.append((time.perf_counter() - started) * 1000)
                    slowest = max(slowest, (totals[-1], request_id))
                    variants[response.variant or "(none)"] += 1
                    versions[str(response.model_version) if response.model_version else "(fallback)"] += 1
                    if response.degradation.degraded:
                        degraded[common_pb2.DegradationReason.Name(response.degradation.reason)] += 1
                    for hop in response.latencies:
                        hops.setdefault(hop.hop, []).append(hop.latency_ms)
                progress.update(1)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    progress.close()
    summary.requests = requests
    summary.errors, summary.degraded = dict(errors), dict(degraded)
    summary.variants, summary.versions = dict(variants), dict(versions)
    summary.hops_ms = {hop: _quantiles(values) for hop, values in hops.items()}
    summary.total_ms = _quantiles(totals)
    if slowest[1]:
        summary.slowest = {"request_id": slowest[1], "latency_ms": round(slowest[0], 3), "trace_id": ""}
    return summary


async def summarize(stack: LocalStack, summary: DemoSummary, wait_s: float = 20.0) -> DemoSummary:
    """Add what the monitor stored (events, shadow agreement) once the events have arrived."""
    async with grpc.aio.insecure_channel(stack.process("monitor").address) as channel:
        monitor = monitor_pb2_grpc.MonitorServiceStub(channel)
        deadline = time.monotonic() + wait_s
        while True:
            stats = await monitor.QueryStats(
                monitor_pb2.QueryStatsRequest(
                    window=monitor_pb2.STATS_WINDOW_1H,
                    filter=monitor_pb2.StatsFilter(scene=SCENE, source_service="biz-center"),
                ),
                timeout=10,
            )
            stored = sum(row.count for row in stats.rows)
            if stored >= summary.requests - sum(summary.errors.values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        summary.events_stored = stored
        report = await monitor.GetShadowReport(
            monitor_pb2.GetShadowReportRequest(model=MODEL, score_tolerance=0.05), timeout=10
        )
        for pair in report.comparisons:
            key = f"v{pair.primary_version}->v{pair.shadow_version}"
            summary.shadow[f"{key} pairs"] = pair.pairs
            summary.shadow[f"{key} agreement"] = round(pair.agreement_rate, 3)
            summary.shadow[f"{key} mean |score diff|"] = round(pair.mean_abs_score_diff, 4)
        if summary.slowest:
            summary.slowest["trace_id"] = await _trace_of(monitor, summary.slowest["request_id"], deadline)
    summary.rss_mib = {p.name: round(p.rss_mib() or 0.0) for p in stack.processes}
    return summary


async def _trace_of(monitor: monitor_pb2_grpc.MonitorServiceStub, request_id: str, deadline: float) -> str:
    """The id of the trace the monitor stored for ``request_id`` (its spans arrive within seconds), or ""."""
    while True:
        try:
            reply = await monitor.GetTrace(monitor_pb2.GetTraceRequest(request_id=request_id), timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                return ""
            await asyncio.sleep(0.5)
        else:
            return reply.trace_id


def _transactions_binding() -> biz.StreamBinding:
    binding = biz.StreamBinding(
        name=STREAM_BINDING,
        stream=STREAM,
        subjects=[STREAM_SUBJECT],
        format=biz.STREAM_FORMAT_JSON,
        json_mapping=biz.JsonMapping(
            unit_id="customer.id", attributes={"region": "region", "channel": "channel"}, request_id="txn_id"
        ),
        output_subject=f"{STREAM_SUBJECT}.scored",
        batch_size=128,
        enabled=True,
    )
    binding.retry_delay.FromMilliseconds(200)
    return binding


async def run_stream_burst(stack: LocalStack, messages: int, seed: int = 5) -> dict[str, Any]:
    """Bind the churn scene to ``demo.transactions``, publish ``messages`` transactions at once, wait for
    their results; what :attr:`DemoSummary.stream` holds."""
    rng = random.Random(seed)
    metadata = (("x-api-key", DEMO_API_KEY),)
    async with grpc.aio.insecure_channel(stack.process("biz-center").address) as channel:
        admin = biz_grpc.BizCenterAdminServiceStub(channel)
        scene = (await admin.GetScene(biz.GetSceneRequest(name=SCENE), metadata=metadata, timeout=10)).scene
        if not any(b.name == STREAM_BINDING for b in scene.stream_bindings):
            scene.stream_bindings.append(_transactions_binding())
            request = biz.UpsertSceneRequest(scene=scene, actor="infermesh-demo", reason="stream the transactions")
            await admin.UpsertScene(request, metadata=metadata, timeout=10)
        nc = await nats.connect(f"nats://{stack.process('nats').address}")
        try:
            js = nc.jetstream(timeout=10)
            await js.add_stream(js_api.StreamConfig(name=STREAM, subjects=[STREAM_SUBJECT]))
            sent: dict[str, float] = {}
            latencies: list[float] = []
            degraded = 0
            done = asyncio.Event()

            async def result(msg: Any) -> None:
                nonlocal degraded
                began = sent.pop((msg.headers or {}).get("Infermesh-Input-Id", ""), None)
                if began is None:  # a result published again after a redelivery: already counted
                    return
                latencies.append((time.perf_counter() - began) * 1000)
                degraded += (msg.headers or {}).get("Infermesh-Degraded") == "true"
                if len(latencies) == messages:
                    done.set()

            subscription = await nc.subscribe(f"{STREAM_SUBJECT}.scored", cb=result)
            burst = uuid.uuid4().hex[:8]
            started = time.perf_counter()
            progress = tqdm(total=messages, desc="stream burst", unit="msg", leave=True)
            for n in range(messages):
                txn = {
                    "txn_id": f"{burst}-{n}",
                    "customer": {"id": rng.choice(CUSTOMERS)},
                    "amount": round(rng.uniform(1, 500), 2),
                    "region": rng.choice(["eu-west", "us-east", "ap-south"]),
                }
                msg_id = f"{burst}-{n}"
                sent[msg_id] = time.perf_counter()
                await js.publish(STREAM_SUBJECT, json.dumps(txn).encode(), headers={"Nats-Msg-Id": msg_id})
                progress.update(1)
            progress.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), STREAM_WAIT_S)
            seconds = time.perf_counter() - started
            await subscription.unsubscribe()
        finally:
            await nc.close()
        statuses = await admin.ListStreamBindings(
            biz.ListStreamBindingsRequest(scene=SCENE), metadata=metadata, timeout=10
        )
    status = next(s for s in statuses.bindings if s.binding.name == STREAM_BINDING)
    quantiles = _quantiles(latencies)
    return {
        "published": messages,
        "scored": len(latencies),
        "degraded": degraded,
        "p50_ms": quantiles["p50"],
        "p99_ms": quantiles["p99"],
        "lag": status.pending + status.ack_pending,
        "seconds": round(seconds, 2),
    }


def print_summary(summary: DemoSummary) -> None:
    """The demo's summary as tables."""
    ok = summary.requests - sum(summary.errors.values())
    training = f"{summary.training.get('rows')} rows, churn rate {summary.training.get('churn_rate', 0):.2f}"
    print_fields(
        [
            ("requests", summary.requests),
            ("answered", ok),
            ("errors", summary.errors or 0),
            ("degraded", summary.degraded or 0),
            ("end-to-end p50 / p99 ms", f"{ms(summary.total_ms.get('p50'))} / {ms(summary.total_ms.get('p99'))}"),
            ("events stored by the monitor", summary.events_stored),
            ("slowest request", _slowest(summary.slowest)),
            ("training set", training),
        ]
    )
    print()
    print_table(
        ["variant", "requests", "share"],
        [[v, n, percent(n / max(ok, 1))] for v, n in sorted(summary.variants.items())],
    )
    print()
    print_table(["model version", "requests"], sorted(summary.versions.items()))
    print()
    print_table(["hop", "p50 ms", "p99 ms"], [[h, ms(q["p50"]), ms(q["p99"])] for h, q in summary.hops_ms.items()])
    print()
    print_table(["shadow", "value"], sorted(summary.shadow.items()))
    print()
    print_table(["process", "RSS MiB"], sorted(summary.rss_mib.items()))
    if summary.stream:
        stream = summary.stream
        print()
        print_fields(
            [
                (f"stream burst ({STREAM_SUBJECT})", f"{stream['published']} transactions in {stream['seconds']} s"),
                ("scored", f"{stream['scored']} ({stream['degraded']} degraded)"),
                ("end-to-end p50 / p99 ms", f"{ms(stream['p50_ms'])} / {ms(stream['p99_ms'])}"),
                ("lag at the end", stream["lag"]),
            ]
        )


def _slowest(slowest: dict[str, Any]) -> str:
    if not slowest:
        return "-"
    trace = (
        f"trace {slowest['trace_id']} (infermesh trace {slowest['trace_id']})" if slowest["trace_id"] else "no trace"
    )
    return f"{ms(slowest['latency_ms'])} ms, request {slowest['request_id']}, {trace}"


def demo_command(workdir: Path, requests: int, as_json: bool, stream_messages: int = 2000) -> int:
    """Start the mesh, deploy the models, run the workload, print the summary, stop; 0 when all went well."""
    stack = LocalStack(workdir)
    print(f"starting the local mesh under {workdir} ...", file=sys.stderr)
    stack.start()
    stack.supervise()
    try:
        print("training and deploying the churn models ...", file=sys.stderr)
        training = asyncio.run(deploy_churn_models(stack, stack.workdir / "models"))
        summary = asyncio.run(run_workload(stack, requests))
        summary.training = training
        summary = asyncio.run(summarize(stack, summary))
        if stream_messages:
            summary.stream = asyncio.run(run_stream_burst(stack, stream_messages))
    finally:
        codes = stack.stop()
    if as_json:
        print_json({"summary": dataclasses.asdict(summary), "exit_codes": codes})
    else:
        print_summary(summary)
        print(f"\nstopped: {', '.join(f'{n} exit {c}' for n, c in codes.items())}")
    unclean = [n for n, c in codes.items() if c != 0]
    unscored = stream_messages - summary.stream.get("scored", 0) if stream_messages else 0
    if summary.errors or unclean or unscored:
        print(
            f"demo failed: errors {summary.errors}, unclean exits {unclean}, stream messages unscored {unscored}",
            file=sys.stderr,
        )
        return 1
    return 0


def up_command(workdir: Path) -> int:
    """Start the mesh with the churn models deployed and serve until SIGINT/SIGTERM, then stop cleanly.

    Meanwhile a process that exits is restarted on its ports (:meth:`LocalStack.supervise`).
    """
    stack = LocalStack(workdir)
    stack.start()
    stack.supervise()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        asyncio.run(deploy_churn_models(stack, stack.workdir / "models"))
        print_table(
            ["process", "address", "metrics", "pid", "log"],
            [[p.name, p.address, f"127.0.0.1:{p.metrics_port}", p.pid, p.log] for p in stack.processes],
        )
        print(f"\nserving the '{SCENE}' scene (API key {DEMO_API_KEY}); Ctrl-C or `infermesh down` stops the mesh")
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass  # the stack's supervisor restarts what exits meanwhile
    finally:
        codes = stack.stop()
    print(f"stopped: {', '.join(f'{n} exit {c}' for n, c in codes.items())}")
    return 0 if all(c == 0 for c in codes.values()) else 1
