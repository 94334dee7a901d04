"""The protobuf wire format, as far as the inference pass-through needs it.

The data plane forwards a ``ModelInferRequest`` to Triton as the bytes the caller sent and returns
Triton's ``ModelInferResponse`` as the bytes Triton sent. What must change on the way is a string
field at the top of the message (the model's name and version): protobuf readers keep the last
value of a singular field they meet, so :func:`string_field` appended to the message readdresses
it without re-encoding the rest. :func:`raw_spans` finds where each ``raw_input_contents`` entry
lies in a serialized request, so validation reads the tensors' byte lengths without copying them.
"""

from __future__ import annotations

from infermesh_chassis.errors import InvalidArgument

__all__ = ["RAW_INPUT_CONTENTS", "raw_spans", "string_field", "varint"]

RAW_INPUT_CONTENTS = 7
"""``ModelInferRequest.raw_input_contents`` (repeated bytes)."""

_LENGTH_DELIMITED, _VARINT, _FIXED64, _FIXED32 = 2, 0, 1, 5


def varint(value: int) -> bytes:
    """``value`` (>= 0) as a base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def string_field(number: int, text: str) -> bytes:
    """Field ``number`` holding ``text``, encoded (tag, length, UTF-8 bytes)."""
    data = text.encode()
    return varint(number << 3 | _LENGTH_DELIMITED) + varint(len(data)) + data


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise InvalidArgument("the request is truncated (a varint runs past its end)")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def raw_spans(message: bytes, field: int = RAW_INPUT_CONTENTS) -> list[tuple[int, int]]:
    """``(offset, length)`` of every occurrence of the length-delimited top-level ``field`` in a
    serialized message, in order; only tags and lengths are read, never the contents."""
    spans: list[tuple[int, int]] = []
    pos, end = 0, len(message)
    while pos < end:
        key = message[pos]
        pos += 1
        if key & 0x80:
            key, pos = _read_varint(message, pos - 1)
        wire_type = key & 7
        if wire_type == _LENGTH_DELIMITED:
            length = message[pos] if pos < end else 0x80
            pos += 1
            if length & 0x80:
                length, pos = _read_varint(message, pos - 1)
            if key >> 3 == field:
                spans.append((pos, length))
            pos += length
        elif wire_type == _VARINT:
            _, pos = _read_varint(message, pos)
        elif wire_type == _FIXED64:
            pos += 8
        elif wire_type == _FIXED32:
            pos += 4
        else:
            raise InvalidArgument(f"the request holds a field of wire type {wire_type} (groups are not supported)")
    if pos != end:
        raise InvalidArgument("the request is truncated (its last field runs past its end)")
    return spans
