"""Settings of the data gateway: the chassis' settings under the ``DATA_GATEWAY_`` prefix, plus where
the feature definitions are, the batch engines, push over NATS and request limits."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import SettingsConfigDict

from infermesh_chassis.settings import ServiceSettings

_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "churn"
_EXAMPLE_VIEWS = ("customer_profile", "customer_activity")


def _default_definitions() -> Path | None:
    return _EXAMPLE if _EXAMPLE.is_dir() else None


class SparkSettings(BaseModel):
    """The Spark engine for batch work beyond one machine (the ``spark`` extra: pyspark)."""

    master: str = "local[2]"
    """Spark master URL: ``local[N]`` runs in process, ``spark://host:7077`` on a cluster."""
    bind_address: str = "127.0.0.1"
    """Address the driver binds and advertises."""
    shuffle_partitions: int = Field(4, ge=1)
    """``spark.sql.shuffle.partitions``."""
    config: dict[str, str] = Field(default_factory=dict)
    """Any further Spark configuration (``spark.executor.memory``...)."""


class NatsSettings(BaseModel):
    """Feature rows pushed over NATS, kept in a JetStream stream until a gateway has written them
    (the same validation and writes as PushFeatures)."""

    model_config = ConfigDict(extra="forbid")

    url: str = ""
    """NATS server(s) with JetStream, comma-separated (``nats://127.0.0.1:4222``); empty: no push over NATS."""
    subjects: list[str] = Field(default_factory=lambda: ["infermesh.features.push"], min_length=1)
    """Subjects of push messages (a PushFeaturesRequest, protobuf or JSON); wildcards allowed. The
    stream stores whatever is published on them, with or without JetStream's publish acknowledgement."""
    stream: str = "INFERMESH_FEATURE_PUSH"
    """JetStream stream holding the pushes (created, or brought to these settings, at every connection)."""
    stream_retention: Literal["workqueue", "limits"] = "workqueue"
    """``workqueue``: a push leaves the stream once a gateway has written it; ``limits``: pushes stay
    until ``stream_max_age_s`` / ``stream_max_bytes`` (a replayable history). Fixed when the stream
    is created."""
    stream_max_age_s: float = Field(7 * 24 * 3600.0, gt=0)
    """A push not written within this leaves the stream unwritten (the gateways were away that long)."""
    stream_max_bytes: int = Field(-1, ge=-1)
    """Size cap of the stream; when full, new pushes are refused (a JetStream publisher gets an
    error) rather than older unwritten ones dropped; -1: no cap."""
    stream_duplicate_window_s: float = Field(120.0, gt=0)
    """JetStream drops a message published again with the same ``Nats-Msg-Id`` within this window."""
    durable: str = "data-gateway"
    """Durable consumer shared by every gateway instance: each push is handled by one of them."""
    ack_wait_s: float = Field(60.0, gt=0)
    """A push not acknowledged within this is delivered again (must exceed ``write_timeout_s``)."""
    retry_delay_s: float = Field(5.0, gt=0)
    """When the online store cannot take a push, it is delivered again after this."""
    max_ack_pending: int = Field(1024, ge=1)
    """Pushes delivered and not yet acknowledged, at most, across every instance."""
    fetch_batch: int = Field(64, ge=1, le=10_000)
    """Pushes pulled per fetch (written concurrently)."""
    fetch_timeout_s: float = Field(1.0, gt=0)
    """Longest a fetch waits for pushes."""
    connect_timeout_s: float = Field(2.0, gt=0)
    """How long a connection attempt may take (the gateway keeps serving and retries in the background)."""
    request_timeout_s: float = Field(5.0, gt=0)
    """Deadline of JetStream API calls (ensuring the stream and the consumer)."""


class Settings(ServiceSettings):
    """Data gateway settings.

    Read from a YAML file (``--config`` or ``DATA_GATEWAY_CONFIG_FILE``),
    overridden by ``DATA_GATEWAY_*`` variables.
    """

    model_config = SettingsConfigDict(env_prefix="DATA_GATEWAY_")

    service_name: str = "data-gateway"
    definitions: Path | None = Field(default_factory=_default_definitions)
    """Folder (or file) of feature definitions; default: the bundled churn example; None: serve none."""
    state_dir: Path = Path("var/data-gateway")
    """Local state (the example's SQLite online store); definitions name it ``${DATA_GATEWAY_STATE_DIR}``."""
    definitions_reload_s: float = Field(5.0, ge=0)
    """How often the definitions are checked for changes (0: never); a new version becomes current."""
    materialize_on_start: list[str] | None = None
    """Feature views materialized incrementally at start (a failure is logged, the start goes on);
    unset: the bundled example's views when serving the example, else none."""
    keep_versions: int = Field(5, ge=1)
    """Definition versions kept addressable by ``definition_version``."""
    max_entities: int = Field(1000, ge=1)
    """Most entities in one GetFeatures call."""
    write_timeout_s: float = Field(10.0, gt=0)
    """Deadline of one write batch to an online store (push, materialization)."""
    batch_engine: Literal["local", "spark"] = "local"
    """Engine of batch work when a request does not name one."""
    training_chunk_rows: int = Field(10_000, ge=1)
    """Rows per streamed training-set chunk when the request does not say."""
    spark: SparkSettings = SparkSettings()
    nats: NatsSettings = NatsSettings()

    @model_validator(mode="after")
    def _example_views(self) -> Settings:
        if self.materialize_on_start is None:
            self.materialize_on_start = list(_EXAMPLE_VIEWS) if self.definitions == _EXAMPLE else []
        return self

    @model_validator(mode="after")
    def _ack_after_write(self) -> Settings:
        if self.nats.url and self.nats.ack_wait_s <= self.write_timeout_s:
            raise ValueError(
                f"nats.ack_wait_s ({self.nats.ack_wait_s}) must exceed write_timeout_s ({self.write_timeout_s}): "
                "a push is acknowledged only after its write"
            )
        return self
