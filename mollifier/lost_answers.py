"""Follow-ups for Redis calls whose answer was lost.

A call that times out (Redis hung, a connection cut after the command left) may still run when Redis
reads again: its effects land, but its caller never saw them and went on as if they had not (the
trigger failed open, or answered 503). Two such effects would stay wrong for a while:

- a claim (``pending:<token>``, mollifier/claims.py) that no trigger holds any more: every trigger
  with that idempotency key would wait on it, then answer 503, until it expired (up to
  MOLLIFIER_CLAIM_TTL seconds: more than the SDK's retries last);
- an organisation made active by an accept whose answer was lost: the answer carried the generation
  to index it with, so it is not in the organisations index, and no drainer sees its runs (later
  accepts do not index it: for them it is already active) until the sweep repairs the index.

The process that lost the answer notes what to check here; one daemon thread checks each note every
second until it is done (the claim released, by its own token; the organisation indexed, when it
has work) or Redis has answered for ``SETTLED_S`` without the effect appearing: a command still
queued in a hung Redis runs within moments of Redis reading again. The sweep still repairs the index
if this process dies first.
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mollifier import client as redis_client
from mollifier import keys, scripts
from mollifier.exceptions import BufferUnavailable

logger = logging.getLogger(__name__)

EVERY_S = 1.0
SETTLED_S = 5.0  # Redis answered this long and the effect is not there: it never will be
MAX_NOTES = 10_000  # a long outage under load: past this the oldest are dropped (the claims expire anyway)


@dataclass(eq=False)
class _Note:
    what: str  # for the log, and to note each thing once
    check: Callable[[], bool]  # True when done; raises BufferUnavailable while Redis does not answer
    answered_since: float | None = None


_lock = threading.Lock()
_notes: dict[str, _Note] = {}
_thread: threading.Thread | None = None


def release_claim(*, redis_key: str, marker: str) -> None:
    """A claim call's answer was lost: the claim may appear later, held by nobody."""

    def check() -> bool:
        return bool(scripts.RELEASE(keys=[redis_key], args=[marker], client=redis_client.get()))

    _note(_Note(f"claim {redis_key} {marker}", check))


def index_org(org_id: str) -> None:
    """An accept's answer was lost: it may have made the organisation active without indexing it."""

    def check() -> bool:
        redis = redis_client.get()
        if not redis.scard(keys.envs(org_id)):
            return False
        # As the sweep does: ZADD GT with the organisation's generation (see org_unindex.lua).
        redis.zadd(keys.orgs(), {org_id: int(redis.hget(keys.stats(org_id), "gen") or 0)}, gt=True)
        return True

    _note(_Note(f"org {org_id}", check))


def pending() -> int:
    with _lock:
        return len(_notes)


def clear() -> None:
    """Forget every note (tests: one test's lost answers must not act in the next's Redis)."""
    with _lock:
        _notes.clear()


def _note(note: _Note) -> None:
    global _thread
    with _lock:
        if note.what in _notes:
            return
        if len(_notes) >= MAX_NOTES:
            _notes.pop(next(iter(_notes)))
            logger.warning("mollifier.lost_answer.dropped_oldest max=%d", MAX_NOTES)
        _notes[note.what] = note
        if _thread is None:
            _thread = threading.Thread(target=_run, name="mollifier-lost-answers", daemon=True)
            _thread.start()


def _run() -> None:
    global _thread
    while True:
        time.sleep(EVERY_S)
        with _lock:
            notes = list(_notes.values())
        finished = [note for note in notes if _finished(note)]
        with _lock:
            for note in finished:
                if _notes.get(note.what) is note:
                    del _notes[note.what]
            if not _notes:
                _thread = None
                return


def _finished(note: _Note) -> bool:
    try:
        if note.check():
            logger.warning("mollifier.lost_answer.repaired %s", note.what)
            return True
    except BufferUnavailable:
        note.answered_since = None  # still not answering: wait for it
        return False
    except Exception:
        logger.exception("mollifier.lost_answer.check_failed %s", note.what)
        return True  # a bug, not Redis: do not retry it every second
    now = time.monotonic()
    if note.answered_since is None:
        note.answered_since = now
    return now - note.answered_since >= SETTLED_S
