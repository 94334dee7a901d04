"""Experiment assignment and gray release, on compiled configs: stability, split proportions, layer
orthogonality (chi-square), rule operators, allowlists, percentages and ramps."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter

import numpy as np
import pytest
from google.protobuf import json_format
from scipy.stats import chi2_contingency

from infermesh.bizcenter.v1 import biz_center_pb2 as pb
from infermesh.common.v1 import common_pb2
from infermesh_biz_center.catalog import (
    CompiledExperiment,
    SaltedHash,
    Snapshot,
    bucket_of,
    compile_experiment,
    compile_scene,
    unit_fraction,
)
from infermesh_biz_center.rules import MAX_PATTERN_CHARS, MAX_VALUE_CHARS, Facts, compile_conditions, parse_version
from infermesh_chassis.errors import InvalidArgument

UNITS = [f"user-{i}" for i in range(20_000)]


def _experiment(layers: list[dict], **extra) -> CompiledExperiment:
    message = json_format.ParseDict(
        {"name": "exp", "scene": "s", "status": "EXPERIMENT_STATUS_RUNNING", "layers": layers, **extra},
        pb.Experiment(),
    )
    return compile_experiment(message)


def _layer(name: str, salt: str, shares: list[int], bucket_count: int = 1000) -> dict:
    return {
        "name": name,
        "salt": salt,
        "bucket_count": bucket_count,
        "variants": [{"name": f"v{i}", "buckets": b} for i, b in enumerate(shares)],
    }


def _tolerance(p: float, n: int) -> float:
    """Four standard deviations of a binomial share."""
    return 4 * (p * (1 - p) / n) ** 0.5


def test_salted_hash_is_blake2b_of_salt_and_unit_id():
    """Buckets must never move between releases: the salted state gives the one-shot digest."""
    for salt, unit in (("exp/layer", "user-1"), ("", ""), ("gray/churn", "ünïcode-7")):
        whole = hashlib.blake2b(f"{salt}\0{unit}".encode(), digest_size=8).digest()
        assert SaltedHash(salt)(unit) == int.from_bytes(whole, "big")
        assert bucket_of(salt, unit, 1000) == int.from_bytes(whole, "big") % 1000
        gray = hashlib.blake2b(f"{salt}\0{unit}".encode(), digest_size=8, person=b"gray").digest()
        assert unit_fraction(salt, unit) == int.from_bytes(gray, "big") / 2**64 * 100


def test_split_proportions_within_tolerance():
    experiment = _experiment([_layer("l", "salt-a", [500, 300, 150])])
    counts = Counter(getattr(experiment.layers[0].assign(u)[1], "name", None) for u in UNITS)
    n = len(UNITS)
    for variant, share in (("v0", 0.5), ("v1", 0.3), ("v2", 0.15)):
        assert counts[variant] / n == pytest.approx(share, abs=_tolerance(share, n))
    assert counts[None] / n == pytest.approx(0.05, abs=_tolerance(0.05, n))  # unallocated buckets: not in the layer


def test_assignment_is_stable_and_growing_the_last_variant_moves_nobody_else():
    before = _experiment([_layer("l", "salt-a", [400, 400])]).layers[0]
    after = _experiment([_layer("l", "salt-a", [400, 500])]).layers[0]
    for unit in UNITS[:5000]:
        bucket, variant = before.assign(unit)
        assert before.assign(unit) == (bucket, variant)  # deterministic
        moved_bucket, moved = after.assign(unit)
        assert moved_bucket == bucket
        if variant is not None:
            assert moved is not None and moved.name == variant.name


def test_layers_are_orthogonal_chi_square():
    """Independent salts give independent assignments (the test can fail: the same salt does not)."""
    experiment = _experiment([_layer("a", "salt-a", [500, 500]), _layer("b", "salt-b", [250, 250, 500])])
    table = np.zeros((2, 3))
    for unit in UNITS:
        a = experiment.layers[0].assign(unit)[1]
        b = experiment.layers[1].assign(unit)[1]
        assert a is not None and b is not None
        table[int(a.name[1]), int(b.name[1])] += 1
    _, p_value, _, _ = chi2_contingency(table)
    assert p_value > 0.001

    correlated = [_layer("a", "same", [500, 500]), _layer("b", "same", [250, 250, 500])]
    with pytest.raises(InvalidArgument, match="different salts"):
        _experiment(correlated)
    same = _experiment([correlated[0]]).layers[0], _experiment([correlated[1]]).layers[0]
    table = np.zeros((2, 3))
    for unit in UNITS:
        table[int(same[0].assign(unit)[1].name[1]), int(same[1].assign(unit)[1].name[1])] += 1
    assert chi2_contingency(table)[1] < 1e-6


def test_snapshot_assigns_every_active_layer_in_order():
    experiment = _experiment(
        [_layer("model", "m", [500, 500]), _layer("ui", "u", [1000])],
        start_time="2020-01-01T00:00:00Z",
        end_time="2030-01-01T00:00:00Z",
    )
    snapshot = Snapshot({}, {"s": (experiment,)})
    assigned = snapshot.assign("s", "user-1", now=1.7e9)
    assert [a.layer for a, _ in assigned] == ["model", "ui"]
    assert snapshot.assign("s", "user-1", now=1.0e9) == []  # before start_time
    assert snapshot.assign("s", "user-1", now=2.0e9) == []  # after end_time


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([_layer("l", "s", [600, 500])], "more than the layer's 1000 buckets"),
        ([_layer("l", "s", [0])], "buckets: must be > 0"),
        ([{"name": "l", "variants": [{"name": "a", "buckets": 1}, {"name": "a", "buckets": 1}]}], "used twice"),
        ([_layer("l", "s", [1]), _layer("l", "t", [1])], "layers[1].name"),
        ([{"name": "l", "variants": []}], "at least one variant"),
        (
            [
                {"name": "a", "variants": [{"name": "x", "buckets": 1, "model": {"model": "m", "version": 1}}]},
                {"name": "b", "variants": [{"name": "y", "buckets": 1, "model": {"model": "m", "version": 2}}]},
            ],
            "at most one layer's variants may set a model",
        ),
    ],
)
def test_invalid_experiments_name_the_field(layers, message):
    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[").replace("]", r"\]")):
        _experiment(layers)


def _facts(unit: str = "u", **attributes: str) -> Facts:
    return Facts(
        unit, attributes, {"age": common_pb2.Value(int64_value=42), "tier": common_pb2.Value(string_value="gold")}
    )


def _holds(op: str, attribute: str, values: list[str], facts: Facts) -> bool:
    condition = json_format.ParseDict({"attribute": attribute, "op": op, "values": values}, pb.Condition())
    return compile_conditions([condition], "c")(facts)


@pytest.mark.parametrize(
    ("op", "attribute", "values", "expected"),
    [
        ("CONDITION_OPERATOR_EQUALS", "region", ["eu-west"], True),
        ("CONDITION_OPERATOR_NOT_EQUALS", "region", ["eu-west"], False),
        ("CONDITION_OPERATOR_IN", "region", ["us-east", "eu-west"], True),
        ("CONDITION_OPERATOR_NOT_IN", "region", ["us-east"], True),
        ("CONDITION_OPERATOR_PREFIX", "region", ["eu-"], True),
        ("CONDITION_OPERATOR_REGEX", "region", ["eu-.*"], True),
        ("CONDITION_OPERATOR_REGEX", "region", ["eu"], False),  # the whole value must match
        ("CONDITION_OPERATOR_VERSION_GTE", "app_version", ["5.9"], True),
        ("CONDITION_OPERATOR_VERSION_GTE", "app_version", ["5.12.2"], False),
        ("CONDITION_OPERATOR_VERSION_LT", "app_version", ["5.12.2"], True),
        ("CONDITION_OPERATOR_GTE", "feature.age", ["42"], True),
        ("CONDITION_OPERATOR_LT", "feature.age", ["42"], False),
        ("CONDITION_OPERATOR_EQUALS", "feature.tier", ["gold"], True),
        ("CONDITION_OPERATOR_EXISTS", "header.x-beta", [], True),
        ("CONDITION_OPERATOR_EXISTS", "missing", [], False),
        ("CONDITION_OPERATOR_NOT_EQUALS", "missing", ["x"], False),  # an absent attribute never matches
        ("CONDITION_OPERATOR_GTE", "region", ["1"], False),  # not a number: does not hold
    ],
)
def test_condition_operators(op, attribute, values, expected):
    facts = _facts(region="eu-west", app_version="5.12.1-beta", **{"header.x-beta": "1"})
    assert _holds(op, attribute, values, facts) is expected


@pytest.mark.parametrize(
    ("op", "values", "message"),
    [
        ("CONDITION_OPERATOR_UNSPECIFIED", ["x"], "an operator is required"),
        ("CONDITION_OPERATOR_EQUALS", ["a", "b"], "exactly one operand"),
        ("CONDITION_OPERATOR_IN", [], "at least one operand"),
        ("CONDITION_OPERATOR_REGEX", ["("], "not a valid regular expression"),
        ("CONDITION_OPERATOR_GTE", ["ten"], "is not a number"),
        ("CONDITION_OPERATOR_VERSION_LT", ["beta"], "is not a dotted version"),
        ("CONDITION_OPERATOR_EXISTS", ["x"], "takes no operand"),
    ],
)
def test_bad_conditions_are_refused(op, values, message):
    with pytest.raises(InvalidArgument, match=message):
        _holds(op, "region", values, _facts())


async def test_a_catastrophic_regex_matches_in_linear_time():
    # Python's backtracking re takes 2^n steps for (a+)+$ against a...a!: seconds at n=28, forever at n=1000.
    # RE2 is linear: each match below is microseconds, so the generous bound only catches a hang.
    evil = "a" * (MAX_VALUE_CHARS - 1) + "!"
    for value in ("a" * 28 + "!", evil):
        facts = _facts(segment=value)
        holds = await asyncio.wait_for(
            asyncio.to_thread(_holds, "CONDITION_OPERATOR_REGEX", "segment", ["(a+)+$"], facts), 10
        )
        assert holds is False
    assert _holds("CONDITION_OPERATOR_REGEX", "segment", ["(a+)+$"], _facts(segment="a" * 28)) is True


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (r"(a)\1", "no backreferences"),  # valid for Python's re, not for RE2
        (r"(?=a)a", "not a valid regular expression"),
        ("a" * (MAX_PATTERN_CHARS + 1), f"at most {MAX_PATTERN_CHARS} characters"),
    ],
)
def test_regexes_re2_cannot_run_are_refused(pattern: str, message: str):
    with pytest.raises(InvalidArgument, match=message):
        _holds("CONDITION_OPERATOR_REGEX", "segment", [pattern], _facts(segment="a"))


@pytest.mark.parametrize(
    "op", ["CONDITION_OPERATOR_REGEX", "CONDITION_OPERATOR_VERSION_GTE", "CONDITION_OPERATOR_EQUALS"]
)
def test_conditions_refuse_values_longer_than_they_read(op: str):
    operand = "5.1" if op == "CONDITION_OPERATOR_VERSION_GTE" else "x"
    assert _holds(op, "v", [operand], _facts(v="9" * MAX_VALUE_CHARS)) is (op == "CONDITION_OPERATOR_VERSION_GTE")
    with pytest.raises(InvalidArgument, match=f"attributes.v: {MAX_VALUE_CHARS + 1} characters"):
        _holds(op, "v", [operand], _facts(v="9" * (MAX_VALUE_CHARS + 1)))


def test_parse_version():
    assert parse_version("5.12.1") == (5, 12, 1)
    assert parse_version("v6") == (6,)
    assert parse_version("5.12.1-rc1") == (5, 12, 1)
    assert parse_version("beta") is None


def _gray(**release) -> pb.Scene:
    return json_format.ParseDict(
        {
            "name": "s",
            "feature_service": "f",
            "model_routing": {"model": {"model": "m"}},
            "gray_release": {"enabled": True, "target": {"model": "m", "alias": "canary"}, **release},
        },
        pb.Scene(),
    )


def test_gray_release_allowlist_rules_and_percentage():
    gray = compile_scene(
        _gray(
            allowlist_unit_ids=["vip"],
            rules=[
                {
                    "name": "new-app-in-eu",
                    "conditions": [
                        {"attribute": "region", "op": "CONDITION_OPERATOR_PREFIX", "values": ["eu-"]},
                        {"attribute": "app_version", "op": "CONDITION_OPERATOR_VERSION_GTE", "values": ["6.0"]},
                    ],
                }
            ],
            percentage=10,
            salt="g",
        ),
        global_limits=False,
    ).gray
    assert gray is not None
    assert gray.admits(Facts("vip", {}, {}), now=0) == "allowlist"
    assert gray.admits(Facts("x", {"region": "eu-west", "app_version": "6.1"}, {}), now=0) == "rule:new-app-in-eu"
    assert gray.admits(Facts("x", {"region": "eu-west", "app_version": "5.9"}, {}), now=0) in (None, "percentage")
    admitted = sum(gray.admits(Facts(u, {}, {}), now=0) == "percentage" for u in UNITS)
    assert admitted / len(UNITS) == pytest.approx(0.10, abs=_tolerance(0.10, len(UNITS)))
    # a unit in at 10% stays in at 20% (the ramp only adds units)
    wider = compile_scene(_gray(percentage=20, salt="g"), global_limits=False).gray
    assert wider is not None
    assert all(wider.admits(Facts(u, {}, {}), now=0) for u in UNITS[:3000] if gray.admits(Facts(u, {}, {}), now=0))


def test_gray_percentage_ramps_on_schedule():
    scene = _gray(
        percentage=0,
        salt="g",
        ramp=[
            {"start_time": "2026-12-01T00:00:00Z", "percentage": 5},
            {"start_time": "2026-12-08T00:00:00Z", "percentage": 50},
        ],
    )
    gray = compile_scene(scene, global_limits=False).gray
    assert gray is not None
    december_1, december_8 = 1_796_083_200.0, 1_796_688_000.0
    assert gray.percentage_at(december_1 - 1) == 0
    assert gray.percentage_at(december_1) == 5
    assert gray.percentage_at(december_8 + 3600) == 50
    share = sum(gray.admits(Facts(u, {}, {}), now=december_8 + 1) is not None for u in UNITS) / len(UNITS)
    assert share == pytest.approx(0.5, abs=_tolerance(0.5, len(UNITS)))
    assert all(gray.admits(Facts(u, {}, {}), now=december_1 - 1) is None for u in UNITS[:2000])


def test_gray_release_is_independent_of_experiment_layers():
    gray = compile_scene(_gray(percentage=50, salt="churn-canary"), global_limits=False).gray
    layer = _experiment([_layer("model", "churn-canary", [500, 500])]).layers[0]  # even with the same salt text
    assert gray is not None
    table = np.zeros((2, 2))
    for unit in UNITS:
        table[int(gray.admits(Facts(unit, {}, {}), now=0) is not None), int(layer.assign(unit)[1].name[1])] += 1
    assert chi2_contingency(table)[1] > 0.001
