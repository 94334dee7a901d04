"""Data types of fields, keys and features, and the one normalization of raw values.

Every value a source returns, a caller sends or a push carries is normalized here to its
canonical Python form before any transform sees it, in both executors:

- floating point (``FP16``/``FP32``/``FP64``): a finite ``float``; NaN and infinities are missing;
- integers (``INT8``..``INT64``, ``UINT8``..``UINT64``): an ``int`` within the type's range;
- ``BOOL``: a ``bool``;
- ``STRING`` (``BYTES`` on the wire): a ``str``;
- ``TIMESTAMP``: an ``int`` of microseconds since the Unix epoch, UTC.

``None`` is missing everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

__all__ = [
    "FEATURE_DTYPES",
    "FIELD_DTYPES",
    "INT_RANGES",
    "KEY_DTYPES",
    "DType",
    "coerce",
    "datetime_to_micros",
    "micros_to_datetime",
    "parse_duration",
]

INT_RANGES: dict[str, tuple[int, int]] = {
    "INT8": (-(2**7), 2**7 - 1),
    "INT16": (-(2**15), 2**15 - 1),
    "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1),
    "UINT8": (0, 2**8 - 1),
    "UINT16": (0, 2**16 - 1),
    "UINT32": (0, 2**32 - 1),
    "UINT64": (0, 2**63 - 1),  # carried as int64 on the wire
}
"""Inclusive bounds of every integer type."""

FLOAT_DTYPES = frozenset({"FP16", "FP32", "FP64"})
FIELD_DTYPES = frozenset({*FLOAT_DTYPES, *INT_RANGES, "BOOL", "STRING", "TIMESTAMP"})
"""Types a feature view's field may have."""
FEATURE_DTYPES = frozenset({*FLOAT_DTYPES, *INT_RANGES, "BOOL", "BYTES"})
"""KServe v2 types a feature of a feature service (a model input) may have."""
KEY_DTYPES = frozenset({"INT64", "STRING"})
"""Types an entity key may have."""

_ALIASES = {"BYTES": "STRING", "STR": "STRING", "FLOAT": "FP64", "DOUBLE": "FP64", "INT": "INT64"}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class DType:
    """A field type, normalized (``BYTES`` is read as ``STRING`` for fields and keys)."""

    name: str

    @classmethod
    def field(cls, text: str) -> DType:
        """The field type named ``text``; ValueError naming the allowed ones otherwise."""
        name = _ALIASES.get(text.upper(), text.upper())
        if name not in FIELD_DTYPES:
            raise ValueError(f"unknown dtype {text!r}; expected one of {', '.join(sorted(FIELD_DTYPES))}")
        return cls(name)

    @property
    def is_float(self) -> bool:
        """FP16, FP32 or FP64."""
        return self.name in FLOAT_DTYPES

    @property
    def is_int(self) -> bool:
        """A signed or unsigned integer type."""
        return self.name in INT_RANGES


def datetime_to_micros(value: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is read as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def micros_to_datetime(micros: int) -> datetime:
    """The UTC datetime of ``micros`` since the epoch."""
    return datetime.fromtimestamp(micros // 1_000_000, UTC).replace(microsecond=micros % 1_000_000)


_MIN_US = -62_135_596_800_000_000  # 0001-01-01
_MAX_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999


def _timestamp(value: Any) -> int:
    micros = _timestamp_unchecked(value)
    if not _MIN_US <= micros <= _MAX_US:
        raise ValueError(f"timestamp {value!r} is outside years 1-9999")
    return micros


def _timestamp_unchecked(value: Any) -> int:
    if isinstance(value, datetime):
        return datetime_to_micros(value)
    if isinstance(value, date):
        return datetime_to_micros(datetime(value.year, value.month, value.day, tzinfo=UTC))
    if isinstance(value, str):
        text = value.strip()
        try:
            return datetime_to_micros(datetime.fromisoformat(text.replace("Z", "+00:00")))
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO-8601 timestamp") from None
    if hasattr(value, "to_pydatetime"):  # pandas.Timestamp
        return datetime_to_micros(value.to_pydatetime())
    if isinstance(value, bool):
        raise ValueError("a boolean is not a timestamp")
    if isinstance(value, int):
        return value * 1_000_000
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("a timestamp must be finite")
        return round(value * 1_000_000)
    raise ValueError(f"{type(value).__name__} is not a timestamp (ISO-8601 text or epoch seconds)")


def _integer(value: Any, dtype: str) -> int:
    if isinstance(value, bool):
        number = int(value)
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float | Decimal):
        if not math.isfinite(value) or value != int(value):
            raise ValueError(f"{value!r} is not an integer")
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            raise ValueError(f"{value!r} is not an integer") from None
    elif hasattr(value, "item"):  # numpy scalar
        return _integer(value.item(), dtype)
    else:
        raise ValueError(f"{type(value).__name__} is not an integer")
    low, high = INT_RANGES[dtype]
    if not low <= number <= high:
        raise ValueError(f"{number} is out of range for {dtype}")
    return number


def _float(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float | Decimal):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError(f"{value!r} is not a number") from None
    elif hasattr(value, "item"):  # numpy scalar
        return _float(value.item())
    else:
        raise ValueError(f"{type(value).__name__} is not a number")
    return number if math.isfinite(number) else None


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    if hasattr(value, "item"):
        return _bool(value.item())
    raise ValueError(f"{value!r} is not a boolean")


def coerce(dtype: DType, value: Any) -> Any:
    """``value`` in the canonical form of ``dtype`` (see the module docstring).

    ``None`` (and a non-finite float) is missing and returns ``None``; a value that cannot be
    read as ``dtype`` raises ValueError saying why.
    """
    if value is None:
        return None
    name = dtype.name
    if name in FLOAT_DTYPES:
        return _float(value)
    if name in INT_RANGES:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return _integer(value, name)
    if name == "STRING":
        if isinstance(value, str):
            return value
        if isinstance(value, bytes):
            try:
                return value.decode()
            except UnicodeDecodeError:
                raise ValueError("bytes are not UTF-8 text") from None
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{type(value).__name__} is not text")
    if name == "BOOL":
        return _bool(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return _timestamp(value)


_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(value: Any) -> float:
    """Seconds of a duration written as a number of seconds or as ``"250ms"``, ``"1h30m"``, ``"7d"``."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text such as '250ms', '30s', '7d'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        seconds, number, index = 0.0, "", 0
        if not text:
            raise ValueError("empty duration")
        while index < len(text):
            char = text[index]
            if char.isdigit() or char == ".":
                number += char
                index += 1
                continue
            unit = "ms" if text.startswith("ms", index) else "us" if text.startswith("us", index) else char
            if unit not in _DURATION_UNITS or not number:
                raise ValueError(f"{value!r} is not a duration (e.g. '250ms', '30s', '15m', '1h30m', '7d')")
            seconds += float(number) * _DURATION_UNITS[unit]
            number, index = "", index + len(unit)
        if number:
            raise ValueError(f"{value!r} is not a duration: {number} has no unit (us, ms, s, m, h, d, w)")
    else:
        raise ValueError("a duration is a number of seconds or text such as '250ms', '30s', '7d'")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be positive, not {value!r}")
    return seconds
