"""Bad input against a real server: bytes that are no protobuf, oversize names and request ids,
errors that echo a caller's value, cancelled calls; and the strict parsers themselves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from infermesh.common.v1 import common_pb2
from infermesh.modelgateway.v1 import model_gateway_pb2
from infermesh_chassis import errors
from infermesh_chassis.interceptors import DEADLINE_SKEW_S, _ServerCall, cancelled_code
from infermesh_chassis.validation import (
    INT64_MAX,
    MAX_IDENTIFIER_CHARS,
    MAX_MESSAGE_BYTES,
    bound_message,
    check_fields,
    check_request_id,
    parse_uint,
    shown,
)

GARBAGE = [
    pytest.param(b"\xff\xff\xff\xff", id="truncated-varint"),
    pytest.param(b"\x0a\x64abc", id="length-past-end"),
    pytest.param(b"\x0f", id="bad-wire-type"),
    pytest.param(b"\x0a\x02\xc3\x28", id="invalid-utf8-string"),
]

IDENTITY = {"request_serializer": None, "response_deserializer": None}


def _plain(details: str) -> None:
    """A message a person can act on: no Python exception type, no traceback, bounded."""
    assert "<class" not in details and "Error" not in details and "Traceback" not in details
    assert len(details.encode()) <= MAX_MESSAGE_BYTES + 64


@pytest.mark.parametrize("payload", GARBAGE)
@pytest.mark.parametrize(
    ("kind", "method", "message_name"),
    [
        ("unary_unary", "/grpc.health.v1.Health/Check", "grpc.health.v1.HealthCheckRequest"),
        ("unary_stream", "/grpc.health.v1.Health/Watch", "grpc.health.v1.HealthCheckRequest"),
        (
            "stream_stream",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            "grpc.reflection.v1alpha.ServerReflectionRequest",
        ),
    ],
)
async def test_bytes_that_are_no_protobuf_are_invalid_argument(start_server, kind, method, message_name, payload):
    server, _ = await start_server()
    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            if kind == "unary_unary":
                await channel.unary_unary(method, **IDENTITY)(payload, timeout=5)
            elif kind == "unary_stream":
                [_ async for _ in channel.unary_stream(method, **IDENTITY)(payload, timeout=5)]
            else:
                [_ async for _ in channel.stream_stream(method, **IDENTITY)(iter([payload]), timeout=5)]
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message_name in refused.value.details()
    _plain(refused.value.details())
    await _eventually(lambda: 'grpc_code="INVALID_ARGUMENT"' in server.metrics.render().decode())


async def test_a_valid_request_after_garbage_is_served(start_server):
    server, _ = await start_server()
    async with grpc.aio.insecure_channel(server.address) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check", **IDENTITY)
        with pytest.raises(grpc.aio.AioRpcError):
            await check(b"\xff\xff")
        reply = health_pb2.HealthCheckResponse.FromString(
            await check(health_pb2.HealthCheckRequest(service="").SerializeToString())
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("n" * 20_000, id="20k-ascii"),
        pytest.param("é" * 20_000, id="20k-two-byte"),
        pytest.param("\u4e2d" * 7_000, id="7k-three-byte"),
    ],
)
async def test_an_error_echoing_a_huge_name_keeps_its_status(start_server, echo_stub, name):
    server, _ = await start_server()
    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await echo_stub(channel).Lookup(name.encode(), timeout=5)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details().startswith("model '")
    assert raised.value.details().endswith("(message truncated)")
    _plain(raised.value.details())


@pytest.mark.parametrize(
    ("field", "size"),
    [("service", MAX_IDENTIFIER_CHARS + 1), ("service", 20_000)],
)
async def test_oversize_identifier_fields_are_refused_by_every_service(start_server, field, size):
    server, _ = await start_server()
    async with grpc.aio.insecure_channel(server.address) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check", **IDENTITY)
        request = health_pb2.HealthCheckRequest(**{field: "s" * size}).SerializeToString()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await check(request, timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == f"{field}: {size} characters; at most {MAX_IDENTIFIER_CHARS} are accepted"
        request = health_pb2.HealthCheckRequest(**{field: "s" * MAX_IDENTIFIER_CHARS}).SerializeToString()
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await check(request, timeout=5)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "request_id",
    [
        pytest.param("r" * 129, id="129-chars"),
        pytest.param("r" * 7_000, id="7000-chars"),
        pytest.param("has space", id="space"),
    ],
)
async def test_malformed_request_ids_are_refused_at_once(start_server, echo_stub, log_events, request_id):
    server, service = await start_server()
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = echo_stub(channel).Hold(b"", metadata=(("x-request-id", request_id),), timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
    assert not service.held.is_set()  # refused without running the handler (Hold would wait)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("metadata x-request-id: ")
    _plain(refused.value.details())
    [returned] = [v for k, v in await call.trailing_metadata() if k == "x-request-id"]
    assert returned != request_id and len(returned) == 32


async def test_a_20000_character_request_id_is_refused_not_served(start_server, echo_stub):
    server, service = await start_server()
    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await echo_stub(channel).Hold(b"", metadata=(("x-request-id", "r" * 20_000),), timeout=30)
    # gRPC refuses headers past its 16 KiB hard limit itself, before any handler runs
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert not service.held.is_set()


async def _eventually(condition: Callable[[], bool]) -> None:
    """Wait (at most 10 s) until ``condition`` holds: the server records a call's outcome after
    the caller has its status, and learns of a cancellation asynchronously."""

    async def poll() -> None:
        while not condition():  # noqa: ASYNC110  (log lines and metrics have no event to await)
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), 10)


def _events(log_events: Callable[[], list[dict]], event: str) -> list[dict]:
    return [e for e in log_events() if e["event"] == event]


@pytest.mark.parametrize("cancel_by", ["caller", "deadline"])
async def test_cancelled_calls_are_counted_and_logged(start_server, echo_stub, log_events, cancel_by):
    server, service = await start_server()
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = echo_stub(channel)
        if cancel_by == "caller":
            call = stub.Hold(b"")
            await asyncio.wait_for(service.holding.wait(), 10)
            call.cancel()
            expected = "CANCELLED"
        else:  # the deadline passes while the handler holds (it is long enough to get there when loaded)
            call = stub.Hold(b"", timeout=3)
            await asyncio.wait_for(service.holding.wait(), 10)
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await call
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            expected = "DEADLINE_EXCEEDED"
        await _eventually(lambda: bool(_events(log_events, "rpc_cancelled")))
    [logged] = _events(log_events, "rpc_cancelled")
    assert logged["code"] == expected and logged["rpc"] == "/test.Echo/Hold"
    assert logged["request_id"]
    await _eventually(lambda: f'grpc_code="{expected}",grpc_method="Hold"' in server.metrics.render().decode())


@pytest.mark.parametrize(
    ("remaining", "code"),
    [
        (None, grpc.StatusCode.CANCELLED),  # no deadline: only the caller can have gone
        (30.0, grpc.StatusCode.CANCELLED),
        (DEADLINE_SKEW_S + 0.001, grpc.StatusCode.CANCELLED),
        (DEADLINE_SKEW_S, grpc.StatusCode.DEADLINE_EXCEEDED),
        (0.003, grpc.StatusCode.DEADLINE_EXCEEDED),  # the caller's RST_STREAM beat the server's own deadline
        (0.0, grpc.StatusCode.DEADLINE_EXCEEDED),
        (-0.5, grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
def test_a_call_ended_near_its_deadline_is_deadline_exceeded(remaining, code):
    assert cancelled_code(remaining) == code


class _Context:
    """The little of a grpc.aio servicer context a call's bookkeeping reads, with injected remaining times."""

    def __init__(self, *remaining: float | None) -> None:
        self._remaining = list(remaining)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-request-id", "req-1"),)

    def time_remaining(self) -> float | None:
        return self._remaining.pop(0)


@pytest.mark.parametrize(
    ("at_start", "at_end", "expected"),
    [
        (3.0, 0.002, "DEADLINE_EXCEEDED"),
        (3.0, 0.0, "DEADLINE_EXCEEDED"),
        (3.0, 1.5, "CANCELLED"),
        (None, None, "CANCELLED"),
    ],
)
def test_a_cancelled_call_is_classified_by_its_remaining_time(log_events, at_start, at_end, expected):
    """What the server's context says is left when the call ends decides, with no timing involved."""
    call = _ServerCall(_Context(at_start, at_end), "/test.Echo/Hold")  # type: ignore[arg-type]
    call.cancelled()
    call.finish()
    [logged] = _events(log_events, "rpc_cancelled")
    assert logged["code"] == expected == call.code.name
    assert logged["request_id"] == "req-1"


PARSE_CASES = [
    ("0", INT64_MAX, 0),
    ("42", INT64_MAX, 42),
    ("0042", INT64_MAX, 42),
    (str(INT64_MAX), INT64_MAX, INT64_MAX),
    ("65535", 65535, 65535),
]
BAD_NUMBERS = [
    "",
    "-1",
    "+42",
    " 42",
    "42 ",
    "4_2",
    "4.2",
    "\u0664\u0662",  # Arabic-Indic 42
    "\uff14\uff12",  # full-width 42
    "\u00b2",  # superscript two: isdigit() is True, int() raises
    "9" * 30,
    str(INT64_MAX + 1),
    "1" + "0" * 400,
]


@pytest.mark.parametrize(("text", "maximum", "value"), PARSE_CASES)
def test_parse_uint_reads_ascii_digits_in_range(text, maximum, value):
    assert parse_uint(text, "f", maximum=maximum) == value


@pytest.mark.parametrize("text", BAD_NUMBERS)
def test_parse_uint_refuses_everything_else_with_a_bounded_message(text):
    with pytest.raises(errors.InvalidArgument) as refused:
        parse_uint(text, "page.page_token")
    assert refused.value.message.startswith("page.page_token: ")
    assert len(refused.value.message) < 200


def test_parse_uint_enforces_the_field_maximum():
    with pytest.raises(errors.InvalidArgument, match="at most 65535"):
        parse_uint("65536", "port", maximum=65535)


def test_shown_and_bound_message_bound_what_is_echoed():
    assert shown("abc") == "'abc'"
    assert shown("x" * 1000).endswith("... (1000 characters)") and len(shown("x" * 1000)) < 100
    assert bound_message("short") == "short"
    cut = bound_message("\u4e2d" * 1000)
    assert len(cut.encode()) <= MAX_MESSAGE_BYTES + 30 and cut.endswith("(message truncated)")


def test_check_fields_reaches_nested_messages_and_skips_free_text():
    request = model_gateway_pb2.ListModelVersionsRequest(model="m", page=common_pb2.PageRequest(page_token="t" * 300))
    with pytest.raises(errors.InvalidArgument, match=r"^page\.page_token: 300 characters"):
        check_fields(request)
    check_fields(model_gateway_pb2.DeployModelVersionRequest(model="m", reason="why " * 500))
    with pytest.raises(errors.InvalidArgument, match=r"^actor: "):
        check_fields(model_gateway_pb2.DeployModelVersionRequest(model="m", actor="a" * 257))
    check_fields(reflection_pb2.ServerReflectionRequest(file_by_filename="x"))
    check_fields(b"raw bytes pass")


@pytest.mark.parametrize("request_id", ["a", "req-42", "0f" * 16, "r" * 128, "a:b/c.d_e"])
def test_check_request_id_accepts_visible_ascii(request_id):
    check_request_id(request_id, "request_id")


@pytest.mark.parametrize("request_id", ["", "r" * 129, "a b", "caf\u00e9", "a\nb", "a\x00b"])
def test_check_request_id_refuses_the_rest(request_id):
    with pytest.raises(errors.InvalidArgument, match=r"^request_id: "):
        check_request_id(request_id, "request_id")
