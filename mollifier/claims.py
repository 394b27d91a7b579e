"""The pre-gate idempotency claim: one trigger at a time per (environment, task, key).

Why: during the burst that trips the gate, the first same-key triggers go to Postgres and later
ones to the buffer; each store dedupes only itself. The claim serialises them across both stores.
The holder owns ``pending:<token>``; only that token can publish (the run id, for the callers that
waited) or release it, so a holder whose claim expired cannot touch the next owner's.

When Redis cannot be reached the outcome is ``unavailable``, and the trigger path answers 503 for a
key Postgres does not hold: a run waiting in the buffer may hold it, and a row written now would be
a second run for the key. (Triggers without a key still fail open, straight to Postgres.)
"""

import enum
import logging
import math
import random
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mollifier import client as redis_client
from mollifier import conf, keys, lost_answers, metrics, scripts
from mollifier.breaker import BreakerOpen
from mollifier.codec import as_text
from mollifier.exceptions import BufferUnavailable, ClaimTimeout

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    org_id: str
    env_id: str
    task: str
    key: str
    marker: str  # pending:<token>
    publish_ttl: int  # seconds the published run id stays readable

    @property
    def redis_key(self) -> str:
        return keys.claim(self.org_id, self.env_id, self.task, self.key)


class ClaimKind(enum.StrEnum):
    CLAIMED = "claimed"  # ours: the caller makes the run
    BUFFERED = "buffered"  # a buffered run holds the key: ``run_id``
    RESOLVED = "resolved"  # another trigger made the run and published it: ``run_id``
    UNAVAILABLE = "unavailable"  # Redis did not answer: no claim (fail open)


@dataclass(frozen=True)
class ClaimOutcome:
    kind: ClaimKind
    run_id: str = ""
    claim: Claim | None = None


def claim_ttl_seconds(*, now_ms: int, key_expires_ms: int | None) -> int:
    """The customer's key lifetime, floored so the claim outlives a trigger, capped at CLAIM_TTL."""
    cap, floor = conf.claim_ttl_seconds(), conf.claim_min_ttl_seconds()
    if key_expires_ms is None:
        return cap
    return min(cap, max(floor, math.ceil((key_expires_ms - now_ms) / 1000)))


def acquire(*, org_id: str, env_id: str, task: str, key: str, key_expires_ms: int | None, now_ms: int) -> ClaimOutcome:
    """Claim the key, or find who holds it. Waits (polling) while another trigger holds the claim.

    Raises ClaimTimeout after CLAIM_WAIT_MS of waiting; the API answers 503, which the SDK retries.
    """
    ttl = claim_ttl_seconds(now_ms=now_ms, key_expires_ms=key_expires_ms)
    claim = Claim(org_id, env_id, task, key, f"pending:{uuid.uuid4().hex}", ttl)
    redis_keys = [claim.redis_key, keys.idempotency(org_id, env_id, task, key)]
    deadline = time.monotonic() + conf.claim_wait_ms() / 1000
    poll = conf.claim_poll_ms() / 1000
    try:
        redis = redis_client.get()
        while True:
            reply = scripts.CLAIM(keys=redis_keys, args=[claim.marker, ttl], client=redis)
            kind = as_text(reply[0])
            if kind == ClaimKind.CLAIMED:
                metrics.CLAIM_OUTCOMES.labels(outcome=kind).inc()
                return ClaimOutcome(ClaimKind.CLAIMED, claim=claim)
            if kind in (ClaimKind.BUFFERED, ClaimKind.RESOLVED):
                metrics.CLAIM_OUTCOMES.labels(outcome=kind).inc()
                return ClaimOutcome(ClaimKind(kind), as_text(reply[1]))
            if time.monotonic() >= deadline:
                metrics.CLAIM_OUTCOMES.labels(outcome="timeout").inc()
                raise ClaimTimeout(f"Idempotency claim resolution timed out for key {key!r}")
            time.sleep(poll * random.uniform(0.5, 1.5))  # jitter: waiters do not poll in lockstep
    except BufferUnavailable as error:
        if isinstance(error, BreakerOpen):  # known already, and once per trigger: no traceback
            logger.debug("mollifier.claim.breaker_open org=%s env=%s", org_id, env_id)
        else:
            logger.warning("mollifier.claim.redis_unavailable org=%s env=%s error=%s", org_id, env_id, error)
            _lost(claim)  # a hung Redis may still run the claim once it reads again, for nobody
        metrics.CLAIM_OUTCOMES.labels(outcome=ClaimKind.UNAVAILABLE).inc()
        return ClaimOutcome(ClaimKind.UNAVAILABLE)


def _lost(claim: Claim) -> None:
    """A call on ``claim`` got no answer: release it once Redis answers (mollifier/lost_answers.py)."""
    lost_answers.release_claim(redis_key=claim.redis_key, marker=claim.marker)


def publish(claim: Claim, run_id: str) -> bool:
    """Hand the claim's waiters our run id. False when the claim was no longer ours (or Redis failed)."""
    try:
        published = bool(
            scripts.PUBLISH(
                keys=[claim.redis_key], args=[claim.marker, run_id, claim.publish_ttl], client=redis_client.get()
            )
        )
    except BufferUnavailable as error:
        logger.warning("mollifier.claim.publish_failed org=%s error=%s", claim.org_id, error)
        if not isinstance(error, BreakerOpen):
            _lost(claim)  # a publish that landed late is left alone: the release compares the token
        return False
    if not published:
        logger.warning("mollifier.claim.lost org=%s env=%s run=%s", claim.org_id, claim.env_id, run_id)
    return published


def release(claim: Claim) -> bool:
    """Let the next trigger claim (after ours failed). Never deletes another owner's claim."""
    try:
        return bool(scripts.RELEASE(keys=[claim.redis_key], args=[claim.marker], client=redis_client.get()))
    except BufferUnavailable as error:
        logger.warning("mollifier.claim.release_failed org=%s error=%s", claim.org_id, error)
        _lost(claim)  # the claim is still ours to release, and nobody else will
        return False


class Held:
    """The claim of one trigger, while it makes its run (``held``)."""

    def __init__(self, outcome: ClaimOutcome):
        self.outcome = outcome
        self.published = False

    @property
    def claim(self) -> Claim | None:
        return self.outcome.claim

    def publish(self, run_id: str) -> None:
        if self.claim is not None:
            self.published = publish(self.claim, run_id)

    def published_by_accept(self) -> None:
        """The buffer's accept published the claim in its own script."""
        self.published = True


@contextmanager
def held(*, org_id: str, env_id: str, task: str, key: str, key_expires_ms: int | None, now_ms: int) -> Iterator[Held]:
    """Hold the pre-gate claim of a key while the block makes the run (``acquire``: it may wait,
    and raises ClaimTimeout). The block publishes the run id through the Held (or the accept did);
    a claim left unpublished — an error, an over-cap refusal — is released on the way out."""
    handle = Held(
        acquire(org_id=org_id, env_id=env_id, task=task, key=key, key_expires_ms=key_expires_ms, now_ms=now_ms)
    )
    try:
        yield handle
    finally:
        if handle.claim is not None and not handle.published:
            release(handle.claim)
