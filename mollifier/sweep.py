"""The stale sweep: one holder at a time (a Redis lease), it reports what is stuck and repairs it.

- takes back expired, unpinned leases (a drainer died) so the next round re-drives them, and
  settles expired pins by their Postgres transaction's outcome;
- reports entries waiting longer than MOLLIFIER_STALE_AFTER_MS and the oldest age;
- reconciles the organisation index: indexes organisations that have work but were never indexed
  (a web process died between accept and indexing) and drops idle ones;
- does what the drain does when it goes idle (``Sink.idle``): links batch items, and lets go of the
  keyed markers of environments with nothing buffered.
"""

import uuid
from dataclasses import dataclass

from mollifier import buffer, conf, keys, scripts
from mollifier import client as redis_client
from mollifier.drainer import settle
from mollifier.sink import Settled, get_sink
from mollifier.stats import env_stats

SWEEP_LEASE_MS = 60_000


@dataclass(frozen=True)
class SweepReport:
    orgs: int
    envs: int
    waiting: int
    stale: int  # waiting longer than the stale threshold
    oldest_age_ms: int
    expired_leases: int  # found (and reclaimed)
    settled_pins: int  # expired pins whose transaction had ended: acked or given back
    reindexed_orgs: int
    unindexed_orgs: int


def sweep(*, now_ms: int) -> SweepReport | None:
    """Run one sweep, or return None when another sweeper holds the lease."""
    redis = redis_client.get()
    marker = f"pending:{uuid.uuid4().hex}"
    if not redis.set(keys.sweep_lease(), marker, nx=True, px=SWEEP_LEASE_MS):
        return None
    try:
        return _sweep(redis, now_ms=now_ms)
    finally:
        scripts.RELEASE(keys=[keys.sweep_lease()], args=[marker], client=redis)


def _sweep(redis, *, now_ms: int) -> SweepReport:
    indexed = set(buffer.active_orgs())
    reindexed = unindexed = 0
    for key in redis.scan_iter(match=keys.org_pattern(), count=500):
        org = key.decode().split("{o:", 1)[1].split("}", 1)[0]
        if org not in indexed and buffer.index_if_active(org, client=redis) is not None:
            reindexed += 1
    for org in buffer.active_orgs():
        if not buffer.active_envs(org):
            unindexed += scripts.ORG_UNINDEX(
                keys=[keys.orgs()], args=[org, int(redis.hget(keys.stats(org), "gen") or 0)], client=redis
            )

    rows = env_stats(now_ms=now_ms)
    threshold = now_ms - conf.stale_after_ms()
    stale = expired = settled = 0
    for row in rows:
        stale += int(redis.zcount(keys.listing(row.org_id, row.env_id), "-inf", threshold))
        if row.expired_leases:
            reclaimed, pins = buffer.reclaim(
                org_id=row.org_id, env_id=row.env_id, now_ms=now_ms, lease_ms=conf.drain_lease_ms()
            )
            expired += reclaimed
            if pins:
                outcome = settle(get_sink(), pins, now_ms=now_ms, lapsed=True)
                settled += sum(value != Settled.RUNNING for value in outcome.values())
    # What the drain does when it goes idle, for what it left undone (it goes idle only after rounds
    # that wrote): e.g. a keyed marker made for a run the buffer then did not take.
    get_sink().idle()
    return SweepReport(
        orgs=len({row.org_id for row in rows}),
        envs=len(rows),
        waiting=sum(row.waiting for row in rows),
        stale=stale,
        oldest_age_ms=max((row.oldest_age_ms(now_ms) for row in rows), default=0),
        expired_leases=expired,
        settled_pins=settled,
        reindexed_orgs=reindexed,
        unindexed_orgs=unindexed,
    )
