"""Run, batch and project ids: ``<prefix>_<internal id>``, converted by pure string operations.

Internal ids are 25 characters like the original's cuids (``c`` + 24 lowercase alphanumerics):
a millisecond timestamp in base 36 first, so ids minted later sort later, then random characters.
The id is minted before anything is written, and whichever store receives the run keeps it.
"""

import secrets
import string

from mollifier import clock

_ALPHABET = string.digits + string.ascii_lowercase
_TIME_CHARS = 9  # base-36 milliseconds: enough until the year 5188


def _base36(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 36)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_internal_id(*, now_ms: int | None = None) -> str:
    now_ms = clock.now_ms() if now_ms is None else now_ms
    return "c" + _base36(now_ms, _TIME_CHARS) + "".join(secrets.choice(_ALPHABET) for _ in range(15))


def to_friendly(prefix: str, internal_id: str) -> str:
    return f"{prefix}_{internal_id}"


def from_friendly(prefix: str, friendly_id: str) -> str | None:
    """The internal id of ``<prefix>_<id>``, or None when the prefix does not match."""
    head, sep, internal = friendly_id.partition("_")
    if head != prefix or not sep or not internal or "_" in internal:
        return None
    return internal


RUN, BATCH, PROJECT = "run", "batch", "proj"
