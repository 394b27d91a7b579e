"""Every Redis key the mollifier uses; the docstrings are the key glossary.

All keys start with ``mollifier:``. Keys of one organisation share the hash tag ``{o:<org>}``, so
every script (which touches one organisation's keys only) stays in one Redis Cluster hash slot.
Customer-supplied segments (task ids, idempotency keys) are base64url-encoded, so that
``("a:b", "c")`` can never alias ``("a", "b:c")``.
"""

import base64

PREFIX = "mollifier"


def _b64(segment: str) -> str:
    return base64.urlsafe_b64encode(segment.encode()).decode().rstrip("=")


def _org(org_id: str) -> str:
    return f"{PREFIX}:{{o:{org_id}}}"


def entry(org_id: str, run_id: str) -> str:
    """HASH: one buffered run — its envelope and the fields that may change while it waits."""
    return f"{_org(org_id)}:entry:{run_id}"


def snapshot(org_id: str, run_id: str) -> str:
    """STRING: the run's snapshot (JSON, zlib-compressed when large). Kept out of the hash so the
    hash stays small enough for Redis's compact encoding."""
    return f"{_org(org_id)}:snap:{run_id}"


def row(org_id: str, run_id: str) -> str:
    """STRING: the run's row as the drain writes it, encoded by the caller when the run was buffered,
    after the few entry fields the drain needs (codec._pack_row); it also holds the snapshot's
    payload (codec.PAYLOAD_IN_ROW). Marked stale by any change to the run (lib/row.lua): the drain
    then builds the row from the entry and its snapshot."""
    return f"{_org(org_id)}:row:{run_id}"


def ready(org_id: str, env_id: str) -> str:
    """ZSET: run ids of one environment waiting to be drained, scored by not-before time (ms)."""
    return f"{_org(org_id)}:env:{_b64(env_id)}:ready"


def leases(org_id: str, env_id: str) -> str:
    """ZSET: run ids of one environment being drained, scored by lease expiry (ms)."""
    return f"{_org(org_id)}:env:{_b64(env_id)}:leases"


def holders(org_id: str, env_id: str) -> str:
    """HASH: run id → who holds its lease: ``<token>`` of the drainer that popped it, or
    ``<token>:<txid>`` once that drainer pinned it to a Postgres transaction (the fence)."""
    return f"{_org(org_id)}:env:{_b64(env_id)}:holders"


def keyed(org_id: str, env_id: str) -> str:
    """HASH: whether runs with an idempotency key may wait in the environment's buffer, mirrored
    from Postgres (runs.models.KeyedBufferMarker): ``marker``, the generation of the Postgres marker
    (a keyed entry is accepted only with that very generation), and ``cleared``, the highest
    generation taken away since (a marker no newer is not set again). See lib/accept.lua and
    clear_keyed_marker.lua."""
    return f"{_org(org_id)}:env:{_b64(env_id)}:keyed"


def listing(org_id: str, env_id: str) -> str:
    """ZSET: every not-yet-materialised run id of one environment, scored by trigger time (ms)."""
    return f"{_org(org_id)}:env:{_b64(env_id)}:all"


def envs(org_id: str) -> str:
    """SET: the organisation's environments with ready or leased entries."""
    return f"{_org(org_id)}:envs"


def delayed(org_id: str) -> str:
    """ZSET: the organisation's waiting delayed runs, ``<b64 env>:<run>`` scored by delay_until (ms).
    A hint for the drain's due-first phase (mollifier/priority.py), kept beside the queues: added
    when a delayed run is accepted or rescheduled, dropped by pop_due.lua once its run has left."""
    return f"{_org(org_id)}:delayed"


def delayed_member(env_id: str, run_id: str) -> str:
    return f"{_b64(env_id)}:{run_id}"


def delayed_member_parts(member: str) -> tuple[str, str]:
    """(env id, run id) of a ``delayed`` member."""
    env, run = member.split(":", 1)
    return base64.urlsafe_b64decode(env + "=" * (-len(env) % 4)).decode(), run


def parked(org_id: str) -> str:
    """ZSET: the organisation's parked run ids (no row could be written, not even a failure row),
    scored by when they were parked. They wait here for an operator (``mollifier_parked``)."""
    return f"{_org(org_id)}:parked"


def parked_orgs() -> str:
    """SET: organisations with parked entries (kept beside ``orgs``, which lists only drainable work)."""
    return f"{PREFIX}:parked_orgs"


def dropped() -> str:
    """LIST, capped: the latest entries acked without a row because their environment was deleted
    (JSON: run, org, env, task, at_ms), for operators (mollifier_status, the dashboard)."""
    return f"{PREFIX}:dropped"


def stats(org_id: str) -> str:
    """HASH: ``buffered`` (entries not yet materialised, for the cap), ``bytes`` (their size, for the
    byte cap: each entry keeps its own in its ``bytes`` field) and ``gen`` (activation count)."""
    return f"{_org(org_id)}:stats"


def idempotency(org_id: str, env_id: str, task: str, key: str) -> str:
    """STRING: the run id of the buffered run holding this idempotency key."""
    return f"{_org(org_id)}:idem:{_b64(env_id)}:{_b64(task)}:{_b64(key)}"


def request(org_id: str, env_id: str, task: str, request_key: str) -> str:
    """STRING with a TTL (TRIGGER_REQUEST_IDEMPOTENCY_TTL_SECONDS): the run a request made, by the
    SDK's ``x-trigger-request-idempotency-key``, so a retried request gets its first run back."""
    return f"{_org(org_id)}:req:{_b64(env_id)}:{_b64(task)}:{_b64(request_key)}"


def claim(org_id: str, env_id: str, task: str, key: str) -> str:
    """STRING with TTL: ``pending:<token>`` while a trigger holds the pre-gate claim, then its run id."""
    return f"{_org(org_id)}:claim:{_b64(env_id)}:{_b64(task)}:{_b64(key)}"


def batch_items(org_id: str, batch_id: str) -> str:
    """HASH: index → run id of a batch's items that are still buffered."""
    return f"{_org(org_id)}:batch:{_b64(batch_id)}"


def rate(org_id: str, env_id: str) -> str:
    """HASH with TTL: the environment's sliding-window trigger counter (w, c, p)."""
    return f"{_org(org_id)}:rate:{_b64(env_id)}"


def tripped(org_id: str, env_id: str) -> str:
    """STRING with TTL: present while the environment's trip holds."""
    return f"{_org(org_id)}:tripped:{_b64(env_id)}"


def minute(org_id: str, epoch_minute: int) -> str:
    """HASH with a 2 h TTL: the organisation's counts for one minute — gate decisions
    (pass_through, mollify, shadow, refused) and rows drained — for the dashboard's charts."""
    return f"{_org(org_id)}:minute:{epoch_minute}"


def shadow_orgs() -> str:
    """ZSET: organisations (not enrolled) that shadow mode would have mollified, by last time (ms)."""
    return f"{PREFIX}:shadow_orgs"


def unused(org_id: str) -> str:
    """Never written: stands in for an optional key a script takes (it must be in the same slot)."""
    return f"{_org(org_id)}:unused"


def global_rate() -> str:
    """HASH with TTL: the fleet-wide trigger counter of the global gate."""
    return f"{PREFIX}:{{global}}:rate"


def global_tripped() -> str:
    """STRING with TTL: present while the global gate's trip holds."""
    return f"{PREFIX}:{{global}}:tripped"


def orgs() -> str:
    """ZSET: organisations with buffered work, scored by activation generation (see org_unindex.lua)."""
    return f"{PREFIX}:orgs"


def org_pattern() -> str:
    """SCAN pattern of every organisation's active-environment set (the sweep's reconcile)."""
    return f"{PREFIX}:{{o:*}}:envs"


def drain_rate() -> str:
    """STRING with TTL: the drainers' shared token bucket (theoretical arrival time, ms)."""
    return f"{PREFIX}:{{drain}}:rate"


def drain_limit() -> str:
    """HASH with TTL: the adaptive drain rate shared by every drainer (drain_adapt.lua): ``rate``
    (rows/s), ``epoch`` (cuts so far), ``at`` (last report, ms), ``commit_ms`` (a moving average of
    the rounds' write latency). Absent: the ceiling."""
    return f"{PREFIX}:{{drain}}:limit"


def drain_minute(epoch_minute: int) -> str:
    """HASH with a 2 h TTL: the drain's samples for one minute (rate_sum/rate_n per grant,
    commit_sum/commit_n per round, cuts), for the dashboard's rate line."""
    return f"{PREFIX}:{{drain}}:minute:{epoch_minute}"


def drain_eta() -> str:
    """HASH with TTL: each environment's drain curve (priority.py, field ``env_field``) and ``at``,
    published about once a second by a drainer; read by estimates of buffered runs."""
    return f"{PREFIX}:{{drain}}:eta"


def env_field(org_id: str, env_id: str) -> str:
    """The field of one environment in ``drain_eta``."""
    return f"{org_id}:{_b64(env_id)}"


def sweep_lease() -> str:
    """STRING with TTL: the holder of the stale sweep (one at a time)."""
    return f"{PREFIX}:sweep:lease"
