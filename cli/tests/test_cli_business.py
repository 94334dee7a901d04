"""``infermesh scenes``, ``experiments``, ``predict`` and ``events`` against the real business center and monitor.

In order: the scene and experiment are applied from a file, read back and round-tripped,
predictions go through every hop (business center, data gateway, model gateway, Triton) and
match onnxruntime, then the monitor's reports show that traffic.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import onnxruntime as ort
import pytest
import yaml
from cli_mesh import ADMIN_KEY, SCORER_KEY, Mesh

SCENE = {
    "name": "churn-score",
    "description": "Probability that a customer churns.",
    "owner": "cli-tests",
    "enabled": True,
    "feature_service": "churn6",
    "unit_id_key": "customer_id",
    "model_routing": {"model": {"model": "churn", "alias": "production"}},
    "response_mapping": {
        "score_output": "probabilities",
        "score_labels": ["stay", "churn"],
        "threshold": 0.5,
        "label_if_above": "churn",
        "label_otherwise": "stay",
    },
    "slo_deadline": "5s",
}
EXPERIMENT = {
    "name": "churn-model-ab",
    "scene": "churn-score",
    "status": "EXPERIMENT_STATUS_RUNNING",
    "metrics": ["conversion_rate"],
    "layers": [
        {
            "name": "model",
            "salt": "cli-tests",
            "bucket_count": 100,
            "variants": [
                {"name": "control", "buckets": 50, "control": True, "model": {"model": "churn", "version": 1}},
                {"name": "treatment", "buckets": 50, "model": {"model": "churn", "version": 2}},
            ],
        }
    ],
}


def admin(mesh: Mesh, *argv: str):
    return mesh.cli("--api-key", ADMIN_KEY, *argv)


def test_apply_scenes_and_experiments_from_one_seed_style_file(mesh: Mesh, tmp_path: Path):
    seed = tmp_path / "churn.yaml"
    seed.write_text(yaml.safe_dump({"scenes": [SCENE], "experiments": [EXPERIMENT]}))
    checked = admin(mesh, "scenes", "apply", str(seed), "--validate-only")
    assert checked.code == 0 and checked.out.splitlines()[2].split()[-1] == "valid"
    assert admin(mesh, "--json", "scenes", "list").json() == []  # validate-only stored nothing
    applied = admin(mesh, "scenes", "apply", str(seed), "--reason", "launch")
    assert applied.code == 0, applied.err
    assert applied.out.splitlines()[2].split()[:4] == ["churn-score", "yes", "churn6", "churn@production"]
    experiments = admin(mesh, "--json", "experiments", "apply", str(seed)).json()
    assert [(e["name"], e["status"]) for e in experiments] == [("churn-model-ab", "EXPERIMENT_STATUS_RUNNING")]

    listed = admin(mesh, "experiments", "list", "--scene", "churn-score", "--status", "running")
    assert listed.code == 0 and "model: control/treatment" in listed.out
    again = admin(mesh, "scenes", "apply", str(seed), "--create-only")
    assert again.code == 1 and again.err.startswith("infermesh: ABORTED: ") and len(again.err.splitlines()) == 1


def test_get_prints_what_apply_accepts(mesh: Mesh, tmp_path: Path):
    shown = admin(mesh, "scenes", "get", "churn-score")
    assert shown.code == 0
    scene = yaml.safe_load(shown.out)
    assert scene["feature_service"] == "churn6" and scene["config_version"] == "1"
    scene["description"] = "Edited through the CLI."
    edited = tmp_path / "scene.json"
    edited.write_text(json.dumps(scene))  # one object, JSON
    assert admin(mesh, "scenes", "apply", str(edited)).code == 0
    stored = admin(mesh, "--json", "scenes", "get", "churn-score").json()
    assert (stored["description"], stored["config_version"]) == ("Edited through the CLI.", "2")
    audit = admin(mesh, "--json", "scenes", "audit", "churn-score").json()
    assert [e["action"] for e in audit] == ["scene.upsert", "scene.upsert"]
    assert audit[1]["reason"] == "launch" and audit[0]["after"]["description"] == "Edited through the CLI."


def test_bad_files_and_credentials_fail_in_one_line(mesh: Mesh, tmp_path: Path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("scenes:\n  - name: x\n    no_such_field: 1\n")
    bad = admin(mesh, "scenes", "apply", str(broken))
    assert bad.code == 2 and "no_such_field" in bad.err and len(bad.err.splitlines()) == 1
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text(yaml.safe_dump({"name": "broken-scene", "feature_service": "churn6"}))
    refused = admin(mesh, "scenes", "apply", str(invalid))
    assert refused.code == 1 and refused.err.startswith("infermesh: INVALID_ARGUMENT: ")
    anonymous = mesh.cli("scenes", "list")
    assert anonymous.code == 1 and anonymous.err.startswith("infermesh: UNAUTHENTICATED: ")
    scorer = mesh.cli("--api-key", SCORER_KEY, "scenes", "list")
    assert scorer.code == 1 and scorer.err.startswith("infermesh: PERMISSION_DENIED: ")
    missing = admin(mesh, "experiments", "get", "nope")
    assert missing.code == 1 and missing.err.startswith("infermesh: NOT_FOUND: ")


def test_predict_through_every_hop_matches_onnxruntime(mesh: Mesh):
    sessions = {
        1: ort.InferenceSession(str(mesh.models.v1.path), providers=["CPUExecutionProvider"]),
        2: ort.InferenceSession(str(mesh.models.v2.path), providers=["CPUExecutionProvider"]),
    }
    variants = set()
    for customer in range(1, 21):
        done = mesh.cli("--json", "--api-key", SCORER_KEY, "predict", "churn-score", str(customer))
        assert done.code == 0, done.err
        answer = done.json()
        version = answer["model_version"]
        variants.add(answer["variant"])
        assert (answer["route"], answer["degraded"]) == ("EXPERIMENT", False)
        assert {"control": 1, "treatment": 2}[answer["variant"]] == version
        (probabilities,) = sessions[version].run(["probabilities"], {"X": mesh.models.x[customer - 1 : customer]})
        assert answer["scores"]["churn"] == pytest.approx(float(probabilities[0, 1]), rel=1e-5, abs=1e-6)
        assert list(answer["latencies_ms"]) == ["data_gateway", "model_gateway"]
    assert variants == {"control", "treatment"}
    table = mesh.cli("predict", "churn-score", "3", "--api-key", SCORER_KEY, "-a", "channel=web")
    assert table.code == 0
    assert "served by    churn v" in table.out and "degraded     no" in table.out
    unknown = mesh.cli("--api-key", SCORER_KEY, "predict", "no-scene", "1")
    assert unknown.code == 1 and unknown.err.endswith(": scene 'no-scene' does not exist\n")
    assert unknown.err.startswith("infermesh: NOT_FOUND: biz-center/Predict at ")


def test_events_report_the_traffic(mesh: Mesh):
    mesh.forward_events()
    deadline = time.monotonic() + 30
    while True:
        stats = mesh.cli(
            "--json", "events", "stats", "--window", "5m", "--by", "scene,variant", "--source", "biz-center"
        )
        assert stats.code == 0, stats.err
        rows = {r["group"]["variant"]: r for r in stats.json()["rows"]}
        if sum(r["requests"] for r in rows.values()) >= 21:
            break
        assert time.monotonic() < deadline, f"the monitor has {rows}"
        time.sleep(0.3)
    assert set(rows) == {"control", "treatment"}
    assert all(r["group"]["scene"] == "churn-score" and r["errors"] == 0 for r in rows.values())
    table = mesh.cli("events", "stats", "--window", "5m", "--by", "service,model", "--model", "churn")
    assert table.code == 0
    assert table.out.splitlines()[1].split()[:3] == ["service", "model", "requests"]
    assert {line.split()[0] for line in table.out.splitlines()[3:]} == {"biz-center", "model-gateway"}

    passed = mesh.cli("events", "slo", "churn", "1", "--window", "10m", "--max-error-rate", "0.1")
    assert passed.code == 0 and passed.out.startswith("verdict  PASS")
    failed = mesh.cli("--json", "events", "slo", "churn", "1", "--window", "10m", "--max-p99-ms", "0.0001")
    assert failed.code == 1 and failed.json()["verdict"] == "FAIL"
    assert any(c["name"] == "p99_latency_ms" and not c["passed"] for c in failed.json()["criteria"])

    report = mesh.cli("--json", "events", "experiment", "churn-model-ab").json()
    variants = {v["variant"]: v for r in report["reports"] for v in r["variants"]}
    assert set(variants) == {"control", "treatment"} and variants["control"]["control"]
    assert sum(v["units"] for v in variants.values()) >= 20

    drift = mesh.cli("--json", "events", "drift", "churn", "1", "--since", "1h", "--baseline-since", "2h")
    assert drift.code == 0, drift.err
    features = {e["name"]: e for e in drift.json()["features"]}
    assert features and all(e["psi"] == pytest.approx(0.0, abs=1e-9) for e in features.values())


def test_feedback_and_delete(mesh: Mesh):
    stored = mesh.cli("events", "feedback", "--unit-id", "3", "--scene", "churn-score", "--label", "1")
    assert stored.code == 0 and stored.out.strip() == "labels stored: 1"
    neither = mesh.cli("events", "feedback", "--label", "1")
    assert neither.code == 2 and "exactly one of --request-id or --unit-id" in neither.err
    deleted = admin(mesh, "experiments", "delete", "churn-model-ab", "--reason", "done")
    assert deleted.code == 0 and deleted.out.startswith("deleted experiment churn-model-ab")
    assert admin(mesh, "--json", "experiments", "list").json() == []
