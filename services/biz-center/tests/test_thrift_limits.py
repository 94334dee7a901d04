"""The Thrift front under hostile peers, spoken to over raw sockets: what a request declares is
checked before it is read, idle and slow connections are dropped after their timeouts, open
connections are capped, and gRPC callers are answered meanwhile. Normal calls, buffered and framed,
still work."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

from bizcenter_support import SCORING_KEY, Doubles, Harness, biz_settings, churn_request, run_biz, scoring
from thriftpy2.contrib.aio.protocol.binary import TAsyncBinaryProtocol
from thriftpy2.contrib.aio.rpc import make_client
from thriftpy2.contrib.aio.transport.framed import TAsyncFramedTransportFactory
from thriftpy2.protocol.binary import VERSION_1
from thriftpy2.thrift import TMessageType, TType

from infermesh_biz_center.thrift_front import IDL
from infermesh_biz_center.thrift_wire import Limits, MemoryTransport, Stream, read_message

MiB = 1024 * 1024
GIVE_UP_S = 10.0
"""Only a safety net against a hung test: every wait below ends on an event well before it."""


def _header(method: str = "predict") -> bytes:
    name = method.encode()
    return struct.pack("!iI", VERSION_1 | TMessageType.CALL, len(name)) + name + struct.pack("!i", 1)


def _field(ttype: int, fid: int) -> bytes:
    return struct.pack("!bh", ttype, fid)


def _string(text: bytes) -> bytes:
    return struct.pack("!i", len(text)) + text


def _predict(scene: bytes = b"churn-score", unit: bytes = b"1") -> bytes:
    """A whole predict call with the scoring key, in the binary protocol."""
    request = _field(TType.STRING, 1) + _string(scene) + _field(TType.STRING, 2) + _string(unit) + b"\x00"
    options = _field(TType.STRING, 1) + _string(SCORING_KEY.encode()) + b"\x00"
    return _header() + _field(TType.STRUCT, 1) + request + _field(TType.STRUCT, 2) + options + b"\x00"


@asynccontextmanager
async def _biz(tmp_path: Path, doubles: Doubles, **thrift: Any) -> AsyncIterator[Harness]:
    async with run_biz(biz_settings(tmp_path, doubles.static(), thrift=thrift)) as harness:
        yield harness


async def _connect(biz: Harness) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert biz.biz.thrift is not None
    return await asyncio.open_connection("127.0.0.1", biz.biz.thrift.port)


async def _closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sent until it closed the connection."""
    received = b""
    async with asyncio.timeout(GIVE_UP_S):
        try:
            while chunk := await reader.read(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return received


async def _until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` (checked on every turn of the loop's clock), at most GIVE_UP_S."""
    async with asyncio.timeout(GIVE_UP_S):
        while True:
            if condition():
                return
            await asyncio.sleep(0.005)


async def test_a_declared_2gb_string_closes_the_connection_before_it_is_read(tmp_path: Path, doubles: Doubles):
    async with _biz(tmp_path, doubles, max_string_bytes=4096) as biz:
        reader, writer = await _connect(biz)
        # the scene's length says 2 GB; not one byte of it is sent, so only the declaration can close it
        writer.write(_header() + _field(TType.STRUCT, 1) + _field(TType.STRING, 1) + struct.pack("!i", 2**31 - 1))
        assert await _closed_by_server(reader) == b""
        writer.close()
        # a string just over the limit is refused the same way, one at the limit is read
        reader, writer = await _connect(biz)
        writer.write(_header() + _field(TType.STRUCT, 1) + _field(TType.STRING, 1) + struct.pack("!i", 4097))
        assert await _closed_by_server(reader) == b""
        writer.close()
        answer = await biz.predict.Predict(churn_request(1), metadata=scoring())
        assert answer.prediction.scores


async def test_oversize_messages_frames_and_containers_are_refused_before_reading(tmp_path: Path, doubles: Doubles):
    async with _biz(tmp_path, doubles, max_message_bytes=64 * 1024) as biz:
        cases = {
            # many small strings, each within its limit, adding up past the message limit
            "message": _header()
            + _field(TType.STRUCT, 1)
            + _field(TType.MAP, 4)
            + struct.pack("!bbi", TType.STRING, TType.STRING, 10_000)
            + (_string(b"k" * 100) + _string(b"v" * 100)) * 400,
            # 2^31 elements of an unknown type: read naively, the loop spins without reading a byte
            "unknown type": _header()
            + _field(TType.STRUCT, 1)
            + _field(TType.LIST, 9)
            + struct.pack("!bi", 99, 2**31 - 1),
            "huge list": _header()
            + _field(TType.STRUCT, 1)
            + _field(TType.LIST, 9)
            + struct.pack("!bi", TType.I64, 2**30),
            "long method name": _header("p" * 300),
            "negative length": _header() + _field(TType.STRUCT, 1) + _field(TType.STRING, 1) + struct.pack("!i", -5),
            "not thrift": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        }
        for what, data in cases.items():
            reader, writer = await _connect(biz)
            writer.write(data)
            assert await _closed_by_server(reader) == b"", what
            writer.close()
        await _until(lambda: biz.biz.thrift is not None and biz.biz.thrift.connections == 0)
    async with _biz(tmp_path, doubles, transport="framed", max_message_bytes=64 * 1024) as biz:
        reader, writer = await _connect(biz)
        writer.write(struct.pack("!i", 2**31 - 1) + _header())  # a 2 GB frame
        assert await _closed_by_server(reader) == b""
        writer.close()


async def test_idle_and_slow_connections_are_dropped_after_their_timeouts(tmp_path: Path, doubles: Doubles):
    async with _biz(tmp_path, doubles, idle_timeout_s=0.3, request_timeout_s=0.3) as biz:
        assert biz.biz.thrift is not None
        idle = await _connect(biz)  # half-open: connects, never sends
        truncated = await _connect(biz)
        truncated[1].write(_predict()[:25])  # a request cut short
        dripping = await _connect(biz)
        await _until(lambda: biz.biz.thrift is not None and biz.biz.thrift.connections == 3)

        async def drip() -> None:  # one byte at a time, each well within the idle timeout
            for byte in _predict():
                dripping[1].write(bytes([byte]))
                await asyncio.sleep(0.05)

        dripper = asyncio.ensure_future(drip())
        # meanwhile the event loop serves gRPC callers
        assert (await biz.predict.Predict(churn_request(2), metadata=scoring())).prediction.scores
        for reader, writer in (idle, truncated, dripping):
            assert await _closed_by_server(reader) == b""
            writer.close()
        dripper.cancel()
        await _until(lambda: biz.biz.thrift is not None and biz.biz.thrift.connections == 0)
        # a connection that keeps calling is not idle
        client = await make_client(IDL.BizCenter, "127.0.0.1", biz.biz.thrift.port, timeout=5000)
        try:
            for unit in ("1", "2", "3"):
                options = IDL.CallOptions(api_key=SCORING_KEY)
                assert (await client.predict(IDL.PredictRequest(scene="churn-score", unit_id=unit), options)).scores
        finally:
            client.close()


async def test_open_connections_are_capped(tmp_path: Path, doubles: Doubles):
    async with _biz(tmp_path, doubles, max_connections=3) as biz:
        assert biz.biz.thrift is not None
        held = [await _connect(biz) for _ in range(3)]
        await _until(lambda: biz.biz.thrift is not None and biz.biz.thrift.connections == 3)
        reader, writer = await _connect(biz)
        assert await _closed_by_server(reader) == b""  # one more is closed at once
        writer.close()
        # the held connections still work
        held[0][1].write(_predict())
        answer = await asyncio.wait_for(held[0][0].read(65536), GIVE_UP_S)
        assert answer[:4] == struct.pack("!i", VERSION_1 | TMessageType.REPLY)
        held[1][1].close()
        await _until(lambda: biz.biz.thrift is not None and biz.biz.thrift.connections == 2)
        client = await make_client(IDL.BizCenter, "127.0.0.1", biz.biz.thrift.port, timeout=5000)
        try:
            options = IDL.CallOptions(api_key=SCORING_KEY)
            assert (await client.predict(IDL.PredictRequest(scene="churn-score", unit_id="4"), options)).scores
        finally:
            client.close()
        for _, held_writer in held:
            held_writer.close()


async def test_framed_transport_calls_and_pipelined_buffered_calls(tmp_path: Path, doubles: Doubles):
    async with _biz(tmp_path, doubles, transport="framed") as biz:
        assert biz.biz.thrift is not None
        client = await make_client(
            IDL.BizCenter,
            "127.0.0.1",
            biz.biz.thrift.port,
            timeout=5000,
            trans_factory=TAsyncFramedTransportFactory(),
        )
        try:
            options = IDL.CallOptions(api_key=SCORING_KEY)
            for unit in ("1", "2"):
                assert (await client.predict(IDL.PredictRequest(scene="churn-score", unit_id=unit), options)).scores
        finally:
            client.close()
    async with _biz(tmp_path, doubles) as biz:
        reader, writer = await _connect(biz)
        writer.write(_predict(unit=b"1") + _predict(unit=b"2"))  # two calls in one write
        writer.write_eof()
        replies = await _closed_by_server(reader)
        assert replies.count(struct.pack("!i", VERSION_1 | TMessageType.REPLY)) == 2
        writer.close()


async def test_a_big_request_is_read_and_decoded_in_slices():
    """A request of many small values (the costliest kind per byte) gives the event loop back as it is read
    and decoded, so gRPC callers are served meanwhile: counted in turns of the loop, not in seconds."""
    entries = 50_000
    request = (
        _field(TType.MAP, 4)
        + struct.pack("!bbi", TType.STRING, TType.STRING, entries)
        + (_string(b"k") + _string(b"v")) * entries
        + b"\x00"
    )
    data = _header() + _field(TType.STRUCT, 1) + request + b"\x00"
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    limits = Limits(max_message_bytes=4 * MiB, max_string_bytes=MiB, idle_timeout_s=60, request_timeout_s=60)
    stream = Stream(reader, cast(asyncio.StreamWriter, None), limits, framed=False)
    turns, done = 0, False

    async def other_callers() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    others = asyncio.ensure_future(other_callers())
    await stream.next_request()
    message = await read_message(stream, limits)
    read_turns = turns
    protocol = TAsyncBinaryProtocol(MemoryTransport(message), strict_decode=True)
    await protocol.read_message_begin()
    args = IDL.BizCenter.predict_args()
    await protocol.read_struct(args)
    done = True
    await others
    assert message == data and len(args.request.attributes) == 1  # equal keys: one entry
    reads = 4 * entries  # a length and a value per key and per value
    assert read_turns >= reads // 2048 - 1  # the walk yielded every 2048 reads
    assert turns - read_turns >= reads // 2048 - 1  # and so did the decoding
