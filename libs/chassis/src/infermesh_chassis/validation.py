"""Strict reading of what callers send, shared by every service: numbers, sizes and echoes.

- :func:`parse_uint` reads a version number or a page token: ASCII digits only (``str.isdigit``
  and ``int`` also take Unicode digits, signs and spaces), bounded to the field's range,
  INVALID_ARGUMENT with a bounded message otherwise.
- :func:`check_fields` refuses a request whose identifier fields (names, ids, versions, any
  singular string field, nested messages included) exceed :data:`MAX_IDENTIFIER_CHARS`, or
  :data:`MAX_FREE_TEXT_CHARS` for the free-text fields in :data:`FREE_TEXT_FIELDS`. The server
  interceptor applies it to every unary request; a streaming servicer applies it per item.
- :func:`check_request_id` bounds a request id (metadata ``x-request-id`` or a request field).
- :func:`shown` is what a message may echo of a caller's value; :func:`bound_message` cuts any
  status message to what gRPC metadata carries (the message travels in a header).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from infermesh_chassis.errors import InvalidArgument

__all__ = [
    "FREE_TEXT_FIELDS",
    "INT64_MAX",
    "MAX_FREE_TEXT_CHARS",
    "MAX_IDENTIFIER_CHARS",
    "MAX_MESSAGE_BYTES",
    "MAX_REQUEST_ID_CHARS",
    "bound_message",
    "check_fields",
    "check_request_id",
    "parse_uint",
    "shown",
]

INT64_MAX = 2**63 - 1
"""The largest value of a protobuf int64 (and of an SQLite integer)."""

MAX_IDENTIFIER_CHARS = 256
"""Longest name, id, alias or version string a request may carry."""

MAX_FREE_TEXT_CHARS = 4096
"""Longest free-text field (:data:`FREE_TEXT_FIELDS`) a request may carry."""

FREE_TEXT_FIELDS = frozenset({"reason", "description", "uri"})
"""Singular string fields that hold prose or locations rather than identifiers."""

MAX_REQUEST_ID_CHARS = 128
"""Longest request id; it travels in every downstream call's metadata."""

MAX_MESSAGE_BYTES = 1024
"""Longest status message, in UTF-8 bytes, before percent-encoding (at most 3 KiB on the wire,
far below gRPC's 16 KiB metadata limit, so an error can always reach the caller)."""

_SHOWN_CHARS = 64


def shown(value: str, limit: int = _SHOWN_CHARS) -> str:
    """``value`` quoted for a message, cut to ``limit`` characters with its full length named."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def bound_message(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """``message`` cut to ``limit`` UTF-8 bytes (on a character boundary), marked when cut."""
    encoded = message.encode()
    if len(encoded) <= limit:
        return message
    return encoded[:limit].decode(errors="ignore") + " ... (message truncated)"


def parse_uint(text: str, field: str, *, maximum: int = INT64_MAX, what: str = "") -> int:
    """``text`` as a whole number in ``[0, maximum]`` written in ASCII digits, or INVALID_ARGUMENT.

    ``what`` describes the expected value in the message (default: the number and its range).
    """
    if text and len(text) <= len(str(maximum)) and text.isascii() and text.isdigit():
        value = int(text)
        if value <= maximum:
            return value
    expected = what or f"a whole number written in ASCII digits, at most {maximum}"
    raise InvalidArgument(f"{field}: {shown(text)} is not {expected}")


def check_request_id(request_id: str, field: str) -> None:
    """INVALID_ARGUMENT unless ``request_id`` is 1..128 visible ASCII characters."""
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidArgument(f"{field}: {len(request_id)} characters; a request id has at most {MAX_REQUEST_ID_CHARS}")
    if not request_id or not request_id.isascii() or not request_id.isprintable() or " " in request_id:
        raise InvalidArgument(f"{field}: {shown(request_id)} is not a request id (visible ASCII characters)")


_Check = Callable[[Message, str], None]
_checks: dict[Descriptor, list[_Check]] = {}


def _field_checks(descriptor: Descriptor) -> list[_Check]:
    """The checks of one message type, built once per type (recursive types stop at the cycle)."""
    cached = _checks.get(descriptor)
    if cached is not None:
        return cached
    checks: list[_Check] = []
    _checks[descriptor] = checks  # a self-referencing type sees its own (growing) list
    for field in descriptor.fields:
        if _is_repeated(field):
            continue
        if field.type == FieldDescriptor.TYPE_STRING:
            limit = MAX_FREE_TEXT_CHARS if field.name in FREE_TEXT_FIELDS else MAX_IDENTIFIER_CHARS
            checks.append(_string_check(field.name, limit))
        elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.fields:
            checks.append(_message_check(field.name, field.message_type))
    return checks


def _is_repeated(field: FieldDescriptor) -> bool:
    repeated = getattr(field, "is_repeated", None)
    if repeated is not None:
        return bool(repeated)
    return field.label == FieldDescriptor.LABEL_REPEATED


def _string_check(name: str, limit: int) -> _Check:
    def check(message: Message, prefix: str) -> None:
        value: str = getattr(message, name)
        if len(value) > limit:
            raise InvalidArgument(f"{prefix}{name}: {len(value)} characters; at most {limit} are accepted")

    return check


def _message_check(name: str, descriptor: Descriptor) -> _Check:
    def check(message: Message, prefix: str) -> None:
        if message.HasField(name):
            inner: Message = getattr(message, name)
            for each in _field_checks(descriptor):
                each(inner, f"{prefix}{name}.")

    return check


def check_fields(message: Any) -> None:
    """Refuse oversize string fields of a request (see the module docstring); non-protobuf passes."""
    if not isinstance(message, Message):
        return
    for check in _field_checks(message.DESCRIPTOR):
        check(message, "")
