"""Schemathesis hooks (SCHEMATHESIS_HOOKS=tests.e2e.schemathesis_hooks): hostile values mixed into
the bodies the schema generates, so the live API is fuzzed with what issue 12 found breaking one
store or the other (lone surrogates, NUL, NaN and infinities, numbers past 64 bits and past Python's
digit limit, durations that overflow, 72-character TTLs, deep nesting, huge strings)."""

import copy
from typing import Any

import schemathesis
from hypothesis import strategies as st

HOSTILE_TEXT = ["\ud800", "a\udfffb", "\x00", "a\x00", "𝄞", "x" * 3000, "", " "]
# As JSON numbers (the client sends only finite floats and integers of up to 4,300 digits) ...
HOSTILE_NUMBERS = [1e308, -0.0, 5e-324, 2**64, 10**50, 10**4000, -(2**63) - 1]
# ... and as JSON text inside a string, where the SDK's payload is: what the client cannot send.
HOSTILE_JSON_TEXT = [
    '{"json":{"a":1e309}}',
    '{"json":NaN}',
    '{"json":-Infinity}',
    '{"json":' + "1" * 5000 + "}",
    '{"json":"\\ud800"}',
    "[" * 5000 + "]" * 5000,
    '{"json":',
]
HOSTILE_DURATIONS = ["99999999999999999999d", "0" * 71 + "1s", "0s", "-1s", "1e9d", "2026-13-01T00:00:00Z"]


def _deep(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"d": value}
    return value


HOSTILE = st.sampled_from(
    [
        *HOSTILE_TEXT,
        *HOSTILE_NUMBERS,
        *HOSTILE_JSON_TEXT,
        *HOSTILE_DURATIONS,
        _deep(70),
        _deep(900),
        ["\ud800"],
        {"\ud800": 1},
    ]
)


def _paths(value: Any, path: tuple = ()) -> list[tuple]:
    """Every position in a JSON body: the body's keys, and the items of its objects and lists."""
    found = [path] if path else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*path, index))
    return found


def _replace(body: Any, substitutions: list[tuple[tuple, Any]]) -> Any:
    for path, hostile in substitutions:
        target = body
        for step in path[:-1]:  # an earlier substitution may have replaced a step on the way
            found = isinstance(target, dict) and step in target
            found = found or (isinstance(target, list) and isinstance(step, int) and step < len(target))
            target = target[step] if found else None
        if isinstance(target, dict) or (isinstance(target, list) and path[-1] < len(target)):
            target[path[-1]] = copy.deepcopy(hostile)  # a later substitution may write inside it
    return body


@schemathesis.hook
def flatmap_body(context, body):
    """Up to three positions of a generated JSON body replaced by hostile values (none, at times:
    the schema's own cases stay)."""
    if not isinstance(body, (dict, list)):
        return st.just(body)
    paths = _paths(body)
    if not paths:
        return st.just(body)
    return st.lists(st.tuples(st.sampled_from(paths), HOSTILE), max_size=3).map(
        lambda substitutions: _replace(copy.deepcopy(body), substitutions)
    )
