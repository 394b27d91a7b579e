"""When a buffered run will be written (issue 17): its place in its environment's queue, its
environment's drain curve (mollifier/priority.py, published by the drainers about once a second)
and the allowed drain rate (mollifier/rate.py).

One round trip for a buffered run (a pipeline: the run's rank and scores in its queue, the shared
rate, its environment's curve), none for a run that is already in Postgres (the caller asks only for
buffered runs). The pace is the allowed rate, or what the drainers actually wrote over the last second
when that is less. An estimate, not a promise: it assumes the pace and the other queues stay as they
are.
"""

import json
from dataclasses import dataclass

from mollifier import client as redis_client
from mollifier import keys, priority, rate
from mollifier.codec import as_text

ROUND_MS = rate.ROUND_MS  # a round's lease; its write then takes the rounds' average write latency


@dataclass(frozen=True)
class Estimate:
    position: int  # runs of its environment's queue ahead of it (0: next, or being written now)
    write_at_ms: int | None  # when its row should be written; None while no drainer plans its queue
    rate: float  # the allowed drain rate the estimate assumes (rows/s)
    draining: bool  # a drainer holds it right now


def _write_at(curve: list | None, *, rows: float, allowed: float, now_ms: int, lag_ms: int) -> int | None:
    if not curve or allowed <= 0:
        return None
    return now_ms + int(priority.seconds_until(curve, rows) / allowed * 1000) + lag_ms


def estimate(*, org_id: str, env_id: str, run_id: str, delay_until_ms: int | None, now_ms: int) -> Estimate | None:
    """The estimate for one buffered run, or None when it is no longer queued (written meanwhile,
    or parked). Raises BufferUnavailable when Redis does not answer."""
    pipe = redis_client.get().pipeline(transaction=False)
    pipe.zrank(keys.ready(org_id, env_id), run_id)
    pipe.zscore(keys.ready(org_id, env_id), run_id)
    pipe.zscore(keys.leases(org_id, env_id), run_id)
    pipe.hmget(keys.drain_limit(), rate.STATE_FIELDS)
    pipe.hget(keys.drain_eta(), keys.env_field(org_id, env_id))
    rank, not_before, lease, fields, raw_curve = pipe.execute()
    drain = rate.from_fields(fields, now_ms=now_ms)
    lag = ROUND_MS + int(drain.commit_ms or 0)
    if lease is not None:
        return Estimate(0, now_ms + lag, drain.rate, True)
    if rank is None:
        return None
    curve = json.loads(as_text(raw_curve)) if raw_curve is not None else None
    write_at = _write_at(curve, rows=int(rank) + 1, allowed=drain.pace, now_ms=now_ms, lag_ms=lag)
    if write_at is not None:
        write_at = max(write_at, int(float(not_before)) + lag)  # backing off: not before then
        if delay_until_ms is not None:  # due delayed runs go first (priority.DUE_LEAD_MS)
            write_at = min(write_at, max(now_ms, delay_until_ms - priority.DUE_LEAD_MS) + lag)
    return Estimate(int(rank), write_at, drain.rate, False)


@dataclass(frozen=True)
class Backlog:
    org_id: str
    env_id: str
    waiting: int
    weight: int
    share: float  # of the drain while every queue with work has some
    seconds: float  # until its last waiting run is written


def backlogs(*, waiting: dict[priority.Pair, int], weights: dict[priority.Pair, int], allowed: float) -> list[Backlog]:
    """Each environment's ETA for its whole backlog at the allowed rate, the queues sharing the
    drain by weight (the dashboard)."""
    drawn = priority.curves(waiting, weights)
    share = priority.shares([pair for pair, count in waiting.items() if count > 0], weights)
    return [
        Backlog(
            org,
            env,
            count,
            weights[(org, env)],
            share.get((org, env), 0.0),
            priority.seconds_until(drawn[(org, env)], count) / allowed if count > 0 and allowed > 0 else 0.0,
        )
        for (org, env), count in waiting.items()
    ]
