"""Scenes and experiments: validated, then compiled into the immutable form the hot path reads.

The contract's ``Scene`` and ``Experiment`` messages are the configuration schema (files, admin
RPCs and the store all carry them). :func:`compile_scene` and :func:`compile_experiment` check
one object on its own (InvalidArgument naming the field); :class:`Snapshot` puts them together
(experiments under their scene) and is what a request sees: it is rebuilt on every change and
swapped in whole, so a request never sees half a change.

Assignment is a deterministic hash: a unit's bucket in a layer is ``blake2b(salt, unit id)``
modulo the layer's bucket count, so it is stable while the split is unchanged, and layers with
different salts are independent (orthogonal). Variants own consecutive bucket ranges in their
order. Gray release admits allowlisted units, then units matching a rule, then a percentage of
the rest by a hash of the gray salt and the unit id (a ramp point in force overrides the
percentage).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from infermesh.bizcenter.v1 import biz_center_pb2 as pb
from infermesh.common.v1 import common_pb2
from infermesh_biz_center.domain import Assignment, ModelTarget, Prediction, RawTensor
from infermesh_biz_center.rules import Facts, Predicate, Rule, compile_conditions, compile_rule
from infermesh_chassis.errors import InvalidArgument

__all__ = [
    "MAPPING_PARAMETERS",
    "AlternateModel",
    "CachedScore",
    "CompiledBinding",
    "CompiledExperiment",
    "CompiledLayer",
    "CompiledScene",
    "CompiledVariant",
    "GrayPlan",
    "ResponseMap",
    "RuleDefault",
    "SaltedHash",
    "Snapshot",
    "bucket_of",
    "compile_experiment",
    "compile_scene",
    "prediction_from_proto",
    "subject_matches",
    "unit_fraction",
]

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
DEFAULT_BUCKETS = 1000
MAX_BUCKETS = 1_000_000
MAX_SLO_S = 60.0
MAPPING_PARAMETERS = ("threshold", "label_if_above", "label_otherwise")
"""Variant parameters that override the scene's response mapping for the variant's units."""
MODEL_PARAMETERS = "model_parameters"
"""Variant parameter whose entries are passed to the model as inference request parameters."""
STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
"""A JetStream stream or durable consumer name."""
MAX_STREAM_BATCH = 1000
MAX_STREAM_DELAY_S = 3600.0


class SaltedHash:
    """The first 8 bytes of ``blake2b(salt NUL unit id)`` as an integer, with the salt hashed once.

    Each call copies the state left after the salt and feeds it only the unit id.
    """

    __slots__ = ("_salted",)

    def __init__(self, salt: str, person: bytes = b"") -> None:
        self._salted = hashlib.blake2b(f"{salt}\0".encode(), digest_size=8, person=person)

    def __call__(self, unit_id: str) -> int:
        """The unit's hash."""
        digest = self._salted.copy()
        digest.update(unit_id.encode())
        return int.from_bytes(digest.digest(), "big")


def bucket_of(salt: str, unit_id: str, bucket_count: int) -> int:
    """The unit's bucket in a layer (see the module docstring)."""
    return SaltedHash(salt)(unit_id) % bucket_count


def unit_fraction(salt: str, unit_id: str) -> float:
    """A uniform number in [0, 100) for the unit, independent of every layer's bucket."""
    return SaltedHash(salt, b"gray")(unit_id) / 2**64 * 100


def _seconds(ts: Any) -> float:
    return float(ts.seconds) + ts.nanos / 1e9


def _check_name(name: str, field_name: str) -> None:
    if not NAME.match(name):
        raise InvalidArgument(f"{field_name}: '{name}' must match {NAME.pattern}")


def _target(ref: common_pb2.ModelRef, field_name: str) -> ModelTarget:
    if not ref.model:
        raise InvalidArgument(f"{field_name}.model: required")
    selector = ref.WhichOneof("selector")
    if selector == "version":
        if ref.version <= 0:
            raise InvalidArgument(f"{field_name}.version: must be > 0, got {ref.version}")
        return ModelTarget(ref.model, version=ref.version)
    if selector == "alias":
        if not ref.alias:
            raise InvalidArgument(f"{field_name}.alias: must not be empty")
        return ModelTarget(ref.model, alias=ref.alias)
    return ModelTarget(ref.model)


def prediction_from_proto(message: pb.Prediction) -> Prediction:
    """A configured (rule-based default) prediction as the core's type."""
    return Prediction(
        scores=dict(message.scores),
        label=message.label,
        outputs=tuple(RawTensor(t.name, t.datatype, tuple(t.shape), t.raw_contents) for t in message.outputs),
    )


@dataclass(frozen=True, slots=True)
class ResponseMap:
    """How outputs become a Prediction (the compiled ``ResponseMapping``)."""

    score_output: str = ""
    score_labels: tuple[str, ...] = ()
    label_output: str = ""
    threshold: float | None = None
    label_if_above: str = ""
    label_otherwise: str = ""
    include_raw_outputs: bool = False

    def with_parameters(self, parameters: Mapping[str, Any]) -> ResponseMap:
        """This mapping with a variant's mapping parameters applied."""
        if not any(k in parameters for k in MAPPING_PARAMETERS):
            return self
        threshold = parameters.get("threshold", self.threshold)
        return ResponseMap(
            self.score_output,
            self.score_labels,
            self.label_output,
            None if threshold is None else float(threshold),
            str(parameters.get("label_if_above", self.label_if_above)),
            str(parameters.get("label_otherwise", self.label_otherwise)),
            self.include_raw_outputs,
        )


@dataclass(frozen=True, slots=True)
class AlternateModel:
    """Fallback step: call another model version."""

    target: ModelTarget
    timeout_s: float | None


@dataclass(frozen=True, slots=True)
class CachedScore:
    """Fallback step: a recent score of the unit, no older than ``max_age_s``."""

    max_age_s: float


@dataclass(frozen=True, slots=True)
class RuleDefault:
    """Fallback step (the last resort): the first matching rule's answer, else the default."""

    rules: tuple[tuple[Predicate, Prediction], ...]
    default: Prediction

    def answer(self, facts: Facts) -> Prediction:
        """The rule-based answer for ``facts``."""
        for holds, prediction in self.rules:
            if holds(facts):
                return prediction
        return self.default


FallbackStep = AlternateModel | CachedScore | RuleDefault


@dataclass(frozen=True, slots=True)
class GrayPlan:
    """A scene's gray release: who gets ``target`` instead of the normal routing."""

    target: ModelTarget
    allowlist: frozenset[str]
    rules: tuple[Rule, ...]
    percentage: float
    ramp: tuple[tuple[float, float], ...]
    salt: str
    _fraction: SaltedHash = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_fraction", SaltedHash(self.salt, b"gray"))

    def percentage_at(self, now: float) -> float:
        """The percentage in force at ``now`` (epoch seconds): the latest ramp point started, else the base."""
        current = self.percentage
        for start, percentage in self.ramp:
            if start <= now:
                current = percentage
        return current

    def admits(self, facts: Facts, now: float) -> str | None:
        """Why the request is in the gray release ("allowlist", "rule:<name>", "percentage"), or None."""
        if facts.unit_id in self.allowlist:
            return "allowlist"
        for rule in self.rules:
            if rule.holds(facts):
                return f"rule:{rule.name}"
        percentage = self.percentage_at(now)
        if percentage > 0 and self._fraction(facts.unit_id) / 2**64 * 100 < percentage:
            return "percentage"
        return None


@dataclass(frozen=True, slots=True)
class CompiledBinding:
    """A stream binding of a scene, ready to consume (the compiled ``StreamBinding``)."""

    scene: str
    name: str
    stream: str
    subjects: tuple[str, ...]
    format: int
    unit_id_path: tuple[str, ...]
    feature_paths: tuple[tuple[str, tuple[str, ...]], ...]
    attribute_paths: tuple[tuple[str, tuple[str, ...]], ...]
    request_id_path: tuple[str, ...]
    output_subject: str
    dead_letter_subject: str
    max_deliver: int
    max_ack_pending: int
    batch_size: int
    ordered_by_unit: bool
    pause_when_degraded: bool
    retry_delay_s: float
    ack_wait_s: float
    durable: str
    enabled: bool

    @property
    def key(self) -> tuple[str, str]:
        """(scene, binding name): what identifies the binding across config versions."""
        return self.scene, self.name


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether NATS subject ``pattern`` (``*`` one token, ``>`` the rest) takes ``subject``."""
    tokens, wanted = pattern.split("."), subject.split(".")
    for i, token in enumerate(tokens):
        if token == ">":
            return len(wanted) > i
        if i >= len(wanted) or (token != "*" and token != wanted[i]):
            return False
    return len(tokens) == len(wanted)


def _subject(subject: str, field_name: str, *, wildcards: bool) -> str:
    tokens = subject.split(".")
    if (
        not subject
        or any(not t or any(c.isspace() for c in t) for t in tokens)
        or any(("*" in t or ">" in t) and t not in ("*", ">") for t in tokens)
        or ">" in tokens[:-1]
    ):
        raise InvalidArgument(f"{field_name}: '{subject}' is not a NATS subject")
    if not wildcards and ("*" in tokens or ">" in tokens):
        raise InvalidArgument(f"{field_name}: '{subject}' must not hold wildcards")
    return subject


def _path(path: str, field_name: str) -> tuple[str, ...]:
    parts = tuple(path.split("."))
    if not path or any(not p for p in parts):
        raise InvalidArgument(f"{field_name}: '{path}' is not a path of field names joined by dots")
    return parts


def _stream_duration(binding: pb.StreamBinding, name: str, where: str, default: float) -> float:
    if not binding.HasField(name):
        return default
    return _duration_s(getattr(binding, name), f"{where}.{name}", upper=MAX_STREAM_DELAY_S)


def _binding(binding: pb.StreamBinding, scene: str, where: str) -> CompiledBinding:
    _check_name(binding.name, f"{where}.name")
    if not STREAM_NAME.match(binding.stream):
        raise InvalidArgument(f"{where}.stream: '{binding.stream}' must match {STREAM_NAME.pattern}")
    if not binding.subjects:
        raise InvalidArgument(f"{where}.subjects: at least one subject is required")
    subjects = tuple(_subject(s, f"{where}.subjects[{i}]", wildcards=True) for i, s in enumerate(binding.subjects))
    output = _subject(binding.output_subject, f"{where}.output_subject", wildcards=False)
    dead = _subject(binding.dead_letter_subject or f"{output}.dead", f"{where}.dead_letter_subject", wildcards=False)
    if dead == output:
        raise InvalidArgument(f"{where}.dead_letter_subject: must differ from output_subject")
    for name, subject in (("output_subject", output), ("dead_letter_subject", dead)):
        if any(subject_matches(s, subject) for s in subjects):
            raise InvalidArgument(f"{where}.{name}: '{subject}' is one of the input subjects (a loop)")
    mapping = binding.json_mapping
    if binding.format == pb.STREAM_FORMAT_JSON:
        if not mapping.unit_id:
            raise InvalidArgument(f"{where}.json_mapping.unit_id: required for format JSON")
        unit_path = _path(mapping.unit_id, f"{where}.json_mapping.unit_id")
        features = tuple(
            (k, _path(v, f"{where}.json_mapping.features.{k}")) for k, v in sorted(mapping.features.items())
        )
        attributes = tuple(
            (k, _path(v, f"{where}.json_mapping.attributes.{k}")) for k, v in sorted(mapping.attributes.items())
        )
        request_path = _path(mapping.request_id, f"{where}.json_mapping.request_id") if mapping.request_id else ()
    elif binding.format == pb.STREAM_FORMAT_PROTOBUF:
        if binding.HasField("json_mapping"):
            raise InvalidArgument(f"{where}.json_mapping: only for format JSON")
        unit_path, features, attributes, request_path = (), (), (), ()
    else:
        raise InvalidArgument(f"{where}.format: STREAM_FORMAT_PROTOBUF or STREAM_FORMAT_JSON is required")
    for name, value, upper in (
        ("max_deliver", binding.max_deliver, 1000),
        ("max_ack_pending", binding.max_ack_pending, 1_000_000),
        ("batch_size", binding.batch_size, MAX_STREAM_BATCH),
    ):
        if not 0 <= value <= upper:
            raise InvalidArgument(f"{where}.{name}: must be in [0, {upper}], got {value}")
    durable = binding.durable or re.sub(r"[^A-Za-z0-9_-]", "_", f"biz-center_{scene}_{binding.name}")
    if not STREAM_NAME.match(durable):
        raise InvalidArgument(f"{where}.durable: '{durable}' must match {STREAM_NAME.pattern}")
    return CompiledBinding(
        scene=scene,
        name=binding.name,
        stream=binding.stream,
        subjects=subjects,
        format=binding.format,
        unit_id_path=unit_path,
        feature_paths=features,
        attribute_paths=attributes,
        request_id_path=request_path,
        output_subject=output,
        dead_letter_subject=dead,
        max_deliver=binding.max_deliver or 5,
        max_ack_pending=binding.max_ack_pending or 1024,
        batch_size=binding.batch_size or 128,
        ordered_by_unit=binding.ordered_by_unit,
        pause_when_degraded=binding.pause_when_degraded,
        retry_delay_s=_stream_duration(binding, "retry_delay", where, 1.0),
        ack_wait_s=_stream_duration(binding, "ack_wait", where, 30.0),
        durable=durable,
        enabled=binding.enabled,
    )


def _bindings(scene: pb.Scene) -> tuple[CompiledBinding, ...]:
    compiled: list[CompiledBinding] = []
    for i, binding in enumerate(scene.stream_bindings):
        where = f"stream_bindings[{i}]"
        item = _binding(binding, scene.name, where)
        if any(other.name == item.name for other in compiled):
            raise InvalidArgument(f"{where}.name: '{item.name}' is used twice in the scene")
        if any(other.durable == item.durable for other in compiled):
            raise InvalidArgument(f"{where}.durable: '{item.durable}' is used twice in the scene")
        compiled.append(item)
    return tuple(compiled)


@dataclass(frozen=True, slots=True)
class CompiledScene:
    """A scene ready to serve."""

    name: str
    config_version: int
    enabled: bool
    feature_service: str
    feature_definition_version: str
    unit_id_key: str
    routing: ModelTarget
    input_name: str
    mapping: ResponseMap
    slo_s: float | None
    max_concurrency: int
    rate_per_s: float
    burst: int
    limit_mode: str
    fallback: tuple[FallbackStep, ...]
    gray: GrayPlan | None
    bindings: tuple[CompiledBinding, ...] = ()

    @property
    def local_fallback(self) -> bool:
        """Whether the chain ends in a step that answers without calling anything."""
        return any(isinstance(step, CachedScore | RuleDefault) for step in self.fallback)


def _duration_s(message: Any, field_name: str, *, upper: float | None = None) -> float:
    seconds = _seconds(message)
    if seconds <= 0 or (upper is not None and seconds > upper):
        bound = f" and at most {upper:g}s" if upper is not None else ""
        raise InvalidArgument(f"{field_name}: must be > 0{bound}, got {seconds:g}s")
    return seconds


def _mapping(message: pb.ResponseMapping) -> ResponseMap:
    threshold = message.threshold if message.HasField("threshold") else None
    if threshold is not None and not math.isfinite(threshold):
        raise InvalidArgument("response_mapping.threshold: must be a finite number")
    if threshold is not None and not (message.label_if_above and message.label_otherwise):
        raise InvalidArgument("response_mapping: a threshold needs label_if_above and label_otherwise")
    return ResponseMap(
        message.score_output,
        tuple(message.score_labels),
        message.label_output,
        threshold,
        message.label_if_above,
        message.label_otherwise,
        message.include_raw_outputs,
    )


def _fallback(steps: Iterable[pb.FallbackStep]) -> tuple[FallbackStep, ...]:
    compiled: list[FallbackStep] = []
    for i, step in enumerate(steps):
        where = f"fallback_chain[{i}]"
        if compiled and isinstance(compiled[-1], RuleDefault):
            raise InvalidArgument(f"{where}: unreachable, the rule_default step before it always answers")
        kind = step.WhichOneof("step")
        if kind == "alternate_model":
            timeout = (
                _duration_s(step.alternate_model.timeout, f"{where}.alternate_model.timeout", upper=MAX_SLO_S)
                if step.alternate_model.HasField("timeout")
                else None
            )
            target = _target(step.alternate_model.model, f"{where}.alternate_model.model")
            compiled.append(AlternateModel(target, timeout))
        elif kind == "cached_score":
            if not step.cached_score.HasField("max_age"):
                raise InvalidArgument(f"{where}.cached_score.max_age: required")
            compiled.append(CachedScore(_duration_s(step.cached_score.max_age, f"{where}.cached_score.max_age")))
        elif kind == "rule_default":
            rules = tuple(
                (
                    compile_conditions(rule.conditions, f"{where}.rule_default.rules[{j}].conditions"),
                    prediction_from_proto(rule.prediction),
                )
                for j, rule in enumerate(step.rule_default.rules)
            )
            compiled.append(RuleDefault(rules, prediction_from_proto(step.rule_default.default_prediction)))
        else:
            raise InvalidArgument(f"{where}: exactly one of alternate_model, cached_score, rule_default is required")
    return tuple(compiled)


def _gray(message: pb.GrayRelease, scene: str) -> GrayPlan | None:
    if not message.enabled:
        return None
    if not 0 <= message.percentage <= 100:
        raise InvalidArgument(f"gray_release.percentage: must be in [0, 100], got {message.percentage}")
    ramp: list[tuple[float, float]] = []
    for i, point in enumerate(message.ramp):
        if not point.HasField("start_time"):
            raise InvalidArgument(f"gray_release.ramp[{i}].start_time: required")
        if not 0 <= point.percentage <= 100:
            raise InvalidArgument(f"gray_release.ramp[{i}].percentage: must be in [0, 100], got {point.percentage}")
        ramp.append((_seconds(point.start_time), point.percentage))
    ramp.sort()
    return GrayPlan(
        target=_target(message.target, "gray_release.target"),
        allowlist=frozenset(message.allowlist_unit_ids),
        rules=tuple(compile_rule(rule, f"gray_release.rules[{i}]") for i, rule in enumerate(message.rules)),
        percentage=message.percentage,
        ramp=tuple(ramp),
        salt=message.salt or f"gray/{scene}",
    )


def compile_scene(scene: pb.Scene, *, global_limits: bool) -> CompiledScene:
    """Validate ``scene`` and compile it; ``global_limits`` says whether Redis-backed limits are available."""
    _check_name(scene.name, "name")
    if not scene.feature_service:
        raise InvalidArgument("feature_service: required")
    if scene.max_concurrency < 0:
        raise InvalidArgument(f"max_concurrency: must be >= 0, got {scene.max_concurrency}")
    limit = scene.rate_limit
    if limit.requests_per_second < 0 or not math.isfinite(limit.requests_per_second):
        raise InvalidArgument(f"rate_limit.requests_per_second: must be >= 0, got {limit.requests_per_second}")
    if limit.burst < 0:
        raise InvalidArgument(f"rate_limit.burst: must be >= 0, got {limit.burst}")
    mode = {pb.RATE_LIMIT_MODE_LOCAL: "local", pb.RATE_LIMIT_MODE_GLOBAL: "global"}.get(limit.mode, "default")
    if mode == "global" and not global_limits:
        raise InvalidArgument("rate_limit.mode: GLOBAL needs rate_limit.redis_url in the business center's settings")
    slo = _duration_s(scene.slo_deadline, "slo_deadline", upper=MAX_SLO_S) if scene.HasField("slo_deadline") else None
    return CompiledScene(
        name=scene.name,
        config_version=scene.config_version,
        enabled=scene.enabled,
        feature_service=scene.feature_service,
        feature_definition_version=scene.feature_definition_version,
        unit_id_key=scene.unit_id_key,
        routing=_target(scene.model_routing.model, "model_routing.model"),
        input_name=scene.model_routing.input_name,
        mapping=_mapping(scene.response_mapping),
        slo_s=slo,
        max_concurrency=scene.max_concurrency,
        rate_per_s=limit.requests_per_second,
        burst=limit.burst or math.ceil(limit.requests_per_second),
        limit_mode=mode,
        fallback=_fallback(scene.fallback_chain),
        gray=_gray(scene.gray_release, scene.name),
        bindings=_bindings(scene),
    )


@dataclass(frozen=True, slots=True)
class CompiledVariant:
    """A variant and the bucket range [first, end) it owns."""

    name: str
    first: int
    end: int
    model: ModelTarget | None
    parameters: Mapping[str, Any]
    control: bool


@dataclass(frozen=True, slots=True)
class CompiledLayer:
    """A layer: a salt, a bucket count and variants on consecutive bucket ranges."""

    name: str
    salt: str
    bucket_count: int
    variants: tuple[CompiledVariant, ...]
    _hash: SaltedHash = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", SaltedHash(self.salt))

    def assign(self, unit_id: str) -> tuple[int, CompiledVariant | None]:
        """The unit's bucket, and the variant owning it (None: the unit is not in the layer)."""
        bucket = self._hash(unit_id) % self.bucket_count
        for variant in self.variants:
            if variant.first <= bucket < variant.end:
                return bucket, variant
        return bucket, None


@dataclass(frozen=True, slots=True)
class CompiledExperiment:
    """An experiment ready to assign units."""

    name: str
    scene: str
    config_version: int
    status: int
    start: float | None
    end: float | None
    layers: tuple[CompiledLayer, ...]

    @property
    def routes_models(self) -> bool:
        """Whether some variant sets a model."""
        return any(v.model is not None for layer in self.layers for v in layer.variants)

    def active(self, now: float) -> bool:
        """Whether it assigns units at ``now`` (epoch seconds)."""
        if self.status != pb.EXPERIMENT_STATUS_RUNNING:
            return False
        return (self.start is None or self.start <= now) and (self.end is None or now < self.end)


def _layer(layer: pb.Layer, experiment: str, where: str) -> CompiledLayer:
    _check_name(layer.name, f"{where}.name")
    count = layer.bucket_count or DEFAULT_BUCKETS
    if not 0 < count <= MAX_BUCKETS:
        raise InvalidArgument(f"{where}.bucket_count: must be in [1, {MAX_BUCKETS}], got {layer.bucket_count}")
    if not layer.variants:
        raise InvalidArgument(f"{where}.variants: a layer needs at least one variant")
    variants: list[CompiledVariant] = []
    first = 0
    for i, variant in enumerate(layer.variants):
        at = f"{where}.variants[{i}]"
        _check_name(variant.name, f"{at}.name")
        if any(v.name == variant.name for v in variants):
            raise InvalidArgument(f"{at}.name: '{variant.name}' is used twice in the layer")
        if variant.buckets <= 0:
            raise InvalidArgument(f"{at}.buckets: must be > 0, got {variant.buckets}")
        if first + variant.buckets > count:
            raise InvalidArgument(f"{at}.buckets: the variants own more than the layer's {count} buckets")
        model = _target(variant.model, f"{at}.model") if variant.HasField("model") else None
        parameters = json_format.MessageToDict(variant.parameters) if variant.HasField("parameters") else {}
        threshold = parameters.get("threshold")
        if threshold is not None and not isinstance(threshold, int | float):
            raise InvalidArgument(f"{at}.parameters.threshold: must be a number")
        model_parameters = parameters.get(MODEL_PARAMETERS, {})
        if not isinstance(model_parameters, dict) or any(
            isinstance(v, dict | list) or v is None for v in model_parameters.values()
        ):
            raise InvalidArgument(f"{at}.parameters.{MODEL_PARAMETERS}: must map names to strings, numbers or bools")
        end = first + variant.buckets
        variants.append(CompiledVariant(variant.name, first, end, model, parameters, variant.control))
        first += variant.buckets
    if sum(v.control for v in variants) > 1:
        raise InvalidArgument(f"{where}.variants: at most one control variant per layer")
    return CompiledLayer(layer.name, layer.salt or f"{experiment}/{layer.name}", count, tuple(variants))


def compile_experiment(experiment: pb.Experiment) -> CompiledExperiment:
    """Validate ``experiment`` on its own and compile it (its scene is checked by the registry)."""
    _check_name(experiment.name, "name")
    if not experiment.scene:
        raise InvalidArgument("scene: required")
    if not experiment.layers:
        raise InvalidArgument("layers: an experiment needs at least one layer")
    layers = [_layer(layer, experiment.name, f"layers[{i}]") for i, layer in enumerate(experiment.layers)]
    for i, layer in enumerate(layers):
        if any(other.name == layer.name for other in layers[:i]):
            raise InvalidArgument(f"layers[{i}].name: '{layer.name}' is used twice")
        if any(other.salt == layer.salt for other in layers[:i]):
            raise InvalidArgument(f"layers[{i}].salt: layers must have different salts to be orthogonal")
    if sum(any(v.model is not None for v in layer.variants) for layer in layers) > 1:
        raise InvalidArgument("layers: at most one layer's variants may set a model")
    start = _seconds(experiment.start_time) if experiment.HasField("start_time") else None
    end = _seconds(experiment.end_time) if experiment.HasField("end_time") else None
    if start is not None and end is not None and end <= start:
        raise InvalidArgument("end_time: must be after start_time")
    if experiment.status not in pb.ExperimentStatus.values() or experiment.status == 0:
        raise InvalidArgument("status: one of DRAFT, RUNNING, PAUSED, COMPLETED is required")
    return CompiledExperiment(
        experiment.name, experiment.scene, experiment.config_version, experiment.status, start, end, tuple(layers)
    )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every scene and experiment in force, as one immutable value (see the module docstring)."""

    scenes: Mapping[str, CompiledScene] = field(default_factory=dict)
    experiments: Mapping[str, tuple[CompiledExperiment, ...]] = field(default_factory=dict)
    """Experiments by scene, ordered by name."""

    def assign(self, scene: str, unit_id: str, now: float) -> list[tuple[Assignment, CompiledVariant]]:
        """Every assignment of the unit in the scene's active experiments, in experiment-name and
        layer order, with the variant assigned."""
        assigned: list[tuple[Assignment, CompiledVariant]] = []
        for experiment in self.experiments.get(scene, ()):
            if not experiment.active(now):
                continue
            for layer in experiment.layers:
                bucket, variant = layer.assign(unit_id)
                if variant is not None:
                    assigned.append((Assignment(experiment.name, layer.name, variant.name, bucket), variant))
        return assigned
