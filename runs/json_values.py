"""JSON that both stores can hold and every reader can read back (DESIGN §13).

Python's ``json`` reads ``1e309`` as infinity, keeps lone surrogates (``"\\ud800"``) and NUL in
strings, and nests as deep as the stack allows; Postgres cannot store the surrogates or NUL,
``json.dumps`` writes infinity as ``Infinity`` (which no strict reader accepts), and deep nesting ends
in a RecursionError wherever the value is next serialised. Such values are refused where they come
in — request bodies, JSON payloads, the result of metadata operations — with a 4xx, never stored.
"""

import json
import math
import re
from typing import Any

MAX_DEPTH = 64  # objects and arrays nested deeper than this are refused


class UnsafeJSON(ValueError):
    """A value the stores could not hold or give back; the message says where and why."""


def _reject_constant(name: str):
    raise UnsafeJSON(f"{name} is not valid JSON")


def check(value: Any) -> Any:
    """Raise UnsafeJSON for a value that would not round-trip through Postgres and strict JSON;
    return it unchanged otherwise. Iterative: a deep value cannot exhaust the stack here."""
    stack = [(value, 0, "$")]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, str):
            _check_text(item, path)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise UnsafeJSON(f"{path}: numbers must be finite (not NaN or Infinity)")
        elif isinstance(item, (dict, list)):
            if depth >= MAX_DEPTH:
                raise UnsafeJSON(f"{path}: nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_text(key, f"{path}.{key!r}"[:200])
                    stack.append((child, depth + 1, f"{path}.{key}"[:200]))
            else:
                stack.extend((child, depth + 1, f"{path}[{i}]") for i, child in enumerate(item))
    return value


def _check_text(text: str, path: str) -> None:
    if "\x00" in text:
        raise UnsafeJSON(f"{path}: null characters are not allowed")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafeJSON(f"{path}: lone surrogates (like \\ud800) are not valid Unicode") from None


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e309 reads as infinity
        raise UnsafeJSON("numbers must be finite (1e309 is out of range)")
    return value


# In JSON text, a NUL or a lone surrogate can only arrive as a \u escape (a raw NUL is a control
# character the parser refuses; UTF-8 cannot encode a surrogate). A backslash before the escape
# (an escaped backslash) makes this match too: it only sends the value to the full check.
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])|[\ud800-\udfff]")  # or a str already holding one


def loads(raw: bytes | str) -> Any:
    """Strict ``json.loads`` (no NaN or Infinity, valid UTF-8) of a value that passes ``check``.

    The text decides whether the parsed value needs walking: infinite numbers are refused as they
    are parsed, and without a suspect escape or enough brackets to nest ``MAX_DEPTH`` deep the value
    cannot fail ``check`` (walking a 600-byte payload cost more than parsing it)."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
        if _SUSPECT_ESCAPE.search(text) or text.count("[") + text.count("{") >= MAX_DEPTH:
            check(value)
        return value
    except UnsafeJSON:
        raise
    except (ValueError, RecursionError, UnicodeDecodeError) as error:  # includes the 4,300-digit limit
        raise UnsafeJSON(str(error)[:200]) from None


def dumps(value: Any) -> str:
    """Compact JSON text of a value that passes ``check`` (UnsafeJSON otherwise)."""
    check(value)
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as error:  # an integer past the digit limit, made by an operation
        raise UnsafeJSON(str(error)[:200]) from None
