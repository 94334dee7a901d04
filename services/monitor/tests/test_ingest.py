"""Ingest through ReportEvents: validation, de-duplication by batch and by event, exactly-once redo."""

from __future__ import annotations

import uuid

import grpc
import numpy as np
import pytest
from monitor_support import MonitorThread, inference_event, number, rows_written, stored_count

from infermesh.common.v1 import common_pb2, events_pb2
from infermesh.monitor.v1 import monitor_pb2
from infermesh_chassis.events import batch_id, encode_batch
from infermesh_monitor.ingest import delimited_events
from infermesh_monitor.schema import PREDICTED_LABEL, PREDICTION_NAMES, PREDICTION_VALUES, ingest_settings


def _model() -> str:
    return f"ingest-{uuid.uuid4().hex[:8]}"


async def test_report_events_validates_and_drops_duplicates(stub, monitor: MonitorThread) -> None:
    model = _model()
    events = [inference_event(model, 1, 1.0 + i, sampled_inputs={"x": number(i)}) for i in range(50)]
    no_id = inference_event(model, 1, 1.0)
    no_id.event_id = ""
    bad_version = inference_event(model, 1, 1.0)
    bad_version.schema_version = 99
    no_payload = events_pb2.Event(event_id="no-payload", schema_version=1)
    request = monitor_pb2.ReportEventsRequest(events=[*events, no_id, bad_version, no_payload])

    first = await stub.ReportEvents(request)
    assert (first.accepted, first.duplicates) == (50, 0)
    assert sorted(first.rejected_event_ids) == sorted(["", bad_version.event_id, "no-payload"])

    again = await stub.ReportEvents(request)
    assert (again.accepted, again.duplicates) == (0, 50)

    fresh = [inference_event(model, 1, 2.0, sampled_inputs={"x": number(1)}) for _ in range(5)]
    mixed = await stub.ReportEvents(monitor_pb2.ReportEventsRequest(events=[*events[:10], *fresh]))
    assert (mixed.accepted, mixed.duplicates) == (5, 10)

    assert await stored_count(stub, model) == 55
    assert await rows_written(stub, model) == 55


async def test_an_insert_cut_short_is_redone_exactly_once(stub, monitor: MonitorThread) -> None:
    """A crash after writing some rows and before recording the batch as done leaves it ``pending``."""
    model = _model()
    events = [inference_event(model, 1, 3.0, sampled_inputs={"x": number(i)}) for i in range(40)]
    payload = encode_batch(events)
    assert monitor.monitor is not None
    store = monitor.monitor.store
    crashed_insert = uuid.uuid4().hex
    await monitor.call(
        store.insert(
            "ingested_batches",
            f'{{"batch_id":"{batch_id(e.event_id for e in events)}","insert_id":"{crashed_insert}",'
            f'"state":"pending","events":40}}'.encode(),
            "JSONEachRow",
        )
    )
    partial = b"".join(delimited_events(payload)[:25])
    settings = {**ingest_settings(store), "insert_deduplication_token": crashed_insert}
    await monitor.call(store.insert("events_in_inference", partial, "Protobuf", settings))
    assert await rows_written(stub, model) == 25

    reply = await stub.ReportEvents(monitor_pb2.ReportEventsRequest(events=events))
    assert reply.accepted == 40
    assert await rows_written(stub, model) == 40
    assert await stored_count(stub, model) == 40


async def test_stream_events_acknowledges_the_last_sequence(stub) -> None:
    model = _model()

    async def batches():
        for sequence in range(1, 4):
            yield monitor_pb2.StreamEventsRequest(
                events=[inference_event(model, 1, 1.0) for _ in range(10)], sequence=sequence
            )

    reply = await stub.StreamEvents(batches())
    assert (reply.accepted, reply.duplicates, reply.last_sequence) == (30, 0, 3)
    assert await stored_count(stub, model) == 30


async def test_outputs_and_labels_are_decoded_from_raw_tensors(stub, monitor: MonitorThread) -> None:
    """Raw KServe tensors become prediction values (FP32, FP16, INT64) and the predicted label."""
    model = _model()
    probabilities = np.array([[0.2, 0.8]], dtype=np.float32)
    halves = np.array([1.5, -2.0], dtype=np.float16)
    event = inference_event(
        model,
        1,
        1.0,
        outputs=[
            common_pb2.Tensor(
                name="probabilities", datatype="FP32", shape=[1, 2], raw_contents=probabilities.tobytes()
            ),
            common_pb2.Tensor(name="half", datatype="FP16", shape=[2], raw_contents=halves.tobytes()),
            common_pb2.Tensor(
                name="label", datatype="INT64", shape=[1], raw_contents=np.array([7], dtype=np.int64).tobytes()
            ),
        ],
    )
    await stub.ReportEvents(monitor_pb2.ReportEventsRequest(events=[event]))
    assert monitor.monitor is not None
    [[names, values, label]] = await monitor.call(
        monitor.monitor.store.rows(
            f"SELECT {PREDICTION_NAMES}, {PREDICTION_VALUES}, {PREDICTED_LABEL} FROM inference_events"
            " WHERE model = {model:String}",
            {"model": model},
        )
    )
    assert names == ["probabilities[0]", "probabilities[1]", "half[0]", "half[1]", "label"]
    assert values == pytest.approx([0.2, 0.8, 1.5, -2.0, 7.0], rel=1e-6)
    assert label == "7"


async def test_too_many_events_in_one_call_are_refused(stub, monitor: MonitorThread) -> None:
    limit = monitor.settings.ingest.max_events_per_request
    monitor.settings.ingest.max_events_per_request = 3
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ReportEvents(
                monitor_pb2.ReportEventsRequest(events=[inference_event(_model(), 1, 1.0) for _ in range(4)])
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        monitor.settings.ingest.max_events_per_request = limit
