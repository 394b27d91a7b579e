"""The drainer's sink: what turns buffer entries into rows, and settles pinned transactions.

Named by dotted path to a class in ``MOLLIFIER["SINK"]`` (the Django way: like a storage or cache
backend), so the mollifier never imports the app that owns the rows. Contract:

``write(entries, pin, last_resort=False) -> SinkReport``
    Inside one database transaction: first call ``pin(txid)`` with the transaction's id; it fences
    the entries to that transaction in the buffer and returns the run ids still held by this
    drainer. Write only those (their intended row, or a SYSTEM_FAILURE row that says why not), then
    commit. Entries not returned by ``pin`` were taken back after their lease expired and may have
    changed since: writing them would overwrite what the API acknowledged. With ``last_resort``,
    a terminal entry is written as a minimal failure row (ids and the reason only). Raise
    SinkUnavailable when the database cannot be reached, any other exception when some entry cannot
    be written (the drainer then retries entry by entry).

``idle() -> None``
    The drain has nothing left to write for now (called once after rounds that wrote, when a
    drainer stops, and by each sweep): finish what a round's transaction could not see before its
    commit, and what the buffer no longer needs (TaskRunSink: keyed markers). Never raises for the
    database.

``settle(pins, lapsed=False) -> {run_id: Settled}``
    What became of the transactions that pinned these runs: committed (the rows exist), not
    committed (rolled back), or still running. Raises SinkUnavailable when it cannot tell. With
    ``lapsed`` (the pins' leases have lapsed: found by a drainer's lease or the sweep), first end a
    transaction whose drainer stalled mid-write, which the database's own timeouts do not end.

``answers() -> bool``
    Does the database answer a trivial query right now? Asked about once a second while the
    drainer waits after a SinkUnavailable that was not ``answered`` (the database refused or did
    not answer), so that the drain starts again as soon as it is back. Never raises.
"""

import enum
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Protocol

from django.utils.module_loading import import_string

from mollifier import buffer, conf
from mollifier.codec import Entry


@dataclass(frozen=True)
class SinkReport:
    inserted: int = 0  # rows written as intended (QUEUED, DELAYED, CANCELED)
    already: int = 0  # rows that existed with the same id: an earlier drain wrote them
    failed: int = 0  # SYSTEM_FAILURE rows written instead (key taken meanwhile, terminal entries)
    dropped: int = 0  # entries whose environment no longer exists (nothing to attach a row to)
    fenced: int = 0  # entries not written: the lease was taken back before the pin

    def __add__(self, other: "SinkReport") -> "SinkReport":
        return SinkReport(*(a + b for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def astuple(self) -> tuple[int, int, int, int, int]:
        return (self.inserted, self.already, self.failed, self.dropped, self.fenced)


OUTCOMES = tuple(item.name for item in fields(SinkReport))  # also the drained-rows metric's labels


class Settled(enum.StrEnum):
    COMMITTED = "committed"
    NOT_COMMITTED = "not_committed"
    RUNNING = "running"


Pin = Callable[[str], set[str]]


class Sink(Protocol):
    def write(self, entries: list[Entry], *, pin: Pin, last_resort: bool = False) -> SinkReport: ...

    def idle(self) -> None: ...

    def settle(self, pins: list[buffer.Pin], *, lapsed: bool = False) -> dict[str, Settled]: ...

    def answers(self) -> bool: ...


@lru_cache(maxsize=4)
def _load(path: str) -> Sink:
    return import_string(path)()


def get_sink() -> Sink:
    return _load(conf.sink_path())
