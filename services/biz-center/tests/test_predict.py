"""Predict and PredictBatch through the gRPC front, against doubles of the downstream contracts:
routing by experiment and gray release, response mapping, what every answer names, errors, events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from bizcenter_support import (
    ADMIN_KEY,
    EXAMPLE,
    OTHER_KEY,
    UNIT_HASH_KEY,
    Doubles,
    Harness,
    biz_settings,
    churn_probability,
    churn_request,
    edit_scene,
    run_biz,
    scoring,
)

from infermesh.bizcenter.v1 import biz_center_pb2 as pb
from infermesh.common.v1 import common_pb2
from infermesh_biz_center.catalog import compile_experiment
from infermesh_biz_center.registry import load_seed_file
from infermesh_chassis.events import hash_unit_id


def _variant_of(unit: str) -> str:
    experiment = compile_experiment(load_seed_file(EXAMPLE).experiments[0])
    _, variant = experiment.layers[0].assign(unit)
    assert variant is not None
    return variant.name


@pytest.fixture
async def biz(biz: Harness) -> AsyncIterator[Harness]:
    """The business center with a 5 s SLO on its scene: these tests check routing and what answers
    name, not deadlines, and on a loaded machine a call can miss the example's 250 ms and fall back."""
    await edit_scene(biz, lambda scene: scene.slo_deadline.FromSeconds(5))
    yield biz


async def test_a_scene_end_to_end_names_variant_and_version(biz: Harness, doubles: Doubles):
    scene = (await biz.admin.GetScene(pb.GetSceneRequest(name="churn-score"), metadata=scoring(ADMIN_KEY))).scene
    reply = await biz.predict.Predict(churn_request(1), metadata=scoring())
    variant = _variant_of("1")
    version = 1 if variant == "control" else 2
    assert reply.scene == "churn-score"
    assert reply.scene_config_version == scene.config_version == 2
    assert reply.variant == variant
    assert reply.route == pb.ROUTE_SOURCE_EXPERIMENT
    assert (reply.model, reply.model_version) == ("churn", version)
    assert reply.prediction.scores["churn"] == pytest.approx(churn_probability(version, 1), rel=1e-5)
    assert reply.prediction.scores["stay"] == pytest.approx(1 - churn_probability(version, 1), rel=1e-5)
    assert not reply.degradation.degraded
    assert reply.degradation.served_by == common_pb2.SERVED_BY_PRIMARY
    assert [h.hop for h in reply.latencies] == ["data_gateway", "model_gateway"]
    assert reply.feature_lineage.definition_version == "2026.11.1"
    assert {(a.experiment, a.layer) for a in reply.assignments} == {
        ("churn-model-ab", "model"),
        ("churn-model-ab", "threshold"),
    }
    assert reply.request_id
    # the unit id filled the INT64 entity key
    assert doubles.data.last_request.entities[0].keys["customer_id"].int64_value == 1


async def test_the_threshold_layer_parameter_decides_the_label(biz: Harness, doubles: Doubles):
    """A variant's parameters reach the scene logic: t40 labels 'churn' from 0.4 on, t50 from 0.5."""
    seen = set()
    for customer in range(1, 200):
        reply = await biz.predict.Predict(churn_request(customer), metadata=scoring())
        threshold = {"t40": 0.4, "t50": 0.5}[next(a.variant for a in reply.assignments if a.layer == "threshold")]
        churn = reply.prediction.scores["churn"]
        assert reply.prediction.label == ("churn" if churn >= threshold else "stay")
        seen.add(threshold)
    assert seen == {0.4, 0.5}


async def test_assignment_is_stable_and_versions_follow_the_variant(biz: Harness, doubles: Doubles):
    units = [str(1000 + i) for i in range(60)]
    first = await asyncio.gather(*(biz.predict.Predict(churn_request(u), metadata=scoring()) for u in units))
    again = await asyncio.gather(*(biz.predict.Predict(churn_request(u), metadata=scoring()) for u in units))
    for a, b in zip(first, again, strict=True):
        assert (a.variant, a.model_version) == (b.variant, b.model_version)
        assert a.model_version == (1 if a.variant == "control" else 2)
    assert {r.variant for r in first} == {"control", "treatment"}


async def test_gray_release_serves_the_canary_to_allowlist_and_rules(biz: Harness, doubles: Doubles):
    allowlisted = await biz.predict.Predict(churn_request(9001), metadata=scoring())
    assert (allowlisted.route, allowlisted.model_version, allowlisted.variant) == (pb.ROUTE_SOURCE_GRAY_RELEASE, 2, "")
    staff = await biz.predict.Predict(churn_request(77, channel="staff"), metadata=scoring())
    assert (staff.route, staff.model_version) == (pb.ROUTE_SOURCE_GRAY_RELEASE, 2)
    customer = await biz.predict.Predict(churn_request(77, channel="web"), metadata=scoring())
    assert customer.route == pb.ROUTE_SOURCE_EXPERIMENT


async def test_a_catastrophic_gray_release_regex_cannot_stall_the_event_loop(biz: Harness, doubles: Doubles):
    def rule(pattern: str) -> Callable[[pb.Scene], None]:
        def edit(scene: pb.Scene) -> None:
            del scene.gray_release.rules[:]
            condition = pb.Condition(attribute="segment", op=pb.CONDITION_OPERATOR_REGEX, values=[pattern])
            scene.gray_release.rules.add(name="segment", conditions=[condition])

        return edit

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await edit_scene(biz, rule(r"(a)\1"))  # Python's re accepts it, RE2 does not
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "RE2" in (refused.value.details() or "")
    await edit_scene(biz, rule("(a+)+$"))
    # with a backtracking matcher these 16 calls would hold the event loop for minutes; each is one RE2 pass
    answers = await asyncio.wait_for(
        asyncio.gather(
            *(biz.predict.Predict(churn_request(u, segment="a" * 28 + "!"), metadata=scoring()) for u in range(16))
        ),
        30,
    )
    assert {a.route for a in answers} == {pb.ROUTE_SOURCE_EXPERIMENT}
    canary = await biz.predict.Predict(churn_request(5, segment="aaaa"), metadata=scoring())
    assert canary.route == pb.ROUTE_SOURCE_GRAY_RELEASE
    with pytest.raises(grpc.aio.AioRpcError) as too_long:
        await biz.predict.Predict(churn_request(5, segment="a" * 5000), metadata=scoring())
    assert too_long.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "attributes.segment: 5000 characters" in (too_long.value.details() or "")


async def test_exposure_and_inference_events_reach_the_monitor(biz: Harness, doubles: Doubles):
    reply = await biz.predict.Predict(churn_request(2), metadata=scoring())
    for _ in range(100):
        if doubles.monitor.payloads("inference"):
            break
        await asyncio.sleep(0.02)
    exposures = doubles.monitor.payloads("exposure")
    assert {(e.experiment, e.layer, e.variant) for e in exposures} == {
        (a.experiment, a.layer, a.variant) for a in reply.assignments
    }
    # the chassis' keyed hash with the configured key, never the id
    assert {e.unit_id_hash for e in exposures} == {hash_unit_id("2", UNIT_HASH_KEY)}
    (inference,) = doubles.monitor.payloads("inference")
    assert (inference.scene, inference.variant, inference.model_version) == (
        "churn-score",
        reply.variant,
        reply.model_version,
    )
    assert [h.hop for h in inference.hop_latencies] == ["data_gateway", "model_gateway", "biz_center"]
    assert inference.scores["churn"] == pytest.approx(reply.prediction.scores["churn"])
    envelope = next(e for e in doubles.monitor.events if e.WhichOneof("payload") == "inference")
    assert envelope.request_id == reply.request_id
    assert envelope.source.service == "biz-center"


async def test_predict_batch_answers_each_item_on_its_own(biz: Harness, doubles: Doubles):
    request = pb.PredictBatchRequest(
        items=[
            churn_request(1),
            pb.PredictRequest(scene="no-such-scene", unit_id="1"),
            pb.PredictRequest(scene="churn-score", unit_id="not-a-number"),
            pb.PredictRequest(scene="churn-score", unit_id="3", request_id="caller-rid-3"),
        ]
    )
    reply = await biz.predict.PredictBatch(request, metadata=scoring(ADMIN_KEY))
    kinds = [r.WhichOneof("outcome") for r in reply.results]
    assert kinds == ["response", "error", "error", "response"]
    assert reply.results[1].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert reply.results[2].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert reply.results[2].error.details["field"] == "unit_id"
    assert reply.results[3].response.request_id == "caller-rid-3"
    assert reply.results[0].response.prediction.scores["churn"] > 0
    first = reply.results[0].response
    assert first.feature_lineage.definition_version == "2026.11.1"
    assert [h.hop for h in first.latencies] == ["data_gateway", "model_gateway"]
    assert first.degradation.served_by == common_pb2.SERVED_BY_PRIMARY


async def test_a_predict_batch_wave_shares_its_downstream_calls_and_answers_as_predict(biz: Harness, doubles: Doubles):
    await edit_scene(biz, lambda scene: setattr(scene, "max_concurrency", 0))  # the example's 64 would split it
    alone = {u: await biz.predict.Predict(churn_request(u), metadata=scoring()) for u in (1, 2, 3, 4)}
    doubles.data.batch_sizes.clear()
    doubles.models.batch_sizes.clear()
    request = pb.PredictBatchRequest(items=[churn_request(1 + i % 4) for i in range(100)])
    reply = await biz.predict.PredictBatch(request, metadata=scoring())
    assert doubles.data.batch_sizes == [100]  # one GetFeatures for the wave
    # one ModelInfer per routed version and chunk of batch_model_rows (64), not one per item
    assert sum(doubles.models.batch_sizes) == 100 and max(doubles.models.batch_sizes) <= 64
    assert len(doubles.models.batch_sizes) <= 3
    for i, result in enumerate(reply.results):
        answer, expected = result.response, alone[1 + i % 4]
        assert (answer.variant, answer.model_version, answer.route) == (
            expected.variant,
            expected.model_version,
            expected.route,
        )
        assert dict(answer.prediction.scores) == pytest.approx(dict(expected.prediction.scores))
        assert answer.prediction.label == expected.prediction.label
        assert [h.hop for h in answer.latencies] == ["data_gateway", "model_gateway"]
        assert not answer.degradation.degraded


async def test_one_bad_item_does_not_fail_its_wave(biz: Harness, doubles: Doubles):
    items = [churn_request(-1 if i == 5 else 1 + i % 4) for i in range(20)]
    reply = await biz.predict.PredictBatch(pb.PredictBatchRequest(items=items), metadata=scoring())
    assert reply.results[5].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    answered = [r for i, r in enumerate(reply.results) if i != 5]
    assert [r.WhichOneof("outcome") for r in answered] == ["response"] * 19
    assert not any(r.response.degradation.degraded for r in answered)
    assert doubles.data.batch_sizes == [20] + [1] * 20  # the refused call, then each item on its own


async def test_a_predict_batch_beyond_the_scene_concurrency_is_scored_in_waves(biz: Harness, doubles: Doubles):
    await edit_scene(biz, lambda scene: setattr(scene, "max_concurrency", 4))
    items = [churn_request(1 + i % 4) for i in range(10)]
    reply = await biz.predict.PredictBatch(pb.PredictBatchRequest(items=items), metadata=scoring())
    assert [r.WhichOneof("outcome") for r in reply.results] == ["response"] * 10
    assert doubles.data.batch_sizes == [4, 4, 2]


@pytest.mark.parametrize(
    ("request_", "metadata", "code", "text"),
    [
        (pb.PredictRequest(scene="nope", unit_id="1"), scoring(), grpc.StatusCode.NOT_FOUND, "scene 'nope'"),
        (pb.PredictRequest(scene="churn-score"), scoring(), grpc.StatusCode.INVALID_ARGUMENT, "unit_id: required"),
        (churn_request(1), (), grpc.StatusCode.UNAUTHENTICATED, "credentials required"),
        (churn_request(1), scoring("wrong"), grpc.StatusCode.UNAUTHENTICATED, "API key is not valid"),
        (churn_request(1), scoring(OTHER_KEY), grpc.StatusCode.PERMISSION_DENIED, "may not use scene"),
        (churn_request("abc"), scoring(), grpc.StatusCode.INVALID_ARGUMENT, "not an integer"),
    ],
)
async def test_errors_carry_their_status(biz: Harness, request_, metadata, code, text):
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await biz.predict.Predict(request_, metadata=metadata)
    assert failed.value.code() == code
    assert text in failed.value.details()


async def test_an_integer_unit_id_has_one_spelling(biz: Harness, doubles: Doubles):
    # int() reads every one of these as 42, while the experiment bucket hashes the text: each would have read
    # customer 42's features from another bucket. They are refused; "42" reads customer 42 as key 42.
    for unit in (" 42 ", "+42", "\u0664\u0662", "042", "4_2", "-0", "9" * 19):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await biz.predict.Predict(churn_request(unit), metadata=scoring())
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, unit
        assert f"unit_id: {unit!r} is not an integer in canonical form" in (refused.value.details() or ""), unit
    answer = await biz.predict.Predict(churn_request("42"), metadata=scoring())
    assert answer.variant == _variant_of("42")
    assert doubles.data.last_request is not None
    assert doubles.data.last_request.entities[0].keys["customer_id"].int64_value == 42


async def test_a_disabled_scene_is_failed_precondition(biz: Harness):
    scene = (await biz.admin.GetScene(pb.GetSceneRequest(name="churn-score"), metadata=scoring(ADMIN_KEY))).scene
    scene.enabled = False
    await biz.admin.UpsertScene(pb.UpsertSceneRequest(scene=scene), metadata=scoring(ADMIN_KEY))
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await biz.predict.Predict(churn_request(1), metadata=scoring())
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def _events(doubles: Doubles, kind: str, count: int) -> list:
    for _ in range(200):
        if len(doubles.monitor.payloads(kind)) >= count:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # and nothing more arrives
    return doubles.monitor.payloads(kind)


async def test_a_units_exposure_is_reported_once_per_window(biz: Harness, doubles: Doubles):
    for _ in range(3):
        await biz.predict.Predict(churn_request(2), metadata=scoring())
    assert len(await _events(doubles, "inference", 3)) == 3  # every prediction
    assert len(doubles.monitor.payloads("exposure")) == 2  # the unit's first exposure in each layer


async def test_every_exposure_is_reported_without_a_window(tmp_path, doubles: Doubles):
    async with run_biz(biz_settings(tmp_path, doubles.static(), predict={"exposure_dedup_s": 0})) as biz:
        for _ in range(3):
            await biz.predict.Predict(churn_request(2), metadata=scoring())
        assert len(await _events(doubles, "exposure", 6)) == 6
