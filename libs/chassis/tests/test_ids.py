"""One spelling per integer id: canonical text is read, every other spelling Python's int() accepts is not."""

from __future__ import annotations

import pytest

from infermesh_chassis.ids import INT64_MAX, INT64_MIN, canonical_int64


@pytest.mark.parametrize(
    ("text", "number"),
    [("0", 0), ("42", 42), ("-42", -42), (str(INT64_MAX), INT64_MAX), (str(INT64_MIN), INT64_MIN)],
)
def test_canonical_ids_are_read(text: str, number: int):
    assert canonical_int64(text) == number


@pytest.mark.parametrize(
    "text",
    [
        " 42",
        "42 ",
        "42\n",
        "+42",
        "042",
        "-0",
        "4_2",
        "\u0664\u0662",  # Arabic-Indic digits
        "\uff14\uff12",  # fullwidth digits
        "",
        "-",
        "4.2",
        "0x2a",
        str(INT64_MAX + 1),
        str(INT64_MIN - 1),
        "9" * 5000,
    ],
)
def test_every_other_spelling_is_refused(text: str):
    assert canonical_int64(text) is None
