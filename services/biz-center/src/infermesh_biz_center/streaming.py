"""Stream bindings: scenes fed from NATS JetStream, scored in micro-batches, results published.

A scene's ``stream_bindings`` (the contract's ``StreamBinding``) name an input stream and subjects,
a message format (a protobuf ``PredictRequest``, or JSON read through a declared field mapping),
an output subject and a dead-letter subject. :class:`StreamBindings` consumes every enabled binding
of every enabled scene with a durable pull consumer (the chassis' :class:`DurableConsumer`) whose
name every instance shares, so JetStream splits the messages between the instances and a new
instance joins by starting; it follows the registry's snapshot, so a binding added, changed or
removed (admin API or seed file) is started, restarted or stopped without a restart of the process.

A binding that leaves the configuration (removed from its scene, its scene deleted) takes its durable
consumer with it: the instance that sees the change deletes the consumer from the stream, and so does
a binding whose stream, subjects or durable changed, before the new consumer starts (which then
begins at the stream's first message on its subjects, as a new binding does). Every instance sees the
change and tries; a consumer already gone is no error, one that NATS could not delete is tried again
at the next watch, and a consumer whose filter is no longer the removed binding's (another instance
already made the new binding's) is left alone. A disabled binding or scene keeps its consumer, so it
resumes where it left off once enabled again.

Each fetch is one micro-batch (at most ``batch_size`` messages, at most ``max_ack_pending``
delivered and not yet acknowledged across every instance: backpressure). A batch is decoded and
scored by :meth:`Predictor.predict_batch`, the core of the ``PredictBatch`` RPC, so experiments,
gray releases, coalesced feature and model calls, fallbacks, degradation flags, metrics and the
events to the monitor are the same as for a call. Then, per message:

- a result is published to the output subject with ``Nats-Msg-Id`` set to the input's message id
  (its own ``Nats-Msg-Id``, else ``<stream>:<sequence>``), and the input is acknowledged only
  once JetStream has stored the result (the results of a batch are in flight together). A message
  delivered again after a crash or a lost ack is scored again and published again with the same
  id, which the output stream's duplicate window drops: nothing is lost and, within that window,
  nothing is doubled (so the ack needs no confirmation);
- a message that cannot be decoded or is refused as invalid (INVALID_ARGUMENT) goes to the
  dead-letter subject at once, with the reason in the ``Infermesh-Dead-Letter-Reason`` header
  (and where it came from in ``Infermesh-Source-*``), then is acknowledged;
- a message whose scoring failed (no answer and no fallback left, the scene disabled, ...) is
  delivered again after ``retry_delay``; at its ``max_deliver``-th delivery (``num_delivered`` of
  its JetStream metadata) it goes to the dead-letter subject instead;
- a message refused by the scene's rate limit or concurrency (RESOURCE_EXHAUSTED) is delivered
  again after the larger of the hint and ``retry_delay``, and the binding pulls nothing for that
  long: backpressure, never a reason to dead-letter;
- with ``pause_when_degraded``, a degraded result is not published: the message is delivered
  again after ``retry_delay`` and the binding pulls nothing for that long (it pauses while the
  scene would answer degraded; it is never dead-lettered for that).

Up to ``streaming.batches_in_flight`` batches of a binding are scored at once; with
``ordered_by_unit`` one: the next batch is pulled only once every message of the current one is
acknowledged or handed back, and the messages of one unit id in a batch are scored and published
one after the other, in stream order (the batch is scored in rounds: the first message of every
unit, then the second...), and once one of them is handed back the unit's later messages in the
batch are handed back too. So one instance publishes the results of a unit in stream order while
nothing is redelivered; a redelivery (a retry, a crash) or several instances sharing the binding
can reorder a unit's results.

:meth:`StreamBindings.statuses` reads each binding's lag (pending messages, the age of the oldest
message not yet acknowledged) and dead letters; :meth:`StreamBindings.replay_dead_letters`
publishes a binding's dead letters to their input subject again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import nats.errors
import nats.js.errors
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api as js_api

from infermesh.bizcenter.v1 import biz_center_pb2 as pb
from infermesh.common.v1 import common_pb2
from infermesh_biz_center.catalog import CompiledBinding, Snapshot
from infermesh_biz_center.domain import PredictInput, PredictOutcome, Principal
from infermesh_biz_center.grpc_front import encode_outcome
from infermesh_biz_center.predictor import Predictor
from infermesh_biz_center.registry import ConfigRegistry
from infermesh_biz_center.settings import StreamingSettings
from infermesh_chassis.errors import InfermeshError, InvalidArgument, NotFound, ResourceExhausted
from infermesh_chassis.jetstream import (
    Batches,
    ConsumerSpec,
    DurableConsumer,
    StoredPublisher,
    ack_confirmed,
    connect,
)
from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.tasks import cancel_and_wait
from infermesh_chassis.validation import check_request_id

__all__ = [
    "HEADER_DEGRADED",
    "HEADER_INPUT_ID",
    "HEADER_REASON",
    "HEADER_SOURCE_SUBJECT",
    "BindingStatus",
    "StreamBindings",
    "decode_message",
    "message_id",
]

HEADER_REASON = "Infermesh-Dead-Letter-Reason"
"""Why a dead-lettered message could not be scored."""
HEADER_INPUT_ID = "Infermesh-Input-Id"
"""The input message's id, on results and dead letters."""
HEADER_SOURCE_SUBJECT = "Infermesh-Source-Subject"
"""The subject a dead-lettered message came from (where a replay publishes it)."""
HEADER_SOURCE_STREAM = "Infermesh-Source-Stream"
HEADER_SOURCE_SEQUENCE = "Infermesh-Source-Sequence"
HEADER_DEGRADED = "Infermesh-Degraded"
"""``true`` on a degraded result."""
HEADER_SCENE = "Infermesh-Scene"
HEADER_BINDING = "Infermesh-Binding"
MSG_ID = "Nats-Msg-Id"
OUTPUT_DUPLICATE_WINDOW_S = 600.0
"""Duplicate window of an output stream the business center creates: a redelivered input's result is
dropped when it is published again within it."""
MAX_REPLAY = 10_000

_log = get_logger("infermesh_biz_center.streaming")


def message_id(msg: Msg) -> str:
    """The input message's id: its ``Nats-Msg-Id``, else ``<stream>:<stream sequence>`` (stable across deliveries)."""
    given = (msg.headers or {}).get(MSG_ID)
    if given:
        return str(given)
    meta = msg.metadata
    return f"{meta.stream}:{meta.sequence.stream}"


def _lookup(document: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(document, dict) or part not in document:
            return None
        document = document[part]
    return document


def _value(value: Any, field_name: str) -> common_pb2.Value:
    if isinstance(value, bool):
        return common_pb2.Value(bool_value=value)
    if isinstance(value, int):
        return common_pb2.Value(int64_value=value)
    if isinstance(value, float):
        return common_pb2.Value(double_value=value)
    if isinstance(value, str):
        return common_pb2.Value(string_value=value)
    raise InvalidArgument(f"{field_name}: a string, number or boolean is required, got {type(value).__name__}")


def decode_message(binding: CompiledBinding, data: bytes, default_request_id: str) -> PredictInput:
    """A message as the core's input (InvalidArgument, prefixed ``undecodable:`` when it is not the
    binding's format at all)."""
    if binding.format == pb.STREAM_FORMAT_PROTOBUF:
        try:
            request = pb.PredictRequest.FromString(data)
        except DecodeError as exc:
            raise InvalidArgument(f"undecodable: not a protobuf PredictRequest ({exc})") from None
        if request.scene and request.scene != binding.scene:
            raise InvalidArgument(f"scene: '{request.scene}' is not the binding's scene '{binding.scene}'")
        return PredictInput(  # built once, as decode_request would, with the binding's scene
            binding.scene,
            request.unit_id,
            dict(request.features) if request.features else {},
            dict(request.attributes) if request.attributes else {},
            request.request_id or default_request_id,
        )
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"undecodable: not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise InvalidArgument("undecodable: a JSON object is required")
    unit = _lookup(document, binding.unit_id_path)
    unit_field = ".".join(binding.unit_id_path)
    if isinstance(unit, bool) or not isinstance(unit, str | int):
        raise InvalidArgument(f"unit_id: the message has no string or integer at '{unit_field}'")
    features = {
        name: _value(value, f"features.{name}")
        for name, path in binding.feature_paths
        if (value := _lookup(document, path)) is not None
    }
    attributes: dict[str, str] = {}
    for name, path in binding.attribute_paths:
        value = _lookup(document, path)
        if value is None:
            continue
        if isinstance(value, dict | list):
            raise InvalidArgument(f"attributes.{name}: a string, number or boolean is required")
        attributes[name] = str(value).lower() if isinstance(value, bool) else str(value)
    request_id = _lookup(document, binding.request_id_path) if binding.request_id_path else None
    return PredictInput(
        binding.scene, str(unit), features, attributes, str(request_id) if request_id else default_request_id
    )


_Consumer = tuple[str, str, frozenset[str]]
"""A binding's durable consumer as JetStream knows it: (stream, durable, filter subjects)."""


def _consumer(binding: CompiledBinding) -> _Consumer:
    return binding.stream, binding.durable, frozenset(binding.subjects)


def _header(text: str) -> str:
    """``text`` as a header value: one line, bounded."""
    return " ".join(text.split())[:1000]


def _is_invalid(error: InfermeshError) -> bool:
    """Whether the message itself is at fault (delivering it again cannot help)."""
    return isinstance(error, InvalidArgument)


@dataclass(slots=True)
class _Counts:
    """What this instance did with one binding since it started."""

    consumed: int = 0
    scored: int = 0
    degraded: int = 0
    dead_lettered: int = 0


@dataclass(frozen=True, slots=True)
class BindingStatus:
    """A binding and its live state (see ``StreamBindingStatus`` in the contract)."""

    binding: CompiledBinding
    consuming: bool
    pending: int = 0
    ack_pending: int = 0
    redelivered: int = 0
    oldest_pending_age_s: float = 0.0
    dead_letters: int = 0
    consumed: int = 0
    scored: int = 0
    degraded: int = 0
    dead_lettered: int = 0
    error: str = ""


class _Item:
    """One fetched message on its way through a batch."""

    __slots__ = ("id", "input", "msg")

    def __init__(self, msg: Msg, msg_id: str, inp: PredictInput) -> None:
        self.msg = msg
        self.id = msg_id
        self.input = inp


class _BindingConsumer:
    """Consumes one binding (see the module docstring)."""

    def __init__(self, owner: StreamBindings, binding: CompiledBinding) -> None:
        self.binding = binding
        self._owner = owner
        self._principal = Principal(f"stream:{binding.scene}/{binding.name}", frozenset({binding.scene}))
        self._labels = (binding.scene, binding.name)
        settings = owner.settings
        spec = ConsumerSpec(
            url=owner.url,
            stream=js_api.StreamConfig(
                name=binding.stream,
                subjects=list(binding.subjects),
                retention=js_api.RetentionPolicy.LIMITS,
                storage=js_api.StorageType.FILE,
            ),
            durable=binding.durable,
            subjects=list(binding.subjects),
            ack_wait_s=binding.ack_wait_s,
            max_ack_pending=binding.max_ack_pending,
            fetch_batch=binding.batch_size,
            fetch_timeout_s=settings.fetch_timeout_s,
            connect_timeout_s=settings.connect_timeout_s,
            request_timeout_s=settings.request_timeout_s,
            update_stream=False,
            update_consumer=True,
        )
        gauges = (owner.connected.labels(*self._labels), owner.pending.labels(*self._labels))
        name = f"biz-center-stream-{binding.scene}-{binding.name}"
        self._consumer = DurableConsumer(spec, name, self._consume, owner.metrics, "stream", gauges=gauges)
        self._outputs_ready = False
        self._pause_until = 0.0

    def start(self) -> None:
        self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop(self._owner.settings.drain_timeout_s)

    async def _consume(self, batches: Batches) -> None:
        binding = self.binding
        limit = 1 if binding.ordered_by_unit else self._owner.settings.batches_in_flight
        in_flight: set[asyncio.Task[None]] = set()
        try:
            async for messages in batches:
                in_flight.add(asyncio.get_running_loop().create_task(self._guarded(messages)))
                if len(in_flight) >= limit:
                    _, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                pause = self._pause_until - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
        finally:
            if in_flight:
                await asyncio.gather(*in_flight)

    async def _guarded(self, messages: list[Msg]) -> None:
        """One batch; a failure hands its messages back and pauses the binding for ``retry_delay``."""
        binding = self.binding
        try:
            if not self._outputs_ready:
                await self._owner.ensure_outputs(binding)
                self._outputs_ready = True
            pause = await self._batch(messages)
        except Exception:  # NATS away, a bug: what is not acknowledged yet comes back later
            _log.exception("stream_batch_failed", scene=binding.scene, binding=binding.name)
            await asyncio.gather(*(self._hand_back(m, "the batch failed") for m in messages))
            pause = True
        if pause:
            self._pause_until = time.monotonic() + binding.retry_delay_s

    async def _batch(self, messages: list[Msg]) -> bool:
        """Score, publish and acknowledge one micro-batch; True when the binding should pause."""
        owner, binding = self._owner, self.binding
        counts = owner.counts(binding)
        counts.consumed += len(messages)
        owner.consumed.labels(*self._labels).inc(len(messages))
        owner.batch_sizes.labels(*self._labels).observe(len(messages))
        items: list[_Item] = []
        done: list[asyncio.Future[None] | asyncio.Task[None]] = []
        for msg in messages:
            msg_id = message_id(msg)
            try:
                inp = decode_message(binding, msg.data, self._request_id(msg, msg_id))
            except InvalidArgument as exc:
                why = "undecodable" if exc.message.startswith("undecodable") else "invalid"
                done.append(asyncio.ensure_future(self._dead_letter(msg, msg_id, why, exc.message)))
                continue
            items.append(_Item(msg, msg_id, inp))
        pause = False
        held: set[str] = set()
        for round_items in self._rounds(items):
            outcomes = await owner.predictor.predict_batch(
                self._principal, [item.input for item in round_items], f"stream-{binding.name}"
            )
            finishing: list[Awaitable[None]] = []
            results: list[tuple[_Item, PredictOutcome]] = []
            for item, outcome in zip(round_items, outcomes, strict=True):
                if item.input.unit_id in held:
                    finishing.append(self._hand_back(item.msg, "held behind an earlier message of its unit"))
                elif isinstance(outcome, InfermeshError):
                    pause |= self._failed(item, outcome, held, finishing)
                elif outcome.degradation.degraded and binding.pause_when_degraded:
                    pause = True
                    self._hold(item, held)
                    finishing.append(self._hand_back(item.msg, f"degraded: {outcome.degradation.detail}"))
                else:
                    results.append((item, outcome))
            finishing.append(self._publish(results))
            await asyncio.gather(*finishing)
        if done:
            await asyncio.gather(*done)
        return pause

    def _hold(self, item: _Item, held: set[str]) -> None:
        """With ``ordered_by_unit``, the unit's later messages in the batch are handed back after this one."""
        if self.binding.ordered_by_unit:
            held.add(item.input.unit_id)

    def _failed(self, item: _Item, error: InfermeshError, held: set[str], finishing: list[Awaitable[None]]) -> bool:
        """What a message whose scoring failed becomes (appended to ``finishing``); True to pause the binding."""
        if _is_invalid(error):
            finishing.append(self._dead_letter(item.msg, item.id, "invalid", error.message))
            return False
        if isinstance(error, ResourceExhausted):  # the scene's rate limit or concurrency: wait, never a failure
            self._hold(item, held)
            finishing.append(self._hand_back(item.msg, error.message, error.retry_after_s))
            return True
        delivered = item.msg.metadata.num_delivered or 1
        if delivered >= self.binding.max_deliver:
            reason = f"scoring failed at delivery {delivered}: {error.message}"
            finishing.append(self._dead_letter(item.msg, item.id, "failed", reason))
            return False
        self._hold(item, held)
        finishing.append(self._hand_back(item.msg, error.message))
        return False

    def _rounds(self, items: list[_Item]) -> list[list[_Item]]:
        """All items at once; with ``ordered_by_unit``, round k holds the k-th message of every unit."""
        if not self.binding.ordered_by_unit:
            return [items] if items else []
        rounds: list[list[_Item]] = []
        seen: dict[str, int] = {}
        for item in items:
            k = seen.get(item.input.unit_id, 0)
            seen[item.input.unit_id] = k + 1
            if k == len(rounds):
                rounds.append([])
            rounds[k].append(item)
        return rounds

    @staticmethod
    def _request_id(msg: Msg, msg_id: str) -> str:
        """The message id as the request id, or ``<stream>:<sequence>`` when it cannot be one."""
        try:
            check_request_id(msg_id, "request_id")
        except InvalidArgument:
            meta = msg.metadata
            return f"{meta.stream}:{meta.sequence.stream}"
        return msg_id

    async def _publish(self, results: list[tuple[_Item, PredictOutcome]]) -> None:
        """Publish the results, all in flight at once, and acknowledge each input whose result JetStream
        stored (a plain ack: a lost one brings the input back, and its result published again is dropped
        as a duplicate); the others are handed back."""
        if not results:
            return
        owner, binding = self._owner, self.binding
        protobuf = binding.format == pb.STREAM_FORMAT_PROTOBUF
        messages = []
        for item, outcome in results:
            response = encode_outcome(outcome)
            if protobuf:
                data = response.SerializeToString()
            else:
                data = json_format.MessageToJson(response, preserving_proto_field_name=True, indent=None).encode()
            headers = {
                MSG_ID: item.id,
                HEADER_INPUT_ID: item.id,
                HEADER_DEGRADED: "true" if outcome.degradation.degraded else "false",
                HEADER_SCENE: binding.scene,
                HEADER_BINDING: binding.name,
            }
            messages.append((binding.output_subject, data, headers))
        stored = await owner.publish_all(messages)
        counts = owner.counts(binding)
        failed = []
        published = degraded = 0
        for (item, outcome), error in zip(results, stored, strict=True):
            if error is not None:
                failed.append(self._hand_back(item.msg, f"publishing the result failed: {error}"))
                continue
            published += 1
            degraded += outcome.degradation.degraded
            try:  # a plain ack only queues a publication on the connection: one after the other, no task each
                await item.msg.ack()
            except nats.errors.Error as exc:
                _log.info("stream_ack_failed", scene=binding.scene, binding=binding.name, error=str(exc))
        counts.scored += published
        counts.degraded += degraded
        owner.scored.labels(*self._labels).inc(published)
        if degraded:
            owner.degraded.labels(*self._labels).inc(degraded)
        if failed:
            await asyncio.gather(*failed)

    async def _dead_letter(self, msg: Msg, msg_id: str, why: str, reason: str) -> None:
        owner, binding = self._owner, self.binding
        meta = msg.metadata
        headers = {k: v for k, v in (msg.headers or {}).items() if k != MSG_ID and not k.startswith("Infermesh-")}
        headers |= {
            MSG_ID: f"dead:{msg_id}",
            HEADER_REASON: _header(reason),
            HEADER_INPUT_ID: msg_id,
            HEADER_SOURCE_SUBJECT: msg.subject,
            HEADER_SOURCE_STREAM: str(meta.stream),
            HEADER_SOURCE_SEQUENCE: str(meta.sequence.stream),
            HEADER_SCENE: binding.scene,
            HEADER_BINDING: binding.name,
        }
        try:
            await owner.publish(binding.dead_letter_subject, msg.data, headers)
        except (nats.errors.Error, TimeoutError, ConnectionError) as exc:
            await self._hand_back(msg, f"dead-lettering failed: {exc or type(exc).__name__}")
            return
        owner.counts(binding).dead_lettered += 1
        owner.dead_lettered.labels(*self._labels, why).inc()
        _log.info("stream_dead_lettered", scene=binding.scene, binding=binding.name, id=msg_id, reason=reason)
        await ack_confirmed(msg, owner.settings.request_timeout_s)

    async def _hand_back(self, msg: Msg, why: str, delay_s: float | None = None) -> None:
        """Have JetStream deliver ``msg`` again after ``delay_s`` (default: the binding's ``retry_delay``)."""
        binding = self.binding
        self._owner.retried.labels(*self._labels).inc()
        _log.debug("stream_retry", scene=binding.scene, binding=binding.name, why=why)
        with contextlib.suppress(nats.errors.Error):
            await msg.nak(delay=max(delay_s or 0.0, binding.retry_delay_s))


class StreamBindings:
    """Consumes the bindings of the registry's scenes (see the module docstring)."""

    def __init__(
        self,
        registry: ConfigRegistry,
        predictor: Predictor,
        settings: StreamingSettings,
        url: str,
        metrics: Metrics,
        *,
        watch_interval_s: float,
    ) -> None:
        self.registry = registry
        self.predictor = predictor
        self.settings = settings
        self.url = url
        self.metrics = metrics
        self._watch_interval_s = watch_interval_s
        self._running: dict[tuple[str, str], _BindingConsumer] = {}
        self._counts: dict[tuple[str, str], _Counts] = {}
        self._seen: Snapshot | None = None
        self._orphans: set[_Consumer] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._nc: Client | None = None
        self._js: Any = None
        self._publisher: StoredPublisher | None = None
        self._connecting = asyncio.Lock()
        self._ensured: set[tuple[str, str]] = set()
        self._ensuring = asyncio.Lock()
        labels = ("scene", "binding")
        self.consumed = metrics.counter("stream_consumed", "Stream messages fetched, by binding.", labels)
        self.scored = metrics.counter("stream_scored", "Stream results published, by binding.", labels)
        self.degraded = metrics.counter("stream_degraded", "Degraded stream results published, by binding.", labels)
        self.dead_lettered = metrics.counter(
            "stream_dead_lettered",
            "Stream messages sent to the dead-letter subject, by binding and why (undecodable, invalid, failed).",
            (*labels, "why"),
        )
        self.retried = metrics.counter(
            "stream_retried", "Stream messages handed back for a later delivery (failed or paused), by binding.", labels
        )
        self.batch_sizes = metrics.histogram(
            "stream_batch_size",
            "Messages per micro-batch, by binding.",
            labels,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000),
        )
        self.connected = metrics.gauge(
            "stream_connected", "1 while the binding's consumer is connected to NATS.", labels,
            multiprocess_mode="livemin",
        )  # fmt: skip
        self.pending = metrics.gauge(
            "stream_pending_messages",
            "Messages of the binding's input not yet delivered (every instance).",
            labels,
            multiprocess_mode="livemax",
        )
        self.ack_pending = metrics.gauge(
            "stream_ack_pending_messages",
            "Messages of the binding delivered and not yet acknowledged (every instance).",
            labels,
            multiprocess_mode="livemax",
        )
        self.oldest_age = metrics.gauge(
            "stream_oldest_pending_age_seconds",
            "Age of the binding's oldest message not yet acknowledged (0 when none).",
            labels,
            multiprocess_mode="livemax",
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the bindings in force and follow the registry's changes."""
        await self._reconcile(self.registry.snapshot)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._watch(), name="biz-center-stream-bindings"),
            loop.create_task(self._observe(), name="biz-center-stream-lag"),
        ]

    async def stop(self) -> None:
        """Stop following changes, finish each binding's batch in hand, disconnect."""
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks = []
        running, self._running = self._running, {}
        await asyncio.gather(*(consumer.stop() for consumer in running.values()))
        nc, self._nc, self._js, self._publisher = self._nc, None, None, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()

    def consuming(self, scene: str, name: str) -> CompiledBinding | None:
        """The binding as this instance consumes it now (None when it does not)."""
        consumer = self._running.get((scene, name))
        return consumer.binding if consumer is not None else None

    def counts(self, binding: CompiledBinding) -> _Counts:
        """This instance's counts of ``binding`` (kept across its restarts by config changes)."""
        counts = self._counts.get(binding.key)
        if counts is None:
            counts = self._counts[binding.key] = _Counts()
        return counts

    @staticmethod
    def _wanted(snapshot: Snapshot) -> dict[tuple[str, str], CompiledBinding]:
        return {
            binding.key: binding
            for scene in snapshot.scenes.values()
            if scene.enabled
            for binding in scene.bindings
            if binding.enabled
        }

    @staticmethod
    def _consumers(snapshot: Snapshot | None) -> set[_Consumer]:
        """The durable consumers of every binding of ``snapshot`` (enabled or not)."""
        if snapshot is None:
            return set()
        return {_consumer(binding) for scene in snapshot.scenes.values() for binding in scene.bindings}

    async def _reconcile(self, snapshot: Snapshot) -> None:
        wanted = self._wanted(snapshot)
        for key, consumer in list(self._running.items()):
            if wanted.get(key) != consumer.binding:
                del self._running[key]
                await consumer.stop()
                for gauge in (self.connected, self.pending, self.ack_pending, self.oldest_age):
                    gauge.labels(*key).set(0)  # a stopped binding is no one's lag (and alerts on none)
                _log.info("stream_binding_stopped", scene=key[0], binding=key[1])
        kept = self._consumers(snapshot)
        self._orphans = (self._orphans | self._consumers(self._seen)) - kept
        await self._delete_orphans()
        for key, binding in wanted.items():
            if key not in self._running:
                consumer = self._running[key] = _BindingConsumer(self, binding)
                consumer.start()
                _log.info("stream_binding_started", scene=key[0], binding=key[1], durable=binding.durable)
        self._seen = snapshot

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._watch_interval_s)
            snapshot = self.registry.snapshot
            try:
                if snapshot is not self._seen:
                    await self._reconcile(snapshot)
                elif self._orphans:
                    await self._delete_orphans()
            except Exception:
                _log.exception("stream_bindings_reconcile_failed")

    async def _delete_orphans(self) -> None:
        """Delete the durable consumers no binding uses any more; those NATS could not delete stay for the next
        try (all of them once NATS cannot be reached: the bindings to start do not wait on each)."""
        for orphan in sorted(self._orphans, key=lambda c: (c[0], c[1], sorted(c[2]))):
            try:
                deleted = await self._delete_consumer(*orphan)
            except (nats.errors.Error, TimeoutError, ConnectionError) as exc:
                _log.warning(
                    "stream_consumer_delete_failed", stream=orphan[0], durable=orphan[1], error=str(exc) or repr(exc)
                )
                if isinstance(exc, ConnectionError):
                    return
                continue
            self._orphans.discard(orphan)
            if deleted:
                _log.info("stream_consumer_deleted", stream=orphan[0], durable=orphan[1])

    async def _delete_consumer(self, stream: str, durable: str, subjects: frozenset[str]) -> bool:
        """Delete the durable consumer ``durable`` of ``stream`` if it still takes ``subjects``; whether it did."""
        js = await self._jetstream()
        try:
            info = await js.consumer_info(stream, durable)
            config = info.config
            if frozenset(config.filter_subjects or [config.filter_subject]) != subjects:
                return False  # the durable's name is in use by another binding already
            await js.delete_consumer(stream, durable)
        except nats.js.errors.NotFoundError:  # no such stream or consumer: nothing left behind
            return False
        return True

    async def _observe(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lag_interval_s)
            for consumer in list(self._running.values()):
                binding = consumer.binding
                try:
                    status = await self._status(binding, consuming=True)
                except Exception:
                    _log.exception("stream_lag_failed", scene=binding.scene, binding=binding.name)
                    continue
                if status.error:
                    continue
                self.pending.labels(*binding.key).set(status.pending)
                self.ack_pending.labels(*binding.key).set(status.ack_pending)
                self.oldest_age.labels(*binding.key).set(status.oldest_pending_age_s)

    # -- NATS --------------------------------------------------------------------------------

    async def _jetstream(self) -> Any:
        async with self._connecting:
            if self._nc is not None and self._nc.is_closed:
                self._nc = self._js = self._publisher = None
            if self._js is None:
                nc = await connect(self.url, "biz-center-stream-results", self.settings.connect_timeout_s)
                self._nc, self._js = nc, nc.jetstream(timeout=self.settings.request_timeout_s)
                self._publisher = StoredPublisher(nc)
            return self._js

    async def publish(self, subject: str, data: bytes, headers: Mapping[str, str]) -> None:
        """Publish to JetStream; returns once the message is stored (raises otherwise)."""
        js = await self._jetstream()
        await js.publish(subject, data, timeout=self.settings.request_timeout_s, headers=dict(headers))

    async def publish_all(self, messages: Sequence[tuple[str, bytes, dict[str, str]]]) -> list[str | None]:
        """Publish ``messages`` (subject, data, headers) all in flight at once; per message None once
        JetStream stored it, else why not (within ``request_timeout_s`` for them all)."""
        try:
            await self._jetstream()
            publisher = self._publisher
            if publisher is None:  # stopped meanwhile
                raise ConnectionError("the stream bindings stopped")
            return await publisher.publish_all(messages, self.settings.request_timeout_s)
        except (nats.errors.Error, TimeoutError, ConnectionError) as exc:
            return [str(exc) or type(exc).__name__] * len(messages)

    async def ensure_outputs(self, binding: CompiledBinding) -> None:
        """Make sure a stream holds the binding's output and dead-letter subjects (``<stream>_RESULTS``
        is created, or extended, when none does)."""
        async with self._ensuring:  # one binding's first batches may ask at once
            await self._ensure_outputs(binding)

    async def _ensure_outputs(self, binding: CompiledBinding) -> None:
        js = await self._jetstream()
        for subject in (binding.output_subject, binding.dead_letter_subject):
            if (binding.stream, subject) in self._ensured:
                continue
            try:
                await js.find_stream_name_by_subject(subject)
            except nats.js.errors.NotFoundError:
                name = f"{binding.stream}_RESULTS"
                try:
                    info = await js.stream_info(name)
                except nats.js.errors.NotFoundError:
                    await js.add_stream(
                        js_api.StreamConfig(
                            name=name,
                            subjects=[subject],
                            retention=js_api.RetentionPolicy.LIMITS,
                            storage=js_api.StorageType.FILE,
                            duplicate_window=OUTPUT_DUPLICATE_WINDOW_S,
                        )
                    )
                else:
                    config = info.config
                    config.subjects = [*(config.subjects or []), subject]
                    await js.update_stream(config)
                _log.info("stream_output_stream", stream=name, subject=subject)
            self._ensured.add((binding.stream, subject))

    # -- status and replay -------------------------------------------------------------------

    def bindings(self, scene: str = "") -> list[CompiledBinding]:
        """Every binding of the registry's scenes (enabled or not), by scene and name."""
        scenes = self.registry.snapshot.scenes
        return [b for name in sorted(scenes) if not scene or name == scene for b in scenes[name].bindings]

    async def statuses(self, scene: str = "") -> list[BindingStatus]:
        """Each binding with its live state (an unreachable NATS is named in ``error``)."""
        return [await self._status(b, consuming=b.key in self._running) for b in self.bindings(scene)]

    async def _status(self, binding: CompiledBinding, *, consuming: bool) -> BindingStatus:
        counts = self.counts(binding)
        mine = {
            "consumed": counts.consumed,
            "scored": counts.scored,
            "degraded": counts.degraded,
            "dead_lettered": counts.dead_lettered,
        }
        try:
            js = await self._jetstream()
            try:
                info = await js.consumer_info(binding.stream, binding.durable)
            except nats.js.errors.NotFoundError:
                return BindingStatus(binding, consuming, dead_letters=await self._dead_letters(js, binding), **mine)
            oldest = await self._oldest_age(js, binding, info)
            return BindingStatus(
                binding,
                consuming,
                pending=info.num_pending or 0,
                ack_pending=info.num_ack_pending or 0,
                redelivered=info.num_redelivered or 0,
                oldest_pending_age_s=oldest,
                dead_letters=await self._dead_letters(js, binding),
                **mine,
            )
        except (nats.errors.Error, TimeoutError, ConnectionError) as exc:
            return BindingStatus(binding, consuming, error=str(exc) or type(exc).__name__, **mine)

    @staticmethod
    async def _oldest_age(js: Any, binding: CompiledBinding, info: js_api.ConsumerInfo) -> float:
        if not (info.num_pending or info.num_ack_pending):
            return 0.0
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        oldest: datetime | None = None
        for subject in binding.subjects:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                found = await js.get_msg(binding.stream, seq=floor + 1, subject=subject, next=True)
                if found.time is not None and (oldest is None or found.time < oldest):
                    oldest = found.time
        if oldest is None:
            return 0.0
        return max(0.0, (datetime.now(UTC) - oldest).total_seconds())

    @staticmethod
    async def _dead_letters(js: Any, binding: CompiledBinding) -> int:
        try:
            stream = await js.find_stream_name_by_subject(binding.dead_letter_subject)
            info = await js.stream_info(stream, subjects_filter=binding.dead_letter_subject)
        except nats.js.errors.NotFoundError:
            return 0
        return int((info.state.subjects or {}).get(binding.dead_letter_subject, 0))

    async def replay_dead_letters(self, scene: str, name: str, limit: int = 0) -> int:
        """Publish the binding's dead letters to their input subject again (each with a new message id,
        ``<input id>~replay<dead-letter sequence>``), removing each from the dead-letter stream once
        republished; how many were replayed."""
        binding = next((b for b in self.bindings(scene) if b.name == name), None)
        if binding is None:
            raise NotFound(f"scene '{scene}' has no stream binding '{name}'")
        if not 0 <= limit <= MAX_REPLAY:
            raise InvalidArgument(f"limit: must be in [0, {MAX_REPLAY}], got {limit}")
        limit = limit or MAX_REPLAY
        js = await self._jetstream()
        try:
            stream = await js.find_stream_name_by_subject(binding.dead_letter_subject)
        except nats.js.errors.NotFoundError:
            return 0
        # only what is there now: a replayed message dead-lettered again is not replayed in the same call
        last = (await js.stream_info(stream)).state.last_seq
        config = js_api.ConsumerConfig(
            ack_policy=js_api.AckPolicy.EXPLICIT, deliver_policy=js_api.DeliverPolicy.ALL, inactive_threshold=30.0
        )
        subscription = await js.pull_subscribe(binding.dead_letter_subject, stream=stream, config=config)
        replayed = 0
        try:
            while replayed < limit:
                try:
                    wanted = min(256, limit - replayed)
                    messages = await subscription.fetch(wanted, timeout=self.settings.fetch_timeout_s)
                except TimeoutError:
                    break
                current = [m for m in messages if m.metadata.sequence.stream <= last]
                for msg in current:
                    replayed += await self._replay_one(js, stream, binding, msg)
                if len(current) < len(messages):
                    break
        finally:
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()
        _log.info("stream_dead_letters_replayed", scene=scene, binding=name, replayed=replayed)
        return replayed

    @staticmethod
    async def _replay_one(js: Any, stream: str, binding: CompiledBinding, msg: Msg) -> int:
        headers = msg.headers or {}
        source = headers.get(HEADER_SOURCE_SUBJECT)
        if headers.get(HEADER_SCENE) != binding.scene or headers.get(HEADER_BINDING) != binding.name or not source:
            return 0  # another binding's dead letter: left where it is
        kept = {k: v for k, v in headers.items() if k != MSG_ID and not k.startswith("Infermesh-")}
        kept[MSG_ID] = f"{headers.get(HEADER_INPUT_ID, '')}~replay{msg.metadata.sequence.stream}"
        await js.publish(source, msg.data, headers=kept)
        await js.delete_msg(stream, msg.metadata.sequence.stream)
        return 1
