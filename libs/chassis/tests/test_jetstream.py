"""The chassis' JetStream fetch and batch publisher against a real nats-server (JetStream on disk).

``fetch`` waits for a first message until its timeout and never for a full batch; what it leaves in
the inbox is taken by the next call. ``StoredPublisher`` tells per message whether JetStream stored
it: a duplicate within the window counts as stored, a subject no stream takes does not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js import JetStreamContext
from nats.js import api as js_api

from infermesh_chassis.jetstream import StoredPublisher, fetch
from infermesh_chassis.testing import NatsServer

SAFETY_S = 30.0
"""A timeout no healthy wait comes near: when a call returns before it, it did not wait for it."""


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[tuple[Any, JetStreamContext]]:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream(timeout=10)
    await js.add_stream(js_api.StreamConfig(name="T", subjects=["t.>"], duplicate_window=60.0))
    yield nc, js
    await nc.close()


async def test_fetch_takes_what_is_there_and_waits_only_for_a_first_message(
    client: tuple[Any, JetStreamContext],
) -> None:
    _, js = client
    subscription = await js.pull_subscribe("t.in", durable="d", stream="T")
    assert await fetch(subscription, 10, 0.05) == []  # nothing there: [] once the timeout ran out

    for i in range(25):
        await js.publish("t.in", str(i).encode())
    seen: list[bytes] = []
    for wanted in (10, 10, 5):
        began = time.monotonic()
        messages = await fetch(subscription, 10, SAFETY_S)  # a partial batch does not wait for the rest
        assert time.monotonic() - began < SAFETY_S / 2
        assert len(messages) == wanted
        for message in messages:
            seen.append(message.data)
            await message.ack()
    assert seen == [str(i).encode() for i in range(25)]

    async def publish_later() -> None:
        await asyncio.sleep(0.05)
        await js.publish("t.in", b"late")

    later = asyncio.ensure_future(publish_later())
    messages = await fetch(subscription, 10, SAFETY_S)  # waits for the first, returns with it
    await later
    assert [m.data for m in messages] == [b"late"]
    await messages[0].ack_sync()
    info = await js.consumer_info("T", "d")
    assert info.num_pending == 0 and info.num_ack_pending == 0


async def test_stored_publisher_reports_each_message(client: tuple[Any, JetStreamContext]) -> None:
    nc, js = client
    publisher = StoredPublisher(nc)
    batch = [("t.out", f"r{i}".encode(), {"Nats-Msg-Id": f"id-{i}"}) for i in range(200)]
    assert await publisher.publish_all(batch, SAFETY_S) == [None] * 200
    # again: duplicates JetStream drops are stored all the same; a subject no stream takes is not
    again = [*batch[:3], ("elsewhere.out", b"x", {"Nats-Msg-Id": "lost"})]
    errors = await publisher.publish_all(again, SAFETY_S)
    assert errors[:3] == [None] * 3 and errors[3] == "no stream takes the subject"
    info = await js.stream_info("T")
    assert info.state.messages == 200
    assert await publisher.publish_all([], SAFETY_S) == []


async def test_stored_publisher_gives_up_on_answers_that_do_not_come(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        # a plain subscriber that never answers stands in for a JetStream that stores nothing
        await nc.subscribe("silent.>")
        errors = await StoredPublisher(nc).publish_all([("silent.a", b"x", {}), ("silent.b", b"y", {})], 0.05)
        assert errors == ["no acknowledgement from JetStream in time"] * 2
    finally:
        await nc.close()
