"""TaskRun rows in PostgreSQL's binary COPY format, built in Python.

The drain writes rows with ``COPY … FROM STDIN WITH (FORMAT BINARY)`` (runs/services/materialise.py).
A buffered run's row is encoded once, when it is buffered (``row_prefix``), and kept in the buffer
beside the entry: the drain then writes it as it was stored, adding only the column that says when
(``materialised_at``, the table's last), instead of decoding the entry and building the row again
(half of what the drain cost per row). A run changed while it waits loses its stored row and is
encoded from its entry at the drain, by the same functions.

The format (PostgreSQL's "COPY", binary format): a signature, then per row the number of columns
(int16) and per column its length (int32; -1 for NULL) and its bytes, then an end marker. Each
column's bytes are what the type's receive function reads: big-endian integers, timestamps as
microseconds since 2000-01-01 UTC, jsonb as a version byte and JSON text, arrays as a header and
their elements. Binary COPY does not check what text COPY would (an int4 out of range would be sent
wrapped around, any truthy value as true): a value of the wrong kind raises ``ValueError`` here, the
entry's fault, never a row with other values than the run had.
"""

import json
import re
import struct
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from django.db import connection

from runs.models import TaskRun

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"  # flags, header extension
TRAILER = b"\xff\xff"
NULL = b"\xff\xff\xff\xff"

FIELDS = TaskRun._meta.concrete_fields
ATTRS = tuple(field.attname for field in FIELDS)
COLUMNS = ", ".join(connection.ops.quote_name(str(field.column)) for field in FIELDS)
TYPES = tuple(re.sub(r"\(\d+\)", "", str(field.db_type(connection))) for field in FIELDS)
# A stored row holds every column but the last; the drain adds it when it writes the row.
LAST = "materialised_at"
assert ATTRS[-1] == LAST, "materialised_at must stay TaskRun's last column: stored rows end before it"

_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_VARCHAR_OID = 1043
_int2 = struct.Struct("!h").pack
_int4 = struct.Struct("!i").pack
_int8 = struct.Struct("!q").pack
_field8 = struct.Struct("!iq").pack  # a column of 8 bytes: its length, then its value
_array_1d = struct.Struct("!iiiii").pack  # dimensions, has nulls, element type, length, lower bound


def _text(value, name: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{name}: {value!r} is not text")
    data = value.encode()  # a lone surrogate raises UnicodeEncodeError, a ValueError
    return _int4(len(data)) + data


def _int4_column(value, name: str) -> bytes:
    if type(value) is not int or not -(2**31) <= value < 2**31:
        raise ValueError(f"{name}: {value!r} is not a 32-bit integer")
    return b"\x00\x00\x00\x04" + _int4(value)


def _int8_column(value, name: str) -> bytes:
    if type(value) is not int or not -(2**63) <= value < 2**63:
        raise ValueError(f"{name}: {value!r} is not a 64-bit integer")
    return _field8(8, value)


def _bool(value, name: str) -> bytes:
    if type(value) is not bool:
        raise ValueError(f"{name}: {value!r} is not a boolean")
    return b"\x00\x00\x00\x01\x01" if value else b"\x00\x00\x00\x01\x00"


def _timestamptz(value, name: str) -> bytes:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"{name}: {value!r} is not an aware datetime")
    return _field8(8, (value - _EPOCH) // _MICROSECOND)


def _jsonb(value, name: str) -> bytes:
    data = b"\x01" + json.dumps(value).encode()  # version 1, then the text (as psycopg's Jsonb sends it)
    return _int4(len(data)) + data


def _varchar_array(value, name: str) -> bytes:
    if not isinstance(value, list | tuple):
        raise ValueError(f"{name}: {value!r} is not a list")
    if not value:
        return _int4(12) + _int4(0) + _int4(0) + _int4(_VARCHAR_OID)
    parts = [_text(item, name) if item is not None else NULL for item in value]
    body = _array_1d(1, int(None in value), _VARCHAR_OID, len(value), 1) + b"".join(parts)
    return _int4(len(body)) + body


_ENCODERS: dict[str, Callable[[object, str], bytes]] = {
    "varchar": _text,
    "text": _text,
    "integer": _int4_column,
    "bigint": _int8_column,
    "boolean": _bool,
    "timestamp with time zone": _timestamptz,
    "jsonb": _jsonb,
    "varchar[]": _varchar_array,
}
_COLUMN_ENCODERS = tuple((_ENCODERS[kind], name) for kind, name in zip(TYPES, ATTRS, strict=True))
_COUNT = _int2(len(FIELDS))
# A stored row starts with its layout's checksum: a row stored before a migration changed the
# columns (or before ROW_VERSION changed) is not written as it was stored, but built again from its
# entry. Raise ROW_VERSION when what a row is built from changes (runs.snapshots.entry_values).
ROW_VERSION = 1
_DECLARED = [field.db_type(connection) for field in FIELDS]  # varchar lengths too
LAYOUT = _int4(zlib.crc32(f"{ROW_VERSION}|{COLUMNS}|{'|'.join(map(str, _DECLARED))}".encode()) - 2**31)


def _prefix_parts(values: dict) -> list[bytes]:
    """The column count, then each column before ``materialised_at`` (its length and bytes)."""
    parts = [_COUNT]
    for (encode, name), value in zip(_COLUMN_ENCODERS[:-1], map(values.__getitem__, ATTRS[:-1]), strict=True):
        parts.append(NULL if value is None else encode(value, name))
    return parts


def row_prefix(values: dict) -> bytes:
    """A row (every TaskRun column by attname in ``values``) without its last column: the column
    count and every column before ``materialised_at``. Raises ValueError for a value its column
    cannot hold."""
    return b"".join(_prefix_parts(values))


_PAYLOAD = 1 + ATTRS.index("payload")  # its part in _prefix_parts, after the column count


def stored_row(values: dict) -> tuple[bytes, tuple[int, int] | None]:
    """What the buffer keeps of a run's row: its layout, then ``row_prefix``; and where in it the
    payload's text is (start, end), None for no payload. The buffer keeps the payload there only,
    not in the snapshot too (mollifier/codec.py)."""
    parts = _prefix_parts(values)
    row = b"".join((LAYOUT, *parts))
    if values["payload"] is None:
        return row, None
    start = len(LAYOUT) + sum(map(len, parts[:_PAYLOAD])) + 4  # past its own length
    return row, (start, start + len(parts[_PAYLOAD]) - 4)


def prefix_of(stored: bytes | None) -> bytes | None:
    """The ``row_prefix`` of a stored row, or None when there is none, or it has another layout."""
    if not stored or stored[:4] != LAYOUT:
        return None
    return stored[4:]


def last_column(value: datetime | None) -> bytes:
    """The bytes that end a row from ``row_prefix``: its ``materialised_at``."""
    return NULL if value is None else _timestamptz(value, LAST)


def copy_data(prefixes: list[bytes], last: bytes) -> bytes:
    """A whole binary COPY stream: each row's prefix, each ended by the same ``last`` column."""
    parts = [SIGNATURE]
    for prefix in prefixes:
        parts += (prefix, last)
    parts.append(TRAILER)
    return b"".join(parts)
