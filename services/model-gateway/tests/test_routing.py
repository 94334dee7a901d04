"""The router: pins, aliases, weighted split within tolerance, stickiness, mirror share, clear errors."""

from __future__ import annotations

import random
import re
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from infermesh_chassis.errors import FailedPrecondition, NotFound
from infermesh_model_gateway.domain import (
    Mirror,
    ModelFormat,
    ModelRecord,
    ModelVersionRecord,
    TensorSchema,
    TrafficPolicy,
    VersionState,
)
from infermesh_model_gateway.routing import Router


def _version(number: int, state: VersionState = VersionState.SERVING, **extra) -> ModelVersionRecord:
    return ModelVersionRecord(
        model="churn",
        version=number,
        format=ModelFormat.ONNX,
        artifact_uri=f"file:///models/{number}.onnx",
        artifact_sha256="0" * 64,
        inputs=(TensorSchema("x", "FP32", (4,)),),
        outputs=(TensorSchema("y", "FP32", (2,)),),
        state=state,
        **extra,
    )


def _router(traffic: TrafficPolicy, aliases: dict[str, int] | None = None, seed: int = 7) -> Router:
    router = Router(random.Random(seed))
    versions = [
        _version(1),
        _version(2),
        _version(3),
        _version(4, VersionState.REGISTERED),
        _version(5, VersionState.RETIRED, successor=3),
    ]
    router.load([(ModelRecord("churn", aliases=aliases or {}, traffic=traffic), versions)])
    return router


def test_weighted_split_within_tolerance():
    router = _router(TrafficPolicy(weights={1: 80, 2: 20}))
    n = 20_000
    counts = Counter(router.resolve("churn").primary.version for _ in range(n))
    assert set(counts) == {1, 2}
    # 3 standard deviations of a binomial share: sqrt(0.8 * 0.2 / n) ~ 0.0028
    assert counts[2] / n == pytest.approx(0.2, abs=3 * (0.8 * 0.2 / n) ** 0.5)


def test_sticky_key_keeps_a_caller_on_one_version():
    router = _router(TrafficPolicy(weights={1: 50, 2: 50}, sticky_key="user"))
    placements = {key: router.resolve("churn", routing_key=key).primary.version for key in map(str, range(2000))}
    for key, version in list(placements.items())[:200]:
        assert all(router.resolve("churn", routing_key=key).primary.version == version for _ in range(5))
    share = sum(v == 2 for v in placements.values()) / len(placements)
    assert share == pytest.approx(0.5, abs=0.05)


def test_sticky_placement_survives_a_reload_with_the_same_weights():
    router = _router(TrafficPolicy(weights={1: 30, 2: 70}, sticky_key="user"), seed=1)
    before = {k: router.resolve("churn", routing_key=k).primary.version for k in map(str, range(500))}
    again = _router(TrafficPolicy(weights={1: 30, 2: 70}, sticky_key="user"), seed=99)
    assert before == {k: again.resolve("churn", routing_key=k).primary.version for k in map(str, range(500))}


def test_pins_by_number_alias_and_model_at_alias():
    router = _router(TrafficPolicy(weights={1: 100}), aliases={"canary": 2, "production": 1})
    assert router.resolve("churn", "3").primary.version == 3
    assert router.resolve("churn", "3").pinned
    assert router.resolve("churn", "canary").primary.version == 2
    assert router.resolve("churn@canary").primary.version == 2
    assert router.resolve("churn", alias="canary").primary.version == 2
    assert not router.resolve("churn").pinned


def test_production_alias_serves_without_weights():
    router = _router(TrafficPolicy(), aliases={"production": 3})
    assert {router.resolve("churn").primary.version for _ in range(50)} == {3}


def test_no_policy_and_no_production_is_a_clear_error():
    with pytest.raises(FailedPrecondition, match="no production version and no traffic weights"):
        _router(TrafficPolicy()).resolve("churn")


@pytest.mark.parametrize(
    ("model", "version", "error", "message"),
    [
        ("fraud", "", NotFound, "model 'fraud' is not registered"),
        ("churn", "9", NotFound, "model 'churn' has no version 9"),
        ("churn", "blue", NotFound, "model 'churn' has no alias 'blue'"),
        (
            "churn",
            "4",
            FailedPrecondition,
            "version 4 of model 'churn' is registered, not serving; deploy it first",
        ),
        ("churn", "5", NotFound, "version 5 of model 'churn' was retired at an earlier date; use version 3"),
    ],
)
def test_resolution_errors(model, version, error, message):
    with pytest.raises(error, match=message):
        _router(TrafficPolicy(weights={1: 1})).resolve(model, version)


def test_mirror_share_and_never_to_itself():
    router = _router(TrafficPolicy(weights={1: 50, 2: 50}, mirror=Mirror(version=2, fraction=0.25)))
    n = 20_000
    routes = [router.resolve("churn") for _ in range(n)]
    from_one = [r for r in routes if r.primary.version == 1]
    mirrored = sum(r.shadow is not None for r in from_one) / len(from_one)
    assert mirrored == pytest.approx(0.25, abs=0.02)
    assert all(r.shadow is None for r in routes if r.primary.version == 2)
    assert all(r.shadow.version == 2 for r in from_one if r.shadow is not None)


def test_a_version_draining_at_the_end_of_its_deprecation_answers_as_retired():
    ended = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    router = Router(random.Random(1))
    versions = [
        _version(1),
        _version(2, VersionState.DRAINING, deprecated_until=ended, successor=1),
        _version(3, VersionState.DRAINING, deprecated_until=ended),
        _version(4, VersionState.DRAINING, deprecated_until=datetime.now(UTC) + timedelta(hours=1), successor=1),
        _version(5, VersionState.DRAINING),
    ]
    router.load([(ModelRecord("churn", aliases={"production": 1}, traffic=TrafficPolicy()), versions)])
    being_retired = "version {} of model 'churn' is being retired (its deprecation ended at 2026-01-02T03:04:05+00:00)"
    with pytest.raises(NotFound, match=re.escape(being_retired.format(2) + "; use version 1")):
        router.resolve("churn", "2")
    with pytest.raises(FailedPrecondition, match=re.escape(being_retired.format(3) + " and has no successor")):
        router.resolve("churn", "3")
    for still_deprecated_or_undeployed in ("4", "5"):
        with pytest.raises(FailedPrecondition, match="is draining, not serving"):
            router.resolve("churn", still_deprecated_or_undeployed)
