"""The registry's document codec: records as the JSON documents stored (and shown in the audit log).

Each record maps to a plain JSON-able dict and back; times are ISO 8601 strings, raw warm-up
tensors base64. Readers give a field missing from an older document its default. The paths name
a document as audit entries do (``models/<model>/versions/<version>``).
"""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import datetime
from typing import Any

from infermesh_model_gateway.domain import (
    DeploymentConfig,
    DriftBaseline,
    Mirror,
    ModelFormat,
    ModelRecord,
    ModelVersionRecord,
    Rollout,
    RolloutDecision,
    RolloutState,
    RolloutStep,
    SampleTensor,
    TensorSchema,
    TrafficPolicy,
    VersionState,
    WarmupSample,
)

__all__ = [
    "dumps",
    "model_doc",
    "model_from",
    "model_path",
    "rollout_doc",
    "rollout_from",
    "rollout_path",
    "version_doc",
    "version_from",
    "version_path",
]


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def version_doc(record: ModelVersionRecord) -> dict[str, Any]:
    """``record`` as a JSON-able document (stored, and shown in the audit log)."""
    doc = dataclasses.asdict(record)
    doc["format"] = record.format.value
    doc["state"] = record.state.value
    doc["deployment"]["placement"] = list(record.deployment.placement)
    for sample in doc["deployment"]["warmup_samples"]:
        for tensor in sample["inputs"]:
            tensor["raw"] = base64.b64encode(tensor["raw"]).decode()
    for key in ("created_at", "updated_at", "retired_at", "deprecated_at", "deprecated_until"):
        doc[key] = _time(getattr(record, key))
    return doc


def _tensor_from(doc: dict[str, Any]) -> TensorSchema:
    return TensorSchema(
        doc["name"],
        doc["datatype"],
        tuple(doc["shape"]),
        tuple(doc.get("class_labels", ())),
        doc.get("description", ""),
    )


def _drift_baseline_from(doc: dict[str, Any] | None) -> DriftBaseline | None:
    return None if doc is None else DriftBaseline(**doc)


def version_from(doc: dict[str, Any]) -> ModelVersionRecord:
    """A version from its document."""
    deployment = dict(doc["deployment"])
    deployment["placement"] = tuple(deployment.get("placement", ()))
    deployment["preferred_batch_sizes"] = tuple(deployment.get("preferred_batch_sizes", ()))
    deployment["warmup_samples"] = tuple(
        WarmupSample(
            s["name"],
            tuple(
                SampleTensor(t["name"], t["datatype"], tuple(t["shape"]), base64.b64decode(t["raw"]))
                for t in s["inputs"]
            ),
            int(s["count"]),
        )
        for s in deployment.get("warmup_samples", ())
    )
    return ModelVersionRecord(
        model=doc["model"],
        version=int(doc["version"]),
        format=ModelFormat(doc["format"]),
        artifact_uri=doc["artifact_uri"],
        artifact_sha256=doc["artifact_sha256"],
        inputs=tuple(_tensor_from(t) for t in doc["inputs"]),
        outputs=tuple(_tensor_from(t) for t in doc["outputs"]),
        trusted=bool(doc.get("trusted", False)),
        serialization=doc.get("serialization", "native"),
        artifact_size_bytes=int(doc.get("artifact_size_bytes", 0)),
        owner=doc.get("owner", ""),
        description=doc.get("description", ""),
        tags=dict(doc.get("tags", {})),
        deployment=DeploymentConfig(**deployment),
        drift_baseline=_drift_baseline_from(doc.get("drift_baseline")),
        created_by=doc.get("created_by", ""),
        state=VersionState(doc["state"]),
        state_detail=doc.get("state_detail", ""),
        created_at=_parse_time(doc.get("created_at")),
        updated_at=_parse_time(doc.get("updated_at")),
        retired_at=_parse_time(doc.get("retired_at")),
        deprecated_at=_parse_time(doc.get("deprecated_at")),
        retired_by=doc.get("retired_by", ""),
        successor=doc.get("successor"),
        successor_model=doc.get("successor_model", ""),
        deprecated_until=_parse_time(doc.get("deprecated_until")),
        retire_reason=doc.get("retire_reason", ""),
    )


def rollout_doc(rollout: Rollout) -> dict[str, Any]:
    """``rollout`` as a JSON-able document."""
    doc = dataclasses.asdict(rollout)
    doc["state"] = rollout.state.value
    for key in ("step_started_at", "next_decision_at", "created_at", "updated_at", "ended_at"):
        doc[key] = _time(getattr(rollout, key))
    doc["decisions"] = [{**dataclasses.asdict(d), "time": _time(d.time)} for d in rollout.decisions]
    return doc


def rollout_from(doc: dict[str, Any]) -> Rollout:
    """A rollout from its document."""
    return Rollout(
        id=doc["id"],
        model=doc["model"],
        candidate=int(doc["candidate"]),
        baseline=int(doc["baseline"]),
        steps=tuple(RolloutStep(**s) for s in doc["steps"]),
        gates=doc["gates"],
        min_dwell_s=float(doc["min_dwell_s"]),
        min_requests=int(doc["min_requests"]),
        evaluation_interval_s=float(doc["evaluation_interval_s"]),
        state=RolloutState(doc["state"]),
        current_step=int(doc["current_step"]),
        step_started_at=_parse_time(doc.get("step_started_at")),
        next_decision_at=_parse_time(doc.get("next_decision_at")),
        last_evaluation=doc.get("last_evaluation", ""),
        decisions=tuple(
            RolloutDecision(**{**d, "time": datetime.fromisoformat(d["time"])}) for d in doc.get("decisions", ())
        ),
        created_by=doc.get("created_by", ""),
        created_at=_parse_time(doc.get("created_at")),
        updated_at=_parse_time(doc.get("updated_at")),
        ended_at=_parse_time(doc.get("ended_at")),
        state_detail=doc.get("state_detail", ""),
        controller=doc.get("controller", ""),
    )


def model_doc(record: ModelRecord) -> dict[str, Any]:
    """``record`` as a JSON-able document."""
    traffic = record.traffic
    return {
        "name": record.name,
        "owner": record.owner,
        "description": record.description,
        "aliases": dict(record.aliases),
        "traffic": {
            "weights": {str(v): w for v, w in traffic.weights.items()},
            "sticky_key": traffic.sticky_key,
            "mirror": None if traffic.mirror is None else dataclasses.asdict(traffic.mirror),
            "revision": traffic.revision,
        },
        "production_history": list(record.production_history),
        "created_at": _time(record.created_at),
        "updated_at": _time(record.updated_at),
    }


def model_from(doc: dict[str, Any]) -> ModelRecord:
    """A model from its document."""
    traffic = doc["traffic"]
    mirror = traffic.get("mirror")
    return ModelRecord(
        name=doc["name"],
        owner=doc.get("owner", ""),
        description=doc.get("description", ""),
        aliases={k: int(v) for k, v in doc.get("aliases", {}).items()},
        traffic=TrafficPolicy(
            weights={int(v): int(w) for v, w in traffic.get("weights", {}).items()},
            sticky_key=traffic.get("sticky_key", ""),
            mirror=None if mirror is None else Mirror(int(mirror["version"]), float(mirror["fraction"])),
            revision=int(traffic.get("revision", 0)),
        ),
        production_history=tuple(doc.get("production_history", ())),
        created_at=_parse_time(doc.get("created_at")),
        updated_at=_parse_time(doc.get("updated_at")),
    )


def dumps(doc: dict[str, Any] | None) -> str:
    """A document as stored (keys sorted; "" for none)."""
    return "" if doc is None else json.dumps(doc, sort_keys=True)


def rollout_path(rollout: Rollout) -> str:
    """The rollout's audit target."""
    return f"models/{rollout.model}/rollouts/{rollout.id}"


def model_path(model: str) -> str:
    """The model's audit target."""
    return f"models/{model}"


def version_path(model: str, version: int) -> str:
    """The version's audit target."""
    return f"models/{model}/versions/{version}"
