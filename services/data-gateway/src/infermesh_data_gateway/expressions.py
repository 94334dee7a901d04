"""Feature transforms: one expression language, compiled once, evaluated two ways.

A feature's ``expr`` (``log1p(clip(activity.spend_30d, 0, 1e6))``) is parsed with Python's
``ast`` into a small typed tree. Every node evaluates both per row (:meth:`Node.scalar`, the
online executor) and per column (:meth:`Node.batch`, the vectorized batch executor), and both
follow the same rules, which the property-based parity test holds them to:

- a missing input gives a missing result; so does any arithmetic whose result is not finite
  (a division by zero, ``log(0)``, an overflow): missing is never silently a number;
- arithmetic is IEEE-754 double precision; transcendental functions (``log``, ``log1p``,
  ``sqrt``) call the same NumPy ufunc in both executors, so the last bit agrees too;
- date parts are integer arithmetic on UTC microseconds (the same code on ints and arrays).

Kinds of values: ``num`` (double), ``int`` (int64), ``str``, ``ts`` (UTC microseconds) and
``vec`` (a fixed-length double vector, from ``one_hot``).
"""

from __future__ import annotations

import ast
import bisect
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from infermesh_data_gateway.types import INT_RANGES, DType

__all__ = [
    "FUNCTIONS",
    "BatchEnv",
    "Col",
    "Compiled",
    "ExpressionError",
    "Node",
    "cast_batch",
    "cast_scalar",
    "compile_expression",
]

NUM, INT, STR, TS, VEC = "num", "int", "str", "ts", "vec"
_DAY_US = 86_400_000_000
_F32_MAX = float(np.finfo(np.float32).max)
_F16_MAX = float(np.finfo(np.float16).max)
_TWO_63 = 9.223372036854775808e18


class ExpressionError(ValueError):
    """An expression is not valid; the message says where and why."""


@dataclass(slots=True)
class Col:
    """A column: ``values`` and a ``valid`` mask (invalid positions hold filler values).

    ``num`` columns are float64 with NaN where invalid; ``int`` and ``ts`` are int64; ``str``
    is an object array; ``vec`` is a 2-D float64 array, one row per entity.
    """

    values: np.ndarray
    valid: np.ndarray


@dataclass(slots=True)
class BatchEnv:
    """Inputs of a batch evaluation: columns by reference (``view.field``, ``request.x``), as-of times."""

    columns: Mapping[str, Col]
    as_of: np.ndarray
    size: int


ScalarEnv = Mapping[str, Any]
"""Inputs of a scalar evaluation: canonical values by reference, and ``__as_of__`` in microseconds."""

AS_OF = "__as_of__"


class Node:
    """A typed expression node."""

    kind: str = NUM
    size: int = 0

    def scalar(self, env: ScalarEnv) -> Any:
        """The value for one row (None when missing)."""
        raise NotImplementedError

    def batch(self, env: BatchEnv) -> Col:
        """The column for a batch of rows."""
        raise NotImplementedError

    def refs(self) -> set[str]:
        """References (``view.field`` or ``request.name``) the node reads."""
        return set()


def _num_col(values: np.ndarray) -> Col:
    valid = np.isfinite(values)
    if not valid.all():
        values = np.where(valid, values, np.nan)
    return Col(values, valid)


def _as_num(col: Col, kind: str) -> Col:
    if kind == INT:
        return Col(np.where(col.valid, col.values.astype(np.float64), np.nan), col.valid)
    return col


def _scalar_num(value: Any) -> float | None:
    return None if value is None else float(value)


class Ref(Node):
    """A field of a feature view (``view.field``) or a request value (``request.name``)."""

    def __init__(self, name: str, dtype: DType) -> None:
        self.name = name
        self.dtype = dtype
        if dtype.is_float or dtype.name == "BOOL":
            self.kind = NUM
        elif dtype.is_int:
            self.kind = INT
        elif dtype.name == "STRING":
            self.kind = STR
        else:
            self.kind = TS
        self._bool = dtype.name == "BOOL"

    def scalar(self, env: ScalarEnv) -> Any:
        value = env.get(self.name)
        if value is not None and self._bool:
            return float(value)
        return value

    def batch(self, env: BatchEnv) -> Col:
        return env.columns[self.name]

    def refs(self) -> set[str]:
        return {self.name}


class Const(Node):
    """A literal number or string."""

    def __init__(self, value: float | int | str) -> None:
        self.value = value
        self.kind = STR if isinstance(value, str) else INT if isinstance(value, int) else NUM

    def scalar(self, env: ScalarEnv) -> Any:
        return self.value

    def batch(self, env: BatchEnv) -> Col:
        dtype = object if self.kind == STR else np.int64 if self.kind == INT else np.float64
        return Col(np.full(env.size, self.value, dtype=dtype), np.ones(env.size, dtype=bool))


class Arith(Node):
    """``a + b``, ``a - b``, ``a * b``, ``a / b`` in double precision."""

    _OPS: ClassVar[dict[type, str]] = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}

    def __init__(self, op: str, left: Node, right: Node) -> None:
        self.op, self.left, self.right = op, left, right

    def scalar(self, env: ScalarEnv) -> Any:
        a = _scalar_num(self.left.scalar(env))
        if a is None:
            return None
        b = _scalar_num(self.right.scalar(env))
        if b is None:
            return None
        if self.op == "+":
            result = a + b
        elif self.op == "-":
            result = a - b
        elif self.op == "*":
            result = a * b
        else:
            if b == 0.0:
                return None
            result = a / b
        return result if -np.inf < result < np.inf else None

    def batch(self, env: BatchEnv) -> Col:
        a = _as_num(self.left.batch(env), self.left.kind).values
        b = _as_num(self.right.batch(env), self.right.kind).values
        with np.errstate(all="ignore"):
            if self.op == "+":
                result = a + b
            elif self.op == "-":
                result = a - b
            elif self.op == "*":
                result = a * b
            else:
                result = a / b
        return _num_col(result)

    def refs(self) -> set[str]:
        return self.left.refs() | self.right.refs()


class Neg(Node):
    """``-a``."""

    def __init__(self, operand: Node) -> None:
        self.operand = operand

    def scalar(self, env: ScalarEnv) -> Any:
        value = _scalar_num(self.operand.scalar(env))
        return None if value is None else -value

    def batch(self, env: BatchEnv) -> Col:
        col = _as_num(self.operand.batch(env), self.operand.kind)
        return Col(-col.values, col.valid)

    def refs(self) -> set[str]:
        return self.operand.refs()


class Unary(Node):
    """``log``, ``log1p``, ``sqrt``, ``abs``: the same NumPy ufunc in both executors, outside the domain missing."""

    _DOMAIN: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "log": lambda x: x > 0,
        "log1p": lambda x: x > -1,
        "sqrt": lambda x: x >= 0,
        "abs": lambda x: True,
    }
    _UFUNC: ClassVar[dict[str, np.ufunc]] = {"log": np.log, "log1p": np.log1p, "sqrt": np.sqrt, "abs": np.abs}

    def __init__(self, name: str, operand: Node) -> None:
        self.name, self.operand = name, operand
        self._domain = self._DOMAIN[name]
        self._ufunc = self._UFUNC[name]

    def scalar(self, env: ScalarEnv) -> Any:
        value = _scalar_num(self.operand.scalar(env))
        if value is None or not self._domain(value):
            return None
        result = float(self._ufunc(np.float64(value)))
        return result if -np.inf < result < np.inf else None

    def batch(self, env: BatchEnv) -> Col:
        col = _as_num(self.operand.batch(env), self.operand.kind)
        inside = col.valid & self._domain(np.where(col.valid, col.values, 0.0))
        result = np.full(env.size, np.nan)
        with np.errstate(all="ignore"):
            result[inside] = self._ufunc(col.values[inside])
        return _num_col(result)

    def refs(self) -> set[str]:
        return self.operand.refs()


class Clip(Node):
    """``clip(x, low, high)``: bounds are numbers or ``None`` for no bound."""

    def __init__(self, operand: Node, low: float | None, high: float | None) -> None:
        self.operand, self.low, self.high = operand, low, high

    def scalar(self, env: ScalarEnv) -> Any:
        value = _scalar_num(self.operand.scalar(env))
        if value is None:
            return None
        if self.low is not None and value < self.low:
            value = self.low
        if self.high is not None and value > self.high:
            value = self.high
        return value

    def batch(self, env: BatchEnv) -> Col:
        col = _as_num(self.operand.batch(env), self.operand.kind)
        values = col.values
        if self.low is not None:
            values = np.where(values < self.low, self.low, values)
        if self.high is not None:
            values = np.where(values > self.high, self.high, values)
        return Col(values, col.valid)

    def refs(self) -> set[str]:
        return self.operand.refs()


class Standardize(Node):
    """``standardize(x, mean, std)``: ``(x - mean) / std`` with statistics fixed in the definition."""

    def __init__(self, operand: Node, mean: float, std: float) -> None:
        self.operand, self.mean, self.std = operand, mean, std

    def scalar(self, env: ScalarEnv) -> Any:
        value = _scalar_num(self.operand.scalar(env))
        if value is None:
            return None
        result = (value - self.mean) / self.std
        return result if -np.inf < result < np.inf else None

    def batch(self, env: BatchEnv) -> Col:
        col = _as_num(self.operand.batch(env), self.operand.kind)
        with np.errstate(all="ignore"):
            return _num_col((col.values - self.mean) / self.std)

    def refs(self) -> set[str]:
        return self.operand.refs()


class Bucketize(Node):
    """``bucketize(x, [b1, ..., bn])``: how many boundaries are <= x (0..n)."""

    kind = INT

    def __init__(self, operand: Node, boundaries: list[float]) -> None:
        self.operand, self.boundaries = operand, boundaries
        self._array = np.asarray(boundaries, dtype=np.float64)

    def scalar(self, env: ScalarEnv) -> Any:
        value = _scalar_num(self.operand.scalar(env))
        return None if value is None else bisect.bisect_right(self.boundaries, value)

    def batch(self, env: BatchEnv) -> Col:
        col = _as_num(self.operand.batch(env), self.operand.kind)
        filled = np.where(col.valid, col.values, 0.0)
        return Col(np.searchsorted(self._array, filled, side="right").astype(np.int64), col.valid)

    def refs(self) -> set[str]:
        return self.operand.refs()


class OneHot(Node):
    """``one_hot(x, [c1, ..., cn])``: a vector of n, 1.0 at x's category; all zeros for an unknown one."""

    kind = VEC

    def __init__(self, operand: Node, categories: list[Any]) -> None:
        self.operand, self.categories = operand, categories
        self.size = len(categories)
        self._index = {c: i for i, c in enumerate(categories)}

    def scalar(self, env: ScalarEnv) -> Any:
        value = self.operand.scalar(env)
        if value is None:
            return None
        vector = [0.0] * self.size
        index = self._index.get(value)
        if index is not None:
            vector[index] = 1.0
        return tuple(vector)

    def batch(self, env: BatchEnv) -> Col:
        col = self.operand.batch(env)
        out = np.zeros((env.size, self.size), dtype=np.float64)
        for index, category in enumerate(self.categories):
            out[:, index] = ((col.values == category) & col.valid).astype(np.float64)
        return Col(out, col.valid)

    def refs(self) -> set[str]:
        return self.operand.refs()


def _floordiv(a: Any, b: int) -> Any:
    return a // b


def _civil(days: Any, where: Callable[[Any, Any, Any], Any]) -> tuple[Any, Any, Any]:
    """(year, month, day) of ``days`` since 1970-01-01 (H. Hinnant's algorithm), on ints or arrays."""
    z = days + 719_468
    era = _floordiv(z, 146_097)
    doe = z - era * 146_097
    yoe = _floordiv(doe - _floordiv(doe, 1460) + _floordiv(doe, 36_524) - _floordiv(doe, 146_096), 365)
    doy = doe - (365 * yoe + _floordiv(yoe, 4) - _floordiv(yoe, 100))
    mp = _floordiv(5 * doy + 2, 153)
    day = doy - _floordiv(153 * mp + 2, 5) + 1
    month = where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + where(month <= 2, 1, 0)
    return year, month, day


def _days_from_civil(year: Any, month: Any, day: Any, where: Callable[[Any, Any, Any], Any]) -> Any:
    y = year - where(month <= 2, 1, 0)
    era = _floordiv(y, 400)
    yoe = y - era * 400
    doy = _floordiv(153 * (month + where(month > 2, -3, 9)) + 2, 5) + day - 1
    doe = yoe * 365 + _floordiv(yoe, 4) - _floordiv(yoe, 100) + doy
    return era * 146_097 + doe - 719_468


def _date_part(part: str, micros: Any, where: Callable[[Any, Any, Any], Any]) -> Any:
    days = _floordiv(micros, _DAY_US)
    if part == "hour":
        return _floordiv(micros - days * _DAY_US, 3_600_000_000)
    if part == "minute":
        return _floordiv(micros - days * _DAY_US, 60_000_000) % 60
    if part == "day_of_week":
        return (days + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0
    if part == "is_weekend":
        return where((days + 3) % 7 >= 5, 1, 0)
    year, month, day = _civil(days, where)
    if part == "year":
        return year
    if part == "month":
        return month
    if part == "day_of_month":
        return day
    return days - _days_from_civil(year, 1, 1, where) + 1  # day_of_year


def _scalar_where(cond: Any, a: Any, b: Any) -> Any:
    return a if cond else b


DATE_PARTS = ("year", "month", "day_of_month", "day_of_year", "day_of_week", "hour", "minute", "is_weekend")


class DatePart(Node):
    """``year(ts)``, ``month``, ``day_of_month``, ``day_of_year``, ``day_of_week`` (Monday 0), ``hour``,
    ``minute``, ``is_weekend``: UTC."""

    kind = INT

    def __init__(self, part: str, operand: Node) -> None:
        self.part, self.operand = part, operand

    def scalar(self, env: ScalarEnv) -> Any:
        value = self.operand.scalar(env)
        return None if value is None else int(_date_part(self.part, value, _scalar_where))

    def batch(self, env: BatchEnv) -> Col:
        col = self.operand.batch(env)
        filled = np.where(col.valid, col.values, 0).astype(np.int64)
        return Col(np.asarray(_date_part(self.part, filled, np.where), dtype=np.int64), col.valid)

    def refs(self) -> set[str]:
        return self.operand.refs()


class AgeDays(Node):
    """``age_days(ts)``: days from ``ts`` to the as-of time (the request's now; a training row's event time)."""

    def __init__(self, operand: Node) -> None:
        self.operand = operand

    def scalar(self, env: ScalarEnv) -> Any:
        value = self.operand.scalar(env)
        return None if value is None else float(env[AS_OF] - value) / _DAY_US

    def batch(self, env: BatchEnv) -> Col:
        col = self.operand.batch(env)
        filled = np.where(col.valid, col.values, 0).astype(np.int64)
        values = (env.as_of - filled).astype(np.float64) / _DAY_US
        return Col(np.where(col.valid, values, np.nan), col.valid)

    def refs(self) -> set[str]:
        return self.operand.refs()


class Coalesce(Node):
    """``coalesce(a, b, ...)``: the first argument that is not missing."""

    def __init__(self, operands: list[Node], kind: str) -> None:
        self.operands, self.kind = operands, kind

    def scalar(self, env: ScalarEnv) -> Any:
        for operand in self.operands:
            value = operand.scalar(env)
            if value is not None:
                return float(value) if self.kind == NUM and operand.kind == INT else value
        return None

    def batch(self, env: BatchEnv) -> Col:
        cols = [_as_num(op.batch(env), op.kind) if self.kind == NUM else op.batch(env) for op in self.operands]
        values, valid = cols[-1].values.copy(), cols[-1].valid.copy()
        for col in reversed(cols[:-1]):
            values = np.where(col.valid, col.values, values)
            valid = col.valid | valid
        return Col(values, valid)

    def refs(self) -> set[str]:
        return set().union(*(op.refs() for op in self.operands))


FUNCTIONS = (
    "log", "log1p", "sqrt", "abs", "clip", "standardize", "bucketize", "one_hot", "coalesce", "age_days", *DATE_PARTS,
)  # fmt: skip
"""Every function an expression may call."""


@dataclass(frozen=True, slots=True)
class Compiled:
    """A compiled expression: its root node and what it reads."""

    text: str
    root: Node
    refs: frozenset[str]


class _Compiler:
    def __init__(
        self,
        text: str,
        resolve: Callable[[str, str], DType],
        statistics: Mapping[str, tuple[float, float]],
    ) -> None:
        self.text = text
        self.resolve = resolve
        self.statistics = statistics

    def fail(self, node: ast.AST | None, message: str) -> ExpressionError:
        where = f" (at column {node.col_offset + 1})" if node is not None and hasattr(node, "col_offset") else ""
        return ExpressionError(f"{message}{where} in {self.text!r}")

    def number(self, node: ast.expr, what: str, allow_none: bool = False) -> float | None:
        if allow_none and isinstance(node, ast.Constant) and node.value is None:
            return None
        sign = 1.0
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            sign, node = -1.0, node.operand
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
            value = sign * float(node.value)
            if np.isfinite(value):
                return value
        raise self.fail(node, f"{what} must be a number literal{' or None' if allow_none else ''}")

    def literal_list(self, node: ast.expr, what: str) -> list[Any]:
        if not isinstance(node, ast.List | ast.Tuple) or not node.elts:
            raise self.fail(node, f"{what} must be a non-empty list literal")
        return [self.literal(elt, what) for elt in node.elts]

    def literal(self, node: ast.expr, what: str) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            return node.value
        if (
            isinstance(node, ast.UnaryOp)
            and isinstance(node.op, ast.USub)
            and isinstance(node.operand, ast.Constant)
            and type(node.operand.value) is int
        ):
            return -node.operand.value
        return self.number(node, what)

    def numeric(self, node: ast.expr) -> Node:
        compiled = self.node(node)
        if compiled.kind not in (NUM, INT):
            raise self.fail(node, f"expected a number, got a {compiled.kind} value")
        return compiled

    def node(self, node: ast.expr) -> Node:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or node.value is None:
                raise self.fail(node, f"literal {node.value!r} is not allowed here")
            if isinstance(node.value, int | float | str):
                if isinstance(node.value, float) and not np.isfinite(node.value):
                    raise self.fail(node, "literals must be finite")
                return Const(node.value)
            raise self.fail(node, f"literal {node.value!r} is not allowed")
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            try:
                return Ref(f"{node.value.id}.{node.attr}", self.resolve(node.value.id, node.attr))
            except KeyError as exc:
                raise self.fail(node, str(exc.args[0])) from None
        if isinstance(node, ast.Name):
            raise self.fail(node, f"{node.id!r}: name a field as <view>.<field> or a request value as request.<name>")
        if isinstance(node, ast.BinOp) and type(node.op) in Arith._OPS:
            return Arith(Arith._OPS[type(node.op)], self.numeric(node.left), self.numeric(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            if isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, int | float):
                return Const(-node.operand.value)
            return Neg(self.numeric(node.operand))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return self.call(node, node.func.id, node.args)
        raise self.fail(node, f"{type(node).__name__} is not supported (arithmetic + - * / and {', '.join(FUNCTIONS)})")

    def call(self, node: ast.Call, name: str, args: list[ast.expr]) -> Node:
        if node.keywords:
            raise self.fail(node, f"{name}() takes positional arguments only")

        def arity(*counts: int) -> None:
            if len(args) not in counts:
                raise self.fail(node, f"{name}() takes {' or '.join(map(str, counts))} arguments, got {len(args)}")

        if name in Unary._UFUNC:
            arity(1)
            return Unary(name, self.numeric(args[0]))
        if name == "clip":
            arity(3)
            low, high = self.number(args[1], "clip low", True), self.number(args[2], "clip high", True)
            if low is not None and high is not None and low > high:
                raise self.fail(node, "clip low must be <= high")
            return Clip(self.numeric(args[0]), low, high)
        if name == "standardize":
            return self.standardize(node, args)
        if name == "bucketize":
            arity(2)
            bounds = [float(self.number(b, "bucketize boundaries") or 0.0) for b in self._elts(args[1], "boundaries")]
            if any(b >= c for b, c in itertools.pairwise(bounds)):
                raise self.fail(node, "bucketize boundaries must be strictly increasing")
            return Bucketize(self.numeric(args[0]), bounds)
        if name == "one_hot":
            arity(2)
            operand = self.node(args[0])
            categories = self.literal_list(args[1], "one_hot categories")
            if operand.kind == STR and not all(isinstance(c, str) for c in categories):
                raise self.fail(node, "one_hot of a string needs string categories")
            if operand.kind == INT and not all(isinstance(c, int) for c in categories):
                raise self.fail(node, "one_hot of an integer needs integer categories")
            if operand.kind not in (STR, INT):
                raise self.fail(node, "one_hot takes a string or integer value")
            if len(set(categories)) != len(categories):
                raise self.fail(node, "one_hot categories must be distinct")
            return OneHot(operand, categories)
        if name == "coalesce":
            if len(args) < 2:
                raise self.fail(node, "coalesce() takes at least 2 arguments")
            operands = [self.node(a) for a in args]
            kinds = {op.kind for op in operands}
            if kinds <= {NUM, INT}:
                return Coalesce(operands, INT if kinds == {INT} else NUM)
            if len(kinds) != 1 or VEC in kinds:
                raise self.fail(node, f"coalesce() arguments must have one kind, got {', '.join(sorted(kinds))}")
            return Coalesce(operands, kinds.pop())
        if name in DATE_PARTS or name == "age_days":
            arity(1)
            operand = self.node(args[0])
            if operand.kind != TS:
                raise self.fail(node, f"{name}() takes a TIMESTAMP field")
            return AgeDays(operand) if name == "age_days" else DatePart(name, operand)
        raise self.fail(node, f"unknown function {name}(); available: {', '.join(FUNCTIONS)}")

    def _elts(self, node: ast.expr, what: str) -> list[ast.expr]:
        if not isinstance(node, ast.List | ast.Tuple) or not node.elts:
            raise self.fail(node, f"{what} must be a non-empty list literal")
        return list(node.elts)

    def standardize(self, node: ast.Call, args: list[ast.expr]) -> Node:
        if len(args) == 2:
            ref = args[1]
            if not (isinstance(ref, ast.Constant) and isinstance(ref.value, str)):
                raise self.fail(node, "standardize(x, 'name') names an entry of the definitions' statistics")
            if ref.value not in self.statistics:
                known = ", ".join(sorted(self.statistics)) or "none defined"
                raise self.fail(node, f"unknown statistics {ref.value!r} (known: {known})")
            mean, std = self.statistics[ref.value]
        elif len(args) == 3:
            mean = float(self.number(args[1], "standardize mean") or 0.0)
            std = float(self.number(args[2], "standardize std") or 0.0)
        else:
            raise self.fail(node, "standardize() takes (x, 'statistics name') or (x, mean, std)")
        if not std > 0:
            raise self.fail(node, "standardize std must be > 0")
        return Standardize(self.numeric(args[0]), mean, std)


def compile_expression(
    text: str,
    resolve: Callable[[str, str], DType],
    statistics: Mapping[str, tuple[float, float]] | None = None,
) -> Compiled:
    """Parse and type-check ``text``; ``resolve(view, field)`` gives a reference's dtype or raises KeyError."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"syntax error at column {exc.offset or 0} in {text!r}") from None
    compiler = _Compiler(text, resolve, statistics or {})
    root = compiler.node(tree.body)
    return Compiled(text, root, frozenset(root.refs()))


# ------------------------------------------------------------------------------------------------
# The model's dtypes: the last step of both executors
# ------------------------------------------------------------------------------------------------


def cast_scalar(value: Any, kind: str, dtype: str) -> Any:
    """``value`` (of ``kind``) as the feature's ``dtype``; None when it cannot be represented."""
    if value is None:
        return None
    if kind == VEC:
        items = [cast_scalar(v, NUM, dtype) for v in value]
        return None if any(v is None for v in items) else tuple(items)
    if dtype == "BYTES":
        return value
    if dtype == "BOOL":
        return value != 0
    if dtype in ("FP32", "FP16"):
        number = float(value)
        limit = _F32_MAX if dtype == "FP32" else _F16_MAX
        if not -limit <= number <= limit:
            return None
        return float(np.float32(number) if dtype == "FP32" else np.float16(number))
    if dtype == "FP64":
        return float(value)
    low, high = INT_RANGES[dtype]
    integer = value if kind == INT else round(value)
    return integer if low <= integer <= high else None


def cast_batch(col: Col, kind: str, dtype: str) -> Col:
    """The column as the feature's ``dtype`` (object array for BYTES; invalid where not representable)."""
    values, valid = col.values, col.valid.copy()
    if kind == VEC:
        cast = cast_batch(Col(values.reshape(-1), np.repeat(valid, values.shape[1])), NUM, dtype)
        per_row = cast.valid.reshape(values.shape).all(axis=1)
        return Col(cast.values.reshape(values.shape), valid & per_row)
    if dtype == "BYTES":
        return Col(values, valid)
    if dtype == "BOOL":
        return Col(np.where(valid, values != 0, False), valid)
    if dtype in ("FP32", "FP16"):
        limit = _F32_MAX if dtype == "FP32" else _F16_MAX
        floats = values.astype(np.float64)
        valid &= (floats >= -limit) & (floats <= limit)
        narrow = np.where(valid, floats, 0.0).astype(np.float32 if dtype == "FP32" else np.float16)
        return Col(narrow.astype(np.float64), valid)
    if dtype == "FP64":
        return Col(values.astype(np.float64), valid)
    low, high = INT_RANGES[dtype]
    if kind == INT:
        ints = values.astype(np.int64)
        valid &= (ints >= low) & (ints <= high)
        return Col(np.where(valid, ints, 0), valid)
    with np.errstate(all="ignore"):
        rounded = np.rint(np.where(valid, values, 0.0))
    valid &= (rounded >= float(low)) & (rounded < (_TWO_63 if high == 2**63 - 1 else float(high) + 1))
    return Col(np.where(valid, rounded, 0).astype(np.int64), valid)
