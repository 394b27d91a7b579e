"""The Redis buffer of runs waiting for Postgres (DESIGN §5).

Every change is one Lua script over one organisation's keys (one hash slot). Times are passed in as
``now_ms``; the scripts never read the clock. Entries have no TTL while they wait: a run is never
lost silently. Functions raise ``BufferUnavailable`` (a redis error) when Redis cannot be reached;
callers decide whether to fail open or closed.
"""

import enum
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from redis.cluster import RedisCluster

from mollifier import client as redis_client
from mollifier import conf, keys, scripts
from mollifier.codec import (
    ENTRY_FIELDS,
    Entry,
    as_text,
    error_json,
    from_row,
    from_values,
    pack_stored,
    to_fields,
)
from mollifier.exceptions import BufferUnavailable

logger = logging.getLogger(__name__)


class AcceptStatus(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE_RUN = "duplicate_run"  # an entry with this run id exists
    DUPLICATE_IDEMPOTENCY = "duplicate_idempotency"  # another buffered run holds the key
    OVER_CAP = "over_cap"  # the organisation's buffer is full (``limit``: runs or bytes)
    MEMORY_FULL = "memory_full"  # Redis is near its maxmemory: nothing written
    NEEDS_MARKER = "needs_marker"  # a keyed run, and the keyed marker is not the caller's generation: nothing written


@dataclass(frozen=True)
class AcceptResult:
    status: AcceptStatus
    run_id: str = ""  # ours when accepted, the key's owner on duplicate_idempotency
    count: int = 0  # the organisation's buffered entries, on over_cap
    bytes: int = 0  # the organisation's buffered bytes, on over_cap
    limit: str = ""  # on over_cap, which cap: "count" (MOLLIFIER_ORG_BUFFER_CAP) or "bytes" (_MAX_BYTES)


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
        keys.row(org, entry.run_id),
        keys.keyed(org, entry.env_id) if entry.idempotency_key else keys.unused(org),
    ]


def accept_args(
    entry: Entry,
    *,
    claim_marker: str = "",
    claim_ttl: int = 0,
    memory_full: bool = False,
    request: tuple[str, str] | None = None,
    marker_gen: int | None = None,
) -> list[str | bytes]:
    """The arguments after now_ms of accept.lua, then the fields; gate_accept.lua also takes
    ``request`` (its request-key arguments) before the row and the fields. ``memory_full``: Redis is near its
    maxmemory (mollifier/memory.py), refuse the entry. ``marker_gen``: the generation of the
    environment's keyed marker in Postgres, as the caller read (or made) it before it searched the
    rows for the entry's key (lib/accept.lua)."""
    snapshot, row = pack_stored(entry)
    return [
        entry.run_id,
        entry.env_id,
        str(conf.org_buffer_cap()),
        str(conf.org_buffer_max_bytes()),
        "1" if memory_full else "0",
        entry.idempotency_key or "",
        "" if entry.batch_index is None or not entry.batch_id else str(entry.batch_index),
        claim_marker,
        str(claim_ttl),
        snapshot,
        *(request or ()),
        row,
        "" if marker_gen is None else str(marker_gen),
        *to_fields(entry),
    ]


def accept_result(reply, entry: Entry, *, client) -> AcceptResult:
    """Read an accept reply; index the organisation when this accept made it active."""
    status = AcceptStatus(as_text(reply[0]))
    detail = as_text(reply[1]) if len(reply) > 1 else ""
    if status == AcceptStatus.ACCEPTED:
        if detail:
            _index_org(client, entry.org_id, detail)
        if entry.delay_until_ms is not None:
            index_delayed(
                org_id=entry.org_id,
                env_id=entry.env_id,
                run_id=entry.run_id,
                delay_until_ms=entry.delay_until_ms,
                client=client,
            )
        return AcceptResult(status, entry.run_id)
    if status == AcceptStatus.DUPLICATE_IDEMPOTENCY:
        return AcceptResult(status, detail)
    if status == AcceptStatus.OVER_CAP:
        return AcceptResult(
            status, entry.run_id, count=int(detail), bytes=int(as_text(reply[2])), limit=as_text(reply[3])
        )
    if status == AcceptStatus.MEMORY_FULL:
        return AcceptResult(status, entry.run_id)
    return AcceptResult(status, detail or entry.run_id)


def _index_org(client, org_id: str, generation: str | bytes | int) -> bool:
    """Index an organisation that a script made active (its keys and the index are in different
    slots, so this is a command of its own); True when the index changed. ZADD GT: a newer
    generation always wins over an older one, whichever arrives first (see org_unindex.lua)."""
    return bool(client.zadd(keys.orgs(), {org_id: int(generation)}, gt=True, ch=True))


def index_if_active(org_id: str, *, client=None) -> bool | None:
    """Index an organisation that has active environments, with its generation: the repair when the
    answer that would have indexed it was lost (a web process died, or Redis hung, between the
    accept and the index). None when it has no active environment; else whether the index changed."""
    redis = client or redis_client.get()
    if not redis.scard(keys.envs(org_id)):
        return None
    return _index_org(redis, org_id, redis.hget(keys.stats(org_id), "gen") or 0)


def index_delayed(*, org_id: str, env_id: str, run_id: str, delay_until_ms: int | None, client=None) -> None:
    """Note a waiting delayed run in its organisation's ``delayed`` index (its delay cleared: drop
    it), for the drain's due-first phase. A hint beside the queue: when Redis fails here the run
    still drains in its queue's order, so the failure is logged, not raised."""
    redis = client or redis_client.get()
    member = keys.delayed_member(env_id, run_id)
    try:
        if delay_until_ms is None:
            redis.zrem(keys.delayed(org_id), member)
        else:
            redis.zadd(keys.delayed(org_id), {member: delay_until_ms})
    except BufferUnavailable:
        logger.warning("mollifier.buffer.delayed_not_indexed run=%s", run_id, exc_info=True)


def unindex_delayed(entries: list[Entry]) -> None:
    """Drop written delayed runs from the ``delayed`` index (one round trip; a member left behind
    is dropped by the first round that finds it due, so a failure here is only logged)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for entry in entries:
        groups[entry.org_id].append(keys.delayed_member(entry.env_id, entry.run_id))
    if not groups:
        return
    pipe = redis_client.get().pipeline(transaction=False)
    for org_id, members in groups.items():
        pipe.zrem(keys.delayed(org_id), *members)
    try:
        pipe.execute()
    except BufferUnavailable:
        logger.warning("mollifier.buffer.delayed_not_unindexed count=%d", len(entries), exc_info=True)


def accept(
    entry: Entry,
    *,
    now_ms: int,
    claim_marker: str = "",
    claim_ttl: int = 0,
    memory_full: bool = False,
    marker_gen: int | None = None,
) -> AcceptResult:
    """Buffer ``entry`` without consulting the gate (the gate's own path is gate.admit_or_buffer)."""
    redis = redis_client.get()
    reply = scripts.ACCEPT(
        keys=accept_keys(entry),
        args=[
            str(now_ms),
            *accept_args(
                entry, claim_marker=claim_marker, claim_ttl=claim_ttl, memory_full=memory_full, marker_gen=marker_gen
            ),
        ],
        client=redis,
    )
    return accept_result(reply, entry, client=redis)


def remember_request(*, org_id: str, env_id: str, task: str, request_key: str, run_id: str, ttl_ms: int) -> None:
    """Make a request's idempotency key name ``run_id`` (the gate records it as it decides; this
    corrects it when another run answered the request)."""
    redis_client.get().set(keys.request(org_id, env_id, task, request_key), run_id, px=ttl_ms)


def forget_request(*, org_id: str, env_id: str, task: str, request_key: str, run_id: str) -> None:
    """The request's attempt that ``run_id`` was made for failed before the run was written: its key
    stops naming that run (if it still does), so that a retry of the request makes its run."""
    scripts.FORGET_REQUEST(
        keys=[keys.request(org_id, env_id, task, request_key)], args=[run_id], client=redis_client.get()
    )


def clear_keyed_marker(*, org_id: str, env_id: str, generation: int) -> bool:
    """Take away the environment's keyed marker of ``generation`` (Postgres's) when nothing of the
    environment waits in the buffer: True when the caller may now delete Postgres's marker of that
    generation. From here on no marker of that generation or older is set again, so a web process
    that made sure of it earlier must make sure of a newer one (clear_keyed_marker.lua)."""
    cleared = scripts.CLEAR_KEYED_MARKER(
        keys=[keys.keyed(org_id, env_id), keys.listing(org_id, env_id)],
        args=[generation],
        client=redis_client.get(),
    )
    return bool(int(cleared))


def get(*, org_id: str, run_id: str) -> Entry | None:
    """The entry (also one materialised within its grace period), or None."""
    entries = get_many(org_id=org_id, run_ids=[run_id])
    return entries[0] if entries else None


def get_many(*, org_id: str, run_ids: Iterable[str]) -> list[Entry]:
    """Entries of one organisation for ``run_ids``, in one round trip, skipping the ones that are gone."""
    entry_keys = [
        key
        for run_id in run_ids
        for key in (keys.entry(org_id, run_id), keys.snapshot(org_id, run_id), keys.row(org_id, run_id))
    ]
    if not entry_keys:
        return []
    replies = scripts.READ(keys=entry_keys, args=ENTRY_FIELDS, client=redis_client.get())
    entries = (from_values(values, snapshot, row or None) for values, snapshot, row in replies)
    return [entry for entry in entries if entry is not None]


def _get_leased(redis, *, org_id: str, env_id: str, run_ids: list[str], token: str) -> list[Entry]:
    """Entries just leased with ``token``, for the drain, in ``run_ids``' order: those with a stored
    row from it alone (one MGET, no script: a leased entry changes only through its holder), the
    rest whole (read.lua). Skips the ones that are gone. Rows are looked for whatever this
    process's MOLLIFIER_STORE_ROWS says: the web processes that buffered the runs decided."""
    if not run_ids:
        return []
    stored = redis.mget([keys.row(org_id, run_id) for run_id in run_ids])
    found: dict[str, Entry] = {}
    whole: list[str] = []
    for run_id, value in zip(run_ids, stored, strict=True):
        entry = from_row(value, run_id=run_id, org_id=org_id, env_id=env_id) if value else None
        if entry is None:
            whole.append(run_id)
        else:
            found[run_id] = entry
    for entry in get_many(org_id=org_id, run_ids=whole) if whole else ():
        found[entry.run_id] = entry
    entries = [found[run_id] for run_id in run_ids if run_id in found]
    for entry in entries:
        entry.lease = token
    return entries


def reread(entries: list[Entry]) -> list[Entry]:
    """Whole entries (snapshot, tags, state) for entries the drain read from their stored row,
    keeping each one's lease; the others as they are. Entries gone meanwhile are left out."""
    if all(entry.row is None for entry in entries):
        return entries
    leases = {entry.run_id: entry.lease for entry in entries}
    whole: dict[str, Entry] = {}
    for org_id in {entry.org_id for entry in entries if entry.row is not None}:
        run_ids = [entry.run_id for entry in entries if entry.row is not None and entry.org_id == org_id]
        for entry in get_many(org_id=org_id, run_ids=run_ids):
            entry.lease = leases[entry.run_id]
            whole[entry.run_id] = entry
    return [
        entry if entry.row is None else whole[entry.run_id]
        for entry in entries
        if entry.row is None or entry.run_id in whole
    ]


def lookup_idempotency(*, org_id: str, env_id: str, task: str, key: str, now_ms: int) -> Entry | None:
    """The waiting run that holds the idempotency key, or None. An expired key is released first."""
    owner = redis_client.get().get(keys.idempotency(org_id, env_id, task, key))
    if owner is None:
        return None
    entry = get(org_id=org_id, run_id=as_text(owner))
    if entry is not None and not entry.materialised and entry.env_id == env_id:
        if entry.idempotency_expires_ms is None or entry.idempotency_expires_ms > now_ms:
            return entry
    reset_idempotency(org_id=org_id, env_id=env_id, task=task, key=key, now_ms=now_ms)
    return None


@dataclass(frozen=True)
class Pin:
    """A run pinned by a drainer to the Postgres transaction ``txid`` (its holder is ``token:txid``)."""

    org_id: str
    env_id: str
    run_id: str
    holder: str

    @property
    def txid(self) -> str:
        return self.holder.split(":", 1)[1]


@dataclass(frozen=True)
class Popped:
    entries: list[Entry]
    reclaimed: int  # expired, unpinned leases taken back to ready first
    missing: list[str]  # leased ids whose hash is gone (acked away)
    pins: list[Pin] = field(default_factory=list)  # expired pins, for the caller to settle
    token: str = ""  # this lease's token (also on each entry as ``entry.lease``)


def _pins(org_id: str, env_id: str, flat: list) -> list[Pin]:
    return [Pin(org_id, env_id, as_text(run), as_text(holder)) for run, holder in zip(flat[::2], flat[1::2])]


def new_lease_token() -> str:
    return uuid.uuid4().hex[:16]


def pop(*, org_id: str, env_id: str, limit: int, lease_ms: int, now_ms: int) -> Popped:
    """Lease up to ``limit`` ready entries of one environment, oldest first, with a fresh token."""
    redis = redis_client.get()
    token = new_lease_token()
    run_ids, reclaimed, pinned = scripts.POP(
        keys=[keys.ready(org_id, env_id), keys.leases(org_id, env_id), keys.holders(org_id, env_id)],
        args=[now_ms, limit, lease_ms, token],
        client=redis,
    )
    run_ids = [as_text(run_id) for run_id in run_ids]
    entries = _get_leased(redis, org_id=org_id, env_id=env_id, run_ids=run_ids, token=token)
    found = {entry.run_id for entry in entries}
    missing = [run_id for run_id in run_ids if run_id not in found]
    return Popped(entries, int(reclaimed), missing, _pins(org_id, env_id, pinned), token)


def pop_due(*, org_id: str, env_id: str, due: list[tuple[str, str]], limit: int, lease_ms: int, now_ms: int) -> Popped:
    """Lease up to ``limit`` of one environment's due delayed runs ahead of its queue (``due``:
    (member, run id) pairs found in the ``delayed`` index, earliest first; see pop_due.lua)."""
    token = new_lease_token()
    redis = redis_client.get()
    run_ids = scripts.POP_DUE(
        keys=[
            keys.delayed(org_id),
            keys.ready(org_id, env_id),
            keys.leases(org_id, env_id),
            keys.holders(org_id, env_id),
        ],
        args=[now_ms, lease_ms, token, limit, *(part for pair in due for part in pair)],
        client=redis,
    )
    run_ids = [as_text(run_id) for run_id in run_ids]
    entries = _get_leased(redis, org_id=org_id, env_id=env_id, run_ids=run_ids, token=token)
    found = {entry.run_id for entry in entries}
    return Popped(entries, 0, [run_id for run_id in run_ids if run_id not in found], [], token)


def reclaim(*, org_id: str, env_id: str, now_ms: int, lease_ms: int) -> tuple[int, list[Pin]]:
    """Take back one environment's expired, unpinned leases; returns how many, and its expired pins."""
    reclaimed, pinned = scripts.RECLAIM(
        keys=[keys.ready(org_id, env_id), keys.leases(org_id, env_id), keys.holders(org_id, env_id)],
        args=[now_ms, lease_ms],
        client=redis_client.get(),
    )
    return int(reclaimed), _pins(org_id, env_id, pinned)


def pin(entries: Iterable[Entry], *, txid: str, now_ms: int, lease_ms: int) -> set[str]:
    """Fence leased entries to the Postgres transaction ``txid`` before their rows are written.

    Returns the run ids pinned: the entries whose lease the caller still holds. The others were
    taken back after their lease expired and may have changed: their rows must not be written.
    """
    groups: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for entry in entries:
        groups[(entry.org_id, entry.env_id, entry.lease)].append(entry.run_id)
    if not groups:
        return set()
    calls = [
        ([keys.leases(org_id, env_id), keys.holders(org_id, env_id)], [token, txid, now_ms, lease_ms, *run_ids])
        for (org_id, env_id, token), run_ids in groups.items()
    ]
    return {as_text(run_id) for reply in _run_script_calls(redis_client.get(), scripts.PIN, calls) for run_id in reply}


def unpin(pins: Iterable[Pin], *, now_ms: int, keep_lease: bool = False) -> int:
    """Pinned runs whose transaction did not commit go back to ready, unchanged (or, with
    ``keep_lease``, stay leased to the drainer that pinned them, which retries); returns how many."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for item in pins:
        groups[(item.org_id, item.env_id)] += [item.run_id, item.holder]
    calls = [
        (
            [keys.ready(org_id, env_id), keys.leases(org_id, env_id), keys.holders(org_id, env_id)],
            [now_ms, "1" if keep_lease else "0", *pairs],
        )
        for (org_id, env_id), pairs in groups.items()
    ]
    return sum(int(back) for back in _run_script_calls(redis_client.get(), scripts.UNPIN, calls)) if calls else 0


def _ack_call(*, org_id: str, env_id: str, leased: list[tuple[str, str, Entry | None]], now_ms: int):
    keys_list = [
        keys.ready(org_id, env_id),
        keys.leases(org_id, env_id),
        keys.envs(org_id),
        keys.stats(org_id),
        keys.listing(org_id, env_id),
        keys.minute(org_id, now_ms // 60_000),
        keys.holders(org_id, env_id),
    ]
    args: list = [now_ms, conf.ack_grace_ms(), env_id]
    for run_id, expected, entry in leased:
        keys_list.append(keys.entry(org_id, run_id))
        keys_list.append(keys.snapshot(org_id, run_id))
        keys_list.append(keys.row(org_id, run_id))
        keys_list.append(
            keys.idempotency(org_id, env_id, entry.task, entry.idempotency_key)
            if entry and entry.idempotency_key
            else keys.unused(org_id)
        )
        keys_list.append(keys.batch_items(org_id, entry.batch_id) if entry and entry.batch_id else keys.unused(org_id))
        args += [run_id, expected]
    return keys_list, args


def _run_script_calls(redis, script, calls: list[tuple[list, list]]) -> list:
    """Run one script several times: pipelined in one round trip on a single node; one call per
    slot on a cluster (redis-py's cluster pipeline refuses EVALSHA)."""
    if isinstance(redis, RedisCluster):
        return [script(keys=call_keys, args=call_args, client=redis) for call_keys, call_args in calls]
    pipe = redis.pipeline(transaction=False)
    for call_keys, call_args in calls:
        script(keys=call_keys, args=call_args, client=pipe)
    return pipe.execute()


@dataclass(frozen=True)
class Missing:
    """A leased run whose entry hash is gone (acked away meanwhile): released by ack too."""

    org_id: str
    env_id: str
    run_id: str
    lease: str


def ack(entries: Iterable[Entry], *, now_ms: int, missing: Iterable[Missing] = ()) -> int:
    """Release materialised entries, grouped per environment (one round trip on a single node).

    Only entries the caller still holds (``entry.lease``) are released: a drainer whose lease was
    taken back acks nothing. Returns how many entries this call acked (acking twice counts once).
    """
    groups: dict[tuple[str, str], list[tuple[str, str, Entry | None]]] = defaultdict(list)
    for entry in entries:
        groups[(entry.org_id, entry.env_id)].append((entry.run_id, entry.lease, entry))
    for item in missing:
        groups[(item.org_id, item.env_id)].append((item.run_id, item.lease, None))
    if not groups:
        return 0
    redis = redis_client.get()
    calls = [
        _ack_call(org_id=org_id, env_id=env_id, leased=leased, now_ms=now_ms)
        for (org_id, env_id), leased in groups.items()
    ]
    acked = 0
    idle: dict[str, int] = {}
    for (org_id, _), (count, idle_gen, _refused) in zip(groups, _run_script_calls(redis, scripts.ACK, calls)):
        acked += int(count)
        if as_text(idle_gen):
            idle[org_id] = int(as_text(idle_gen))
    for org_id, gen in idle.items():
        scripts.ORG_UNINDEX(keys=[keys.orgs()], args=[org_id, gen], client=redis)
    return acked


def _lease_keys(entry: Entry) -> list[str]:
    org, env = entry.org_id, entry.env_id
    return [keys.entry(org, entry.run_id), keys.leases(org, env), keys.ready(org, env), keys.holders(org, env)]


def retry(entry: Entry, *, now_ms: int, backoff_ms: int, code: str, message: str, count: bool = True) -> int:
    """Give a leased entry back after ``backoff_ms``. ``count``: the entry itself failed (not the
    database). Returns its attempts, or -1 when the caller no longer held the lease."""
    return int(
        scripts.RETRY(
            keys=_lease_keys(entry),
            args=[entry.run_id, now_ms, backoff_ms, error_json(code, message), entry.lease, "1" if count else "0"],
            client=redis_client.get(),
        )
    )


def fail(entry: Entry, *, now_ms: int, backoff_ms: int, code: str, message: str) -> bool:
    """Mark the entry terminal: after ``backoff_ms`` its next drain writes a minimal SYSTEM_FAILURE
    row (never silent loss)."""
    return bool(
        scripts.FAIL(
            keys=[*_lease_keys(entry), keys.row(entry.org_id, entry.run_id)],
            args=[entry.run_id, now_ms, backoff_ms, error_json(code, message), entry.lease],
            client=redis_client.get(),
        )
    )


def park(entry: Entry, *, now_ms: int, code: str, message: str) -> bool:
    """Take an entry that cannot be written in any form out of the drain, for an operator."""
    redis = redis_client.get()
    org, env = entry.org_id, entry.env_id
    parked = bool(
        scripts.PARK(
            keys=[keys.entry(org, entry.run_id), keys.leases(org, env), keys.holders(org, env), keys.parked(org)],
            args=[entry.run_id, now_ms, error_json(code, message), entry.lease],
            client=redis,
        )
    )
    if parked:
        redis.sadd(keys.parked_orgs(), org)
    return parked


def parked_entries(*, limit: int = 1000) -> list[Entry]:
    """Parked entries of every organisation, oldest first."""
    redis = redis_client.get()
    found: list[tuple[int, Entry]] = []
    for org_id in sorted(as_text(org) for org in redis.smembers(keys.parked_orgs())):
        parked = redis.zrange(keys.parked(org_id), 0, limit - 1)
        for entry in get_many(org_id=org_id, run_ids=[as_text(run) for run in parked]):
            found.append((entry.parked_at_ms or 0, entry))
    return [entry for _, entry in sorted(found, key=lambda pair: pair[0])][:limit]


def parked_count(org_id: str) -> int:
    return int(redis_client.get().zcard(keys.parked(org_id)))


def _forget_parked_org(redis, org_id: str) -> None:
    if not redis.zcard(keys.parked(org_id)):
        redis.srem(keys.parked_orgs(), org_id)


def unpark(entry: Entry, *, now_ms: int) -> bool:
    """Give a parked entry back to the drain with its attempts reset (an operator's retry)."""
    redis = redis_client.get()
    org, env = entry.org_id, entry.env_id
    reply = scripts.UNPARK(
        keys=[keys.entry(org, entry.run_id), keys.ready(org, env), keys.parked(org), keys.envs(org), keys.stats(org)],
        args=[entry.run_id, now_ms, env],
        client=redis,
    )
    if int(reply[0]) and len(reply) > 1 and as_text(reply[1]):
        _index_org(redis, org, as_text(reply[1]))
    _forget_parked_org(redis, org)
    return bool(int(reply[0]))


def discard(entry: Entry) -> bool:
    """Remove a parked entry for good, without a row (an operator's decision; the caller logs why)."""
    redis = redis_client.get()
    org, env = entry.org_id, entry.env_id
    discarded = bool(
        scripts.DISCARD(
            keys=[
                keys.entry(org, entry.run_id),
                keys.snapshot(org, entry.run_id),
                keys.parked(org),
                keys.listing(org, env),
                keys.stats(org),
                keys.idempotency(org, env, entry.task, entry.idempotency_key)
                if entry.idempotency_key
                else keys.unused(org),
                keys.batch_items(org, entry.batch_id) if entry.batch_id else keys.unused(org),
                keys.row(org, entry.run_id),
            ],
            args=[entry.run_id],
            client=redis,
        )
    )
    _forget_parked_org(redis, org)
    return discarded


class MutateStatus(enum.StrEnum):
    APPLIED = "applied"
    NOT_FOUND = "not_found"  # no such run in this environment
    MATERIALISED = "materialised"  # its row is written: change the row
    BUSY = "busy"  # a drainer holds it right now
    PINNED = "pinned"  # a drainer's transaction decides: ``value`` is the holder (token:txid)
    LIMIT_EXCEEDED = "limit_exceeded"  # ``value``: the count the change would make
    CONFLICT = "conflict"  # metadata version moved on: ``value`` is the current one


@dataclass(frozen=True)
class MutateResult:
    status: MutateStatus
    value: str = ""  # new metadata version, tag count, current version, or the pin's holder

    def pin(self, *, org_id: str, env_id: str, run_id: str) -> Pin:
        return Pin(org_id, env_id, run_id, self.value)


def _mutate(*, org_id: str, env_id: str, run_id: str, op: str, now_ms: int, args: list[str]) -> MutateResult:
    reply = scripts.MUTATE(
        keys=[
            keys.entry(org_id, run_id),
            keys.leases(org_id, env_id),
            keys.ready(org_id, env_id),
            keys.holders(org_id, env_id),
            keys.stats(org_id),
            keys.row(org_id, run_id),
        ],
        args=[op, env_id, run_id, now_ms, *args],
        client=redis_client.get(),
    )
    return MutateResult(MutateStatus(as_text(reply[0])), as_text(reply[1]) if len(reply) > 1 else "")


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
    result = _mutate(org_id=org_id, env_id=env_id, run_id=run_id, op="set_delay", now_ms=now_ms, args=[value])
    if result.status == MutateStatus.APPLIED:
        index_delayed(org_id=org_id, env_id=env_id, run_id=run_id, delay_until_ms=delay_until_ms)
    return result


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


class ResetStatus(enum.StrEnum):
    RESET = "reset"  # the buffered run gave the key up
    NONE = "none"  # no buffered run held it
    BUSY = "busy"  # its holder is leased by a drainer
    PINNED = "pinned"  # its holder's row is being written: ``holder`` is the pin
    MOVED = "moved"  # the lookup changed hands meanwhile (internal: retried)


@dataclass(frozen=True)
class ResetResult:
    status: ResetStatus
    run_id: str = ""
    holder: str = ""


def reset_idempotency(*, org_id: str, env_id: str, task: str, key: str, now_ms: int) -> ResetResult:
    """Release the key from the waiting run holding it, and drop its pre-gate claim."""
    redis = redis_client.get()
    lookup = keys.idempotency(org_id, env_id, task, key)
    for _ in range(3):  # the lookup may change hands between the read and the script
        owner = redis.get(lookup)
        owner = as_text(owner) if owner is not None else ""
        reply = scripts.RESET_IDEMPOTENCY(
            keys=[
                lookup,
                keys.claim(org_id, env_id, task, key),
                keys.entry(org_id, owner) if owner else keys.unused(org_id),
                keys.leases(org_id, env_id),
                keys.ready(org_id, env_id),
                keys.holders(org_id, env_id),
                keys.row(org_id, owner) if owner else keys.unused(org_id),
            ],
            args=[owner, now_ms],
            client=redis,
        )
        status = ResetStatus(as_text(reply[0]))
        if status != ResetStatus.MOVED:
            return ResetResult(status, *(as_text(part) for part in reply[1:3]))
    return ResetResult(ResetStatus.BUSY)


def answers() -> bool:
    """Does Redis answer right now (a PING)?"""
    try:
        return bool(redis_client.get().ping())
    except BufferUnavailable:
        return False


def active_orgs() -> list[str]:
    """Organisations with buffered work, in index order."""
    return [as_text(org) for org in redis_client.get().zrange(keys.orgs(), 0, -1)]


def active_envs(org_id: str) -> list[str]:
    return sorted(as_text(env) for env in redis_client.get().smembers(keys.envs(org_id)))


@dataclass(frozen=True)
class Due:
    delay_until_ms: int
    org_id: str
    env_id: str
    run_id: str
    member: str  # in the organisation's ``delayed`` index


@dataclass(frozen=True)
class Active:
    """What a drain round can take: environments with work per organisation, and delayed runs due."""

    envs: dict[str, list[str]]  # organisation → its environments with ready or leased entries
    due: list[Due]  # earliest first (a hint: pop_due.lua checks each is still queued)


def active(*, due_by_ms: int, due_limit: int) -> Active:
    """Every organisation's active environments, and up to ``due_limit`` delayed runs per
    organisation due by ``due_by_ms``, in two round trips (the org index, then one pipeline)."""
    orgs = active_orgs()
    if not orgs:
        return Active({}, [])
    pipe = redis_client.get().pipeline(transaction=False)
    for org in orgs:
        pipe.smembers(keys.envs(org))
        pipe.zrangebyscore(keys.delayed(org), "-inf", due_by_ms, start=0, num=due_limit, withscores=True)
    replies = pipe.execute()
    envs: dict[str, list[str]] = {}
    due: list[Due] = []
    for org, members, delayed in zip(orgs, replies[::2], replies[1::2], strict=True):
        if members:
            envs[org] = sorted(as_text(env) for env in members)
        for member, score in delayed:
            member = as_text(member)
            due.append(Due(int(score), org, *keys.delayed_member_parts(member), member))
    due.sort(key=lambda item: item.delay_until_ms)
    return Active(envs, due)


def ready_counts(pairs: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Entries in each (organisation, environment) queue (ready or backing off), in one pipeline."""
    if not pairs:
        return {}
    pipe = redis_client.get().pipeline(transaction=False)
    for org, env in pairs:
        pipe.zcard(keys.ready(org, env))
    return {pair: int(count) for pair, count in zip(pairs, pipe.execute(), strict=True)}


def leasable_counts(pairs: list[tuple[str, str]], *, now_ms: int) -> dict[tuple[str, str], int]:
    """What a lease of each (organisation, environment) at ``now_ms`` could find, in one pipeline:
    its due entries, and its expired leases (pop.lua takes those back, or reports their pins)."""
    if not pairs:
        return {}
    pipe = redis_client.get().pipeline(transaction=False)
    for org, env in pairs:
        pipe.zcount(keys.ready(org, env), "-inf", now_ms)
        pipe.zcount(keys.leases(org, env), "-inf", now_ms)
    counts = pipe.execute()
    return {pair: int(due) + int(lapsed) for pair, due, lapsed in zip(pairs, counts[::2], counts[1::2], strict=True)}


def buffered_count(org_id: str) -> int:
    return int(redis_client.get().hget(keys.stats(org_id), "buffered") or 0)


def buffered_total(org_ids: Iterable[str]) -> int:
    """Runs these organisations hold in the buffer (``buffered_count`` summed), in one pipeline."""
    pipe = redis_client.get().pipeline(transaction=False)
    for org_id in org_ids:
        pipe.hget(keys.stats(org_id), "buffered")
    return sum(int(count or 0) for count in pipe.execute())


def buffered_bytes(org_id: str) -> int:
    """Bytes the organisation's waiting entries hold (what MOLLIFIER_ORG_BUFFER_MAX_BYTES bounds)."""
    return int(redis_client.get().hget(keys.stats(org_id), "bytes") or 0)


def batch_buffered_items(*, org_id: str, batch_id: str) -> dict[int, str]:
    """index → run id of a batch's items that are still in the buffer."""
    raw = redis_client.get().hgetall(keys.batch_items(org_id, batch_id))
    return {int(as_text(index)): as_text(run_id) for index, run_id in raw.items()}


@dataclass(frozen=True)
class ListingScan:
    entries: list[Entry]  # waiting runs scanned (materialised ones left out), in scan order
    last: tuple[str, str] | None  # (score, run id) of the last run scanned: where to resume
    exhausted: bool  # nothing lies beyond the scan (within the floor)


def listing(
    *,
    org_id: str,
    env_id: str,
    newest_first: bool,
    limit: int,
    beyond: tuple[str, str] | None = None,
    floor: str | None = None,
) -> ListingScan:
    """Up to ``limit`` waiting runs of one environment in listing order (trigger time, then run
    id), strictly beyond ``beyond`` = (score, run id) — older when ``newest_first``, else newer —
    and not past ``floor`` (a score). Scores are trigger times in ms, as strings; a cursor between
    two milliseconds ends in ".5"."""
    redis = redis_client.get()
    flat = scripts.LISTING(
        keys=[keys.listing(org_id, env_id)],
        args=["desc" if newest_first else "asc", limit, *(beyond or ("", "")), floor or ""],
        client=redis,
    )
    members = [as_text(member) for member in flat[::2]]
    scores = [as_text(score) for score in flat[1::2]]
    entries = [entry for entry in get_many(org_id=org_id, run_ids=members) if not entry.materialised]
    last = (scores[-1], members[-1]) if members else None
    return ListingScan(entries, last, len(members) < limit)


def leased_ids(*, org_id: str, env_id: str) -> set[str]:
    """Run ids a drainer holds right now in one environment."""
    return {as_text(run_id) for run_id in redis_client.get().zrange(keys.leases(org_id, env_id), 0, -1)}


DROPPED_KEPT = 1000


def note_dropped(entries: Iterable[Entry], *, now_ms: int) -> None:
    """Keep a trace of entries that leave without a row (their environment was deleted)."""
    records = [
        json.dumps({"run": e.run_id, "org": e.org_id, "env": e.env_id, "task": e.task, "at_ms": now_ms})
        for e in entries
    ]
    if records:
        redis = redis_client.get()
        redis.lpush(keys.dropped(), *records)
        redis.ltrim(keys.dropped(), 0, DROPPED_KEPT - 1)


def recently_dropped(*, limit: int = 20) -> tuple[int, list[dict]]:
    """How many dropped entries are on record (up to DROPPED_KEPT), and the latest ``limit``."""
    redis = redis_client.get()
    return int(redis.llen(keys.dropped())), [json.loads(raw) for raw in redis.lrange(keys.dropped(), 0, limit - 1)]


def parked_orgs() -> list[str]:
    return sorted(as_text(org) for org in redis_client.get().smembers(keys.parked_orgs()))
