"""The drainer's sink: the function that turns buffer entries into rows.

Named by dotted path in ``MOLLIFIER["SINK"]`` (the Django way), so the mollifier never imports the
app that owns the rows. Contract: ``sink(entries) -> SinkReport``. The sink writes every entry (its
intended row, or a SYSTEM_FAILURE row that says why not) in one transaction and returns; or raises
SinkUnavailable when its database cannot be reached (the round is retried with backoff), or any
other exception when some entry cannot be written (the drainer then retries entry by entry and marks
the ones that keep failing terminal).
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from django.utils.module_loading import import_string

from mollifier import conf
from mollifier.codec import Entry


@dataclass(frozen=True)
class SinkReport:
    inserted: int = 0  # rows written as intended (QUEUED, DELAYED, CANCELED)
    already: int = 0  # rows that existed with the same id: an earlier drain wrote them
    failed: int = 0  # SYSTEM_FAILURE rows written instead (key taken meanwhile, terminal entries)
    dropped: int = 0  # entries whose environment no longer exists (nothing to attach a row to)

    def __add__(self, other: "SinkReport") -> "SinkReport":
        return SinkReport(*(a + b for a, b in zip(self.astuple(), other.astuple())))

    def astuple(self) -> tuple[int, int, int, int]:
        return (self.inserted, self.already, self.failed, self.dropped)


Sink = Callable[[list[Entry]], SinkReport]


@lru_cache(maxsize=4)
def _load(path: str) -> Sink:
    return import_string(path)


def get_sink() -> Sink:
    return _load(conf.sink_path())
