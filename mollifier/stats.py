"""What is in the buffer right now, per organisation and environment (status command, dashboard)."""

from dataclasses import dataclass

from mollifier import buffer, conf, keys, memory, metrics
from mollifier import client as redis_client
from mollifier.breaker import State
from mollifier.exceptions import BufferUnavailable


@dataclass(frozen=True)
class EnvStats:
    org_id: str
    env_id: str
    waiting: int  # not yet materialised (ready, backing off or leased)
    ready: int  # waiting for a drainer (including entries backing off)
    leased: int  # held by a drainer right now
    expired_leases: int  # held by a drainer that is gone: the next pop or sweep reclaims them
    oldest_accepted_ms: int | None  # trigger time of the oldest waiting run
    tripped: bool  # the environment's gate is holding its trip

    def oldest_age_ms(self, now_ms: int) -> int:
        return max(0, now_ms - self.oldest_accepted_ms) if self.oldest_accepted_ms is not None else 0


def env_stats(*, now_ms: int) -> list[EnvStats]:
    """One row per environment with buffered work, ordered by organisation then environment."""
    redis = redis_client.get()
    rows = []
    for org in sorted(buffer.active_orgs(), key=lambda o: (len(o), o)):
        envs = buffer.active_envs(org)
        if not envs:
            continue
        pipe = redis.pipeline(transaction=False)
        for env in envs:
            pipe.zcard(keys.listing(org, env))
            pipe.zcard(keys.ready(org, env))
            pipe.zcard(keys.leases(org, env))
            pipe.zcount(keys.leases(org, env), "-inf", now_ms)
            pipe.zrange(keys.listing(org, env), 0, 0, withscores=True)
            pipe.exists(keys.tripped(org, env))
        replies = pipe.execute()
        for i, env in enumerate(envs):
            waiting, ready, leased, expired, oldest, tripped = replies[i * 6 : i * 6 + 6]
            rows.append(
                EnvStats(
                    org,
                    env,
                    int(waiting),
                    int(ready),
                    int(leased),
                    int(expired),
                    int(oldest[0][1]) if oldest else None,
                    bool(tripped),
                )
            )
    return rows


DECISIONS = ("pass_through", "mollify", "shadow", "refused")


def timeline(*, org_ids: list[str], now_ms: int, minutes: int = 60) -> list[dict]:
    """Per minute, oldest first: gate decisions and rows drained, summed over ``org_ids``."""
    redis = redis_client.get()
    last = now_ms // 60_000
    span = range(last - minutes + 1, last + 1)
    totals = {minute: dict.fromkeys((*DECISIONS, "drained"), 0) for minute in span}
    if org_ids:
        pipe = redis.pipeline(transaction=False)
        for org in org_ids:
            for minute in span:
                pipe.hgetall(keys.minute(org, minute))
        replies = iter(pipe.execute())
        for _ in org_ids:
            for minute in span:
                for field, value in next(replies).items():
                    name = field.decode() if isinstance(field, bytes) else field
                    if name in totals[minute]:
                        totals[minute][name] += int(value)
    return [{"minute": minute, **counts} for minute, counts in totals.items()]


def shadow_orgs(*, since_ms: int) -> list[str]:
    """Organisations shadow mode would have mollified since ``since_ms``."""
    raw = redis_client.get().zrangebyscore(keys.shadow_orgs(), since_ms, "+inf")
    return [org.decode() if isinstance(org, bytes) else org for org in raw]


@dataclass(frozen=True)
class RedisStatus:
    """The buffer's Redis as an operator sees it: the circuit breaker and the memory guard."""

    breaker: str  # closed | half-open | open: the worst of this host's live processes
    breaker_opens: int  # times a breaker opened (this host's processes, since their start)
    memory: memory.MemoryReading | None  # None: Redis did not answer, or refused INFO
    memory_limit_percent: int

    @property
    def memory_guard(self) -> bool:
        return self.memory is not None and self.memory.near_full(self.memory_limit_percent)


def redis_status() -> RedisStatus:
    """Never raises: a Redis that does not answer is part of the status."""
    state, opens = metrics.breaker_summary()
    try:
        reading = memory.read(redis_client.get())
    except BufferUnavailable:
        reading = None
    return RedisStatus(
        State(state).name.lower().replace("_", "-"), int(opens), reading, conf.redis_memory_limit_percent()
    )
