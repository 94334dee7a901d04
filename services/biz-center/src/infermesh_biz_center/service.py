"""The business center assembled on a chassis :class:`~infermesh_chassis.app.Runtime`.

:func:`create` builds every piece from the settings (store and registry, authenticator, rate
limits with Redis when configured, the downstream clients, TLS channels when configured, the
event emitter, the core, the consumers of the scenes' stream bindings), adds the gRPC servicers
to the runtime's server (with a TLS listener when configured), starts the Thrift front, and
registers every cleanup with the runtime.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import grpc

from infermesh.bizcenter.v1 import biz_center_pb2, biz_center_pb2_grpc
from infermesh.common.v1 import common_pb2
from infermesh_biz_center.auth import Authenticator
from infermesh_biz_center.downstream import (
    DATA_GATEWAY_IDEMPOTENT,
    DATA_GATEWAY_STUB,
    INFERENCE_IDEMPOTENT,
    INFERENCE_STUB,
    MODEL_CONTROL_IDEMPOTENT,
    MODEL_CONTROL_STUB,
    MONITOR_INGEST,
    FeatureClient,
    ModelClient,
)
from infermesh_biz_center.grpc_front import AdminServicer, PredictServicer
from infermesh_biz_center.limits import RateLimits
from infermesh_biz_center.predictor import Predictor
from infermesh_biz_center.registry import ConfigRegistry
from infermesh_biz_center.settings import Settings
from infermesh_biz_center.store import ConfigStore
from infermesh_biz_center.streaming import StreamBindings
from infermesh_biz_center.thrift_front import ThriftFront
from infermesh_biz_center.tls import SecureChannelPool, server_credentials
from infermesh_chassis.app import Runtime
from infermesh_chassis.client import ChannelPool, ServiceClient
from infermesh_chassis.events import AuditPayload, EventEmitter, EventSource, MonitorSink, open_event_sink
from infermesh_chassis.logs import get_logger

__all__ = ["BizCenter", "create"]

_log = get_logger("infermesh_biz_center.service")


@dataclass
class BizCenter:
    """The running pieces of one business center instance."""

    settings: Settings
    registry: ConfigRegistry
    predictor: Predictor
    auth: Authenticator
    thrift: ThriftFront | None
    tls_port: int | None
    streams: StreamBindings | None


def _instance(settings: Settings) -> str:
    return settings.instance_id or f"{settings.service_name}-{socket.gethostname()}-{os.getpid()}"


async def create(settings: Settings, runtime: Runtime) -> BizCenter:
    """Build the business center on ``runtime`` (see the module docstring); the gRPC server is not started."""
    instance = _instance(settings)
    channels: ChannelPool = runtime.channels
    if settings.client_tls is not None:
        channels = SecureChannelPool(
            runtime.metrics, settings.client_tls, max_message_bytes=settings.grpc.max_send_message_bytes
        )
        runtime.on_stop(channels.close)

    def client(service: str, stub: type, idempotent: tuple[str, ...]) -> ServiceClient:
        return ServiceClient(
            service,
            stub,
            discovery=runtime.discovery,
            channels=channels,
            settings=settings.client,
            idempotent=idempotent,
            tracing=runtime.tracing,
        )

    emitter: EventEmitter | None = None
    if settings.events.enabled:
        # the chassis' sink (NATS or the monitor's RPC, spooled as configured), with a client that
        # speaks TLS when client_tls is set
        sink = open_event_sink(
            settings.events,
            settings.service_name,
            runtime.metrics,
            lambda: MonitorSink(
                client(settings.downstream.monitor, MONITOR_INGEST.stub, (MONITOR_INGEST.method,)), MONITOR_INGEST
            ),
        )
        close = getattr(sink, "close", None)
        if close is not None:
            runtime.on_stop(close)
        emitter = EventEmitter(sink, settings.events, runtime.metrics)
        emitter.start()
        runtime.on_stop(emitter.stop)

    audit_source = EventSource(settings.service_name, instance)

    def on_audit(entry: common_pb2.AuditEntry) -> None:
        if emitter is not None:
            emitter.emit(audit_source, AuditPayload(settings.service_name, entry))

    redis = None
    if settings.rate_limit.redis_url is not None:
        from redis.asyncio import Redis  # noqa: PLC0415  (only the global rate-limit mode needs it)

        timeout = settings.rate_limit.redis_timeout_s
        redis = Redis.from_url(settings.rate_limit.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
        runtime.on_stop(redis.aclose)

    store = await ConfigStore.open(settings.config.store_path)
    registry = ConfigRegistry(
        store,
        global_limits=redis is not None,
        seed_file=settings.config.seed_file,
        watch_interval_s=settings.config.watch_interval_s,
        on_audit=on_audit,
    )
    await registry.start()
    runtime.on_stop(registry.stop)

    downstream = settings.downstream
    auth = Authenticator(settings.auth)
    predictor = Predictor(
        registry,
        FeatureClient(
            client(downstream.data_gateway, DATA_GATEWAY_STUB, DATA_GATEWAY_IDEMPOTENT),
            metadata_ttl_s=downstream.metadata_ttl_s,
        ),
        ModelClient(
            client(downstream.model_gateway, INFERENCE_STUB, INFERENCE_IDEMPOTENT),
            client(downstream.model_gateway, MODEL_CONTROL_STUB, MODEL_CONTROL_IDEMPOTENT),
            metadata_ttl_s=downstream.metadata_ttl_s,
        ),
        RateLimits(settings.rate_limit, redis, workers=runtime.worker_count),
        predict=settings.predict,
        resilience=settings.resilience,
        metrics=runtime.metrics,
        emitter=emitter,
        instance=instance,
        unit_hash_key=settings.events.unit_id_hash_key.get_secret_value(),
    )

    streams = await _start_streams(settings, runtime, registry, predictor)

    tls_port: int | None = None
    tls = settings.grpc_tls

    def add_predict(servicer: PredictServicer, server: grpc.aio.Server) -> None:
        nonlocal tls_port
        biz_center_pb2_grpc.add_BizCenterServiceServicer_to_server(servicer, server)
        # the chassis binds the plaintext port; the TLS listener serves the same handlers (first worker only)
        if tls is not None and runtime.worker_index == 0:
            tls_port = server.add_secure_port(f"{tls.host}:{tls.port}", server_credentials(tls))
            _log.info("grpc_tls_listener", address=f"{tls.host}:{tls_port}", mutual=tls.ca_file is not None)

    services = biz_center_pb2.DESCRIPTOR.services_by_name
    runtime.server.add_servicer(add_predict, PredictServicer(predictor, auth), services["BizCenterService"].full_name)
    runtime.server.add_servicer(
        biz_center_pb2_grpc.add_BizCenterAdminServiceServicer_to_server,
        AdminServicer(registry, auth, streams),
        services["BizCenterAdminService"].full_name,
    )

    if tls_port is not None:
        runtime.server.report_port("grpc_tls", tls_port)
    thrift = await _start_thrift(settings, runtime, predictor, auth)
    return BizCenter(settings, registry, predictor, auth, thrift, tls_port, streams)


async def _start_streams(
    settings: Settings, runtime: Runtime, registry: ConfigRegistry, predictor: Predictor
) -> StreamBindings | None:
    """The consumers of the scenes' stream bindings when enabled: started, stopped at shutdown (first)."""
    if not settings.streaming.enabled:
        return None
    streams = StreamBindings(
        registry,
        predictor,
        settings.streaming,
        settings.streaming.nats_url or settings.events.nats_url,
        runtime.metrics,
        watch_interval_s=settings.config.watch_interval_s,
    )
    await streams.start()
    runtime.on_stop(streams.stop)
    return streams


async def _start_thrift(
    settings: Settings, runtime: Runtime, predictor: Predictor, auth: Authenticator
) -> ThriftFront | None:
    """The Thrift front when enabled: started, its port reported in the ready file, stopped at shutdown.

    Of several workers only the first serves it (the gRPC port is the one all workers share).
    """
    if not settings.thrift.enabled or runtime.worker_index > 0:
        return None
    thrift = ThriftFront(predictor, auth, settings.thrift, runtime.metrics, runtime.tracing)
    await thrift.start()
    runtime.on_stop(lambda: thrift.stop(settings.grpc.grace_period_s))
    runtime.server.report_port("thrift", thrift.port)
    return thrift
