"""Wait-and-bounce for changes to a run that a drainer holds right now.

A drainer holds an entry for one round (typically tens of milliseconds). A change arriving then is
retried for up to TRIGGER_MID_DRAIN_WAIT_SECONDS; after that the API answers 503, which the SDK retries.
When the drainer has already pinned the entry to its Postgres transaction, that transaction decides:
committed, the run is its row now (the change goes there); rolled back, the run is given back to the
buffer unchanged and the change applies there; still running, the change waits like any other.
Never a wrong answer: the change lands on the entry, or on the row once it is written.

A drainer transaction that outlasts a whole wait is stalled (a frozen drainer holds it until its
lease ends it, 30 s by default), and every change to its runs would hold a web worker for the whole
wait again, SDK retry after SDK retry: a few such changes took the web tier from every tenant. So
the worker remembers it, and for STALLED_PIN_SECONDS answers changes to runs pinned to it at once
while it still runs (one look at its outcome, no wait); once it has ended, they apply as usual.
"""

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from mollifier.buffer import MutateResult, MutateStatus, Pin
from mollifier.clock import now_ms
from mollifier.drainer import settle
from mollifier.sink import Settled, get_sink
from runs import conf
from runs.exceptions import ServiceUnavailable

T = TypeVar("T")
logger = logging.getLogger(__name__)

STALLED_PIN_SECONDS = 10.0
_stalled: dict[str, float] = {}  # this worker's pins that outlasted a whole wait: holder -> until (monotonic)


def retry_while_draining(attempt: Callable[[], T], *, busy: Callable[[T], bool]) -> T:
    deadline = time.monotonic() + conf.mid_drain_wait_seconds()
    while True:
        result = attempt()
        if not busy(result):
            return result
        if time.monotonic() >= deadline:
            raise ServiceUnavailable("Run materialisation timed out")
        time.sleep(conf.mid_drain_poll_seconds() * random.uniform(0.5, 1.5))  # jitter: no lockstep polling


def settle_pin(pin: Pin) -> Settled:
    """What became of the drainer transaction a run is pinned to, settled as a drainer would: a
    committed run is acked (its row is the run now), one that did not commit is given back to the
    buffer, so the caller can retry there."""
    return settle(get_sink(), [pin], now_ms=now_ms()).get(pin.run_id, Settled.RUNNING)


def change_buffered_run(change: Callable[..., MutateResult], *, org_id: str, env_id: str, run_id: str) -> MutateResult:
    """Apply ``change`` (a buffer mutation taking org/env/run ids and now_ms) to a buffered run,
    waiting while a drainer holds it. MATERIALISED or NOT_FOUND mean: the run is its row now."""

    running: list[str] = []  # the pin whose transaction was still running at the last attempt

    def attempt() -> MutateResult:
        running.clear()
        result = change(org_id=org_id, env_id=env_id, run_id=run_id, now_ms=now_ms())
        if result.status != MutateStatus.PINNED:
            return result
        pin = result.pin(org_id=org_id, env_id=env_id, run_id=run_id)
        outcome = settle_pin(pin)
        if outcome == Settled.COMMITTED:
            return MutateResult(MutateStatus.MATERIALISED)
        if outcome == Settled.NOT_COMMITTED:
            return change(org_id=org_id, env_id=env_id, run_id=run_id, now_ms=now_ms())
        if _stalled.get(pin.holder, 0.0) > time.monotonic():  # still running: no wait for it again
            logger.info("runs.mid_drain.stalled_pin run=%s holder=%s", run_id, pin.holder)
            raise ServiceUnavailable("Run materialisation timed out")
        running.append(pin.holder)
        return MutateResult(MutateStatus.BUSY)

    try:
        return retry_while_draining(
            attempt, busy=lambda result: result.status in (MutateStatus.BUSY, MutateStatus.PINNED)
        )
    except ServiceUnavailable:
        if running:  # the whole wait went by with this transaction running: a stalled drainer
            now = time.monotonic()
            for holder in [holder for holder, until in _stalled.items() if until <= now]:
                del _stalled[holder]  # forgotten once past: the memo stays as small as the stalls
            _stalled[running[0]] = now + STALLED_PIN_SECONDS
        raise
