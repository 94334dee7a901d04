"""Integer identifiers, read by one rule on every path.

An id written as text names an integer only in canonical form: ASCII digits, a ``-`` for a
negative, no ``+``, spaces, underscores or leading zeros, within int64. Python's ``int()`` also reads
``" 42 "``, ``"+42"``, ``"4_2"``, ``"042"`` and Arabic-Indic digits as 42; a service that hashed the
text for an experiment bucket but looked features up by ``int()`` put one customer in several
buckets. With one spelling per integer, the text and the integer name the same unit everywhere.
"""

from __future__ import annotations

import re

__all__ = ["INT64_MAX", "INT64_MIN", "NOT_CANONICAL", "canonical_int64"]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
NOT_CANONICAL = "is not an integer in canonical form (ASCII digits, '-' if negative; no '+', spaces or leading 0)"
"""What a refusal says after the value."""

_CANONICAL = re.compile(r"0|-?[1-9][0-9]{0,18}")


def canonical_int64(text: str) -> int | None:
    """The integer ``text`` spells in canonical form (see the module docstring), else None."""
    if _CANONICAL.fullmatch(text) is None:
        return None
    number = int(text)
    return number if INT64_MIN <= number <= INT64_MAX else None
