"""Distributed tracing through the whole mesh (``LocalStack`` traces every request to the monitor):
one Predict is one trace whose spans come from every hop, correctly parented, stored by the monitor
with the request's events carrying the same trace id; a degraded answer shows the failed span and
the fallback that served it."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
import uuid

import grpc
from thriftpy2.contrib.aio.rpc import make_client

from infermesh.bizcenter.v1 import biz_center_pb2 as biz
from infermesh.bizcenter.v1 import biz_center_pb2_grpc as biz_grpc
from infermesh.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from infermesh_biz_center.thrift_front import IDL
from infermesh_cli.stack import DEMO_API_KEY, LocalStack

SCENE = "churn-score"
SERVER, CLIENT = monitor_pb2.SPAN_KIND_SERVER, monitor_pb2.SPAN_KIND_CLIENT


async def _predict(stack: LocalStack, request_id: str, unit: str = "42") -> biz.PredictResponse:
    async with grpc.aio.insecure_channel(stack.process("biz-center").address) as channel:
        return await biz_grpc.BizCenterServiceStub(channel).Predict(
            biz.PredictRequest(scene=SCENE, unit_id=unit),
            metadata=(("x-api-key", DEMO_API_KEY), ("x-request-id", request_id)),
            timeout=5,
        )


async def _trace(
    stack: LocalStack, request_id: str, services: set[str], event_sources: set[str], timeout_s: float = 60.0
) -> monitor_pb2.GetTraceResponse:
    """The stored trace of ``request_id`` once spans of ``services`` and events of ``event_sources`` are in."""
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(stack.process("monitor").address) as channel:
        monitor = monitor_pb2_grpc.MonitorServiceStub(channel)
        while True:
            try:
                reply = await monitor.GetTrace(monitor_pb2.GetTraceRequest(request_id=request_id), timeout=10)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() is grpc.StatusCode.NOT_FOUND, exc
            else:
                if services <= {s.service for s in reply.spans} and event_sources <= {e.service for e in reply.events}:
                    return reply
            assert time.monotonic() < deadline, f"the trace of {request_id} did not arrive whole"
            await asyncio.sleep(0.5)


def _check_tree(
    reply: monitor_pb2.GetTraceResponse,
    root_name: str = "infermesh.bizcenter.v1.BizCenterService/Predict",
    remote_parent: str = "",
) -> monitor_pb2.TraceSpan:
    """Every span belongs to one tree in one trace, under ``remote_parent`` (the caller's span, not stored)
    when given; its root (returned) is the business center's ``root_name``."""
    by_id = {s.span_id: s for s in reply.spans}
    assert len(by_id) == len(reply.spans)
    assert {s.trace_id for s in reply.spans} == {reply.trace_id}
    roots = [s for s in reply.spans if s.parent_span_id == remote_parent]
    assert len(roots) == 1, [(s.service, s.name) for s in roots]
    assert all(s.parent_span_id in by_id for s in reply.spans if s.parent_span_id != remote_parent)
    root = roots[0]
    assert (root.service, root.kind, root.name) == ("biz-center", SERVER, root_name)
    return root


def _served_from(reply: monitor_pb2.GetTraceResponse, service: str) -> list[monitor_pb2.TraceSpan]:
    """The SERVER spans of ``service``, each checked to be the child of a business center CLIENT span."""
    by_id = {s.span_id: s for s in reply.spans}
    served = [s for s in reply.spans if s.service == service and s.kind == SERVER]
    for span in served:
        caller = by_id[span.parent_span_id]
        assert (caller.service, caller.kind, caller.name) == ("biz-center", CLIENT, span.name)
    return served


async def test_one_predict_is_one_trace_across_every_hop_with_its_events(mesh: LocalStack):
    started = time.monotonic()
    request_id = uuid.uuid4().hex
    response = await _predict(mesh, request_id)
    assert not response.degradation.degraded

    reply = await _trace(
        mesh, request_id, {"biz-center", "data-gateway", "model-gateway"}, {"biz-center", "model-gateway"}
    )
    root = _check_tree(reply)
    assert root.request_id == request_id and root.attributes["infermesh.scene"] == SCENE
    assert root.status != monitor_pb2.SPAN_STATUS_ERROR and not root.degraded
    assert "infermesh.datagateway.v1.DataGatewayService/GetFeatures" in {
        s.name for s in _served_from(reply, "data-gateway")
    }
    assert "inference.GRPCInferenceService/ModelInfer" in {s.name for s in _served_from(reply, "model-gateway")}

    by_id = {s.span_id: s for s in reply.spans}
    reads = [s for s in reply.spans if s.name in ("source_read", "cache_read")]
    assert reads and all(by_id[s.parent_span_id].service == "data-gateway" for s in reads)
    assert all(s.attributes["infermesh.source"] for s in reads if s.name == "source_read")
    [infer] = [s for s in _served_from(reply, "model-gateway") if s.name.endswith("/ModelInfer")]
    assert infer.attributes["infermesh.model"] == "churn" and infer.attributes["infermesh.route"]
    [worker] = [s for s in reply.spans if s.name == "worker_call"]
    assert worker.parent_span_id == infer.span_id and worker.attributes["infermesh.triton_model"]

    span_ids = set(by_id)
    assert all(e.span_id in span_ids for e in reply.events), "an event names a span outside its trace"
    inference = [e for e in reply.events if e.kind == "inference"]
    assert {e.service for e in inference} == {"biz-center", "model-gateway"}
    assert next(e for e in inference if e.service == "biz-center").span_id == root.span_id

    waterfall = await _cli(mesh, "trace", request_id)
    assert waterfall.splitlines()[0].split() == ["trace", reply.trace_id]
    lines = waterfall.splitlines()
    predict = next(i for i, line in enumerate(lines) if "BizCenterService/Predict" in line)
    features = next(
        i for i, line in enumerate(lines) if "DataGatewayService/GetFeatures" in line and "data-gateway" in line
    )
    assert predict < features and lines[features].split()[0] == "data-gateway"
    assert "█" in lines[predict] and "inference" in waterfall
    as_json = json.loads(await _cli(mesh, "--json", "trace", reply.trace_id))
    assert len(as_json["spans"]) == len(reply.spans) and len(as_json["events"]) == len(reply.events)
    # the mesh is shared: this test's window (and the CLI's start-up), not the thousands of traces earlier tests made
    window = f"{math.ceil(time.monotonic() - started) + 10}s"
    listed = json.loads(await _cli(mesh, "--json", "traces", "--scene", SCENE, "--slowest", "1000", "--since", window))
    assert reply.trace_id in {t["trace_id"] for t in listed["traces"]}
    durations = [t["duration_ms"] for t in listed["traces"]]
    assert durations == sorted(durations, reverse=True)


async def _cli(stack: LocalStack, *args: str) -> str:
    """What ``infermesh --monitor ADDRESS ARGS`` prints (it must exit 0)."""
    command = [sys.executable, "-m", "infermesh_cli", "--monitor", stack.process("monitor").address, *args]
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def _thrift_predict(stack: LocalStack, request_id: str, traceparent: str | None) -> object:
    client = await make_client(IDL.BizCenter, "127.0.0.1", stack.thrift_port, timeout=5000)
    try:
        return await client.predict(
            IDL.PredictRequest(scene=SCENE, unit_id="42", request_id=request_id),
            IDL.CallOptions(api_key=DEMO_API_KEY, traceparent=traceparent),
        )
    finally:
        client.close()


async def test_a_thrift_predict_joins_its_callers_trace_and_names_it(mesh: LocalStack):
    caller_trace, caller_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    request_id = uuid.uuid4().hex
    answer = await _thrift_predict(mesh, request_id, f"00-{caller_trace}-{caller_span}-01")
    assert answer.trace_id == caller_trace and not answer.degraded

    reply = await _trace(
        mesh, request_id, {"biz-center", "data-gateway", "model-gateway"}, {"biz-center", "model-gateway"}
    )
    assert reply.trace_id == caller_trace
    root = _check_tree(reply, "BizCenter/predict", remote_parent=caller_span)
    assert root.attributes["rpc.system"] == "thrift" and root.request_id == request_id
    assert _served_from(reply, "data-gateway") and _served_from(reply, "model-gateway")
    assert {e.service for e in reply.events if e.kind == "inference"} == {"biz-center", "model-gateway"}


async def test_a_thrift_predict_without_or_with_a_malformed_trace_context_starts_a_trace(mesh: LocalStack):
    for traceparent in (None, "00-not-a-trace-01", "00-" + "0" * 32 + "-" + "1" * 16 + "-01"):
        request_id = uuid.uuid4().hex
        answer = await _thrift_predict(mesh, request_id, traceparent)
        assert answer.trace_id and len(answer.trace_id) == 32 and answer.trace_id != "0" * 32
        reply = await _trace(mesh, request_id, {"biz-center", "data-gateway"}, set())
        assert reply.trace_id == answer.trace_id
        _check_tree(reply, "BizCenter/predict")


async def test_a_degraded_answer_shows_the_failed_call_and_the_fallback(mesh: LocalStack):
    # last in this file: the data gateway it stops comes back, but answers may stay degraded a moment
    mesh.halt("data-gateway")
    try:
        request_id = uuid.uuid4().hex
        response = await _predict(mesh, request_id, unit="17")
        assert response.degradation.degraded
    finally:
        await asyncio.to_thread(mesh.restart, "data-gateway")

    reply = await _trace(mesh, request_id, {"biz-center"}, {"biz-center"})
    root = _check_tree(reply)
    assert root.degraded and root.fallback and root.attributes["infermesh.degradation_reason"]
    failed = [s for s in reply.spans if s.kind == CLIENT and s.status == monitor_pb2.SPAN_STATUS_ERROR]
    assert any(s.name == "infermesh.datagateway.v1.DataGatewayService/GetFeatures" for s in failed), [
        (s.name, s.status_message) for s in reply.spans
    ]
    assert not any(s.service == "data-gateway" for s in reply.spans)
