"""What is in the buffer right now, per organisation and environment (status command, dashboard)."""

from dataclasses import dataclass, field

from mollifier import buffer, conf, estimate, keys, memory, metrics, priority, rate
from mollifier import client as redis_client
from mollifier.breaker import State
from mollifier.codec import as_text
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
                    name = as_text(field)
                    if name in totals[minute]:
                        totals[minute][name] += int(value)
    return [{"minute": minute, **counts} for minute, counts in totals.items()]


def shadow_orgs(*, since_ms: int) -> list[str]:
    """Organisations shadow mode would have mollified since ``since_ms``."""
    raw = redis_client.get().zrangebyscore(keys.shadow_orgs(), since_ms, "+inf")
    return [as_text(org) for org in raw]


@dataclass(frozen=True)
class DashboardRow:
    stats: EnvStats
    label: str  # the environment's name (from the directory), or its ids
    oldest_seconds: float
    env_type: str = ""  # production, staging, preview, development ('' when unknown)
    weight: int = 1  # its weight in the drain under contention (MOLLIFIER_DRAIN_WEIGHTS)
    share: float = 0.0  # its share of the drain while every environment with work has some
    eta_seconds: float = 0.0  # until its last waiting run should be written, at the allowed rate


@dataclass(frozen=True)
class Dashboard:
    """Everything the admin dashboard shows, read in one pass."""

    rows: list[DashboardRow]
    minutes: list[dict]  # per minute, oldest first: gate decisions and rows drained
    waiting: int
    leased: int
    expired: int
    tripped: int
    oldest_seconds: float
    drained_per_minute: int  # the average over the last five minutes, the current one as far as it has gone
    parked: list  # mollifier.codec.Entry, oldest first
    dropped: int  # entries on record that left without a row (environment deleted)
    drain: rate.State | None = None  # the allowed drain rate now, its bounds and the write latency
    rate_minutes: list[dict] = field(default_factory=list)  # per minute: mean allowed rate, latency, cuts


def dashboard(*, now_ms: int, directory) -> Dashboard:
    """The buffer at a glance. ``directory`` names environments and lists enrolled organisations
    (mollifier/directory.py). Raises BufferUnavailable when Redis does not answer."""
    rows = env_stats(now_ms=now_ms)
    charted = (
        {row.org_id for row in rows}
        | set(directory.enrolled_organizations())
        | set(shadow_orgs(since_ms=now_ms - 3_600_000))
    )
    minutes = timeline(org_ids=sorted(charted), now_ms=now_ms)
    labels = directory.environment_labels(row.env_id for row in rows)
    types = directory.environment_types(row.env_id for row in rows)
    recent = minutes[-5:]
    drain = rate.state(now_ms=now_ms)
    weights = {(row.org_id, row.env_id): priority.weight(types.get(row.env_id)) for row in rows}
    backlogs = {
        (item.org_id, item.env_id): item
        for item in estimate.backlogs(
            waiting={(row.org_id, row.env_id): row.waiting for row in rows}, weights=weights, allowed=drain.pace
        )
    }
    return Dashboard(
        rows=[
            DashboardRow(
                row,
                labels.get(row.env_id, f"org {row.org_id} env {row.env_id}"),
                row.oldest_age_ms(now_ms) / 1000,
                env_type=types.get(row.env_id, ""),
                weight=weights[(row.org_id, row.env_id)],
                share=backlogs[(row.org_id, row.env_id)].share,
                eta_seconds=backlogs[(row.org_id, row.env_id)].seconds,
            )
            for row in rows
        ],
        minutes=minutes,
        waiting=sum(row.waiting for row in rows),
        leased=sum(row.leased for row in rows),
        expired=sum(row.expired_leases for row in rows),
        tripped=sum(row.tripped for row in rows),
        oldest_seconds=max((row.oldest_age_ms(now_ms) for row in rows), default=0) / 1000,
        # Over the time the five buckets cover: four full minutes and the part of this one that has passed
        # (dividing by five would read a steady rate low until the current minute ends).
        drained_per_minute=round(sum(minute["drained"] for minute in recent) / (4 + now_ms % 60_000 / 60_000)),
        parked=buffer.parked_entries(limit=100),
        dropped=buffer.recently_dropped(limit=0)[0],
        drain=drain,
        rate_minutes=rate.minutes(now_ms=now_ms),
    )


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
    return RedisStatus(_state_name(state), int(opens), reading, conf.redis_memory_limit_percent())


@dataclass(frozen=True)
class PostgresStatus:
    """The web processes' Postgres breaker (trigger_project/postgres/breaker.py): while it is open
    the admin cannot render, but how often it opened shows afterwards."""

    breaker: str
    breaker_opens: int


def postgres_status() -> PostgresStatus:
    state, opens = metrics.breaker_summary("postgres")
    return PostgresStatus(_state_name(state), int(opens))


def _state_name(state: int) -> str:
    return State(state).name.lower().replace("_", "-")
