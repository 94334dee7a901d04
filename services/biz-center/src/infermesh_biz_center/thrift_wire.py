"""One Thrift connection read under bounds: no request may cost more memory, CPU or time than its limits.

thriftpy2's own server reads what a peer declares: a 2 GB string is buffered for as long as bytes
keep coming, a list of 2^31 elements of an unknown type spins the event loop without reading a
byte, and a peer that stops half-way holds its connection forever. Here a request is first walked
(:func:`read_message`): every declared length and container size is checked against the limits
before anything is read, unknown types are refused, nesting is bounded, and the bytes must arrive
within the request timeout. Only the walked bytes, known to be one well-formed binary-protocol
message, are then decoded by thriftpy2 (:class:`MemoryTransport`).
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from io import BytesIO

from thriftpy2.protocol.binary import VERSION_1, VERSION_MASK
from thriftpy2.thrift import TType

__all__ = ["Limits", "MemoryTransport", "Refused", "Stream", "read_message"]

_FIXED = {TType.BOOL: 1, TType.BYTE: 1, TType.I16: 2, TType.I32: 4, TType.I64: 8, TType.DOUBLE: 8}
_TYPES = frozenset({*_FIXED, TType.STRING, TType.STRUCT, TType.MAP, TType.SET, TType.LIST})
_MAX_DEPTH = 32
_MAX_NAME_BYTES = 256
_CHUNK = 64 * 1024
_READS_PER_TURN = 2048
"""Reads of buffered bytes between two yields to the event loop: a big request of many small values
is read and decoded in slices, with gRPC callers served in between."""


class Refused(Exception):
    """The peer broke a limit or the protocol; ``reason`` is a metric label, the message says what."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Limits:
    """What one connection may cost (see ``ThriftSettings``)."""

    max_message_bytes: int
    max_string_bytes: int
    idle_timeout_s: float
    request_timeout_s: float


class Stream:
    """The bytes of one connection: reads bounded by the current request, writes bounded in time."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limits: Limits, *, framed: bool
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._limits = limits
        self._framed = framed
        self._buf = bytearray()
        self._pos = 0
        self._end = 0
        self._deadline = 0.0
        self._reads = 0

    async def next_request(self) -> None:
        """Wait (at most the idle timeout) for the first byte of the next request and start it: its
        bytes count from here, and the rest must arrive within the request timeout. A framed request's
        size is read and checked here. Raises EOFError when the peer closed between requests."""
        del self._buf[: self._pos]
        self._pos = 0
        loop = asyncio.get_running_loop()
        if not self._buf:
            self._deadline = loop.time() + self._limits.idle_timeout_s
            try:
                await self._fill("idle")
            except Refused as exc:
                if exc.reason == "closed":
                    raise EOFError from None
                raise
        self._deadline = loop.time() + self._limits.request_timeout_s
        self._end = self._limits.max_message_bytes
        if self._framed:
            (size,) = struct.unpack("!i", await self.read(4))
            if not 0 < size <= self._limits.max_message_bytes:
                raise Refused("too_large", f"frame of {size} bytes (at most {self._limits.max_message_bytes})")
            del self._buf[:4]
            self._pos = 0
            self._end = size

    async def _fill(self, slow: str) -> None:
        try:
            async with asyncio.timeout_at(self._deadline):
                chunk = await self._reader.read(_CHUNK)
        except TimeoutError:
            raise Refused(slow, "the peer sent nothing in time") from None
        if not chunk:
            raise Refused("closed", "the peer closed the connection")
        self._buf += chunk

    async def read(self, size: int) -> bytes:
        """The next ``size`` bytes of the current request."""
        if size < 0:
            raise Refused("malformed", f"negative length {size}")
        end = self._pos + size
        if end > self._end:
            raise Refused("too_large", f"request exceeds {self._end} bytes")
        if len(self._buf) < end:
            while len(self._buf) < end:
                await self._fill("slow")
        else:
            self._reads += 1
            if self._reads % _READS_PER_TURN == 0:
                await asyncio.sleep(0)
        data = bytes(self._buf[self._pos : end])
        self._pos = end
        return data

    def request_bytes(self) -> bytes:
        """The bytes of the current request, which must fill its frame when framed."""
        if self._framed and self._pos != self._end:
            raise Refused("malformed", f"a frame of {self._end} bytes holds a message of {self._pos}")
        return bytes(self._buf[: self._pos])

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the peer."""
        self._writer.write(data)

    async def flush(self) -> None:
        """Wait until the peer takes what was written (at most the request timeout)."""
        try:
            async with asyncio.timeout(self._limits.request_timeout_s):
                await self._writer.drain()
        except TimeoutError:
            raise Refused("slow", "the peer did not take its answer in time") from None

    def close(self) -> None:
        """Close the connection."""
        self._writer.close()


def _i32(data: bytes) -> int:
    return int(struct.unpack("!i", data)[0])


async def _walk(stream: Stream, limits: Limits, ttype: int, depth: int) -> None:
    """Read one value of ``ttype``, checking every declared size before reading what it declares."""
    if ttype in _FIXED:
        await stream.read(_FIXED[ttype])
        return
    if ttype == TType.STRING:
        size = _i32(await stream.read(4))
        if size > limits.max_string_bytes:
            raise Refused("too_large", f"string of {size} bytes (at most {limits.max_string_bytes})")
        await stream.read(size)
        return
    if ttype not in _TYPES:
        raise Refused("malformed", f"unknown type {ttype}")
    if depth == 0:
        raise Refused("malformed", f"values nested deeper than {_MAX_DEPTH}")
    if ttype == TType.STRUCT:
        while (field_type := (await stream.read(1))[0]) != TType.STOP:
            await stream.read(2)
            await _walk(stream, limits, field_type, depth - 1)
        return
    header = await stream.read(6 if ttype == TType.MAP else 5)
    types = (header[0], header[1]) if ttype == TType.MAP else (header[0],)
    size = _i32(header[-4:])
    for element in types:
        if element not in _TYPES:
            raise Refused("malformed", f"container of unknown type {element}")
    if size < 0 or size > limits.max_message_bytes:  # every element takes at least one byte
        raise Refused("too_large" if size > 0 else "malformed", f"container of {size} elements")
    if all(element in _FIXED for element in types):
        await stream.read(size * sum(_FIXED[element] for element in types))
        return
    for _ in range(size):
        for element in types:
            await _walk(stream, limits, element, depth - 1)


async def read_message(stream: Stream, limits: Limits) -> bytes:
    """The bytes of one strict binary-protocol message (header and arguments), walked under ``limits``."""
    version = _i32(await stream.read(4))
    if version >= 0 or version & VERSION_MASK != VERSION_1:
        raise Refused("malformed", "not a strict binary-protocol message")
    name_size = _i32(await stream.read(4))
    if not 0 < name_size <= _MAX_NAME_BYTES:
        raise Refused("malformed", f"method name of {name_size} bytes (at most {_MAX_NAME_BYTES})")
    await stream.read(name_size)
    await stream.read(4)  # the sequence id
    await _walk(stream, limits, TType.STRUCT, _MAX_DEPTH)
    return stream.request_bytes()


class MemoryTransport:
    """An async thriftpy2 transport over one request's bytes, already read and checked."""

    def __init__(self, data: bytes) -> None:
        self._data = BytesIO(data)
        self._reads = 0

    async def read(self, size: int) -> bytes:
        """The next ``size`` bytes (yielding to the event loop now and then, see ``_READS_PER_TURN``)."""
        self._reads += 1
        if self._reads % _READS_PER_TURN == 0:
            await asyncio.sleep(0)
        return self._data.read(size)
