"""The gateway against real Triton: predictions, routing, mirroring, errors, registry rules, audit.

One gateway with two embedded Triton workers serves the whole module: version 1 of ``churn`` is
a logistic regression, version 2 a gradient-boosted tree ensemble, both ONNX.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2
from tritonclient.grpc import service_pb2

from infermesh.common.v1 import common_pb2
from infermesh.modelgateway.v1 import model_gateway_pb2 as pb
from infermesh_model_gateway.pool import MODEL_INFER
from infermesh_model_gateway.testing import (
    ChurnModels,
    GatewayHarness,
    TrainedModel,
    infer_request,
    output,
    register_request,
    sha256,
    start_gateway,
    until,
)
from infermesh_model_gateway.wire import string_field

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw(churn_models: ChurnModels, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GatewayHarness]:
    async with start_gateway(tmp_path_factory.mktemp("gateway"), workers=2) as harness:
        assert await harness.register_and_deploy("churn", churn_models.v1) == 1
        assert await harness.register_and_deploy("churn", churn_models.v2) == 2
        await harness.control.PromoteModelVersion(pb.PromoteModelVersionRequest(model="churn", version=1))
        yield harness


async def _set_policy(gw: GatewayHarness, **policy: object) -> None:
    await gw.control.SetTrafficPolicy(pb.SetTrafficPolicyRequest(model="churn", policy=pb.TrafficPolicy(**policy)))


@pytest_asyncio.fixture(loop_scope="module")
async def production_only(gw: GatewayHarness) -> AsyncIterator[None]:
    """Each routing test starts and ends with all un-pinned traffic on production (version 1)."""
    await gw.control.PromoteModelVersion(pb.PromoteModelVersionRequest(model="churn", version=1))
    yield
    await gw.control.PromoteModelVersion(pb.PromoteModelVersionRequest(model="churn", version=1))
    await _set_policy(gw)


def _local(trained: TrainedModel, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(trained.path), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(["label", "probabilities"], {"X": x})
    return {"label": label, "probabilities": probabilities}


@pytest.mark.parametrize(("version", "pin"), [("1", {}), ("2", {}), ("", {"alias": "production"})])
async def test_predictions_equal_local_onnxruntime(gw, churn_models, version, pin, production_only):
    x = churn_models.x[:32]
    response = await gw.inference.ModelInfer(infer_request("churn", x, version, **pin))
    trained = churn_models.v2 if version == "2" else churn_models.v1
    expected = _local(trained, x)
    assert response.model_name == "churn"
    assert response.model_version == (version or "1")
    np.testing.assert_allclose(output(response, "probabilities"), expected["probabilities"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(output(response, "label").reshape(-1), expected["label"])


async def test_an_alias_in_the_model_name_pins_the_version(gw, churn_models, production_only):
    await gw.control.SetAlias(pb.SetAliasRequest(model="churn", alias="canary", version=2))
    response = await gw.inference.ModelInfer(infer_request("churn@canary", churn_models.x[:1]))
    assert response.model_version == "2"
    await gw.control.DeleteAlias(pb.DeleteAliasRequest(model="churn", alias="canary"))


async def test_weighted_split_within_tolerance(gw, churn_models, production_only):
    await _set_policy(gw, weights=[pb.VersionWeight(version=1, weight=80), pb.VersionWeight(version=2, weight=20)])
    x = churn_models.x[:1]
    slots = asyncio.Semaphore(64)  # below the gateway's in-flight cap per version, however fast it forwards

    async def one() -> service_pb2.ModelInferResponse:
        async with slots:
            return await gw.inference.ModelInfer(infer_request("churn", x))

    responses = await asyncio.gather(*(one() for _ in range(1000)))
    share = Counter(r.model_version for r in responses)["2"] / len(responses)
    assert abs(share - 0.20) < 0.04, share


async def test_sticky_routing_keeps_each_key_on_one_version(gw, churn_models, production_only):
    await _set_policy(
        gw,
        weights=[pb.VersionWeight(version=1, weight=50), pb.VersionWeight(version=2, weight=50)],
        sticky=pb.StickyRouting(enabled=True, key_name="unit_id"),
    )
    x = churn_models.x[:1]
    units = [f"user-{i}" for i in range(200)]
    first = await asyncio.gather(*(gw.inference.ModelInfer(infer_request("churn", x, unit_id=u)) for u in units))
    again = await asyncio.gather(*(gw.inference.ModelInfer(infer_request("churn", x, unit_id=u)) for u in units))
    assert [r.model_version for r in first] == [r.model_version for r in again]
    share = Counter(r.model_version for r in first)["2"] / len(units)
    assert 0.35 < share < 0.65, share
    by_metadata = await gw.inference.ModelInfer(infer_request("churn", x), metadata=(("unit_id", units[0]),))
    assert by_metadata.model_version == first[0].model_version


def _sample(gw: GatewayHarness, name: str) -> float:
    return gw.runtime.metrics.registry.get_sample_value(name, {"model": "churn"}) or 0.0


async def test_mirror_copies_its_share_to_the_shadow_and_reports_both(gw, churn_models, production_only):
    await _set_policy(gw, mirror=pb.Mirror(shadow_version=2, fraction=0.5))
    gw.sink.events.clear()
    mirrored_before = _sample(gw, "infermesh_model_gateway_shadow_requests_total")
    x = churn_models.x[:4]
    count = 400
    responses = []
    for _ in range(count // 8):
        responses += await asyncio.gather(*(gw.inference.ModelInfer(infer_request("churn", x)) for _ in range(8)))
    assert {r.model_version for r in responses} == {"1"}
    mirrored = _sample(gw, "infermesh_model_gateway_shadow_requests_total") - mirrored_before
    await until(lambda: len(gw.events("shadow")) == mirrored, what=f"{mirrored} shadow events")
    assert not gw.runtime.metrics.registry.get_sample_value(
        "infermesh_model_gateway_shadow_skipped_total", {"model": "churn"}
    )
    shadows = [e for e in gw.sink.events if e.WhichOneof("payload") == "shadow"]
    assert abs(len(shadows) / count - 0.5) < 0.08, len(shadows)
    event = shadows[0].shadow
    assert (event.primary_version, event.shadow_version) == (1, 2)
    assert not event.HasField("shadow_error")
    assert {t.name for t in event.shadow_outputs} == {"label", "probabilities"}
    inference_ids = {e.request_id for e in gw.sink.events if e.WhichOneof("payload") == "inference"}
    assert all(s.request_id in inference_ids for s in shadows)


async def test_inference_events_name_model_version_and_latency(gw, churn_models, production_only):
    gw.sink.events.clear()
    await gw.inference.ModelInfer(
        infer_request("churn", churn_models.x[:3], "2"), metadata=(("x-request-id", "req-42"),)
    )
    await until(lambda: any(e.request_id == "req-42" for e in gw.sink.events), what="the inference event")
    (event,) = [e for e in gw.sink.events if e.request_id == "req-42"]
    assert event.inference.model == "churn"
    assert event.inference.model_version == 2
    assert event.inference.batch_size == 3
    assert event.inference.latency_ms > 0


async def test_answers_are_tritons_bytes_with_the_serving_version_appended(gw, churn_models, production_only):
    """The pass-through: the caller's bytes reach Triton readdressed, Triton's bytes come back unparsed."""
    request = infer_request("churn", churn_models.x[:4], "2").SerializeToString()
    through = await gw.channel.unary_unary(MODEL_INFER)(request)
    record = gw.gateway.router.version("churn", "2")
    direct = await gw.gateway.pool.workers[0].model_infer(
        request + string_field(1, record.triton_name) + string_field(2, "")
    )
    assert service_pb2.ModelInferResponse.FromString(direct).model_name == record.triton_name
    assert through == direct + string_field(1, "churn") + string_field(2, "2")
    answer = service_pb2.ModelInferResponse.FromString(through)
    assert (answer.model_name, answer.model_version) == ("churn", "2")


async def test_bytes_that_are_no_inference_request_are_an_invalid_argument(gw):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.channel.unary_unary(MODEL_INFER)(b"\x0a\xff")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid inference.ModelInferRequest" in caught.value.details()


async def test_streaming_inference_answers_each_request_in_order(gw, churn_models, production_only):
    requests = [infer_request("churn", churn_models.x[:2], "2"), infer_request("nope", churn_models.x[:2])]
    answers = [a async for a in gw.inference.ModelStreamInfer(iter(requests))]
    assert len(answers) == 2
    assert answers[0].infer_response.model_version == "2" and not answers[0].error_message
    assert answers[0].infer_response.model_name == "churn"
    assert "model 'nope' is not registered" in answers[1].error_message


_BAD_REQUESTS = [
    ("unknown model", lambda x: infer_request("nope", x), grpc.StatusCode.NOT_FOUND, "model 'nope' is not registered"),
    ("unknown version", lambda x: infer_request("churn", x, "9"), grpc.StatusCode.NOT_FOUND, "no version 9"),
    ("unknown alias", lambda x: infer_request("churn@blue", x), grpc.StatusCode.NOT_FOUND, "no alias 'blue'"),
    (
        "wrong datatype",
        lambda x: _mutate(infer_request("churn", x), datatype="FP64"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'X': datatype FP64, expected FP32",
    ),
    (
        "wrong shape",
        lambda x: _mutate(infer_request("churn", x), shape=[2, 5]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'X': shape [2, 5], expected [-1, 6]",
    ),
    (
        "unknown input",
        lambda x: _mutate(infer_request("churn", x), name="features"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown input 'features'",
    ),
    (
        "missing input",
        lambda x: service_pb2.ModelInferRequest(model_name="churn"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "missing input 'X'",
    ),
    (
        "byte size mismatch",
        lambda x: _truncate(infer_request("churn", x)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "bytes of raw contents, expected 48",
    ),
    (
        "oversize batch",
        lambda x: infer_request("churn", np.zeros((65, 6), np.float32)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "batch size 65 exceeds the maximum of 64",
    ),
]


def _mutate(request: service_pb2.ModelInferRequest, **changes: object) -> service_pb2.ModelInferRequest:
    tensor = request.inputs[0]
    for key, value in changes.items():
        if key == "shape":
            del tensor.shape[:]
            tensor.shape.extend(value)  # type: ignore[arg-type]
        else:
            setattr(tensor, key, value)
    return request


def _truncate(request: service_pb2.ModelInferRequest) -> service_pb2.ModelInferRequest:
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    return request


@pytest.mark.parametrize(("case", "build", "code", "message"), _BAD_REQUESTS, ids=[c[0] for c in _BAD_REQUESTS])
async def test_bad_inference_requests_get_a_clear_status(gw, churn_models, case, build, code, message):  # noqa: PLR0917
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.inference.ModelInfer(build(churn_models.x[:2]))
    assert caught.value.code() == code
    assert message in caught.value.details()


async def test_repository_management_goes_through_the_control_plane(gw):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.inference.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(model_name="churn__1"))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "DeployModelVersion" in caught.value.details()


async def test_a_version_that_is_not_serving_is_refused(gw, churn_models):
    registered = await gw.control.RegisterModelVersion(register_request("churn", churn_models.v1))
    version = registered.model_version.version
    with pytest.raises(grpc.aio.AioRpcError) as pinned:
        await gw.inference.ModelInfer(infer_request("churn", churn_models.x[:1], str(version)))
    assert pinned.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "registered, not serving; deploy it first" in pinned.value.details()
    for call in (
        gw.control.SetAlias(pb.SetAliasRequest(model="churn", alias="canary", version=version)),
        gw.control.PromoteModelVersion(pb.PromoteModelVersionRequest(model="churn", version=version)),
        gw.control.SetTrafficPolicy(
            pb.SetTrafficPolicyRequest(
                model="churn", policy=pb.TrafficPolicy(weights=[pb.VersionWeight(version=version, weight=1)])
            )
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "not serving" in refused.value.details()


async def test_undeploy_is_refused_while_an_alias_points_at_the_version(gw):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.control.UndeployModelVersion(pb.UndeployModelVersionRequest(model="churn", version=1))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "alias 'production' still point at it" in caught.value.details()


def _tampered(trained: TrainedModel, tmp_path: Path) -> TrainedModel:
    copy = tmp_path / "tampered.onnx"
    copy.write_bytes(trained.path.read_bytes() + b"\0")
    return dataclasses.replace(trained, path=copy)


async def test_registration_refuses_bad_artifacts_and_stores_nothing(gw, churn_models, tmp_path):
    before = await gw.control.ListModelVersions(pb.ListModelVersionsRequest(model="churn"))
    tampered = _tampered(churn_models.v1, tmp_path)
    pickled = tmp_path / "model.pkl"
    pickled.write_bytes(b"\x80\x04K\x01.")
    wrong_schema = register_request("churn", churn_models.v1)
    wrong_schema.inputs[0].name = "features"
    too_large, zero, unbatched = (register_request("churn", churn_models.v1) for _ in range(3))
    too_large.deployment.dynamic_batching.preferred_batch_sizes[:] = [8, 128]
    zero.deployment.dynamic_batching.preferred_batch_sizes[:] = [0]
    unbatched.deployment.dynamic_batching.enabled = False
    unbatched.deployment.dynamic_batching.preferred_batch_sizes[:] = [8]
    no_baseline, bad_baseline_digest = (register_request("churn", churn_models.v1) for _ in range(2))
    no_baseline.drift_baseline.SetInParent()
    bad_baseline_digest.drift_baseline.uri = "file:///baselines/churn.parquet"
    bad_baseline_digest.drift_baseline.sha256 = "abc"
    cases = [
        (register_request("churn", tampered), grpc.StatusCode.INVALID_ARGUMENT, "sha256 mismatch"),
        (wrong_schema, grpc.StatusCode.INVALID_ARGUMENT, "input 'features' is not in the ONNX graph"),
        (
            pb.RegisterModelVersionRequest(
                model="churn",
                format=pb.MODEL_FORMAT_SKLEARN,
                artifact=pb.Artifact(uri=str(pickled), sha256=sha256(pickled)),
                inputs=[common_pb2.TensorSpec(name="X", datatype="FP32", shape=[6])],
                outputs=[common_pb2.TensorSpec(name="label", datatype="INT64", shape=[1])],
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "artifact.trusted=true",
        ),
        (
            pb.RegisterModelVersionRequest(model="churn", artifact=pb.Artifact(uri="x", sha256="0" * 64)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "format is required",
        ),
        (
            register_request("churn", dataclasses.replace(churn_models.v1, sha256="abc")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "64 hex characters",
        ),
        (
            register_request("bad__name", churn_models.v1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "model name 'bad__name' is invalid",
        ),
        (
            register_request("churn", dataclasses.replace(churn_models.v1, path=tmp_path / "missing.onnx")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "no file at",
        ),
        (
            too_large,
            grpc.StatusCode.INVALID_ARGUMENT,
            "deployment.dynamic_batching.preferred_batch_sizes[1] is 128; each preferred batch size must be "
            "between 1 and max_batch_size (64)",
        ),
        (zero, grpc.StatusCode.INVALID_ARGUMENT, "deployment.dynamic_batching.preferred_batch_sizes[0] is 0"),
        (
            unbatched,
            grpc.StatusCode.INVALID_ARGUMENT,
            "deployment.dynamic_batching.preferred_batch_sizes needs dynamic_batching.enabled",
        ),
        (no_baseline, grpc.StatusCode.INVALID_ARGUMENT, "drift_baseline: give its uri or the baseline_id"),
        (bad_baseline_digest, grpc.StatusCode.INVALID_ARGUMENT, "drift_baseline.sha256 must be"),
    ]
    for request, code, message in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gw.control.RegisterModelVersion(request)
        assert caught.value.code() == code, caught.value.details()
        assert message in caught.value.details()
    after = await gw.control.ListModelVersions(pb.ListModelVersionsRequest(model="churn"))
    assert [v.version for v in after.model_versions] == [v.version for v in before.model_versions]


async def test_promote_and_rollback_are_single_audited_calls(gw, churn_models, production_only):
    promoted = await gw.control.PromoteModelVersion(
        pb.PromoteModelVersionRequest(model="churn", version=2, actor="alice", reason="v2 wins the A/B test")
    )
    assert promoted.previous_version == 1
    assert promoted.model.aliases["production"] == 2
    response = await gw.inference.ModelInfer(infer_request("churn", churn_models.x[:1]))
    assert response.model_version == "2"
    rolled = await gw.control.RollbackModel(
        pb.RollbackModelRequest(model="churn", actor="bob", reason="p99 regression")
    )
    assert rolled.rolled_back_version == 2
    assert rolled.model.aliases["production"] == 1
    response = await gw.inference.ModelInfer(infer_request("churn", churn_models.x[:1]))
    assert response.model_version == "1"
    audit = await gw.control.ListAuditEntries(
        pb.ListAuditEntriesRequest(
            filter=common_pb2.AuditFilter(target_prefix="models/churn", actions=["model.promote", "model.rollback"])
        )
    )
    rollback, promote = audit.entries[:2]
    assert (rollback.action, rollback.actor, rollback.reason) == ("model.rollback", "bob", "p99 regression")
    assert (promote.action, promote.actor, promote.reason) == ("model.promote", "alice", "v2 wins the A/B test")
    assert json.loads(promote.before_json)["aliases"]["production"] == 1
    assert json.loads(promote.after_json)["aliases"]["production"] == 2
    assert json.loads(rollback.after_json)["aliases"]["production"] == 1


async def test_stale_traffic_revision_is_aborted(gw, production_only):
    current = await gw.control.GetTrafficPolicy(pb.GetTrafficPolicyRequest(model="churn"))
    await _set_policy(gw, weights=[pb.VersionWeight(version=1, weight=1)])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.control.SetTrafficPolicy(
            pb.SetTrafficPolicyRequest(
                model="churn", policy=pb.TrafficPolicy(), expected_revision=current.policy.revision
            )
        )
    assert caught.value.code() == grpc.StatusCode.ABORTED


async def test_metadata_and_readiness_speak_kserve_v2(gw):
    metadata = await gw.inference.ModelMetadata(service_pb2.ModelMetadataRequest(name="churn", version="2"))
    assert metadata.name == "churn"
    assert metadata.platform == "onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("X", "FP32", [-1, 6])]
    assert {"1", "2"} <= set(metadata.versions)
    assert (await gw.inference.ModelReady(service_pb2.ModelReadyRequest(name="churn", version="2"))).ready
    assert (await gw.inference.ServerReady(service_pb2.ServerReadyRequest())).ready
    config = await gw.inference.ModelConfig(service_pb2.ModelConfigRequest(name="churn", version="1"))
    assert config.config.name == "churn"
    assert config.config.max_batch_size == 64
    assert config.config.dynamic_batching.max_queue_delay_microseconds == 500


async def test_list_and_get_describe_the_registry(gw):
    model = (await gw.control.GetModel(pb.GetModelRequest(model="churn"))).model
    assert {1, 2} <= set(model.serving_versions)
    assert model.owner == "risk-team"
    version = (
        await gw.control.GetModelVersion(pb.GetModelVersionRequest(model="churn", alias="production"))
    ).model_version
    assert version.state == pb.MODEL_VERSION_STATE_SERVING
    assert "production" in version.aliases
    page = await gw.control.ListModelVersions(
        pb.ListModelVersionsRequest(model="churn", page=common_pb2.PageRequest(page_size=1))
    )
    assert len(page.model_versions) == 1 and page.page.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.control.GetModel(pb.GetModelRequest(model="absent"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_version_answers_carry_labels_author_update_time_and_replicas(gw, churn_models):
    request = register_request("labelled", churn_models.v1)
    request.actor = "carol"
    request.outputs[1].class_labels[:] = ["stay", "churn"]
    registered = (await gw.control.RegisterModelVersion(request)).model_version
    assert registered.created_by == "carol"
    assert list(registered.outputs[1].class_labels) == ["stay", "churn"]
    assert [list(t.class_labels) for t in (*registered.inputs, registered.outputs[0])] == [[], []]
    assert registered.update_time == registered.create_time
    assert not registered.replicas
    deployed = (
        await gw.control.DeployModelVersion(pb.DeployModelVersionRequest(model="labelled", version=registered.version))
    ).model_version
    assert deployed.update_time.ToDatetime() > registered.update_time.ToDatetime()
    fetched = (
        await gw.control.GetModelVersion(pb.GetModelVersionRequest(model="labelled", version=registered.version))
    ).model_version
    (listed,) = (await gw.control.ListModelVersions(pb.ListModelVersionsRequest(model="labelled"))).model_versions
    ready = [(w.id, w.address, pb.REPLICA_STATE_READY) for w in gw.gateway.pool.workers]
    assert len(ready) == 2
    for answer in (deployed, fetched, listed):
        assert [(r.worker_id, r.address, r.state) for r in answer.replicas] == ready
        assert answer.created_by == "carol"
        assert list(answer.outputs[1].class_labels) == ["stay", "churn"]
        assert answer.update_time == deployed.update_time
    await gw.control.SetAlias(pb.SetAliasRequest(model="labelled", alias="canary", version=registered.version))
    aliased = (
        await gw.control.GetModelVersion(pb.GetModelVersionRequest(model="labelled", alias="canary"))
    ).model_version
    assert aliased.update_time.ToDatetime() > deployed.update_time.ToDatetime()


async def test_version_answers_carry_what_the_registration_and_retirement_recorded(gw, churn_models):
    request = register_request("described", churn_models.v1)
    request.inputs[0].description = "six scaled customer features"
    request.outputs[1].description = "P(stay), P(churn)"
    request.deployment.dynamic_batching.preferred_batch_sizes[:] = [8, 32]
    request.drift_baseline.uri = "file:///baselines/churn-2026-11.parquet"
    request.drift_baseline.sha256 = "B" * 64
    registered = (await gw.control.RegisterModelVersion(request)).model_version
    created = (await gw.control.GetModel(pb.GetModelRequest(model="described"))).model
    assert created.update_time == created.create_time == registered.create_time
    deployed = (
        await gw.control.DeployModelVersion(pb.DeployModelVersionRequest(model="described", version=1))
    ).model_version
    fetched = (await gw.control.GetModelVersion(pb.GetModelVersionRequest(model="described", version=1))).model_version
    (listed,) = (await gw.control.ListModelVersions(pb.ListModelVersionsRequest(model="described"))).model_versions
    baseline = pb.DriftBaselineRef(uri="file:///baselines/churn-2026-11.parquet", sha256="b" * 64)
    for answer in (registered, deployed, fetched, listed):
        assert answer.artifact.size_bytes == churn_models.v1.path.stat().st_size
        assert [t.description for t in (*answer.inputs, *answer.outputs)] == [
            "six scaled customer features",
            "",
            "P(stay), P(churn)",
        ]
        assert list(answer.deployment.dynamic_batching.preferred_batch_sizes) == [8, 32]
        assert answer.drift_baseline == baseline
    assert len(fetched.replicas) == 2
    for replica in fetched.replicas:
        assert replica.update_time.ToDatetime() >= deployed.update_time.ToDatetime()
    served = await gw.inference.ModelConfig(service_pb2.ModelConfigRequest(name="described", version="1"))
    assert list(served.config.dynamic_batching.preferred_batch_size) == [8, 32]
    deployed_model = (await gw.control.GetModel(pb.GetModelRequest(model="described"))).model
    assert deployed_model.update_time.ToDatetime() > created.update_time.ToDatetime()

    asked = registered.create_time.ToDatetime()
    retiring = (
        await gw.control.RetireModelVersion(
            pb.RetireModelVersionRequest(
                model="described",
                version=1,
                deprecation_period=duration_pb2.Duration(seconds=3600),
                actor="dana",
                reason="superseded",
            )
        )
    ).model_version
    retirement = retiring.retirement
    assert (retirement.actor, retirement.reason) == ("dana", "superseded")
    assert retirement.deprecate_time.ToDatetime() > asked
    period = retirement.retire_time.ToDatetime() - retirement.deprecate_time.ToDatetime()
    assert timedelta(minutes=59) < period <= timedelta(hours=1)
    assert retirement.deprecate_time == retiring.update_time
    fetched = (await gw.control.GetModelVersion(pb.GetModelVersionRequest(model="described", version=1))).model_version
    assert fetched.retirement == retirement
    retired_model = (await gw.control.GetModel(pb.GetModelRequest(model="described"))).model
    assert retired_model.update_time == retiring.update_time


async def test_recorded_warmup_samples_are_checked_and_kept(gw, churn_models):
    sample = pb.WarmupSample(
        name="typical-customer",
        count=2,
        inputs=[
            common_pb2.Tensor(
                name="X",
                datatype="FP32",
                shape=[1, 6],
                values=common_pb2.Value(double_list=common_pb2.DoubleList(values=[0.1] * 6)),
            )
        ],
    )
    request = register_request("warm", churn_models.v1)
    request.deployment.warmup_samples.append(sample)
    registered = await gw.control.RegisterModelVersion(request)
    deployed = await gw.control.DeployModelVersion(
        pb.DeployModelVersionRequest(model="warm", version=registered.model_version.version)
    )
    assert deployed.model_version.state == pb.MODEL_VERSION_STATE_SERVING
    kept = deployed.model_version.deployment.warmup_samples[0]
    assert (kept.name, kept.count, list(kept.inputs[0].shape)) == ("typical-customer", 2, [1, 6])
    bad = register_request("warm", churn_models.v1)
    sample.inputs[0].shape[:] = [1, 5]
    bad.deployment.warmup_samples.append(sample)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.control.RegisterModelVersion(bad)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "deployment.warmup_samples[0] ('typical-customer'): input 'X'" in caught.value.details()
