"""The Redis buffer of runs waiting for Postgres (DESIGN §5).

Every change is one Lua script over one organisation's keys (one hash slot). Times are passed in as
``now_ms``; the scripts never read the clock. Entries have no TTL while they wait: a run is never
lost silently. Functions raise ``BufferUnavailable`` (a redis error) when Redis cannot be reached;
callers decide whether to fail open or closed.
"""

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from redis.cluster import RedisCluster

from mollifier import client as redis_client
from mollifier import conf, keys, scripts
from mollifier.codec import Entry, error_json, from_fields, pack_snapshot, to_fields


def _str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class AcceptResult:
    status: str  # accepted | duplicate_run | duplicate_idempotency | over_cap | pass_through
    run_id: str = ""  # ours when accepted, the key's owner on duplicate_idempotency
    count: int = 0  # the organisation's buffered entries, on over_cap


def accept_keys(entry: Entry) -> list[str]:
    org = entry.org_id
    return [
        keys.entry(org, entry.run_id),
        keys.snapshot(org, entry.run_id),
        keys.ready(org, entry.env_id),
        keys.listing(org, entry.env_id),
        keys.envs(org),
        keys.stats(org),
        keys.idempotency(org, entry.env_id, entry.task, entry.idempotency_key)
        if entry.idempotency_key
        else keys.unused(org),
        keys.claim(org, entry.env_id, entry.task, entry.idempotency_key) if entry.idempotency_key else keys.unused(org),
        keys.batch_items(org, entry.batch_id) if entry.batch_id else keys.unused(org),
    ]


def accept_args(entry: Entry, *, claim_marker: str = "", claim_ttl: int = 0) -> list[str]:
    """The arguments after now_ms shared by accept.lua and gate_accept.lua, then the fields."""
    return [
        entry.run_id,
        entry.env_id,
        str(conf.org_buffer_cap()),
        entry.idempotency_key or "",
        "" if entry.batch_index is None or not entry.batch_id else str(entry.batch_index),
        claim_marker,
        str(claim_ttl),
        pack_snapshot(entry),
        *to_fields(entry),
    ]


def accept_result(reply, entry: Entry, *, client) -> AcceptResult:
    """Read an accept reply; index the organisation when this accept made it active."""
    status = _str(reply[0])
    detail = _str(reply[1]) if len(reply) > 1 else ""
    if status == "accepted":
        if detail:
            client.zadd(keys.orgs(), {entry.org_id: int(detail)}, gt=True)
        return AcceptResult("accepted", entry.run_id)
    if status == "duplicate_idempotency":
        return AcceptResult(status, detail)
    if status == "over_cap":
        return AcceptResult(status, entry.run_id, count=int(detail))
    return AcceptResult(status, detail or entry.run_id)


def accept(entry: Entry, *, now_ms: int, claim_marker: str = "", claim_ttl: int = 0) -> AcceptResult:
    """Buffer ``entry`` without consulting the gate (the gate's own path is gate.admit)."""
    redis = redis_client.get()
    reply = scripts.ACCEPT(
        keys=accept_keys(entry),
        args=[str(now_ms), *accept_args(entry, claim_marker=claim_marker, claim_ttl=claim_ttl)],
        client=redis,
    )
    return accept_result(reply, entry, client=redis)


def get(*, org_id: str, run_id: str) -> Entry | None:
    """The entry (also one materialised within its grace period), or None."""
    entries = get_many(org_id=org_id, run_ids=[run_id])
    return entries[0] if entries else None


def get_many(*, org_id: str, run_ids: Iterable[str]) -> list[Entry]:
    """Entries of one organisation for ``run_ids``, in one round trip, skipping the ones that are gone."""
    entry_keys = [key for run_id in run_ids for key in (keys.entry(org_id, run_id), keys.snapshot(org_id, run_id))]
    if not entry_keys:
        return []
    replies = scripts.READ(keys=entry_keys, client=redis_client.get())
    return [entry for entry in (from_fields(_pairs(flat), snapshot) for flat, snapshot in replies) if entry is not None]


def _pairs(flat: list) -> dict:
    return dict(zip(flat[::2], flat[1::2]))


def lookup_idempotency(*, org_id: str, env_id: str, task: str, key: str, now_ms: int) -> Entry | None:
    """The waiting run that holds the idempotency key, or None. An expired key is released first."""
    owner = redis_client.get().get(keys.idempotency(org_id, env_id, task, key))
    if owner is None:
        return None
    entry = get(org_id=org_id, run_id=_str(owner))
    if entry is not None and not entry.materialised and entry.env_id == env_id:
        if entry.idempotency_expires_ms is None or entry.idempotency_expires_ms > now_ms:
            return entry
    reset_idempotency(org_id=org_id, env_id=env_id, task=task, key=key)
    return None


@dataclass(frozen=True)
class Popped:
    entries: list[Entry]
    reclaimed: int  # expired leases moved back to ready first
    missing: list[str]  # leased ids whose hash is gone (acked away)


def pop(*, org_id: str, env_id: str, limit: int, lease_ms: int, now_ms: int) -> Popped:
    """Lease up to ``limit`` ready entries of one environment, oldest first."""
    redis = redis_client.get()
    run_ids, reclaimed = scripts.POP(
        keys=[keys.ready(org_id, env_id), keys.leases(org_id, env_id)],
        args=[now_ms, limit, lease_ms],
        client=redis,
    )
    run_ids = [_str(run_id) for run_id in run_ids]
    entries = get_many(org_id=org_id, run_ids=run_ids)
    found = {entry.run_id for entry in entries}
    return Popped(entries, int(reclaimed), [run_id for run_id in run_ids if run_id not in found])


def _ack_call(*, org_id: str, env_id: str, run_ids: list[str], entries: dict[str, Entry | None], now_ms: int):
    keys_list = [
        keys.ready(org_id, env_id),
        keys.leases(org_id, env_id),
        keys.envs(org_id),
        keys.stats(org_id),
        keys.listing(org_id, env_id),
        keys.minute(org_id, now_ms // 60_000),
    ]
    for run_id in run_ids:
        entry = entries.get(run_id)
        keys_list.append(keys.entry(org_id, run_id))
        keys_list.append(keys.snapshot(org_id, run_id))
        keys_list.append(
            keys.idempotency(org_id, env_id, entry.task, entry.idempotency_key)
            if entry and entry.idempotency_key
            else keys.unused(org_id)
        )
        keys_list.append(keys.batch_items(org_id, entry.batch_id) if entry and entry.batch_id else keys.unused(org_id))
    return keys_list, [now_ms, conf.ack_grace_ms(), env_id, *run_ids]


def _run_script_calls(redis, script, calls: list[tuple[list, list]]) -> list:
    """Run one script several times: pipelined in one round trip on a single node; one call per
    slot on a cluster (redis-py's cluster pipeline refuses EVALSHA)."""
    if isinstance(redis, RedisCluster):
        return [script(keys=call_keys, args=call_args, client=redis) for call_keys, call_args in calls]
    pipe = redis.pipeline(transaction=False)
    for call_keys, call_args in calls:
        script(keys=call_keys, args=call_args, client=pipe)
    return pipe.execute()


def ack(entries: Iterable[Entry], *, now_ms: int, missing: Iterable[tuple[str, str, str]] = ()) -> int:
    """Release materialised entries, grouped per environment (one round trip on a single node).

    ``missing`` are (org, env, run) leases whose hash is already gone; they are released too.
    Returns how many entries were acked by this call (acking twice counts once).
    """
    groups: dict[tuple[str, str], dict[str, Entry | None]] = defaultdict(dict)
    for entry in entries:
        groups[(entry.org_id, entry.env_id)][entry.run_id] = entry
    for org_id, env_id, run_id in missing:
        groups[(org_id, env_id)].setdefault(run_id, None)
    if not groups:
        return 0
    redis = redis_client.get()
    calls = [
        _ack_call(org_id=org_id, env_id=env_id, run_ids=list(by_run), entries=by_run, now_ms=now_ms)
        for (org_id, env_id), by_run in groups.items()
    ]
    acked = 0
    idle: dict[str, int] = {}
    for (org_id, _), (count, idle_gen) in zip(groups, _run_script_calls(redis, scripts.ACK, calls)):
        acked += int(count)
        if _str(idle_gen):
            idle[org_id] = int(_str(idle_gen))
    for org_id, gen in idle.items():
        scripts.ORG_UNINDEX(keys=[keys.orgs()], args=[org_id, gen], client=redis)
    return acked


def retry(entry: Entry, *, now_ms: int, backoff_ms: int, code: str, message: str) -> int:
    """Give a leased entry back with a backoff; returns its attempts (0: the lease was lost)."""
    return int(
        scripts.RETRY(
            keys=[
                keys.entry(entry.org_id, entry.run_id),
                keys.leases(entry.org_id, entry.env_id),
                keys.ready(entry.org_id, entry.env_id),
            ],
            args=[entry.run_id, now_ms, backoff_ms, error_json(code, message)],
            client=redis_client.get(),
        )
    )


def fail(entry: Entry, *, now_ms: int, code: str, message: str) -> bool:
    """Mark the entry terminal: its next drain writes a SYSTEM_FAILURE row (never silent loss)."""
    return bool(
        scripts.FAIL(
            keys=[
                keys.entry(entry.org_id, entry.run_id),
                keys.leases(entry.org_id, entry.env_id),
                keys.ready(entry.org_id, entry.env_id),
            ],
            args=[entry.run_id, now_ms, error_json(code, message)],
            client=redis_client.get(),
        )
    )


@dataclass(frozen=True)
class MutateResult:
    status: str  # applied | not_found | materialised | busy | limit_exceeded | conflict
    value: str = ""  # new metadata version, tag count or current version


def _mutate(*, org_id: str, env_id: str, run_id: str, op: str, now_ms: int, args: list[str]) -> MutateResult:
    reply = scripts.MUTATE(
        keys=[keys.entry(org_id, run_id), keys.leases(org_id, env_id)],
        args=[op, env_id, run_id, now_ms, *args],
        client=redis_client.get(),
    )
    return MutateResult(_str(reply[0]), _str(reply[1]) if len(reply) > 1 else "")


def cancel(*, org_id: str, env_id: str, run_id: str, now_ms: int, reason: str) -> MutateResult:
    return _mutate(org_id=org_id, env_id=env_id, run_id=run_id, op="cancel", now_ms=now_ms, args=[reason])


def add_tags(*, org_id: str, env_id: str, run_id: str, now_ms: int, tags: list[str], max_tags: int) -> MutateResult:
    return _mutate(
        org_id=org_id,
        env_id=env_id,
        run_id=run_id,
        op="add_tags",
        now_ms=now_ms,
        args=[json.dumps(tags), str(max_tags)],
    )


def set_delay(*, org_id: str, env_id: str, run_id: str, now_ms: int, delay_until_ms: int | None) -> MutateResult:
    value = "" if delay_until_ms is None else str(delay_until_ms)
    return _mutate(org_id=org_id, env_id=env_id, run_id=run_id, op="set_delay", now_ms=now_ms, args=[value])


def set_metadata(
    *,
    org_id: str,
    env_id: str,
    run_id: str,
    now_ms: int,
    metadata: str,
    metadata_type: str,
    expected_version: int | None,
) -> MutateResult:
    expected = "" if expected_version is None else str(expected_version)
    return _mutate(
        org_id=org_id,
        env_id=env_id,
        run_id=run_id,
        op="set_metadata",
        now_ms=now_ms,
        args=[expected, metadata, metadata_type],
    )


@dataclass(frozen=True)
class ResetResult:
    status: str  # reset | none | busy
    run_id: str = ""


def reset_idempotency(*, org_id: str, env_id: str, task: str, key: str) -> ResetResult:
    """Release the key from the waiting run holding it, and drop its pre-gate claim."""
    redis = redis_client.get()
    lookup = keys.idempotency(org_id, env_id, task, key)
    for _ in range(3):  # the lookup may change hands between the read and the script
        owner = redis.get(lookup)
        owner = _str(owner) if owner is not None else ""
        reply = scripts.RESET_IDEMPOTENCY(
            keys=[
                lookup,
                keys.claim(org_id, env_id, task, key),
                keys.entry(org_id, owner) if owner else keys.unused(org_id),
                keys.leases(org_id, env_id),
            ],
            args=[owner],
            client=redis,
        )
        status = _str(reply[0])
        if status != "moved":
            return ResetResult(status, _str(reply[1]) if len(reply) > 1 else "")
    return ResetResult("busy")


def active_orgs() -> list[str]:
    """Organisations with buffered work, in index order."""
    return [_str(org) for org in redis_client.get().zrange(keys.orgs(), 0, -1)]


def active_envs(org_id: str) -> list[str]:
    return sorted(_str(env) for env in redis_client.get().smembers(keys.envs(org_id)))


def buffered_count(org_id: str) -> int:
    return int(redis_client.get().hget(keys.stats(org_id), "buffered") or 0)


def batch_buffered_items(*, org_id: str, batch_id: str) -> dict[int, str]:
    """index → run id of a batch's items that are still in the buffer."""
    raw = redis_client.get().hgetall(keys.batch_items(org_id, batch_id))
    return {int(_str(index)): _str(run_id) for index, run_id in raw.items()}


def listing(
    *, org_id: str, env_id: str, newest_first: bool, bound_ms: int | None, limit: int
) -> tuple[list[Entry], bool]:
    """Up to ``limit`` waiting runs of one environment by trigger time, from ``bound_ms`` (inclusive)
    onwards — towards older runs when ``newest_first``, else towards newer ones. Returns the entries
    and whether the scan stopped at ``limit`` (more may follow)."""
    redis = redis_client.get()
    key = keys.listing(org_id, env_id)
    if newest_first:
        run_ids = redis.zrevrangebyscore(key, "+inf" if bound_ms is None else bound_ms, "-inf", start=0, num=limit)
    else:
        run_ids = redis.zrangebyscore(key, "-inf" if bound_ms is None else bound_ms, "+inf", start=0, num=limit)
    entries = get_many(org_id=org_id, run_ids=[_str(run_id) for run_id in run_ids])
    return [entry for entry in entries if not entry.materialised], len(run_ids) >= limit


def leased_ids(*, org_id: str, env_id: str) -> set[str]:
    """Run ids a drainer holds right now in one environment."""
    return {_str(run_id) for run_id in redis_client.get().zrange(keys.leases(org_id, env_id), 0, -1)}
