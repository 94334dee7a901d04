"""The online and batch executors give identical vectors for the same rows (property-based).

Every transform, every dtype, missing values, non-finite inputs, extreme numbers, unknown
categories, stale records and absent records: for any batch of rows hypothesis draws, the
batch executor's vectors and statuses equal, bit for bit, what the online executor computes
row by row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infermesh_data_gateway.definitions import load_definitions
from infermesh_data_gateway.executor import (
    BatchExecutor,
    OnlineExecutor,
    Status,
    ViewRead,
    found_column,
    rows_equal,
    ts_column,
)
from infermesh_data_gateway.types import DType, coerce

DEFINITIONS = load_definitions(Path(__file__).with_name("parity_definitions.yaml"))
SERVICE = DEFINITIONS.services["everything"]
AS_OF = 1_790_000_000_000_000
DAY_US = 86_400_000_000
MIN_US, MAX_US = -62_135_596_800_000_000, 253_402_300_799_999_999

floats = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1e3, 1e3),
    st.sampled_from([0.0, -0.0, -1.0, 1.0, 0.5, -1e-300, 5e-324, 1e308, -1e308, 3.4028235e38, 6.6e4, 2.0**63]),
)
ints = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-20, 20),
    st.sampled_from([2**31, -(2**31) - 1, 2**53 + 1, 7, -2]),
)
texts = st.one_of(st.none(), st.sampled_from(["a", "b", "é", "", "web", "app", "A"]), st.text(max_size=4))
stamps = st.one_of(st.none(), st.integers(MIN_US, MAX_US), st.integers(AS_OF - 3 * DAY_US, AS_OF))
bools = st.one_of(st.none(), st.booleans())

view_v = st.fixed_dictionaries({"x": floats, "y": floats, "n": ints, "s": texts, "t": stamps, "b": bools})
view_w = st.fixed_dictionaries({"k": ints, "z": floats})
record_ts = st.one_of(st.none(), st.integers(AS_OF - 2 * DAY_US, AS_OF))
row = st.fixed_dictionaries(
    {
        "v": st.one_of(st.none(), view_v),
        "v_ts": record_ts,
        "w": st.one_of(st.none(), view_w),
        "w_ts": record_ts,
        "r": floats,
        "c": texts,
        "fallback": st.booleans(),
    }
)


def _canonical(view: str, values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, dtype in DEFINITIONS.views[view].fields.items():
        raw = values[name]
        out[name] = raw if dtype.name == "TIMESTAMP" else coerce(dtype, raw)
    return out


def _online(item: dict[str, Any]) -> tuple[list[Any], list[Status], list[str]]:
    reads = {}
    for view in ("v", "w"):
        record = item[view]
        reads[view] = ViewRead(
            None if record is None else _canonical(view, record),
            item[f"{view}_ts"],
            source="store",
            from_fallback=item["fallback"] and view == "w",
        )
    request = {"r": coerce(DType("FP64"), item["r"]), "c": item["c"]}
    vector = OnlineExecutor(DEFINITIONS, SERVICE).compute(reads, request, AS_OF)
    return vector.values, vector.statuses, vector.unservable


def _column(values: list[Any], dtype: DType) -> pd.Series:
    if dtype.is_float:
        return pd.Series([np.nan if v is None else v for v in values], dtype=np.float64)
    if dtype.is_int or dtype.name == "TIMESTAMP":
        return pd.Series(pd.array(values, dtype="Int64"))
    return pd.Series(values, dtype=object)


def _frame(items: list[dict[str, Any]]) -> pd.DataFrame:
    columns: dict[str, pd.Series] = {}
    for view in ("v", "w"):
        fields = DEFINITIONS.views[view].fields
        columns[found_column(view)] = pd.Series([item[view] is not None for item in items])
        columns[ts_column(view)] = pd.Series(pd.array([item[f"{view}_ts"] for item in items], dtype="Int64"))
        for name, dtype in fields.items():
            values = [None if item[view] is None else item[view][name] for item in items]
            columns[f"{view}.{name}"] = _column(values, dtype)
    columns["request.r"] = _column([item["r"] for item in items], DType("FP64"))
    columns["request.c"] = _column([item["c"] for item in items], DType("STRING"))
    return pd.DataFrame(columns)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(row, min_size=1, max_size=12))
def test_online_and_batch_vectors_are_identical(items: list[dict[str, Any]]):
    result = BatchExecutor(DEFINITIONS, SERVICE).compute(_frame(items), np.full(len(items), AS_OF, dtype=np.int64))
    batch_rows = result.rows(SERVICE)
    for index, item in enumerate(items):
        values, statuses, unservable = _online(item)
        batch_statuses = [Status(int(s)) for s in result.statuses[index]]
        # Batch has no fallback: the same value, served from the view's primary.
        expected = [Status.OK if s is Status.FALLBACK else s for s in statuses]
        assert batch_statuses == expected, (item, statuses, batch_statuses)
        assert rows_equal(values, batch_rows[index]), (item, values, batch_rows[index])
        missing_not_allowed = [
            f.name
            for f, s in zip(SERVICE.features, batch_statuses, strict=True)
            if s is Status.MISSING and not f.allow_missing
        ]
        assert unservable == missing_not_allowed


@pytest.mark.parametrize(
    ("x", "expected"),
    [(0.0, None), (-1.0, None), (1.0, 0.0), (np.e, 1.0)],
)
def test_log_outside_its_domain_is_missing_then_default(x: float, expected: float | None):
    item = {"v": {"x": x, "y": 1.0, "n": 1, "s": "a", "t": AS_OF, "b": True}, "v_ts": AS_OF, "w": None, "w_ts": None}
    item |= {"r": 1.0, "c": None, "fallback": False}
    values, statuses, _ = _online(item)
    index = [f.name for f in SERVICE.features].index("log_x")
    if expected is None:
        assert (values[index], statuses[index]) == (0.0, Status.DEFAULT)
    else:
        assert values[index] == pytest.approx(expected) and statuses[index] is Status.OK


def test_a_record_older_than_the_ttl_is_stale_in_both_executors():
    record = {"x": 2.0, "y": 1.0, "n": 1, "s": "b", "t": AS_OF, "b": False}
    stale = {"v": record, "v_ts": AS_OF - DAY_US - 1, "w": None, "w_ts": None, "r": 1.0, "c": "app", "fallback": False}
    fresh = stale | {"v_ts": AS_OF - DAY_US}
    names = [f.name for f in SERVICE.features]
    for item, status in ((stale, Status.DEFAULT), (fresh, Status.OK)):
        values, statuses, _ = _online(item)
        assert statuses[names.index("sum32")] is status
        result = BatchExecutor(DEFINITIONS, SERVICE).compute(_frame([item]), np.array([AS_OF]))
        assert Status(int(result.statuses[0][names.index("sum32")])) is status
        assert rows_equal(values, result.rows(SERVICE)[0])
