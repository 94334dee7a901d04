"""NATS JetStream plumbing shared by every service that publishes to or consumes from a stream.

- :func:`connect` opens a connection that reconnects by itself, or raises ConnectionError.
- :func:`ensure_stream` creates a stream or brings an existing one to the given configuration.
- :class:`DurableConsumer` keeps one durable pull consumer subscribed — connecting, ensuring the
  stream, binding the consumer, reconnecting with a growing backoff while NATS is away — and hands
  the fetched batches to the owner's ``consume`` coroutine, which acknowledges each message itself
  (:func:`ack_confirmed`, ``message.nak(delay=...)``). Every process that names the same durable
  shares it: JetStream hands each message to one of them.
- :func:`fetch` pulls one batch of a pull subscription (what ``DurableConsumer`` uses);
  :class:`StoredPublisher` publishes many messages at once and tells which JetStream stored.

Both speak the same JetStream protocol as nats-py's ``PullSubscription.fetch`` and
``JetStreamContext.publish_async`` without their cost per message (nats-py waits for each fetched
message with ``Subscription.next_msg``, two tasks and a uuid; ``publish_async`` takes a semaphore
through ``asyncio.wait_for``, one task): at thousands of messages a second that task churn was a
large share of a consumer's CPU. :func:`fetch` reads the pull subscription's inbox queue, as
nats-py's own fetch does (its ``_sub``, ``_nms`` and ``_deliver``: nats-py is pinned in uv.lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api as js_api

from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.retry import Backoff, retry
from infermesh_chassis.tasks import cancel_and_wait

__all__ = [
    "CONSUMER_GAUGES",
    "ConsumerSpec",
    "DurableConsumer",
    "StoredPublisher",
    "ack_confirmed",
    "connect",
    "ensure_stream",
    "fetch",
]

_log = get_logger("infermesh_chassis.jetstream")

CONSUMER_GAUGES = ("connected", "pending_messages")
"""The gauges of a :class:`DurableConsumer`, each named ``<metric_prefix>_<gauge>``."""


async def connect(urls: str, name: str, timeout_s: float) -> Client:
    """A connection to ``urls`` (comma-separated) that reconnects by itself, or ConnectionError within ``timeout_s``."""

    async def quiet(exc: Exception) -> None:
        _log.debug("nats_error", error=str(exc))

    try:
        return await asyncio.wait_for(
            nats.connect(
                [url.strip() for url in urls.split(",")],
                name=name,
                connect_timeout=max(1, round(timeout_s)),
                reconnect_time_wait=0.5,
                max_reconnect_attempts=-1,
                error_cb=quiet,
            ),
            timeout_s,
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise ConnectionError(f"NATS at {urls} is unreachable: {exc or type(exc).__name__}") from None


async def ensure_stream(js: Any, config: js_api.StreamConfig, *, update: bool = True) -> None:
    """Create the stream ``config`` names, or bring an existing one to ``config`` (idempotent); with
    ``update`` False an existing stream is left as it is (a stream someone else owns)."""
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:  # it exists with another configuration
        if update:
            await js.update_stream(config)


async def ack_confirmed(message: Msg, timeout_s: float = 5.0) -> bool:
    """Acknowledge ``message`` and wait for JetStream to confirm; False (logged) when it did not.

    An unconfirmed ack is only logged: the message comes back after the consumer's ack wait, so
    whoever acknowledges after doing the work must be able to do it twice.
    """
    try:
        await message.ack_sync(timeout=timeout_s)
    except (nats.errors.Error, TimeoutError) as exc:
        _log.info("jetstream_ack_failed", error=str(exc))
        return False
    return True


_STATUS = js_api.Header.STATUS
_NO_MESSAGES = js_api.StatusCode.NO_MESSAGES
_REQUEST_TIMEOUT = js_api.StatusCode.REQUEST_TIMEOUT
_CONFLICT = js_api.StatusCode.CONFLICT
_HEARTBEAT = "100"
_NO_RESPONDERS = "503"


async def fetch(subscription: Any, batch: int, timeout_s: float) -> list[Msg]:
    """Up to ``batch`` messages of the pull ``subscription`` (``[]`` when none came within ``timeout_s``).

    The protocol of nats-py's ``PullSubscription.fetch``: what the inbox already holds (left by an
    earlier request) first; then one ``no_wait`` pull request (waiting until ``timeout_s`` for a first
    message when nothing is in hand); it ends at ``batch`` messages or at the server's status that the
    request is over (no messages, timeout, conflict). Every message queued in the inbox is taken
    at once; the only wait (one timer) is while the inbox is empty. Raises ConnectionClosedError once
    the connection is closed, and nats-py's APIError for a status that is not a temporary one.
    """
    sub = subscription._sub
    queue: asyncio.Queue[Msg] = sub._pending_queue
    deadline = time.monotonic() + timeout_s
    messages: list[Msg] = []

    def taken(msg: Msg) -> str | None:
        """``msg`` out of the subscription's pending accounting; its status, else appended to ``messages``."""
        sub._pending_size -= len(msg.data)
        status = msg.headers.get(_STATUS) if msg.headers else None
        if not status:
            messages.append(msg)
        return status

    while not queue.empty():  # statuses here answered earlier requests
        taken(queue.get_nowait())
    if len(messages) >= batch:
        return messages
    # no_wait: the request ends once what is there is delivered; with expires (nothing in hand yet) the
    # server waits for the first message until then, and the request still ends after what is there
    request: dict[str, Any] = {"batch": batch - len(messages), "no_wait": True}
    if not messages:
        request["expires"] = max(1, int(timeout_s * 1e9) - 100_000)  # ends on the server before it does here
    await sub._conn.publish(subscription._nms, json.dumps(request).encode(), subscription._deliver)
    while len(messages) < batch:
        if queue.empty():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                msg = await asyncio.wait_for(queue.get(), remaining)
            except TimeoutError:
                break
        else:
            msg = queue.get_nowait()
        status = taken(msg)
        if status in (_NO_MESSAGES, _REQUEST_TIMEOUT, _CONFLICT):
            break
        if status and status != _HEARTBEAT:
            raise nats.js.errors.APIError.from_msg(msg)
    if not messages and sub._conn.is_closed:
        raise nats.errors.ConnectionClosedError
    return messages


class _Batch:
    """The publications of one :meth:`StoredPublisher.publish_all` waiting for JetStream's answers."""

    __slots__ = ("done", "errors", "left")

    def __init__(self, size: int, done: asyncio.Future[None]) -> None:
        self.errors: list[str | None] = ["no acknowledgement from JetStream in time"] * size
        self.left = size
        self.done = done


class StoredPublisher:
    """Publishes batches of messages to JetStream on connection ``nc``, all in flight at once, and
    tells which of them JetStream stored (see the module docstring).

    One subscription (a wildcard under a fresh inbox, made at the first use) receives every
    publication's answer; each names its batch and position through the reply subject.
    """

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = ""
        self._subscribing = asyncio.Lock()
        self._waiting: dict[str, tuple[_Batch, int]] = {}
        self._sequence = 0

    async def _inbox(self) -> str:
        async with self._subscribing:
            if not self._prefix:
                prefix = f"{self._nc.new_inbox()}."
                await self._nc.subscribe(f"{prefix}*", cb=self._answered)
                self._prefix = prefix
        return self._prefix

    async def _answered(self, msg: Msg) -> None:
        waiting = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if waiting is None:  # too late: its batch gave up on it
            return
        batch, index = waiting
        batch.errors[index] = self._error(msg)
        batch.left -= 1
        if batch.left == 0 and not batch.done.done():
            batch.done.set_result(None)

    @staticmethod
    def _error(msg: Msg) -> str | None:
        """None when JetStream stored the message (a duplicate it dropped included), else why not."""
        if msg.headers and msg.headers.get(_STATUS) == _NO_RESPONDERS:
            return "no stream takes the subject"
        try:
            answer = json.loads(msg.data)
        except ValueError:
            return "an unreadable acknowledgement"
        error = answer.get("error") if isinstance(answer, dict) else "an unreadable acknowledgement"
        if error:
            return str(error.get("description") or error) if isinstance(error, dict) else str(error)
        return None

    async def publish_all(
        self, messages: Sequence[tuple[str, bytes, dict[str, str]]], timeout_s: float
    ) -> list[str | None]:
        """Publish ``messages`` (subject, data, headers); per message None once JetStream stored it, else
        why not (all within ``timeout_s``). A connection error raises before anything is awaited."""
        if not messages:
            return []
        prefix = await self._inbox()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        batch = _Batch(len(messages), done)
        tokens = []
        try:
            for index, (subject, data, headers) in enumerate(messages):
                self._sequence += 1
                token = str(self._sequence)
                tokens.append(token)
                self._waiting[token] = (batch, index)
                await self._nc.publish(subject, data, reply=prefix + token, headers=headers)
            await asyncio.wait_for(asyncio.shield(done), timeout_s)
        except TimeoutError:
            pass
        finally:
            for token in tokens:
                self._waiting.pop(token, None)
        return batch.errors


_UNREACHABLE = (ConnectionError, nats.errors.Error, OSError, TimeoutError)
"""What connecting and subscribing raise while NATS cannot be reached (retried with a backoff)."""


class _Stopped(Exception):
    """The consumer stopped while it waited to connect again."""


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """Where a :class:`DurableConsumer` reads: the server, the stream (created when missing), the durable."""

    url: str
    """NATS server(s), comma-separated."""
    stream: js_api.StreamConfig
    """The stream, ensured at every (re)connection."""
    durable: str
    """The durable consumer's name, shared by every process that consumes the same way."""
    subjects: Sequence[str]
    """Subjects of the stream the consumer takes (its filter)."""
    ack_wait_s: float
    """A message not acknowledged within this is delivered again."""
    max_ack_pending: int
    """Messages delivered and not yet acknowledged, at most (across every process sharing the durable)."""
    fetch_batch: int
    """Messages pulled per fetch."""
    fetch_timeout_s: float
    """Longest a fetch waits for messages."""
    connect_timeout_s: float
    """How long a connection attempt may take."""
    request_timeout_s: float
    """Deadline of JetStream API calls (stream and consumer management)."""
    update_stream: bool = True
    """Bring an existing stream to ``stream``; False uses it as it is (only a missing one is created)."""
    update_consumer: bool = False
    """Bring an existing durable consumer to :meth:`consumer_config` at every (re)connection (its
    editable fields: ack wait, max ack pending, filter); False binds it as it is."""

    def consumer_config(self) -> js_api.ConsumerConfig:
        """The durable consumer: explicit acks, every message of the stream from the first one."""
        one = len(self.subjects) == 1
        return js_api.ConsumerConfig(
            durable_name=self.durable,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            deliver_policy=js_api.DeliverPolicy.ALL,
            ack_wait=self.ack_wait_s,
            max_ack_pending=self.max_ack_pending,
            filter_subject=self.subjects[0] if one else None,
            filter_subjects=None if one else list(self.subjects),
        )


Batches = AsyncIterator[list[Msg]]
"""The fetched messages, one non-empty batch at a time, until the consumer stops or the connection closes."""


class DurableConsumer:
    """Keeps a durable pull consumer subscribed and hands its batches to ``consume`` (see the module docstring).

    ``consume`` gets the batches of one subscription and returns when they end; it is called again
    after every reconnection. ``metric_prefix`` names two gauges: ``<prefix>_connected`` and
    ``<prefix>_pending_messages``; several consumers of one service pass ``gauges`` instead, the
    children (connected, pending) of labelled gauges their owner registered once.
    """

    def __init__(
        self,
        spec: ConsumerSpec,
        name: str,
        consume: Callable[[Batches], Awaitable[None]],
        metrics: Metrics,
        metric_prefix: str,
        *,
        gauges: tuple[Any, Any] | None = None,
    ) -> None:
        self._spec = spec
        self._name = name
        self._consume = consume
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._nc: Client | None = None
        if gauges is not None:
            self._connected, self._pending = gauges
            return
        connected, pending = CONSUMER_GAUGES
        self._connected = metrics.gauge(
            f"{metric_prefix}_{connected}", "1 while the consumer is connected to NATS.", multiprocess_mode="livemin"
        )
        self._pending = metrics.gauge(  # every worker reads the same durable consumer's figure
            f"{metric_prefix}_{pending}",
            "Messages in the stream not yet delivered to the consumer.",
            multiprocess_mode="livemax",
        )

    def start(self) -> None:
        """Connect and consume in the background (needs a running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Stop fetching, let ``consume`` finish the batch in hand (within ``timeout_s``), then disconnect."""
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                await cancel_and_wait(self._task)
            self._task = None
        await self._close()

    async def _subscribe(self) -> Any:
        spec = self._spec
        self._nc = await connect(spec.url, self._name, spec.connect_timeout_s)
        js = self._nc.jetstream(timeout=spec.request_timeout_s)
        await ensure_stream(js, spec.stream, update=spec.update_stream)
        if spec.update_consumer:
            await js.add_consumer(spec.stream.name, spec.consumer_config())
        return await js.pull_subscribe(
            spec.subjects[0], durable=spec.durable, stream=spec.stream.name, config=spec.consumer_config()
        )

    async def _connect(self) -> Any:
        """:meth:`_subscribe`, closing what it opened when NATS cannot be reached."""
        try:
            return await self._subscribe()
        except _UNREACHABLE:
            await self._close()
            raise

    def _unreachable(self, exc: Exception, delay_s: float) -> None:
        _log.warning("jetstream_unreachable", consumer=self._name, error=str(exc), retry_in_s=delay_s)

    async def _pause(self, delay_s: float) -> None:
        """Wait ``delay_s`` before connecting again; raise :class:`_Stopped` as soon as the consumer stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay_s)
        if self._stopping.is_set():
            raise _Stopped

    async def _run(self) -> None:
        backoff = Backoff(0.5, 5.0)
        while not self._stopping.is_set():
            try:
                subscription = await retry(
                    self._connect,
                    backoff,
                    retry_on=lambda exc: isinstance(exc, _UNREACHABLE),
                    on_failure=self._unreachable,
                    sleep=self._pause,
                )
            except _Stopped:
                return
            backoff.reset()
            self._connected.set(1)
            _log.info(
                "jetstream_consuming", consumer=self._name, stream=self._spec.stream.name, durable=self._spec.durable
            )
            try:
                await self._consume(self._batches(subscription))
            finally:
                self._connected.set(0)
                await self._close()

    async def _batches(self, subscription: Any) -> Batches:
        polls = 0
        while not self._stopping.is_set():
            try:
                messages = await fetch(subscription, self._spec.fetch_batch, self._spec.fetch_timeout_s)
            except nats.errors.ConnectionClosedError:
                return
            except nats.errors.Error as exc:
                _log.info("jetstream_fetch_failed", consumer=self._name, error=str(exc))
                await asyncio.sleep(0.2)
                continue
            polls += 1
            if polls % 20 == 1:
                await self._observe(subscription)
            if messages:
                yield messages

    async def _observe(self, subscription: Any) -> None:
        # bounded like a fetch: while NATS is away this must not hold up a stop for a whole API timeout
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            info = await asyncio.wait_for(subscription.consumer_info(), self._spec.fetch_timeout_s)
            self._pending.set(info.num_pending)

    async def _close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()
