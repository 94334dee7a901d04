"""Printing, written once: aligned tables, ``label  value`` blocks and JSON, all to stdout."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

__all__ = ["cell", "ms", "percent", "print_fields", "print_json", "print_table"]


def cell(value: Any) -> str:
    """A value as table text: ``-`` for nothing, ``yes``/``no``, 4 significant digits for floats, lists joined."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items()) or "-"
    return str(value)


def ms(value: float | None) -> str:
    """Milliseconds with two decimals."""
    return "-" if value is None else f"{value:.2f}"


def percent(fraction: float | None) -> str:
    """A fraction in [0, 1] as a percentage."""
    return "-" if fraction is None else f"{100 * fraction:.2f}%"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, empty: str = "(none)") -> None:
    """Rows under their headers, columns aligned; ``empty`` under the headers when there are no rows."""
    texts = [[cell(c) if not isinstance(c, str) else (c or "-") for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in texts)) if texts else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in texts:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if not texts:
        print(empty)


def print_fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """``label  value`` lines, labels aligned."""
    width = max((len(label) for label, _ in pairs), default=0)
    for label, value in pairs:
        print(f"{label.ljust(width)}  {value if isinstance(value, str) and value else cell(value)}")


def print_json(data: Any) -> None:
    """``data`` as indented JSON."""
    print(json.dumps(data, indent=2, ensure_ascii=False))
