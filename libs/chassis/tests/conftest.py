"""Real grpc.aio servers on free ports with a small raw-bytes test service.

``/test.Echo/*`` methods use identity serialization (bytes in, bytes out), so these tests
exercise the chassis without depending on any generated contract.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from infermesh_chassis import context as ctx
from infermesh_chassis import errors
from infermesh_chassis.client import ChannelPool, ServiceClient
from infermesh_chassis.discovery import DiscoverySettings, StaticDiscovery
from infermesh_chassis.logs import configure_logging, get_logger
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.server import GrpcServer
from infermesh_chassis.settings import ClientSettings, ServiceSettings, TracingSettings
from infermesh_chassis.tracing import Tracing

SERVICE = "test.Echo"


class EchoStub:
    """What a generated stub looks like, for the raw test service."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        for name in ("Echo", "Fail", "Crash", "Slow", "WhoAmI", "Forward", "Unimplemented", "Lookup", "Hold", "Freeze"):
            setattr(self, name, channel.unary_unary(f"/{SERVICE}/{name}"))
        self.Count = channel.unary_stream(f"/{SERVICE}/Count")
        self.Join = channel.stream_unary(f"/{SERVICE}/Join")


class EchoService:
    """Behaviors of the test service. ``downstream`` lets Forward call another server."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.downstream: ServiceClient | None = None
        self.seen_request_ids: list[str | None] = []
        self.unavailable_left = 0
        self.log = get_logger("echo")
        self.held = asyncio.Event()
        """Set to let every call of Hold finish."""
        self.holding = asyncio.Event()
        """Set once a call of Hold is in its handler."""
        self.frozen = threading.Event()
        """Set once Freeze holds the event loop."""
        self.thaw = threading.Event()
        """Set (from another thread) to let Freeze give the event loop back."""

    async def echo(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.seen_request_ids.append(ctx.current_request_id())
        self.log.info("echo_handled", size=len(request))
        return request

    async def fail(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        error_class = getattr(errors, request.decode())
        if error_class is errors.ResourceExhausted:
            raise errors.ResourceExhausted("slow down", retry_after_s=0.25)
        raise error_class(f"{request.decode()} raised on purpose")

    async def crash(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise RuntimeError("secret internal detail")

    async def slow(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(float(request.decode()))
        return b"done"

    async def who_am_i(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.seen_request_ids.append(ctx.current_request_id())
        if self.unavailable_left > 0:
            self.unavailable_left -= 1
            raise errors.Unavailable(f"{self.name} is unavailable on purpose")
        remaining = ctx.remaining_time()
        return json.dumps({"name": self.name, "request_id": ctx.current_request_id(), "remaining": remaining}).encode()

    async def forward(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        assert self.downstream is not None
        method, _, payload = request.partition(b":")
        return await self.downstream.call(method.decode(), payload)  # type: ignore[no-any-return]

    def unimplemented(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise NotImplementedError

    async def lookup(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Echoes the caller's name whole in its error, as a careless NOT_FOUND would."""
        raise errors.NotFound(f"model '{request.decode()}' is not registered")

    async def freeze(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Blocks the whole event loop (as a burst of CPU-bound calls does) until :attr:`thaw`."""
        self.frozen.set()
        self.thaw.wait(30)
        return b"thawed"

    async def hold(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.holding.set()
        await self.held.wait()
        return b"released"

    async def count(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for i in range(int(request.decode())):
            yield str(i).encode()

    async def join(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        self.seen_request_ids.append(ctx.current_request_id())
        return b"".join([request async for request in requests])

    def handler(self) -> grpc.GenericRpcHandler:
        unary = grpc.unary_unary_rpc_method_handler
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Echo": unary(self.echo),
                "Fail": unary(self.fail),
                "Crash": unary(self.crash),
                "Slow": unary(self.slow),
                "WhoAmI": unary(self.who_am_i),
                "Forward": unary(self.forward),
                "Unimplemented": unary(self.unimplemented),
                "Lookup": unary(self.lookup),
                "Hold": unary(self.hold),
                "Freeze": unary(self.freeze),
                "Count": grpc.unary_stream_rpc_method_handler(self.count),
                "Join": grpc.stream_unary_rpc_method_handler(self.join),
            },
        )


class TestSettings(ServiceSettings):
    """Settings of the test service."""

    __test__ = False


StartServer = Callable[..., Awaitable[tuple[GrpcServer, EchoService]]]


@pytest.fixture
def log_stream() -> io.StringIO:
    """Everything logged during the test, as JSON lines."""
    stream = io.StringIO()
    configure_logging("chassis-test", "DEBUG", stream=stream)
    return stream


@pytest.fixture
async def start_server(log_stream: io.StringIO) -> AsyncIterator[StartServer]:
    """Start test servers on free ports; all are stopped at the end of the test."""
    started: list[GrpcServer] = []

    async def start(name: str = "echo", **settings: Any) -> tuple[GrpcServer, EchoService]:
        service = EchoService(name)
        server = GrpcServer(TestSettings(service_name=name, **settings))
        server.add_generic_handlers([service.handler()], SERVICE)
        await server.start()
        started.append(server)
        return server, service

    yield start
    for server in started:
        await server.stop(0)


MakeClient = Callable[..., ServiceClient]


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """ServiceClients over static discovery: ``make_client({"svc": [addr]}, "svc", idempotent=...)``."""
    pool = ChannelPool(Metrics("test-client"))

    def build(targets: dict[str, list[str]], service: str, **client: Any) -> ServiceClient:
        idempotent = client.pop("idempotent", ())
        return ServiceClient(
            service,
            EchoStub,
            discovery=StaticDiscovery(DiscoverySettings(static=targets)),
            channels=pool,
            settings=ClientSettings(**client),
            idempotent=idempotent,
        )

    yield build
    await pool.close()


@pytest.fixture
def log_events(log_stream: io.StringIO) -> Callable[[], list[dict[str, Any]]]:
    """The JSON log lines written so far in this test."""
    return lambda: [json.loads(line) for line in log_stream.getvalue().splitlines() if line.startswith("{")]


@pytest.fixture
def echo_stub() -> type[EchoStub]:
    """The stub class of the raw test service."""
    return EchoStub


@pytest.fixture
def echo_service_class() -> type[EchoService]:
    """The test service's class, to subclass with other behaviors."""
    return EchoService


Traced = tuple[GrpcServer, EchoService, Tracing]


@pytest.fixture
async def traced() -> AsyncIterator[Callable[..., Awaitable[Traced]]]:
    """Start echo servers whose interceptor and downstream client (to ``downstream``) trace to ``endpoint``."""
    started: list[tuple[GrpcServer, ChannelPool, Tracing]] = []

    async def start(
        name: str,
        endpoint: str,
        ratio: float = 1.0,
        downstream: str | None = None,
        service_cls: type[EchoService] = EchoService,
    ) -> Traced:
        settings = TestSettings(service_name=name, tracing=TracingSettings(endpoint=endpoint, sample_ratio=ratio))
        metrics = Metrics(name)
        tracing = Tracing.create(settings.tracing, name, metrics)
        assert tracing is not None
        service = service_cls(name)
        server = GrpcServer(settings, metrics=metrics, tracing=tracing)
        server.add_generic_handlers([service.handler()], SERVICE)
        pool = ChannelPool(metrics)
        if downstream is not None:
            service.downstream = ServiceClient(
                "down",
                EchoStub,
                discovery=StaticDiscovery(DiscoverySettings(static={"down": [downstream]})),
                channels=pool,
                settings=ClientSettings(),
                tracing=tracing,
            )
        await server.start()
        started.append((server, pool, tracing))
        return server, service, tracing

    yield start
    for server, pool, tracing in started:
        await server.stop(0)
        await pool.close()
        await tracing.shutdown()
