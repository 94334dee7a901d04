"""Typed settings for every service: a YAML file, then environment overrides, validated at start.

Each service subclasses :class:`ServiceSettings` with its own env prefix
(``MODEL_GATEWAY_``...) and its own fields. Nested fields are set from the environment with
``__``: ``MODEL_GATEWAY_GRPC__PORT=50051``. The file comes from ``--config`` or
``<PREFIX>CONFIG_FILE``. A missing or malformed setting stops the process at start with one
line naming the setting and what is wrong (:func:`load_settings_or_exit`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from infermesh_chassis.discovery import DiscoverySettings

__all__ = [
    "ClientSettings",
    "EventSettings",
    "GrpcServerSettings",
    "LoggingSettings",
    "MetricsSettings",
    "ServiceSettings",
    "SettingsError",
    "TracingSettings",
    "load_settings",
    "load_settings_or_exit",
]

MiB = 1024 * 1024
MIN_HASH_KEY_CHARS = 16
"""Shortest unit-id hash key a service accepts."""


class GrpcServerSettings(BaseModel):
    """How the service's gRPC server listens and behaves."""

    host: str = "127.0.0.1"
    """Address to bind; 127.0.0.1 locally, 0.0.0.0 in a container."""
    port: int = Field(0, ge=0, le=65535)
    """Port to bind; 0 picks a free port (read back after start)."""
    advertise_host: str | None = None
    """Host registered in discovery when it differs from ``host``; unset with ``host`` 0.0.0.0, the
    machine's host name (a container's name in compose), so each replica registers its own address."""
    max_receive_message_bytes: int = Field(64 * MiB, gt=0)
    """Largest request message accepted; larger ones are refused with RESOURCE_EXHAUSTED."""
    max_send_message_bytes: int = Field(64 * MiB, gt=0)
    """Largest response message sent."""
    max_concurrent_rpcs: int | None = Field(2048, gt=0)
    """Calls beyond this many in flight (long-lived streams included) are refused at once with
    RESOURCE_EXHAUSTED instead of queuing without bound (None: no cap)."""
    max_pending_calls: int = Field(1024, gt=0)
    """Calls that have arrived but that the event loop has not yet taken up, beyond which gRPC core
    refuses new ones at once, without any Python running (the caller sees CANCELLED). Under a burst
    the queue forms there, before any handler or interceptor can refuse: this bounds the wait of
    every admitted call and makes the refusal of the rest immediate. At about 1 ms of event-loop time
    per call the default bounds that wait near a second; a front door with a tight SLO sets less (the
    business center: 128). A refusal in Python cannot replace this bound: grpc.aio takes calls up one
    per event-loop turn, so a call refused by a handler still waits behind every call before it."""
    min_deadline_ms: float = Field(0.0, ge=0)
    """A call that reaches its handler with no more than this left of its deadline is answered
    DEADLINE_EXCEEDED at once, its handler never run (counted in ``grpc_server_shed_total``); 0: only
    a call whose deadline has passed. Set it to what a call needs at least to be answered in time: a
    call with less left only spends downstream work its caller will not wait for."""
    keepalive_time_s: float = Field(30.0, gt=0)
    """Interval of server keepalive pings on idle connections."""
    keepalive_timeout_s: float = Field(10.0, gt=0)
    """How long to wait for a keepalive ack before closing the connection."""
    grace_period_s: float = Field(10.0, ge=0)
    """On shutdown, how long in-flight calls get to finish before they are cancelled."""
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    """Processes serving this one port (each its own server bound with ``SO_REUSEPORT``, under one
    parent that restarts them); ``auto``: one per core this process may run on. 1 serves from this very
    process, with no parent."""

    @property
    def worker_count(self) -> int:
        """``workers`` as a number (``auto`` resolved to the cores this process may use)."""
        return len(os.sched_getaffinity(0)) if self.workers == "auto" else self.workers


class MetricsSettings(BaseModel):
    """The Prometheus /metrics endpoint."""

    enabled: bool = True
    """Serve /metrics at all."""
    host: str = "127.0.0.1"
    """Address of the /metrics endpoint."""
    port: int = Field(0, ge=0, le=65535)
    """Port of the /metrics endpoint; 0 picks a free port."""


class LoggingSettings(BaseModel):
    """Structured logging."""

    level: str = "INFO"
    """Minimum level: DEBUG, INFO, WARNING, ERROR."""
    json_format: bool = True
    """JSON lines (production) or console lines (a terminal)."""


class ClientSettings(BaseModel):
    """Calls this service makes to other services."""

    default_timeout_s: float = Field(5.0, gt=0)
    """Deadline of a downstream call when neither the caller nor the inbound request sets one."""
    max_attempts: int = Field(3, ge=1, le=10)
    """Attempts for idempotent calls that fail with a retryable status (non-idempotent: always 1)."""
    initial_backoff_s: float = Field(0.02, gt=0)
    """Backoff before the first retry; doubles each attempt, with jitter."""
    max_backoff_s: float = Field(1.0, gt=0)
    """Upper bound of a retry backoff."""


class EventSettings(BaseModel):
    """The non-blocking event emitter that reports to the monitor, and the queue between them."""

    enabled: bool = True
    """Emit events at all."""
    buffer_size: int = Field(10_000, gt=0)
    """Events held in memory waiting to be sent; beyond it new events are dropped and counted."""
    batch_size: int = Field(500, gt=0)
    """Most events sent in one batch."""
    flush_interval_s: float = Field(0.2, gt=0)
    """Longest an event waits in the buffer before its batch is sent."""
    transport: Literal["grpc", "nats"] = "grpc"
    """``nats``: publish batches to NATS JetStream (production); ``grpc``: call the monitor's
    ReportEvents directly (the fallback, and what tests without a queue use)."""
    nats_url: str = "nats://127.0.0.1:4222"
    """NATS server(s), comma-separated, for the ``nats`` transport and the monitor's consumer."""
    nats_stream: str = "INFERMESH_EVENTS"
    """JetStream stream holding the events (created by whichever side connects first)."""
    nats_subject: str = "infermesh.events"
    """Subject prefix: a service publishes on ``<prefix>.<service>``; the stream takes ``<prefix>.>``."""
    nats_connect_timeout_s: float = Field(2.0, gt=0)
    """How long a connection attempt to NATS may take before the batch goes to the spool."""
    nats_publish_timeout_s: float = Field(2.0, gt=0)
    """How long to wait for JetStream to confirm a batch (its PubAck) before counting it as failed."""
    stream_max_age_s: float = Field(7 * 24 * 3600.0, gt=0)
    """Events older than this leave the stream even if nobody consumed them."""
    stream_max_bytes: int = Field(-1, ge=-1)
    """Size cap of the stream (oldest events go first); -1 means no cap."""
    stream_duplicate_window_s: float = Field(600.0, gt=0)
    """JetStream drops a batch published again (same Nats-Msg-Id) within this window."""
    spool_dir: Path | None = None
    """Directory where batches wait, in order, while the transport is unreachable; they are
    replayed when it returns, also after a restart. One sub-directory per service instance. None
    keeps unsent batches in memory only (bounded by ``buffer_size``)."""
    spool_max_bytes: int = Field(1024 * MiB, gt=0)
    """Disk the spool may use; batches beyond it are dropped and counted."""
    spool_fsync: bool = True
    """fsync every spooled batch, so it survives a machine crash, not only a process crash."""
    unit_id_hash_key: SecretStr = SecretStr("")
    """Key of the keyed hash (HMAC-SHA256) applied to unit ids before they leave a service; every
    service of a mesh, the monitor included, must use the same key. A service that hashes unit ids
    refuses to start without one (:meth:`check_unit_id_hash_key`); the local stack generates one per
    installation and keeps it with its data."""

    def check_unit_id_hash_key(self, env_prefix: str) -> None:
        """Raise ValueError, saying how to set it, unless a key of at least ``MIN_HASH_KEY_CHARS`` is set:
        without one the "keyed" hash of unit ids is a plain hash, reversed by hashing candidate ids."""
        if len(self.unit_id_hash_key.get_secret_value()) < MIN_HASH_KEY_CHARS:
            raise ValueError(
                f"events.unit_id_hash_key: a key of at least {MIN_HASH_KEY_CHARS} characters is required, the "
                f"same for every service of the mesh ({env_prefix}EVENTS__UNIT_ID_HASH_KEY; e.g. `openssl rand "
                "-hex 32`); without it unit ids in events are hashed without a key"
            )


class TracingSettings(BaseModel):
    """Distributed tracing (OpenTelemetry, exported as OTLP over gRPC; see :mod:`infermesh_chassis.tracing`)."""

    endpoint: str = ""
    """``host:port`` of an OTLP/gRPC trace collector (the monitor, Jaeger, an OpenTelemetry collector);
    empty turns tracing off, at no cost per request."""
    sample_ratio: float = Field(0.01, ge=0.0, le=1.0)
    """Share of the requests that start here which are traced; a request that arrives with a trace
    context keeps its caller's decision (parent-based sampling)."""
    service_version: str | None = None
    """``service.version`` of the spans; unset, the installed package's version."""
    export_interval_s: float = Field(1.0, gt=0)
    """Longest a finished span waits before its batch is exported."""
    export_timeout_s: float = Field(2.0, gt=0)
    """Bound of one export attempt; a batch that fails is dropped and counted, never retried."""
    max_queue_spans: int = Field(4096, gt=0)
    """Finished spans held for export; beyond it the oldest are dropped and counted."""
    max_export_batch_spans: int = Field(512, gt=0)
    """Most spans in one export call."""


class ServiceSettings(BaseSettings):
    """Settings every service has. Subclasses add their own and set ``env_prefix``."""

    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="forbid", validate_default=True)

    service_name: str
    """Logical name used in discovery, logs and metric names (e.g. ``model-gateway``)."""
    instance_id: str | None = None
    """Unique id of this process in discovery; derived from name, host and port when unset."""
    grpc: GrpcServerSettings = GrpcServerSettings()
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()
    discovery: DiscoverySettings = DiscoverySettings()
    client: ClientSettings = ClientSettings()
    events: EventSettings = EventSettings()
    tracing: TracingSettings = TracingSettings()
    ready_file: Path | None = None
    """Once serving, the process writes the ports it bound here (JSON, written to a temporary name
    then renamed, so a reader never sees half of it) and removes it when it stops: whoever started it
    waits for this file instead of guessing a port (``--ready-file`` sets it too)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file; explicit keyword arguments (tests) beat both.
        return (env_settings, init_settings)


class SettingsError(Exception):
    """Settings could not be loaded; the message is one line naming what is wrong."""


S = TypeVar("S", bound=ServiceSettings)


def _env_prefix(cls: type[ServiceSettings]) -> str:
    return str(cls.model_config.get("env_prefix", ""))


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SettingsError(f"settings file {path} does not exist") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise SettingsError(f"settings file {path}{where} is not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"settings file {path} must hold a mapping of settings, not {type(data).__name__}")
    return data


def _describe(cls: type[ServiceSettings], exc: ValidationError, source: str) -> str:
    prefix = _env_prefix(cls)
    parts = []
    for err in exc.errors():
        dotted = ".".join(str(p) for p in err["loc"])
        env = prefix + "__".join(str(p) for p in err["loc"]).upper()
        message = err["msg"]
        if err["type"] == "missing":
            message = f"required but not set (set {env} or '{dotted}' in the settings file)"
        elif err["type"] == "extra_forbidden":
            message = "unknown setting"
        parts.append(f"{dotted}: {message}")
    return f"invalid settings{source}: " + "; ".join(parts)


def load_settings(cls: type[S], config_file: str | Path | None = None, **overrides: Any) -> S:
    """Load ``cls`` from its settings file (if any) with environment overrides; raise SettingsError."""
    prefix = _env_prefix(cls)
    path = config_file or os.environ.get(f"{prefix}CONFIG_FILE")
    data = _read_file(Path(path)) if path else {}
    data.update(overrides)
    source = f" (file {path} + {prefix}* environment)" if path else f" ({prefix}* environment)"
    try:
        return cls(**data)
    except ValidationError as exc:
        raise SettingsError(_describe(cls, exc, source)) from None


def load_settings_or_exit(cls: type[S], config_file: str | Path | None = None, **overrides: Any) -> S:
    """:func:`load_settings`, or print one clear line to stderr and exit with status 2."""
    try:
        return load_settings(cls, config_file, **overrides)
    except SettingsError as exc:
        name = overrides.get("service_name") or cls.model_fields["service_name"].default or cls.__name__
        print(f"{name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
