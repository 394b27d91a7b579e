"""Wait-and-bounce for changes to a run that a drainer holds right now.

A drainer holds an entry for one round (typically tens of milliseconds). A change arriving then is
retried for up to TRIGGER_MID_DRAIN_WAIT_SECONDS; after that the API answers 503, which the SDK retries.
When the drainer has already pinned the entry to its Postgres transaction, that transaction decides:
committed, the run is its row now (the change goes there); rolled back, the run is given back to the
buffer unchanged and the change applies there; still running, the change waits like any other.
Never a wrong answer: the change lands on the entry, or on the row once it is written.

A drainer transaction that this worker saw running a whole wait before the present change began is
stalled (a frozen drainer holds it until its lease ends it, 30 s by default). Waiting for it again
would hold a web worker for the whole wait, SDK retry after SDK retry: a few such changes took the
web tier from every tenant. So a change that finds it still running answers 503 at once; once it has
ended, changes apply as usual.
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

FORGET_AFTER_SECONDS = 3600.0  # a pin seen running this long ago and not since: its transaction is gone
_running_since: dict[str, float] = {}  # this worker's view: pin holder -> when first seen running (monotonic)


def retry_while_draining(attempt: Callable[[float], T], *, busy: Callable[[T], bool]) -> T:
    """Call ``attempt(started)`` (``started``: when this wait began, for ``settle_pin``) until it is
    not ``busy``, for up to the mid-drain wait; then 503."""
    started = time.monotonic()
    deadline = started + conf.mid_drain_wait_seconds()
    while True:
        result = attempt(started)
        if not busy(result):
            return result
        if time.monotonic() >= deadline:
            raise ServiceUnavailable("Run materialisation timed out")
        time.sleep(conf.mid_drain_poll_seconds() * random.uniform(0.5, 1.5))  # jitter: no lockstep polling


def settle_pin(pin: Pin, *, waiting_since: float | None = None) -> Settled:
    """What became of the drainer transaction a run is pinned to, settled as a drainer would: a
    committed run is acked (its row is the run now), one that did not commit is given back to the
    buffer, so the caller can retry there. Still running a whole wait before ``waiting_since`` (when
    a change's wait began): the drainer is stalled, ServiceUnavailable at once."""
    outcome = settle(get_sink(), [pin], now_ms=now_ms()).get(pin.run_id, Settled.RUNNING)
    now = time.monotonic()
    if outcome != Settled.RUNNING:
        _running_since.pop(pin.holder, None)
        return outcome
    if pin.holder not in _running_since:
        for holder in [holder for holder, since in _running_since.items() if since < now - FORGET_AFTER_SECONDS]:
            del _running_since[holder]
        _running_since[pin.holder] = now
    if waiting_since is not None and _running_since[pin.holder] + conf.mid_drain_wait_seconds() <= waiting_since:
        logger.info("runs.mid_drain.stalled_pin run=%s holder=%s", pin.run_id, pin.holder)
        raise ServiceUnavailable("Run materialisation timed out")
    return outcome


def change_buffered_run(change: Callable[..., MutateResult], *, org_id: str, env_id: str, run_id: str) -> MutateResult:
    """Apply ``change`` (a buffer mutation taking org/env/run ids and now_ms) to a buffered run,
    waiting while a drainer holds it. MATERIALISED or NOT_FOUND mean: the run is its row now."""

    def attempt(started: float) -> MutateResult:
        result = change(org_id=org_id, env_id=env_id, run_id=run_id, now_ms=now_ms())
        if result.status != MutateStatus.PINNED:
            return result
        outcome = settle_pin(result.pin(org_id=org_id, env_id=env_id, run_id=run_id), waiting_since=started)
        if outcome == Settled.COMMITTED:
            return MutateResult(MutateStatus.MATERIALISED)
        if outcome == Settled.NOT_COMMITTED:
            return change(org_id=org_id, env_id=env_id, run_id=run_id, now_ms=now_ms())
        return MutateResult(MutateStatus.BUSY)

    return retry_while_draining(attempt, busy=lambda result: result.status in (MutateStatus.BUSY, MutateStatus.PINNED))
