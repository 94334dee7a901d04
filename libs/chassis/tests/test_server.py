"""The server bootstrap against real clients: health, reflection, graceful shutdown, errors,
request ids and metrics."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import socket
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from infermesh_chassis import errors
from infermesh_chassis.corecalls import WARN_EVERY_S, CoreCalls
from infermesh_chassis.discovery import DiscoverySettings, StaticDiscovery
from infermesh_chassis.interceptors import DEADLINE_SKEW_S, DeadlineShedding
from infermesh_chassis.logs import configure_logging
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.ready import ReadyTimeout, read_ready, wait_ready
from infermesh_chassis.server import GrpcServer
from infermesh_chassis.settings import ServiceSettings
from infermesh_chassis.tasks import cancel_and_wait
from infermesh_chassis.testing import settled


async def test_health_reports_serving_per_service(start_server, echo_stub):
    server, _ = await start_server()
    async with grpc.aio.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "test.Echo"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await health.Check(health_pb2.HealthCheckRequest(service="no.Such"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_services(start_server):
    server, _ = await start_server()
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = [r async for r in stub.ServerReflectionInfo(iter([request]))]
    names = {s.name for s in responses[0].list_services_response.service}
    assert names == {"test.Echo", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


async def test_free_port_and_metrics_port_are_read_back(start_server):
    first, _ = await start_server("one")
    second, _ = await start_server("two")
    assert first.port > 0 and second.port > 0 and first.port != second.port
    assert first.metrics_port and second.metrics_port and first.metrics_port != second.metrics_port


async def test_ready_file_names_the_ports_bound_and_goes_away_at_stop(start_server, tmp_path):
    path = tmp_path / "run" / "echo.ready"
    server, _ = await start_server(ready_file=path)
    ready = read_ready(path)
    assert ready is not None
    assert (ready.pid, ready.address, ready.metrics_port) == (os.getpid(), server.address, server.metrics_port)
    assert [p.name for p in path.parent.iterdir()] == ["echo.ready"]  # the temporary name was renamed
    async with grpc.aio.insecure_channel(ready.address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await server.stop(0)
    assert not path.exists()


async def test_a_stale_ready_file_is_never_taken_for_a_new_process(tmp_path):
    path = tmp_path / "svc.ready"
    path.write_text(json.dumps({"service": "svc", "pid": 1, "host": "127.0.0.1", "grpc_port": 1}))
    with pytest.raises(ReadyTimeout):
        await asyncio.to_thread(wait_ready, path, os.getpid(), 0.2)
    with pytest.raises(ChildProcessError, match="exited with 3"):
        await asyncio.to_thread(wait_ready, path, os.getpid(), 30, exited=lambda: 3)


async def test_in_flight_call_completes_during_graceful_shutdown(start_server, echo_stub):
    server, _ = await start_server(grpc={"grace_period_s": 5})
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = echo_stub(channel)
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="test.Echo"))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        in_flight = asyncio.ensure_future(stub.Slow(b"0.5"))
        await asyncio.sleep(0.1)
        stopping = asyncio.ensure_future(server.stop())
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        await asyncio.sleep(0.05)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Echo(b"late", timeout=1)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await in_flight == b"done"
        await stopping


async def test_grace_period_bounds_shutdown(start_server, echo_stub):
    server, _ = await start_server()
    async with grpc.aio.insecure_channel(server.address) as channel:
        in_flight = asyncio.ensure_future(echo_stub(channel).Slow(b"30"))
        await asyncio.sleep(0.1)
        loop = asyncio.get_running_loop()
        began = loop.time()
        await server.stop(0.2)
        assert loop.time() - began < 2
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            await in_flight
        assert cut.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


ERROR_CASES = [
    ("InvalidArgument", grpc.StatusCode.INVALID_ARGUMENT),
    ("NotFound", grpc.StatusCode.NOT_FOUND),
    ("AlreadyExists", grpc.StatusCode.ALREADY_EXISTS),
    ("FailedPrecondition", grpc.StatusCode.FAILED_PRECONDITION),
    ("Aborted", grpc.StatusCode.ABORTED),
    ("PermissionDenied", grpc.StatusCode.PERMISSION_DENIED),
    ("Unauthenticated", grpc.StatusCode.UNAUTHENTICATED),
    ("ResourceExhausted", grpc.StatusCode.RESOURCE_EXHAUSTED),
    ("Unavailable", grpc.StatusCode.UNAVAILABLE),
    ("NotReady", grpc.StatusCode.UNAVAILABLE),
    ("DeadlineExceeded", grpc.StatusCode.DEADLINE_EXCEEDED),
    ("Cancelled", grpc.StatusCode.CANCELLED),
    ("Unimplemented", grpc.StatusCode.UNIMPLEMENTED),
    ("Internal", grpc.StatusCode.INTERNAL),
]


@pytest.mark.parametrize(("error_class", "code"), ERROR_CASES)
async def test_error_class_maps_to_status(start_server, echo_stub, error_class, code):
    server, _ = await start_server()
    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await echo_stub(channel).Fail(error_class.encode())
    assert raised.value.code() == code
    if error_class == "ResourceExhausted":
        assert raised.value.details() == "slow down"
        assert ("retry-after-ms", "250") in tuple(raised.value.trailing_metadata())
    else:
        assert raised.value.details() == f"{error_class} raised on purpose"
    converted = errors.from_rpc_error(raised.value)
    assert converted.status_code == code


async def test_unknown_exception_is_internal_with_generic_message(start_server, echo_stub, log_events):
    server, _ = await start_server()
    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await echo_stub(channel).Crash(b"", metadata=(("x-request-id", "req-crash"),))
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert raised.value.details() == "internal error (request id req-crash)"
    assert "secret" not in raised.value.details()
    [logged] = [e for e in log_events() if e["event"] == "rpc_unhandled_exception"]
    assert logged["request_id"] == "req-crash"
    assert "secret internal detail" in json.dumps(logged["exception"])


async def test_not_implemented_is_unimplemented(start_server, echo_stub):
    server, _ = await start_server()
    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await echo_stub(channel).Unimplemented(b"")
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_request_id_reaches_logs_downstream_and_caller(start_server, make_client, echo_stub, log_events):
    downstream, downstream_service = await start_server("downstream")
    front, front_service = await start_server("front")
    front_service.downstream = make_client({"downstream": [downstream.address]}, "downstream")
    async with grpc.aio.insecure_channel(front.address) as channel:
        call = echo_stub(channel).Forward(b"Echo:hello", metadata=(("x-request-id", "req-42"),))
        assert await call == b"hello"
        assert ("x-request-id", "req-42") in tuple(await call.trailing_metadata())
        generated = echo_stub(channel).Echo(b"no id")
        await generated
        rid = dict(await generated.trailing_metadata())["x-request-id"]
    assert downstream_service.seen_request_ids == ["req-42"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    handled = [e for e in log_events() if e["event"] == "echo_handled"]
    assert [(e["request_id"], e["rpc"]) for e in handled] == [
        ("req-42", "/test.Echo/Echo"),
        (rid, "/test.Echo/Echo"),
    ]


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return reply.read().decode()


def _value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} in /metrics")


def _samples(text: str, name: str, **labels: str) -> list[float]:
    return [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items())
    ]


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {labels} in /metrics")


async def test_red_metrics_on_metrics_endpoint(start_server, make_client, echo_stub):
    downstream, _ = await start_server("down")
    front, front_service = await start_server("front-svc")
    front_service.downstream = make_client({"down": [downstream.address]}, "down")
    async with grpc.aio.insecure_channel(front.address) as channel:
        stub = echo_stub(channel)
        for _ in range(3):
            await stub.Echo(b"x")
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Fail(b"NotFound")
        await stub.Forward(b"Echo:y")
        assert [m async for m in stub.Count(b"3")] == [b"0", b"1", b"2"]
    text = await asyncio.to_thread(_scrape, front.metrics_port)
    method = {"grpc_service": "test.Echo"}
    assert _sample(text, "infermesh_front_svc_grpc_server_requests_total", grpc_method="Echo", **method) == 3
    assert _sample(text, "infermesh_front_svc_grpc_server_requests_total", grpc_method="Fail", **method) == 2
    assert _sample(text, "infermesh_front_svc_grpc_server_requests_total", grpc_method="Count", **method) == 1
    errors_fail = _sample(
        text,
        "infermesh_front_svc_grpc_server_errors_total",
        grpc_method="Fail",
        grpc_code="NOT_FOUND",
        **method,
    )
    assert errors_fail == 2
    assert _sample(text, "infermesh_front_svc_grpc_server_latency_seconds_count", grpc_method="Echo", **method) == 3
    assert "infermesh_front_svc_grpc_server_errors_total{" + 'grpc_code="OK"' not in text
    down_text = await asyncio.to_thread(_scrape, downstream.metrics_port)
    assert _sample(down_text, "infermesh_down_grpc_server_requests_total", grpc_method="Echo", **method) == 1
    assert "process_resident_memory_bytes" in text


async def test_max_concurrent_rpcs_refuses_with_resource_exhausted(start_server, echo_stub):
    server, _ = await start_server(grpc={"max_concurrent_rpcs": 2})
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = echo_stub(channel)
        slow = [asyncio.ensure_future(stub.Slow(b"0.5")) for _ in range(2)]
        await asyncio.sleep(0.1)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Echo(b"one too many")
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await asyncio.gather(*slow) == [b"done", b"done"]


def _burst_while_frozen(address: str, service, calls: int, refusals: int) -> tuple[list, list]:
    """From a thread: freeze the server's event loop, send ``calls`` more, wait until ``refusals``
    of them are answered while no Python runs in the server (their codes), then thaw and collect
    every code."""
    answered = threading.Semaphore(0)
    with grpc.insecure_channel(address) as channel:
        frozen = channel.unary_unary("/test.Echo/Freeze").future(b"", timeout=30)
        assert service.frozen.wait(20)
        echo = channel.unary_unary("/test.Echo/Echo")
        futures = [echo.future(b"x", timeout=30) for _ in range(calls)]
        for future in futures:
            future.add_done_callback(lambda _: answered.release())
        for _ in range(refusals):
            assert answered.acquire(timeout=20), "gRPC core did not refuse the burst while the loop was busy"
        while_frozen = [f.code() for f in futures if f.done()]
        service.thaw.set()
        assert frozen.result() == b"thawed"
        after = [f.code() for f in futures]
    return while_frozen, after


async def test_a_burst_beyond_the_pending_bound_is_refused_while_the_loop_is_busy(start_server):
    """Under a burst the queue forms in gRPC core, where no handler can refuse: core refuses the
    calls beyond ``max_pending_calls`` itself, at once, even while the event loop is stuck."""
    pending, calls = 4, 24
    server, service = await start_server(grpc={"max_pending_calls": pending})
    while_frozen, after = await asyncio.get_running_loop().run_in_executor(
        None, _burst_while_frozen, server.address, service, calls, calls - pending - 2
    )
    assert set(while_frozen) == {grpc.StatusCode.CANCELLED}
    assert after.count(grpc.StatusCode.OK) == calls - len(while_frozen)
    refused = after.count(grpc.StatusCode.CANCELLED)
    assert server.core_calls is not None
    assert await settled(server.core_calls.unanswered, refused) == refused
    text = await asyncio.to_thread(_scrape, server.metrics_port)
    core = {
        what: _value(text, f"infermesh_echo_grpc_core_calls_{what}_total")
        for what in ("started", "succeeded", "failed")
    }
    handled = sum(_samples(text, "infermesh_echo_grpc_server_requests_total"))
    assert core["started"] - handled == refused  # no handler saw them
    assert core["started"] - core["succeeded"] - core["failed"] == refused  # core ended them with no status
    assert _value(text, "infermesh_echo_grpc_core_calls_unanswered") == refused


async def test_calls_unanswered_in_core_are_logged_at_most_once_per_interval(start_server, log_events):
    """The warning names the calls core refused, once they stayed unanswered over two checks, and
    waits its interval before naming more (an injected clock, no sleep)."""
    pending, calls = 4, 24
    server, service = await start_server(grpc={"max_pending_calls": pending})
    _, after = await asyncio.get_running_loop().run_in_executor(
        None, _burst_while_frozen, server.address, service, calls, calls - pending - 2
    )
    refused = after.count(grpc.StatusCode.CANCELLED)
    assert server.core_calls is not None
    now = [0.0]
    core_calls = CoreCalls(server.core_calls.server_id, lambda: 0, max_pending_calls=pending, clock=lambda: now[0])
    assert await settled(core_calls.unanswered, refused) == refused

    def warnings() -> list[dict]:
        return [e for e in log_events() if e["event"] == "grpc_core_calls_unanswered"]

    core_calls.check()  # one reading: not yet a warning
    assert warnings() == []
    now[0] = 10.0
    core_calls.check()
    assert [(w["level"], w["unanswered"], w["new"], w["max_pending_calls"]) for w in warnings()] == [
        ("warning", refused, refused, pending)
    ]
    service.frozen.clear()
    service.thaw.clear()
    _, again = await asyncio.get_running_loop().run_in_executor(
        None, _burst_while_frozen, server.address, service, calls, calls - pending - 2
    )
    total = refused + again.count(grpc.StatusCode.CANCELLED)
    assert await settled(core_calls.unanswered, total) == total
    now[0] = 20.0
    core_calls.check()
    core_calls.check()
    assert len(warnings()) == 1  # grown, but within the interval
    now[0] = 10.0 + WARN_EVERY_S
    core_calls.check()
    assert [(w["unanswered"], w["new"]) for w in warnings()][1:] == [(total, total - refused)]
    core_calls.check()
    assert len(warnings()) == 2  # nothing new


async def test_a_call_with_less_than_the_minimum_deadline_left_is_shed_before_its_handler(
    start_server, echo_stub, log_events
):
    """``grpc.min_deadline_ms`` far above a call's whole deadline: shed whatever the machine's speed."""
    server, service = await start_server(grpc={"min_deadline_ms": 30_000})
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = echo_stub(channel)
        assert await stub.Echo(b"no deadline") == b"no deadline"
        assert await stub.Echo(b"long deadline", timeout=120) == b"long deadline"
        for _ in range(3):
            call = stub.Echo(b"short deadline", timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as shed:
                await call
            assert shed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "shed before it was served" in shed.value.details()
            assert dict(await call.trailing_metadata())["x-request-id"]
        with pytest.raises(grpc.aio.AioRpcError) as shed:
            await stub.Join(iter([b"a", b"b"]), timeout=5)
        assert shed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(service.seen_request_ids) == 2  # the two calls served; no handler ran for the others
    text = server.metrics.render().decode()
    shed_total = "infermesh_echo_grpc_server_shed_total"
    assert _sample(text, shed_total, grpc_method="Echo", reason="deadline") == 3
    assert _sample(text, shed_total, grpc_method="Join", reason="deadline") == 1
    errors_total = "infermesh_echo_grpc_server_errors_total"
    assert _sample(text, errors_total, grpc_method="Echo", grpc_code="DEADLINE_EXCEEDED") == 3
    logged = [e for e in log_events() if e["event"] == "rpc_shed"]
    assert logged and logged[0]["level"] == "warning" and logged[0]["shed"] == 1
    assert logged[0]["rpc"] == "/test.Echo/Echo" and logged[0]["min_deadline_ms"] == 30_000


def _expire_while_frozen(address: str, service, core_calls: CoreCalls, echoes: int, joins: int) -> list:
    """From a thread: freeze the server's event loop, send calls with a 0.3 s deadline, wait until
    gRPC core has them all (its deadline for each then runs out by 0.3 s later) and that time has
    passed, and until their callers have DEADLINE_EXCEEDED; then thaw. Their codes."""
    answered = threading.Semaphore(0)
    with grpc.insecure_channel(address) as channel:
        frozen = channel.unary_unary("/test.Echo/Freeze").future(b"", timeout=30)
        assert service.frozen.wait(20)
        echo = channel.unary_unary("/test.Echo/Echo")
        join = channel.stream_unary("/test.Echo/Join")
        futures = [echo.future(b"x", timeout=0.3) for _ in range(echoes)]
        futures += [join.future(iter([b"x"]), timeout=0.3) for _ in range(joins)]
        for future in futures:
            future.add_done_callback(lambda _: answered.release())
        for _ in range(2000):
            if core_calls.counts().started == 1 + len(futures):
                break
            time.sleep(0.01)
        all_in = time.monotonic()
        assert core_calls.counts().started == 1 + len(futures), "gRPC core did not receive the calls"
        for _ in futures:
            assert answered.acquire(timeout=20), "the callers' deadlines did not pass"
        time.sleep(max(0.0, all_in + 0.3 + DEADLINE_SKEW_S - time.monotonic()))  # core's deadlines too
        service.thaw.set()
        assert frozen.result() == b"thawed"
    return [future.code() for future in futures]


async def test_calls_whose_deadline_passed_while_the_loop_was_busy_never_run_their_handler(start_server):
    """A unary request whose deadline passed in gRPC core's queue is dropped by grpc.aio before any
    handler (gRPC core counts it failed); a streaming one reaches the handler and is shed there."""
    echoes, joins = 8, 4
    server, service = await start_server()
    assert server.core_calls is not None
    codes = await asyncio.get_running_loop().run_in_executor(
        None, _expire_while_frozen, server.address, service, server.core_calls, echoes, joins
    )
    assert set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}
    shed_total = "infermesh_echo_grpc_server_shed_total"

    def shed(method: str) -> float:
        text = server.metrics.render().decode()
        return sum(_samples(text, shed_total, grpc_method=method, reason="deadline"))

    assert await settled(lambda: shed("Join"), joins) == joins
    assert shed("Echo") == 0
    assert service.seen_request_ids == []  # neither Echo's nor Join's servicer ran
    text = server.metrics.render().decode()
    # the interceptor looked Echo up for each call, but no handler saw one: no RED count
    assert _sample(text, "infermesh_echo_grpc_server_requests_total", grpc_method="Echo") == 0
    assert (await settled(lambda: server.core_calls.counts().failed, echoes + joins)) == echoes + joins


def test_shedding_logs_at_most_once_per_interval():
    now = [0.0]
    metrics = Metrics("shed-test")
    shedding = DeadlineShedding(metrics, 0.05, clock=lambda: now[0], log_every_s=10)
    stream = io.StringIO()
    configure_logging("shed-test", "INFO", stream=stream)
    shedding.check("/a.B/C", None)
    shedding.check("/a.B/C", 0.051)
    for at in (0.0, 5.0, 9.9, 10.0):
        now[0] = at
        with pytest.raises(errors.DeadlineExceeded, match=r"0\.05 ms left"):
            shedding.check("/a.B/C", 0.00005)
    logged = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["event"], e["shed"]) for e in logged] == [("rpc_shed", 1), ("rpc_shed", 3)]
    shed = _sample(metrics.render().decode(), "infermesh_shed_test_grpc_server_shed_total", grpc_method="C")
    assert shed == 4


async def test_oversize_message_is_refused(start_server, echo_stub):
    server, _ = await start_server(grpc={"max_receive_message_bytes": 1024})
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = echo_stub(channel)
        assert await stub.Echo(b"x" * 512) == b"x" * 512
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Echo(b"x" * 4096)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_registers_on_start_and_deregisters_before_draining(log_stream):
    discovery = StaticDiscovery(DiscoverySettings())
    server = GrpcServer(ServiceSettings(service_name="registered-svc"), discovery=discovery)
    await server.start()
    [instance] = discovery.registered
    assert (instance.service, instance.host, instance.port) == ("registered-svc", "127.0.0.1", server.port)
    assert instance.meta["metrics_port"] == str(server.metrics_port)
    await server.stop(0)
    assert discovery.registered == ()


async def test_a_server_bound_to_every_interface_advertises_its_host_name():
    anywhere = GrpcServer(ServiceSettings(service_name="svc", grpc={"host": "0.0.0.0"}))
    assert anywhere.advertised_host == socket.gethostname()
    named = GrpcServer(ServiceSettings(service_name="svc", grpc={"host": "0.0.0.0", "advertise_host": "svc-1"}))
    assert named.advertised_host == "svc-1"
    local = GrpcServer(ServiceSettings(service_name="svc", grpc={"host": "127.0.0.1"}))
    assert local.advertised_host == "127.0.0.1"
    for server in (anywhere, named, local):
        await server.stop(0)


async def test_stopping_a_task_that_swallows_its_cancellation_does_not_hang():
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed.is_set():
                    raise
                swallowed.set()  # the first cancellation is lost, as some libraries lose it

    task = asyncio.get_running_loop().create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task, recancel_s=0.05), 2)
    assert task.cancelled() and swallowed.is_set()
