"""A buffered run in Python (``Entry``) and as the fields of its Redis hash.

The ``snapshot`` is what the caller needs to write the row later; the mollifier never looks inside
it, but for one convention: a string ``payload`` is stored after the JSON of the rest, not inside it
(see ``snapshot_text``). It is written once (LZ4-compressed from SNAPSHOT_COMPRESS_AT bytes), in a
string key of its own, and never rewritten by Lua, so it round-trips exactly (empty lists stay lists,
integers of any size stay exact). The fields a run may change while it waits (tags, metadata, delay,
cancel, the idempotency key) live in the entry's hash, which stays small (Redis keeps small hashes
compact).
"""

import json
import zlib
from dataclasses import dataclass, field

import lz4.block
import orjson


@dataclass(kw_only=True, slots=True)  # not frozen: frozen dataclasses are slow to build, and the drainer builds many
class Entry:
    run_id: str  # friendly id (run_…), as the caller was answered
    org_id: str
    env_id: str
    task: str
    accepted_at_ms: int
    snapshot: dict | None  # None when the stored JSON cannot be read (a poison entry)
    tags: list[str] = field(default_factory=list)
    metadata: str | None = None
    metadata_type: str | None = None
    delay_until_ms: int | None = None
    idempotency_key: str | None = None
    idempotency_expires_ms: int | None = None
    batch_id: str | None = None
    batch_index: int | None = None
    request_key: str | None = None  # the SDK's request idempotency key of the trigger that made it
    # State kept by the buffer.
    attempts: int = 0
    metadata_version: int = 0
    cancelled_at_ms: int | None = None
    cancel_reason: str | None = None
    last_error: dict | None = None
    terminal_error: dict | None = None  # set by fail(): the next drain writes a failure row
    materialised: bool = False
    parked_at_ms: int | None = None  # no row could be written: waiting for an operator
    raw_snapshot: str = ""
    lease: str = ""  # the drainer's lease token (set by pop), or a resolver's exact `token:txid`
    # The row the caller encoded when the run was buffered, for the drain to write as is (keys.row),
    # and where in it the snapshot's payload text is (start, end): the buffer then keeps the payload
    # there only. An entry the drain read from its stored row alone (from_row) has its envelope
    # only: no snapshot, tags or state. Whatever needs more reads the whole entry (buffer.get_many).
    row: bytes | None = None
    row_payload: tuple[int, int] | None = None


SNAPSHOT_COMPRESS_AT = 256  # bytes of text; smaller snapshots gain nothing from compression
LZ4 = b"\x01"  # first byte of an LZ4-compressed snapshot (JSON starts with "{"; zlib, of earlier versions, with 0x78)
# First byte of a snapshot whose payload is kept in the entry's stored row (read.lua reads the row
# for such a snapshot only); the snapshot as usual follows.
PAYLOAD_IN_ROW = b"\x02"
ROW_STALE = b"!"  # a stored row's first byte once its run changed (mutate.lua, fail.lua, reset_idempotency.lua)


def _json(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def snapshot_text(snapshot: dict) -> str:
    """The snapshot as stored: its JSON, with a string ``payload`` after a newline instead of inside
    it. The SDK's payload is itself JSON text: escaped inside JSON it made reading a snapshot back
    cost twice as much. Compact JSON never holds a raw newline, so the first one ends it."""
    payload = snapshot.get("payload")
    if not isinstance(payload, str):
        return _json(snapshot)
    return _json({name: value for name, value in snapshot.items() if name != "payload"}) + "\n" + payload


def read_snapshot_text(text: str) -> dict | None:
    """The snapshot of ``snapshot_text`` (or of a plain JSON snapshot, as earlier versions stored
    them); None when unreadable."""
    head, newline, payload = text.partition("\n")
    snapshot = _loads(head)
    if not isinstance(snapshot, dict):
        return None
    if newline:
        snapshot["payload"] = payload
    return snapshot


def to_fields(entry: Entry) -> list[str]:
    """Flat field/value pairs for HSET (optional fields only when set)."""
    fields = {
        "run": entry.run_id,
        "org": entry.org_id,
        "env": entry.env_id,
        "task": entry.task,
        "accepted_at_ms": str(entry.accepted_at_ms),
        "attempts": str(entry.attempts),
        "metadata_version": str(entry.metadata_version),
        "tags": _json(list(entry.tags)),
    }
    optional = {
        "metadata": entry.metadata,
        "metadata_type": entry.metadata_type,
        "delay_until_ms": entry.delay_until_ms,
        "idem_key": entry.idempotency_key,
        "idem_expires_ms": entry.idempotency_expires_ms,
        "batch_id": entry.batch_id,
        "batch_index": entry.batch_index,
        "req": entry.request_key,
        "cancelled_at_ms": entry.cancelled_at_ms,
        "cancel_reason": entry.cancel_reason,
    }
    fields.update({name: str(value) for name, value in optional.items() if value is not None})
    return [part for pair in fields.items() for part in pair]


def pack_stored(entry: Entry) -> tuple[bytes, bytes]:
    """The entry's snapshot and stored row as the buffer keeps them (b"" for no row). A string
    payload that the row holds is kept there only: the snapshot leaves it out (PAYLOAD_IN_ROW)."""
    row = _pack_row(entry)
    payload = (entry.snapshot or {}).get("payload")
    if row and entry.row and entry.row_payload and not entry.raw_snapshot and isinstance(payload, str):
        start, end = entry.row_payload
        if entry.row[start:end] == payload.encode():
            rest = {name: value for name, value in (entry.snapshot or {}).items() if name != "payload"}
            return PAYLOAD_IN_ROW + _compressed(_json(rest).encode()), row
    return _compressed((entry.raw_snapshot or snapshot_text(entry.snapshot or {})).encode()), row


def _compressed(raw: bytes) -> bytes:
    # LZ4, not zlib: a third bigger, but 6× faster to compress (the trigger) and 7× to decompress (the drain).
    return LZ4 + lz4.block.compress(raw, store_size=True) if len(raw) >= SNAPSHOT_COMPRESS_AT else raw


def unpack_snapshot(stored) -> str:
    """The snapshot's stored text ('' when absent), without a payload kept in the row; unreadable
    bytes come back as text, for the reader to refuse and for operators to see."""
    if not stored:
        return ""
    if isinstance(stored, str):
        return stored.removeprefix("\x02")
    if stored[:1] == PAYLOAD_IN_ROW:
        stored = stored[1:]
    try:
        if stored[:1] == LZ4:
            stored = lz4.block.decompress(stored[1:])
        elif stored[:1] != b"{":  # zlib: an entry buffered by an earlier version
            stored = zlib.decompress(stored)
    except (lz4.block.LZ4BlockError, zlib.error, ValueError, MemoryError):
        pass
    return stored.decode("utf-8", "replace")


def _pack_row(entry: Entry) -> bytes:
    """What keys.row holds: the envelope the drain needs and where the payload is (JSON, one line),
    a newline, then the row (LZ4-compressed from SNAPSHOT_COMPRESS_AT bytes, tag "z"; else tag "r");
    or b"" when there is no row to store."""
    if not entry.row:
        return b""
    start, end = entry.row_payload or (None, None)
    try:
        head = orjson.dumps(
            [
                entry.task,
                entry.accepted_at_ms,
                entry.delay_until_ms,
                entry.idempotency_key,
                entry.batch_id,
                entry.batch_index,
                start,
                end,
            ]
        )
    except TypeError:  # text orjson refuses (a lone surrogate): the drain reads the whole entry
        return b""
    if len(entry.row) >= SNAPSHOT_COMPRESS_AT:
        return head + b"\nz" + lz4.block.compress(entry.row, store_size=True)
    return head + b"\nr" + entry.row


def _unpack_row(stored) -> tuple[list, bytes, bool] | None:
    """The envelope, the row and whether the run changed since (ROW_STALE) of a stored row; None
    when unreadable."""
    if not stored:
        return None
    head, newline, rest = bytes(stored).partition(b"\n")  # compact JSON holds no raw newline
    stale = head[:1] == ROW_STALE
    try:
        envelope = orjson.loads(b"[" + head[1:] if stale else head)
        if rest[:1] == b"z":
            row = lz4.block.decompress(rest[1:])
        elif rest[:1] == b"r":
            row = rest[1:]
        else:
            return None
    except (orjson.JSONDecodeError, lz4.block.LZ4BlockError, ValueError, MemoryError):
        return None
    if not newline or not isinstance(envelope, list) or len(envelope) != 8:
        return None
    return envelope, row, stale


def from_row(stored: bytes, *, run_id: str, org_id: str, env_id: str) -> Entry | None:
    """The entry, envelope only, with its row, for the drain; None when the run changed since
    its row was stored, or the row is unreadable."""
    unpacked = _unpack_row(stored)
    if unpacked is None or unpacked[2]:
        return None
    (task, accepted_at_ms, delay_until_ms, idempotency_key, batch_id, batch_index, _, _), row, _ = unpacked
    if not isinstance(task, str) or type(accepted_at_ms) is not int:
        return None
    return Entry(
        run_id=run_id,
        org_id=org_id,
        env_id=env_id,
        task=task,
        accepted_at_ms=accepted_at_ms,
        snapshot=None,
        delay_until_ms=delay_until_ms,
        idempotency_key=idempotency_key,
        batch_id=batch_id,
        batch_index=batch_index,
        row=row,
    )


def _payload_from_row(stored) -> str | None:
    unpacked = _unpack_row(stored)
    if unpacked is None:
        return None
    (*_, start, end), row, _ = unpacked
    if type(start) is not int or type(end) is not int or not 0 <= start <= end <= len(row):
        return None
    try:
        return row[start:end].decode()
    except UnicodeDecodeError:
        return None


def _int(value) -> int | None:
    try:
        return int(value) if value not in (None, b"", "") else None
    except ValueError:
        return None


# A run of 19 digits may be an integer past 64 bits, which orjson reads as a float: json keeps it exact.
# Found by mapping every digit to "0" and everything else to " ": a tenth of what a regex took.
_DIGITS_AS_ZEROS = bytes(ord("0") if ord("0") <= i <= ord("9") else ord(" ") for i in range(256))
_LONG_NUMBER = b"0" * 19


def _loads(value):
    if not value:
        return None
    encoded = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
    if _LONG_NUMBER not in encoded.translate(_DIGITS_AS_ZEROS):
        try:
            # orjson: a third of json's time for a snapshot's head. What it refuses (lone
            # surrogates, NaN) json reads as it always did.
            return orjson.loads(value)  # bytes or str
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(value)
    except ValueError:
        return None


def as_text(value) -> str:
    """A Redis reply value (bytes, or str from a decoding client) as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _tags(value) -> list[str]:
    tags = _loads(value)
    # Lua's cjson writes an empty array as {}: anything but a list of strings reads as no tags.
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


# The hash fields an Entry is read from, in the order read.lua returns them (HMGET: values only, no
# field names to decode, no dict to build per entry).
ENTRY_FIELDS = (
    "run",
    "org",
    "env",
    "task",
    "accepted_at_ms",
    "tags",
    "metadata",
    "metadata_type",
    "delay_until_ms",
    "idem_key",
    "idem_expires_ms",
    "batch_id",
    "batch_index",
    "req",
    "attempts",
    "metadata_version",
    "cancelled_at_ms",
    "cancel_reason",
    "last_error",
    "terminal_error",
    "materialised",
    "parked_at_ms",
)


def from_values(values: list, stored_snapshot=None, stored_row=None) -> Entry | None:
    """The Entry for the values of ENTRY_FIELDS (bytes or str, None where absent), its stored
    snapshot and its stored row (read for a snapshot whose payload is there), or None for an empty
    or foreign hash.

    Hot in the drainer: values are decoded only where a string is needed (json and int read bytes).
    """
    (
        run,
        org,
        env,
        task,
        accepted_at_ms,
        tags,
        metadata,
        metadata_type,
        delay_until_ms,
        idem_key,
        idem_expires_ms,
        batch_id,
        batch_index,
        req,
        attempts,
        metadata_version,
        cancelled_at_ms,
        cancel_reason,
        last_error,
        terminal_error,
        materialised,
        parked_at_ms,
    ) = values
    if not run or not env or not org:
        return None
    raw_snapshot = unpack_snapshot(stored_snapshot)
    snapshot = read_snapshot_text(raw_snapshot) if raw_snapshot else None
    if snapshot is not None and stored_snapshot[:1] in (PAYLOAD_IN_ROW, "\x02"):
        payload = _payload_from_row(stored_row)
        if payload is None:  # the row that holds it is gone or damaged: the snapshot is unreadable
            snapshot = None
        else:
            snapshot["payload"] = payload
            raw_snapshot = ""  # not the whole snapshot: pack_stored builds it again from ``snapshot``
    # Most optional fields are absent: tested inline, a call each for those only (a tenth of the cost).
    return Entry(
        run_id=as_text(run),
        org_id=as_text(org),
        env_id=as_text(env),
        task=as_text(task) if task else "",
        accepted_at_ms=_int(accepted_at_ms) or 0,
        snapshot=snapshot,
        tags=_tags(tags) if tags else [],
        metadata=None if metadata is None else as_text(metadata),
        metadata_type=None if metadata_type is None else as_text(metadata_type),
        delay_until_ms=_int(delay_until_ms) if delay_until_ms else None,
        idempotency_key=as_text(idem_key) if idem_key else None,
        idempotency_expires_ms=_int(idem_expires_ms) if idem_expires_ms else None,
        batch_id=as_text(batch_id) if batch_id else None,
        batch_index=_int(batch_index) if batch_index else None,
        request_key=as_text(req) if req else None,
        attempts=_int(attempts) or 0,
        metadata_version=_int(metadata_version) or 0,
        cancelled_at_ms=_int(cancelled_at_ms) if cancelled_at_ms else None,
        cancel_reason=None if cancel_reason is None else as_text(cancel_reason),
        last_error=_loads(last_error) if last_error else None,
        terminal_error=_loads(terminal_error) if terminal_error else None,
        materialised=materialised in (b"1", "1"),
        parked_at_ms=_int(parked_at_ms) if parked_at_ms else None,
        raw_snapshot=raw_snapshot,
    )


def error_json(code: str, message: str) -> str:
    # ASCII-escaped: an error message may quote input that is not valid UTF-8 on its own.
    return json.dumps({"code": code, "message": message[:4000]}, separators=(",", ":"))
