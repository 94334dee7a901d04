"""Feature rows pushed over NATS: the same validation and writes as the PushFeatures RPC.

A message on the configured subject is a ``PushFeaturesRequest``, protobuf-encoded, or the
same as JSON (``{"feature_view": ..., "rows": [{"keys": {...}, "values": {...},
"event_time": "2026-11-01T10:00:00Z"}]}``). The subscription is a queue group, so one
gateway instance handles each message. When the message has a reply subject, the answer is
``{"rows_written": n, "rows_skipped": m}`` or ``{"error": "...", "code": "INVALID_ARGUMENT"}``.
"""

from __future__ import annotations

import json
from typing import Any

import nats
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg

from infermesh.datagateway.v1 import data_gateway_pb2 as pb
from infermesh_chassis.errors import InfermeshError, InvalidArgument
from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics
from infermesh_data_gateway import converters
from infermesh_data_gateway.gateway import DataGateway
from infermesh_data_gateway.settings import NatsSettings

__all__ = ["NatsPushSubscriber", "decode_push"]

_log = get_logger("infermesh_data_gateway.push")


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


class NatsPushSubscriber:
    """Subscribes to the push subject and writes what arrives (see the module docstring)."""

    def __init__(self, gateway: DataGateway, settings: NatsSettings, metrics: Metrics) -> None:
        self.gateway = gateway
        self.settings = settings
        self._client: Client | None = None
        self._messages = metrics.counter("push_messages", "Push messages received over NATS, by outcome.", ("outcome",))

    async def start(self) -> None:
        """Connect (retrying in the background while the server is away) and subscribe."""
        self._client = await nats.connect(
            self.settings.url, name="infermesh-data-gateway", max_reconnect_attempts=-1, reconnect_time_wait=1
        )
        await self._client.subscribe(self.settings.subject, queue=self.settings.queue_group, cb=self._handle)
        _log.info("push_subscribed", subject=self.settings.subject, queue=self.settings.queue_group)

    async def stop(self) -> None:
        """Finish the messages in hand and disconnect."""
        if self._client is not None:
            await self._client.drain()
            self._client = None

    async def _handle(self, msg: Msg) -> None:
        answer: dict[str, Any]
        try:
            request = decode_push(msg.data)
            written, skipped = await self.gateway.push(
                request.feature_view, converters.push_rows_from_proto(request.rows)
            )
            answer = {"rows_written": written, "rows_skipped": skipped}
            self._messages.labels("ok").inc()
        except InfermeshError as exc:
            answer = {"error": exc.message, "code": exc.status_code.name}
            self._messages.labels("refused").inc()
            _log.warning("push_refused", error=exc.message, code=exc.status_code.name)
        if msg.reply:
            await msg.respond(json.dumps(answer).encode())
