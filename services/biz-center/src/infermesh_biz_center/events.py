"""What the business center reports to the monitor, as event payloads of the chassis' emitter.

A Predict records one of these (plain values and the outcome it already has); the
``InferenceEvent``/``ExposureEvent`` fields are written when the emitter builds its batch, off the
request path (see :mod:`infermesh_chassis.events`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from infermesh_biz_center.domain import PredictOutcome

__all__ = ["AnswerPayload", "ExposurePayload", "FailurePayload"]


class AnswerPayload:
    """A scene answered (by its model or a fallback): an ``InferenceEvent``."""

    __slots__ = ("latency_ms", "outcome", "unit_id_hash")
    KIND: ClassVar[str] = "inference"

    def __init__(self, outcome: PredictOutcome, unit_id_hash: str, latency_ms: float) -> None:
        self.outcome = outcome
        self.unit_id_hash = unit_id_hash
        self.latency_ms = latency_ms

    def fields(self) -> Mapping[str, Any]:
        """The ``InferenceEvent`` fields."""
        outcome = self.outcome
        degradation = outcome.degradation
        hops = [{"hop": h.name, "latency_ms": h.latency_ms} for h in outcome.hops]
        hops.append({"hop": "biz_center", "latency_ms": self.latency_ms})
        return {
            "scene": outcome.scene,
            "unit_id_hash": self.unit_id_hash,
            "variant": outcome.variant,
            "model": outcome.model,
            "model_version": outcome.model_version,
            "hop_latencies": hops,
            "latency_ms": self.latency_ms,
            "degradation": {
                "degraded": degradation.degraded,
                "reason": degradation.reason,
                "detail": degradation.detail,
                "served_by": degradation.served_by,
            },
            "scores": outcome.prediction.scores,
            "label": outcome.prediction.label,
            "feature_lineage": outcome.lineage,
            "batch_size": 1,
        }


class FailurePayload:
    """A scene that could not answer: an ``InferenceEvent`` with the error."""

    __slots__ = ("error_message", "latency_ms", "scene", "status_code", "unit_id_hash")
    KIND: ClassVar[str] = "inference"

    def __init__(self, scene: str, unit_id_hash: str, latency_ms: float, status_code: int, error_message: str) -> None:
        self.scene = scene
        self.unit_id_hash = unit_id_hash
        self.latency_ms = latency_ms
        self.status_code = status_code
        self.error_message = error_message

    def fields(self) -> Mapping[str, Any]:
        """The ``InferenceEvent`` fields."""
        return {
            "scene": self.scene,
            "unit_id_hash": self.unit_id_hash,
            "latency_ms": self.latency_ms,
            "status_code": self.status_code,
            "error_message": self.error_message,
        }


class ExposurePayload:
    """A unit exposed to an experiment variant: an ``ExposureEvent``."""

    __slots__ = ("experiment", "layer", "scene", "unit_id_hash", "variant")
    KIND: ClassVar[str] = "exposure"

    def __init__(self, scene: str, experiment: str, layer: str, variant: str, unit_id_hash: str) -> None:
        self.scene = scene
        self.experiment = experiment
        self.layer = layer
        self.variant = variant
        self.unit_id_hash = unit_id_hash

    def fields(self) -> Mapping[str, Any]:
        """The ``ExposureEvent`` fields."""
        return {
            "scene": self.scene,
            "experiment": self.experiment,
            "layer": self.layer,
            "variant": self.variant,
            "unit_id_hash": self.unit_id_hash,
        }
