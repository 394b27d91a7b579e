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
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mollifier import breaker, buffer, scripts
from mollifier import client as redis_client
from mollifier.exceptions import BufferUnavailable

logger = logging.getLogger(__name__)

EVERY_S = 1.0
SETTLED_S = 5.0  # Redis answered this long and the effect is not there: it never will be
MAX_NOTES = 10_000  # a long outage under load: past this the oldest are dropped (the claims expire anyway)


@dataclass(eq=False)
class _Note:
    what: str  # for the log, and to note each thing once
    # True: repaired; False: nothing (left) to repair; None: the effect is not there (yet).
    check: Callable[[], bool | None]
    answered_since: float | None = None


_lock = threading.Lock()
_notes: dict[str, _Note] = {}
_thread: threading.Thread | None = None


def release_claim(*, redis_key: str, marker: str) -> None:
    """A claim call's answer was lost: the claim may appear later, held by nobody."""

    def check() -> bool | None:
        return True if scripts.RELEASE(keys=[redis_key], args=[marker], client=redis_client.get()) else None

    _note(_Note(f"claim {redis_key} {marker}", check))


def index_org(org_id: str) -> None:
    """An accept's answer was lost: it may have made the organisation active without indexing it."""

    # As the sweep repairs it. Most often a later accept's answer indexed it already: nothing changes.
    _note(_Note(f"org {org_id}", lambda: buffer.index_if_active(org_id)))


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
        # Noted again (another lost answer for the same claim or organisation): it starts over, so
        # that the later command too has SETTLED_S of answers to land in.
        if note.what not in _notes and len(_notes) >= MAX_NOTES:
            _notes.pop(next(iter(_notes)))
            logger.warning("mollifier.lost_answer.dropped_oldest max=%d", MAX_NOTES)
        _notes[note.what] = note
        if _thread is None:
            _thread = threading.Thread(target=_run, name="mollifier-lost-answers", daemon=True)
            _thread.start()


def _run() -> None:
    global _thread
    try:
        while True:
            time.sleep(EVERY_S)
            # While a breaker is open Redis is known not to answer: no call (each would be counted
            # as a refused request); the breaker's own probe finds out when it answers again.
            if breaker.worst_state() != breaker.State.CLOSED:
                continue
            with _lock:
                notes = list(_notes.values())
            finished = [note for note in notes if _finished(note)]
            with _lock:
                for note in finished:
                    if _notes.get(note.what) is note:  # not noted again meanwhile
                        del _notes[note.what]
                if not _notes:
                    _thread = None  # under the lock: a note added after this starts a new thread
                    return
    except BaseException:
        with _lock:
            _thread = None
        raise


def _finished(note: _Note) -> bool:
    try:
        repaired = note.check()
    except BufferUnavailable as error:
        if redis_client.unanswered(error):
            note.answered_since = None  # still not answering: wait for it
            return False
        repaired = None  # an error reply is an answer: it counts towards settling
    except Exception:
        logger.exception("mollifier.lost_answer.check_failed %s", note.what)
        return True  # a bug, not Redis: do not retry it every second
    if repaired is not None:
        if repaired:
            logger.warning("mollifier.lost_answer.repaired %s", note.what)
        return True
    now = time.monotonic()
    if note.answered_since is None:
        note.answered_since = now
    return now - note.answered_since >= SETTLED_S


def _forget_in_child() -> None:
    """A forked child has no thread of its parent's, and its notes are the parent's to follow."""
    global _lock, _thread
    _lock, _thread = threading.Lock(), None
    _notes.clear()


os.register_at_fork(after_in_child=_forget_in_child)
