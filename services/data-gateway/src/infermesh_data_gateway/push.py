"""Feature rows pushed over NATS, kept in JetStream until written: the same validation and writes as PushFeatures.

A message on one of the push subjects is a ``PushFeaturesRequest``, protobuf-encoded, or the same
as JSON (``{"feature_view": ..., "rows": [{"keys": {...}, "values": {...}, "event_time":
"2026-11-01T10:00:00Z"}]}``). The gateway ensures a JetStream stream over those subjects, so a
message is stored whether it was published through JetStream (the publisher gets JetStream's
acknowledgement once it is stored) or with a plain core NATS publish, also while no gateway runs.
A core NATS publish has no acknowledgement: the server hands it to the stream through a queue, so
NATS stopping right after it (even after the publisher's flush) can lose it.

Every gateway instance pulls from one durable consumer (each message goes to one of them) and
acknowledges a message only once its rows are in the online store. A message that can never be
written (not a PushFeaturesRequest, an unknown view, an invalid row) is acknowledged, counted as
``rejected`` and logged with the reason, so it cannot block the ones behind it. A message whose
write fails (the online store is down or too slow) is not acknowledged: it is delivered again
after ``retry_delay_s``, for as long as it takes. Delivery is at least once; writing a message
twice is harmless, because a write is an upsert that keeps the newer of the stored and the written
value per key, and a row without an event time takes the time JetStream stored the message, which
is the same at every delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import nats.errors
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import api as js_api

from infermesh.datagateway.v1 import data_gateway_pb2 as pb
from infermesh_chassis.errors import InfermeshError, InvalidArgument, Unavailable
from infermesh_chassis.jetstream import Batches, ConsumerSpec, DurableConsumer, ack_confirmed
from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics
from infermesh_data_gateway import converters
from infermesh_data_gateway.gateway import DataGateway
from infermesh_data_gateway.settings import NatsSettings

__all__ = ["NatsPushSubscriber", "consumer_spec", "decode_push"]

_log = get_logger("infermesh_data_gateway.push")

_RETENTION = {"workqueue": js_api.RetentionPolicy.WORK_QUEUE, "limits": js_api.RetentionPolicy.LIMITS}


def decode_push(data: bytes) -> pb.PushFeaturesRequest:
    """A push message (JSON when it starts with ``{``, protobuf otherwise); InvalidArgument when neither."""
    request = pb.PushFeaturesRequest()
    try:
        if data.lstrip()[:1] == b"{":
            json_format.Parse(data, request)
        else:
            request.ParseFromString(data)
    except (json_format.ParseError, DecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"not a PushFeaturesRequest (protobuf or JSON): {exc}") from None
    return request


def consumer_spec(settings: NatsSettings) -> ConsumerSpec:
    """The push stream and the durable consumer every gateway instance shares."""
    stream = js_api.StreamConfig(
        name=settings.stream,
        subjects=list(settings.subjects),
        retention=_RETENTION[settings.stream_retention],
        storage=js_api.StorageType.FILE,
        discard=js_api.DiscardPolicy.NEW,
        max_age=settings.stream_max_age_s,
        max_bytes=settings.stream_max_bytes,
        duplicate_window=settings.stream_duplicate_window_s,
    )
    return ConsumerSpec(
        url=settings.url,
        stream=stream,
        durable=settings.durable,
        subjects=list(settings.subjects),
        ack_wait_s=settings.ack_wait_s,
        max_ack_pending=settings.max_ack_pending,
        fetch_batch=settings.fetch_batch,
        fetch_timeout_s=settings.fetch_timeout_s,
        connect_timeout_s=settings.connect_timeout_s,
        request_timeout_s=settings.request_timeout_s,
    )


class NatsPushSubscriber:
    """Consumes the push stream into the online stores (see the module docstring)."""

    def __init__(self, gateway: DataGateway, settings: NatsSettings, metrics: Metrics) -> None:
        self.gateway = gateway
        self.settings = settings
        self._consumer = DurableConsumer(consumer_spec(settings), "data-gateway-push", self._consume, metrics, "push")
        self._messages = metrics.counter(
            "push_messages",
            "Push messages from NATS by outcome: ok (written, acknowledged), rejected (can never be "
            "written; acknowledged), retried (the write failed; delivered again later).",
            ("outcome",),
        )

    def start(self) -> None:
        """Connect and consume in the background; while NATS is away it keeps retrying (pushes wait in the stream)."""
        self._consumer.start()

    async def stop(self) -> None:
        """Finish the messages in hand (written and acknowledged, or left for redelivery), then disconnect."""
        await self._consumer.stop()

    async def _consume(self, batches: Batches) -> None:
        async for messages in batches:
            await asyncio.gather(*(self._handle(message) for message in messages))

    async def _handle(self, msg: Msg) -> None:
        where = {"subject": msg.subject, "stream_seq": msg.metadata.sequence.stream}
        try:
            request = decode_push(msg.data)
            stored_us = round(msg.metadata.timestamp.timestamp() * 1_000_000)
            rows = [
                row if row.event_time_us is not None else dataclasses.replace(row, event_time_us=stored_us)
                for row in converters.push_rows_from_proto(request.rows)
            ]
            written, skipped = await self.gateway.push(request.feature_view, rows)
        except Unavailable as exc:
            await self._retry(msg, exc.message, where)
            return
        except InfermeshError as exc:
            self._messages.labels("rejected").inc()
            _log.warning("push_rejected", error=exc.message, code=exc.status_code.name, **where)
            await ack_confirmed(msg)
            return
        except Exception as exc:  # a bug, not the message: keep it for a later delivery
            _log.exception("push_failed", **where)
            await self._retry(msg, str(exc), where)
            return
        self._messages.labels("ok").inc()
        _log.debug("push_written", view=request.feature_view, rows_written=written, rows_skipped=skipped, **where)
        await ack_confirmed(msg)

    async def _retry(self, msg: Msg, error: str, where: dict[str, object]) -> None:
        self._messages.labels("retried").inc()
        delivered = msg.metadata.num_delivered
        _log.warning(
            "push_write_failed", error=error, delivery=delivered, retry_in_s=self.settings.retry_delay_s, **where
        )
        with contextlib.suppress(nats.errors.Error):
            await msg.nak(delay=self.settings.retry_delay_s)
