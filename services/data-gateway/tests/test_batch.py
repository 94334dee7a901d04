"""Training sets (point-in-time correct, with a leakage trap) and materialization (offline → Redis, incremental).

The offline history is a Parquet file for one view and a SQLite table for the other; the
online store is a real Redis. Everything goes through the gRPC API.
"""

from __future__ import annotations

import io
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from google.protobuf import timestamp_pb2

from infermesh.common.v1 import common_pb2
from infermesh.datagateway.v1 import data_gateway_pb2 as pb

T = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
US = timedelta(microseconds=1)

DEFINITIONS = """
project: {{name: batch-test, online_store: online}}
entities:
  customer: {{keys: {{customer_id: INT64}}}}
sources:
  online: {{kind: redis, url: "{redis}", key_prefix: "{prefix}"}}
  lake: {{kind: file, path: "{lake}", format: parquet}}
  db: {{kind: sqlite, path: "{db}"}}
feature_views:
  txn:
    entities: [customer]
    ttl: 7d
    fields: {{spend: FP64, channel: STRING}}
    source: online
    offline: lake
  profile:
    entities: [customer]
    fields: {{tenure_days: INT64, signup_at: TIMESTAMP}}
    source: online
    offline: db
feature_services:
  model:
    entities: [customer]
    request_values: {{amount: FP64}}
    features:
      - {{name: spend, dtype: FP64, field: txn.spend, default: -1}}
      - {{name: log_spend, dtype: FP32, expr: log1p(txn.spend), allow_missing: true}}
      - {{name: web, dtype: FP32, expr: 'one_hot(txn.channel, ["web", "app"])', default: [0, 0]}}
      - {{name: tenure, dtype: INT64, field: profile.tenure_days, default: 0}}
      - {{name: signup_age, dtype: FP64, expr: age_days(profile.signup_at), allow_missing: true}}
      - {{name: amount, dtype: FP64, expr: request.amount, default: 0}}
"""


def _write_txn(path: Path, rows: list[tuple[int, float, str, datetime]]) -> None:
    frame = pd.DataFrame(rows, columns=["customer_id", "spend", "channel", "event_time"])
    frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)


HISTORY = [
    (1, 10.0, "web", T - timedelta(days=10)),
    (1, 20.0, "app", T - timedelta(days=1)),
    (1, 999.0, "web", T + US),  # the leakage trap: one microsecond after the label's event
    (2, 5.0, "web", T - timedelta(days=30)),  # only ever stale (TTL 7 days) as of T
    (3, 7.5, "app", T - timedelta(days=2)),
]


@pytest.fixture
async def batch(tmp_path: Path, make_redis, gateway_factory):
    return await _batch_gateway(tmp_path, make_redis, gateway_factory)


async def _batch_gateway(tmp_path: Path, make_redis, gateway_factory, **settings: object):
    redis = make_redis()
    lake = tmp_path / "lake"
    lake.mkdir()
    _write_txn(lake / "txn.parquet", HISTORY)
    db = sqlite3.connect(tmp_path / "db.sqlite")
    with db:
        db.execute("CREATE TABLE profile (customer_id INTEGER, tenure_days INTEGER, signup_at TEXT, event_time TEXT)")
        db.executemany(
            "INSERT INTO profile VALUES (?, ?, ?, ?)",
            [
                (1, 100, "2020-01-01T00:00:00+00:00", (T - timedelta(days=3)).isoformat()),
                (1, 101, "2020-01-01T00:00:00+00:00", (T + timedelta(seconds=1)).isoformat()),  # after: not used
                (3, 50, "2021-06-01 12:00:00", (T - timedelta(days=100)).isoformat()),
            ],
        )
    db.close()
    folder = tmp_path / "defs"
    folder.mkdir()
    (folder / "defs.yaml").write_text(
        DEFINITIONS.format(redis=redis.url, prefix="b:", lake=lake, db=tmp_path / "db.sqlite")
    )
    return await gateway_factory(folder, **settings), lake


def _entity(customer: int, when: datetime, label: int, amount: float | None = None) -> pb.TrainingEntityRow:
    row = pb.TrainingEntityRow(
        keys={"customer_id": common_pb2.Value(int64_value=customer)},
        passthrough={"label": common_pb2.Value(int64_value=label)},
    )
    if amount is not None:
        row.request_values["amount"].double_value = amount
    row.event_time.FromDatetime(when)
    return row


ENTITIES = [
    _entity(1, T, 1, amount=3.0),
    _entity(1, T - timedelta(days=5), 0),
    _entity(1, T - timedelta(days=1), 1),  # exactly at a record's time: that record is known
    _entity(1, T - timedelta(days=20), 0),  # before any record
    _entity(2, T, 1),  # stale record only
    _entity(3, T, 0),
    _entity(4, T, 0),  # unknown customer
]


async def _training(running, fmt: int, engine: int = pb.BATCH_ENGINE_LOCAL, chunk_rows: int = 3) -> list:
    request = pb.GetTrainingSetRequest(
        feature_service="model",
        rows=pb.TrainingEntityRows(rows=ENTITIES),
        format=fmt,
        chunk_rows=chunk_rows,
        engine=engine,
    )
    return [chunk async for chunk in running.stub.GetTrainingSet(request)]


async def test_training_set_is_point_in_time_correct(batch):
    running, _ = batch
    chunks = await _training(running, pb.TRAINING_SET_FORMAT_ROWS)
    assert [c.row_count for c in chunks] == [3, 3, 1] and [c.last for c in chunks] == [False, False, True]
    assert [f.name for f in chunks[0].fields] == ["spend", "log_spend", "web", "tenure", "signup_age", "amount"]
    rows = [row for chunk in chunks for row in chunk.rows.rows]
    spend = [r.values[0].double_value for r in rows]
    assert spend == [20.0, 10.0, 20.0, -1.0, -1.0, 7.5, -1.0]  # never 999: the trap is one microsecond late
    assert [r.statuses[0] for r in rows] == [1, 1, 1, 3, 3, 1, 3]
    assert list(rows[0].values[2].double_list.values) == [0.0, 1.0]
    assert [r.values[3].int64_value for r in rows[:3]] == [100, 0, 100]  # tenure as of each event, not 101
    assert rows[0].values[4].double_value == pytest.approx(
        (T - datetime(2020, 1, 1, tzinfo=UTC)).total_seconds() / 86400
    )
    assert rows[3].values[1].WhichOneof("kind") == "null_value" and rows[3].statuses[1] == 4
    assert (rows[0].values[5].double_value, rows[1].statuses[5]) == (3.0, 3)
    assert [r.passthrough["label"].int64_value for r in rows] == [1, 0, 1, 0, 1, 0, 0]
    assert rows[0].event_time.ToDatetime(tzinfo=UTC) == T


async def test_training_set_as_arrow(batch):
    running, _ = batch
    chunks = await _training(running, pb.TRAINING_SET_FORMAT_ARROW_IPC, chunk_rows=100)
    (chunk,) = chunks
    table = pa.ipc.open_stream(io.BytesIO(chunk.arrow_ipc)).read_all()
    assert table.column_names == [
        "customer_id", "event_time", "spend", "log_spend", "web", "tenure", "signup_age", "amount", "label",
    ]  # fmt: skip
    assert table.schema.field("log_spend").type == pa.float32()
    assert table.column("spend").to_pylist() == [20.0, 10.0, 20.0, -1.0, -1.0, 7.5, -1.0]
    assert table.column("log_spend").null_count == 3
    assert table.column("web").to_pylist()[0] == [0.0, 1.0]


async def test_training_set_from_an_arrow_stream_and_errors(batch):
    running, _ = batch
    entities = pa.table(
        {
            "customer_id": [1, 3],
            "event_time": pa.array([T, T], type=pa.timestamp("us", tz="UTC")),
            "amount": [1.0, None],
        }
    )
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, entities.schema) as writer:
        writer.write_table(entities)
    request = pb.GetTrainingSetRequest(
        feature_service="model", arrow_ipc=sink.getvalue(), format=pb.TRAINING_SET_FORMAT_ROWS
    )
    rows = [row async for chunk in running.stub.GetTrainingSet(request) for row in chunk.rows.rows]
    assert [r.values[0].double_value for r in rows] == [20.0, 7.5]
    bad = pb.GetTrainingSetRequest(feature_service="model", arrow_ipc=b"not arrow")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        _ = [c async for c in running.stub.GetTrainingSet(bad)]
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "arrow_ipc" in caught.value.details()
    keyless = pb.GetTrainingSetRequest(
        feature_service="model",
        rows=pb.TrainingEntityRows(
            rows=[pb.TrainingEntityRow(keys={"customer_id": common_pb2.Value(string_value="x")})]
        ),
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        _ = [c async for c in running.stub.GetTrainingSet(keyless)]
    assert caught.value.details() == "rows[0].event_time is required"


async def test_materialization_then_online_read_then_incremental(batch):
    running, lake = batch
    first = await running.stub.MaterializeFeatureView(pb.MaterializeFeatureViewRequest(feature_view="txn"))
    # Customer 1's latest (the T+1µs row), 3's; customer 2's row is past its TTL and not written.
    assert first.rows_written == 2 and not first.range.HasField("start_time")
    assert first.watermark == first.range.end_time
    got = await running.stub.GetFeatures(
        pb.GetFeaturesRequest(
            feature_service="model",
            entities=[pb.EntityRow(keys={"customer_id": common_pb2.Value(int64_value=c)}) for c in (1, 2, 3)],
        )
    )
    assert [r.values[0].double_value for r in got.rows] == [999.0, -1.0, 7.5]
    assert got.rows[0].lineage.views[0].value_time.ToDatetime(tzinfo=UTC) == T + US
    later = datetime.now(UTC) + timedelta(seconds=1)
    _write_txn(lake / "txn.parquet", [*HISTORY, (3, 8.25, "web", later), (5, 1.0, "app", later)])
    incremental = await running.stub.MaterializeFeatureView(
        pb.MaterializeFeatureViewRequest(feature_view="txn", incremental=True, end_time=_ts(later + US))
    )
    assert incremental.rows_written == 2  # only what is newer than the last watermark
    assert incremental.range.start_time == first.watermark
    again = await running.stub.GetFeatures(
        pb.GetFeaturesRequest(
            feature_service="model",
            entities=[pb.EntityRow(keys={"customer_id": common_pb2.Value(int64_value=c)}) for c in (3, 5)],
        )
    )
    assert [r.values[0].double_value for r in again.rows] == [8.25, 1.0]
    profile = await running.stub.MaterializeFeatureView(
        pb.MaterializeFeatureViewRequest(feature_view="profile", incremental=True)
    )
    assert profile.rows_written == 2  # from SQLite: the latest row of customers 1 and 3 (no TTL)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.stub.MaterializeFeatureView(pb.MaterializeFeatureViewRequest(feature_view="nope"))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


async def test_spark_gives_the_same_training_set_and_materialization(batch):
    """One Spark session (local[2]) for the module: the same vectors, statuses and online values."""
    running, _ = batch
    local = await _training(running, pb.TRAINING_SET_FORMAT_ROWS, chunk_rows=100)
    spark = await _training(running, pb.TRAINING_SET_FORMAT_ROWS, engine=pb.BATCH_ENGINE_SPARK, chunk_rows=100)
    assert [r.SerializeToString(deterministic=True) for r in spark[0].rows.rows] == [
        r.SerializeToString(deterministic=True) for r in local[0].rows.rows
    ]
    done = await running.stub.MaterializeFeatureView(
        pb.MaterializeFeatureViewRequest(feature_view="txn", engine=pb.BATCH_ENGINE_SPARK)
    )
    assert done.rows_written == 2
    got = await running.stub.GetFeatures(
        pb.GetFeaturesRequest(
            feature_service="model",
            entities=[pb.EntityRow(keys={"customer_id": common_pb2.Value(int64_value=c)}) for c in (1, 2, 3)],
        )
    )
    assert [r.values[0].double_value for r in got.rows] == [999.0, -1.0, 7.5]
    jvm = running.gateway.spark().session.sparkContext._gateway.proc
    assert os.getsid(jvm.pid) == jvm.pid != os.getsid(0)  # started by _spawn_jvm: vfork, a session of its own


async def test_spark_that_cannot_start_is_unavailable_then_tried_again(tmp_path: Path, make_redis, gateway_factory):
    """Spark failing to start (here a master URL it cannot parse) answers UNAVAILABLE, not INTERNAL; the
    engine is not kept, so the next call tries to start Spark again (and fails the same way)."""
    running, _ = await _batch_gateway(tmp_path, make_redis, gateway_factory, spark={"master": "no-such-master"})
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _training(running, pb.TRAINING_SET_FORMAT_ROWS, engine=pb.BATCH_ENGINE_SPARK, chunk_rows=100)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert caught.value.details() == (
            "spark could not run training_features: Py4JJavaError (details in the gateway log)"
        )
    assert running.gateway._spark is None
