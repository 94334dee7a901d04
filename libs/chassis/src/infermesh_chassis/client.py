"""The client side of the chassis: reused channels, deadlines, idempotent retries, one error boundary.

- :class:`ChannelPool` keeps one ``grpc.aio.Channel`` per target for the life of the
  process (plain channels: no client interceptor, which would cost every call an extra task and
  new call details).
- :class:`ServiceClient` is the one client boundary. It calls one logical service found through
  discovery: it picks an instance (power of two choices on in-flight calls), passes the current
  request id on (``x-request-id`` in ``metadata=``, or inside the ``traceparent`` when tracing is on
  and the trace is one the mesh started: its trace id is the request id), puts a deadline on every call (``timeout=``,
  the smaller of the call's own timeout and what is left of the inbound request's deadline),
  records the client-side RED metrics per method (metric children looked up once), retries with
  exponential backoff and jitter only for methods declared idempotent and only on retryable
  statuses (preferring another instance each time), and converts every ``grpc.RpcError`` into the
  project's error type in :meth:`ServiceClient.call`, the one place where that happens. With
  tracing on (:mod:`.tracing`), each attempt is one CLIENT span, child of the current span, whose
  W3C ``traceparent`` goes in ``metadata=``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc

from infermesh_chassis import context as ctx
from infermesh_chassis.discovery import Balancer, Discovery, Instance
from infermesh_chassis.errors import DeadlineExceeded, InfermeshError, from_rpc_error
from infermesh_chassis.interceptors import CallRecorder
from infermesh_chassis.metrics import Metrics, RpcMetrics
from infermesh_chassis.retry import Backoff, retry
from infermesh_chassis.settings import ClientSettings
from infermesh_chassis.tracing import TRACEPARENT_METADATA_KEY, Span, Tracing, end_span, exemplar_of

__all__ = ["RECONNECT_OPTIONS", "RETRYABLE_CODES", "ChannelPool", "ServiceClient"]

RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
"""Statuses after which an idempotent call is tried again (elsewhere, after a backoff)."""

MiB = 1024 * 1024

RECONNECT_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
"""A restarted instance is dialled again within about two seconds (gRPC's default backoff grows to
two minutes, so a service that came back stayed unused long after it was healthy)."""


class ChannelPool:
    """One channel per target, created on first use and kept until :meth:`close`."""

    def __init__(self, metrics: Metrics, *, max_message_bytes: int = 64 * MiB) -> None:
        self.metrics: RpcMetrics = metrics.client
        """The client-side RED metrics of the calls made through these channels."""
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.enable_retries", 0),
            *RECONNECT_OPTIONS,
        ]
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, target: str) -> grpc.aio.Channel:
        """The channel to ``target`` (``host:port``)."""
        channel = self._channels.get(target)
        if channel is None:
            channel = grpc.aio.insecure_channel(target, options=self._options)
            self._channels[target] = channel
        return channel

    async def close(self) -> None:
        """Close every channel."""
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


class ServiceClient:
    """Calls one logical service through a generated stub (see the module docstring).

    ``stub_factory`` is the generated ``...Stub`` class; ``idempotent`` names the methods
    that may be retried (reads, and writes that are idempotent by design).
    """

    def __init__(
        self,
        service: str,
        stub_factory: Callable[[grpc.aio.Channel], Any],
        *,
        discovery: Discovery,
        channels: ChannelPool,
        settings: ClientSettings,
        idempotent: Iterable[str] = (),
        balancer: Balancer | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.service = service
        self._stub_factory = stub_factory
        self._discovery = discovery
        self._channels = channels
        self._settings = settings
        self._idempotent = frozenset(idempotent)
        self._balancer = balancer or Balancer()
        self._stubs: dict[str, Any] = {}
        self._recorders: dict[str, CallRecorder] = {}
        self._tracing = tracing
        self._span_names: dict[str, str] = {}

    def _stub(self, instance: Instance) -> Any:
        stub = self._stubs.get(instance.address)
        if stub is None:
            channel = _NamingChannel(self._channels.get(instance.address))
            stub = self._stubs[instance.address] = self._stub_factory(channel)
            for name, full_method in channel.methods.items():
                if name not in self._recorders:
                    self._recorders[name] = CallRecorder(self._channels.metrics, full_method)
                    self._span_names[name] = full_method[1:]
        return stub

    def _timeout(self, timeout_s: float | None) -> float:
        own = self._settings.default_timeout_s if timeout_s is None else timeout_s
        remaining = ctx.remaining_time()
        if remaining is None:
            return own
        if remaining <= 0:
            raise DeadlineExceeded(f"{self.service}: the caller's deadline has already passed")
        return min(own, remaining)

    async def call(
        self,
        method: str,
        request: Any,
        *,
        timeout_s: float | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> Any:
        """Call ``method`` with ``request`` and return its response, or raise an InfermeshError.

        The current request id goes in ``x-request-id`` unless ``metadata`` has one; with tracing on, a
        ``traceparent`` whose trace id is that request id (a trace the mesh started) carries it alone.
        """
        current = ctx.current()
        rid = None if current is None else current.request_id
        if rid is not None and any(key == ctx.REQUEST_ID_METADATA_KEY for key, _ in metadata):
            rid = None
        with_rid = metadata if rid is None else ((ctx.REQUEST_ID_METADATA_KEY, rid), *metadata)
        unsampled: tuple[tuple[str, str], ...] = ()  # every attempt's metadata in an unsampled request
        if self._tracing is not None and current is not None and current.traceparent:
            passed = current.traceparent
            unsampled = ((TRACEPARENT_METADATA_KEY, passed), *(metadata if passed[3:35] == rid else with_rid))
        failed: set[str] = set()
        rpc_error: InfermeshError | None = None

        async def attempt() -> Any:
            nonlocal rpc_error
            timeout = self._timeout(timeout_s)
            instances = await self._discovery.resolve(self.service)
            fresh = [i for i in instances if i.address not in failed] or instances
            instance = self._balancer.pick(fresh)
            call = getattr(self._stub(instance), method)
            recorder = self._recorders.get(method)
            started = time.perf_counter()
            span = None
            sent = unsampled or with_rid
            if self._tracing is not None and not unsampled:
                span, traceparent = self._tracing.start_client(
                    self._span_names.get(method, method), instance.address, current
                )
                sent = ((TRACEPARENT_METADATA_KEY, traceparent), *(metadata if traceparent[3:35] == rid else with_rid))
            try:
                with self._balancer.track(instance):
                    response = await call(request, timeout=timeout, metadata=sent)
            except grpc.RpcError as exc:
                _ended(exc.code(), started, recorder, span)
                failed.add(instance.address)
                rpc_error = from_rpc_error(exc, f"{self.service}/{method} at {instance.address}")
                raise rpc_error from None
            except asyncio.CancelledError:
                _ended(grpc.StatusCode.CANCELLED, started, recorder, span)
                raise
            _ended(grpc.StatusCode.OK, started, recorder, span)
            return response

        def retryable(error: Exception) -> bool:
            """Only a retryable status of the call itself (not a deadline already passed, nor discovery)."""
            return rpc_error is not None and error is rpc_error and rpc_error.status_code in RETRYABLE_CODES

        def within_deadline(error: Exception, delay_s: float) -> None:
            remaining = ctx.remaining_time()
            if remaining is not None and delay_s >= remaining:
                raise error

        if method not in self._idempotent:
            return await attempt()
        return await retry(
            attempt,
            Backoff(self._settings.initial_backoff_s, self._settings.max_backoff_s, jitter=0.5),
            retry_on=retryable,
            attempts=self._settings.max_attempts,
            on_failure=within_deadline,
        )


def _ended(code: grpc.StatusCode, started: float, recorder: CallRecorder | None, span: Span | None) -> None:
    """Count one attempt that ended with ``code`` and end its span (a sampled one's trace id as the exemplar)."""
    exemplar = None
    if span is not None:
        end_span(span, code)
        exemplar = exemplar_of(span)
    if recorder is not None:
        recorder.record(code, started, exemplar)


class _NamingChannel:
    """A channel handed to a stub factory: builds the stub's callables and notes each method's full name."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self.methods: dict[str, str] = {}
        """Method name → full method name (``/pkg.Service/Method``)."""

    def _note(self, method: str) -> None:
        self.methods[method.rpartition("/")[2]] = method

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self._note(method)
        return self._channel.unary_unary(method, *args, **kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self._note(method)
        return self._channel.unary_stream(method, *args, **kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self._note(method)
        return self._channel.stream_unary(method, *args, **kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self._note(method)
        return self._channel.stream_stream(method, *args, **kwargs)
