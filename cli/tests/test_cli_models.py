"""``infermesh models``, ``infer`` and ``rollouts`` against the real model gateway (real Triton) and monitor.

The tests of this module run in order on model ``fraud``: registered and deployed through the
CLI, routed, aliased, mirrored, rolled out, deprecated and retired. ``churn`` (deployed by the
mesh) is only read.
"""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
import pytest
from cli_mesh import Mesh


def _register(mesh: Mesh, artifact: str, *extra: str) -> dict:
    done = mesh.cli(
        "--json",
        "models",
        "register",
        "fraud",
        artifact,
        "--format",
        "onnx",
        "--input",
        "X:FP32:6",
        "--output",
        "label:INT64:1",
        "--output",
        "probabilities:FP32:2:stay,churn",
        "--max-batch-size",
        "64",
        "--dynamic-batching",
        "--owner",
        "fraud-team",
        *extra,
    )
    assert done.code == 0, done.err
    return done.json()


def test_register_deploy_list_and_get(mesh: Mesh):
    first = _register(
        mesh,
        str(mesh.models.v1.path),
        "--deploy",
        "--reason",
        "first model",
        "--preferred-batch-size",
        "8",
        "--preferred-batch-size",
        "32",
        "--baseline-uri",
        "file:///data/fraud/training.parquet",
    )
    assert (first["model"], first["version"], first["state"]) == ("fraud", 1, "SERVING")
    assert first["deployment"]["preferred_batch_sizes"] == [8, 32]
    assert first["drift_baseline"] == {"uri": "file:///data/fraud/training.parquet", "baseline_id": None, "sha256": ""}
    shown_v1 = mesh.cli("models", "get", "fraud", "1")
    assert shown_v1.code == 0, shown_v1.err
    assert "dynamic batching yes (prefers 8, 32)" in shown_v1.out
    assert "drift baseline  file:///data/fraud/training.parquet" in shown_v1.out
    assert first["artifact"]["sha256"] == mesh.models.v1.sha256  # computed by the CLI from the local file
    assert [(o["name"], o["datatype"], o["shape"]) for o in first["outputs"]] == [
        ("label", "INT64", [1]),
        ("probabilities", "FP32", [2]),
    ]
    second = _register(mesh, str(mesh.models.v2.path))
    assert (second["version"], second["state"]) == (2, "REGISTERED")
    deployed = mesh.cli("--json", "models", "deploy", "fraud", "2")
    assert deployed.code == 0 and deployed.json()["state"] == "SERVING"

    table = mesh.cli("models", "list")
    assert table.code == 0
    lines = table.out.splitlines()
    assert lines[0].split()[:4] == ["model", "latest", "serving", "aliases"]
    assert any(line.startswith("fraud ") and "1, 2" in line for line in lines[2:])
    listed = {m["name"]: m for m in mesh.cli("models", "list", "--json").json()}  # --json after the command
    assert listed["fraud"]["serving_versions"] == [1, 2]
    assert listed["churn"]["aliases"] == {"canary": 2, "production": 1}

    shown = mesh.cli("models", "get", "fraud")
    assert shown.code == 0 and "owner           fraud-team" in shown.out
    versions = [line.split()[:2] for line in shown.out.splitlines() if line[:1].isdigit()]
    assert versions == [["2", "SERVING"], ["1", "SERVING"]]
    by_alias = mesh.cli("--json", "models", "get", "churn", "canary").json()
    assert (by_alias["version"], by_alias["aliases"]) == (2, ["canary"])


def test_errors_are_one_line_with_the_status_and_exit_codes(mesh: Mesh):
    unknown = mesh.cli("models", "get", "no-such-model")
    assert unknown.code == 1 and unknown.out == ""
    where = f"model-gateway/GetModel at {mesh.gateway.address}"
    assert unknown.err.splitlines() == [f"infermesh: NOT_FOUND: {where}: model 'no-such-model' is not registered"]
    no_version = mesh.cli("models", "get", "fraud", "9")
    assert no_version.code == 1 and "NOT_FOUND" in no_version.err and "has no version 9" in no_version.err
    refused = mesh.cli("models", "traffic", "set", "fraud", "1=50,7=50")
    assert refused.code == 1 and len(refused.err.splitlines()) == 1 and refused.err.startswith("infermesh: ")
    bad_weights = mesh.cli("models", "traffic", "set", "fraud", "1=half")
    assert bad_weights.code == 2 and bad_weights.err.count("\n") == 1 and "VERSION=WEIGHT" in bad_weights.err
    usage = mesh.cli("models", "deploy", "fraud")
    assert usage.code == 2 and usage.err.count("\n") == 1 and "required: version" in usage.err
    missing_file = mesh.cli("models", "register", "fraud", "--spec", "/nonexistent/spec.yaml")
    assert missing_file.code == 2 and "No such file" in missing_file.err


def test_traffic_aliases_promote_rollback_and_audit(mesh: Mesh):
    assert mesh.cli("models", "promote", "fraud", "1", "--reason", "baseline").code == 0
    split = mesh.cli("--json", "models", "traffic", "set", "fraud", "1=90,2=10", "--sticky-key", "unit_id")
    assert split.code == 0, split.err
    policy = split.json()
    assert [(w["version"], w["share"]) for w in policy["weights"]] == [(1, 0.9), (2, 0.1)]
    assert policy["sticky_key"] == "unit_id" and policy["mirror"] is None
    mirrored = mesh.cli("--json", "models", "traffic", "set", "fraud", "--mirror", "2:0.5").json()
    assert mirrored["weights"] == policy["weights"]  # what is not given is kept
    assert mirrored["mirror"] == {"version": 2, "fraction": 0.5, "timeout_s": None}
    assert mirrored["revision"] == policy["revision"] + 1
    shown = mesh.cli("models", "traffic", "get", "fraud")
    assert "v1 90%, v2 10%; sticky on unit_id; mirror 50% to v2" in shown.out

    assert mesh.cli("models", "aliases", "set", "fraud", "canary", "2").code == 0
    aliases = mesh.cli("--json", "models", "aliases", "list", "fraud").json()
    assert aliases == {"canary": 2, "production": 1}
    assert mesh.cli("models", "aliases", "delete", "fraud", "canary").code == 0
    assert mesh.cli("--json", "models", "aliases", "list", "fraud").json() == {"production": 1}

    reset = mesh.cli("models", "traffic", "set", "fraud", "none", "--mirror", "none", "--sticky-key", "")
    assert reset.code == 0 and "all to production" in reset.out
    promoted = mesh.cli("--json", "models", "promote", "fraud", "2").json()
    assert (promoted["previous_version"], promoted["model"]["aliases"]["production"]) == (1, 2)
    rolled = mesh.cli("models", "rollback", "fraud", "--reason", "v2 misbehaves")
    assert rolled.code == 0 and "rolled back v2; production is v1" in rolled.out

    audit = mesh.cli("--json", "--actor", "alice", "models", "audit", "fraud", "--limit", "50").json()
    actions = [e["action"] for e in audit]
    for action in ("model_version.register", "traffic_policy.set", "alias.set", "alias.delete", "model.promote"):
        assert action in actions
    assert all(e["target"].startswith("models/fraud") for e in audit)
    rollback = next(e for e in audit if e["action"] == "model.rollback")
    assert rollback["reason"] == "v2 misbehaves" and rollback["actor"].startswith("cli:")
    table = mesh.cli("models", "audit", "fraud", "--action", "model.rollback")
    assert table.code == 0 and table.out.splitlines()[0].split() == ["time", "actor", "action", "target", "reason"]
    assert len(table.out.splitlines()) == 3


def test_infer_answers_what_onnxruntime_computes(mesh: Mesh):
    row = mesh.models.x[5]
    local = ort.InferenceSession(str(mesh.models.v2.path), providers=["CPUExecutionProvider"])
    (expected,) = local.run(["probabilities"], {"X": row.reshape(1, -1)})
    values = ",".join(repr(float(v)) for v in row)
    done = mesh.cli("--json", "infer", "churn", "--version", "canary", "--input", f"X={values}")
    assert done.code == 0, done.err
    answer = done.json()
    assert answer["model_version"] == 2 and answer["warning"] is None
    probabilities = next(o for o in answer["outputs"] if o["name"] == "probabilities")
    assert probabilities["shape"] == [1, 2]
    assert probabilities["data"] == pytest.approx(expected.ravel().tolist(), rel=1e-5)
    table = mesh.cli("infer", "churn", "-i", f"X=[[{values}],[{values}]]")
    assert table.code == 0 and "model  churn v1" in table.out and "[2, 2]" in table.out
    wrong = mesh.cli("infer", "churn", "-i", "X=1,2")
    assert wrong.code == 1 and "INVALID_ARGUMENT" in wrong.err and "expected [-1, 6]" in wrong.err
    unknown = mesh.cli("infer", "churn", "-i", "Y=1")
    assert unknown.code == 2 and unknown.err.strip() == "infermesh: model churn has no input Y (inputs: X)"


def test_mirrored_traffic_shows_in_the_shadow_report(mesh: Mesh):
    assert mesh.cli("models", "traffic", "set", "fraud", "--mirror", "2:1.0").code == 0
    values = ",".join(repr(float(v)) for v in mesh.models.x[0])
    for _ in range(5):
        assert mesh.cli("infer", "fraud", "-i", f"X={values}").code == 0
    deadline = time.monotonic() + 20
    while len(mesh.gateway.events("shadow")) < 5:
        assert time.monotonic() < deadline, "the gateway reported no shadow comparisons"
        time.sleep(0.1)
    mesh.forward_events()
    assert mesh.cli("models", "traffic", "set", "fraud", "--mirror", "none").code == 0
    report = mesh.cli("--json", "events", "shadow", "fraud", "--since", "10m").json()
    (pair,) = report["comparisons"]
    assert (pair["primary_version"], pair["shadow_version"]) == (1, 2) and pair["pairs"] >= 5
    assert 0 <= pair["agreement_rate"] <= 1
    table = mesh.cli("events", "shadow", "fraud", "--primary", "1", "--since", "10m")
    assert table.code == 0 and table.out.splitlines()[2].split()[:3] == ["fraud", "1", "2"]


def test_rollout_start_status_pause_resume_abort(mesh: Mesh):
    started = mesh.cli(
        "--json",
        "rollouts",
        "start",
        "fraud",
        "2",
        "--steps",
        "shadow,10,50",
        "--min-dwell",
        "1h",
        "--min-requests",
        "5",
        "--interval",
        "0.5s",
        "--max-error-rate",
        "0.05",
        "--max-p99-ms",
        "500",
    )
    assert started.code == 0, started.err
    rollout = started.json()
    assert (rollout["state"], rollout["current_step"], rollout["baseline_version"]) in {
        ("RUNNING", 0, 1),
        ("PENDING", 0, 1),
    }
    assert [s["candidate_percent"] for s in rollout["steps"]] == [0, 10, 50]
    assert rollout["gates"] == {"max_p99_latency_ms": 500, "max_error_rate": 0.05}
    deadline = time.monotonic() + 30
    while True:
        status = mesh.cli("--json", "rollouts", "status", rollout["id"]).json()
        if status["last_evaluation"] is not None and status["next_decision_time"] is not None:
            break
        assert time.monotonic() < deadline, "the controller never evaluated the gates"
        time.sleep(0.3)
    assert status["last_evaluation"]["verdict"] == "INSUFFICIENT_DATA"  # no traffic yet: it holds, never advances
    assert {c["name"] for c in status["last_evaluation"]["criteria"]} >= {"min_requests", "error_rate"}
    shown = mesh.cli("rollouts", "status", "--model", "fraud")
    assert shown.code == 0
    assert "step           1/3: 0% to v2, mirror 100% (dwell >= 3600s, >= 5 requests)" in shown.out
    assert "next decision  " in shown.out and "last gate    INSUFFICIENT_DATA" in shown.out

    paused = mesh.cli("--json", "rollouts", "pause", rollout["id"], "--reason", "investigating").json()
    assert paused["state"] == "PAUSED" and paused["decisions"][-1]["action"] == "PAUSE"
    assert mesh.cli("--json", "rollouts", "resume", rollout["id"]).json()["state"] == "RUNNING"
    aborted = mesh.cli("rollouts", "abort", "--model", "fraud", "--reason", "not today")
    assert aborted.code == 0 and f"rollout {rollout['id']} (fraud v2): ABORTED" in aborted.out
    assert "recorded: ABORT by cli:" in aborted.out
    traffic = mesh.cli("--json", "models", "traffic", "get", "fraud").json()
    assert traffic["mirror"] is None and all(w["version"] == 1 for w in traffic["weights"])
    listed = mesh.cli("--json", "rollouts", "list", "--model", "fraud", "--state", "aborted").json()
    assert [r["id"] for r in listed] == [rollout["id"]]
    again = mesh.cli("rollouts", "pause", rollout["id"])
    assert again.code == 1 and "FAILED_PRECONDITION" in again.err


def test_rollout_promote_now_makes_the_candidate_production(mesh: Mesh):
    started = mesh.cli("--json", "rollouts", "start", "fraud", "2", "--min-dwell", "1h")
    assert started.code == 0, started.err
    promoted = mesh.cli("--json", "rollouts", "promote", started.json()["id"]).json()
    assert promoted["state"] == "SUCCEEDED"
    assert mesh.cli("--json", "models", "aliases", "list", "fraud").json()["production"] == 2
    assert mesh.cli("models", "rollback", "fraud").code == 0


def test_deprecated_then_retired_version(mesh: Mesh):
    third = _register(mesh, str(mesh.models.v1.path), "--deploy")
    assert (third["version"], third["state"]) == (3, "SERVING")
    retiring = mesh.cli("--json", "models", "retire", "fraud", "3", "--successor", "2", "--deprecation-period", "1h")
    assert retiring.code == 0, retiring.err
    assert retiring.json()["retirement"]["successor_version"] == 2
    values = ",".join(repr(float(v)) for v in mesh.models.x[1])
    pinned = mesh.cli("infer", "fraud", "--version", "3", "-i", f"X={values}")
    assert pinned.code == 0 and "deprecated" in pinned.err and "move to" in pinned.err
    assert mesh.cli("models", "undeploy", "fraud", "3").code == 0
    retired = mesh.cli("--json", "models", "retire", "fraud", "3", "--successor", "2")
    assert retired.code == 0 and retired.json()["state"] == "RETIRED"
    gone = mesh.cli("infer", "fraud", "--version", "3", "-i", f"X={values}")
    assert gone.code == 1 and gone.err.startswith("infermesh: NOT_FOUND: ") and "retired" in gone.err
    refused = mesh.cli("models", "retire", "fraud", "1")
    assert refused.code == 1 and "FAILED_PRECONDITION" in refused.err  # production still points at it


def test_infer_from_another_process_with_addresses_in_the_environment(mesh: Mesh):
    values = ",".join(repr(float(v)) for v in np.zeros(6))
    env = {"INFERMESH_MODEL_GATEWAY_ADDR": mesh.gateway.address}
    done = mesh.cli_process("--json", "infer", "churn", "-i", f"X={values}", env=env)
    assert done.code == 0, done.err
    assert done.json()["model_version"] == 1
