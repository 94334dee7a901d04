"""The business center's own types: what the core computes with, free of any transport.

The enums of answers (degradation reason, served-by step, route source) are the contract's
numbers (``infermesh.common.v1`` and ``infermesh.bizcenter.v1``), re-exported here as plain
ints so the core can name them without importing a front.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from infermesh.bizcenter.v1 import biz_center_pb2 as biz_pb
from infermesh.common.v1 import common_pb2

__all__ = [
    "Assignment",
    "Degradation",
    "Hop",
    "ModelTarget",
    "PredictInput",
    "PredictOutcome",
    "Prediction",
    "Principal",
    "RawTensor",
    "Reason",
    "Route",
    "ServedBy",
    "error_field",
]

_FIELD = re.compile(r"^([a-z_][a-z0-9_.\[\]]*): ")


def error_field(message: str) -> str:
    """The request field an INVALID_ARGUMENT message names first (``"features.age: ..."``), or ""."""
    match = _FIELD.match(message)
    return match.group(1) if match else ""


class Reason:
    """Why an answer is degraded (``infermesh.common.v1.DegradationReason``)."""

    NONE = common_pb2.DEGRADATION_REASON_UNSPECIFIED
    CIRCUIT_OPEN = common_pb2.DEGRADATION_REASON_CIRCUIT_OPEN
    DEADLINE_EXCEEDED = common_pb2.DEGRADATION_REASON_DEADLINE_EXCEEDED
    DOWNSTREAM_ERROR = common_pb2.DEGRADATION_REASON_DOWNSTREAM_ERROR
    FEATURES_UNAVAILABLE = common_pb2.DEGRADATION_REASON_FEATURES_UNAVAILABLE
    FEATURES_FALLBACK = common_pb2.DEGRADATION_REASON_FEATURES_FALLBACK
    MODEL_UNAVAILABLE = common_pb2.DEGRADATION_REASON_MODEL_UNAVAILABLE
    DOWNSTREAM_OVERLOADED = common_pb2.DEGRADATION_REASON_DOWNSTREAM_OVERLOADED
    OTHER = common_pb2.DEGRADATION_REASON_OTHER


class ServedBy:
    """Which step produced an answer (``infermesh.common.v1.ServedBy``)."""

    PRIMARY = common_pb2.SERVED_BY_PRIMARY
    ALTERNATE_MODEL = common_pb2.SERVED_BY_ALTERNATE_MODEL
    CACHED_SCORE = common_pb2.SERVED_BY_CACHED_SCORE
    RULE_DEFAULT = common_pb2.SERVED_BY_RULE_DEFAULT


class Route:
    """What decided the model (``infermesh.bizcenter.v1.RouteSource``)."""

    DEFAULT = biz_pb.ROUTE_SOURCE_DEFAULT
    EXPERIMENT = biz_pb.ROUTE_SOURCE_EXPERIMENT
    GRAY_RELEASE = biz_pb.ROUTE_SOURCE_GRAY_RELEASE
    FALLBACK = biz_pb.ROUTE_SOURCE_FALLBACK


@dataclass(frozen=True, slots=True)
class ModelTarget:
    """A model with an optional pinned version or alias (neither: the model's traffic policy decides)."""

    model: str
    version: int = 0
    alias: str = ""

    def __str__(self) -> str:
        if self.alias:
            return f"{self.model}@{self.alias}"
        return f"{self.model}:{self.version}" if self.version else self.model


@dataclass(frozen=True, slots=True)
class RawTensor:
    """One output tensor as the model returned it (KServe v2 raw bytes)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes


@dataclass(frozen=True, slots=True)
class Prediction:
    """A model answer after the scene's response mapping."""

    scores: Mapping[str, float]
    label: str = ""
    outputs: tuple[RawTensor, ...] = ()


@dataclass(frozen=True, slots=True)
class Degradation:
    """Why an answer is degraded; ``reason`` NONE with ``served_by`` PRIMARY is a normal answer."""

    reason: int = Reason.NONE
    detail: str = ""
    served_by: int = ServedBy.PRIMARY

    @property
    def degraded(self) -> bool:
        """True unless the primary path answered with complete inputs."""
        return self.reason != Reason.NONE or self.served_by != ServedBy.PRIMARY


@dataclass(frozen=True, slots=True)
class Assignment:
    """The variant one unit sees in one layer of one experiment."""

    experiment: str
    layer: str
    variant: str
    bucket: int


@dataclass(frozen=True, slots=True)
class Hop:
    """Time spent in one hop of a request, in milliseconds."""

    name: str
    latency_ms: float


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: who, which scenes (None: all), admin or not, and its own rate limit."""

    name: str
    scenes: frozenset[str] | None
    admin: bool = False
    rate_per_s: float = 0.0
    burst: int = 0
    limit_mode: str = "default"

    def allows(self, scene: str) -> bool:
        """Whether this caller may use ``scene``."""
        return self.scenes is None or scene in self.scenes


@dataclass(frozen=True, slots=True)
class PredictInput:
    """One prediction asked for: scene, unit, caller-known values and attributes."""

    scene: str
    unit_id: str
    features: Mapping[str, common_pb2.Value] = field(default_factory=dict)
    attributes: Mapping[str, str] = field(default_factory=dict)
    request_id: str = ""
    """The caller's request id for this item; empty takes the call's."""


@dataclass(frozen=True, slots=True)
class PredictOutcome:
    """The answer to a :class:`PredictInput`, with everything the response must name."""

    request_id: str
    scene: str
    scene_config_version: int
    prediction: Prediction
    variant: str
    assignments: tuple[Assignment, ...]
    model: str
    model_version: int
    degradation: Degradation
    hops: tuple[Hop, ...]
    route: int
    lineage: common_pb2.FeatureLineage | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
