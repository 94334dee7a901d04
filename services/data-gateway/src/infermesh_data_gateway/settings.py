"""Settings of the data gateway: the chassis' settings under the ``DATA_GATEWAY_`` prefix, plus where
the feature definitions are, the batch engines, push over NATS and request limits."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
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
    """Feature rows pushed over NATS (the same validation and writes as PushFeatures)."""

    url: str = ""
    """NATS server URL (``nats://127.0.0.1:4222``); empty: no subscription."""
    subject: str = "infermesh.features.push"
    """Subject of push messages (a PushFeaturesRequest, protobuf or JSON)."""
    queue_group: str = "data-gateway"
    """Queue group: each message is handled by one gateway instance."""


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
