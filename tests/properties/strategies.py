"""Hostile and ordinary values for every kind of argument, and the oracle that says which ones are valid.

The oracles restate the "Input rules" of docs/workflows.md independently of ``celery_durable.validation``, so the
suite checks the rules, not the code against itself.
"""

from __future__ import annotations

import math
import numbers
from decimal import Decimal
from fractions import Fraction
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from celery_durable import WorkflowStatus

# One profile for the whole suite: the same examples on every run, bounded, no per-example deadline
# (a shared CI machine's pauses are not failures).
settings.register_profile(
    "durable-props",
    derandomize=True,
    deadline=None,
    max_examples=75,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROPS = settings.get_profile("durable-props")

TEN_YEARS = 10 * 365 * 24 * 3600.0
NASTY_CHARS = [
    "\x00",
    "\ud800",
    "\udfff",
    "\ud83d",
    "\ude00",
    "😀",
    "é",
    "\u0301",
    "\u202e",
    "\uffff",
    "\U0010ffff",
    "'",
    "%",
    "\\",
    " ",
]
SPECIAL_NAMES = [
    "",
    "\x00",
    "a\x00b",
    "\ud800",
    "a\udfffb",
    "\ud83d\ude00",  # a surrogate pair kept as two characters
    "😀",
    "e\u0301",
    "x" * 255,
    "x" * 256,
    "é" * 255,
    " ",
    "'; DROP TABLE durable_workflows; --",
    "\t\n\r",
    "__durable_ticket__",
]
chars = st.one_of(st.sampled_from(NASTY_CHARS), st.characters())
texts = st.text(chars, max_size=12)
non_strings = st.one_of(
    st.none(),
    st.integers(),
    st.floats(allow_nan=True),
    st.booleans(),
    st.binary(max_size=4),
    st.lists(texts, max_size=2),
)
names = st.one_of(st.sampled_from(SPECIAL_NAMES), texts, st.text(chars, min_size=250, max_size=260), non_strings)


def valid_name(value: Any) -> bool:
    return (
        isinstance(value, str)
        and 1 <= len(value) <= 255
        and "\x00" not in value
        and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    )


timeouts = st.one_of(
    st.sampled_from(
        [
            0,
            0.0,
            -0.0,
            -1,
            1e-9,
            float("nan"),
            float("inf"),
            float("-inf"),
            2**1024,
            2**63,
            10**400,
            "5",
            b"5",
            True,
            False,
            None,
            Decimal("1"),
            Fraction(1, 3),
            TEN_YEARS,
            TEN_YEARS + 1,
            1e308,
        ]
    ),
    st.floats(),
    st.integers(),
)


def valid_timeout(value: Any, allow_none: bool = True) -> bool:
    if value is None:
        return allow_none
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        seconds = float(value)
    except OverflowError:
        return False
    return math.isfinite(seconds) and 0 <= seconds <= TEN_YEARS


limits = st.one_of(
    st.sampled_from([0, 1, -1, 2**31 - 1, 2**31, 2**63, True, 1.0, "5", None]), st.integers(min_value=-5, max_value=500)
)


def valid_limit(value: Any) -> bool:
    return type(value) is int and 1 <= value <= 2**31 - 1


statuses = st.one_of(
    st.none(),
    st.sampled_from(list(WorkflowStatus)),
    st.sampled_from(["WAITING", "waiting", "", "RUNNING\x00", "x"]),
    non_strings,
)


def valid_status(value: Any) -> bool:
    return (
        value is None
        or isinstance(value, WorkflowStatus)
        or (isinstance(value, str) and value in {s.value for s in WorkflowStatus})
    )


# -- payloads ---------------------------------------------------------------------------------------
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts)
payloads = st.one_of(
    st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.tuples(inner, inner),
            st.dictionaries(st.one_of(texts, st.integers(), st.booleans(), st.none()), inner, max_size=4),
        ),
        max_leaves=12,
    ),
    st.sampled_from(["deep", "deep-ok", "pair", "lone", "nul", "mixed-keys", "set", "bytes"]).map(
        lambda k: SPECIAL_PAYLOADS[k]
    ),
)


class Nested(list):  # type: ignore[type-arg]
    """A list nested *depth* deep that prints short (Hypothesis prints failing examples)."""

    def __repr__(self) -> str:
        return f"<list nested {getattr(self, 'depth', '?')} deep>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


def _nest(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth - 1):
        value = [value]
    outer = Nested([value])
    outer.depth = depth  # type: ignore[attr-defined]
    return outer


SPECIAL_PAYLOADS: dict[str, Any] = {
    "deep": _nest(10_000),
    "deep-ok": _nest(150),
    "pair": "\ud83d\ude00",
    "lone": {"k": "\ud800"},
    "nul": "a\x00b",
    "mixed-keys": {1: "a", "1": "b"},
    "set": {1, 2},
    "bytes": b"x",
}


def valid_payload(value: Any) -> bool:
    """JSON that comes back exactly (tuples as lists): no NaN/inf, str keys, no surrogates, at most 200 deep."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, bool) or item is None or isinstance(item, int):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                return False
        elif isinstance(item, str):
            if any(0xD800 <= ord(c) <= 0xDFFF for c in item):
                return False
        elif isinstance(item, (list, tuple, dict)):
            if depth >= 200:
                return False
            if isinstance(item, dict):
                if not all(isinstance(k, str) for k in item):
                    return False
                stack.extend((k, depth + 1) for k in item)
                stack.extend((c, depth + 1) for c in item.values())
            else:
                stack.extend((c, depth + 1) for c in item)
        else:
            return False
    return True


def as_stored(value: Any) -> Any:
    """What a valid payload comes back as: tuples become lists."""
    if isinstance(value, (list, tuple)):
        return [as_stored(v) for v in value]
    if isinstance(value, dict):
        return {k: as_stored(v) for k, v in value.items()}
    return value


def same(a: Any, b: Any) -> bool:
    """Equality that also compares types (1, 1.0 and True are equal in Python, not here) and -0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)
