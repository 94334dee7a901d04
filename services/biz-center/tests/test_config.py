"""Scenes and experiments through the admin RPCs: validation, optimistic concurrency, audit log,
changes applied without restart and surviving restarts, and the versioned seed file."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import yaml
from bizcenter_support import (
    ADMIN_KEY,
    EXAMPLE,
    SCORING_KEY,
    Doubles,
    Harness,
    biz_settings,
    churn_request,
    run_biz,
    scoring,
)
from google.protobuf import json_format

from infermesh.bizcenter.v1 import biz_center_pb2 as pb
from infermesh.common.v1 import common_pb2
from infermesh_biz_center.registry import ConfigRegistry, load_seed_file
from infermesh_biz_center.store import ConfigStore
from infermesh_chassis.errors import InvalidArgument
from infermesh_chassis.settings import SettingsError

ADMIN = scoring(ADMIN_KEY)


async def _scene(biz: Harness, name: str = "churn-score") -> pb.Scene:
    return (await biz.admin.GetScene(pb.GetSceneRequest(name=name), metadata=ADMIN)).scene


async def _experiment(biz: Harness, name: str = "churn-model-ab") -> pb.Experiment:
    return (await biz.admin.GetExperiment(pb.GetExperimentRequest(name=name), metadata=ADMIN)).experiment


async def _expect(code: grpc.StatusCode, call, text: str = "") -> str:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    assert failed.value.code() == code, failed.value.details()
    assert text in failed.value.details()
    return failed.value.details()


async def test_seed_file_is_applied_and_audited(biz: Harness):
    scenes = await biz.admin.ListScenes(pb.ListScenesRequest(), metadata=ADMIN)
    assert [s.name for s in scenes.scenes] == ["churn-score"]
    scene = scenes.scenes[0]
    assert (scene.config_version, scene.updated_by) == (1, "seed-file")
    assert scene.update_time.seconds > 0
    audit = await biz.admin.ListAuditEntries(pb.ListAuditEntriesRequest(), metadata=ADMIN)
    assert [(e.action, e.target) for e in audit.entries] == [
        ("experiment.upsert", "experiments/churn-model-ab"),
        ("scene.upsert", "scenes/churn-score"),
    ]
    assert "version 1" in audit.entries[0].reason


async def test_upsert_applies_without_restart_with_optimistic_concurrency(biz: Harness):
    scene = await _scene(biz)
    scene.response_mapping.threshold = 0.0  # everyone "churns"
    request = pb.UpsertSceneRequest(scene=scene, expected_config_version=1, actor="ops", reason="demo")
    updated = (await biz.admin.UpsertScene(request, metadata=ADMIN)).scene
    assert (updated.config_version, updated.updated_by) == (2, "api-key:admin")
    reply = await biz.predict.Predict(churn_request(1), metadata=scoring())
    assert reply.scene_config_version == 2
    # the experiment's threshold layer overrides the scene's; both thresholds label this customer the same way
    stale = pb.UpsertSceneRequest(scene=scene, expected_config_version=1)
    await _expect(grpc.StatusCode.ABORTED, biz.admin.UpsertScene(stale, metadata=ADMIN), "config version 2, not 1")
    create_only = pb.UpsertSceneRequest(scene=scene, expected_config_version=0)
    await _expect(grpc.StatusCode.ABORTED, biz.admin.UpsertScene(create_only, metadata=ADMIN))
    # an unchanged upsert spends no version and writes no audit entry
    again = (await biz.admin.UpsertScene(pb.UpsertSceneRequest(scene=updated), metadata=ADMIN)).scene
    assert again.config_version == 2
    audit = await biz.admin.ListAuditEntries(
        pb.ListAuditEntriesRequest(filter=common_pb2.AuditFilter(actor="api-key:admin")), metadata=ADMIN
    )
    assert len(audit.entries) == 1
    entry = audit.entries[0]
    assert (entry.action, entry.target, entry.reason) == ("scene.upsert", "scenes/churn-score", "demo")
    assert '"config_version": "1"' in entry.before_json and '"config_version": "2"' in entry.after_json


async def test_validate_only_stores_nothing(biz: Harness):
    scene = await _scene(biz)
    scene.description = "changed"
    preview = await biz.admin.UpsertScene(pb.UpsertSceneRequest(scene=scene, validate_only=True), metadata=ADMIN)
    assert (preview.scene.config_version, preview.scene.description) == (2, "changed")
    assert (await _scene(biz)).config_version == 1


@pytest.mark.parametrize(
    ("edit", "text"),
    [
        (lambda s: setattr(s, "name", "Bad Name"), "name: 'Bad Name' must match"),
        (lambda s: s.ClearField("feature_service"), "feature_service: required"),
        (lambda s: s.model_routing.model.ClearField("model"), "model_routing.model.model: required"),
        (lambda s: setattr(s.gray_release, "percentage", 120), "gray_release.percentage: must be in [0, 100]"),
        (lambda s: s.slo_deadline.FromSeconds(120), "slo_deadline: must be > 0 and at most 60s"),
        (lambda s: setattr(s.rate_limit, "mode", pb.RATE_LIMIT_MODE_GLOBAL), "GLOBAL needs rate_limit.redis_url"),
        (
            lambda s: s.fallback_chain.add(cached_score=pb.CachedScoreStep(max_age={"seconds": 5})),
            "fallback_chain[3]: unreachable",
        ),
        (
            lambda s: s.gray_release.rules.add(name="r", conditions=[pb.Condition(attribute="x", values=["1"])]),
            "gray_release.rules[1].conditions[0].op",
        ),
    ],
)
async def test_invalid_scenes_are_refused_naming_the_field(biz: Harness, edit, text):
    scene = await _scene(biz)
    edit(scene)
    details = await _expect(
        grpc.StatusCode.INVALID_ARGUMENT, biz.admin.UpsertScene(pb.UpsertSceneRequest(scene=scene), metadata=ADMIN)
    )
    assert text in details


async def test_experiment_rules_between_objects(biz: Harness):
    experiment = (
        await biz.admin.GetExperiment(pb.GetExperimentRequest(name="churn-model-ab"), metadata=ADMIN)
    ).experiment
    orphan = pb.Experiment()
    orphan.CopyFrom(experiment)
    orphan.name, orphan.scene = "orphan", "no-such-scene"
    await _expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        biz.admin.UpsertExperiment(pb.UpsertExperimentRequest(experiment=orphan), metadata=ADMIN),
        "scene 'no-such-scene' does not exist",
    )
    rival = pb.Experiment()
    rival.CopyFrom(experiment)
    rival.name = "rival"
    for layer in rival.layers:
        layer.salt += "-rival"
    await _expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        biz.admin.UpsertExperiment(pb.UpsertExperimentRequest(experiment=rival), metadata=ADMIN),
        "already runs model-routing experiment 'churn-model-ab'",
    )
    rival.status = pb.EXPERIMENT_STATUS_DRAFT  # a draft may wait beside it
    await biz.admin.UpsertExperiment(pb.UpsertExperimentRequest(experiment=rival), metadata=ADMIN)
    listed = await biz.admin.ListExperiments(
        pb.ListExperimentsRequest(scene="churn-score", statuses=[pb.EXPERIMENT_STATUS_DRAFT]), metadata=ADMIN
    )
    assert [e.name for e in listed.experiments] == ["rival"]
    await _expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        biz.admin.DeleteScene(pb.DeleteSceneRequest(name="churn-score"), metadata=ADMIN),
        "has experiments",
    )


async def test_pausing_an_experiment_stops_assignment_at_once(biz: Harness):
    before = await biz.predict.Predict(churn_request(5), metadata=scoring())
    assert before.route == pb.ROUTE_SOURCE_EXPERIMENT
    experiment = (
        await biz.admin.GetExperiment(pb.GetExperimentRequest(name="churn-model-ab"), metadata=ADMIN)
    ).experiment
    experiment.status = pb.EXPERIMENT_STATUS_PAUSED
    await biz.admin.UpsertExperiment(pb.UpsertExperimentRequest(experiment=experiment), metadata=ADMIN)
    after = await biz.predict.Predict(churn_request(5), metadata=scoring())
    assert (after.route, after.variant, list(after.assignments)) == (pb.ROUTE_SOURCE_DEFAULT, "", [])
    assert after.model_version == 1  # the production alias


async def test_admin_rpcs_need_an_admin(biz: Harness):
    await _expect(grpc.StatusCode.UNAUTHENTICATED, biz.admin.ListScenes(pb.ListScenesRequest()))
    await _expect(
        grpc.StatusCode.PERMISSION_DENIED,
        biz.admin.ListScenes(pb.ListScenesRequest(), metadata=scoring(SCORING_KEY)),
        "may not administer",
    )


async def test_pagination(biz: Harness):
    scene = await _scene(biz)
    for i in range(5):
        scene.name = f"scene-{i}"
        await biz.admin.UpsertScene(pb.UpsertSceneRequest(scene=scene), metadata=ADMIN)
    names, token = [], ""
    while True:
        page = await biz.admin.ListScenes(
            pb.ListScenesRequest(page=common_pb2.PageRequest(page_size=2, page_token=token)), metadata=ADMIN
        )
        names += [s.name for s in page.scenes]
        token = page.page.next_page_token
        if not token:
            break
    assert names == ["churn-score", *(f"scene-{i}" for i in range(5))]
    audit = await biz.admin.ListAuditEntries(
        pb.ListAuditEntriesRequest(page=common_pb2.PageRequest(page_size=3)), metadata=ADMIN
    )
    rest = await biz.admin.ListAuditEntries(
        pb.ListAuditEntriesRequest(page=common_pb2.PageRequest(page_token=audit.page.next_page_token)), metadata=ADMIN
    )
    assert [e.target for e in audit.entries] == ["scenes/scene-4", "scenes/scene-3", "scenes/scene-2"]
    assert [e.target for e in rest.entries][:2] == ["scenes/scene-1", "scenes/scene-0"]
    await _expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        biz.admin.ListScenes(pb.ListScenesRequest(page=common_pb2.PageRequest(page_token="%%%")), metadata=ADMIN),
    )


def _seed(path: Path, version: int, threshold: float) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["version"] = version
    data["scenes"][0]["description"] = f"threshold {threshold}"
    path.write_text(yaml.safe_dump(data))


async def test_changes_survive_restart_and_the_seed_file_only_wins_when_newer(tmp_path: Path, doubles: Doubles):
    seed = tmp_path / "scenes.yaml"
    _seed(seed, 1, 0.5)
    settings = biz_settings(tmp_path, doubles.static(), config={"seed_file": str(seed)})
    async with run_biz(settings) as biz:
        scene = await _scene(biz)
        scene.description = "edited through the API"
        await biz.admin.UpsertScene(pb.UpsertSceneRequest(scene=scene), metadata=ADMIN)
    async with run_biz(settings) as biz:  # same store, same seed version: the edit survives
        scene = await _scene(biz)
        assert (scene.description, scene.config_version) == ("edited through the API", 2)
        _seed(seed, 2, 0.7)  # a newer seed file is picked up while serving
        for _ in range(100):
            scene = await _scene(biz)
            if scene.description == "threshold 0.7":
                break
            await asyncio.sleep(0.05)
        assert (scene.description, scene.config_version, scene.updated_by) == ("threshold 0.7", 3, "seed-file")
        seed.write_text("version: 3\nscenes: [{name: broken}]\n")  # refused as a whole; serving goes on
        await asyncio.sleep(0.4)
        assert (await _scene(biz)).config_version == 3
        reply = await biz.predict.Predict(churn_request(1), metadata=scoring())
        assert reply.scene_config_version == 3


async def test_a_second_instance_sees_changes_through_the_shared_store(tmp_path: Path, doubles: Doubles):
    settings = biz_settings(tmp_path, doubles.static(), thrift={"enabled": False})
    async with run_biz(settings) as first, run_biz(settings) as second:
        scene = await _scene(first)
        scene.enabled = False
        await first.admin.UpsertScene(pb.UpsertSceneRequest(scene=scene), metadata=ADMIN)
        for _ in range(100):
            try:
                await second.predict.Predict(churn_request(1), metadata=scoring())
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the second instance never saw the change")


def test_seed_file_format_is_the_contract_json():
    data = yaml.safe_load(EXAMPLE.read_text())
    scene = json_format.ParseDict(data["scenes"][0], pb.Scene())
    assert scene.fallback_chain[0].alternate_model.timeout.ToMilliseconds() == 100


def _edited_seed(tmp_path: Path, *edits: tuple[str, str]) -> tuple[Path, str]:
    text = EXAMPLE.read_text()
    for old, new in edits:
        assert old in text
        text = text.replace(old, new, 1)
    path = tmp_path / "seed.yaml"
    path.write_text(text)
    return path, text


def _line(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        (
            "    enabled: true\n",
            "    enabeld: true\n",
            "scenes[0].enabeld: unknown key; expected one of name, description,",
        ),
        ("max_concurrency: 64", "max_concurrency: many", "scenes[0].max_concurrency: expected an integer, not 'many'"),
        ("slo_deadline: 0.25s", "slo_deadline: 250ms", "scenes[0].slo_deadline: a duration is text such as '0.25s'"),
        ("status: EXPERIMENT_STATUS_RUNNING", "status: RUNNING", "experiments[0].status: expected one of"),
        (
            "owner: growth@example.com",
            "owner: [growth]",
            "scenes[0].owner: Input should be a valid string, not ['growth']",
        ),
        (
            "      - cached_score: {max_age: 3600s}",
            "      - cached_score: {max_age: 3600s}\n        rule_default: {}",
            "scenes[0].fallback_chain[1]: give only one of alternate_model, cached_score, rule_default",
        ),
    ],
)
def test_seed_file_shape_errors_name_file_line_and_field(tmp_path: Path, old: str, new: str, problem: str):
    path, text = _edited_seed(tmp_path, (old, new))
    with pytest.raises(InvalidArgument) as refused:
        load_seed_file(path)
    assert refused.value.message.startswith(f"seed file {path}:{_line(text, new)}: {problem}")
    assert len(refused.value.message.splitlines()) == 1


def test_every_problem_of_a_seed_file_is_reported_together(tmp_path: Path):
    path, text = _edited_seed(
        tmp_path,
        ("version: 1\n", "versoin: 1\n"),
        ("label_if_above: churn", "label_if_above: 1"),
        ("bucket_count: 1000", "bucket_count: lots"),
    )
    with pytest.raises(InvalidArgument) as refused:
        load_seed_file(path)
    assert refused.value.message.splitlines() == [
        f"seed file {path}:1: version: required",
        f"seed file {path}:{_line(text, 'versoin')}: versoin: unknown key; "
        "expected one of version, scenes, experiments",
        f"seed file {path}:{_line(text, 'label_if_above')}: scenes[0].response_mapping.label_if_above: "
        "Input should be a valid string, not 1",
        f"seed file {path}:{_line(text, 'bucket_count')}: experiments[0].layers[0].bucket_count: "
        "expected an integer, not 'lots'",
    ]


async def test_a_seed_entry_the_registry_refuses_is_named_by_its_line(tmp_path: Path):
    path, text = _edited_seed(
        tmp_path, ("\nexperiments:", "  - {name: broken, feature_service: churn}\n\nexperiments:")
    )
    store = await ConfigStore.open(tmp_path / "config.db")
    registry = ConfigRegistry(store, global_limits=False, seed_file=path)
    try:
        with pytest.raises(InvalidArgument) as refused:
            await registry.start()
    finally:
        await registry.stop()
    assert refused.value.message.startswith(f"seed file {path}:{_line(text, '{name: broken')}: scenes[1]: ")


def test_the_process_refuses_to_start_without_a_unit_id_hash_key(tmp_path: Path):
    """Without a key the "keyed" hash of unit ids in events would be a plain hash: one clear line, exit 2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIZ_CENTER_")}
    env |= {"BIZ_CENTER_CONFIG__STORE_PATH": str(tmp_path / "biz.db"), "BIZ_CENTER_METRICS__ENABLED": "false"}
    for key in ("", "short-key"):
        env["BIZ_CENTER_EVENTS__UNIT_ID_HASH_KEY"] = key
        started = subprocess.run(
            [sys.executable, "-m", "infermesh_biz_center"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert started.returncode == 2, started.stderr
        lines = started.stderr.strip().splitlines()
        assert len(lines) == 1 and "BIZ_CENTER_EVENTS__UNIT_ID_HASH_KEY" in lines[0], lines
        assert "at least 16 characters" in lines[0]
    assert not (tmp_path / "biz.db").exists()  # refused before anything was created


def test_a_unit_id_hash_key_is_only_required_while_events_are_emitted(tmp_path: Path):
    settings = biz_settings(tmp_path, {}, events={"enabled": False, "unit_id_hash_key": ""})
    assert settings.events.enabled is False
    with pytest.raises(SettingsError, match="EVENTS__UNIT_ID_HASH_KEY"):
        biz_settings(tmp_path, {}, events={"unit_id_hash_key": ""})
