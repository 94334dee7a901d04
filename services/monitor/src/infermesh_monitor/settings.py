"""Settings of the monitor: the chassis' settings under the ``MONITOR_`` prefix, plus its own.

Where the queue is comes from the chassis' ``events`` settings (``events.nats_url``,
``events.nats_stream``, ``events.nats_subject``): the monitor consumes the stream the emitters
publish to, described in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from infermesh_chassis.settings import GrpcServerSettings, ServiceSettings


class StorageSettings(BaseModel):
    """Where events are stored: ClickHouse, embedded (chdb) or a server."""

    backend: Literal["chdb", "clickhouse"] = "chdb"
    """``chdb``: ClickHouse embedded in the process (one session, data under ``chdb_path``);
    ``clickhouse``: a ClickHouse server (25.8 or newer) through clickhouse-connect."""
    chdb_path: Path = Path("var/monitor/chdb")
    """Data directory of the embedded ClickHouse; kept across restarts. Only one process may open it."""
    clickhouse_url: str = "http://127.0.0.1:8123"
    """HTTP(S) URL of the ClickHouse server (``clickhouse`` backend)."""
    clickhouse_user: str = "default"
    """User on the ClickHouse server."""
    clickhouse_password: SecretStr = SecretStr("")
    """Password of that user."""
    database: str = "infermesh"
    """Database holding the monitor's tables (created when missing)."""
    query_threads: int = Field(4, ge=1, le=64)
    """Threads that run calls to a ClickHouse server off the event loop (chdb calls run one at a time)."""
    events_ttl_days: int = Field(30, ge=1)
    """Days inference, shadow, exposure and feature-sample rows are kept."""
    feedback_ttl_days: int = Field(180, ge=1)
    """Days feedback labels are kept."""
    audit_ttl_days: int = Field(365, ge=1)
    """Days audit events are kept."""
    ledger_ttl_days: int = Field(30, ge=1)
    """Days the ids of ingested batches are kept (a batch replayed later than this is stored again)."""


class IngestSettings(BaseModel):
    """How events come in."""

    nats_enabled: bool = False
    """Consume the JetStream stream (``events.nats_*`` settings) with a durable consumer."""
    nats_durable: str = "monitor"
    """Name of the durable consumer; every monitor instance of a mesh shares it."""
    fetch_batch: int = Field(128, ge=1, le=10_000)
    """Queue messages (event batches) pulled per fetch and stored in one insert."""
    fetch_timeout_s: float = Field(1.0, gt=0)
    """Longest a fetch waits for messages."""
    ack_wait_s: float = Field(60.0, gt=0)
    """A message not acknowledged within this is delivered again (the monitor acknowledges after storing)."""
    max_ack_pending: int = Field(2048, ge=1)
    """Messages delivered and not yet acknowledged, at most."""
    recent_event_ids: int = Field(200_000, ge=0)
    """Event ids remembered to drop duplicates that arrive in a different batch (batches themselves
    are de-duplicated exactly through the ledger of batch ids)."""
    max_events_per_request: int = Field(100_000, ge=1)
    """Most events accepted in one ReportEvents call or StreamEvents message."""


class AnalysisSettings(BaseModel):
    """Windows, exports and reports."""

    export_interval_s: float = Field(10.0, gt=0)
    """How often the windowed stats exported to Prometheus are recomputed."""
    export_max_groups: int = Field(2000, ge=1)
    """Most (service, scene, variant, model, version) groups exported per window."""
    slo_p99_latency_ms: float = Field(250.0, gt=0)
    """Mesh-wide p99 latency objective, exported for the alert rules."""
    slo_error_rate: float = Field(0.01, ge=0, le=1)
    """Mesh-wide error-rate objective, exported for the alert rules."""
    drift_bins: int = Field(10, ge=2, le=100)
    """Quantile bins of numeric values when a drift request does not say."""
    drift_min_samples: int = Field(100, ge=1)
    """Fewer samples than this on either side leaves a drift entry uncomputed."""
    drift_max_samples: int = Field(100_000, ge=100)
    """Samples per feature read for a drift report or kept in a baseline (uniformly sampled down)."""
    experiment_max_predictions: int = Field(2_000_000, ge=1000)
    """Labelled predictions read per experiment or online-metric computation."""
    bootstrap_resamples: int = Field(1000, ge=100)
    """Resamples of the bootstrap test (AUC)."""


class Settings(ServiceSettings):
    """Monitor settings.

    Read from a YAML file (``--config`` or ``MONITOR_CONFIG_FILE``),
    overridden by ``MONITOR_*`` variables.
    """

    model_config = SettingsConfigDict(env_prefix="MONITOR_")

    service_name: str = "monitor"
    storage: StorageSettings = StorageSettings()
    ingest: IngestSettings = IngestSettings()
    analysis: AnalysisSettings = AnalysisSettings()

    @field_validator("grpc")
    @classmethod
    def _one_worker(cls, value: GrpcServerSettings) -> GrpcServerSettings:
        """The monitor is one process: ``auto`` means 1 and more is refused.

        Its real-time windows, alert state and ingest batches live in the process, and the embedded
        chdb store may be opened by one process only; scale it with more instances on a ClickHouse server.
        """
        if value.workers == "auto":
            return value.model_copy(update={"workers": 1})
        if value.workers > 1:
            raise ValueError(
                "the monitor runs one process (its real-time windows live in it and one process owns a chdb "
                "path): set workers to 1 or auto, and run more instances on a ClickHouse server to scale"
            )
        return value
