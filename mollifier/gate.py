"""The gate: does this trigger go to Postgres now, or into the buffer? (DESIGN §6)

Cascade: master switch → bypass → enrolment (or shadow mode) → global trip → the environment's trip.
With the switch off the gate touches nothing in Redis. An enrolled organisation's trigger is
evaluated and, when its environment is tripped, accepted in the same script (one round trip).

Fails open: any Redis error means pass-through, logged. Postgres's unique constraints on the run id
and the idempotency key stay the final arbiter, so a double write is impossible either way. While
the Redis circuit breaker is open (mollifier/breaker.py) the gate does nothing at all: no entry is
built, no call is made, and the trigger passes through (reason ``breaker_open``). While Redis
nears its maxmemory (mollifier/memory.py), a tripped trigger passes through too (``redis_memory``).
"""

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from mollifier import client as redis_client
from mollifier import conf, keys, lost_answers, memory, metrics, scripts
from mollifier.breaker import BreakerOpen
from mollifier.buffer import AcceptResult, AcceptStatus, accept_args, accept_keys, accept_result
from mollifier.claims import Claim
from mollifier.codec import Entry, as_text
from mollifier.exceptions import BufferUnavailable

logger = logging.getLogger(__name__)


class Decision(enum.StrEnum):
    PASS_THROUGH = "pass_through"
    MOLLIFY = "mollify"
    SHADOW = "shadow"  # would have been mollified; the organisation is not enrolled


@dataclass(frozen=True)
class Admission:
    decision: Decision
    # disabled, bypass:<why>, not_enrolled, under_threshold, per_env_rate, global_rate, redis_error
    # (Redis failed or timed out), breaker_open (Redis known not to answer: not even tried),
    # redis_memory (tripped, but Redis is near its maxmemory: new entries refused)
    reason: str
    accepted: AcceptResult | None = None  # set when mollified: what the buffer did with the entry
    repeated_run: str = ""  # a retried request: the run its first attempt made (nothing else was done)


def _global_tripped(redis, now_ms: int) -> bool:
    threshold = conf.global_trip_threshold()
    if not threshold:
        return False
    _, tripped = scripts.TRIP(
        keys=[keys.global_rate(), keys.global_tripped(), keys.global_rate()],  # third key: no counting
        args=[now_ms, conf.global_trip_window_ms(), threshold, conf.global_hold_ms(), "0"],
        client=redis,
    )
    return bool(int(tripped))


def admit_or_buffer(
    *,
    org_id: str,
    env_id: str,
    enrolled: bool,
    bypass: str | None,
    entry: Callable[[], Entry],
    now_ms: int,
    claim: Claim | None = None,
    request_key: str | None = None,
    request_ttl_ms: int = 0,
    replace_request: bool = False,
    postgres_out: bool = False,
    marker_gen: int | None = None,
) -> Admission:
    """Decide for one trigger — and, when the decision is to mollify, buffer it in the same step.

    ``request_key`` (the SDK's request idempotency key) is resolved in the same script: a retried
    request gets ``repeated_run``, the run its first attempt made, and is neither counted nor
    buffered again; otherwise the key is made to name this trigger's run for ``request_ttl_ms``.
    ``replace_request``: the run the key named is gone; let this trigger's run take the key.
    ``postgres_out``: Postgres is known not to answer right now: an enrolled organisation's trigger
    is buffered as if its environment were tripped (the drainer writes it once Postgres is back).
    A keyed run is buffered only while the environment's keyed marker has the generation
    ``marker_gen`` (the caller read it before it searched the rows for the key); otherwise the
    answer is ``accepted.status`` NEEDS_MARKER, nothing is written or counted, and the caller makes
    sure of the marker and comes back (lib/accept.lua).

    Counts every decision past the master switch and enrolment, bypasses included
    (mollifier_gate_decisions_total{decision, reason}). See ``_decide``."""
    admission = _decide(
        org_id=org_id,
        env_id=env_id,
        enrolled=enrolled,
        bypass=bypass,
        entry=entry,
        now_ms=now_ms,
        claim_marker=claim.marker if claim else "",
        claim_ttl=claim.publish_ttl if claim else 0,
        request_key=request_key,
        request_ttl_ms=request_ttl_ms,
        replace_request=replace_request,
        postgres_out=postgres_out,
        marker_gen=marker_gen,
    )
    if admission.accepted is not None and admission.accepted.status == AcceptStatus.NEEDS_MARKER:
        return admission  # not decided yet: counted when the caller comes back
    if admission.reason not in ("disabled", "not_enrolled", "repeated_request"):
        decision = admission.decision.value
        if admission.accepted is not None and admission.accepted.status == AcceptStatus.OVER_CAP:
            decision = "refused"
        metrics.GATE_DECISIONS.labels(decision=decision, reason=admission.reason).inc()
    return admission


def _decide(
    *,
    org_id: str,
    env_id: str,
    enrolled: bool,
    bypass: str | None,
    entry: Callable[[], Entry],
    now_ms: int,
    claim_marker: str,
    claim_ttl: int,
    request_key: str | None,
    request_ttl_ms: int,
    replace_request: bool,
    postgres_out: bool,
    marker_gen: int | None,
) -> Admission:
    """Decide for one trigger, and buffer it when the decision is to mollify.

    ``entry`` builds the buffer entry; it is called only when the trigger may be buffered.
    ``bypass`` names why this trigger must go straight to Postgres (a triggerAndWait child, whose
    parent waits on its row); bypassed triggers are not counted against the rate.
    """
    if not conf.enabled():
        return Admission(Decision.PASS_THROUGH, "disabled")
    if bypass:
        return Admission(Decision.PASS_THROUGH, f"bypass:{bypass}")
    if not enrolled and not conf.shadow_mode():
        return Admission(Decision.PASS_THROUGH, "not_enrolled")
    window, threshold, hold = conf.trip_window_ms(), conf.trip_threshold(), conf.hold_ms()
    accepting = False  # set once the accept is sent: its answer may be lost while it still runs
    try:
        redis = redis_client.get()
        redis_client.check_breaker(redis)  # before building the entry: while it is open, no work at all
        forced = _global_tripped(redis, now_ms)
        reason = "global_rate" if forced else "per_env_rate"
        if postgres_out and enrolled:
            forced, reason = True, "postgres_unavailable"
        if not enrolled:
            _, tripped = scripts.TRIP(
                keys=[keys.rate(org_id, env_id), keys.tripped(org_id, env_id), keys.minute(org_id, now_ms // 60_000)],
                args=[now_ms, window, threshold, hold, "1"],
                client=redis,
            )
            if forced or int(tripped):
                logger.debug("mollifier.gate.would_mollify org=%s env=%s reason=%s", org_id, env_id, reason)
                redis.zadd(keys.shadow_orgs(), {org_id: now_ms})  # the dashboard lists them
                return Admission(Decision.SHADOW, reason)
            return Admission(Decision.PASS_THROUGH, "under_threshold")
        memory_full = memory.near_full(redis)
        candidate = entry()
        accepting = True
        reply = scripts.GATE_ACCEPT(
            keys=[
                keys.rate(org_id, env_id),
                keys.tripped(org_id, env_id),
                *accept_keys(candidate),
                keys.minute(org_id, now_ms // 60_000),
                keys.request(org_id, env_id, candidate.task, request_key) if request_key else keys.unused(org_id),
            ],
            args=[
                now_ms,
                window,
                threshold,
                hold,
                "1" if forced else "0",
                *accept_args(
                    candidate,
                    claim_marker=claim_marker,
                    claim_ttl=claim_ttl,
                    memory_full=memory_full,
                    request=(str(request_ttl_ms) if request_key else "", "1" if replace_request else "0"),
                    marker_gen=marker_gen,
                ),
            ],
            client=redis,
        )
        if as_text(reply[0]) == "duplicate_request":
            return Admission(Decision.PASS_THROUGH, "repeated_request", repeated_run=as_text(reply[1]))
        if as_text(reply[0]) == "pass_through":
            return Admission(Decision.PASS_THROUGH, "under_threshold")
        if as_text(reply[0]) == "memory_full":
            logger.debug("mollifier.gate.memory_full org=%s env=%s", org_id, env_id)
            return Admission(Decision.PASS_THROUGH, "redis_memory")
        logger.debug("mollifier.gate.mollified org=%s env=%s reason=%s", org_id, env_id, reason)
        return Admission(Decision.MOLLIFY, reason, accept_result(reply, candidate, client=redis))
    except BreakerOpen:
        logger.debug("mollifier.gate.breaker_open org=%s env=%s", org_id, env_id)  # one line per trigger: debug
        return Admission(Decision.PASS_THROUGH, "breaker_open")
    except BufferUnavailable as error:
        logger.warning("mollifier.gate.redis_unavailable org=%s env=%s error=%s", org_id, env_id, error)
        if accepting:
            lost_answers.index_org(org_id)
        return Admission(Decision.PASS_THROUGH, "redis_error")
