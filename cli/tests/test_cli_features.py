"""``infermesh features`` and ``batch-score`` against the real data gateway and model gateway.

Feature service ``churn6`` serves the rows the churn models were trained on (customer N has row
N-1), so every vector and every prediction can be checked against the training data and
onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from cli_mesh import CUSTOMERS, Mesh


def _probabilities(mesh: Mesh, version: int, rows: np.ndarray) -> np.ndarray:
    trained = mesh.models.v1 if version == 1 else mesh.models.v2
    session = ort.InferenceSession(str(trained.path), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {"X": rows.astype(np.float32)})
    return probabilities


def test_list_and_describe(mesh: Mesh):
    listed = mesh.cli("--json", "features", "list").json()
    assert [(s["name"], s["feature_count"], s["entities"]) for s in listed] == [("churn6", 6, ["customer"])]
    described = mesh.cli("features", "describe", "churn6")
    assert described.code == 0
    assert "entities         customer (customer_id=INT64)" in described.out
    assert "customer_features  customer  online  warehouse" in described.out
    view = mesh.cli("--json", "features", "describe", "churn6").json()
    assert [f["name"] for f in view["features"]] == [f"x{i}" for i in range(6)]
    assert {s["name"]: s["kind"] for s in view["sources"]} == {"online": "SQL", "warehouse": "FILE"}
    unknown = mesh.cli("features", "describe", "nope")
    assert unknown.code == 1
    assert unknown.err.strip().endswith("unknown feature service 'nope' in version 1 (defined: churn6)")


def test_online_vectors_for_entity_keys(mesh: Mesh, tmp_path: Path):
    done = mesh.cli(
        "--json", "features", "get", "churn6", "--entity", "customer_id=3", "--entity", "customer_id=999999"
    )
    assert done.code == 0, done.err
    known, unknown = done.json()["rows"]
    assert [known["values"][f"x{i}"] for i in range(6)] == pytest.approx(mesh.models.x[2].tolist(), rel=1e-6)
    assert set(known["statuses"].values()) == {"OK"} and known["lineage"][0]["source"] == "online"
    assert set(unknown["statuses"].values()) == {"DEFAULT"}
    entities = tmp_path / "entities.csv"
    entities.write_text("customer_id\n1\n2\n")
    table = mesh.cli("features", "get", "churn6", "--entities-file", str(entities))
    assert table.code == 0
    lines = table.out.splitlines()
    assert lines[1].split()[:3] == ["keys", "x0", "x1"] and lines[3].startswith("customer_id=1 ")
    bad = mesh.cli("features", "get", "churn6", "--entity", "customer_id=abc")
    assert bad.code == 1 and bad.err.startswith("infermesh: INVALID_ARGUMENT: ") and "customer_id" in bad.err
    none = mesh.cli("features", "get", "churn6")
    assert none.code == 2 and "--entity" in none.err


def test_materialize_and_training_set(mesh: Mesh, tmp_path: Path):
    materialized = mesh.cli("--json", "features", "materialize", "customer_features", "--start", "30d")
    assert materialized.code == 0, materialized.err
    assert materialized.json()["rows_written"] == CUSTOMERS and materialized.json()["watermark"]
    incremental = mesh.cli("features", "materialize", "customer_features", "--incremental")
    assert incremental.code == 0 and "rows written  0" in incremental.out
    entities = tmp_path / "labels.parquet"
    pq.write_table(
        pa.table(
            {
                "customer_id": [4, 5, 6],
                "event_time": ["2020-01-01T00:00:00Z", "2030-01-01T00:00:00Z", "2030-01-01T00:00:00Z"],
                "churned": [1, 0, 1],
            }
        ),
        entities,
    )
    output = tmp_path / "training.csv"
    done = mesh.cli("features", "training-set", "churn6", str(entities), "--output", str(output))
    assert done.code == 0, done.err
    assert "rows             3" in done.out
    training = pa_csv.read_csv(output)
    assert training.column_names == ["customer_id", "event_time", *(f"x{i}" for i in range(6)), "churned"]
    assert training.column("x0").to_pylist()[0] == 0  # in 2020 the customer had no features yet: the default
    assert training.column("x0").to_pylist()[1] == pytest.approx(float(mesh.models.x[4, 0]), rel=1e-6)
    assert training.column("churned").to_pylist() == [1, 0, 1]


def test_batch_score_with_the_feature_service(mesh: Mesh, tmp_path: Path):
    customers = tmp_path / "customers.csv"
    customers.write_text("customer_id,segment\n" + "".join(f"{i},s{i % 3}\n" for i in range(1, CUSTOMERS + 1)))
    output = tmp_path / "scores.parquet"
    done = mesh.cli(
        "batch-score",
        str(customers),
        "--model",
        "churn",
        "--version",
        "2",
        "--feature-service",
        "churn6",
        "--batch-size",
        "16",
        "--concurrency",
        "3",
        "--output",
        str(output),
    )
    assert done.code == 0, done.err
    assert "rows        120 in 8 batches of up to 16" in done.out and "churn: v2 120 rows" in done.out
    assert "scoring: 100%" in done.err and "120/120" in done.err  # the progress bar
    scores = pq.read_table(output)
    assert scores.column_names == [
        "customer_id",
        "segment",
        "model_version",
        "label",
        "probabilities_0",
        "probabilities_1",
    ]
    assert scores.column("customer_id").to_pylist() == list(range(1, CUSTOMERS + 1))
    expected = _probabilities(mesh, 2, mesh.models.x[:CUSTOMERS])
    assert scores.column("probabilities_1").to_numpy() == pytest.approx(expected[:, 1], rel=1e-5, abs=1e-6)
    assert set(scores.column("model_version").to_pylist()) == {2}


def test_batch_score_with_columns_of_the_file(mesh: Mesh, tmp_path: Path):
    rows = tmp_path / "rows.parquet"
    columns = {f"f{i}": mesh.models.x[:50, i] for i in range(6)}
    pq.write_table(pa.table({"id": list(range(50)), **columns}), rows)
    output = tmp_path / "scores.csv"
    done = mesh.cli(
        "--json",
        "batch-score",
        str(rows),
        "--model",
        "churn",
        "--columns",
        ",".join(columns),
        "--keep",
        "id",
        "--no-progress",
        "-o",
        str(output),
    )
    assert done.code == 0, done.err
    summary = done.json()
    assert (summary["rows"], summary["batches"], summary["batch_size"]) == (50, 1, 64)  # capped at max batch 64
    assert summary["versions"] == {"1": 50} and done.err == ""
    scores = pa_csv.read_csv(output)
    assert scores.column_names == ["id", "model_version", "label", "probabilities_0", "probabilities_1"]
    expected = _probabilities(mesh, 1, mesh.models.x[:50])
    assert scores.column("probabilities_1").to_numpy() == pytest.approx(expected[:, 1], rel=1e-5, abs=1e-6)
    wrong = mesh.cli("batch-score", str(rows), "--model", "churn", "--columns", "f0,f1", "-o", str(output))
    assert wrong.code == 2 and "takes 6 values per row; the features give 2" in wrong.err
    neither = mesh.cli("batch-score", str(rows), "--model", "churn", "-o", str(output))
    assert neither.code == 2 and "--feature-service NAME or --columns" in neither.err


def test_batch_score_on_spark_gives_the_same_predictions(mesh: Mesh, tmp_path: Path):
    customers = tmp_path / "customers.csv"
    customers.write_text("customer_id\n" + "".join(f"{i}\n" for i in range(1, 41)))
    output = tmp_path / "spark.parquet"
    done = mesh.cli_process(
        "batch-score",
        str(customers),
        "--model",
        "churn",
        "--feature-service",
        "churn6",
        "--engine",
        "spark",
        "--spark-master",
        "local[1]",
        "--concurrency",
        "2",
        "--batch-size",
        "8",
        "--output",
        str(output),
    )
    assert done.code == 0, done.err[-3000:]
    assert "engine      spark" in done.out and "churn: v1 40 rows" in done.out
    scores = pq.read_table(output)
    assert scores.column("customer_id").to_pylist() == list(range(1, 41))
    expected = _probabilities(mesh, 1, mesh.models.x[:40])
    assert scores.column("probabilities_1").to_numpy() == pytest.approx(expected[:, 1], rel=1e-5, abs=1e-6)
